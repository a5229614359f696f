"""The papers' table in miniature: every method family pretrained on the same data, at the same resolution and
budget, then each encoder evaluated three ways (kNN, linear probe, short fine-tune) beside the same architecture
from random initialization.

Every step is a subprocess of the real entry point (main_pretrain.py, main_linprobe.py, main_finetune.py, and
benchmarks/knn_eval.py for kNN), one worker per row, so ``--jobs N`` runs N rows at once. A row's pretraining
wall time, img/s and peak RSS (its main_pretrain process, as ``wait4`` reports it) are its own process's. Then
one short in-process timing (``benchmarks.measure``, one thread, synthetic batch) checks UM-MAE against SimMIM
and DMJD's two views against one. Writes ``table.md`` and ``table.json`` into ``--output_dir``.

    OMP_NUM_THREADS=1 python benchmarks/mini_table.py --jobs 2 --output_dir mini_table
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script

import torch  # noqa: E402

from base.errors import UsageError  # noqa: E402
from benchmarks.mini_presets import ARCHS, PRESETS, ROWS, Preset, kwargs_args  # noqa: E402
from util.runtime import run_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Unit:
    """One worker's job: a row (pretrain, then evaluate) or an architecture's random-init baseline."""

    name: str
    arch: str
    row: str | None = None  # None: the random-init baseline of ``arch``
    needs: list[str] = field(default_factory=list)  # rows whose pretraining must finish first


def model_kwargs(row: str, preset: Preset) -> dict:
    """The pretraining model options of ``row``: its architecture's encoder at the preset's size, the preset's
    decoder where the recipe has one, the row's own."""
    spec = ROWS[row]
    return {**ARCHS[spec.arch].encoder(preset), **(preset.decoder if spec.decoder else {}), **spec.model_kwargs}


def run_logged(cmd: list[str], log: Path, env: dict) -> tuple[float, int]:
    """Run ``cmd`` with stdout and stderr to ``log``: (wall seconds, peak RSS in KiB of that process). A failure
    raises with the log's tail."""
    start = time.time()
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.time() - start
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{cmd[1]} failed (exit {proc.returncode}), log {log}:\n{tail}")
    return seconds, usage.ru_maxrss


def last_record(output_dir: Path, key: str) -> dict:
    """The last JSON line of ``output_dir/log.txt`` that has ``key``."""
    records = [json.loads(line) for line in (output_dir / "log.txt").read_text().splitlines() if line.strip()]
    found = [r for r in records if key in r]
    if not found:
        raise RuntimeError(f"{output_dir / 'log.txt'} has no {key!r} record")
    return found[-1]


