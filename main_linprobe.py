"""Linear probing of a pretrained encoder: frozen encoder, BatchNorm1d(affine=False) + linear head, LARS.

``python main_linprobe.py --model vit_base_patch16 --finetune mae_pretrain.pth --data_path ...``
"""
import argparse

from torch import nn

from engine_finetune import ClassifyEngine
from models.classifier import to_linear_probe
from util import distributed as dist_util
from util.classify import (build_classifier, build_linprobe_transform, build_loaders, data_classes, evaluation_note,
                           linprobe_plan)
from util.dali_loader import choose_backend
from util.config import ClassifyConfig
from util.data import build_eval_transform
from util.optim import LARS
from util.runtime import run_cli
from util.session import start_session
from util.trainer import Trainer


def get_args_parser() -> argparse.ArgumentParser:
    return ClassifyConfig.parser("MIM linear probing")


def main(args: argparse.Namespace) -> dict:
    """Linear-probe (or evaluate) as ``args`` say; returns the best validation metrics (``--eval``: the metrics)."""
    cfg = ClassifyConfig.from_args(args)
    with start_session(cfg) as session:
        classes = data_classes(cfg)
        model = to_linear_probe(build_classifier(cfg, classes.count, drop_path_rate=0.0)).to(session.device)
        if cfg.grad_ckpt != "none" and dist_util.is_main_process():
            print(f"--grad_ckpt {cfg.grad_ckpt} changes nothing in linear probing: the frozen encoder keeps no "
                  "activations for backward")
        backend = choose_backend(cfg.data_backend, session.device, cfg.data_set)
        data = build_loaders(cfg, session, build_linprobe_transform(cfg.input_size),
                             build_eval_transform(cfg.input_size), classes,
                             linprobe_plan(cfg.input_size) if backend == "dali" else None)
        lr, eff_batch = cfg.scaled_lr(session.world_size)
        optimizer = LARS(model.head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        trainer = Trainer(cfg, session, model, optimizer, lr,
                          derived={"eff_batch": eff_batch, "nb_classes": classes.count,
                                   "classes": classes.names, "data_backend": backend})
        if dist_util.is_main_process() and cfg.eval:
            print(evaluation_note(cfg, data))
        elif dist_util.is_main_process():
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"linear probe {cfg.model} ({'global pool' if cfg.global_pool else 'cls token'}): "
                  f"{classes.count} classes; {trainable} trainable parameters; eff. batch {eff_batch:g}; "
                  f"lr {lr:.3e}; {session.amp_name}; {session.world_size} process(es) on {session.device}; "
                  f"{backend} input pipeline")
        engine = ClassifyEngine(nn.CrossEntropyLoss(), data.val, classes.names)
        return engine.evaluate_checkpoint(trainer) if cfg.eval else trainer.fit(engine, data.train)


if __name__ == "__main__":
    run_cli(main, get_args_parser)
