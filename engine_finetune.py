"""Fine-tuning / linear-probing epoch and evaluation, for every encoder."""
from typing import Callable, Iterable

import torch
from torch import nn

from util import distributed as dist_util
from util.logging import RunLog
from util.train_loop import TrainConfig, autocast, run_epoch


def classification_loss(criterion: nn.Module, mixup_fn: Callable | None = None):
    """compute_loss for the shared loop: (images, labels) -> criterion(model(images), labels),
    with Mixup/CutMix applied on the device when given (soft targets)."""

    def compute(model: nn.Module, batch, device: torch.device):
        imgs = batch[0].to(device, non_blocking=True)
        targets = batch[1].to(device, non_blocking=True)
        if mixup_fn is not None:
            imgs, targets = mixup_fn(imgs, targets)
        return criterion(model(imgs), targets), {}

    return compute


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, cfg: TrainConfig, mixup_fn: Callable | None = None,
                    scaler: torch.amp.GradScaler | None = None, run_log: RunLog | None = None,
                    ema=None) -> dict[str, float]:
    """One epoch of supervised training; ``ema`` (timm ModelEmaV3) is updated after each optimizer step."""
    after_step = (lambda: ema.update(model)) if ema is not None else None
    return run_epoch(model, loader, optimizer, device, epoch, cfg, classification_loss(criterion, mixup_fn),
                     scaler, run_log, after_step)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (%) over ``loader``, summed over processes when the
    loader is sharded (``--dist_eval``). Counts are summed, not per-process means, so shards of
    unequal size are weighted correctly."""
    model.eval()
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, top-1, top-5, count
    count = 0
    for imgs, targets in loader:
        imgs, targets = imgs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(imgs)
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        totals[:3] += torch.stack([loss.double(), hits[:, :1].sum().double(), hits.sum().double()])
        count += len(targets)
    totals[3] = count
    if dist_util.is_distributed() and getattr(loader, "sampler", None) is not None \
            and getattr(loader.sampler, "num_replicas", 1) > 1:
        torch.distributed.all_reduce(totals)
    loss_sum, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "acc1": 100 * top1 / count, "acc5": 100 * top5 / count}
