"""Side by side: ``python -m segmentation.demo_report NAME=METRICS.json ...`` (from ``test.py --out-json``)."""
import json
import sys

COLUMNS = {"mIoU": "mIoU", "mAcc": "mAcc", "aAcc": "aAcc"}  # printed name: metric key (in %)


def side_by_side(argv: list[str], module: str, columns: dict[str, str], scale: float = 1.0) -> None:
    """Print one row per ``NAME=METRICS.json`` of ``argv``: each metric of ``columns`` times ``scale`` (a negative
    value, COCO's "no object of that size", as '-')."""
    runs = [arg.split("=", 1) for arg in argv]
    if not runs or any(len(run) != 2 for run in runs):
        sys.exit(f"usage: python -m {module} NAME=METRICS.json [NAME=METRICS.json ...]")
    rows = [(name, json.load(open(path))) for name, path in runs]
    width = max(len(name) for name, _ in rows)
    print(f"{'backbone':<{width}}  " + "  ".join(f"{c:>6}" for c in columns))
    for name, m in rows:
        print(f"{name:<{width}}  " + "  ".join(f"{scale * m[k]:6.2f}" if m[k] >= 0 else f"{'-':>6}"
                                                  for k in columns.values()))


if __name__ == "__main__":
    side_by_side(sys.argv[1:], "segmentation.demo_report", COLUMNS)
