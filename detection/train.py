"""Train a GFL detector on COCO with one of our encoders:

    python detection/train.py detection/configs/gfl_swin_tiny_fpn_25ep_1024_coco.py \
        --pretrained output_dir/checkpoint-99.pth --data-root /data/coco --work-dir work_dirs/swin_t --amp
    torchrun --nproc_per_node=8 detection/train.py CONFIG --launcher pytorch --pretrained CKPT --amp

``--amp`` is bf16; ``--amp fp16`` is the official fp16 with an initial loss scale of 512.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from detection.runner import DETECTION  # noqa: E402
from segmentation.commands import train, training_parser  # noqa: E402
from segmentation.runner import run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    return training_parser(DETECTION)


def main(args: argparse.Namespace) -> None:
    train(DETECTION, args)


if __name__ == "__main__":
    sys.exit(run(main, get_args_parser()))
