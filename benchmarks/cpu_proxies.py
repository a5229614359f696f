"""Device-independent cost proxies of a pretraining step, measured on the CPU: the work (GFLOPs of forward +
backward, and of that the frozen target's, e.g. the CLIP teacher) and the activation memory (bytes saved for
backward) per image; with ``--compare-official``, the same for the official model and the CPU step-time ratio.

    python benchmarks/cpu_proxies.py                      # the five recipes at full size, batch 2, bf16
    python benchmarks/cpu_proxies.py --recipes ummae_swin_tiny_256 --batch_size 1 --json
    python benchmarks/cpu_proxies.py --recipes mae_vit_base_patch16 --compare-official ../mae

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` with the math attention kernel (so
attention is counted as its matmuls). Saved bytes are the unique storages (by data pointer) that autograd
saves for backward during the forward, parameters and buffers excluded, under ``--amp`` autocast (bf16 by
default, the GPU recipes' precision) with the default attention kernel (which, like the fused GPU kernels,
keeps no attention matrix); MiB = 2^20 bytes. Both are divided by the number of images (a DMJD image counts
once, its V views included): they do not depend on the machine's load. Only the step-time ratio is timed.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import official  # noqa: E402
from benchmarks.measure import count_flops, our_step, saved_bytes, time_steps  # noqa: E402
from benchmarks.pretrain_throughput import INPUT_SIZES, RECIPES, recipe_kwargs, significant  # noqa: E402
from util.flags import NON_NEGATIVE_INT, POSITIVE_INT, ArgumentParser  # noqa: E402
from util.runtime import AMP_DTYPES, build_named_model, run_cli  # noqa: E402

COLUMNS = ("recipe", "views", "gflop", "target_gflop", "saved_mib")
OFFICIAL_COLUMNS = ("official_gflop", "official_saved_mib", "step_time_ratio")


def measure(name: str, batch_size: int = 2, img_size: int | None = None, model_kwargs: dict | None = None,
            amp: str = "bf16", build_official: Callable[[nn.Module], nn.Module] | None = None, steps: int = 2,
            warmup: int = 1) -> dict:
    """Recipe ``name`` on ``batch_size`` random images -> per image: ``gflop`` (one forward + backward), of which
    ``target_gflop`` the target's, and ``saved_mib`` (saved for backward by the forward, under ``amp``); ``views``
    the encoder rows per image. With ``build_official``: the official model's ``official_gflop`` and
    ``official_saved_mib``, and ``step_time_ratio``, our CPU step time over the official one (``steps`` timed
    optimizer steps each, after ``warmup``)."""
    img_size = img_size or INPUT_SIZES.get(name, 224)
    torch.manual_seed(0)
    model = build_named_model(name, img_size=img_size, **(model_kwargs or {})).model
    imgs = torch.randn(batch_size, 3, img_size, img_size)
    dtype, step = AMP_DTYPES[amp], our_step(model)
    flops, target_flops = count_flops(step, imgs, dtype)
    with torch.no_grad():
        views = model(imgs[:1]).mask.shape[0]
    row = {"recipe": name, "views": views, "gflop": significant(flops / batch_size / 1e9),
           "target_gflop": significant(target_flops / batch_size / 1e9),
           "saved_mib": significant(saved_bytes(step, imgs, dtype) / batch_size / 2 ** 20, 3)}
    if build_official:
        ours_s = time_steps(step, imgs, dtype, steps, warmup)["step_s"]
        theirs = official.official_step(name, build_official(model), model)  # our target / masks feed it
        their_flops, _ = count_flops(theirs, imgs, dtype)
        row.update(official_gflop=significant(their_flops / batch_size / 1e9),
                   official_saved_mib=significant(saved_bytes(theirs, imgs, dtype) / batch_size / 2 ** 20, 3),
                   step_time_ratio=significant(ours_s / time_steps(theirs, imgs, dtype, steps, warmup)["step_s"], 3))
    return row


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (per image: GFLOPs forward + backward and the target's share, MiB saved for
    backward; with the official model: its GFLOPs and MiB, and the step-time ratio ours/official)."""
    columns = COLUMNS + (OFFICIAL_COLUMNS if any("step_time_ratio" in row for row in rows) else ())
    titles = {"recipe": "recipe", "views": "views", "gflop": "GFLOP fwd+bwd / img", "target_gflop": "of which target",
              "saved_mib": "saved MiB / img", "official_gflop": "official GFLOP / img",
              "official_saved_mib": "official saved MiB / img", "step_time_ratio": "CPU step time ours/official"}
    lines = ["| " + " | ".join(titles[c] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), metavar="NAME")
    p.add_argument("--batch_size", type=POSITIVE_INT, default=2)
    p.add_argument("--input_size", type=POSITIVE_INT, default=None,
                   help="default: each recipe's own (224 or 256; with --tiny its tiny one)")
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every recipe")
    p.add_argument("--tiny", action="store_true",
                   help="each recipe at its registered tiny configuration (models.tiny_kwargs): a smoke run")
    p.add_argument("--amp", default="bf16", choices=("bf16", "fp32"),
                   help="autocast of the saved-bytes pass and the timed steps (FLOPs do not depend on it)")
    p.add_argument("--compare_official", "--compare-official", default=None, metavar="PATH",
                   help="a clone of the official repository: its model's FLOPs, saved bytes and step-time ratio")
    p.add_argument("--steps", type=POSITIVE_INT, default=2, help="timed steps per side with --compare-official")
    p.add_argument("--warmup", type=NON_NEGATIVE_INT, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict:
    """Measure every recipe; print the table (or the JSON); return the JSON's object."""
    builders = {name: official.official_builder(name, args.compare_official) if args.compare_official else None
                for name in args.recipes}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.recipes:
            size, kwargs = recipe_kwargs(name, args, folder)
            rows.append(measure(name, args.batch_size, size, kwargs, args.amp, builders[name], args.steps,
                                args.warmup))
    argv = sys.argv[1:] if argv is None else argv
    result = {"rows": rows, "batch_size": args.batch_size, "dtype": args.amp, "torch": torch.__version__,
              "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/cpu_proxies.py", *argv])}
    print(json.dumps(result, allow_nan=False) if args.json else format_table(rows))
    return result


def main(argv: list[str] | None = None) -> dict:
    return run(build_parser().parse_args(argv), argv)


if __name__ == "__main__":
    run_cli(run, build_parser)
