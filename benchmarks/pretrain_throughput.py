"""Pretraining throughput, memory, FLOPs and MFU of recipes on a synthetic batch, optionally against the official
implementation in the same process.

    python benchmarks/pretrain_throughput.py --model mae_vit_base_patch16 --batch_size 256 [--compile]
    python benchmarks/pretrain_throughput.py --model ummae_swin_tiny_256 simmim_swin_tiny_256 --batch_size 256
    python benchmarks/pretrain_throughput.py --model mae_vit_base_patch16 --compare-official ../mae
    python benchmarks/pretrain_throughput.py --model dmjd_convvit_base_patch16_hog --tiny --device cpu   # a smoke run

Times full optimizer steps (forward, backward, fused AdamW) after warm-up, in the trainer's precision, on a
batch already on the device (the model, not the data loader). Prints one Markdown table (a row per --model),
then one line of JSON (no NaN or Infinity: what cannot be measured is null, with the reason under
"null_reasons"). img/s counts unique images: a DMJD image is one image, whatever its views.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base.errors import UsageError  # noqa: E402
from benchmarks import official  # noqa: E402
from benchmarks.device_peaks import peak_tflops  # noqa: E402
from benchmarks.measure import Step, count_flops, our_step, saved_bytes, time_steps  # noqa: E402
from models import tiny_kwargs  # noqa: E402
from models.clip_teacher import save_random_clip  # noqa: E402
from util.flags import NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ArgumentParser, device_name  # noqa: E402
from util.runtime import (AMP_DTYPES, amp_choice, build_named_model, parse_model_kwargs, run_cli,  # noqa: E402
                          select_device)

# the five recipes the issues set goals for -> their input size at full scale
RECIPES = {"mae_vit_base_patch16": 224, "dmjd_convvit_base_patch16_hog": 224, "deepmim_vit_base_patch16_clip": 224,
           "ummae_swin_tiny_256": 256, "simmim_swin_tiny_256": 256}
# other recipes whose input size is not 224 (the UM-MAE PVT-S pair, which --compare-official also knows)
INPUT_SIZES = {**RECIPES, "ummae_pvt_small_256": 256, "simmim_pvt_small_256": 256}
GRAD_CKPT = ("none", "stage1", "all")


def synthetic_clip_file(folder: str, input_size: int) -> str:
    """A random-weight CLIP ViT-B/16 image tower (the DeepMIM teacher's shape) saved as a state dict:
    the timing does not depend on the weights, and no download is needed."""
    return str(save_random_clip(os.path.join(folder, "clip_vit_b16_random.pt"), width=768, layers=12, patch_size=16,
                                grid_size=input_size // 16, output_dim=512, std=0.02))


def recipe_kwargs(name: str, args: argparse.Namespace, folder: str) -> tuple[int, dict]:
    """(input size, options) of recipe ``name``: at full size, or with ``--tiny`` its registered tiny configuration
    (``models.tiny_kwargs``), then ``--model_kwargs``. A recipe whose teacher is a CLIP checkpoint (its tiny
    configuration names a ``clip_path``) gets a random CLIP ViT-B/16 at full size unless one is given."""
    tiny = tiny_kwargs(name, folder)
    kwargs = dict(tiny) if args.tiny else {}
    own_size = kwargs.pop("img_size", None)
    size = args.input_size or own_size or INPUT_SIZES.get(name, 224)
    kwargs |= parse_model_kwargs(args.model_kwargs)
    if "clip_path" in tiny and "clip_path" not in kwargs:
        kwargs["clip_path"] = synthetic_clip_file(folder, size)
    return size, kwargs


def check_grad_ckpt(model: torch.nn.Module, name: str, mode: str) -> None:
    """Refuse ``--grad_ckpt`` for a model that cannot checkpoint, before any measuring."""
    if mode != "none" and not callable(getattr(model, "set_grad_checkpointing", None)):
        raise UsageError(f"--grad_ckpt {mode}: gradient checkpointing is unavailable for {name} (its model has no "
                         "set_grad_checkpointing); pass --grad_ckpt none")


def measure(step: Step, imgs: torch.Tensor, amp: str, steps: int, warmup: int,
            prepare: Callable[[], Step] | None = None) -> dict:
    """FLOPs of forward + backward (and of the target), bytes saved for backward and step time of ``step`` on
    ``imgs``. ``prepare`` turns on what changes the run but not the model's FLOPs (gradient checkpointing, whose
    recomputation is not credited to MFU; compilation) and returns the step to time; memory is measured after it."""
    dtype = AMP_DTYPES[amp]
    flops, target_flops = count_flops(step, imgs, dtype)
    timed = prepare() if prepare else step
    saved = saved_bytes(step, imgs, dtype)  # the eager step: the hooks see what eager autograd keeps
    return {"flops": flops, "target_flops": target_flops, "saved": saved,
            **time_steps(timed, imgs, dtype, steps, warmup)}


def significant(value: float, digits: int = 4) -> float:
    """``value`` to ``digits`` significant digits (tiny CPU runs and H100 runs differ by orders of magnitude)."""
    return float(f"{value:.{digits}g}")


def describe(m: dict, batch: int, device: torch.device, peak: tuple[float | None, str], null_reasons: dict) -> dict:
    """The reported figures of one measured step ``m`` (``measure``), per unique image where they say so; a
    figure that cannot be had is None, with its reason added to ``null_reasons``."""
    tflops = m["flops"] / m["step_s"] / 1e12
    row = {"img_per_s": significant(batch / m["step_s"]), "step_ms": significant(m["step_s"] * 1e3),
           "peak_mem_gib": significant(m["peak_bytes"] / 2 ** 30) if "peak_bytes" in m else None,
           "saved_mib_per_img": significant(m["saved"] / batch / 2 ** 20),
           "flops_per_step": m["flops"], "gflop_per_img": significant(m["flops"] / batch / 1e9),
           "target_gflop_per_img": significant(m["target_flops"] / batch / 1e9),
           "tflops": significant(tflops), "mfu": significant(tflops / peak[0]) if peak[0] else None}
    if row["peak_mem_gib"] is None:
        null_reasons["peak_mem_gib"] = f"no CUDA device ({device.type}): see saved_mib_per_img"
    if row["mfu"] is None:
        null_reasons["mfu"] = peak[1]
    return row


def device_peak(device: torch.device, amp: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s for MFU, where it comes from or why it is unknown)."""
    if override:
        return override, "--peak_tflops"
    if device.type != "cuda":
        return None, f"no peak TFLOP/s is known for a {device.type.upper()}; pass --peak_tflops"
    return peak_tflops(torch.cuda.get_device_name(device), amp)


