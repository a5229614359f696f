"""The in-process parts of ``benchmarks/gpu_check.py``, each run in a process of its own by it:

    python benchmarks/gpu_check_parts.py clip_bf16 '{"device": "cuda", "smoke": false}'
    python benchmarks/gpu_check_parts.py fsdp_step '{"device": "cuda", "smoke": false}'

Each prints one line of strict JSON (its figures) as its last line; an error is a traceback and a non-zero exit,
which gpu_check.py records as the part's failure.
"""
import datetime
import json
import math
import os
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import create_model, tiny_kwargs  # noqa: E402
from models.clip_teacher import load_clip_teacher, save_random_clip  # noqa: E402
from models.targets import CLIPTarget, teacher_dtype  # noqa: E402
from util.fsdp import shard_model  # noqa: E402
from util.session import autocast  # noqa: E402


def clip_bf16(device: str, smoke: bool) -> dict:
    """The CLIP teacher's target as the trainer computes it on ``device`` (stored in bf16 and run under bf16
    autocast on a GPU, fp32 on a CPU: ``models.targets.teacher_dtype``) against the same teacher in fp32 on the
    CPU: the relative difference ||t - t_fp32|| / ||t_fp32|| of the [N, L, 512] target, and the lowest cosine
    similarity of a token. A random-weight CLIP ViT-B/16 (smoke: a 2-layer, 64-wide one) on random input."""
    shape = dict(width=64, layers=2, patch_size=16, grid_size=4, output_dim=24) if smoke else \
        dict(width=768, layers=12, patch_size=16, grid_size=14, output_dim=512)
    batch = 2 if smoke else 16
    with tempfile.TemporaryDirectory() as folder:
        path = save_random_clip(os.path.join(folder, "clip.pt"), std=0.02, **shape)
        reference, candidate = CLIPTarget(load_clip_teacher(str(path))), CLIPTarget(load_clip_teacher(str(path)))
    torch.manual_seed(0)
    size = shape["patch_size"] * shape["grid_size"]
    imgs = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        expected = reference(imgs)
        got = candidate.to(device)(imgs.to(device)).cpu()
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=-1)
    return {"teacher_dtype": str(teacher_dtype(torch.device(device))).replace("torch.", ""),
            "target_shape": list(expected.shape),
            "relative_difference": float((got - expected).norm() / expected.norm()),
            "min_token_cosine": float(cosine.min()), "mean_token_cosine": float(cosine.mean())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fsdp_step(device: str, smoke: bool) -> dict:
    """Two optimizer steps of MAE ViT-B/16 (smoke: its tiny configuration) sharded by ``util.fsdp.shard_model``
    in a one-process group (NCCL on a GPU, gloo on the CPU), bf16 on a GPU: both losses finite, every parameter a
    DTensor, the weights changed; the step time and the peak memory."""
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device(device)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            device_id=dev if dev.type == "cuda" else None)
    try:
        kwargs = tiny_kwargs("mae_vit_base_patch16") if smoke else {}
        size, batch = kwargs.get("img_size", 224), 2 if smoke else 64
        torch.manual_seed(0)
        model = create_model("mae_vit_base_patch16", **kwargs).to(dev)
        amp = torch.bfloat16 if dev.type == "cuda" else None
        shard_model(model, dev, amp)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
        first = next(model.parameters()).full_tensor().detach().clone()
        imgs = torch.randn(batch, 3, size, size, device=dev)
        losses, times = [], []
        for _ in range(2):
            start = time.perf_counter()
            with autocast(dev, amp):
                loss = model(imgs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times.append(time.perf_counter() - start)
        sharded = all(isinstance(p, DTensor) for p in model.parameters())
        changed = not torch.equal(first, next(model.parameters()).full_tensor().detach())
        result = {"backend": backend, "dtype": "bf16" if amp else "fp32", "batch": batch, "losses": losses,
                  "second_step_ms": round(times[1] * 1e3, 2), "all_parameters_dtensor": sharded,
                  "weights_changed": changed,
                  "peak_mem_gib": round(torch.cuda.max_memory_allocated(dev) / 2 ** 30, 3) if dev.type == "cuda"
                  else None}
        if not (all(map(math.isfinite, losses)) and sharded and changed):
            raise RuntimeError(f"the sharded step went wrong: {result}")
        return result
    finally:
        dist.destroy_process_group()


PARTS = {"clip_bf16": clip_bf16, "fsdp_step": fsdp_step}


def main(argv: list[str]) -> dict:
    if len(argv) != 2 or argv[0] not in PARTS:
        raise SystemExit(f"usage: gpu_check_parts.py {{{','.join(PARTS)}}} JSON")
    result = PARTS[argv[0]](**json.loads(argv[1]))
    result["date"] = datetime.date.today().isoformat()
    print(json.dumps(result, allow_nan=False))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
