"""Run-time choices every CLI makes the same way: device, precision, seeds, recipe overrides."""
import argparse
import ast
import random
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

import models
from base.errors import UsageError
from models.registry import model_task

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def device_or_default(name: str | None) -> str:
    """``--device`` as given, or (None) cuda when a GPU is visible, else cpu."""
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def select_device(name: str | None) -> str:
    """``device_or_default(name)``, refused in one line when it is a GPU that is not there."""
    device = device_or_default(name)
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


def parse_model_kwargs(items: Iterable[str]) -> dict:
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


def _plain(value: Any) -> Any:
    """A list as a tuple: the config keeps list flags (``--ds_layers``) as tuples, ``KEY=[...]`` parses as a list."""
    return tuple(value) if isinstance(value, list) else value


def recipe_options(flags: Mapping[str, tuple[str, Any]], model_kwargs: Iterable[str]) -> dict:
    """The options a recipe is built with: ``flags`` (option -> (the flag that sets it, its value)), then
    ``--model_kwargs``. One setting has one source: a ``--model_kwargs`` key that repeats a flag's option with
    another value is refused in one line naming the flag (the model and the run's data would disagree)."""
    given = parse_model_kwargs(model_kwargs)
    for key, value in given.items():
        if key in flags and _plain(flags[key][1]) != _plain(value):
            flag, flag_value = flags[key]
            raise UsageError(f"--model_kwargs {key}={value!r} contradicts {flag} {flag_value}: set it with {flag} only")
    return {key: value for key, (_, value) in flags.items()} | given


def _related(name: str, others: Iterable[str]) -> list[str]:
    """The names of ``others`` that contain ``name``, or are contained in it, as whole ``_``-separated words
    (``vit_base_patch16`` <-> ``mae_vit_base_patch16``, not ``dmjd_convvit_base_patch16_hog``)."""
    def within(short: str, long: str) -> bool:
        return re.search(rf"(^|_){re.escape(short)}(_|$)", long) is not None
    return [other for other in others if within(name, other) or within(other, name)]


def check_task(name: str, task: str) -> None:
    """Refuse, naming the models to use instead, a classifier given to pretraining (``task="pretrain"``) or a
    pretraining recipe to fine-tuning / linear probing (``"classify"``); unknown names are left to the registry."""
    actual = model_task(name)
    if actual is None or actual == task:
        return
    if task == "pretrain":
        others = _related(name, models.list_models(task="pretrain")) or models.list_models(task="pretrain")
        raise UsageError(f"--model {name} is a fine-tuning model (a classifier): main_pretrain.py trains a "
                         f"pretraining recipe, e.g. {', '.join(others)}")
    others = _related(name, models.list_models(task="classify")) or models.list_models(task="classify")
    raise UsageError(f"--model {name} is a pretraining recipe: fine-tuning and linear probing train a classifier, "
                     f"e.g. {', '.join(others)} (with --finetune <the pretraining checkpoint>)")


def build_named_model(name: str, task: str | None = None, **kwargs):
    """``models.create_recipe`` -> Recipe, with a one-line error when the model is not for ``task`` (one of
    ``models.registry.TASKS``; None: any) or ``img_size`` (``--input_size``) is no whole number of the encoder's
    patches. A recipe refuses what it cannot build with a ``UsageError`` (an option it does not take included:
    ``models.recipe_options.builder``); any other exception is a bug and keeps its traceback."""
    if task is not None:
        check_task(name, task)
    recipe = models.create_recipe(name, **kwargs)
    check_input_size(name, kwargs.get("img_size"), getattr(getattr(recipe.model, "encoder", None), "patch_size", None))
    return recipe


def check_input_size(name: str, size: int | None, patch: int | None) -> None:
    """A ViT crops what is left of an image past its last whole patch and fails at the first batch (pyramid
    encoders check this themselves): refuse such an ``--input_size`` up front."""
    if size is None or not isinstance(patch, int) or (size % patch == 0 and size >= patch):
        return
    below = size // patch * patch
    sizes = f"{below} or {below + patch}" if below else str(patch)
    raise UsageError(f"--input_size {size} is not a multiple of {name}'s patch size {patch}: pass {sizes}")


def usage_message(err: BaseException) -> str | None:
    """The one line an error a user can fix prints: a ``UsageError``'s sentence, or an ``OSError`` on a path it
    names (a folder that cannot be made, a file that cannot be read or written); None for anything else, a bug
    whose traceback stays."""
    if isinstance(err, UsageError):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return None


def run_tool(run: Callable[[argparse.Namespace], object], parser: Callable[[], argparse.ArgumentParser],
             argv: Sequence[str] | None = None) -> int:
    """A ``tools/`` script's ``main``: parse ``argv`` (default: the command line) and ``run``; the exit status,
    2 with one line on stderr for a user's error (``usage_message``), so tests call it in-process."""
    try:
        run(parser().parse_args(argv))
    except (UsageError, OSError) as err:
        message = usage_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


def run_cli(main: Callable[[argparse.Namespace], object], parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Parse flags and run ``main`` (``run_tool``): a ``UsageError`` (a bad flag value included) prints one line
    and exits 2, no traceback; the process group is left in any case."""
    from util import distributed as dist_util
    try:
        status = run_tool(main, parser)
    finally:
        dist_util.cleanup()
    if status:
        sys.exit(status)
