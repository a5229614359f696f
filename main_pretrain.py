"""Pretrain a masked-image model: ``python main_pretrain.py --model mae_vit_base_patch16 --data_path ...``.

Runs as one process, under torchrun, or under ``python -m torch.distributed.launch``.
"""
import argparse

import torch

from base.errors import UsageError
from engine_pretrain import PretrainEngine, ReconstructionProbe
from models import Recipe
from models.recipes import MASK_TYPES, PRED_TYPES
from util import distributed as dist_util
from util.checkpoint import load_pretrained
from util.config import (PretrainConfig, add_official_compat_args, add_runtime_args, add_sharding_args,
                         add_training_args)
from util.dali_loader import BACKENDS, choose_backend, dali_train_loader
from util.data import build_dataset, build_pretrain_transform
from util.flags import (FRACTION_BELOW_ONE, NON_NEGATIVE, OPEN_FRACTION, POSITIVE_FRACTION, POSITIVE_INT,
                         ArgumentParser)
from util.fsdp import check_usable, shard_model
from util.optim import weight_decay_groups
from util.runtime import build_named_model, recipe_options, run_cli
from util.session import start_session, train_loader
from util.trainer import Trainer


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser("MIM pretraining", add_help=True)
    add_training_args(p, model="mae_vit_large_patch16", model_help="a name from models.list_models()",
                      batch_size=64, epochs=400, blr=1e-3, min_lr=0.0, warmup_epochs=40, weight_decay=0.05,
                      save_freq=20)
    p.add_argument("--mask_ratio", default=None, type=OPEN_FRACTION,
                   help="fraction of patches removed (default: the recipe's, MAE 0.75, DMJD 0.6)")
    p.add_argument("--norm_pix_loss", action="store_true", help="per-patch normalized pixel target")
    p.add_argument("--min_crop_scale", default=None, type=POSITIVE_FRACTION,
                   help="RandomResizedCrop lower scale (default: the recipe's, MAE 0.2, DMJD 0.5)")
    p.add_argument("--official_quirks", action="store_true",
                   help="reproduce the official code's documented bugs exactly (see PRETRAIN.md)")
    g = p.add_argument_group("UM-MAE", "uniform masking for pyramid encoders")
    g.add_argument("--mask_regular", action="store_true", help="uniform masking: one visible patch per 2x2 group")
    g.add_argument("--vis_mask_ratio", default=None, type=FRACTION_BELOW_ONE,
                   help="secondary masking: fraction of the visible patches replaced by a learned token")
    g.add_argument("--token_size", default=None, type=POSITIVE_INT,
                   help="the mask grid's side (input_size / 16); checked against the model's patch grid")
    g = p.add_argument_group("DeepMIM", "deep supervision (default: the recipe's)")
    g.add_argument("--clip_path", default=None, help="CLIP checkpoint (OpenAI .pt, state dict or open_clip)")
    g.add_argument("--ds_layers", default=None, type=POSITIVE_INT, nargs="+",
                   help="encoder blocks that get a decoder (the depth = the final output); default 6 8 10 12")
    g = p.add_argument_group("DMJD", "disjoint masking and joint distillation (default: the recipe's)")
    g.add_argument("--mask_type", default=None, choices=MASK_TYPES, help="random patches or 2x2 blocks")
    g.add_argument("--pred_ratio", default=None, type=POSITIVE_FRACTION,
                   help="target union prediction rate of the views; also scales the LR by pred/mask")
    g.add_argument("--num_views", default=None, type=POSITIVE_INT, help="masked views per image (DMJD: 2)")
    g.add_argument("--pred_type", default=None, choices=PRED_TYPES, help="prediction target")
    g.add_argument("--mim_loss_type", default=None, choices=["l2", "smooth_l1"], help="masked-branch loss")
    g.add_argument("--vis_loss_type", default=None, choices=["l2", "smooth_l1"], help="visible-branch loss")
    g.add_argument("--theta", default=None, type=NON_NEGATIVE, help="weight of the visible-branch loss")
    p.add_argument("--vis_freq", default=20, type=POSITIVE_INT, help="write a reconstruction grid every N epochs")
    p.add_argument("--data_backend", default=None, choices=BACKENDS,
                   help="input pipeline: dali (decode and augment on the GPU, or its CPU operators) or pil "
                        "(default: dali on a GPU with an image folder when DALI is installed, else pil)")
    add_runtime_args(p)
    add_sharding_args(p)
    add_official_compat_args(p, pretrain=True)
    return p


