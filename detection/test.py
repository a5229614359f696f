"""Evaluate a trained detector (COCO box AP on the config's test set, images resized to 1333x800):

    python detection/test.py detection/configs/gfl_swin_tiny_fpn_25ep_1024_coco.py work_dirs/swin_t/epoch_25.pth
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from detection.runner import DETECTION  # noqa: E402
from segmentation.commands import evaluate, evaluation_parser  # noqa: E402
from segmentation.runner import run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    return evaluation_parser(DETECTION)


def main(args: argparse.Namespace) -> dict:
    return evaluate(DETECTION, args)


if __name__ == "__main__":
    sys.exit(run(main, get_args_parser()))
