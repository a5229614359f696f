"""One pretraining epoch, for every method: the model's forward returns the loss."""
import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from util.logging import MetricLogger, RunLog
from util.lr import lr_at, set_lr


@dataclass
class TrainConfig:
    """The loop's knobs (a subset of the CLI flags, so tests can drive the engine directly)."""

    epochs: int
    lr: float
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    accum_iter: int = 1
    clip_grad: float | None = None
    amp_dtype: torch.dtype | None = None
    print_freq: int = 20


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on the given device, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, cfg: TrainConfig,
                    scaler: torch.amp.GradScaler | None = None,
                    run_log: RunLog | None = None) -> dict[str, float]:
    """Train ``model`` (maybe DDP-wrapped or compiled) for one epoch; return the epoch's mean scalars.

    The LR is set per optimizer step from the fractional epoch. Gradients are accumulated over
    ``accum_iter`` batches without all-reducing the intermediate ones.
    """
    model.train()
    num_steps = len(loader)
    logger = MetricLogger(f"Epoch: [{epoch}]", num_steps, cfg.print_freq, device)
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    for step, (imgs, _) in enumerate(loader):
        if step % cfg.accum_iter == 0:
            lr = lr_at(epoch + step / num_steps, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
            set_lr(optimizer, lr)
        imgs = imgs.to(device, non_blocking=True)
        # as the official loop: a trailing partial accumulation is dropped, not stepped
        update = (step + 1) % cfg.accum_iter == 0
        sync = contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, cfg.amp_dtype):
                out = model(imgs)
            loss = out.loss / cfg.accum_iter
            (scaler.scale(loss) if scaler else loss).backward()
        if update:
            if scaler:
                scaler.unscale_(optimizer)
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        logger.update(imgs.shape[0], loss=out.loss, **{f"loss_{k}": v for k, v in out.losses.items()
                                                         if len(out.losses) > 1})
        if logger.maybe_print(step, lr) and run_log:
            run_log.scalars({**logger.last, "lr": lr}, int((epoch + step / num_steps) * 1000))
    stats = logger.averages()
    stats["lr"] = lr
    return stats
