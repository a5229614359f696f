"""Side by side: ``python -m segmentation.demo_report NAME=METRICS.json ...`` (from ``test.py --out-json``)."""
import json
import sys


def main(argv: list[str]) -> None:
    runs = [arg.split("=", 1) for arg in argv]
    if not runs or any(len(run) != 2 for run in runs):
        sys.exit("usage: python -m segmentation.demo_report NAME=METRICS.json [NAME=METRICS.json ...]")
    rows = [(name, json.load(open(path))) for name, path in runs]
    width = max(len(name) for name, _ in rows)
    print(f"{'backbone':<{width}}   mIoU    mAcc    aAcc")
    for name, m in rows:
        print(f"{name:<{width}}  {m['mIoU']:6.2f}  {m['mAcc']:6.2f}  {m['aAcc']:6.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
