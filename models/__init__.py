"""Models: ``create_model(name, **overrides)``, ``create_recipe`` (model + training defaults) and
``list_models(pattern)`` over the registered recipes, ``tiny_kwargs(name)`` their tiny configurations."""
from . import official, recipes  # noqa: F401  (recipes registers our names)
from .registry import Recipe, TrainDefaults, create_model, create_recipe, list_models, register_model, tiny_kwargs

official.register_aliases()

__all__ = ["Recipe", "TrainDefaults", "create_model", "create_recipe", "list_models", "register_model",
           "tiny_kwargs"]
