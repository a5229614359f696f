"""tools/visualize.py end to end: a tiny pretraining run's checkpoint and a few image files in, titled PNGs
out; bare state dicts with --model; one-line refusals."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main_pretrain
from conftest import TINY_MAE, make_image_folder
from models import create_model
from tools.visualize import main

ROOT = Path(__file__).resolve().parents[1]
TINY_KWARGS = ["embed_dim=32", "depth=1", "num_heads=2", "patch_size=8", "decoder_embed_dim=32",
               "decoder_depth=1", "decoder_num_heads=2"]
SIDE = 32 * 4 + 2  # a 32-px panel enlarged 4x, plus padding


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """checkpoint-0.pth of a one-epoch norm-pix MAE run on 16 generated images."""
    root = tmp_path_factory.mktemp("vis")
    data = make_image_folder(root / "data", num_classes=1, per_class=16)
    out = root / "run"
    main_pretrain.main(main_pretrain.get_args_parser().parse_args([
        "--model", "mae_vit_tiny_patch16", "--model_kwargs", *TINY_KWARGS, "--data_path", str(data),
        "--input_size", "32", "--batch_size", "8", "--epochs", "1", "--warmup_epochs", "0", "--norm_pix_loss",
        "--num_workers", "0", "--device", "cpu", "--output_dir", str(out), "--vis_freq", "100"]))
    return out / "checkpoint-0.pth"


def write_image(path: Path, size: tuple[int, int], colour=None, seed: int = 0) -> Path:
    """A random (or one-colour) RGB image file of ``size`` (width, height)."""
    if colour is None:
        pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    else:
        pixels = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def panel(picture: np.ndarray, col: int) -> np.ndarray:
    """Panel ``col`` of a one-row picture (below its title strip), at its enlarged size: [128, 128, 3]."""
    top = picture.shape[0] - SIDE
    left = 2 + col * SIDE
    return picture[top:top + 128, left:left + 128]


def test_pictures_of_a_pretraining_checkpoint(checkpoint, tmp_path, capsys):
    """One titled 5-panel PNG per image (norm-pix: the visible-statistics panel too); the original panel is the
    image itself when it already has the model's size, and the resized centre crop otherwise."""
    square = write_image(tmp_path / "square.png", (32, 32))
    wide = write_image(tmp_path / "wide.jpg", (96, 48), seed=1)
    out = tmp_path / "out"
    assert main([str(checkpoint), str(square), str(wide), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(out / "square-reconstruction.png"),
                                               "wrote", str(out / "wide-reconstruction.png")]
    picture = read_png(out / "square-reconstruction.png")
    assert picture.shape[1] == 5 * SIDE + 2 and picture.shape[0] > SIDE
    title = picture[:picture.shape[0] - SIDE]
    assert (title > 200).sum() > 100  # the titles
    expected = read_png(square).repeat(4, 0).repeat(4, 1)
    assert np.abs(panel(picture, 0).astype(int) - expected).max() <= 1
    assert read_png(out / "wide-reconstruction.png").shape == picture.shape


def test_seed_and_mask_ratio(checkpoint, tmp_path):
    """A one-colour image: the masked panel's grey patches are exactly the masked ones. The same seed draws the
    same masks, another seed others; --mask_ratio 0.25 masks 4 of the 16 patches."""
    red = write_image(tmp_path / "red.png", (32, 32), colour=(200, 30, 30))

    def masked_patches(*extra: str) -> np.ndarray:
        out = tmp_path / "_".join(extra)
        assert main([str(checkpoint), str(red), "--out", str(out), *extra]) == 0
        masked = panel(read_png(out / "red-reconstruction.png"), 1)
        return (masked[::32, ::32] == 128).all(axis=-1)  # one pixel per 8-px patch (32 px enlarged)

    default = masked_patches("--seed", "0")
    assert default.sum() == 12  # the run's mask ratio, 0.75
    assert np.array_equal(masked_patches("--seed", "0", "--mask_ratio", "0.75"), default)
    assert not np.array_equal(masked_patches("--seed", "1"), default)
    assert masked_patches("--mask_ratio", "0.25").sum() == 4


def test_bare_state_dict_needs_model(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    torch.save({"model": create_model("mae_vit_tiny_patch16", **TINY_MAE).state_dict()}, weights)
    image = write_image(tmp_path / "a.png", (40, 40))
    assert main([str(weights), str(image), "--out", str(tmp_path / "o")]) == 2
    kwargs = [f"{k}={v}" for k, v in TINY_MAE.items() if k != "img_size"]
    assert main([str(weights), str(image), "--out", str(tmp_path / "o"), "--model", "mae_vit_tiny_patch16",
                 "--input_size", "32", "--model_kwargs", *kwargs]) == 0
    # no norm-pix: four panels
    assert read_png(tmp_path / "o" / "a-reconstruction.png").shape[1] == 4 * SIDE + 2


def test_hog_checkpoint_draws_glyphs(tmp_path):
    """A DMJD (HOG target) checkpoint: original, masked, HOG target, HOG prediction."""
    torch.manual_seed(0)
    # 8-px patches: 1 of the 4 2x2 blocks of a 32-px image stays visible at DMJD's 0.6
    kwargs = dict(embed_dim=32, depth=1, num_heads=2, patch_size=8, decoder_embed_dim=16, decoder_depth=1,
                  decoder_num_heads=2)
    weights = tmp_path / "dmjd.pth"
    torch.save({"model": create_model("dmjd_vit_base_patch16_hog", img_size=32, **kwargs).state_dict()}, weights)
    image = write_image(tmp_path / "a.png", (32, 32))
    assert main([str(weights), str(image), "--out", str(tmp_path / "o"), "--model", "dmjd_vit_base_patch16_hog",
                 "--input_size", "32", "--model_kwargs", *[f"{k}={v}" for k, v in kwargs.items()]]) == 0
    picture = read_png(tmp_path / "o" / "a-reconstruction.png")
    assert picture.shape[1] == 4 * SIDE + 2
    target = panel(picture, 2)
    assert target.max() == 255 and target[..., 0].tolist() == target[..., 1].tolist()  # white glyphs on black


def test_refusals_are_one_line(checkpoint, tmp_path, capsys):
    image = write_image(tmp_path / "ok.png", (32, 32))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    torch.save({"model": {}, "args": {"model": "vit_tiny_patch16", "flags": {"model": "vit_tiny_patch16",
                                                                             "finetune": "x.pth"}}},
               tmp_path / "finetuned.pth")
    torch.save({"model": {}, "args": {"flags": {"model": "deepmim_vit_base_patch16_clip", "mask_ratio": 0.75,
                                                "clip_path": "ViT-B-16.pt"}}}, tmp_path / "deepmim.pth")
    cases = {
        (str(tmp_path / "finetuned.pth"), str(image)): "is not a pretraining checkpoint",
        (str(tmp_path / "deepmim.pth"), str(image)): "CLIP features, which have no picture",
        (str(checkpoint), str(not_an_image)): "cannot read image",
        (str(checkpoint), str(tmp_path / "nowhere.png")): "does not exist",
    }
    for argv, message in cases.items():
        assert main([*argv, "--out", str(tmp_path / "o")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "o").exists()
    # as a script: a missing checkpoint is one line and status 2
    result = subprocess.run([sys.executable, "tools/visualize.py", str(tmp_path / "missing.pth"), str(image)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], result.stderr
