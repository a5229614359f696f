"""Name -> model-builder registry: ``create_model`` and ``list_models``."""
import difflib
import fnmatch
from typing import Callable

from torch import nn

from util.errors import UsageError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module], name: str | None = None) -> Callable[..., nn.Module]:
    """Decorator: register ``fn`` under its own name (or ``name``, for aliases such as official names)."""
    name = name or fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted."""
    return sorted(name for name in _MODELS if fnmatch.fnmatch(name, pattern))


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` replace the recipe's keyword defaults."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see models.list_models()"
        raise UsageError(f"unknown model {name!r}{hint}")
    return _MODELS[name](**overrides)
