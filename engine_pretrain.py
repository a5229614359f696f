"""Pretraining, for every method: the loss of a batch is the model's own (its forward returns it), after each
epoch the reconstruction pictures and, every ``--knn_freq`` epochs, the kNN monitor (``util.knn``). The loop is
``util.trainer.Trainer``'s."""
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from base.images import normalize
from models.masking import Masks
from util import distributed as dist_util
from util.knn import KnnMonitor
from util.logging import RunLog
from util.trainer import Engine, EpochEnd, Trainer
from util.visualize import model_picture, no_picture_reason, save_png


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
        imgs = normalize(torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]).to(device))
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


class PretrainEngine(Engine):
    """The model's loss; every ``--vis_freq`` epochs (and after the last), ``probe``'s reconstruction pictures;
    every ``knn_freq`` epochs (and after the last; 0: never), ``knn``'s top-1/top-5."""

    def __init__(self, probe: ReconstructionProbe, knn: KnnMonitor | None = None, knn_freq: int = 0):
        self.probe, self.knn, self.knn_freq = probe, knn, knn_freq

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(uint8 images, labels) -> the model's total loss on the normalized images, and its named terms when
        there are several."""
        imgs = normalize(batch[0].to(device, non_blocking=True))
        out = model(imgs)
        logs = {f"loss_{k}": v for k, v in out.losses.items()} if len(out.losses) > 1 else {}
        return out.loss, logs

    def end_epoch(self, trainer: Trainer, epoch: int, stats: dict[str, float]) -> EpochEnd:
        record, summary = {f"train_{k}": v for k, v in stats.items()}, f"loss {stats['loss']:.4f}"
        if self.knn is not None and self.knn_freq and trainer.due(epoch, self.knn_freq):
            knn = self.knn.evaluate(trainer.model, trainer.session.device, trainer.session.amp_dtype)
            record |= {"knn_top1": knn.top1, "knn_top5": knn.top5, "knn_seconds": knn.seconds}
            summary += f"; knn top1 {knn.top1:.2f} top5 {knn.top5:.2f} ({knn.seconds:.1f}s)"
            trainer.log.scalars({"top1": knn.top1, "top5": knn.top5}, (epoch + 1) * 1000, prefix="knn")
        return EpochEnd(record, summary)

    def after_save(self, trainer: Trainer, epoch: int) -> None:
        # a sharded model's forward is a collective (--fsdp): every process runs it, the main one draws
        if (dist_util.is_main_process() or trainer.sharded) and trainer.due(epoch, trainer.cfg.vis_freq):
            self.probe.draw(trainer.model, trainer.cfg.output_dir, trainer.log, epoch, trainer.session.amp_dtype)
