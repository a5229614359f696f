"""Evaluate a trained segmentor (mIoU on the config's test set, slide inference):

    python segmentation/test.py segmentation/configs/upernet_vit_base_512_160k_ade20k.py work_dirs/vit_b/iter_160000.pth
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from segmentation.commands import SEGMENTATION, evaluate, evaluation_parser  # noqa: E402
from segmentation.runner import run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    return evaluation_parser(SEGMENTATION)


def main(args: argparse.Namespace) -> dict:
    return evaluate(SEGMENTATION, args)


if __name__ == "__main__":
    sys.exit(run(main, get_args_parser()))