# flags handed to the recipe only when given, so each recipe keeps its own defaults
RECIPE_FLAGS = ("mask_ratio", "mask_type", "pred_ratio", "num_views", "pred_type", "mim_loss_type",
                "vis_loss_type", "theta", "clip_path", "ds_layers", "vis_mask_ratio")
RECIPE_SWITCHES = ("norm_pix_loss", "official_quirks", "mask_regular")


def build_model(cfg: PretrainConfig) -> Recipe:
    """The ``--model`` recipe with the method flags that were given and ``--model_kwargs``."""
    flags = {"img_size": ("--input_size", cfg.input_size)}
    flags |= {k: (f"--{k}", getattr(cfg, k)) for k in RECIPE_FLAGS if getattr(cfg, k) is not None}
    flags |= {k: (f"--{k}", True) for k in RECIPE_SWITCHES if getattr(cfg, k)}
    recipe = build_named_model(cfg.model, "pretrain", **recipe_options(flags, cfg.model_kwargs))
    if cfg.official_quirks and not recipe.quirks:
        print(f"{cfg.model} reproduces its official code without quirks: --official_quirks changes nothing")
    grid = tuple(recipe.model.encoder.grid_size)
    if cfg.token_size is not None and grid != (cfg.token_size, cfg.token_size):
        raise UsageError(f"--token_size {cfg.token_size} does not match {cfg.model}'s {grid[0]}x{grid[1]} patch "
                         f"grid at --input_size {cfg.input_size}")
    return recipe


def load_initial_weights(cfg: PretrainConfig, model: torch.nn.Module) -> None:
    """UM-MAE's ``--load_from``: the model starts from these weights (its 'model' entry or a plain state dict),
    every key matching, as the official strict load. A run that resumes a checkpoint keeps the resumed weights."""
    if not cfg.load_from:
        return
    if cfg.resume:
        if dist_util.is_main_process():
            print(f"--load_from {cfg.load_from} not loaded: the run resumes {cfg.resume}")
        return
    try:
        report = load_pretrained(model, cfg.load_from)
    except UsageError as err:
        raise UsageError(f"--load_from {cfg.load_from}: {err}") from err
    if report.unexpected or report.mismatched:
        raise UsageError(f"--load_from {cfg.load_from} does not fit {cfg.model}: {report}")
    if dist_util.is_main_process():
        print(f"--load_from {cfg.load_from}: {report}")


def main(args: argparse.Namespace) -> None:
    """Pretrain as ``args`` say: config -> session -> recipe, data, optimizer -> ``Trainer.fit``."""
    cfg = PretrainConfig.from_args(args)
    with start_session(cfg) as session:
        if cfg.fsdp:
            check_usable(session.world_size, session.amp_name)
        recipe = build_model(cfg)  # before the data: an unknown --model fails fast
        model = recipe.model
        load_initial_weights(cfg, model)
        model.set_grad_checkpointing(cfg.grad_ckpt)
        min_scale = cfg.min_crop_scale if cfg.min_crop_scale is not None else recipe.defaults.min_crop_scale
        backend = choose_backend(cfg.data_backend, session.device, cfg.data_set)
        dataset = build_dataset(cfg.data_set, cfg.data_path, build_pretrain_transform(cfg.input_size, min_scale),
                                train=True, limit=cfg.data_limit)
        probe = ReconstructionProbe.sample(dataset, model, session.device, cfg.seed)
        loader = dali_train_loader(cfg, session, dataset, min_scale) if backend == "dali" else \
            train_loader(cfg, session, dataset)
        model.to(session.device)
        if cfg.fsdp:  # before the optimizer: FSDP2 replaces the parameters
            shard_model(model, session.device, session.amp_dtype)
        # DMJD's adaptive rule counts unique images x pred_ratio / mask_ratio (docs/methods.md §2.6); MAE's ratio is 1
        ratio = recipe.defaults.lr_batch_ratio
        lr, eff_batch = cfg.scaled_lr(session.world_size, ratio)
        optimizer = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=lr, betas=(0.9, 0.95),
                                      fused=session.device.type == "cuda")
        trainer = Trainer(cfg, session, model, optimizer, lr,
                          derived={"eff_batch": eff_batch, "data_backend": backend})
        if dist_util.is_main_process():
            print(f"model {cfg.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; "
                  f"{len(dataset)} images; eff. batch {eff_batch:g} = {cfg.batch_size} x {cfg.accum_iter} accum x "
                  f"{session.world_size} process(es) x {ratio:.4g} (pred/mask); lr {lr:.3e}; "
                  f"{session.amp_name} on {session.device}; {backend} input pipeline")
        trainer.fit(PretrainEngine(probe), loader)


if __name__ == "__main__":
    run_cli(main, get_args_parser)
