"""Fine-tune a classifier from a pretrained encoder:
``python main_finetune.py --model vit_base_patch16 --finetune mae_pretrain.pth --data_path ...``.
"""
import argparse

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn

from engine_finetune import ClassifyEngine
from util import distributed as dist_util
from base.errors import UsageError
from util.classify import (build_classifier, build_finetune_transform, build_loaders, build_random_erasing,
                           data_classes, evaluation_note, finetune_plan)
from util.dali_loader import choose_backend
from util.dali_plans import RandomCrops
from util.config import FinetuneConfig
from util.data import build_eval_transform
from util.fsdp import check_usable, shard_model
from util.runtime import run_cli
from util.session import start_session
from util.trainer import Trainer


def get_args_parser() -> argparse.ArgumentParser:
    return FinetuneConfig.parser("MIM fine-tuning")


def build_mixup_and_criterion(cfg: FinetuneConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """timm Mixup/CutMix when either is on (label smoothing then happens inside Mixup, and the loss is
    soft-target cross-entropy), else label-smoothing or plain cross-entropy, as the official code."""
    if cfg.mixes:
        mixup_fn = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                         prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                         label_smoothing=cfg.smoothing, num_classes=num_classes)
        return mixup_fn, SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return None, nn.CrossEntropyLoss()


def input_pipeline(cfg: FinetuneConfig, device: torch.device) -> tuple[str, RandomCrops | None]:
    """The backend (``util.dali_loader.choose_backend``) and, for DALI, the training plan. By default DALI only
    where it maps the augmentation (``util.classify.finetune_plan``); asked for, it must."""
    backend = choose_backend(cfg.data_backend, device, cfg.data_set)
    if backend == "pil":
        return backend, None
    try:
        return backend, finetune_plan(cfg)
    except UsageError as err:
        if cfg.data_backend == "dali":
            raise
        if dist_util.is_main_process():
            print(f"input pipeline pil: {err}")
        return "pil", None


def main(args: argparse.Namespace) -> dict:
    """Fine-tune (or evaluate) as ``args`` say; returns the best validation metrics (``--eval``: the metrics)."""
    cfg = FinetuneConfig.from_args(args)
    with start_session(cfg) as session:
        if cfg.fsdp:
            check_usable(session.world_size, session.amp_name, cfg.model_ema)
        classes = data_classes(cfg)
        drop_path = {"drop_path_rate": ("--drop_path", cfg.drop_path)}
        model = build_classifier(cfg, classes.count, drop_path).to(session.device)
        model.set_grad_checkpointing(cfg.grad_ckpt)
        backend, plan = input_pipeline(cfg, session.device)
        data = build_loaders(cfg, session, build_finetune_transform(cfg), build_eval_transform(cfg.input_size),
                             classes, plan)
        mixup_fn, criterion = build_mixup_and_criterion(cfg, classes.count)
        if cfg.fsdp:  # after --finetune's weights are in, before the optimizer: FSDP2 replaces the parameters
            shard_model(model, session.device, session.amp_dtype)
        lr, eff_batch = cfg.scaled_lr(session.world_size)
        groups = param_groups_layer_decay(model, cfg.weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                          layer_decay=cfg.layer_decay)
        optimizer = torch.optim.AdamW(groups, lr=lr, fused=session.device.type == "cuda")
        ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        trainer = Trainer(cfg, session, model, optimizer, lr,
                          derived={"eff_batch": eff_batch, "nb_classes": classes.count,
                                   "classes": classes.names, "data_backend": backend})
        if dist_util.is_main_process() and cfg.eval:
            print(evaluation_note(cfg, data))
        elif dist_util.is_main_process():
            print(f"fine-tune {cfg.model}: {classes.count} classes; eff. batch {eff_batch:g}; lr {lr:.3e}; "
                  f"layer decay {cfg.layer_decay}; {session.amp_name}; {session.world_size} process(es) on "
                  f"{session.device}; {backend} input pipeline")
        engine = ClassifyEngine(criterion, data.val, classes.names, mixup_fn, ema,
                                build_random_erasing(cfg, session.device))
        return engine.evaluate_checkpoint(trainer) if cfg.eval else trainer.fit(engine, data.train)


if __name__ == "__main__":
    run_cli(main, get_args_parser)
