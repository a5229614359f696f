"""Evaluate a trained detector (COCO box AP on the config's test set, images resized to 1333x800):

    python detection/test.py detection/configs/gfl_swin_tiny_fpn_25ep_1024_coco.py work_dirs/swin_t/epoch_25.pth
"""
import argparse
import json
import numbers
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script, also under torchrun

from base.errors import UsageError  # noqa: E402
from detection.runner import load_detection_config  # noqa: E402
from segmentation.runner import add_common_args, build_runner, run  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("GFL detection evaluation")
    add_common_args(p)
    p.add_argument("checkpoint", help="a checkpoint written by detection/train.py")
    p.add_argument("--out-json", help="also write the metrics to this JSON file")
    return p


def main(args: argparse.Namespace) -> dict:
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = load_detection_config(args, ("test_dataloader",))
    cfg.load_from = args.checkpoint
    metrics = build_runner(cfg).test()
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}  # numpy floats too
    print(" ".join(f"{k} {v:.3f}" for k, v in scalars.items()))
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(scalars, f, indent=1)
    return scalars


if __name__ == "__main__":
    run(main, get_args_parser())
