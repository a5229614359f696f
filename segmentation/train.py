"""Train a UperNet segmentor on ADE20K with one of our encoders:

    python segmentation/train.py segmentation/configs/upernet_vit_base_512_160k_ade20k.py \
        --pretrained output_dir/checkpoint-1599.pth --work-dir work_dirs/vit_b --amp
    torchrun --nproc_per_node=8 segmentation/train.py CONFIG --launcher pytorch --pretrained CKPT --amp

The configs' learning rate and 160k iterations are for batch 16 (8 processes x 2); another batch is said in a
warning at start, and ``--auto-scale-lr`` scales the learning rate linearly to it.
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from mmengine.runner import Runner  # noqa: E402

from base.errors import UsageError  # noqa: E402
from segmentation.runner import add_common_args, build_runner, load_config, report_batch, run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("UperNet segmentation training")
    add_common_args(p)
    p.add_argument("--pretrained", help="encoder weights: our or an official pretraining / fine-tuning checkpoint")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (mmengine AmpOptimWrapper; GPU only)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the learning rate by the effective batch / the config's auto_scale_lr.base_batch_size")
    return p


def build(args: argparse.Namespace) -> Runner:
    """The Runner of the command line, its loops built (one-line errors for what a user can fix)."""
    cfg = load_config(args, ("train_dataloader", "val_dataloader"))
    if args.pretrained:
        if not os.path.isfile(args.pretrained):
            raise UsageError(f"--pretrained {args.pretrained!r} does not exist")
        cfg.model.backbone.pretrained = args.pretrained
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.dtype = "bfloat16"
    if args.auto_scale_lr:
        if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
            raise UsageError("--auto-scale-lr needs the batch the config's learning rate is for: set "
                             "auto_scale_lr = dict(base_batch_size=...) in the config")
        cfg.auto_scale_lr.enable = True
    cfg.resume = args.resume
    return build_runner(cfg, ("train", "val"), args.cfg_options)


def main(args: argparse.Namespace) -> None:
    runner = build(args)
    report_batch(runner)
    runner.train()


if __name__ == "__main__":
    sys.exit(run(main, get_args_parser()))
