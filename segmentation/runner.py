"""What ``train.py`` and ``test.py`` share: the flags and a Runner built from a config with them applied."""
import argparse
import os
import sys
from pathlib import Path

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from util.errors import UsageError


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="an mmseg or mmdet config (segmentation/configs/, detection/configs/)")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    p.add_argument("--data-root", help="the ADEChallengeData2016 or COCO folder (default: the config's data_root)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys, key=value")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="pytorch under torchrun")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace) -> Config:
    """The config with the command line applied; one-line errors for missing files."""
    if not os.path.isfile(args.config):
        raise UsageError(f"config {args.config!r} does not exist; see segmentation/configs/")
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join("work_dirs", Path(args.config).stem)
    if args.data_root:
        if not os.path.isdir(args.data_root):
            raise UsageError(f"--data-root {args.data_root!r} does not exist")
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            cfg[loader].dataset.data_root = args.data_root
    return cfg


def build_runner(cfg: Config) -> Runner:
    """The mmengine Runner (this package is imported: the backbone and constructor are registered)."""
    return Runner.from_cfg(cfg)


def run(main, parser: argparse.ArgumentParser) -> None:
    """Parse, run; a UsageError is one line on stderr and exit status 2."""
    args = parser.parse_args()
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        main(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
