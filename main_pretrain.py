"""Pretrain a masked-image model: ``python main_pretrain.py --model mae_vit_base_patch16 --data_path ...``.

Runs as one process, under torchrun, or under ``python -m torch.distributed.launch``.
"""
import argparse

import torch

from base.errors import UsageError
from engine_pretrain import PretrainEngine, ReconstructionProbe
from models import Recipe
from util import distributed as dist_util
from util.checkpoint import load_pretrained
from util.config import PretrainConfig
from util.dali_loader import choose_backend, dali_train_loader, pretrain_crops
from util.data import build_dataset, build_pretrain_transform
from util.fsdp import check_usable, shard_model
from util.knn import KnnMonitor, has_labels
from util.optim import weight_decay_groups
from util.runtime import build_named_model, recipe_options, run_cli
from util.session import start_session, train_loader
from util.trainer import Trainer


def get_args_parser() -> argparse.ArgumentParser:
    return PretrainConfig.parser("MIM pretraining")


def build_model(cfg: PretrainConfig) -> Recipe:
    """The ``--model`` recipe with ``--input_size``, the method options given and ``--model_kwargs``."""
    flags = {"img_size": ("--input_size", cfg.input_size)}
    flags |= {name: (f"--{name}", value) for name, value in cfg.method_options().items()}
    recipe = build_named_model(cfg.model, cfg.TASK, **recipe_options(flags, cfg.model_kwargs))
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


def knn_monitor(cfg: PretrainConfig) -> tuple[KnnMonitor | None, int]:
    """The kNN monitor and its period in epochs: ``--knn_freq``, or by default ``--save_freq`` when the data have
    labels (none otherwise); (None, 0) when off."""
    labelled = has_labels(cfg.data_set, cfg.data_path)
    freq = cfg.knn_freq if cfg.knn_freq is not None else (cfg.save_freq if labelled else 0)
    if freq and not labelled:
        raise UsageError(f"--knn_freq {freq} needs labelled data ({cfg.data_path} has no train/<class>/ and "
                         "val/<class>/ folders): pass --knn_freq 0")
    if not freq:
        return None, 0
    return KnnMonitor(cfg.data_set, cfg.data_path, cfg.input_size, cfg.knn_bank_size, cfg.knn_query_size, cfg.seed,
                      cfg.batch_size, cfg.num_workers), freq


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
        knn, knn_freq = knn_monitor(cfg)
        loader = dali_train_loader(cfg, session, dataset, pretrain_crops(cfg.input_size, min_scale)) if backend == "dali" else \
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
        trainer.fit(PretrainEngine(probe, knn, knn_freq), loader)


if __name__ == "__main__":
    run_cli(main, get_args_parser)
