"""What the benchmarks measure of one pretraining step, for our recipes and the official models alike: the
FLOPs of forward + backward, the bytes autograd saves for backward, and the wall time of whole optimizer steps.

A step is a module (whose parameters train) and a loss closure ``imgs -> scalar``, so a recipe of ours and an
official model wrapped by ``benchmarks/official.py`` go through the same code."""
import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from util.optim import weight_decay_groups
from util.session import autocast


@dataclass
class Step:
    """One training step to measure.

    module: the trained module (its parameters get the AdamW step).
    loss: ``imgs [N, 3, H, W] -> scalar``; a DMJD step counts N images, whatever its views.
    target: the frozen target module inside the step (a CLIP teacher, HOG), whose FLOPs are reported apart.
    """

    module: nn.Module
    loss: Callable[[torch.Tensor], torch.Tensor]
    target: nn.Module | None = None


def our_step(model: nn.Module) -> Step:
    """A recipe of ours (``MaskedImageModel``): ``model(imgs).loss``."""
    return Step(model, lambda imgs: model(imgs).loss, getattr(model, "target", None))


def _counting_attention(device: torch.device):
    """The flop counter knows the fused GPU attention kernels but not the CPU one: on the CPU, attention runs as
    the math kernel's matmuls (the same count)."""
    return sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()


def count_flops(step: Step, imgs: torch.Tensor, amp_dtype: torch.dtype | None) -> tuple[int, int]:
    """(FLOPs of one forward + backward of ``step`` on ``imgs``, of which the target's), by
    ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; elementwise work is not
    counted). The gradients it leaves are cleared; no optimizer step is taken."""
    counter = FlopCounterMode(display=False)
    with counter, _counting_attention(imgs.device):
        with autocast(imgs.device, amp_dtype):
            loss = step.loss(imgs)
        loss.backward()
    step.module.zero_grad(set_to_none=True)
    target_flops = 0
    if step.target is not None:
        # the module tracker names a submodule by its path ("MaskedImageModel.target"), one called on its own
        # by its class name
        counts = counter.get_flop_counts()
        names = [name for name in counts if name.split(".")[-1] in ("target", type(step.target).__name__)]
        target_flops = sum(counts[names[0]].values()) if names else 0
    return counter.get_total_flops(), target_flops


# autograd nodes of casts and views: a saved tensor reached from a parameter through these alone is a copy of
# the parameter (autocast's bf16 weights), whose size does not grow with the batch
_CAST_OR_VIEW = {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "PermuteBackward0", "ViewBackward0",
                 "UnsafeViewBackward0", "ExpandBackward0", "AliasBackward0"}


def _parameter_copy(tensor: torch.Tensor, state: set[int], max_depth: int = 4) -> bool:
    """Whether ``tensor`` is a cast or a view of a parameter, one whose storage is in ``state`` (its history:
    casts and views, then that leaf)."""
    node = tensor.grad_fn
    for _ in range(max_depth):
        if node is None or node.name() not in _CAST_OR_VIEW:
            leaf = getattr(node, "variable", None)
            return leaf is not None and leaf.untyped_storage().data_ptr() in state
        inputs = [next_node for next_node, _ in node.next_functions if next_node is not None]
        if len(inputs) != 1:
            return False
        node = inputs[0]
    return False


def saved_bytes(step: Step, imgs: torch.Tensor, amp_dtype: torch.dtype | None) -> int:
    """Bytes of activations autograd keeps for backward after the forward of ``step`` on ``imgs``: the unique
    storages (by data pointer) that the saved-tensor hooks see, less parameters, buffers and their casts (they
    exist whatever the batch; under bf16 autocast the weights' bf16 copies would otherwise count, about 2 bytes
    per parameter). Under (non-reentrant) gradient checkpointing only what autograd keeps outside the checkpointed
    regions counts, which is the point; the checkpoint's own references to its regions' inputs are not seen."""
    state = {t.untyped_storage().data_ptr() for t in [*step.module.parameters(), *step.module.buffers()]}
    if step.target is not None:
        state |= {t.untyped_storage().data_ptr() for t in [*step.target.parameters(), *step.target.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in state and ptr not in saved:
            if _parameter_copy(tensor, state):
                state.add(ptr)
            else:
                saved[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(imgs.device, amp_dtype):
        step.loss(imgs)
    return sum(saved.values())


def make_optimizer(module: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The pretraining optimizer of every recipe: AdamW, betas (0.9, 0.95), weight decay 0.05 on the timm 0.3.2
    groups, fused on the GPU."""
    return torch.optim.AdamW(weight_decay_groups(module, 0.05), lr=1e-4, betas=(0.9, 0.95),
                             fused=device.type == "cuda")


def time_steps(step: Step, imgs: torch.Tensor, amp_dtype: torch.dtype | None, steps: int, warmup: int) -> dict:
    """Run ``warmup`` then ``steps`` optimizer steps (forward, backward, AdamW) on ``imgs``; return the mean
    ``step_s`` of the timed ones and, on a GPU, ``peak_bytes`` (``torch.cuda.max_memory_allocated`` over them)."""
    device = imgs.device
    optimizer = make_optimizer(step.module, device)

    def one_step() -> None:
        with autocast(device, amp_dtype):
            loss = step.loss(imgs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.module.train()
    for _ in range(warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result = {"step_s": (time.perf_counter() - start) / steps}
    if device.type == "cuda":
        result["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return result
