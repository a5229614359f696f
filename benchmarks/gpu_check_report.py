"""The report of ``benchmarks/gpu_check.py``: a status per part from its rows' statuses, the JSON (strict: no NaN
or infinity) and the Markdown table, each rewritten whole after every part."""
import json
import math
import os
from pathlib import Path


def part_status(rows: list[dict]) -> str:
    """ok when every row is; failed when none ran and one failed; otherwise what ran and what did not."""
    statuses = [row["status"] for row in rows]
    if not statuses:
        return "skipped: nothing to run"
    ok, failed = statuses.count("ok"), statuses.count("failed")
    if failed:
        return "partly failed" if ok else "failed"
    if ok:
        return "ok" if ok == len(statuses) else "ok, some skipped"
    return statuses[0] if len(set(statuses)) == 1 else "skipped"


def summary(row: dict) -> str:
    """The row's headline figures in a few words."""
    if "workers" in row:  # dataload.py's
        return f"{row['img_per_s']} img/s" + (f", {row['bytes_per_img']} B/img" if "bytes_per_img" in row else "")
    if "img_per_s" in row:
        text = f"{row['img_per_s']} img/s, {row['step_ms']} ms/step"
        text += f", peak {row['peak_mem_gib']} GiB" if row.get("peak_mem_gib") is not None else ""
        text += f", MFU {row['mfu']}" if row.get("mfu") is not None else ""
        if "step_time_ratio" in row:
            text += f"; official {row['official']['img_per_s']} img/s, ours/official {row['step_time_ratio']}"
        return text
    if "relative_difference" in row:
        return (f"{row['teacher_dtype']} teacher: relative difference {row['relative_difference']:.3g}, "
                f"lowest token cosine {row['min_token_cosine']:.6f}")
    if "all_parameters_dtensor" in row:
        return f"{row['backend']}, {row['dtype']}: losses {row['losses']}, {row['second_step_ms']} ms/step"
    if "last_loss" in row:
        return f"{row['iterations']} iterations, {row['amp']}: loss {row['first_loss']:.4g} -> {row['last_loss']:.4g}"
    return row.get("error", "")


def markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['device']}, {report['date']}", "",
             f"`{report['command']}` (torch {report['torch']}, {report['elapsed_s']} s of a {report['budget_s']} s "
             f"budget{', --smoke' if report['smoke'] else ''})", "",
             "| part | what | status | result | s |", "|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        rows = part.get("rows") or [{"name": "", "status": part["status"], "error": part.get("error", "")}]
        for row in rows:
            try:
                result = summary(row)
            except (KeyError, TypeError, ValueError):  # a row of an unforeseen shape: the JSON has it whole
                result = "see the JSON"
            cells = [name, row["name"], row["status"], result.replace("|", "/"), str(part["seconds"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir: Path) -> None:
    """The JSON and the Markdown, each replaced whole (a kill mid-write leaves the previous complete file)."""
    for name, text in (("gpu_check.json", json.dumps(report, indent=1, allow_nan=False)),
                       ("gpu_check.md", markdown(report))):
        partial = output_dir / f".{name}.partial"
        partial.write_text(text)
        os.replace(partial, output_dir / name)


def finite(value):
    """``value`` with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
