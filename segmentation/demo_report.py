"""Side by side: ``python -m segmentation.demo_report NAME=METRICS.json ...`` (from ``test.py --out-json``)."""
import json
import sys

COLUMNS = {"mIoU": "mIoU", "mAcc": "mAcc", "aAcc": "aAcc"}  # printed name: metric key (in %)


def table(rows: list[tuple[str, dict]], columns: dict[str, str], scale: float = 1.0) -> str:
    """One line per ``(name, metrics)`` of ``rows``: each metric of ``columns`` times ``scale`` (a negative value,
    COCO's "no object of that size", as '-'), and the gain in the first column over the last row (the baseline,
    random init), so that the demos say in one number what pretraining is worth."""
    first, last = next(iter(columns.values())), rows[-1][1]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'backbone':<{width}}  " + "  ".join(f"{c:>6}" for c in columns) +
             f"  {next(iter(columns))} gain vs {rows[-1][0]}"]
    for name, m in rows:
        gain = f"{scale * (m[first] - last[first]):+6.2f}" if min(m[first], last[first]) >= 0 else f"{'-':>6}"
        lines.append(f"{name:<{width}}  " + "  ".join(f"{scale * m[k]:6.2f}" if m[k] >= 0 else f"{'-':>6}"
                                                      for k in columns.values()) + f"  {gain}")
    return "\n".join(lines)


def side_by_side(argv: list[str], module: str, columns: dict[str, str], scale: float = 1.0) -> None:
    """Print the ``table`` of the runs ``argv`` names, each ``NAME=METRICS.json``."""
    runs = [arg.split("=", 1) for arg in argv]
    if not runs or any(len(run) != 2 for run in runs):
        sys.exit(f"usage: python -m {module} NAME=METRICS.json [NAME=METRICS.json ...]")
    print(table([(name, json.load(open(path))) for name, path in runs], columns, scale))


if __name__ == "__main__":
    side_by_side(sys.argv[1:], "segmentation.demo_report", COLUMNS)