def run_one(name: str, args: argparse.Namespace, device: torch.device, amp: str, folder: str,
            build_official: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> dict:
    """One row: our recipe ``name`` measured and, given ``build_official``, the official model too."""
    input_size, kwargs = recipe_kwargs(name, args, folder)
    torch.manual_seed(0)
    imgs = torch.randn(args.batch_size, 3, input_size, input_size, device=device)
    model = build_named_model(name, img_size=input_size, **kwargs).model.to(device)
    check_grad_ckpt(model, name, args.grad_ckpt)
    with torch.no_grad():
        views = model(imgs[:1]).mask.shape[0]  # encoder rows per image: 2 for DMJD

    def prepare() -> Step:
        if args.grad_ckpt != "none":
            model.set_grad_checkpointing(args.grad_ckpt)
        return our_step(torch.compile(model, backend=args.compile_backend) if args.compile else model)

    peak = device_peak(device, amp, args.peak_tflops)
    null_reasons: dict = {}
    ours = measure(our_step(model), imgs, amp, args.steps, args.warmup, prepare)
    row = {"recipe": name, "batch": args.batch_size, "input_size": input_size, "views": views, "dtype": amp,
           "compile": args.compile, "grad_ckpt": args.grad_ckpt,
           **describe(ours, args.batch_size, device, peak, null_reasons), "peak_tflops": peak[0]}
    del model, prepare
    if build_official:
        helper = build_named_model(name, img_size=input_size, **kwargs).model
        helper.target.to(device)  # only the target / teacher the official loop computes goes to the device
        theirs = build_official(helper).to(device)
        measured = measure(official.official_step(name, theirs, helper), imgs, amp, args.steps, args.warmup)
        official_reasons: dict = {}
        row["official"] = {**describe(measured, args.batch_size, device, peak, official_reasons),
                           "null_reasons": official_reasons}
        row["step_time_ratio"] = significant(ours["step_s"] / measured["step_s"], 3)
        del theirs, helper
    row["null_reasons"] = null_reasons
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def format_table(rows: list[dict]) -> str:
    """The rows as one Markdown table; a null figure shows as n/a (the JSON says why)."""
    columns = [("recipe", "recipe"), ("batch", "batch"), ("dtype", "dtype"), ("compile", "compile"),
               ("grad_ckpt", "grad ckpt"), ("img_per_s", "img/s"), ("step_ms", "step ms"),
               ("peak_mem_gib", "peak GiB"), ("saved_mib_per_img", "saved MiB/img"),
               ("gflop_per_img", "GFLOP/img"), ("tflops", "TFLOP/s"), ("mfu", "MFU")]
    compared = any("official" in row for row in rows)
    header = [title for _, title in columns] + (["official img/s", "step time ours/official"] if compared else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row[key] for key, _ in columns]
        if compared:
            cells += [row.get("official", {}).get("img_per_s"), row.get("step_time_ratio")]
        lines.append("| " + " | ".join("n/a" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["mae_vit_base_patch16"], metavar="NAME",
                   help="one or more recipes: a table row each")
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every --model")
    p.add_argument("--tiny", action="store_true",
                   help="each --model at its registered tiny configuration (models.tiny_kwargs): a smoke run")
    p.add_argument("--batch_size", type=POSITIVE_INT, default=256, help="unique images per step")
    p.add_argument("--input_size", type=POSITIVE_INT, default=None,
                   help="default: each recipe's own (224 or 256; with --tiny its tiny one)")
    p.add_argument("--steps", type=POSITIVE_INT, default=20)
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=5)
    p.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES), help="default: bf16 on a GPU, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="time the torch.compile'd model")
    p.add_argument("--compile_backend", default="inductor", choices=("inductor", "eager"),
                   help="torch.compile's backend with --compile (eager: dynamo's tracing alone, a smoke run)")
    p.add_argument("--grad_ckpt", default="none", choices=GRAD_CKPT,
                   help="gradient checkpointing: none, the first stage, or all blocks")
    p.add_argument("--device", type=device_name, default=None)
    p.add_argument("--peak_tflops", type=POSITIVE, default=None,
                   help="the device's peak dense TFLOP/s for MFU (default: the table in device_peaks.py)")
    p.add_argument("--compare_official", "--compare-official", default=None, metavar="PATH",
                   help="a clone of the official repository: time its model too and report ours/official")
    return p


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Measure every ``--model``; print the table and the JSON; return the JSON's object."""
    device = torch.device(select_device(args.device))
    amp, _ = amp_choice(args.amp, device)
    builders = {name: official.official_builder(name, args.compare_official) if args.compare_official else None
                for name in args.model}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory() as folder:
        rows = [run_one(name, args, device, amp, folder, builders[name]) for name in args.model]
    argv = sys.argv[1:] if argv is None else argv
    result = {"rows": rows, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/pretrain_throughput.py", *argv])}
    print(format_table(rows))
    print(json.dumps(result, allow_nan=False))
    return result


def main(argv: list[str] | None = None) -> dict:
    return run(build_parser().parse_args(argv), argv)


if __name__ == "__main__":
    run_cli(run, build_parser)
