"""Pretraining throughput and peak memory of a recipe on synthetic data.

    python benchmarks/pretrain_throughput.py --model mae_vit_base_patch16 --batch_size 256 [--compile]
    python benchmarks/pretrain_throughput.py --model deepmim_vit_base_patch16_clip --synthetic_clip

Times full optimizer steps (forward, backward, fused AdamW) after warm-up, in the precision the
trainer uses, and prints one JSON line with the device, date and command so results can be recorded.
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
from models.clip_teacher import openai_visual_shapes  # noqa: E402
from util.lr import weight_decay_groups  # noqa: E402
from util.runtime import AMP_DTYPES, parse_model_kwargs  # noqa: E402
from util.train_loop import autocast  # noqa: E402


def measure(model_name: str, batch_size: int, steps: int, warmup: int, device: torch.device,
            amp: str, compile_model: bool, input_size: int = 224, model_kwargs: dict | None = None) -> dict:
    """Run ``warmup + steps`` training steps; return img/s over the timed steps and peak memory (GiB)."""
    model = models.create_model(model_name, img_size=input_size, **(model_kwargs or {})).to(device)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    step_model = torch.compile(model) if compile_model else model
    imgs = torch.randn(batch_size, 3, input_size, input_size, device=device)
    amp_dtype = AMP_DTYPES[amp]

    def step() -> None:
        with autocast(device, amp_dtype):
            loss = step_model(imgs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    return {"img_per_s": round(batch_size * steps / elapsed, 1), "peak_mem_gib": round(peak, 2)}


def synthetic_clip_file(folder: str, input_size: int) -> str:
    """A random-weight CLIP ViT-B/16 image tower (the DeepMIM teacher's shape) saved as a state dict:
    the timing does not depend on the weights, and no download is needed."""
    shapes = openai_visual_shapes(width=768, layers=12, patch_size=16, grid_size=input_size // 16, output_dim=512)
    path = os.path.join(folder, "clip_vit_b16_random.pt")
    torch.save({f"visual.{k}": 0.02 * torch.randn(shape) for k, shape in shapes.items()}, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mae_vit_base_patch16")
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--synthetic_clip", action="store_true",
                   help="give the recipe a random-weight CLIP ViT-B/16 teacher (DeepMIM-CLIP)")
    args = p.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = args.amp or ("bf16" if device.type == "cuda" else "fp32")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    with tempfile.TemporaryDirectory() as folder:
        if args.synthetic_clip:
            model_kwargs["clip_path"] = synthetic_clip_file(folder, args.input_size)
        result = measure(args.model, args.batch_size, args.steps, args.warmup, device, amp, args.compile,
                         args.input_size, model_kwargs)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"model": args.model, "batch_size": args.batch_size, "amp": amp, "compile": args.compile,
                      **result, "device": name, "torch": torch.__version__,
                      "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv)}))


if __name__ == "__main__":
    main()
