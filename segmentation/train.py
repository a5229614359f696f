"""Train a UperNet segmentor on ADE20K with one of our encoders:

    python segmentation/train.py segmentation/configs/upernet_vit_base_512_160k_ade20k.py \
        --pretrained output_dir/checkpoint-1599.pth --work-dir work_dirs/vit_b --amp
    torchrun --nproc_per_node=8 segmentation/train.py CONFIG --launcher pytorch --pretrained CKPT --amp

The configs' learning rate and 160k iterations are for batch 16 (8 processes x 2); another batch is said in a
warning at start, and ``--auto-scale-lr`` scales the learning rate linearly to it.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from mmengine.runner import Runner  # noqa: E402

from segmentation.commands import SEGMENTATION, build_training, train, training_parser  # noqa: E402
from segmentation.runner import run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    return training_parser(SEGMENTATION)


def build(args: argparse.Namespace) -> Runner:
    """The Runner of the command line, its loops built (one-line errors for what a user can fix)."""
    return build_training(SEGMENTATION, args)


def main(args: argparse.Namespace) -> None:
    train(SEGMENTATION, args)


if __name__ == "__main__":
    sys.exit(run(main, get_args_parser()))
