"""Train a UperNet segmentor on ADE20K with one of our encoders:

    python segmentation/train.py segmentation/configs/upernet_vit_base_512_160k_ade20k.py \
        --pretrained output_dir/checkpoint-1599.pth --work-dir work_dirs/vit_b --amp
    torchrun --nproc_per_node=8 segmentation/train.py CONFIG --launcher pytorch --pretrained CKPT --amp
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from base.errors import UsageError  # noqa: E402
from segmentation.runner import add_common_args, build_runner, load_config, run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("UperNet segmentation training")
    add_common_args(p)
    p.add_argument("--pretrained", help="encoder weights: our or an official pretraining / fine-tuning checkpoint")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (mmengine AmpOptimWrapper; GPU only)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
    return p


def main(args: argparse.Namespace) -> None:
    cfg = load_config(args)
    if args.pretrained:
        if not os.path.isfile(args.pretrained):
            raise UsageError(f"--pretrained {args.pretrained!r} does not exist")
        cfg.model.backbone.pretrained = args.pretrained
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.dtype = "bfloat16"
    cfg.resume = args.resume
    build_runner(cfg).train()


if __name__ == "__main__":
    run(main, get_args_parser())
