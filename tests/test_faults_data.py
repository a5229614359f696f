"""Image files and folders that would train on wrong data without a word: pixels deeper than 8 bits, images past
PIL's decompression-bomb limit, symlink loops in class folders, an output folder inside the data (RELIABILITY.md,
"Flags and data")."""
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main_finetune
import main_linprobe
import main_pretrain
from base.errors import UsageError
from base.images import read_image
from conftest import TINY_MAE, make_image_folder
from models import create_model
from tools.visualize import main as visualize
from util.dali_loader import _load_encoded
from util.data import build_dataset, check_outside_data

GRADIENT = np.arange(32 * 32).reshape(32, 32)  # 0..1023, row-major


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (values up to 65472) keeps its picture, scaled by its depth (v / 257): PIL's
    convert("RGB") clips it to all white."""
    Image.fromarray((GRADIENT * 64).astype(np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode == "I;16"
    image, label = build_dataset("imagefolder", str(tmp_path), None)[0]
    pixels = np.asarray(image)
    assert image.mode == "RGB" and label == 0
    assert (pixels[..., 0] == pixels[..., 2]).all()  # grey stays grey
    expected = np.rint(GRADIENT * 64 / 257)
    assert np.abs(pixels[..., 0] - expected).max() <= 1


def test_float_tiff_is_scaled_not_clipped(tmp_path):
    """A float TIFF (mode F, values in [0, 1] here) keeps its picture: convert("RGB") makes it all black."""
    Image.fromarray((GRADIENT / 1023).astype(np.float32)).save(tmp_path / "float.tiff")
    image = read_image(str(tmp_path / "float.tiff"))
    pixels = np.asarray(image)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.abs(pixels[..., 1] - np.rint(GRADIENT * 255 / 1023)).max() <= 1


def test_dali_path_is_handed_the_pil_paths_8_bit_pixels(tmp_path):
    """DALI's decoders would scale 16-bit pixels their own way: its workers hand it the PIL path's 8-bit image."""
    Image.fromarray((GRADIENT * 64).astype(np.uint16)).save(tmp_path / "deep.png")
    data, header = _load_encoded(str(tmp_path / "deep.png"))
    assert header.size == (32, 32)
    with Image.open(io.BytesIO(data)) as handed:
        assert handed.mode == "RGB" and handed.tobytes() == read_image(str(tmp_path / "deep.png")).tobytes()


def test_8_bit_images_read_as_before(tmp_path):
    """Every 8-bit mode is PIL's own conversion, bit for bit."""
    rng = np.random.default_rng(0)
    for mode in ("L", "RGB", "RGBA", "P"):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).convert(mode).save(path)
        with Image.open(path) as raw:
            assert read_image(str(path)).tobytes() == raw.convert("RGB").tobytes()


def test_decompression_bomb_is_skipped_and_counted(tmp_path, monkeypatch):
    """An image past PIL's pixel limit (which PIL itself only warns about below twice the limit) is an unreadable
    image: skipped and counted, not decoded."""
    make_image_folder(tmp_path, num_classes=1, per_class=2, size=32)
    Image.new("RGB", (40, 40)).save(tmp_path / "train" / "class0" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1200)  # 32 x 32 under it, 40 x 40 over it
    dataset = build_dataset("imagefolder", str(tmp_path), None)
    with pytest.warns(UserWarning, match="big.png"):
        images = [dataset[i][0] for i in range(len(dataset))]
    assert dataset.skipped == 1 and all(image.size == (32, 32) for image in images)


@pytest.mark.parametrize("limit", [300, 800], ids=["error", "warning"])
def test_visualize_refuses_a_bomb_in_one_line(tmp_path, monkeypatch, capsys, limit):
    """tools/visualize.py on an image past PIL's limit (an error past twice the limit, a warning below): one line
    naming it, exit 2, nothing written."""
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    torch.save({"model": create_model("mae_vit_tiny_patch16", **TINY_MAE).state_dict()}, weights)
    Image.new("RGB", (32, 32)).save(tmp_path / "huge.png")  # 1024 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    kwargs = [f"{k}={v}" for k, v in TINY_MAE.items() if k != "img_size"]
    status = visualize([str(weights), str(tmp_path / "huge.png"), "--out", str(tmp_path / "o"), "--model",
                        "mae_vit_tiny_patch16", "--input_size", "32", "--model_kwargs", *kwargs])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: cannot read image") and "huge.png" in lines[0] and "bomb" in lines[0]
    assert not (tmp_path / "o").exists()


def link_loop(root: Path) -> Path:
    """train/{a,b} of 4 images each, and train/a/loop -> .. (train itself)."""
    make_image_folder(root, num_classes=2, per_class=4, size=8)
    os.symlink("..", root / "train" / "class0" / "loop")
    return root


def test_symlink_loop_in_a_class_folder_is_one_line(tmp_path):
    """A link back up the tree is refused naming it, instead of a walk in circles that files class b's images
    (again and again) under class a."""
    root = link_loop(tmp_path)
    with pytest.raises(UsageError, match="loop") as info:
        build_dataset("imagefolder", str(root), None)
    assert str(root / "train" / "class0" / "loop") in str(info.value) and "\n" not in str(info.value)


def test_a_folder_linked_twice_is_read_once(tmp_path):
    """Two links to one folder inside a class: its images are read once."""
    make_image_folder(tmp_path, num_classes=1, per_class=3, size=8)
    (tmp_path / "train" / "class0" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "class0" / "sub" / "x.png")
    os.symlink("sub", tmp_path / "train" / "class0" / "again")
    dataset = build_dataset("imagefolder", str(tmp_path), None)
    assert len(dataset) == 4


CLI_ARGS = {
    main_pretrain: ["--model", "mae_vit_tiny_patch16"],
    main_finetune: ["--model", "vit_tiny_patch16"],
    main_linprobe: ["--model", "vit_tiny_patch16"],
}


@pytest.mark.parametrize("cli", list(CLI_ARGS), ids=["pretrain", "finetune", "linprobe"])
def test_output_dir_inside_the_data_is_refused(tmp_path, cli):
    """--output_dir in a flat --data_path: its pictures would be read as data by the next run; one line,
    before any model, and nothing written."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (i, 0, 0)).save(data / f"{i}.png")
    args = cli.get_args_parser().parse_args([*CLI_ARGS[cli], "--data_path", str(data), "--output_dir",
                                             str(data / "run"), "--device", "cpu", "--input_size", "32"])
    with pytest.raises(UsageError, match=r"--output_dir .*run is inside .*data, whose images --data_path") as info:
        cli.main(args)
    assert "\n" not in str(info.value) and not (data / "run").exists()


def test_nesting_of_output_and_data_folders(tmp_path):
    """Either folder inside the other (or the same) is refused, --log_dir too; an output folder beside train/
    and val/ is not read, so it is allowed."""
    data = make_image_folder(tmp_path / "data", num_classes=1, per_class=1, size=8)
    check_outside_data("imagefolder", str(data), str(data / "runs"), str(data / "runs"))
    for output, log, message in [(data / "train" / "run", None, "--output_dir .*run is inside .*train, whose"),
                                 (data, None, "--output_dir .*data holds .*train, whose images"),
                                 (tmp_path / "run", data / "train" / "logs", "--log_dir .*logs is inside"),
                                 (tmp_path, None, "--output_dir .* holds .*train, whose images")]:
        with pytest.raises(UsageError, match=message):
            check_outside_data("imagefolder", str(data), str(output), log and str(log))
