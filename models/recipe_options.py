"""The options of the recipes, declared once: the method options ``main_pretrain.py`` takes as flags
(:class:`MethodOptions`, with their ranges and help), and the check that refuses an option a recipe does not take
(:func:`builder`), by the signatures of the recipe's builder and of its encoder.

A method option reaches the recipe by the path of ``--model_kwargs``: only when given, so that each recipe keeps
its own default (MAE masks 0.75, DMJD 0.6). Adding one is a field here and the parameter of the builders that
take it; ``main_pretrain.py``'s flag, its config field and its help all come from the field.
"""
import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from base.errors import UsageError
from base.settings import (FRACTION_BELOW_ONE, NON_NEGATIVE, OPEN_FRACTION, POSITIVE_FRACTION, POSITIVE_INT, Group,
                           setting)

MASK_TYPES = ("rand", "block")
PRED_TYPES = ("pixel", "hog")
BRANCH_LOSSES = ("l2", "smooth_l1")  # DMJD's choices for its two branches (models.losses has more)

UMMAE = Group("UM-MAE", "uniform masking for pyramid encoders")
DEEPMIM = Group("DeepMIM", "deep supervision (default: the recipe's)")
DMJD = Group("DMJD", "disjoint masking and joint distillation (default: the recipe's)")


@dataclass(frozen=True, kw_only=True)
class MethodOptions:
    """The method options of the pretraining recipes; each default means "the recipe's own"."""

    mask_ratio: float | None = setting(None, type=OPEN_FRACTION,
                                       help="fraction of patches removed (default: the recipe's, MAE 0.75, DMJD 0.6)")
    norm_pix_loss: bool = setting(False, switch=True, help="per-patch normalized pixel target")
    official_quirks: bool = setting(False, switch=True,
                                    help="reproduce the official code's documented bugs exactly (see PRETRAIN.md)")
    mask_regular: bool = setting(False, switch=True, group=UMMAE,
                                 help="uniform masking: one visible patch per 2x2 group")
    vis_mask_ratio: float | None = setting(None, type=FRACTION_BELOW_ONE, group=UMMAE,
                                           help="secondary masking: fraction of the visible patches replaced by a "
                                                "learned token")
    clip_path: str | None = setting(None, group=DEEPMIM, help="CLIP checkpoint (OpenAI .pt, state dict or open_clip)")
    ds_layers: tuple[int, ...] | None = setting(None, type=POSITIVE_INT, nargs="+", group=DEEPMIM,
                                                help="encoder blocks that get a decoder (the depth = the final "
                                                     "output); default 6 8 10 12")
    mask_type: str | None = setting(None, choices=MASK_TYPES, group=DMJD, help="random patches or 2x2 blocks")
    pred_ratio: float | None = setting(None, type=POSITIVE_FRACTION, group=DMJD,
                                       help="target union prediction rate of the views; also scales the LR by "
                                            "pred/mask")
    num_views: int | None = setting(None, type=POSITIVE_INT, group=DMJD, help="masked views per image (DMJD: 2)")
    pred_type: str | None = setting(None, choices=PRED_TYPES, group=DMJD, help="prediction target")
    mim_loss_type: str | None = setting(None, choices=BRANCH_LOSSES, group=DMJD, help="masked-branch loss")
    vis_loss_type: str | None = setting(None, choices=BRANCH_LOSSES, group=DMJD, help="visible-branch loss")
    theta: float | None = setting(None, type=NON_NEGATIVE, group=DMJD, help="weight of the visible-branch loss")

    def method_options(self) -> dict[str, Any]:
        """The method options that were given (not at their default), by name: what the recipe is built with."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(MethodOptions)
                if getattr(self, f.name) != f.default}


class UnknownOptions(UsageError):
    """Options the recipe ``model`` does not take (``names``), and those it does (``accepted``); the builder
    raises it, ``models.create_recipe`` names the recipe."""

    def __init__(self, names: Sequence[str], accepted: Sequence[str], model: str = "the recipe"):
        self.names, self.accepted = list(names), list(accepted)
        super().__init__(f"{model} does not take {', '.join(self.names)}: its options are {', '.join(self.accepted)}")


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def keyword_names(fn: Callable) -> frozenset[str] | None:
    """The keyword arguments ``fn`` takes, followed through ``functools.partial`` and through a function that
    passes its ``**kwargs`` on to the class it returns (an encoder's size, ``vit_base(**kwargs) ->
    VisionTransformer``). None when that cannot be told (``**kwargs`` going elsewhere): nothing is refused then."""
    if isinstance(fn, functools.partial):
        return keyword_names(fn.func)
    params = inspect.signature(fn).parameters.values()
    names = frozenset(p.name for p in params if p.kind in _NAMED)
    if all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params):
        return names
    built = typing.get_type_hints(fn).get("return") if inspect.isfunction(fn) else None
    rest = keyword_names(built) if inspect.isclass(built) else None
    return None if rest is None else names | rest


def builder(*sets_on_encoder: str) -> Callable[[Callable], Callable]:
    """Decorator of a recipe builder ``build(encoder_fn, <its options>, **encoder_kwargs)``: before anything is
    built, an option that neither the builder nor its encoder takes, or an encoder argument the builder sets itself
    (``sets_on_encoder``: ``masked_tokens``, ...), raises :class:`UnknownOptions` (instead of Python's TypeError
    from wherever the keyword lands)."""
    def wrap(build: Callable) -> Callable:
        params = list(inspect.signature(build).parameters.values())[1:]  # after encoder_fn
        own = frozenset(p.name for p in params if p.kind in _NAMED)

        @functools.wraps(build)
        def checked(encoder_fn: Callable, **options: Any) -> Any:
            encoder = keyword_names(encoder_fn)
            if encoder is not None:
                accepted = own | (encoder - set(sets_on_encoder))
                refused = sorted(set(options) - accepted)
                if refused:
                    raise UnknownOptions(refused, sorted(accepted))
            return build(encoder_fn, **options)
        return checked
    return wrap

