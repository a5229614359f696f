"""Device-independent cost proxies of a pretraining step, measured on the CPU in fp32: the work (GFLOPs of
forward + backward) and the activation memory (bytes saved for backward) per image.

    python benchmarks/cpu_proxies.py                      # the five recipes at full size, batch 2
    python benchmarks/cpu_proxies.py --recipes ummae_swin_tiny_256 --batch_size 1 --json

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` with the math attention kernel (so
attention is counted as its matmuls). Saved bytes are the unique storages (by data pointer) that autograd
saves for backward during the forward, parameters and buffers excluded, with the default attention kernel
(which, like the fused GPU kernels, keeps no attention matrix); MiB = 2^20 bytes. Both are divided by the
number of images (a DMJD image counts once, its V views included). Nothing here is timed: the figures do
not depend on the machine's load.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from benchmarks.pretrain_throughput import synthetic_clip_file  # noqa: E402
from util.runtime import parse_model_kwargs  # noqa: E402

# recipe -> its input size at full scale
RECIPES = {"mae_vit_base_patch16": 224, "dmjd_convvit_base_patch16_hog": 224, "deepmim_vit_base_patch16_clip": 224,
           "ummae_swin_tiny_256": 256, "simmim_swin_tiny_256": 256}
COLUMNS = ("recipe", "views", "gflop", "saved_mib")


def measure(name: str, batch_size: int = 2, img_size: int | None = None, model_kwargs: dict | None = None) -> dict:
    """Recipe ``name`` on ``batch_size`` random images -> per image: ``gflop`` (one forward + backward) and
    ``saved_mib`` (saved for backward by the forward); ``views`` the encoder rows per image."""
    img_size = img_size or RECIPES.get(name, 224)
    torch.manual_seed(0)
    model = models.create_model(name, img_size=img_size, **(model_kwargs or {}))
    imgs = torch.randn(batch_size, 3, img_size, img_size)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        out = model(imgs)
        out.loss.backward()
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in state:
            saved[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(imgs)
    return {"recipe": name, "views": out.mask.shape[0] // batch_size,
            "gflop": round(counter.get_total_flops() / batch_size / 1e9, 2),
            "saved_mib": round(sum(saved.values()) / batch_size / 2 ** 20, 1)}


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (per image: GFLOPs forward + backward, MiB saved for backward)."""
    lines = ["| recipe | views | GFLOP fwd+bwd / img | saved MiB / img |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), metavar="NAME")
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--input_size", type=int, default=None, help="default: each recipe's own (224 or 256)")
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for every recipe (e.g. a tiny configuration)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.recipes:
            kwargs = parse_model_kwargs(args.model_kwargs)
            if name.endswith("_clip") and "clip_path" not in kwargs:  # a random CLIP ViT-B/16 of the right shape
                kwargs["clip_path"] = synthetic_clip_file(folder, args.input_size or RECIPES.get(name, 224))
            rows.append(measure(name, args.batch_size, args.input_size, kwargs))
    result = {"rows": rows, "batch_size": args.batch_size, "dtype": "float32", "torch": torch.__version__,
              "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/cpu_proxies.py", *argv])}
    print(json.dumps(result) if args.json else format_table(rows))
    return result


if __name__ == "__main__":
    main()
