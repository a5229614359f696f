"""Fine-tune a classifier from a pretrained encoder:
``python main_finetune.py --model vit_base_patch16 --finetune mae_pretrain.pth --data_path ...``.

Also holds what linear probing shares with it (data loaders, weight loading, the fit/evaluate loop).
"""
import argparse
import time
from dataclasses import dataclass

import torch
from timm.data import Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from engine_finetune import evaluate, train_one_epoch
from util import distributed as dist_util
from util.checkpoint import latest_checkpoint, load_pretrained, resume_training, save_training_state
from util.config import add_classify_args, add_runtime_args, add_training_args
from util.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, build_eval_transform
from util.errors import UsageError
from util.logging import RunLog
from util.lr import resolve_lr
from util.runtime import amp_choice, build_named_model, parse_model_kwargs, run_cli, select_device, seed_everything
from util.train_loop import TrainConfig


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MIM fine-tuning", add_help=True)
    add_training_args(p, model="vit_large_patch16", model_help="a classifier from models.list_models()",
                      batch_size=64, epochs=50, blr=1e-3, min_lr=1e-6, warmup_epochs=5, weight_decay=0.05,
                      save_freq=10)
    p.add_argument("--drop_path", default=0.1, type=float, help="stochastic depth rate")
    p.add_argument("--layer_decay", default=0.75, type=float, help="layer-wise LR decay")
    p.add_argument("--color_jitter", default=None, type=float)
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1", type=str, help="RandAugment policy")
    p.add_argument("--smoothing", default=0.1, type=float, help="label smoothing")
    p.add_argument("--reprob", default=0.25, type=float, help="random erasing probability")
    p.add_argument("--remode", default="pixel", type=str)
    p.add_argument("--recount", default=1, type=int)
    p.add_argument("--resplit", action="store_true", default=False)
    p.add_argument("--mixup", default=0.0, type=float, help="mixup alpha (on if > 0)")
    p.add_argument("--cutmix", default=0.0, type=float, help="cutmix alpha (on if > 0)")
    p.add_argument("--cutmix_minmax", default=None, type=float, nargs="+")
    p.add_argument("--mixup_prob", default=1.0, type=float)
    p.add_argument("--mixup_switch_prob", default=0.5, type=float)
    p.add_argument("--mixup_mode", default="batch", choices=["batch", "pair", "elem"])
    p.add_argument("--model_ema", action="store_true", help="also keep and evaluate an EMA of the weights")
    p.add_argument("--model_ema_decay", default=0.9999, type=float)
    add_classify_args(p, global_pool_default=True)
    add_runtime_args(p)
    return p


@dataclass
class Session:
    """Where and how this process runs."""

    rank: int
    world_size: int
    device: torch.device
    amp_name: str
    amp_dtype: torch.dtype | None


def start_session(args: argparse.Namespace) -> Session:
    rank, world_size, device = dist_util.init_distributed(select_device(args.device), args.local_rank)
    seed_everything(args.seed + rank)
    args.log_dir = args.log_dir or args.output_dir
    return Session(rank, world_size, device, *amp_choice(args.amp, device))


def build_loaders(args, session: Session, train_transform, eval_transform):
    """(train_set, train_loader, val_loader); the val set is ``val/`` (ImageFolder) or the test split."""
    train_set = build_dataset(args.data_set, args.data_path, train_transform, train=True, limit=args.data_limit)
    val_set = build_dataset(args.data_set, args.data_path, eval_transform, train=False)
    sampler = DistributedSampler(train_set, num_replicas=session.world_size, rank=session.rank, shuffle=True,
                                 seed=args.seed)
    if args.dist_eval and session.world_size > 1:
        val_sampler = DistributedSampler(val_set, num_replicas=session.world_size, rank=session.rank, shuffle=False)
    else:
        val_sampler = SequentialSampler(val_set)
    pin = args.pin_mem and session.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                              pin_memory=pin, drop_last=True)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=val_sampler, num_workers=args.num_workers,
                            pin_memory=pin, drop_last=False)
    if len(train_loader) == 0 and not args.eval:
        raise UsageError(f"{len(train_set)} images make no full batch of {args.batch_size} x {session.world_size} "
                         "processes: lower --batch_size or add data")
    if args.nb_classes is None:
        args.nb_classes = len(train_set.classes)
    return train_set, train_loader, val_loader


def build_classifier(args, **kwargs) -> nn.Module:
    return build_named_model(args.model, num_classes=args.nb_classes, global_pool=args.global_pool,
                             img_size=args.input_size, **kwargs | parse_model_kwargs(args.model_kwargs)).model


def load_encoder(model: nn.Module, path: str) -> None:
    """Pretrained weights into a classifier: every encoder weight must be found; decoder and other
    pretraining-only weights are ignored, position embeddings resized, the head kept fresh."""
    report = load_pretrained(model, path, allow_missing=["head.*", "fc_norm.*"])
    if dist_util.is_main_process():
        print(f"loaded {path}: {report}")


