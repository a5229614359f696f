"""The train and test commands of a dense task: one parser and one flow each, which segmentation/{train,test}.py
and detection/{train,test}.py run with their task (its config loader, its metric's precision, its fp16 loss
scale)."""
import argparse
import json
import numbers
import os
from dataclasses import dataclass
from typing import Callable, Sequence

from mmengine.config import Config
from mmengine.runner import Runner

from base.errors import UsageError
from segmentation.runner import add_common_args, build_runner, load_config, report_batch

AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class DenseTask:
    """What differs between segmentation and detection at the command line."""

    name: str  # "UperNet segmentation", for the parsers' descriptions
    script: str  # its train.py, named in test.py's help
    load: Callable[[argparse.Namespace, Sequence[str]], Config]  # (args, data loaders to check) -> config
    digits: int  # decimals of the printed metrics (mIoU in %, box AP in [0, 1])
    fp16_loss_scale: float | str = "dynamic"  # AmpOptimWrapper's under --amp fp16 (the official detection: 512)


def training_parser(task: DenseTask) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(f"{task.name} training")
    add_common_args(p)
    p.add_argument("--pretrained", help="encoder weights: our or an official pretraining / fine-tuning checkpoint")
    p.add_argument("--amp", nargs="?", const="bf16", choices=sorted(AMP_DTYPES),
                   help="mixed precision through mmengine's AmpOptimWrapper (GPU only): bf16 (the flag alone) or fp16")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --work-dir")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the learning rate by the effective batch / the config's auto_scale_lr.base_batch_size")
    return p


def training_config(task: DenseTask, args: argparse.Namespace) -> Config:
    """The config of a training command line: the data checked, the flags applied (one-line errors)."""
    cfg = task.load(args, ("train_dataloader", "val_dataloader"))
    if args.pretrained:
        if not os.path.isfile(args.pretrained):
            raise UsageError(f"--pretrained {args.pretrained!r} does not exist")
        cfg.model.backbone.pretrained = args.pretrained
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.dtype = AMP_DTYPES[args.amp]
        if args.amp == "fp16" and task.fp16_loss_scale != "dynamic":
            cfg.optim_wrapper.loss_scale = dict(init_scale=task.fp16_loss_scale)
    if args.auto_scale_lr:
        if not (cfg.get("auto_scale_lr") or {}).get("base_batch_size"):
            raise UsageError("--auto-scale-lr needs the batch the config's learning rate is for: set "
                             "auto_scale_lr = dict(base_batch_size=...) in the config")
        cfg.auto_scale_lr.enable = True
    cfg.resume = args.resume
    return cfg


def build_training(task: DenseTask, args: argparse.Namespace) -> Runner:
    """The Runner of a training command line, its loops built (a bad config key is one line here)."""
    return build_runner(training_config(task, args), ("train", "val"), args.cfg_options)


def train(task: DenseTask, args: argparse.Namespace) -> None:
    runner = build_training(task, args)
    report_batch(runner)
    runner.train()


def evaluation_parser(task: DenseTask) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(f"{task.name} evaluation")
    add_common_args(p)
    p.add_argument("checkpoint", help=f"a checkpoint written by {task.script}")
    p.add_argument("--out-json", help="also write the metrics to this JSON file")
    return p


def evaluate(task: DenseTask, args: argparse.Namespace) -> dict[str, float]:
    """Evaluate ``args.checkpoint`` on the config's test set; print the scalar metrics (and write them as JSON)."""
    if not os.path.isfile(args.checkpoint):
        raise UsageError(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = task.load(args, ("test_dataloader",))
    cfg.load_from = args.checkpoint
    metrics = build_runner(cfg, ("test",), args.cfg_options).test()
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}  # numpy floats too
    print(" ".join(f"{k} {v:.{task.digits}f}" for k, v in scalars.items()))
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(scalars, f, indent=1)
    return scalars


SEGMENTATION = DenseTask("UperNet segmentation", "segmentation/train.py", load_config, digits=2)
