"""Name -> model-builder registry: ``create_model``, ``create_recipe`` and ``list_models``.

A registered function returns the model, or a :class:`Recipe` when the method also has training defaults
that differ from MAE's (DMJD's crop scale and LR rule). ``create_model`` always returns the model.
"""
import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from base.errors import UsageError

from .recipe_options import UnknownOptions


@dataclass(frozen=True)
class TrainDefaults:
    """Training settings a method chooses besides its model (the CLI flags override them).

    min_crop_scale: lower bound of the RandomResizedCrop area (MAE 0.2, DMJD 0.5).
    lr_batch_ratio: factor on the batch size in the LR scaling rule (1, or DMJD's pred_ratio / mask_ratio).
    """

    min_crop_scale: float = 0.2
    lr_batch_ratio: float = 1.0


@dataclass
class Recipe:
    """A built method: the model and the training defaults that go with it."""

    model: nn.Module
    defaults: TrainDefaults = field(default_factory=TrainDefaults)
    quirks: dict[str, str] = field(default_factory=dict)  # official bugs reproduced: name -> what it does


Builder = Callable[..., nn.Module | Recipe]
# a tiny configuration: keyword overrides, or a function of a scratch folder that writes the files it names there
Tiny = dict | Callable[[Path], dict]
TASKS = ("pretrain", "classify")  # what a registered model is for: main_pretrain.py, or fine-tuning / probing
_MODELS: dict[str, Builder] = {}
_QUIRKS: dict[str, dict[str, str]] = {}
_TASKS: dict[str, str] = {}
_TINY: dict[str, Tiny] = {}


def register_model(fn: Builder | None = None, name: str | None = None, quirks: dict[str, str] | None = None,
                   task: str = "pretrain", tiny: Tiny | None = None):
    """Decorator: register ``fn`` under its own name (or ``name``, for aliases such as official names).

    ``quirks`` names the official bugs the builder reproduces when called with ``official_quirks=True``
    (``models/official.py``); a builder registered without them is never passed that flag. ``task``: one of
    ``TASKS``, a pretraining recipe or a classifier (``"classify"``), so that a CLI refuses the other kind.
    ``tiny``: the overrides (``img_size`` included) that make the model tiny, usually its encoder module's
    ``TINY`` and a tiny decoder (:func:`tiny_kwargs`; every test, benchmark smoke run and docs check takes
    them from here, so a recipe registered with them is covered by ``make test`` without another edit).
    Use as ``@register_model`` or ``@register_model(quirks=..., task=..., tiny=...)``.
    """
    if fn is None:
        return lambda f: register_model(f, name, quirks, task, tiny)
    name = name or fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    _MODELS[name] = fn
    _TASKS[name] = task
    if quirks:
        _QUIRKS[name] = dict(quirks)
    if tiny is not None:
        _TINY[name] = tiny
    return fn


def register_alias(name: str, target: str, **fixed) -> None:
    """Register ``name`` as the recipe ``target`` with some keyword defaults ``fixed`` (official names)."""
    builder = _MODELS[target]
    register_model(lambda **kwargs: builder(**{**fixed, **kwargs}), name, _QUIRKS.get(target), _TASKS[target],
                   _TINY.get(target))


def tiny_kwargs(name: str, folder: str | Path | None = None) -> dict:
    """The registered tiny configuration of ``name``: overrides, ``img_size`` included, that build it with a few
    thousand parameters (``create_model(name, **tiny_kwargs(name))``). A recipe that reads a file (a teacher's
    checkpoint) writes a tiny one into ``folder``, which it then needs."""
    if name not in _TINY:
        raise LookupError(f"{name} has no tiny configuration: register it with @register_model(tiny=...), "
                          "e.g. its encoder module's TINY")
    tiny = _TINY[name]
    if callable(tiny):
        if folder is None:
            raise ValueError(f"the tiny configuration of {name} writes a file: pass a folder")
        return tiny(Path(folder))
    return dict(tiny)


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching the shell-style ``pattern`` (and, given, ``task``), sorted."""
    return sorted(name for name in _MODELS
                  if fnmatch.fnmatch(name, pattern) and task in (None, _TASKS[name]))


def model_task(name: str) -> str | None:
    """What the registered model ``name`` is for (one of ``TASKS``); None for an unknown name."""
    return _TASKS.get(name)


def model_quirks(name: str) -> dict[str, str]:
    """The official quirks the recipe ``name`` can reproduce (empty for most)."""
    return dict(_QUIRKS.get(name, {}))


def create_recipe(name: str, official_quirks: bool = False, **overrides) -> Recipe:
    """Build the registered model ``name`` with its training defaults; ``overrides`` replace the
    recipe's keyword defaults; one the recipe does not take is refused, naming those it does
    (``models.recipe_options.builder``). ``official_quirks`` turns on the recipe's quirks (``Recipe.quirks`` lists
    them; it stays empty for a recipe that has none, and the flag then changes nothing)."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see models.list_models()"
        raise UsageError(f"unknown model {name!r}{hint}")
    quirks = _QUIRKS.get(name, {}) if official_quirks else {}
    try:
        built = _MODELS[name](**overrides, **({"official_quirks": True} if quirks else {}))
    except UnknownOptions as err:  # raised by the recipe's builder before building anything
        raise UnknownOptions(err.names, err.accepted, name) from None
    recipe = built if isinstance(built, Recipe) else Recipe(built)
    recipe.quirks = dict(quirks)
    return recipe


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace the recipe's keyword defaults."""
    return create_recipe(name, **overrides).model