def fit(args, session: Session, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
        train_loader: DataLoader, val_loader: DataLoader, mixup_fn=None, use_ema: bool = False) -> dict:
    """Train with per-epoch evaluation, checkpoints and the best checkpoint; or only evaluate (--eval).
    Returns the best validation metrics."""
    device = session.device
    model.to(device)
    scaler = torch.amp.GradScaler(device.type) if session.amp_name == "fp16" else None
    ema = ModelEmaV3(model, decay=args.model_ema_decay) if use_ema else None
    if args.auto_resume and not args.resume:
        args.resume = latest_checkpoint(args.output_dir) or ""
    step, best = 0, {"acc1": -1.0}
    if args.resume:
        ckpt = resume_training(args.resume, model, None if args.eval else optimizer, scaler)
        # released fine-tuned checkpoints hold only 'model'
        args.start_epoch, step = ckpt.get("epoch", -1) + 1, ckpt.get("step", 0)
        best = ckpt.get("best", best)
        if ema is not None and ckpt.get("model_ema"):
            ema.module.load_state_dict(ckpt["model_ema"])
    model_without_ddp = model
    if args.eval:
        stats = evaluate(model, val_loader, device, session.amp_dtype)
        print(f"accuracy on {len(val_loader.dataset)} images: top-1 {stats['acc1']:.2f}%  top-5 {stats['acc5']:.2f}%"
              f"  loss {stats['loss']:.4f}")
        return stats
    if session.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    run_log = RunLog(args.output_dir, args.log_dir)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, min_lr=args.min_lr, warmup_epochs=args.warmup_epochs,
                      accum_iter=args.accum_iter, clip_grad=args.clip_grad, amp_dtype=session.amp_dtype,
                      print_freq=args.print_freq)
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        train_loader.sampler.set_epoch(epoch)
        train_stats = train_one_epoch(model, criterion, train_loader, optimizer, device, epoch, cfg, mixup_fn,
                                      scaler, run_log, ema)
        step += len(train_loader) // args.accum_iter
        val = evaluate(model_without_ddp, val_loader, device, session.amp_dtype)
        record = {**{f"train_{k}": v for k, v in train_stats.items()}, **{f"test_{k}": v for k, v in val.items()},
                  "epoch": epoch}
        if ema is not None:
            record |= {f"test_ema_{k}": v for k, v in evaluate(ema.module, val_loader, device,
                                                               session.amp_dtype).items()}
        extra = {"model_ema": ema.module.state_dict()} if ema is not None else {}
        if val["acc1"] > best["acc1"]:
            best = {**val, "epoch": epoch}
            save_training_state(args.output_dir, model_without_ddp, optimizer, scaler, epoch, step, args,
                                name="checkpoint-best.pth", best=best, **extra)
        if (epoch + 1) % args.save_freq == 0 or epoch + 1 == args.epochs:
            save_training_state(args.output_dir, model_without_ddp, optimizer, scaler, epoch, step, args,
                                best=best, **extra)
        if dist_util.is_main_process():
            print(f"epoch {epoch}: top-1 {val['acc1']:.2f}%  top-5 {val['acc5']:.2f}%  (best {best['acc1']:.2f}%)")
        run_log.scalars({k: v for k, v in val.items()}, (epoch + 1) * 1000, prefix="test")
        run_log.json_line(record)
    run_log.close()
    if dist_util.is_main_process():
        print(f"training time {time.time() - start:.0f}s; best top-1 {best['acc1']:.2f}% at epoch {best.get('epoch')}")
    return best


def build_mixup_and_criterion(args) -> tuple[Mixup | None, nn.Module]:
    """timm Mixup/CutMix when either is on (label smoothing then happens inside Mixup, and the loss is
    soft-target cross-entropy), else label-smoothing or plain cross-entropy, as the official code."""
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.nb_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    if args.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return None, nn.CrossEntropyLoss()


def main(args: argparse.Namespace) -> dict:
    session = start_session(args)
    train_tf = create_transform(input_size=args.input_size, is_training=True, color_jitter=args.color_jitter,
                                auto_augment=args.aa, interpolation="bicubic", re_prob=args.reprob,
                                re_mode=args.remode, re_count=args.recount, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    _, train_loader, val_loader = build_loaders(args, session, train_tf, build_eval_transform(args.input_size))
    model = build_classifier(args, drop_path_rate=args.drop_path)
    if args.finetune and not args.resume:
        load_encoder(model, args.finetune)
    mixup_fn, criterion = build_mixup_and_criterion(args)
    eff_batch = resolve_lr(args, session.world_size)
    groups = param_groups_layer_decay(model, args.weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=args.lr, fused=session.device.type == "cuda")
    if dist_util.is_main_process():
        print(f"fine-tune {args.model}: {args.nb_classes} classes; eff. batch {eff_batch:g}; lr {args.lr:.3e}; "
              f"layer decay {args.layer_decay}; {session.amp_name}; {session.world_size} process(es) on "
              f"{session.device}")
    return fit(args, session, model, optimizer, criterion, train_loader, val_loader, mixup_fn, args.model_ema)


if __name__ == "__main__":
    run_cli(main, get_args_parser)