class Runner:
    """Runs the units of a table: pretraining, kNN, probe and fine-tune processes, with ``--jobs`` workers."""

    def __init__(self, args: argparse.Namespace, preset: Preset):
        self.args, self.preset = args, preset
        self.out = Path(args.output_dir)
        self.launcher = args.launcher.split() if args.launcher else [sys.executable]
        self.env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else dict(os.environ)
        self.done: dict[str, threading.Event] = {}
        self.results: dict[str, dict] = {}

    def data_flags(self) -> list[str]:
        p = self.preset
        flags = ["--data_set", p.data_set, "--input_size", str(p.input_size), "--num_workers", str(p.num_workers)]
        flags += ["--data_path", self.args.data_path] if self.args.data_path else []
        flags += ["--data_limit", str(p.data_limit)] if p.data_limit else []
        return flags + (["--device", self.args.device] if self.args.device else [])

    def checkpoint(self, row: str) -> Path:
        return self.out / row / "pretrain" / f"checkpoint-{self.preset.epochs - 1}.pth"

    def pretrain(self, row: str) -> dict:
        spec, p = ROWS[row], self.preset
        folder = self.out / row / "pretrain"
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = model_kwargs(row, p)
        if spec.teacher:
            kwargs["teacher_path"] = str(self.checkpoint(spec.teacher))
        cmd = [*self.launcher, "main_pretrain.py", "--model", spec.recipe, *kwargs_args(kwargs), *spec.flags,
               *self.data_flags(), "--batch_size", str(p.batch_size), "--epochs", str(p.epochs),
               "--warmup_epochs", str(p.warmup_epochs), "--blr", str(p.blr), "--weight_decay", "0.05",
               "--save_freq", str(p.epochs), "--vis_freq", str(p.epochs), "--knn_freq", "0",
               "--print_freq", "50", "--seed", str(self.args.seed), "--output_dir", str(folder)]
        seconds, rss = run_logged(cmd, self.out / row / "pretrain.log", self.env)
        images = p.epochs * p.data_limit if p.data_limit else None  # an image folder's size is not counted here
        return {"pretrain_s": round(seconds, 1), "img_per_s": round(images / seconds, 1) if images else None,
                "peak_rss_mib": round(rss / 1024), "final_loss": last_record(folder, "train_loss")["train_loss"]}

    def evaluate(self, name: str, arch: str, checkpoint: Path | None) -> dict:
        """kNN, linear probe and fine-tune of ``arch``'s classifier from ``checkpoint`` (None: random init)."""
        p, folder = self.preset, self.out / name
        folder.mkdir(parents=True, exist_ok=True)
        spec = ARCHS[arch]
        model = ["--model", spec.classifier, *kwargs_args(spec.encoder(p) | spec.classify_kwargs)]
        start = ["--finetune", str(checkpoint)] if checkpoint else []
        result: dict = {}
        knn_json = folder / "knn.json"
        # kNN is one process whatever the launcher: an encoder's forward over a few thousand images
        knn = [sys.executable, "benchmarks/knn_eval.py", *model, *start, "--data_set", p.data_set,
               "--input_size", str(p.input_size), "--knn_bank_size", str(p.knn_bank),
               "--knn_query_size", str(p.knn_query), "--seed", str(self.args.seed), "--out", str(knn_json)]
        knn += ["--data_path", self.args.data_path] if self.args.data_path else []
        knn += ["--device", self.args.device] if self.args.device else []
        result["knn_s"] = round(run_logged(knn, folder / "knn.log", self.env)[0], 1)
        result["knn_top1"] = json.loads(knn_json.read_text())["top1"]
        common = [*model, "--global_pool", *start, *self.data_flags(), "--save_freq", "1000", "--print_freq", "50",
                  "--seed", str(self.args.seed)]
        probe = [*self.launcher, "main_linprobe.py", *common, *p.probe, "--output_dir", str(folder / "linprobe")]
        result["probe_s"] = round(run_logged(probe, folder / "linprobe.log", self.env)[0], 1)
        result["probe_top1"] = last_record(folder / "linprobe", "test_acc1")["test_acc1"]
        tune = [*self.launcher, "main_finetune.py", *common, *p.finetune, "--output_dir", str(folder / "finetune")]
        result["finetune_s"] = round(run_logged(tune, folder / "finetune.log", self.env)[0], 1)
        result["finetune_top1"] = last_record(folder / "finetune", "test_acc1")["test_acc1"]
        return result

    def run_unit(self, unit: Unit) -> None:
        try:
            for need in unit.needs:
                self.done[need].wait()
                if "error" in self.results.get(need.split(":", 1)[1], {}):
                    raise RuntimeError(f"needs row {need}, which failed")
            start, result = time.time(), {}
            if unit.row is not None:
                result = self.pretrain(unit.row)
                self.done[f"pretrain:{unit.row}"].set()
                result |= self.evaluate(unit.row, unit.arch, self.checkpoint(unit.row))
            else:
                result = self.evaluate(unit.name, unit.arch, None)
            result["unit_s"] = round(time.time() - start, 1)
            print(f"[mini_table] {unit.name} done in {result['unit_s']:.0f}s: {json.dumps(result)}", flush=True)
        except Exception as err:  # one failed row leaves the others running; the table says it failed
            result = {"error": str(err).splitlines()[0]}
            print(f"[mini_table] {unit.name} FAILED: {err}", flush=True)
        self.results[unit.name] = result
        self.done[unit.name].set()
        if unit.row is not None:
            self.done[f"pretrain:{unit.row}"].set()

    def run(self, rows: list[str]) -> dict[str, dict]:
        archs = list(dict.fromkeys(ROWS[r].arch for r in rows))
        units = [Unit(r, ROWS[r].arch, r, [f"pretrain:{ROWS[r].teacher}"] if ROWS[r].teacher else [])
                 for r in rows] + [Unit(f"random_{a}", a) for a in archs]
        for unit in units:
            self.done[unit.name] = threading.Event()
            if unit.row is not None:
                self.done[f"pretrain:{unit.row}"] = threading.Event()
        # a teacher's row first and its students last, so that they do not hold a worker while they wait; then the
        # baselines (every comparison needs them, so a cut-short run still compares), then the longest rows
        teachers = {ROWS[r].teacher for r in rows} - {None}
        units.sort(key=lambda u: (0 if u.row in teachers else 3 if u.needs else 1 if u.row is None else 2,
                                  -ROWS[u.row].cost if u.row else 0))
        with ThreadPoolExecutor(self.args.jobs) as pool:
            list(pool.map(self.run_unit, units))
        return self.results


