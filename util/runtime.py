"""Run-time choices every CLI makes the same way: device, precision, seeds, recipe overrides."""
import argparse
import ast
import random
import sys
from typing import Callable

import numpy as np
import torch

import models
from util.errors import UsageError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by main_pretrain / main_finetune / main_linprobe."""
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe defaults, e.g. decoder_depth=2 decoder_embed_dim=128")
    p.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES),
                   help="precision: bf16 on GPU by default, fp32 on CPU; fp16 uses a GradScaler")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--output_dir", default="./output_dir")
    p.add_argument("--log_dir", default=None, help="TensorBoard folder (default: output_dir)")
    p.add_argument("--resume", default="", help="checkpoint to continue from")
    p.add_argument("--auto_resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--start_epoch", default=0, type=int)
    p.add_argument("--num_workers", default=10, type=int)
    p.add_argument("--pin_mem", action="store_true", default=True)
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.add_argument("--print_freq", default=20, type=int)
    p.add_argument("--data_set", default="imagefolder", choices=["imagefolder", "fashion_mnist"])
    p.add_argument("--data_path", default=None, type=str,
                   help="ImageNet-style root (train/<class>/*, val/<class>/*) or a folder of images; "
                        "fashion_mnist: /usr/share/datasets/fashion-mnist")
    p.add_argument("--data_limit", default=None, type=int, help="use only the first N training images (demos)")
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", default=None, type=int,
                   help="set by python -m torch.distributed.launch")


def select_device(name: str | None) -> str:
    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no GPU is visible: pass --device cpu")
    return device


def amp_choice(name: str | None, device: torch.device) -> tuple[str, torch.dtype | None]:
    """(name, autocast dtype): bf16 on GPU and fp32 on CPU unless asked otherwise."""
    name = name or ("bf16" if device.type == "cuda" else "fp32")
    return name, AMP_DTYPES[name]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def parse_model_kwargs(items: list[str]) -> dict:
    """["a=1", "b=x"] -> {"a": 1, "b": "x"} (Python literals where they parse)."""
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


def build_named_model(name: str, **kwargs):
    """``models.create_recipe`` -> Recipe, with a one-line error when a recipe does not take an option."""
    try:
        return models.create_recipe(name, **kwargs)
    except TypeError as err:
        raise UsageError(f"--model {name} does not accept these options: {err}") from err
    except ValueError as err:  # a recipe refusing a combination of options
        raise UsageError(f"--model {name}: {err}") from err


def run_cli(main: Callable[[argparse.Namespace], object], parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Parse flags and run ``main``; a ``UsageError`` prints one line and exits 2, no traceback."""
    from util import distributed as dist_util
    args = parser().parse_args()
    try:
        main(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        dist_util.cleanup()
