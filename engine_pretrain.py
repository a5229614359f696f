"""Pretraining, for every method: the epoch (the model's forward returns the loss), the run over the
epochs with its checkpoints, and the reconstruction pictures."""
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.masking import Masks
from util import distributed as dist_util
from util.config import PretrainConfig
from util.logging import EtaMeter, RunLog
from util.train_loop import TrainConfig, run_epoch
from util.trainer import Trainer
from util.visualize import model_picture, no_picture_reason, save_png


def pretrain_loss(model: nn.Module, batch, device: torch.device):
    """(images, labels) -> the model's total loss, and its named terms when there are several."""
    imgs = batch[0].to(device, non_blocking=True)
    out = model(imgs)
    logs = {f"loss_{k}": v for k, v in out.losses.items()} if len(out.losses) > 1 else {}
    return out.loss, logs


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, cfg: TrainConfig,
                    scaler: torch.amp.GradScaler | None = None, run_log: RunLog | None = None,
                    first_batch: int = 0, stop: Callable[[int], bool] | None = None,
                    eta: EtaMeter | None = None) -> dict[str, float]:
    """Pretrain ``model`` (maybe DDP-wrapped or compiled) for one epoch (from ``first_batch``, until ``stop``,
    ETA from ``eta``: see ``run_epoch``); return the epoch's mean scalars."""
    return run_epoch(model, loader, optimizer, device, epoch, cfg, pretrain_loss, scaler, run_log,
                     first_batch=first_batch, stop=stop, eta=eta)


@dataclass
class ReconstructionProbe:
    """A fixed batch and fixed masks (first view) whose predictions are drawn during pretraining
    (``util.visualize.model_picture``: pixels, or HOG glyphs)."""

    imgs: torch.Tensor
    masks: Masks
    told_no_picture: bool = field(default=False, init=False)

    @classmethod
    def sample(cls, dataset: Dataset, model: nn.Module, device: torch.device, seed: int,
               count: int = 8) -> "ReconstructionProbe":
        """The first ``count`` images (one augmentation draw) and masks drawn with ``seed``; sample it before
        any RNG state is restored, so that a resumed run draws the same pictures."""
        imgs = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]).to(device)
        return cls(imgs, model.sample_masks(imgs, torch.Generator(device).manual_seed(seed)))

    def draw(self, model: nn.Module, output_dir: str, run_log: RunLog, epoch: int,
             amp_dtype: torch.dtype | None) -> None:
        """``reconstruction-<epoch>.png`` in output_dir and a TensorBoard image, written by the main process
        (under --fsdp every process runs the forward with it); for a target that is no picture (CLIP features),
        one line the first time instead."""
        reason = no_picture_reason(model)
        if reason is not None:
            if not self.told_no_picture and dist_util.is_main_process():
                print(f"no reconstruction pictures: {reason}")
            self.told_no_picture = True
            return
        grid = model_picture(model, self.imgs, self.masks, amp_dtype)
        if grid is not None and dist_util.is_main_process():
            save_png(grid, os.path.join(output_dir, f"reconstruction-{epoch:04d}.png"))
            run_log.image("reconstruction", grid, epoch)


def pretrain(trainer: Trainer[PretrainConfig], loader: DataLoader, probe: ReconstructionProbe) -> None:
    """Pretrain from the resumed epoch (if any) to the last: a checkpoint every ``--save_freq`` epochs and
    reconstruction pictures every ``--vis_freq`` (both also after the last), one log.txt line an epoch; at
    SIGTERM, a checkpoint where the epoch stopped."""
    cfg, session = trainer.cfg, trainer.session
    trainer.resume()
    model, eta = trainer.wrapped(), EtaMeter()
    for epoch in trainer.epochs(loader):
        stats = train_one_epoch(model, loader, trainer.optimizer, session.device, epoch, trainer.loop,
                                trainer.scaler, trainer.log, trainer.first_batch, trainer.stop.poll, eta)
        if trainer.stopped or trainer.due(epoch, cfg.save_freq):
            trainer.save(epoch)
        if trainer.stopped:
            break
        # a sharded model's forward is a collective (--fsdp): every process runs it, the main one draws
        if (dist_util.is_main_process() or trainer.sharded) and trainer.due(epoch, cfg.vis_freq):
            probe.draw(trainer.model, cfg.output_dir, trainer.log, epoch, session.amp_dtype)
        trainer.log_epoch(epoch, {f"train_{k}": v for k, v in stats.items()}, f"loss {stats['loss']:.4f}")
