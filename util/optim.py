"""Optimization: learning-rate scaling rules, the per-iteration warmup + half-cosine schedule, AdamW groups,
and LARS as the official linear probe uses it."""
import math
from typing import Callable, Iterable, Optional

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


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling with momentum, as the official MAE linear probe uses it (the MoCo v3
    optimizer).

    For each parameter ``p`` with gradient ``g`` (per-group ``lr``, ``weight_decay``, ``momentum``,
    ``trust_coefficient``):

    * ``p.ndim > 1`` (weights): ``dp = g + weight_decay * p``, then ``dp *= q`` with the trust ratio
      ``q = trust_coefficient * ||p|| / ||dp||`` (L2 norms over the whole tensor), ``q = 1`` where
      either norm is zero;
    * otherwise (biases, norm gains): ``dp = g``, with neither weight decay nor trust scaling;
    * ``mu = momentum * mu + dp`` (``mu`` starts at zeros), ``p -= lr * mu``.

    Why not ``timm.optim.Lars`` (timm 1.0.31, ``timm/optim/lars.py``): its trust ratio is
    ``trust_coeff * ||p|| / (||g|| + weight_decay * ||p|| + eps)`` with ``eps = 1e-8``, i.e. weight
    decay enters the denominator as a sum of norms instead of ``||g + weight_decay * p||``, and its
    zero check looks at ``||g||`` rather than the decayed update. It adapts only when
    ``weight_decay != 0`` or ``always_adapt=True``, so with weight decay 0 (the linear-probe setting)
    it is plain momentum SGD; and whenever it adapts it does so for every tensor, 1-D ones included,
    which then also get weight decay. None of its settings reproduces the official update.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0,
                 momentum: float = 0.9, trust_coefficient: float = 0.001) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One update of every parameter that has a gradient; returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim > 1:
                    # Out of place: p.grad must stay the raw gradient.
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm = torch.linalg.vector_norm(p)
                    update_norm = torch.linalg.vector_norm(dp)
                    one = torch.ones_like(param_norm)
                    # torch.where keeps the zero-norm special case on device (no .item() sync).
                    q = torch.where(param_norm > 0,
                                    torch.where(update_norm > 0,
                                                group["trust_coefficient"] * param_norm / update_norm,
                                                one),
                                    one)
                    dp = dp.mul(q)

                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])

        return loss
