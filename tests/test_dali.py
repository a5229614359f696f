"""The DALI input pipeline (util/dali_loader.py) on DALI's CPU operators: the PIL path's batches (same order,
windows and flips, the pixels within resampling differences), crop windows measured on a coordinate image,
seeds, sharding, resume, corrupt files, the CLI, and the dataload benchmark."""
import gc
import json
import multiprocessing
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import main_finetune
import main_linprobe
import main_pretrain
from base.errors import UsageError
from base.images import normalize
from benchmarks import dataload
from models import create_model
from util import dali_loader
from util.dali_loader import choose_backend, dali_import_error, dali_train_loader, pretrain_crops
from util.data import ImageFiles, build_pretrain_transform
from util.session import Session, begin_epoch, train_loader

pytestmark = pytest.mark.skipif(bool(dali_import_error()), reason=f"DALI does not import: {dali_import_error()}")

SIZE = 32


def loaders(folder: Path, *, seed: int = 0, rank: int = 0, world_size: int = 1, batch_size: int = 4,
            min_scale: float = 0.2, size: int = SIZE, device: str = "cpu"):
    """(DALI loader, PIL loader, the ImageFiles they share) over ``folder``, batches on ``device``."""
    files = ImageFiles(str(folder), build_pretrain_transform(size, min_scale))
    cfg = SimpleNamespace(seed=seed, batch_size=batch_size, accum_iter=1, num_workers=0, pin_mem=True, input_size=size)
    session = Session(rank, world_size, torch.device(device), "fp32", None)
    return dali_train_loader(cfg, session, files, pretrain_crops(size, min_scale)), train_loader(cfg, session, files), files


