"""One prepared GPU acceptance run (issue 23): every GPU figure the project still lacks, in one command that fits in
8 minutes on one H100 / H200, written to one JSON and one Markdown table.

    python benchmarks/gpu_check.py --output_dir gpu_check_out
    python benchmarks/gpu_check.py --output_dir gpu_check_out --official_root ../official   # + the official rows
    python benchmarks/gpu_check.py --output_dir /tmp/gpu_check_smoke --smoke               # toy size, on the CPU

Parts, in this order (``--parts`` picks some):

- ``throughput``: the five recipes' pretraining step (``pretrain_throughput.py``) in bf16, eager, and DMJD with
  ``--grad_ckpt stage1``: img/s, step time, peak memory, MFU;
- ``dali_test``: ``tests/test_dali.py`` through pytest, the GPU ("mixed") decoder against PIL among its cases;
- ``dataload``: img/s of the pretraining and fine-tuning input pipelines on a generated folder of JPEGs, PIL and
  DALI;
- ``clip_bf16``: the CLIP teacher's target as the trainer computes it (bf16 on a GPU) against fp32;
- ``fsdp``: two FSDP2 steps in a one-process group;
- ``segmentation``: 20 iterations of ``segmentation/train.py --amp`` on a tiny UperNet config (needs mmseg);
- ``compile``: the five recipes again under ``torch.compile``;
- ``official``: with ``--official_root DIR`` (holding mae/, DeepMIM/, DMJD/, UM-MAE/), ``--compare-official``.

Each part runs in processes of its own with a time limit, within the run's ``--budget_s``; a part that fails,
times out or lacks a package records why and the others go on. The JSON and the Markdown are rewritten after
every part, so a run killed half-way keeps what it measured. A missing package (DALI, mmseg, the official code's
einops) makes a "skipped: <reason>" row, not a failure. ``--smoke`` runs every part at toy size on the CPU (tiny
models, a few steps, a tiny folder), so the script is known to work before a GPU sees it.
"""
import argparse
import dataclasses
import datetime
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base.errors import UsageError  # noqa: E402
from benchmarks.gpu_check_report import finite, markdown, part_status, write_report  # noqa: E402
from util.flags import POSITIVE, ArgumentParser  # noqa: E402
from util.runtime import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the five recipes and their batch sizes on a GPU (benchmarks/README.md's goals)
RECIPES = {"mae_vit_base_patch16": 256, "dmjd_convvit_base_patch16_hog": 128, "deepmim_vit_base_patch16_clip": 256,
           "ummae_swin_tiny_256": 256, "simmim_swin_tiny_256": 256}
# a folder of --official_root -> the recipes compared against it
CLONES = {"mae": ["mae_vit_base_patch16"], "DeepMIM": ["deepmim_vit_base_patch16_clip"],
          "DMJD": ["dmjd_convvit_base_patch16_hog"],
          "UM-MAE": ["ummae_swin_tiny_256", "simmim_swin_tiny_256", "ummae_pvt_small_256", "simmim_pvt_small_256"]}
MISSING_PACKAGE = re.compile(r"No module named '?([\w.]+)'?")
MIN_SECONDS = 5  # a process given less than this is not started: the budget is spent
SMOKE_BOX_FACTOR = 3  # --smoke runs on shared CPUs (CI, a loaded laptop): its time boxes are wider, not its work
# writes the segmentation tests' tiny UperNet config (tests/seg_tiny.py) with ITERS iterations; run as a process of
# its own, as segmentation/train.py is (benchmarks/ does not import segmentation/: .importlinter)
SEG_CONFIG = """
import sys
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]) / "tests")]
from seg_tiny import make_ade_tree, tiny_config
work, iters = Path(sys.argv[2]), int(sys.argv[3])
cfg = tiny_config("upernet_vit_base_512_160k_ade20k.py", make_ade_tree(work / "ade"), work / "run")
cfg.train_cfg.update(max_iters=iters, val_interval=iters)
cfg.default_hooks.checkpoint.interval = iters
cfg.dump(str(work / "tiny_upernet_vit.py"))
"""


class Skipped(Exception):
    """A part or row that cannot run here, and why (a missing package, no time left, nothing given)."""


@dataclasses.dataclass
class Check:
    """What every part is given: the run's flags, its device, its scratch folder and its deadline."""

    args: argparse.Namespace
    device: str
    work: Path
    deadline: float

    @property
    def smoke(self) -> bool:
        return self.args.smoke

    def run(self, argv: list[str], box: float) -> subprocess.CompletedProcess:
        """``python argv...`` in the repository root, for at most ``box`` seconds and no longer than the run's
        budget allows; stdout and stderr captured. Raises Skipped when the budget is spent."""
        limit = min(box * (SMOKE_BOX_FACTOR if self.smoke else 1), self.deadline - time.monotonic())
        if limit < MIN_SECONDS:
            raise Skipped("out of time: the run's --budget_s is spent")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=limit,
                                  env=env)
        except subprocess.TimeoutExpired as err:
            raise TimeoutError(f"timed out after {limit:.0f} s: {' '.join(argv[:4])} ...") from err


