"""The one optimization loop both engines run: per-iteration LR, autocast, accumulation, clipping,
GradScaler, and device-side logging. What a batch's loss is, is the caller's ``compute_loss``."""
import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from util.logging import EtaMeter, MetricLogger, RunLog
from util.optim import lr_at, set_lr

# compute_loss(model, batch, device) -> (loss, {name: scalar tensor to log})
ComputeLoss = Callable[[nn.Module, object, torch.device], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class TrainConfig:
    """The loop's knobs: ``util.trainer.Trainer`` builds them from the run config and the resolved LR;
    tests build them directly to drive the engines."""

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


def run_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, device: torch.device,
              epoch: int, cfg: TrainConfig, compute_loss: ComputeLoss,
              scaler: torch.amp.GradScaler | None = None, run_log: RunLog | None = None,
              after_step: Callable[[], None] | None = None, first_batch: int = 0,
              stop: Callable[[int], bool] | None = None, eta: EtaMeter | None = None) -> dict[str, float]:
    """Train ``model`` (maybe DDP-wrapped or compiled) for one epoch; return the epoch's mean scalars.

    The LR is set per optimizer step from the fractional epoch. Gradients are accumulated over
    ``accum_iter`` batches without all-reducing the intermediate ones; as in the official loop, a
    trailing partial accumulation is dropped. ``after_step`` runs after every optimizer step (EMA).
    ``first_batch``: the batches of the epoch already trained (a run resumed mid-epoch; ``loader`` yields
    the rest). ``stop(batches_done)`` is asked after each optimizer step but the epoch's last, and ends the
    epoch there when it says so (``util.preemption``). ``eta``: the run's step-time meter, kept across epochs
    for the progress lines' whole-run ETA (the epochs after this one count as long as this one).
    """
    model.train()
    num_steps = first_batch + len(loader)
    logger = MetricLogger(f"Epoch: [{epoch}]", num_steps, cfg.print_freq, device,
                          later_steps=(cfg.epochs - epoch - 1) * num_steps, eta_meter=eta)
    optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    for step, batch in enumerate(loader, start=first_batch):
        if step % cfg.accum_iter == 0:
            lr = lr_at(epoch + step / num_steps, cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
            set_lr(optimizer, lr)
        update = (step + 1) % cfg.accum_iter == 0
        sync = contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, cfg.amp_dtype):
                loss, logs = compute_loss(model, batch, device)
            scaled = loss / cfg.accum_iter
            (scaler.scale(scaled) if scaler else scaled).backward()
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
            if after_step:
                after_step()
        logger.update(len(batch[0]), loss=loss, **logs)
        if logger.maybe_print(step, lr) and run_log:
            run_log.scalars({**logger.last, "lr": lr}, int((epoch + step / num_steps) * 1000))
        if update and stop is not None and step + 1 < num_steps and stop(step + 1):
            break
    stats = logger.averages()
    stats["lr"] = lr
    return stats
