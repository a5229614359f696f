"""Side by side: ``python -m detection.demo_report NAME=METRICS.json ...`` (from ``test.py --out-json``)."""
import json
import sys

COLUMNS = {"box AP": "coco/bbox_mAP", "AP50": "coco/bbox_mAP_50", "AP75": "coco/bbox_mAP_75",
           "APs": "coco/bbox_mAP_s", "APm": "coco/bbox_mAP_m", "APl": "coco/bbox_mAP_l"}


def main(argv: list[str]) -> None:
    runs = [arg.split("=", 1) for arg in argv]
    if not runs or any(len(run) != 2 for run in runs):
        sys.exit("usage: python -m detection.demo_report NAME=METRICS.json [NAME=METRICS.json ...]")
    rows = [(name, json.load(open(path))) for name, path in runs]
    width = max(len(name) for name, _ in rows)
    print(f"{'backbone':<{width}}  " + "  ".join(f"{c:>6}" for c in COLUMNS))
    for name, m in rows:  # COCO's AP in percent, as papers print it; -1: no object of that size to measure
        print(f"{name:<{width}}  " + "  ".join(f"{100 * m[k]:6.1f}" if m[k] >= 0 else f"{'-':>6}"
                                                  for k in COLUMNS.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