def last_json(done: subprocess.CompletedProcess) -> dict:
    """The JSON object a process printed last; its failure as an exception: a missing package is Skipped, any
    other error a RuntimeError with the last line of its stderr (a one-line UsageError, or a traceback's end)."""
    if done.returncode == 0:
        for line in reversed(done.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
    lines = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()
    missing = MISSING_PACKAGE.search(done.stderr)
    if missing:
        raise Skipped(f"{missing.group(1)} is not installed ({lines[-1].strip()[:300]})")
    raise RuntimeError(f"exit status {done.returncode}: {lines[-1].strip()[:500]}")


def measured(name: str, produce: Callable[[], dict]) -> dict:
    """One row: ``produce()``'s figures with status ok, or the reason it was skipped or failed."""
    try:
        return {"name": name, "status": "ok", **produce()}
    except Skipped as why:
        return {"name": name, "status": f"skipped: {why}"}
    except (RuntimeError, TimeoutError, OSError, ValueError, KeyError) as err:
        return {"name": name, "status": "failed", "error": str(err)[:1000]}


# --- the parts ---------------------------------------------------------------------------------------------------

def _throughput_argv(check: Check, models: list[str], *extra: str) -> list[str]:
    if check.smoke:
        return ["benchmarks/pretrain_throughput.py", "--model", *models, "--tiny", "--batch_size", "2", "--steps", "1",
                "--warmup", "0", "--device", "cpu", "--amp", "bf16", *extra]
    return ["benchmarks/pretrain_throughput.py", "--model", *models, "--batch_size", str(RECIPES[models[0]]),
            "--steps", "10", "--warmup", "3", "--device", "cuda", "--amp", "bf16", *extra]


def _throughput_rows(check: Check, label: str, recipes: list[str], extra: list[str], box: float) -> list[dict]:
    """A row per recipe: one process each on a GPU (a failure, e.g. a compile error, loses only its row), one
    process for all the tiny recipes with --smoke."""
    rows = []
    for group in [recipes] if check.smoke else [[name] for name in recipes]:
        try:
            result = last_json(check.run(_throughput_argv(check, group, *extra), box))
            rows += [{"name": f"{row['recipe']} {label}", "status": "ok", **row} for row in result["rows"]]
        except Skipped as why:
            rows += [{"name": f"{name} {label}", "status": f"skipped: {why}"} for name in group]
        except (RuntimeError, TimeoutError, ValueError, KeyError) as err:
            rows += [{"name": f"{name} {label}", "status": "failed", "error": str(err)[:1000]} for name in group]
    return rows


def part_throughput(check: Check) -> dict:
    return {"rows": _throughput_rows(check, "bf16 eager", list(RECIPES), [], box=90)
            + _throughput_rows(check, "bf16 eager, grad_ckpt stage1", ["dmjd_convvit_base_patch16_hog"],
                               ["--grad_ckpt", "stage1"], box=90)}


def part_compile(check: Check) -> dict:
    if check.smoke:  # inductor's C++ compilation on the CPU takes minutes: one recipe, traced by dynamo alone
        return {"rows": _throughput_rows(check, "bf16 compile (dynamo, eager backend)", ["mae_vit_base_patch16"],
                                         ["--compile", "--compile_backend", "eager"], box=150)}
    return {"rows": _throughput_rows(check, "bf16 compile", list(RECIPES), ["--compile"], box=150)}


def part_dali_test(check: Check) -> dict:
    """tests/test_dali.py (with --smoke, its PIL-vs-DALI case alone); an outcome per case, from pytest's JUnit
    XML. The whole module is skipped where DALI does not import."""
    report = check.work / "dali_junit.xml"
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "tests/test_dali.py"]
    if check.smoke:
        argv += ["-k", "test_batches_match_the_pil_path"]
    done = check.run(argv, box=150)
    if not report.exists():  # pytest itself missing (a Skipped), or it died before writing
        last_json(done)
        raise RuntimeError(f"pytest wrote no report (exit status {done.returncode}): {done.stdout[-500:]}")
    rows = []
    for case in ElementTree.parse(report).iter("testcase"):
        outcome = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        status = "ok" if outcome is None and skipped is None else \
            f"skipped: {skipped.get('message', '')}" if outcome is None else "failed"
        row = {"name": case.get("name"), "status": status, "seconds": float(case.get("time", 0))}
        if outcome is not None:
            row["error"] = (outcome.get("message") or "")[:1000]
        rows.append(row)
    return {"rows": rows, "exit_status": done.returncode}


