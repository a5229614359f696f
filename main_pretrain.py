"""Pretrain a masked-image model: ``python main_pretrain.py --model mae_vit_base_patch16 --data_path ...``.

Runs as one process, under torchrun, or under ``python -m torch.distributed.launch``.
"""
import argparse
import ast
import json
import os
import random
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import models
from engine_pretrain import TrainConfig, autocast, train_one_epoch
from util import distributed as dist_util
from util.checkpoint import latest_checkpoint, load_file, rng_state, save_checkpoint, set_rng_state
from util.data import build_dataset, build_pretrain_transform
from util.errors import UsageError
from util.logging import RunLog
from util.lr import scaled_lr, weight_decay_groups
from util.visualize import reconstruction_grid, save_png

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MIM pretraining", add_help=True)
    p.add_argument("--batch_size", default=64, type=int, help="images per GPU (effective: x accum_iter x GPUs)")
    p.add_argument("--epochs", default=400, type=int)
    p.add_argument("--accum_iter", default=1, type=int, help="accumulate gradients over this many batches")
    p.add_argument("--model", default="mae_vit_large_patch16", type=str, help="a name from models.list_models()")
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe defaults, e.g. decoder_depth=2 decoder_embed_dim=128")
    p.add_argument("--input_size", default=224, type=int)
    p.add_argument("--mask_ratio", default=0.75, type=float, help="fraction of patches removed")
    p.add_argument("--norm_pix_loss", action="store_true", help="per-patch normalized pixel target")
    p.add_argument("--weight_decay", default=0.05, type=float)
    p.add_argument("--lr", default=None, type=float, help="absolute LR (default: blr x eff_batch / 256)")
    p.add_argument("--blr", default=1e-3, type=float, help="base LR: lr = blr x eff_batch / 256")
    p.add_argument("--min_lr", default=0.0, type=float)
    p.add_argument("--warmup_epochs", default=40, type=float)
    p.add_argument("--clip_grad", default=None, type=float, help="max gradient norm (off by default)")
    p.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES),
                   help="precision: bf16 on GPU by default, fp32 on CPU; fp16 uses a GradScaler")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--data_set", default="imagefolder", choices=["imagefolder", "fashion_mnist"])
    p.add_argument("--data_path", default=None, type=str,
                   help="ImageNet-style root (train/<class>/*) or a folder of images; "
                        "fashion_mnist: /usr/share/datasets/fashion-mnist")
    p.add_argument("--data_limit", default=None, type=int, help="use only the first N images (demos)")
    p.add_argument("--output_dir", default="./output_dir")
    p.add_argument("--log_dir", default=None, help="TensorBoard folder (default: output_dir)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--resume", default="", help="checkpoint to continue from")
    p.add_argument("--auto_resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--start_epoch", default=0, type=int)
    p.add_argument("--num_workers", default=10, type=int)
    p.add_argument("--pin_mem", action="store_true", default=True)
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.add_argument("--print_freq", default=20, type=int)
    p.add_argument("--save_freq", default=20, type=int, help="save a checkpoint every N epochs (and the last)")
    p.add_argument("--vis_freq", default=20, type=int, help="write a reconstruction grid every N epochs")
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", default=None, type=int,
                   help="set by python -m torch.distributed.launch")
    return p


def parse_model_kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--model_kwargs takes KEY=VALUE pairs, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    kwargs = {"img_size": args.input_size, "mask_ratio": args.mask_ratio, "norm_pix_loss": args.norm_pix_loss}
    try:
        return models.create_model(args.model, **kwargs | parse_model_kwargs(args.model_kwargs))
    except TypeError as err:
        raise UsageError(f"--model {args.model} does not accept these options: {err}") from err


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def visualize(model, imgs: torch.Tensor, mask: torch.Tensor, args, run_log: RunLog, epoch: int,
              amp_dtype) -> None:
    """Reconstruct a fixed batch with a fixed mask; PNG in output_dir and an image in TensorBoard."""
    model.eval()
    with torch.no_grad(), autocast(imgs.device, amp_dtype):
        out = model(imgs, mask=mask)
    pred = next(iter(out.pred.values()))
    if pred.shape[-1] != model.patch_size ** 2 * 3:
        return  # the head predicts features (HOG, CLIP), not pixels: nothing to draw
    grid = reconstruction_grid(imgs, pred, out.mask, model.patch_size, norm_pix=args.norm_pix_loss)
    save_png(grid, os.path.join(args.output_dir, f"reconstruction-{epoch:04d}.png"))
    run_log.image("reconstruction", grid, epoch)


