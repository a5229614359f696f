"""One pretraining epoch, for every method: the model's forward returns the loss."""
from typing import Iterable

import torch
from torch import nn

from util.logging import RunLog
from util.train_loop import TrainConfig, run_epoch


def pretrain_loss(model: nn.Module, batch, device: torch.device):
    """(images, labels) -> the model's total loss, and its named terms when there are several."""
    imgs = batch[0].to(device, non_blocking=True)
    out = model(imgs)
    logs = {f"loss_{k}": v for k, v in out.losses.items()} if len(out.losses) > 1 else {}
    return out.loss, logs


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, cfg: TrainConfig,
                    scaler: torch.amp.GradScaler | None = None,
                    run_log: RunLog | None = None) -> dict[str, float]:
    """Pretrain ``model`` (maybe DDP-wrapped or compiled) for one epoch; return the epoch's mean scalars."""
    return run_epoch(model, loader, optimizer, device, epoch, cfg, pretrain_loss, scaler, run_log)
