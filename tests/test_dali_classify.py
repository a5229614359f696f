"""The DALI pipelines of fine-tuning, linear probing and evaluation (util/dali_plans.py, util/dali_augment.py) on
DALI's CPU operators: the PIL path's batches (order, windows, flips; pixels within resampling differences), timm's
RandAugment choices and how often DALI applies them, seeds and resume, corrupt files, and the CLIs end to end."""
import json
import random
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment
from torch.utils.data import SequentialSampler

import main_finetune
import main_linprobe
from base.errors import UsageError
from test_dali import epoch_batches, solid_ids, write_smooth, write_solid
from util.classify import build_finetune_transform, build_linprobe_transform, finetune_plan, linprobe_plan
from util.dali_augment import IDENTITY, RandAugmentPlan, _suite_names
from util.dali_loader import dali_eval_loader, dali_import_error, dali_train_loader
from util.data import ImageFiles, build_eval_transform
from util.session import SeededItems, Session, train_loader

pytestmark = pytest.mark.skipif(bool(dali_import_error()), reason=f"DALI does not import: {dali_import_error()}")

SIZE = 32
AA = "rand-m9-mstd0.5-inc1"
SESSION = Session(0, 1, torch.device("cpu"), "fp32", None)


def config(**over) -> SimpleNamespace:
    return SimpleNamespace(**dict(seed=0, batch_size=4, accum_iter=1, num_workers=0, pin_mem=False, input_size=SIZE,
                                  aa=AA, color_jitter=None) | over)


def pair(folder: Path, plan, transform, **over):
    """(DALI loader, PIL loader) of the training images of ``folder``."""
    cfg = config(**over)
    return (dali_train_loader(cfg, SESSION, ImageFiles(str(folder)), plan),
            train_loader(cfg, SESSION, ImageFiles(str(folder), transform)))


@pytest.fixture(scope="module")
def smooth_folder(tmp_path_factory) -> Path:
    return write_smooth(tmp_path_factory.mktemp("smooth"), 16)


@pytest.mark.parametrize("which", ["probe", "finetune_without_augment"])
def test_training_batches_match_the_pil_transforms(smooth_folder, which):
    """The probe's single-draw crops and timm's fine-tuning crops (RandAugment off, so that pixels compare):
    DALI crops the PIL transform's windows and flips, in its order, pixels within resampling differences."""
    cfg = config(aa=None)
    plan, transform = (linprobe_plan(SIZE), build_linprobe_transform(SIZE)) if which == "probe" else \
        (finetune_plan(cfg), build_finetune_transform(cfg))
    dali, pil = pair(smooth_folder, plan, transform, aa=None)
    for epoch in (0, 1):
        got, ref = epoch_batches(dali, epoch), epoch_batches(pil, epoch)
        assert len(got) == len(ref) == 4
        for (images, labels), (ref_images, ref_labels) in zip(got, ref):
            assert images.dtype == torch.uint8 and torch.equal(labels, ref_labels)
            diff = (images.float() - ref_images.float()).abs()
            assert diff.mean() < 0.6 and diff.max() < 6, (diff.mean(), diff.max())


def test_eval_batches_match_the_pil_transform(tmp_path):
    """Resize of the short side (32 / 0.875 = 36), center crop: every image once, in order, a last partial batch;
    images of both orientations."""
    folder = write_smooth(tmp_path / "val", 7, size=(60, 44))
    write_smooth(tmp_path / "val_tall", 3, size=(30, 50))
    for sub in (tmp_path / "val_tall").iterdir():
        for path in sub.iterdir():
            path.rename(folder / sub.name / f"tall_{path.name}")
    files = ImageFiles(str(folder), build_eval_transform(SIZE))
    loader = dali_eval_loader(config(), SESSION, ImageFiles(str(folder)), SequentialSampler(files))
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    got = torch.cat([images for images, _ in batches])
    ref = torch.stack([files[i][0] for i in range(len(files))])
    expected = torch.tensor([label for _, label in files.samples])
    assert torch.equal(torch.cat([labels for _, labels in batches]), expected)
    diff = (got.float() - ref.float()).abs()
    assert got.shape == ref.shape and diff.mean() < 0.6 and diff.max() < 6, (diff.mean(), diff.max())


