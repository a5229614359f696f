"""Learning-rate scaling rules, the per-iteration warmup + half-cosine schedule, and AdamW groups."""
import math

import torch
from torch import nn


def scaled_lr(blr: float, batch_size: int, accum_iter: int, world_size: int,
              ratio: float = 1.0) -> tuple[float, float]:
    """The linear scaling rule ``lr = blr * eff_batch / 256``; returns (lr, eff_batch).

    eff_batch = batch_size * accum_iter * world_size * ratio; ``ratio`` is 1 for MAE and
    pred_ratio / mask_ratio for DMJD's adaptive rule (docs/methods.md §2.6).
    """
    eff_batch = batch_size * accum_iter * world_size * ratio
    return blr * eff_batch / 256, eff_batch


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """LR at a fractional epoch: linear warmup from 0, then a half cosine from lr down to min_lr."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's LR, multiplied by its ``lr_scale`` when it has one (layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def weight_decay_groups(model: nn.Module, weight_decay: float, skip: set[str] = frozenset()) -> list[dict]:
    """Two AdamW groups exactly as the official pretraining forms them (timm 0.3.2 ``add_weight_decay``):
    1-D tensors, names ending in ``.bias`` and ``skip`` get no decay; everything else (cls and mask
    tokens included) is decayed; frozen tensors (the sin-cos tables) are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim == 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
