"""Fine-tuning and linear probing, for every encoder: the loss of a batch (Mixup/CutMix, the criterion), an EMA of
the weights after each optimizer step, and after each epoch the evaluation that keeps the best checkpoint; or
evaluation only (``--eval``). The loop is ``util.trainer.Trainer``'s."""
from typing import Any, Callable, Iterable, Sequence

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from base.images import normalize
from util import distributed as dist_util
from util.classify import check_classes
from util.session import autocast
from util.trainer import Engine, EpochEnd, Trainer


class ClassifyEngine(Engine):
    """``criterion(model(images), labels)``: the loader's uint8 images normalized on the device, then random
    erasing (``erase``, timm's ``RandomErasing`` on the batch) and Mixup/CutMix (``mixup_fn``: soft targets) there
    when given; ``ema`` (timm ModelEmaV3) updated after each optimizer step. After each epoch, the model (and
    ``ema``'s weights) evaluated on ``val_loader``; the best top-1 so far is kept (``best``: its metrics and epoch)
    and saved in checkpoints with the EMA weights. A resumed checkpoint must be of the data's classes
    (``classes``: their names, in label order; ``util.classify.check_classes``)."""

    def __init__(self, criterion: nn.Module, val_loader: DataLoader, classes: Sequence[str],
                 mixup_fn: Callable | None = None, ema: ModelEmaV3 | None = None,
                 erase: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.criterion, self.val_loader, self.classes = criterion, val_loader, classes
        self.mixup_fn, self.ema, self.erase = mixup_fn, ema, erase
        self.best: dict[str, Any] = {"acc1": -1.0}

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        imgs = normalize(batch[0].to(device, non_blocking=True))
        targets = batch[1].to(device, non_blocking=True)
        if self.erase is not None:
            imgs = self.erase(imgs)
        if self.mixup_fn is not None:
            imgs, targets = self.mixup_fn(imgs, targets)
        return self.criterion(model(imgs), targets), {}

    def after_step(self, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def end_epoch(self, trainer: Trainer, epoch: int, stats: dict[str, float]) -> EpochEnd:
        device, amp_dtype = trainer.session.device, trainer.session.amp_dtype
        val = evaluate(trainer.model, self.val_loader, device, amp_dtype)
        record = {**{f"train_{k}": v for k, v in stats.items()}, **{f"test_{k}": v for k, v in val.items()}}
        if self.ema is not None:  # "* Acc@1" is the model's
            ema_stats = evaluate(self.ema.module, self.val_loader, device, amp_dtype, report=False)
            record |= {f"test_ema_{k}": v for k, v in ema_stats.items()}
        best = val["acc1"] > self.best["acc1"]
        if best:
            self.best = {**val, "epoch": epoch}
        trainer.log.scalars(val, (epoch + 1) * 1000, prefix="test")
        summary = f"top-1 {val['acc1']:.2f}%  top-5 {val['acc5']:.2f}%  (best {self.best['acc1']:.2f}%)"
        return EpochEnd(record, summary, best)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best} | ({"model_ema": self.ema.module.state_dict()} if self.ema is not None else {})

    def load_state_dict(self, ckpt: dict[str, Any], path: str) -> None:
        note = check_classes(path, ckpt, self.classes)
        if note and dist_util.is_main_process():
            print(note)
        if self.ema is not None and ckpt.get("model_ema"):
            self.ema.module.load_state_dict(ckpt["model_ema"])
        self.best = ckpt.get("best", self.best)

    def end_run(self) -> dict[str, float]:
        """The best validation metrics, printed."""
        if dist_util.is_main_process():
            print(f"best top-1 {self.best['acc1']:.2f}% at epoch {self.best.get('epoch')}")
        return self.best

    def evaluate_checkpoint(self, trainer: Trainer) -> dict[str, float]:
        """``--eval``: the metrics of the weights ``--resume`` names (its classes checked), or of ``--finetune``'s."""
        trainer.resume(self, with_optimizer=False)
        return evaluate(trainer.model, self.val_loader, trainer.session.device, trainer.session.amp_dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None, report: bool = True) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (%) over ``loader`` (uint8 images, normalized here), summed over
    processes when the loader is sharded (``--dist_eval``: ``util.classify.EvalShard``, whose padding repeats are
    left out, so each image counts once). Counts are summed, not per-process means, so shards of unequal size are
    weighted correctly. With ``report`` the main process prints MAE's line,
    ``* Acc@1 ... Acc@5 ... loss ...``, which scripts grep for."""
    model.eval()
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, top-1, top-5, count
    count = 0
    real = getattr(getattr(loader, "sampler", None), "real", None)  # EvalShard: the items past it repeat others
    for imgs, targets in loader:
        keep = len(targets) if real is None else max(0, min(len(targets), real - count))
        imgs, targets = normalize(imgs.to(device, non_blocking=True)), targets.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(imgs)  # repeats too: a sharded model's forward needs every process
        logits, targets = logits[:keep], targets[:keep]
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
    stats = {"loss": loss_sum / count, "acc1": 100 * top1 / count, "acc5": 100 * top5 / count}
    if report and dist_util.is_main_process():
        print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f}", flush=True)
    return stats
