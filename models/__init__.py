"""Models: ``create_model(name, **overrides)`` and ``list_models(pattern)`` over the registered recipes."""
from . import recipes  # noqa: F401  (registers the recipes)
from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