def part_dataload(check: Check) -> dict:
    """img/s of each backend (and pipeline) over a generated folder of 500x375 JPEGs, the batches on the device."""
    folder = check.work / "jpegs"
    images, workers = (8, 1) if check.smoke else (512, min(16, os.cpu_count() or 1))
    made = check.run(["benchmarks/dataload.py", "--make_folder", str(folder), "--images", str(images),
                      "--classes", "4"], box=60)
    if made.returncode:
        last_json(made)  # raises with the reason
    argv = ["benchmarks/dataload.py", "--data_path", str(folder), "--workers", str(workers), "--device", check.device]
    # --smoke: PIL alone (tests/test_dali.py runs dataload.py's DALI path on the CPU; building DALI's pipelines and
    # reading workers is most of a toy run's time)
    argv += ["--batch_size", "4", "--batches", "2", "--warmup", "1", "--input_size", "32", "--backends", "pil"] \
        if check.smoke else ["--batch_size", "128", "--batches", "10", "--warmup", "2"]
    argv += ["--pipelines", "pretrain", "finetune"]
    result = last_json(check.run(argv, box=120))
    rows = [{"name": " ".join(str(row[key]) for key in ("pipeline", "backend", "workers") if key in row),
             "status": "ok", **row} for row in result["rows"]]
    if result.get("dali_missing"):
        rows.append({"name": "dali", "status": f"skipped: DALI does not import ({result['dali_missing']})"})
    return {"rows": rows, "images": images, "command": result.get("command")}


def _in_process_part(check: Check, name: str, box: float) -> dict:
    return last_json(check.run(["benchmarks/gpu_check_parts.py", name,
                                json.dumps({"device": check.device, "smoke": check.smoke})], box))


def part_clip_bf16(check: Check) -> dict:
    return {"rows": [measured("CLIP ViT-B/16 target vs fp32", lambda: _in_process_part(check, "clip_bf16", 90))]}


def part_fsdp(check: Check) -> dict:
    return {"rows": [measured("FSDP2 one-process MAE step", lambda: _in_process_part(check, "fsdp_step", 90))]}


