"""Train a GFL detector on COCO with one of our encoders:

    python detection/train.py detection/configs/gfl_swin_tiny_fpn_25ep_1024_coco.py \
        --pretrained output_dir/checkpoint-99.pth --data-root /data/coco --work-dir work_dirs/swin_t --amp
    torchrun --nproc_per_node=8 detection/train.py CONFIG --launcher pytorch --pretrained CKPT --amp
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from base.errors import UsageError  # noqa: E402
from detection.runner import load_detection_config  # noqa: E402
from segmentation.runner import add_common_args, build_runner, run  # noqa: E402

AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("GFL detection training")
    add_common_args(p)
    p.add_argument("--pretrained", help="encoder weights: our or an official pretraining / fine-tuning checkpoint")
    p.add_argument("--amp", nargs="?", const="bf16", choices=sorted(AMP_DTYPES),
                   help="mixed precision through mmengine's AmpOptimWrapper (GPU only): bf16 (the default), or "
                        "fp16 with the official loss scale 512")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
    return p


def main(args: argparse.Namespace) -> None:
    cfg = load_detection_config(args, ("train_dataloader", "val_dataloader"))
    if args.pretrained:
        if not os.path.isfile(args.pretrained):
            raise UsageError(f"--pretrained {args.pretrained!r} does not exist")
        cfg.model.backbone.pretrained = args.pretrained
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.dtype = AMP_DTYPES[args.amp]
        if args.amp == "fp16":
            cfg.optim_wrapper.loss_scale = dict(init_scale=512.0)
    cfg.resume = args.resume
    build_runner(cfg).train()


if __name__ == "__main__":
    run(main, get_args_parser())
