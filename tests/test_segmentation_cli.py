"""segmentation/train.py and test.py refuse what a user can fix in one line, exit 2, no traceback: a checkpoint
that does not fit the segmentor (on every load path), a data root that does not exist, an unknown or ill-typed
config key, a path that cannot be used. They say the effective batch, and the configs' schedule is the
official one. Needs the segmentation extra (``make seg``)."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmseg", reason="the segmentation extra is not installed: run `make seg`")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import segmentation  # noqa: E402,F401  (registrations, the loading guard)
from base.errors import UsageError  # noqa: E402
from models import create_model  # noqa: E402
from segmentation import test as seg_test  # noqa: E402
from segmentation import train as seg_train  # noqa: E402
from segmentation.runner import batch_report, run  # noqa: E402
from segmentation.safe_load import key_prefixes  # noqa: E402

from seg_tiny import CONFIGS, ROOT, make_ade_tree, tiny_config  # noqa: E402

VIT = "upernet_vit_base_512_160k_ade20k.py"


@pytest.fixture(scope="module")
def ade_tree(tmp_path_factory) -> Path:
    return make_ade_tree(tmp_path_factory.mktemp("ade"))


def tiny_config_file(tmp_path: Path, data_root: Path | str) -> Path:
    """The ViT config at 64 px as a file the CLIs read (its data root: ``data_root``)."""
    path = tmp_path / "tiny_vit.py"
    tiny_config(VIT, data_root, tmp_path / "work").dump(str(path))
    return path


def pretraining_checkpoint(path: Path) -> Path:
    """An MAE pretraining checkpoint in the official layout ({'model': ..., 'args': Namespace})."""
    mae = create_model("mae_vit_base_patch16", img_size=32, embed_dim=32, depth=2, num_heads=2,
                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    torch.save({"model": mae.state_dict(), "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    return path


def cli(script, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``script``'s command line run in-process."""
    status = run(script.main, script.get_args_parser(), [str(a) for a in argv])
    return status, capsys.readouterr().err


