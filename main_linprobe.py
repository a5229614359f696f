"""Linear probing of a pretrained encoder: frozen encoder, BatchNorm1d(affine=False) + linear head, LARS.

``python main_linprobe.py --model vit_base_patch16 --finetune mae_pretrain.pth --data_path ...``
"""
import argparse

from torch import nn

import main_finetune
from models.classifier import to_linear_probe
from util import distributed as dist_util
from util.crop import build_linprobe_transform
from util.data import build_eval_transform
from util.lars import LARS
from util.lr import resolve_lr
from util.runtime import add_runtime_args, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MIM linear probing", add_help=True)
    p.add_argument("--batch_size", default=512, type=int, help="images per GPU (effective: x accum_iter x GPUs)")
    p.add_argument("--epochs", default=90, type=int)
    p.add_argument("--accum_iter", default=1, type=int)
    p.add_argument("--model", default="vit_large_patch16", type=str, help="a classifier from models.list_models()")
    p.add_argument("--input_size", default=224, type=int)
    p.add_argument("--weight_decay", default=0.0, type=float)
    p.add_argument("--lr", default=None, type=float, help="absolute LR (default: blr x eff_batch / 256)")
    p.add_argument("--blr", default=0.1, type=float)
    p.add_argument("--min_lr", default=0.0, type=float)
    p.add_argument("--warmup_epochs", default=10, type=float)
    p.add_argument("--clip_grad", default=None, type=float)
    main_finetune.add_common_eval_args(p, global_pool_default=False)
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