def step_costs(preset: Preset, rows: list[str]) -> dict:
    """Per unique image, on one thread with a synthetic batch of the preset: the step time (forward, backward,
    AdamW; ``benchmarks.measure.time_steps``), the bytes autograd saves for backward and the GFLOPs, of UM-MAE
    and SimMIM (their ratio: UM-MAE's README claims about half of both) and of DMJD with two views and one (the
    issue: two views cost less than twice one)."""
    from benchmarks.measure import count_flops, our_step, saved_bytes, time_steps
    from util.runtime import build_named_model

    def cost(row: str, **extra) -> dict:
        kwargs = {**model_kwargs(row, preset), **extra, "img_size": preset.input_size}
        torch.manual_seed(0)
        model = build_named_model(ROWS[row].recipe, **kwargs).model
        imgs = torch.randn(preset.timing_batch, 3, preset.input_size, preset.input_size)
        step, n = our_step(model), preset.timing_batch
        timed = time_steps(step, imgs, None, preset.timing_steps, 2)
        return {"ms_per_img": round(timed["step_s"] * 1000 / n, 3),
                "saved_mib_per_img": round(saved_bytes(step, imgs, None) / n / 2 ** 20, 3),
                "gflop_per_img": round(count_flops(step, imgs, None)[0] / n / 1e9, 4)}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict = {}
    try:
        if {"ummae", "simmim"} <= set(rows):
            um, sim = cost("ummae"), cost("simmim")
            out["ummae_vs_simmim"] = {"ummae": um, "simmim": sim, **{
                f"{k}_ratio": round(um[k] / sim[k], 3) for k in um}}
        if "dmjd" in rows:
            two, one = cost("dmjd"), cost("dmjd", num_views=1)
            out["dmjd_two_views_vs_one"] = {"two_views": two, "one_view": one, **{
                f"{k}_ratio": round(two[k] / one[k], 3) for k in two}}
    finally:
        torch.set_num_threads(threads)
    return out


def fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The Markdown table: one line per row, each figure beside its architecture's random-init one."""
    lines = ["| row | encoder | pretrain s | img/s | peak RSS MiB | kNN top-1 (random) | probe top-1 (random) | "
             "fine-tune top-1 (random) |", "|---|---|---|---|---|---|---|---|"]
    for row, res in report["rows"].items():
        spec = ROWS[row]
        base = report["random"].get(spec.arch, {})
        if "error" in res:
            lines.append(f"| {spec.label} | {ARCHS[spec.arch].label} | failed: {res['error']} | | | | | |")
            continue
        pairs = " | ".join(f"{fmt(res.get(k))} ({fmt(base.get(k))})" for k in
                           ("knn_top1", "probe_top1", "finetune_top1"))
        lines.append(f"| {spec.label} | {ARCHS[spec.arch].label} | {fmt(res['pretrain_s'], 0)} | "
                     f"{fmt(res['img_per_s'])} | {res['peak_rss_mib']} | {pairs} |")
    costs = report.get("step_costs", {})
    if "ummae_vs_simmim" in costs:
        c = costs["ummae_vs_simmim"]
        lines.append(f"\nUM-MAE / SimMIM per image: step time {c['ms_per_img_ratio']:.2f}x, saved activations "
                     f"{c['saved_mib_per_img_ratio']:.2f}x, GFLOPs {c['gflop_per_img_ratio']:.2f}x.")
    if "dmjd_two_views_vs_one" in costs:
        c = costs["dmjd_two_views_vs_one"]
        lines.append(f"DMJD two views / one view per image: step time {c['ms_per_img_ratio']:.2f}x, saved "
                     f"activations {c['saved_mib_per_img_ratio']:.2f}x, GFLOPs {c['gflop_per_img_ratio']:.2f}x.")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                        help="cpu: Fashion-MNIST at 64 px, mini widths (about 45 CPU-minutes); "
                             "tiny: a smoke run; imagenet: full size on GPUs (needs --data_path)")
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS), help="default: every row")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once (a process each)")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS of each process (default: the environment's)")
    parser.add_argument("--data_path", default=None, help="default: the preset's (Fashion-MNIST's system folder)")
    parser.add_argument("--data_limit", type=int, default=None, help="override the preset's training images")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's pretraining epochs")
    parser.add_argument("--device", default=None, help="passed to every step (default: theirs)")
    parser.add_argument("--launcher", default=None,
                        help="command that starts each step's script (default: this Python), e.g. "
                             "'torchrun --nproc_per_node=8'")
    parser.add_argument("--no_step_costs", action="store_true", help="skip the UM-MAE/SimMIM and DMJD timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="mini_table")
    return parser


def run(args: argparse.Namespace) -> dict:
    preset = PRESETS[args.preset]
    preset = preset.with_overrides(data_limit=args.data_limit, epochs=args.epochs)
    args.data_path = args.data_path or preset.data_path
    if args.data_path is None:
        raise UsageError(f"--preset {args.preset} needs --data_path (an ImageNet-style folder with train/ and val/)")
    if args.jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {args.jobs}")
    rows = args.rows or list(ROWS)
    missing = {ROWS[r].teacher for r in rows} - set(rows) - {None}
    if missing:
        raise UsageError(f"row(s) {', '.join(r for r in rows if ROWS[r].teacher in missing)} take the encoder of row "
                         f"{', '.join(sorted(missing))} as teacher: add it to --rows")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = Runner(args, preset).run(rows)
    wall = time.time() - start
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "preset": preset.describe(),
              "jobs": args.jobs, "threads": args.threads or os.environ.get("OMP_NUM_THREADS"),
              "wall_s": round(wall, 1), "load_avg_end": os.getloadavg(),
              "rows": {r: results[r] for r in rows},
              "random": {a: results[f"random_{a}"] for a in dict.fromkeys(ROWS[r].arch for r in rows)}}
    if not args.no_step_costs:
        report["step_costs"] = step_costs(preset, rows)
    table = format_table(report)
    (out / "table.md").write_text(table)
    (out / "table.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    print(f"wall time {wall / 60:.1f} min; {out / 'table.md'}, {out / 'table.json'}")
    return report


if __name__ == "__main__":
    run_cli(run, build_parser)
