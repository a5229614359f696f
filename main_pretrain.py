"""Pretrain a masked-image model: ``python main_pretrain.py --model mae_vit_base_patch16 --data_path ...``.

Runs as one process, under torchrun, or under ``python -m torch.distributed.launch``.
"""
import argparse
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from engine_pretrain import train_one_epoch
from models import Recipe, official
from models.masking import Masks
from models.recipes import MASK_TYPES, PRED_TYPES
from util import distributed as dist_util
from util.checkpoint import latest_checkpoint, resume_training, save_training_state
from util.config import add_runtime_args, add_training_args
from util.data import build_dataset, build_pretrain_transform
from util.errors import UsageError
from util.logging import RunLog
from util.lr import resolve_lr, weight_decay_groups
from util.runtime import amp_choice, build_named_model, parse_model_kwargs, run_cli, select_device, seed_everything
from util.train_loop import TrainConfig, autocast
from util.visualize import reconstruction_grid, save_png


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MIM pretraining", add_help=True)
    add_training_args(p, model="mae_vit_large_patch16", model_help="a name from models.list_models()",
                      batch_size=64, epochs=400, blr=1e-3, min_lr=0.0, warmup_epochs=40, weight_decay=0.05,
                      save_freq=20)
    p.add_argument("--mask_ratio", default=None, type=float,
                   help="fraction of patches removed (default: the recipe's, MAE 0.75, DMJD 0.6)")
    p.add_argument("--norm_pix_loss", action="store_true", help="per-patch normalized pixel target")
    p.add_argument("--min_crop_scale", default=None, type=float,
                   help="RandomResizedCrop lower scale (default: the recipe's, MAE 0.2, DMJD 0.5)")
    p.add_argument("--official_quirks", action="store_true",
                   help="reproduce the official code's documented bugs exactly (see PRETRAIN.md)")
    g = p.add_argument_group("UM-MAE", "uniform masking for pyramid encoders")
    g.add_argument("--mask_regular", action="store_true", help="uniform masking: one visible patch per 2x2 group")
    g.add_argument("--vis_mask_ratio", default=None, type=float,
                   help="secondary masking: fraction of the visible patches replaced by a learned token")
    g.add_argument("--token_size", default=None, type=int,
                   help="the mask grid's side (input_size / 16); checked against the model's patch grid")
    g = p.add_argument_group("DeepMIM", "deep supervision (default: the recipe's)")
    g.add_argument("--clip_path", default=None, help="CLIP checkpoint (OpenAI .pt, state dict or open_clip)")
    g.add_argument("--ds_layers", default=None, type=int, nargs="+",
                   help="encoder blocks that get a decoder (the depth = the final output); default 6 8 10 12")
    g = p.add_argument_group("DMJD", "disjoint masking and joint distillation (default: the recipe's)")
    g.add_argument("--mask_type", default=None, choices=MASK_TYPES, help="random patches or 2x2 blocks")
    g.add_argument("--pred_ratio", default=None, type=float,
                   help="target union prediction rate of the views; also scales the LR by pred/mask")
    g.add_argument("--num_views", default=None, type=int, help="masked views per image (DMJD: 2)")
    g.add_argument("--pred_type", default=None, choices=PRED_TYPES, help="prediction target")
    g.add_argument("--mim_loss_type", default=None, choices=["l2", "smooth_l1"], help="masked-branch loss")
    g.add_argument("--vis_loss_type", default=None, choices=["l2", "smooth_l1"], help="visible-branch loss")
    g.add_argument("--theta", default=None, type=float, help="weight of the visible-branch loss")
    p.add_argument("--vis_freq", default=20, type=int, help="write a reconstruction grid every N epochs")
    add_runtime_args(p)
    return p


# flags handed to the recipe only when given, so each recipe keeps its own defaults
RECIPE_FLAGS = ("mask_ratio", "mask_type", "pred_ratio", "num_views", "pred_type", "mim_loss_type",
                "vis_loss_type", "theta", "clip_path", "ds_layers", "vis_mask_ratio")
RECIPE_SWITCHES = ("norm_pix_loss", "official_quirks", "mask_regular")


def build_model(args: argparse.Namespace) -> Recipe:
    name, note = official.pretrain_model_name(args.model, args.clip_path)
    if note:
        print(note)
    args.model = name
    kwargs = {"img_size": args.input_size}
    kwargs |= {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k) is not None}
    kwargs |= {k: True for k in RECIPE_SWITCHES if getattr(args, k)}
    recipe = build_named_model(args.model, **kwargs | parse_model_kwargs(args.model_kwargs))
    if args.official_quirks and not recipe.quirks:
        print(f"{args.model} reproduces its official code without quirks: --official_quirks changes nothing")
    model = recipe.model
    if args.token_size is not None and tuple(model.encoder.grid_size) != (args.token_size, args.token_size):
        raise UsageError(f"--token_size {args.token_size} does not match {args.model}'s "
                         f"{model.encoder.grid_size[0]}x{model.encoder.grid_size[1]} patch grid at "
                         f"--input_size {args.input_size}")
    return recipe