def main(args: argparse.Namespace) -> None:
    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no GPU is visible: pass --device cpu")
    if args.accum_iter < 1 or args.batch_size < 1:
        raise UsageError("--batch_size and --accum_iter must be positive")
    model = build_model(args)  # fails fast on an unknown --model, before any data or GPU work
    dataset = build_dataset(args.data_set, args.data_path, build_pretrain_transform(args.input_size),
                            train=True, limit=args.data_limit)
    rank, world_size, device = dist_util.init_distributed(device_name, args.local_rank)
    seed_everything(args.seed + rank)
    # a fixed batch and mask for the reconstruction pictures, drawn before any RNG state is restored
    vis_imgs = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))]).to(device)
    vis_mask = model.sample_masks(vis_imgs, torch.Generator(device).manual_seed(args.seed)).mask
    amp_name = args.amp or ("bf16" if device.type == "cuda" else "fp32")
    amp_dtype = AMP_DTYPES[amp_name]
    args.log_dir = args.log_dir or args.output_dir

    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=args.pin_mem and device.type == "cuda", drop_last=True,
                        persistent_workers=False)  # workers reseeded from the main RNG each epoch: exact resume
    if len(loader) == 0:
        raise UsageError(f"{len(dataset)} images make no full batch of {args.batch_size} x {world_size} "
                         "processes: lower --batch_size or add data")
    model.to(device)
    if args.lr is None:
        args.lr, eff_batch = scaled_lr(args.blr, args.batch_size, args.accum_iter, world_size)
    else:
        eff_batch = args.batch_size * args.accum_iter * world_size
    optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if amp_name == "fp16" else None

    if args.auto_resume and not args.resume:
        args.resume = latest_checkpoint(args.output_dir) or ""
    step = 0
    if args.resume:
        ckpt = load_file(args.resume)
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        args.start_epoch, step = ckpt["epoch"] + 1, ckpt.get("step", 0)
        if "rng" in ckpt and ckpt.get("world_size", 1) == world_size:
            set_rng_state(ckpt["rng"][rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        print(f"resumed from {args.resume} at epoch {args.start_epoch}")

    model_without_ddp = model
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    run_log = RunLog(args.output_dir, args.log_dir)
    if dist_util.is_main_process():
        print(f"model {args.model}: {sum(p.numel() for p in model_without_ddp.parameters()) / 1e6:.1f}M params; "
              f"{len(dataset)} images; eff. batch {eff_batch:g}; lr {args.lr:.3e}; {amp_name}; "
              f"{world_size} process(es) on {device}")

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, min_lr=args.min_lr, warmup_epochs=args.warmup_epochs,
                      accum_iter=args.accum_iter, clip_grad=args.clip_grad, amp_dtype=amp_dtype,
                      print_freq=args.print_freq)
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(model, loader, optimizer, device, epoch, cfg, scaler, run_log)
        step += len(loader) // args.accum_iter
        last = epoch + 1 == args.epochs
        if (epoch + 1) % args.save_freq == 0 or last:
            save_training_state(args, model_without_ddp, optimizer, scaler, epoch, step, world_size)
        if dist_util.is_main_process() and ((epoch + 1) % args.vis_freq == 0 or last):
            visualize(model_without_ddp, vis_imgs, vis_mask, args, run_log, epoch, amp_dtype)
        run_log.json_line({**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch})
    run_log.close()
    if dist_util.is_main_process():
        print(f"training time {time.time() - start:.0f}s")
    dist_util.cleanup()


def save_training_state(args, model, optimizer, scaler, epoch: int, step: int, world_size: int) -> None:
    """Every process contributes its RNG state; the main process writes ``checkpoint-<epoch>.pth``."""
    rng = rng_state()
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, rng)
        rng = gathered
    if dist_util.is_main_process():
        save_checkpoint(os.path.join(args.output_dir, f"checkpoint-{epoch}.pth"), {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "epoch": epoch, "step": step,
            "args": json.loads(json.dumps(vars(args), default=str)), "rng": rng, "world_size": world_size})
    dist_util.barrier()


def cli() -> None:
    args = get_args_parser().parse_args()
    try:
        main(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
