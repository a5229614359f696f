"""What the training CLIs print: MAE's evaluation line, what --eval says (and does not), the progress line's
whole-run ETA, and the one-line refusal of an --accum_iter longer than an epoch."""
import argparse
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import main_finetune
import main_linprobe
import main_pretrain
import util.logging
from base.errors import UsageError
from conftest import TINY_MAE, make_image_folder
from models import create_model
from util.logging import EtaMeter, MetricLogger
from util.runtime import run_tool

ACC_LINE = re.compile(r"^\* Acc@1 (\d+\.\d{3}) Acc@5 (\d+\.\d{3}) loss (\d+\.\d{3})$", re.M)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root, num_classes=3, per_class=8, size=32, split="train", separable=True)
    make_image_folder(root, num_classes=3, per_class=4, size=32, split="val", separable=True, seed=1)
    return root


def cli_args(cli, data: Path, out: Path, *extra: str):
    return cli.get_args_parser().parse_args([
        "--model", "vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2", "patch_size=8",
        "--data_path", str(data), "--input_size", "32", "--num_workers", "0", "--device", "cpu",
        "--batch_size", "8", "--output_dir", str(out), "--print_freq", "1", *extra])


def acc_line(stats: dict) -> str:
    return f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}"


def test_finetune_prints_mae_line_and_eval_prints_only_what_is_evaluated(data, tmp_path, capsys):
    out = tmp_path / "ft"
    best = main_finetune.main(cli_args(main_finetune, data, out, "--epochs", "2", "--warmup_epochs", "0"))
    trained = capsys.readouterr().out
    assert len(ACC_LINE.findall(trained)) == 2  # one per epoch
    assert "layer decay" in trained and "lr " in trained

    checkpoint = str(out / "checkpoint-best.pth")
    stats = main_finetune.main(cli_args(main_finetune, data, tmp_path / "eval", "--eval", "--resume", checkpoint))
    printed = capsys.readouterr().out
    assert ACC_LINE.findall(printed) and acc_line(stats) in printed.splitlines()
    assert stats["acc1"] == pytest.approx(best["acc1"])
    assert checkpoint in printed and str(data) in printed and "12 validation images" in printed
    for hyper in ("layer decay", "eff. batch", "lr ", "drop_path", "mixup", "Epoch"):
        assert hyper not in printed, printed


def test_linprobe_eval_prints_mae_line(data, tmp_path, capsys):
    torch.manual_seed(0)
    pretrained = tmp_path / "pre.pth"
    torch.save({"model": create_model("mae_vit_tiny_patch16", **{**TINY_MAE, "depth": 1}).state_dict()}, pretrained)
    stats = main_linprobe.main(cli_args(main_linprobe, data, tmp_path / "lp", "--eval", "--finetune", str(pretrained)))
    printed = capsys.readouterr().out
    assert acc_line(stats) in printed.splitlines()
    assert str(pretrained) in printed and "12 validation images" in printed
    assert "trainable parameters" not in printed and "LARS" not in printed and "eff. batch" not in printed


def test_eta_meter_smooths_windows():
    meter = EtaMeter(smoothing=0.5)
    assert meter.eta(10) is None
    meter.add(20.0, 10)  # 2 s a step
    assert meter.eta(10) == pytest.approx(20.0)
    meter.add(4.0, 1)  # a 4 s step moves the estimate half-way: 3 s
    assert meter.eta(10) == pytest.approx(30.0)
    meter.add(5.0, 0)  # no step: ignored
    assert meter.eta(1) == pytest.approx(3.0)


def test_progress_line_eta_covers_the_run_and_ignores_epoch_starts(monkeypatch, capsys):
    """On a fake clock: the first step of each epoch (100 s of data-loader start-up) is not timed; the ETA is
    the smoothed step time x every step left in the run, this epoch's and the later epochs'."""
    clock = [0.0]
    monkeypatch.setattr(util.logging, "time", SimpleNamespace(time=lambda: clock[0]))
    meter = EtaMeter()
    epochs, steps = 3, 10

    def run(epoch: int) -> list[str]:
        logger = MetricLogger(f"Epoch: [{epoch}]", steps, 5, torch.device("cpu"),
                              later_steps=(epochs - epoch - 1) * steps, eta_meter=meter)
        for step in range(steps):
            clock[0] += 100.0 if step == 0 else 2.0
            logger.update(8, loss=torch.tensor(1.0))
            logger.maybe_print(step, 1e-3)
        return capsys.readouterr().out.splitlines()

    first = run(0)
    assert len(first) == 3  # steps 0, 5 and 9
    assert "eta" not in first[0] and "img/s" not in first[0]  # nothing timed yet
    assert "run eta 0:00:48" in first[1]  # 2 s x (4 left + 20 later)
    assert "4.0 img/s" in first[1]  # 5 steps x 8 images in 10 s
    assert "run eta 0:00:40" in first[2]  # 2 s x (0 + 20)
    second = run(1)
    assert "run eta 0:00:38" in second[0]  # after 100 s of start-up: still 2 s x (9 + 10), no spike
    assert "run eta 0:00:00" in run(2)[2]


def test_accum_iter_longer_than_an_epoch_is_refused(data, tmp_path):
    """24 training images in batches of 8 are 3 batches an epoch: --accum_iter 4 would never step."""
    with pytest.raises(UsageError, match=r"--accum_iter 4 is more than the 3 batches of an epoch"):
        main_finetune.main(cli_args(main_finetune, data, tmp_path / "ft", "--accum_iter", "4"))
    args = main_pretrain.get_args_parser().parse_args([
        "--model", "mae_vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2",
        "patch_size=8", "decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2", "--data_path",
        str(data / "train"), "--input_size", "32", "--batch_size", "8", "--accum_iter", "4", "--num_workers", "0",
        "--device", "cpu", "--output_dir", str(tmp_path / "pre")])
    with pytest.raises(UsageError, match="--accum_iter 4"):
        main_pretrain.main(args)


def test_an_os_error_on_a_path_is_one_line_and_a_bug_keeps_its_traceback(capsys):
    """Every CLI and tool (run_tool, run_cli; segmentation's run uses the same rule): an OSError naming a path is
    one line and exit 2; an OSError without a path, or any other exception, is a bug and propagates."""
    def denied(_):
        raise PermissionError(13, "Permission denied", "/data/train")

    assert run_tool(denied, argparse.ArgumentParser, []) == 2
    assert capsys.readouterr().err == "error: /data/train: Permission denied\n"

    def broken(_):
        raise OSError("no path")

    with pytest.raises(OSError, match="no path"):
        run_tool(broken, argparse.ArgumentParser, [])
