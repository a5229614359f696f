"""Fine-tuning and linear probing, for every encoder: the supervised epoch, evaluation, and the run over
the epochs with its periodic and best checkpoints (or evaluation only, ``--eval``)."""
from typing import Callable, Iterable

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from util import distributed as dist_util
from util.checkpoint import check_classes
from util.config import ClassifyConfig
from util.logging import EtaMeter, RunLog
from util.train_loop import TrainConfig, autocast, run_epoch
from util.trainer import Trainer


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
                    ema=None, first_batch: int = 0, stop: Callable[[int], bool] | None = None,
                    eta: EtaMeter | None = None) -> dict[str, float]:
    """One epoch of supervised training (from ``first_batch``, until ``stop``, ETA from ``eta``: see
    ``run_epoch``); ``ema`` (timm ModelEmaV3) is updated after each optimizer step."""
    after_step = (lambda: ema.update(model)) if ema is not None else None
    return run_epoch(model, loader, optimizer, device, epoch, cfg, classification_loss(criterion, mixup_fn),
                     scaler, run_log, after_step, first_batch, stop, eta)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             amp_dtype: torch.dtype | None = None, report: bool = True) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 accuracy (%) over ``loader``, summed over processes when the
    loader is sharded (``--dist_eval``: ``util.classify.EvalShard``, whose padding repeats are left out, so each
    image counts once). Counts are summed, not per-process means, so shards of unequal size are weighted
    correctly. With ``report`` the main process prints MAE's line,
    ``* Acc@1 ... Acc@5 ... loss ...``, which scripts grep for."""
    model.eval()
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, top-1, top-5, count
    count = 0
    real = getattr(getattr(loader, "sampler", None), "real", None)  # EvalShard: the items past it repeat others
    for imgs, targets in loader:
        keep = len(targets) if real is None else max(0, min(len(targets), real - count))
        imgs, targets = imgs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
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


def fit(trainer: Trainer[ClassifyConfig], criterion: nn.Module, train_loader: DataLoader, val_loader: DataLoader,
        mixup_fn: Callable | None = None, ema: ModelEmaV3 | None = None) -> dict[str, float]:
    """Train from the resumed epoch (if any) to the last, evaluating after each epoch (and ``ema``'s weights
    when given); keep ``checkpoint-best.pth`` and a checkpoint every ``--save_freq`` epochs (at SIGTERM, one where
    the epoch stopped). A resumed checkpoint must be of the data's classes (``util.checkpoint.check_classes`` with
    ``derived['classes']``). With ``--eval`` only evaluate. Returns the best validation metrics (``--eval``: the
    metrics)."""
    cfg, device, amp_dtype = trainer.cfg, trainer.session.device, trainer.session.amp_dtype
    ckpt = trainer.resume(with_optimizer=not cfg.eval)
    if ckpt:
        note = check_classes(trainer.resumed_from, ckpt, trainer.derived["classes"])
        if note and dist_util.is_main_process():
            print(note)
    if ema is not None and ckpt.get("model_ema"):
        ema.module.load_state_dict(ckpt["model_ema"])
    if cfg.eval:
        return evaluate(trainer.model, val_loader, device, amp_dtype)
    best = ckpt.get("best", {"acc1": -1.0})
    model, eta = trainer.wrapped(), EtaMeter()
    for epoch in trainer.epochs(train_loader):
        train_stats = train_one_epoch(model, criterion, train_loader, trainer.optimizer, device, epoch, trainer.loop,
                                      mixup_fn, trainer.scaler, trainer.log, ema, trainer.first_batch,
                                      trainer.stop.poll, eta)
        extra = {"model_ema": ema.module.state_dict()} if ema is not None else {}
        if trainer.stopped:
            trainer.save(epoch, best=best, **extra)
            break
        val = evaluate(trainer.model, val_loader, device, amp_dtype)
        record = {**{f"train_{k}": v for k, v in train_stats.items()}, **{f"test_{k}": v for k, v in val.items()}}
        if ema is not None:
            ema_stats = evaluate(ema.module, val_loader, device, amp_dtype, report=False)  # "* Acc@1" is the model's
            record |= {f"test_ema_{k}": v for k, v in ema_stats.items()}
        if val["acc1"] > best["acc1"]:
            best = {**val, "epoch": epoch}
            trainer.save(epoch, name="checkpoint-best.pth", best=best, **extra)
        if trainer.due(epoch, cfg.save_freq):
            trainer.save(epoch, best=best, **extra)
        trainer.log.scalars(val, (epoch + 1) * 1000, prefix="test")
        trainer.log_epoch(epoch, record,
                          f"top-1 {val['acc1']:.2f}%  top-5 {val['acc5']:.2f}%  (best {best['acc1']:.2f}%)")
    if dist_util.is_main_process():
        print(f"best top-1 {best['acc1']:.2f}% at epoch {best.get('epoch')}")
    return best
