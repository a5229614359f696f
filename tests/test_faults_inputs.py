"""Bad inputs end in one clear line before anything is built: class folders that differ between splits, flag
values out of range, an --input_size the model cannot cut into patches, unreadable images (RELIABILITY.md, items 1,
3 and 9)."""
import errno
import os
import re
from pathlib import Path

import pytest
import torch

import main_finetune
import main_linprobe
import main_pretrain
from base.errors import UsageError
from conftest import make_image_folder
from test_pretrain import pretrain_args, read_log
from util.classify import build_loaders, data_classes
from util.config import FinetuneConfig
from util.data import build_dataset, build_eval_transform
from util.session import Session

CLIS = [main_pretrain, main_finetune, main_linprobe]


def three_classes(root: Path, empty_val: str | None = None) -> Path:
    """train/{class0,class1,class2} and val/ with the same folders, ``empty_val`` left without images."""
    make_image_folder(root, num_classes=3, per_class=4, size=32, split="train")
    make_image_folder(root, num_classes=3, per_class=2, size=32, split="val", seed=1)
    if empty_val:
        for image in (root / "val" / empty_val).iterdir():
            image.unlink()
    return root


def classify_loaders(root: Path):
    cfg = FinetuneConfig.from_args(main_finetune.get_args_parser().parse_args(
        ["--data_path", str(root), "--batch_size", "2", "--num_workers", "0"]))
    session = Session(0, 1, torch.device("cpu"), "fp32", None)
    return build_loaders(cfg, session, build_eval_transform(32), build_eval_transform(32), data_classes(cfg))


def test_empty_val_class_keeps_every_label(tmp_path):
    """val/class0 empty: a warning names it, and val keeps train's numbering (class1 is label 1, not 0)."""
    root = three_classes(tmp_path, empty_val="class0")
    with pytest.warns(UserWarning, match="class0"):
        data = classify_loaders(root)
    val = data.val.dataset
    assert val.classes == data.train.dataset.dataset.classes == ["class0", "class1", "class2"]
    assert sorted({label for _, label in val.samples}) == [1, 2]
    assert all(Path(path).parent.name == val.classes[label] for path, label in val.samples)


@pytest.mark.parametrize("change,expected", [("remove", "lacks class2"), ("add", "has extra class3")])
def test_val_classes_must_be_train_classes(tmp_path, change, expected):
    """A class folder missing from val/ or only in val/: one line naming it."""
    root = three_classes(tmp_path)
    if change == "remove":
        for image in (root / "val" / "class2").iterdir():
            image.unlink()
        (root / "val" / "class2").rmdir()
    else:
        make_image_folder(tmp_path / "extra", num_classes=1, split="val")
        (tmp_path / "extra" / "val" / "class0").rename(root / "val" / "class3")
    with pytest.raises(UsageError, match=expected) as info:
        classify_loaders(root)
    assert "\n" not in str(info.value) and str(root / "val") in str(info.value)


def test_unreadable_class_folder_is_an_error(tmp_path, monkeypatch):
    """A folder that cannot be listed (a permission error: simulated, root reads everything) stops with its
    name instead of vanishing with its images."""
    root = three_classes(tmp_path)
    locked = str(root / "train" / "class1")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UsageError, match="class1.*Permission denied"):
        build_dataset("imagefolder", str(root), None)


BAD_VALUES = [("--clip_grad", "-1"), ("--weight_decay", "-1"), ("--data_limit", "-5"), ("--data_limit", "0"),
              ("--save_freq", "0"), ("--print_freq", "0"), ("--num_workers", "-1"), ("--epochs", "0"),
              ("--device", "tpu"), ("--input_size", "0"), ("--lr", "nan"), ("--seed", "-1")]
PRETRAIN_BAD_VALUES = [("--mask_ratio", "0.0"), ("--mask_ratio", "1"), ("--vis_freq", "0"),
                       ("--min_crop_scale", "2")]
FINETUNE_BAD_VALUES = [("--drop_path", "1"), ("--reprob", "1.5"), ("--smoothing", "-0.1"), ("--nb_classes", "0")]


@pytest.mark.parametrize("cli,flag,value", [(cli, *bad) for cli in CLIS for bad in BAD_VALUES]
                         + [(main_pretrain, *bad) for bad in PRETRAIN_BAD_VALUES]
                         + [(main_finetune, *bad) for bad in FINETUNE_BAD_VALUES])
def test_out_of_range_flag_is_refused_while_parsing(cli, flag, value):
    with pytest.raises(UsageError, match=f"argument {flag}: expected .*, got '{value}'"):
        cli.get_args_parser().parse_args([flag, value])


@pytest.mark.parametrize("cli", CLIS, ids=["pretrain", "finetune", "linprobe"])
def test_every_numeric_flag_has_a_range(cli):
    """No flag is parsed by a bare int or float: each declares its range (util/flags.py)."""
    bare = [action.dest for action in cli.get_args_parser()._actions if action.type in (int, float)]
    assert bare == []


@pytest.mark.parametrize("cli,model,size,expected", [
    (main_pretrain, "mae_vit_tiny_patch16", "70", "pass 64 or 80"),
    (main_finetune, "vit_tiny_patch16", "8", "pass 16"),
])
def test_input_size_not_a_multiple_of_the_patch(tmp_path, cli, model, size, expected):
    """Checked once the model is known and before the data is read: the (missing) data is never reached."""
    args = cli.get_args_parser().parse_args([
        "--model", model, "--input_size", size, "--device", "cpu", "--output_dir", str(tmp_path / "out"),
        "--data_set", "fashion_mnist", "--data_path", str(tmp_path / "no_data")])
    with pytest.raises(UsageError) as info:
        cli.main(args)
    assert str(info.value) == f"--input_size {size} is not a multiple of {model}'s patch size 16: {expected}"


def test_skipped_images_are_reported_each_epoch(image_folder, tmp_path, capsys):
    """An unreadable image, met by a data loader worker: the epoch's printed line and its log.txt line count it."""
    (image_folder / "train" / "class1" / "3.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "2", "--num_workers", "1", "--vis_freq", "100"))
    assert [rec["skipped_images"] for rec in read_log(out)] == [1, 1]
    assert re.search(r"^epoch 1: loss \d\.\d+; 1 unreadable image\(s\) skipped$", capsys.readouterr().out, re.M)