def _seg_losses(work_dir: Path) -> list[float]:
    """The training losses mmengine logged, in order (its scalars.json, else its text log)."""
    for path in sorted(work_dir.rglob("scalars.json")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        losses = [float(r["loss"]) for r in records if "loss" in r]
        if losses:
            return losses
    for path in sorted(work_dir.rglob("*.log")):
        found = re.findall(r"\bloss: ([-+0-9.eE]+|nan|inf)", path.read_text())
        if found:
            return [float(v) for v in found]
    return []


def part_segmentation(check: Check) -> dict:
    """``segmentation/train.py --amp`` (bf16; fp32 on the CPU, where mmengine's AmpOptimWrapper does not run) for
    20 iterations (--smoke: 2) of the tiny UperNet ViT config the segmentation tests use."""
    def train() -> dict:
        missing = [name for name in ("mmseg", "mmengine", "mmcv") if importlib.util.find_spec(name) is None]
        if missing:
            raise Skipped(f"{', '.join(missing)} not importable (the segmentation extra, requirements-seg.txt)")
        iters = 2 if check.smoke else 20
        work = check.work / "seg"
        made = check.run(["-c", SEG_CONFIG, str(ROOT), str(work), str(iters)], box=60)
        if made.returncode:
            last_json(made)
        amp = ["--amp", "bf16"] if check.device == "cuda" else []
        started = time.monotonic()
        done = check.run(["segmentation/train.py", str(work / "tiny_upernet_vit.py"), "--work-dir", str(work / "run"),
                          *amp], box=150)
        if done.returncode:
            last_json(done)
        losses = _seg_losses(work / "run")
        if not losses or not all(map(math.isfinite, losses)):
            raise RuntimeError(f"the losses logged are {losses or 'none'}")
        return {"iterations": iters, "amp": "bf16" if amp else "fp32 (no AMP on the CPU)",
                "first_loss": losses[0], "last_loss": losses[-1], "losses_logged": len(losses),
                "seconds": round(time.monotonic() - started, 1)}
    return {"rows": [measured("UperNet ViT tiny, segmentation/train.py", train)]}


def part_official(check: Check) -> dict:
    """``pretrain_throughput.py --compare-official`` against each clone under --official_root (batch 64 on a GPU;
    --smoke: the tiny recipes, for stand-in clones as the tests write)."""
    root = check.args.official_root
    if root is None:
        raise Skipped("no --official_root given")
    rows = []
    for clone, recipes in CLONES.items():
        path = Path(root) / clone
        groups = [recipes] if check.smoke else [[name] for name in recipes]
        for group in groups:
            def compare(group=group, path=path) -> dict:
                if not path.is_dir():
                    raise Skipped(f"no {path}")
                size = (["--tiny", "--batch_size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu"]
                        if check.smoke else ["--batch_size", "64", "--steps", "5", "--warmup", "2", "--device", "cuda"])
                result = last_json(check.run(["benchmarks/pretrain_throughput.py", "--model", *group, *size,
                                              "--amp", "bf16", "--compare-official", str(path)], box=120))
                return {"rows": result["rows"]}
            row = measured(" ".join(group), compare)
            rows += [{"name": r["recipe"], "status": "ok", **r} for r in row.pop("rows")] if "rows" in row else [row]
    return {"rows": rows}


PARTS: dict[str, Callable[[Check], dict]] = {
    "throughput": part_throughput, "dali_test": part_dali_test, "dataload": part_dataload,
    "clip_bf16": part_clip_bf16, "fsdp": part_fsdp, "segmentation": part_segmentation, "compile": part_compile,
    "official": part_official}


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="where gpu_check.json and gpu_check.md are written")
    p.add_argument("--smoke", action="store_true", help="every part at toy size on the CPU")
    p.add_argument("--official_root", default=None, metavar="DIR",
                   help="a folder holding clones mae/, DeepMIM/, DMJD/, UM-MAE/ for the official rows")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS), metavar="PART",
                   help=f"the parts to run, of {', '.join(PARTS)} (default: all, in that order)")
    p.add_argument("--budget_s", type=POSITIVE, default=None,
                   help="seconds for the whole run (default: 480 on a GPU, 900 with --smoke)")
    return p


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    if not args.smoke and not torch.cuda.is_available():
        raise UsageError("gpu_check.py measures a GPU and this machine has none: pass --smoke for the CPU run")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file: pass a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (900.0 if args.smoke else 480.0)
    device = "cpu" if args.smoke else "cuda"
    argv = sys.argv[1:] if argv is None else argv
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (--smoke)",
              "date": datetime.date.today().isoformat(), "torch": torch.__version__, "smoke": args.smoke,
              "budget_s": budget, "elapsed_s": 0.0,
              "command": " ".join(["python", "benchmarks/gpu_check.py", *argv]), "parts": {}}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        check = Check(args, device, Path(work), start + budget)
        for name in [name for name in PARTS if name in args.parts]:
            began = time.monotonic()
            try:
                part = PARTS[name](check)
                part["status"] = part_status(part["rows"])
            except Skipped as why:
                part = {"status": f"skipped: {why}", "rows": []}
            except Exception as err:  # noqa: BLE001 - one part's failure must not lose the others' results
                part = {"status": "failed", "error": f"{type(err).__name__}: {str(err)[:1000]}", "rows": []}
            part["seconds"] = round(time.monotonic() - began, 1)
            report["parts"][name] = finite(part)
            report["elapsed_s"] = round(time.monotonic() - start, 1)
            write_report(report, output_dir)
            print(f"{name}: {part['status']} ({part['seconds']} s)", flush=True)
    print(markdown(report))
    return report


def main(argv: list[str] | None = None) -> dict:
    return run(build_parser().parse_args(argv), argv)


if __name__ == "__main__":
    run_cli(run, build_parser)
