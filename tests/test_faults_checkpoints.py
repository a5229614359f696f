"""Checkpoints under faults: divergence, a full disk, the wrong file given to --resume, an unreadable newest
checkpoint, a resume with another batch, a finished run resumed (RELIABILITY.md, items 3, 5, 6, 7, 9 and 11)."""
import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

import main_finetune
import main_pretrain
from base.errors import UsageError
from base.safe_load import load_file
from conftest import make_image_folder
from test_finetune import tiny_cli_args
from test_pretrain import pretrain_args, read_log
from util.checkpoint import latest_checkpoint

ONE_STEP = ("--data_limit", "8", "--vis_freq", "100")  # one batch of 8: one optimizer step an epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=8, size=32)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A 2-epoch tiny pretraining run that saved checkpoint-0.pth and checkpoint-1.pth."""
    out = tmp_path_factory.mktemp("finished") / "run"
    main_pretrain.main(pretrain_args(data, out, "--epochs", "2", "--save_freq", "1", *ONE_STEP))
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def test_divergence_on_the_last_update_writes_no_checkpoint(data, tmp_path):
    """Epoch 1's only update (warmup over: lr 1e36) throws the weights to ~1e36, finite but garbage, after the
    last loss was checked: the save refuses, names the epoch, and checkpoint-0.pth stays the newest."""
    out = tmp_path / "run"
    args = pretrain_args(data, out, "--epochs", "2", "--save_freq", "1", "--lr", "1e36", "--weight_decay", "0",
                         *ONE_STEP)
    with pytest.raises(UsageError, match=rf"weights after epoch 1 are not finite .* {out}/checkpoint-0.pth is "
                                         "intact; resume from it with a lower --blr"):
        main_pretrain.main(args)
    assert latest_checkpoint(str(out)) == str(out / "checkpoint-0.pth")
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "checkpoint-0.pth"))["model"].values())


class FullDisk:
    """A checkpoint temp file on a disk that is full after its first KiB."""

    def __init__(self, file):
        self.file, self.written = file, 0

    def write(self, data) -> int:
        if self.written + len(data) > 1024:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_disk_full_on_save_is_one_line(data, tmp_path, monkeypatch):
    """The second checkpoint's writes fail with ENOSPC: one line naming both files, no temp file left."""
    real_fdopen, temps = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".tmp-"):
            temps.append(fd)
            return FullDisk(file) if len(temps) == 2 else file
        return file

    monkeypatch.setattr(os, "fdopen", fdopen)
    out = tmp_path / "run"
    with pytest.raises(UsageError) as info:
        main_pretrain.main(pretrain_args(data, out, "--epochs", "2", "--save_freq", "1", *ONE_STEP))
    assert str(info.value) == (f"No space left on device while writing {out}/checkpoint-1.pth; the previous "
                               f"checkpoint {out}/checkpoint-0.pth is intact: free some space, then resume with "
                               "--auto_resume")
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint-0.pth"] and not list(out.glob(".tmp-*"))


def _wrong_files(run: Path) -> dict[str, tuple[Path, str]]:
    """Files --resume is given by mistake, each with what its one line must say."""
    ckpt = load_file(str(run / "checkpoint-1.pth"))
    torch.save(ckpt["model"], run / "bare.pth")
    torch.save(torch.zeros(3, 4), run / "tensor.pth")
    ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(7)
    torch.save(ckpt, run / "optimizer.pth")
    return {"bare": (run / "bare.pth", r"holds bare weights \(a state dict of \d+ tensors\), not a training "
                                       "checkpoint: --resume takes a checkpoint-<epoch>.pth this framework wrote"),
            "tensor": (run / "tensor.pth", r"holds a Tensor of shape \(3, 4\), not a training checkpoint"),
            "optimizer": (run / "optimizer.pth", r"holds an optimizer state of another shape \('exp_avg' of shape "
                                                 r"\(7,\) for a parameter of shape"),
            "decoder": (run / "checkpoint-1.pth", r"holds weights of another model \(saved by --model "
                                                  r"mae_vit_tiny_patch16 --model_kwargs .*decoder_depth=1 .*; "
                                                  r"missing \(\d+\): decoder_blocks.1.*\): resume with the --model "
                                                  "and --model_kwargs of the run that wrote it")}


@pytest.mark.parametrize("case", ["bare", "tensor", "optimizer", "decoder"])
def test_resume_of_the_wrong_file_is_one_line(data, run_copy, tmp_path, case):
    path, expected = _wrong_files(run_copy)[case]
    extra = ("--model_kwargs", *pretrain_args(data, tmp_path).model_kwargs[:-2], "decoder_depth=2",
             "decoder_num_heads=2") if case == "decoder" else ()
    args = pretrain_args(data, tmp_path / "new", "--epochs", "3", "--resume", str(path), *ONE_STEP, *extra)
    with pytest.raises(UsageError, match=expected) as info:
        main_pretrain.main(args)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_pretraining_checkpoint_given_to_finetune_resume(finished, tmp_path):
    """Fine-tuning's --resume of a pretraining checkpoint points to --finetune."""
    root = make_image_folder(tmp_path / "cls", num_classes=2, per_class=8, size=32)
    make_image_folder(root, num_classes=2, per_class=2, size=32, split="val")
    path = finished / "checkpoint-1.pth"
    args = main_finetune.get_args_parser().parse_args(tiny_cli_args(
        root, tmp_path / "ft", "--batch_size", "8", "--epochs", "1", "--resume", str(path)))
    with pytest.raises(UsageError, match=rf"{path} is a pretraining checkpoint \(saved by --model "
                                         rf"mae_vit_tiny_patch16 .*\), not one of a classifier: start from its "
                                         rf"weights with --finetune {path}$"):
        main_finetune.main(args)


def test_auto_resume_falls_back_past_an_unreadable_checkpoint(data, run_copy, capsys):
    """A newest checkpoint cut short (a crash outside our atomic save, a copy that stopped): a warning names
    it and the run continues from the one before."""
    newest = run_copy / "checkpoint-1.pth"
    newest.write_bytes(newest.read_bytes()[:1000])
    main_pretrain.main(pretrain_args(data, run_copy, "--epochs", "3", "--save_freq", "1", "--auto_resume",
                                     *ONE_STEP))
    out = capsys.readouterr().out
    assert f"warning: cannot load checkpoint '{newest}'" in out and "falling back to" in out
    assert f"resumed from {run_copy / 'checkpoint-0.pth'} at epoch 1" in out
    assert [rec["epoch"] for rec in read_log(run_copy)] == [0, 1, 1, 2]


def test_resume_with_another_batch_warns(data, run_copy, capsys):
    """The effective batch (here --batch_size 4 instead of 8) changes the steps per epoch: said in one line."""
    main_pretrain.main(pretrain_args(data, run_copy, "--epochs", "3", "--auto_resume", "--batch_size", "4",
                                     *ONE_STEP))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert lines == [f"warning: {run_copy / 'checkpoint-1.pth'} was trained with effective batch 8 and lr "
                     "2.000e-03, this run uses 4 and 2.000e-03: its steps per epoch and LR schedule change from "
                     "here on"]


def test_resuming_a_finished_run_says_so(data, run_copy, capsys):
    main_pretrain.main(pretrain_args(data, run_copy, "--epochs", "2", "--auto_resume", *ONE_STEP))
    assert (f"nothing left to train: {run_copy / 'checkpoint-1.pth'} ends at epoch 1 and --epochs is 2; pass a "
            "larger --epochs to train on") in capsys.readouterr().out
    assert len(read_log(run_copy)) == 2