def visualize(model, imgs: torch.Tensor, masks: Masks, args, run_log: RunLog, epoch: int,
              amp_dtype) -> None:
    """Reconstruct a fixed batch with fixed masks (first view); PNG in output_dir and TensorBoard image."""
    model.eval()
    with torch.no_grad(), autocast(imgs.device, amp_dtype):
        out = model(imgs, mask=masks)
    pred = next(iter(out.pred.values()))[:len(imgs)]
    if pred.shape[-1] != model.patch_size ** 2 * 3:
        return  # the head predicts features (HOG, CLIP), not pixels: nothing to draw
    grid = reconstruction_grid(imgs, pred, out.mask[:len(imgs)], model.patch_size, norm_pix=args.norm_pix_loss)
    save_png(grid, os.path.join(args.output_dir, f"reconstruction-{epoch:04d}.png"))
    run_log.image("reconstruction", grid, epoch)


def main(args: argparse.Namespace) -> None:
    device_name = select_device(args.device)
    if args.accum_iter < 1 or args.batch_size < 1:
        raise UsageError("--batch_size and --accum_iter must be positive")
    recipe = build_model(args)  # fails fast on an unknown --model, before any data or GPU work
    model = recipe.model
    min_scale = args.min_crop_scale if args.min_crop_scale is not None else recipe.defaults.min_crop_scale
    dataset = build_dataset(args.data_set, args.data_path, build_pretrain_transform(args.input_size, min_scale),
                            train=True, limit=args.data_limit)
    rank, world_size, device = dist_util.init_distributed(device_name, args.local_rank)
    seed_everything(args.seed + rank)
    # a fixed batch and mask for the reconstruction pictures, drawn before any RNG state is restored
    vis_imgs = torch.stack([dataset[i][0] for i in range(min(8, len(dataset)))]).to(device)
    vis_masks = model.sample_masks(vis_imgs, torch.Generator(device).manual_seed(args.seed))
    amp_name, amp_dtype = amp_choice(args.amp, device)
    args.log_dir = args.log_dir or args.output_dir

    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=args.pin_mem and device.type == "cuda", drop_last=True,
                        persistent_workers=False)  # workers reseeded from the main RNG each epoch: exact resume
    if len(loader) == 0:
        raise UsageError(f"{len(dataset)} images make no full batch of {args.batch_size} x {world_size} "
                         "processes: lower --batch_size or add data")
    model.to(device)
    # DMJD's adaptive rule counts unique images x pred_ratio / mask_ratio (METHODS.md §2.6); MAE's ratio is 1
    eff_batch = resolve_lr(args, world_size, recipe.defaults.lr_batch_ratio)
    optimizer = torch.optim.AdamW(weight_decay_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if amp_name == "fp16" else None

    if args.auto_resume and not args.resume:
        args.resume = latest_checkpoint(args.output_dir) or ""
    step = 0
    if args.resume:
        ckpt = resume_training(args.resume, model, optimizer, scaler)
        args.start_epoch, step = ckpt["epoch"] + 1, ckpt.get("step", 0)
        print(f"resumed from {args.resume} at epoch {args.start_epoch}")

    model_without_ddp = model
    if world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    run_log = RunLog(args.output_dir, args.log_dir)
    if dist_util.is_main_process():
        print(f"model {args.model}: {sum(p.numel() for p in model_without_ddp.parameters()) / 1e6:.1f}M params; "
              f"{len(dataset)} images; eff. batch {eff_batch:g} = {args.batch_size} x {args.accum_iter} accum x "
              f"{world_size} process(es) x {recipe.defaults.lr_batch_ratio:.4g} (pred/mask); lr {args.lr:.3e}; "
              f"{amp_name} on {device}")

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
            save_training_state(args.output_dir, model_without_ddp, optimizer, scaler, epoch, step, args)
        if dist_util.is_main_process() and ((epoch + 1) % args.vis_freq == 0 or last):
            visualize(model_without_ddp, vis_imgs, vis_masks, args, run_log, epoch, amp_dtype)
        run_log.json_line({**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch})
    run_log.close()
    if dist_util.is_main_process():
        print(f"training time {time.time() - start:.0f}s")


if __name__ == "__main__":
    run_cli(main, get_args_parser)