def recorded_timm_ops(seed_items: SeededItems, index: int, transform) -> list[str]:
    """The operations timm's RandAugment applies to item ``index`` (its names, in order)."""
    applied, original = [], auto_augment.AugmentOp.__call__

    def record(op, img):
        out = original(op, img)
        if out is not img:
            applied.append(op.name)
        return out

    auto_augment.AugmentOp.__call__ = record
    try:
        seed_items[index]
    finally:
        auto_augment.AugmentOp.__call__ = original
    return applied


def test_plans_are_the_operations_timm_applies(smooth_folder):
    """Under the same item seed the plan's applied operations are those timm's transform applies, in order."""
    cfg = config()
    plan = finetune_plan(cfg)
    pil = SeededItems(ImageFiles(str(smooth_folder), build_finetune_transform(cfg)), seed=5)
    dali = SeededItems(dali_train_loader(cfg, SESSION, ImageFiles(str(smooth_folder)), plan).dataset.dataset, seed=5)
    names = _suite_names()
    for index in range(len(pil)):
        ops = np.array(dali[index][1][5:]).reshape(-1, 3)[:, 0].astype(int)
        assert [names[k] for k in ops if k != IDENTITY] == recorded_timm_ops(pil, index, None)


def test_rand_augment_frequencies_and_magnitudes():
    """n = 2 layers; each applies an operation with probability 0.5, each of the 15 alike; magnitudes N(9, 0.5)
    clipped, in bins of 0.1; signs balanced."""
    plan = RandAugmentPlan(AA, SIZE)
    random.seed(0)
    np.random.seed(0)
    draws = np.array([plan.draw() for _ in range(6000)]).reshape(-1, 3)  # one row per layer
    applied = draws[draws[:, 0] != IDENTITY]
    assert plan.layers == 2 and abs(len(applied) / len(draws) - 0.5) < 0.02
    counts = np.bincount(applied[:, 0], minlength=15)
    assert abs(counts / len(applied) - 1 / 15).max() < 0.012
    magnitudes = applied[:, 1] / 10
    assert abs(magnitudes.mean() - 9) < 0.03 and abs(magnitudes.std() - 0.5) < 0.03 and magnitudes.max() <= 10
    assert abs(applied[:, 2].mean() - 0.5 * 9 / 15) < 0.03  # signs drawn for the 9 negated operations only


def write_midrange(folder: Path, count: int) -> Path:
    """Smooth colourful JPEGs in 40..200: every RandAugment operation changes them (auto-contrast included)."""
    gen = np.random.default_rng(1)
    (folder / "c0").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        low = Image.fromarray((40 + gen.random((3, 3, 3)) * 160).astype(np.uint8))
        low.resize((48, 40), Image.BILINEAR).save(folder / "c0" / f"{i:03d}.jpg", quality=95)
    return folder


def test_dali_applies_each_planned_operation(tmp_path):
    """With the same windows and flips (RandAugment draws come after theirs), an image differs from its
    un-augmented crop exactly when its plan applies an operation; the share applied is the plan's."""
    folder = write_midrange(tmp_path / "mid", 48)
    plain, _ = pair(folder, finetune_plan(config(aa=None)), None, batch_size=16)
    augmented, _ = pair(folder, finetune_plan(config()), None, batch_size=16)
    items = augmented.dataset  # SeededItems: an item's plan by its (epoch, index) key
    changed, planned = [], []
    for epoch in (0, 1):
        base = torch.cat([x for x, _ in epoch_batches(plain, epoch)]).int()
        aug = torch.cat([x for x, _ in epoch_batches(augmented, epoch)]).int()
        order = list(augmented.sampler)
        changed += ((aug - base).abs().amax(dim=(1, 2, 3)) > 0).tolist()  # sharpening a smooth crop changes little
        planned += [bool((np.array(items[key][1][5:]).reshape(-1, 3)[:, 0] != IDENTITY).any()) for key in order]
    assert changed == planned
    assert 0.5 < np.mean(planned) < 0.95  # 1 - 0.5^2 = 0.75 of the images


