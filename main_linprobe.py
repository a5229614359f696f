"""Linear probing of a pretrained encoder: frozen encoder, BatchNorm1d(affine=False) + linear head, LARS.

``python main_linprobe.py --model vit_base_patch16 --finetune mae_pretrain.pth --data_path ...``
"""
import argparse

from torch import nn

import main_finetune
from models.classifier import to_linear_probe
from util import distributed as dist_util
from util.config import add_classify_args, add_runtime_args, add_training_args
from util.crop import build_linprobe_transform
from util.data import build_eval_transform
from util.lars import LARS
from util.lr import resolve_lr
from util.runtime import run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MIM linear probing", add_help=True)
    add_training_args(p, model="vit_large_patch16", model_help="a classifier from models.list_models()",
                      batch_size=512, epochs=90, blr=0.1, min_lr=0.0, warmup_epochs=10, weight_decay=0.0,
                      save_freq=10)
    add_classify_args(p, global_pool_default=False)
    add_runtime_args(p)
    return p


def main(args: argparse.Namespace) -> dict:
    session = main_finetune.start_session(args)
    _, train_loader, val_loader = main_finetune.build_loaders(
        args, session, build_linprobe_transform(args.input_size), build_eval_transform(args.input_size))
    model = main_finetune.build_classifier(args, drop_path_rate=0.0)
    if args.finetune and not args.resume:
        main_finetune.load_encoder(model, args.finetune)
    model = to_linear_probe(model)
    eff_batch = resolve_lr(args, session.world_size)
    optimizer = LARS(model.head.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    if dist_util.is_main_process():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"linear probe {args.model} ({'global pool' if args.global_pool else 'cls token'}): "
              f"{args.nb_classes} classes; {trainable} trainable parameters; eff. batch {eff_batch:g}; "
              f"lr {args.lr:.3e}; {session.amp_name}; {session.world_size} process(es) on {session.device}")
    return main_finetune.fit(args, session, model, optimizer, nn.CrossEntropyLoss(), train_loader, val_loader)


if __name__ == "__main__":
    run_cli(main, get_args_parser)