def epoch_batches(loader, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    begin_epoch(loader, epoch, skip)
    return list(loader)


def write_smooth(folder: Path, count: int, classes: int = 2, size: tuple[int, int] = (60, 44)) -> Path:
    """``count`` smooth random JPEGs (quality 95) over ``classes`` class folders."""
    gen = np.random.default_rng(0)
    for i in range(count):
        (folder / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        low = Image.fromarray((gen.random((4, 5, 3)) * 255).astype(np.uint8))
        low.resize(size, Image.BICUBIC).save(folder / f"c{i % classes}" / f"{i:03d}.jpg", quality=95)
    return folder


def write_solid(folder: Path, count: int) -> Path:
    """``count`` PNGs of one colour each, red = 10 x (its index): any crop of image i tells i."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (24, 20), (10 * i, 100, 50)).save(folder / f"{i:03d}.png")
    return folder


def solid_ids(images: torch.Tensor) -> list[int]:
    """The indices of ``write_solid`` images in a batch, read back from their red channel."""
    red = images[:, 0].float().mean(dim=(1, 2))
    return [int(v) for v in torch.round(red / 10)]


@pytest.fixture(scope="module")
def smooth_folder(tmp_path_factory) -> Path:
    return write_smooth(tmp_path_factory.mktemp("smooth"), 16)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the mixed (GPU) decoder needs a GPU"))])
def test_batches_match_the_pil_path(smooth_folder, device):
    """Per epoch, as many batches as the PIL path, the same labels in the same order and the same crop windows
    and flips: the pixels differ only by the decoders' and resamplers' rounding. uint8 NCHW on the device, as the
    PIL path hands them over (the trainer normalizes them there)."""
    dali, pil, _ = loaders(smooth_folder, device=device)
    for epoch in (0, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no batch falls back on PIL
            got = epoch_batches(dali, epoch)
        ref = epoch_batches(pil, epoch)
        assert len(got) == len(ref) == len(dali) == 4
        for (images, labels), (ref_images, ref_labels) in zip(got, ref):
            assert images.shape == (4, 3, SIZE, SIZE) and images.dtype == ref_images.dtype == torch.uint8
            assert images.device.type == device and torch.equal(labels, ref_labels)
            diff = (images.cpu().float() - ref_images.float()).abs()
            assert diff.mean() < 0.6 and diff.max() < 6, (diff.mean(), diff.max())  # levels of 0..255


def write_coordinates(folder: Path, count: int) -> Path:
    """PNGs of 256 x 256 where red = x and green = y: a crop's pixels tell where it was taken."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.arange(256, dtype=np.uint8)
    pixels = np.stack([np.tile(x, (256, 1)), np.tile(x[:, None], (1, 256)), np.full((256, 256), 128, np.uint8)], -1)
    for i in range(count):
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def measured_window(image: torch.Tensor) -> tuple[float, float, float, float, bool]:
    """(left, top, width, height, flipped) of a crop of a ``write_coordinates`` image resized to S x S: in the
    interior the bicubic resize of a ramp is the ramp, value(j) = origin + (j + 0.5) * extent / S - 0.5."""
    pixels = image.double()
    size = pixels.shape[-1]
    j = torch.arange(2, size - 2, dtype=torch.float64)
    red, green = pixels[0].mean(0)[2:-2], pixels[1].mean(1)[2:-2]
    flipped = bool(red[-1] < red[0])
    if flipped:
        red = pixels[0].flip(-1).mean(0)[2:-2]
    fits = [np.polyfit(j.numpy(), v.numpy(), 1) for v in (red, green)]
    (slope_x, at_x), (slope_y, at_y) = fits
    return at_x - 0.5 * slope_x + 0.5, at_y - 0.5 * slope_y + 0.5, slope_x * size, slope_y * size, flipped


def test_crop_windows_measured_on_a_coordinate_image(tmp_path):
    """DALI crops the window the item drew (x/y, width/height not swapped) and flips when it drew a flip; over
    many draws, area fractions span [min_scale, 1] and aspect ratios [3/4, 4/3], and both flips occur."""
    min_scale = 0.3
    dali, _, _ = loaders(write_coordinates(tmp_path / "coords", 16), min_scale=min_scale)
    areas, aspects, flips = [], [], []
    for epoch in range(3):
        begin_epoch(dali, epoch)
        order = list(dali.sampler)
        for b, (images, _) in enumerate(dali):
            for k, image in enumerate(images):
                left, top, width, height, flipped = measured_window(image)
                _, (t, l, h, w, flip), *_ = dali.dataset[order[4 * b + k]]
                assert flipped == flip
                assert abs(left - l) < 1.5 and abs(top - t) < 1.5, ((left, top), (l, t))
                assert abs(width - w) < 2 and abs(height - h) < 2, ((width, height), (w, h))
                areas.append(width * height / 256 ** 2)
                aspects.append(width / height)
                flips.append(flipped)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() > min_scale - 0.02 and areas.max() < 1.02
    assert aspects.min() > 0.75 - 0.02 and aspects.max() < 4 / 3 + 0.02
    assert areas.min() < 0.45 and areas.max() > 0.85  # the draws span the range
    assert aspects.min() < 0.85 and aspects.max() > 1.15
    assert 0 < sum(flips) < len(flips)


def test_seeds_fix_the_crops_and_epochs_change_them(tmp_path):
    """Identical images everywhere, so only the crops and flips can differ: the same seed and epoch give the
    same batches, another epoch or seed other ones."""
    folder = write_coordinates(tmp_path / "coords", 8)
    first, _, _ = loaders(folder, seed=3)
    again, _, _ = loaders(folder, seed=3)
    other, _, _ = loaders(folder, seed=4)
    reference = torch.cat([x for x, _ in epoch_batches(first, 0)])
    assert torch.equal(reference, torch.cat([x for x, _ in epoch_batches(again, 0)]))
    assert not torch.allclose(reference.float(), torch.cat([x for x, _ in epoch_batches(first, 1)]).float(), atol=6)
    assert not torch.allclose(reference.float(), torch.cat([x for x, _ in epoch_batches(other, 0)]).float(), atol=6)


def test_two_ranks_share_out_every_image_once(tmp_path):
    folder = write_solid(tmp_path / "solid", 16)
    seen = []
    for rank in (0, 1):
        dali, _, _ = loaders(folder, rank=rank, world_size=2, batch_size=2)
        batches = epoch_batches(dali, 0)
        assert len(batches) == len(dali) == 4
        seen += [i for images, _ in batches for i in solid_ids(images)]
    assert sorted(seen) == list(range(16))


def test_resumed_epoch_goes_on_with_the_same_batches(tmp_path):
    """begin_epoch(skip) yields the rest of the very epoch; a loader left part-way serves the next epoch whole."""
    folder = write_coordinates(tmp_path / "coords", 12)
    full, _, _ = loaders(folder, seed=1)
    uninterrupted = epoch_batches(full, 1)
    resumed, _, _ = loaders(folder, seed=1)
    rest = epoch_batches(resumed, 1, skip=1)
    assert len(rest) == len(resumed) == 2
    for (a, la), (b, lb) in zip(uninterrupted[1:], rest):
        assert torch.equal(a, b) and torch.equal(la, lb)
    begin_epoch(full, 0)
    next(iter(full))  # a stop part-way: the prefetched batches are dropped with the pipeline
    again = epoch_batches(full, 1)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(again, uninterrupted))


def test_corrupt_files_are_skipped_and_counted_like_the_pil_path(tmp_path):
    """A file with no image header and a truncated JPEG (no end-of-image marker) are left out while reading; a
    truncated PNG passes those checks and makes DALI fail, so its batch is decoded with PIL. All three are
    flagged and counted once, and every batch is whole, with the images the PIL path substitutes."""
    folder = write_solid(tmp_path / "solid", 14)
    noise = Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8))
    for name, fmt in (("009.png", "PNG"), ("011.png", "JPEG")):
        noise.save(tmp_path / "whole", format=fmt)
        data = (tmp_path / "whole").read_bytes()
        (folder / name).write_bytes(data[:len(data) // 2])
    (folder / "004.png").write_bytes(b"not an image at all")
    dali, pil, files = loaders(folder, batch_size=4)
    with pytest.warns(UserWarning) as caught:
        got = epoch_batches(dali, 0)
    messages = " ".join(str(w.message) for w in caught)
    assert all(name in messages for name in ("004.png", "009.png", "011.png", "decoded it with PIL"))
    assert files.skipped == 3 and dali.dataset.dataset.skipped_flags().sum() == 3
    assert len(got) == 3 and all(len(images) == 4 for images, _ in got)
    ids = [i for images, _ in got for i in solid_ids(images)]
    ref = [i for images, _ in epoch_batches(pil, 0) for i in solid_ids(images)]
    assert ids == ref and not {4, 9, 11} & set(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known-bad files are left out up front: DALI decodes every batch
        again = epoch_batches(dali, 1)
    assert len(again) == 3 and files.skipped == 3


def test_a_dali_batch_trains_a_tiny_dmjd_step(smooth_folder):
    """DMJD's HOG target is computed on the device from the DALI batch, as from the PIL path's."""
    torch.manual_seed(0)
    model = create_model("dmjd_convvit_base_patch16_hog", img_size=64, embed_dims=(16, 24, 32), depths=(1, 1, 1),
                         num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    dali, _, _ = loaders(smooth_folder, size=64, min_scale=0.5)
    images, _ = epoch_batches(dali, 0)[0]
    out = model(normalize(images))
    out.loss.backward()
    assert torch.isfinite(out.loss) and len(out.losses) > 1
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_backend_choice(monkeypatch):
    """Default: DALI for an image folder on a GPU, PIL otherwise; DALI asked for where it cannot serve is a
    one-line UsageError."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_backend(None, cuda, "imagefolder") == "dali"
    assert choose_backend(None, cpu, "imagefolder") == "pil" and choose_backend(None, cuda, "fashion_mnist") == "pil"
    assert choose_backend("dali", cpu, "imagefolder") == "dali" and choose_backend("pil", cuda, "imagefolder") == "pil"
    with pytest.raises(UsageError, match="--data_backend pil"):
        choose_backend("dali", cpu, "fashion_mnist")
    monkeypatch.setattr(dali_loader, "dali_import_error", lambda: "No module named 'nvidia'")
    assert choose_backend(None, cuda, "imagefolder") == "pil"
    with pytest.raises(UsageError, match="pip install nvidia-dali"):
        choose_backend("dali", cuda, "imagefolder")


TINY = ["--model", "mae_vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2",
        "patch_size=8", "decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2", "--input_size", "32",
        "--batch_size", "4", "--warmup_epochs", "1", "--device", "cpu", "--print_freq", "100", "--vis_freq", "100"]


def test_pretrain_cli_runs_on_dali_and_resumes_exactly(smooth_folder, tmp_path):
    """main_pretrain.py --data_backend dali end to end (a file-reading worker, DALI's CPU operators); resumed
    from epoch 0's checkpoint, epoch 1 gives the uninterrupted run's weights bit for bit."""
    def run(out: Path, *extra: str) -> None:
        main_pretrain.main(main_pretrain.get_args_parser().parse_args(
            [*TINY, "--data_backend", "dali", "--epochs", "2", "--save_freq", "1", "--num_workers", "1",
             "--data_path", str(smooth_folder), "--output_dir", str(out), *extra]))

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(full)
    log = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [0, 1] and all(np.isfinite(rec["train_loss"]) for rec in log)
    assert all(rec["skipped_images"] == 0 for rec in log)
    ckpt = torch.load(full / "checkpoint-1.pth", weights_only=True)
    assert ckpt["args"]["data_backend"] == "dali" and ckpt["args"]["flags"]["data_backend"] == "dali"
    run(resumed, "--resume", str(full / "checkpoint-0.pth"))
    again = torch.load(resumed / "checkpoint-1.pth", weights_only=True)["model"]
    assert ckpt["model"].keys() == again.keys()
    assert all(torch.equal(ckpt["model"][k], again[k]) for k in again)


def test_dali_where_unsupported_is_a_usage_error(tmp_path):
    """Fashion-MNIST's arrays take the PIL path, in every CLI."""
    args = main_pretrain.get_args_parser().parse_args(
        [*TINY, "--data_backend", "dali", "--data_set", "fashion_mnist", "--output_dir", str(tmp_path)])
    with pytest.raises(UsageError, match="--data_set fashion_mnist is decoded in memory: pass --data_backend pil"):
        main_pretrain.main(args)
    for cli in (main_finetune, main_linprobe):
        args = cli.get_args_parser().parse_args(
            ["--model", "vit_tiny_patch16", "--data_backend", "dali", "--data_set", "fashion_mnist", "--device",
             "cpu", "--output_dir", str(tmp_path / cli.__name__)])
        with pytest.raises(UsageError, match="is decoded in memory: pass --data_backend pil"):
            cli.main(args)


def test_dataload_benchmark_runs_on_a_tiny_folder(tmp_path, capsys):
    """The synthetic folder is JPEGs of the given size; the sweep (every pipeline by default) prints a table and
    one JSON object, with img/s, img/s per core and the bytes per image a worker hands over (PIL: the uint8
    crop, 3 x 32 x 32 + its label; DALI: the JPEG and its plan)."""
    paths = dataload.make_folder(str(tmp_path / "fake"), images=8, classes=2, size=(50, 40))
    assert len(paths) == 8 and Image.open(paths[0]).size == (50, 40) and Image.open(paths[0]).format == "JPEG"
    result = dataload.main(["--data_path", str(tmp_path / "fake"), "--workers", "1", "--batch_size", "4",
                            "--batches", "2", "--warmup", "1", "--input_size", "32", "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == result
    assert [(r["pipeline"], r["backend"]) for r in result["rows"]] == \
        [(p, b) for p in ("pretrain", "finetune", "probe", "eval") for b in ("pil", "dali-cpu")]
    assert all(r["img_per_s"] > 0 and r["img_per_s_per_core"] > 0 for r in result["rows"])
    assert {r["bytes_per_image"] for r in result["rows"] if r["backend"] == "pil"} == {3 * 32 * 32 + 8}
    jpeg = np.mean([Path(p).stat().st_size for p in paths])
    assert all(jpeg < r["bytes_per_image"] < jpeg + 200 for r in result["rows"] if r["backend"] == "dali-cpu")
    assert {"device", "date", "torch", "command"} <= set(result) and lines[0].startswith("| pipeline")


def _collect_garbage_and_exit() -> None:
    gc.collect()


def test_a_process_forked_after_a_dali_run_collects_its_pipelines(tmp_path):
    """A pipeline left as cyclic garbage (a dropped loader) is collected in a forked child (a DataLoader worker
    of a later run) without waiting for the parent's DALI threads, which the child does not have."""
    dali, _, _ = loaders(write_smooth(tmp_path / "data", 8))
    epoch_batches(dali, 0)
    gc.disable()  # the loader and its pipeline stay uncollected until the child's gc.collect()
    try:
        del dali
        child = multiprocessing.get_context("fork").Process(target=_collect_garbage_and_exit)
        child.start()
        child.join(timeout=60)
        hung = child.is_alive()
        if hung:
            child.kill()
    finally:
        gc.enable()
    assert not hung and child.exitcode == 0