def test_seeds_and_resume_give_the_same_batches(smooth_folder):
    """The same seed gives the same augmented batches; a resumed epoch goes on with the uninterrupted one's."""
    plan = finetune_plan(config())
    first, _ = pair(smooth_folder, plan, None, seed=2)
    again, _ = pair(smooth_folder, plan, None, seed=2)
    whole = epoch_batches(first, 1)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(whole, epoch_batches(again, 1)))
    rest = epoch_batches(again, 1, skip=2)
    assert len(rest) == 2 and all(torch.equal(a, b) for (a, _), (b, _) in zip(whole[2:], rest))
    assert not torch.equal(whole[0][0], epoch_batches(first, 0)[0][0])


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    """Fine-tuning's pipeline skips and counts unreadable files as the pretraining one does; every batch whole."""
    folder = write_solid(tmp_path / "solid", 12)
    (folder / "004.png").write_bytes(b"not an image")
    noise = Image.fromarray((np.random.default_rng(0).random((30, 40, 3)) * 255).astype(np.uint8))
    noise.save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (folder / "009.png").write_bytes(data[:len(data) // 2])
    dali, pil = pair(folder, finetune_plan(config(aa=None)), build_finetune_transform(config(aa=None)))
    with pytest.warns(UserWarning) as caught:
        got = epoch_batches(dali, 0)
    assert all(name in " ".join(str(w.message) for w in caught) for name in ("004.png", "009.png"))
    assert dali.files.skipped == 2 and len(got) == 3 and all(len(x) == 4 for x, _ in got)
    assert [i for x, _ in got for i in solid_ids(x)] == [i for x, _ in epoch_batches(pil, 0) for i in solid_ids(x)]


def test_unmapped_augmentations_are_refused_with_one_line():
    with pytest.raises(UsageError, match="--data_backend pil"):
        finetune_plan(config(aa="original"))
    with pytest.raises(UsageError, match="inc1"):
        finetune_plan(config(aa="rand-m9-mstd0.5"))
    with pytest.raises(UsageError, match="color jitter"):
        finetune_plan(config(aa=None, color_jitter=0.4))


TINY = ["--model", "vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2", "patch_size=8",
        "--input_size", "32", "--batch_size", "4", "--warmup_epochs", "1", "--device", "cpu", "--print_freq", "100",
        "--nb_classes", "2", "--num_workers", "1", "--data_backend", "dali"]


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split")
    write_smooth(root / "train", 16)
    write_smooth(root / "val", 6)
    return root


def test_finetune_cli_runs_on_dali_and_resumes_exactly(split_folder, tmp_path):
    """main_finetune.py --data_backend dali (RandAugment, random erasing, mixup) end to end; resumed from epoch 0's
    checkpoint, epoch 1 gives the uninterrupted run's weights bit for bit."""
    def run(out: Path, *extra: str) -> None:
        main_finetune.main(main_finetune.get_args_parser().parse_args(
            [*TINY, "--epochs", "2", "--save_freq", "1", "--mixup", "0.8", "--cutmix", "1.0", "--data_path",
             str(split_folder), "--output_dir", str(out), *extra]))

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(full)
    log = [json.loads(line) for line in (full / "log.txt").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [0, 1] and all(np.isfinite(rec["train_loss"]) for rec in log)
    ckpt = torch.load(full / "checkpoint-1.pth", weights_only=True)
    assert ckpt["args"]["data_backend"] == "dali"
    run(resumed, "--resume", str(full / "checkpoint-0.pth"))
    again = torch.load(resumed / "checkpoint-1.pth", weights_only=True)["model"]
    assert all(torch.equal(ckpt["model"][k], again[k]) for k in again)


def test_linprobe_cli_runs_on_dali(split_folder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no batch falls back on PIL
        best = main_linprobe.main(main_linprobe.get_args_parser().parse_args(
            [*TINY, "--epochs", "1", "--data_path", str(split_folder), "--output_dir", str(tmp_path)]))
    assert 0 <= best["acc1"] <= 100