def test_checkpoint_that_does_not_fit_is_refused_on_every_load_path(ade_tree, tmp_path, capsys):
    """A pretraining checkpoint given to test.py (``load_from``), to a Runner's ``load_from`` and found by
    ``--resume`` is refused in one line naming the missing and unexpected key prefixes, before any evaluation
    or training: mmengine would load it non-strict, warn pages up, and report mIoU 0.00."""
    ckpt = pretraining_checkpoint(tmp_path / "mae.pth")
    config = tiny_config_file(tmp_path, ade_tree)
    status, err = cli(seg_test, [config, ckpt, "--work-dir", tmp_path / "t"], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith(f"error: checkpoint {ckpt} does not fit")
    assert "missing" in err and "backbone" in err and "decode_head" in err
    assert "unexpected 2 keys (model, args)" in err and "--pretrained" in err

    cfg = tiny_config(VIT, ade_tree, tmp_path / "load_from")
    cfg.load_from = str(ckpt)
    with pytest.raises(UsageError, match="does not fit the model"):
        Runner.from_cfg(cfg).test()

    work = tmp_path / "resumed"
    work.mkdir()
    (work / "iter_4.pth").write_bytes(ckpt.read_bytes())
    (work / "last_checkpoint").write_text(str(work / "iter_4.pth"))
    status, err = cli(seg_train, [config, "--work-dir", work, "--resume"], capsys)
    assert status == 2 and err.count("\n") == 1 and "iter_4.pth does not fit the model" in err


def test_fit_report_names_prefixes_and_shapes(tmp_path):
    """Missing blocks collapse to one prefix with ``*`` for block numbers; a head of another class count is
    named with both shapes; a file of the same model loads."""
    assert key_prefixes(["a.blocks.0.rel.t", "a.blocks.1.rel.t", "model"], ["a.blocks.0.w", "a.blocks.1.w"]) \
        == ["a.blocks.*.rel", "model"]
    cfg = tiny_config(VIT, tmp_path, tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    state = runner.model.state_dict()
    path = tmp_path / "segmentor.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    runner.load_checkpoint(str(path))
    state["decode_head.conv_seg.weight"] = torch.zeros(7, 16, 1, 1)
    torch.save({"state_dict": state}, path)
    with pytest.raises(UsageError, match=r"1 key of another shape \(decode_head.conv_seg.weight \(7, 16, 1, 1\) for "
                                         r"\(150, 16, 1, 1\)\); was it written with this config\?"):
        runner.load_checkpoint(str(path))


def test_missing_data_root_is_one_line(ade_tree, tmp_path, capsys):
    """Without --data-root, the config's own data root is checked too (it was a FileNotFoundError traceback
    when it did not exist), and so are the image and annotation folders below a root that exists."""
    status, err = cli(seg_train, [tiny_config_file(tmp_path, tmp_path / "absent"), "--work-dir", tmp_path / "w"],
                      capsys)
    assert status == 2 and err.count("\n") == 1
    assert f"the data root '{tmp_path / 'absent'}' (train_dataloader) does not exist: pass --data-root" in err
    status, err = cli(seg_test, [tiny_config_file(tmp_path, ade_tree), tmp_path / "tiny_vit.py",
                                 "--data-root", ade_tree / "images"], capsys)
    assert status == 2 and "validation' (test_dataloader data_prefix.img_path) does not exist" in err


@pytest.mark.parametrize("option, message", [
    ("model.backbone.drop_path=0.2", "--cfg-options model.backbone.drop_path: vit_base_patch16 does not take "
                                     "drop_path"),
    ("train_cfg.max_iter=2", "--cfg-options train_cfg.max_iter: IterBasedTrainLoop takes no 'max_iter'; "
                             "did you mean max_iters?"),
    ("train_cfg.max_iters=abc", "--cfg-options train_cfg.max_iters='abc': the config's value is a number (4), "
                                "not a string"),
    ("model.backbone.type=NoSuchNet", "the config's type NoSuchNet is not in the"),
    ("data_root=/elsewhere", "--cfg-options data_root: 'data_root' is a variable of the config file"),
    ("train_cfgs.max_iters=2", "the config has no 'train_cfgs' and the runner reads no such key; did you mean "
                               "train_cfg?"),
])
def test_bad_config_keys_are_one_line(option, message, ade_tree, tmp_path, capsys):
    """Unknown and ill-typed --cfg-options keys were TypeError tracebacks; each is one line naming the key."""
    status, err = cli(seg_train, [tiny_config_file(tmp_path, ade_tree), "--work-dir", tmp_path / "w",
                                  "--cfg-options", option], capsys)
    assert status == 2 and err.count("\n") == 1 and message in err, err


def test_unusable_work_dir_is_one_line(ade_tree, tmp_path, capsys):
    """A --work-dir below a file (an OSError on a user's path) is one line naming it."""
    (tmp_path / "file").write_text("")
    status, err = cli(seg_train, [tiny_config_file(tmp_path, ade_tree), "--work-dir", tmp_path / "file" / "w"],
                      capsys)
    assert status == 2 and err.count("\n") == 1 and str(tmp_path / "file") in err


def test_effective_batch_is_said_and_another_warned():
    """The papers' batch is 16 = 8 x 2: one process (and SyncBN run as BN) or four are warned, naming
    --auto-scale-lr; eight are not; with auto_scale_lr enabled the scaling is said instead."""
    cfg = Config.fromfile(str(CONFIGS / VIT))
    line, warn = batch_report(cfg, 1)
    assert warn and line.startswith("effective batch 2 (1 process x 2) differs from the batch 16")
    assert "SyncBN becomes BN" in line and "run 8 processes, or pass --auto-scale-lr" in line
    line, warn = batch_report(cfg, 4)
    assert warn and line.startswith("effective batch 8 (4 processes x 2) differs") and "SyncBN" not in line
    assert batch_report(cfg, 8) == ("effective batch 16 (8 processes x 2), the batch the config is for", False)
    cfg.auto_scale_lr.enable = True
    assert batch_report(cfg, 1) == ("effective batch 2 (1 process x 2): the learning rate is scaled by 2/16 "
                                    "(--auto-scale-lr)", False)


def test_auto_scale_lr_flag_scales_the_learning_rate(ade_tree, tmp_path):
    """--auto-scale-lr (off by default) turns on mmengine's linear scaling to the config's base batch 16."""
    config = tiny_config_file(tmp_path, ade_tree)
    for flag, ratio in (([], 1.0), (["--auto-scale-lr"], 2 / 16)):
        args = seg_train.get_args_parser().parse_args([str(config), "--work-dir", str(tmp_path / "w"), *flag])
        runner = seg_train.build(args)
        optim = runner.build_optim_wrapper(runner.optim_wrapper)
        runner.scale_lr(optim, runner.auto_scale_lr)
        assert optim.optimizer.param_groups[-1]["lr"] == pytest.approx(5e-5 * ratio)  # the heads, scale 1


def official_lr(it: int, lr: float = 1e-4, warmup: int = 1500, ratio: float = 1e-6, total: int = 160000) -> float:
    """mmcv 1.x ``lr_config=dict(policy='poly', power=1.0, min_lr=0.0, by_epoch=False, warmup='linear',
    warmup_iters=1500, warmup_ratio=1e-6)`` at iteration ``it`` of ``runner.max_iters = 160000``: the poly value,
    times the linear warmup factor on top of it while ``it < 1500``."""
    regular = lr * (1 - it / total) ** 1.0
    return regular * (1 - (1 - it / warmup) * (1 - ratio)) if it < warmup else regular


def test_schedule_is_the_official_poly_with_warmup_on_top():
    """The configs' LinearLR + PolyLR give the official learning rate at every checked iteration (it was 0.95%
    higher after the warmup: the poly decay started at 1500 instead of 0)."""
    cfg = Config.fromfile(str(CONFIGS / "_base_upernet_ade20k.py"))
    assert cfg.train_cfg.max_iters == 160000
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    schedulers = [PARAM_SCHEDULERS.build({**spec, "optimizer": optimizer}) for spec in cfg.param_scheduler]
    checked = {0, 1, 750, 1499, 1500, 1501, 80000, 159998, 159999}
    for it in range(160000):  # the LR iteration ``it`` trains with, then the schedulers' step after it
        if it in checked:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(official_lr(it), rel=1e-9, abs=1e-18), it
        for scheduler in schedulers:
            scheduler.step()


@pytest.mark.slow
def test_command_lines_exit_2_without_traceback(ade_tree, tmp_path):
    """The scripts as users run them: one line on stderr, exit status 2, no traceback."""
    ckpt = pretraining_checkpoint(tmp_path / "mae.pth")
    config = tiny_config_file(tmp_path, ade_tree)
    for argv in (["segmentation/test.py", config, ckpt, "--work-dir", tmp_path / "t"],
                 ["segmentation/train.py", config, "--work-dir", tmp_path / "w", "--cfg-options",
                  "train_cfg.max_iter=2"]):
        result = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: ")
