"""Compare linear-probe runs side by side: ``python tools/probe_report.py NAME=OUTPUT_DIR ...``.

Reads each run's ``log.txt`` (JSON lines written by main_linprobe / main_finetune) and prints the best
top-1 / top-5 of each, with the gain of every run over the last one (the baseline).
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script

from base.errors import UsageError  # noqa: E402


def best_of(output_dir: str) -> dict:
    """The epoch record with the highest ``test_acc1`` in ``output_dir/log.txt``."""
    path = os.path.join(output_dir, "log.txt")
    if not os.path.isfile(path):
        raise UsageError(f"no {path}: run main_linprobe.py with --output_dir {output_dir} first")
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if "test_acc1" in r]
    if not records:
        raise UsageError(f"{path} has no evaluation records")
    return max(records, key=lambda r: r["test_acc1"])


def report(runs: list[tuple[str, str]]) -> str:
    """runs: [(name, output_dir)] -> a table; the last run is the baseline for the gain column."""
    bests = [(name, best_of(folder)) for name, folder in runs]
    baseline = bests[-1][1]["test_acc1"]
    width = max(len(name) for name, _ in bests)
    lines = [f"{'encoder':<{width}}  top-1    top-5    gain vs {bests[-1][0]}"]
    for name, best in bests:
        lines.append(f"{name:<{width}}  {best['test_acc1']:6.2f}%  {best['test_acc5']:6.2f}%  "
                     f"{best['test_acc1'] - baseline:+6.2f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    try:
        runs = [tuple(arg.split("=", 1)) for arg in argv]
        if not runs or any(len(run) != 2 for run in runs):
            raise UsageError("usage: python tools/probe_report.py NAME=OUTPUT_DIR [NAME=OUTPUT_DIR ...]")
        print(report(runs))
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
