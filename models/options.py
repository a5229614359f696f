"""Checks of a model's size options, made by the constructors and recipes that take them: a value no layer can be
built with (or an image size the encoder's grid cannot take) is one ``UsageError`` naming the option as
``--model_kwargs`` spells it, instead of an assertion or a shape error deep inside timm or torch."""
import math
from numbers import Real
from typing import Sequence

from base.errors import UsageError


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_ints(**options: int | Sequence[int]) -> None:
    """Widths, head counts, patch sizes...: each option a positive integer (a sequence: every entry)."""
    for name, value in options.items():
        if isinstance(value, (tuple, list)):
            if not value or not all(_is_int(v) and v > 0 for v in value):
                raise UsageError(f"{name}={tuple(value)}: expected positive integers")
        elif not (_is_int(value) and value > 0):
            raise UsageError(f"{name}={value!r}: expected a positive integer")


def check_counts(**options: int) -> None:
    """Block counts that may be zero (a ViT of no block, a decoder of no block): non-negative integers."""
    for name, value in options.items():
        if not (_is_int(value) and value >= 0):
            raise UsageError(f"{name}={value!r}: expected a non-negative integer")


def check_positive_numbers(**options: float | Sequence[float]) -> None:
    """MLP ratios: positive finite numbers (a sequence: every entry)."""
    for name, value in options.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        if not all(isinstance(v, Real) and not isinstance(v, bool) and 0 < v < math.inf for v in values):
            raise UsageError(f"{name}={value!r}: expected a positive number")


def check_per_stage(**options: Sequence) -> None:
    """Per-stage options of a pyramid encoder: one entry per stage in each."""
    if len({len(value) for value in options.values()}) > 1:
        named = " and ".join(f"{name}={tuple(value)}" for name, value in options.items())
        raise UsageError(f"{named} need one entry per stage")


def check_stages(depths: Sequence[int], num_heads: Sequence[int], widths: dict[str, int],
                 **ratios: float | Sequence[float]) -> None:
    """A pyramid encoder's per-stage options: positive block and head counts, one per stage, each stage's heads
    dividing its width (``widths``: the stage widths in order, keyed by how the message spells them), and
    positive MLP ``ratios``."""
    check_positive_ints(depths=depths, num_heads=num_heads)
    check_positive_numbers(**ratios)
    check_per_stage(depths=depths, num_heads=num_heads)
    for stage, (heads, (name, width)) in enumerate(zip(num_heads, widths.items())):
        check_heads(f"num_heads[{stage}]={heads}", heads, name, width)


def _near_divisors(width: int, heads: int) -> str:
    """The divisors of ``width`` next to ``heads``: "2 or 4" for 512 and 3."""
    below = max(d for d in range(1, min(heads, width) + 1) if width % d == 0)
    above = next((d for d in range(heads, width + 1) if width % d == 0), None)
    return f"{below} or {above}" if above is not None and below != above else str(below)


def check_heads(heads: str, count: int, width: str, value: int) -> None:
    """Attention splits a width into equal heads: ``count`` (the option ``heads``, e.g. "num_heads=3") must
    divide ``value`` (described by ``width``, e.g. "embed_dim=32")."""
    if value % count:
        raise UsageError(f"{heads} does not divide {width} into equal heads: pass {_near_divisors(value, count)}")


def check_sincos_width(name: str, value: int) -> None:
    """A 2-D sin-cos position table (``models.pos_embed.sincos_2d``) splits its width in four."""
    if value % 4:
        sizes = f"{value // 4 * 4} or {value // 4 * 4 + 4}" if value > 4 else "4"
        raise UsageError(f"{name}={value} is not a multiple of 4, which the 2-D sin-cos position table needs: "
                         f"pass {sizes}")


def pyramid_multiple(patch_size: int, cell_size: int, stages: int, compact: bool) -> int:
    """The multiple every image side must be of for a pyramid encoder: whole ``patch_size`` patches, and a grid
    of ``cell_size`` cells that halves evenly at each of the ``stages - 1`` merges; with ``compact`` (UM-MAE) an
    even patch grid whose half (the compact grid) does so."""
    merges = 2 ** (stages - 1)
    return math.lcm(2 * patch_size, 2 * cell_size * merges) if compact else math.lcm(patch_size, cell_size * merges)


def check_pyramid_size(img_size: tuple[int, int], patch_size: int, cell_size: int, stages: int,
                       compact: bool) -> None:
    """Each side of ``img_size`` a multiple of :func:`pyramid_multiple`, else one line with the nearest valid
    sizes (the smallest when the image is too small)."""
    step = pyramid_multiple(patch_size, cell_size, stages, compact)
    for side in img_size:
        if side % step == 0 and side > 0:
            continue
        below = side // step * step
        sizes = f"{below} or {below + step}" if below else f"{step} (the smallest)"
        what = f"UM-MAE's compact grid on a {stages}-stage encoder" if compact else \
            f"a {stages}-stage encoder's full grid"
        raise UsageError(f"image size {side} (--input_size) does not fit {what} ({patch_size}-px patches, "
                         f"{cell_size}-px cells halved {stages - 1} times): it takes multiples of {step}; "
                         f"pass {sizes}")


def check_decoder(decoder_embed_dim: int, decoder_depth: int, decoder_num_heads: int,
                  decoder_mlp_ratio: float = 4.0) -> None:
    """A recipe's MAE-style decoder options (``models.heads.MAEDecoder``: timm blocks over a sin-cos table)."""
    check_positive_ints(decoder_embed_dim=decoder_embed_dim, decoder_num_heads=decoder_num_heads)
    check_counts(decoder_depth=decoder_depth)
    check_positive_numbers(decoder_mlp_ratio=decoder_mlp_ratio)
    check_heads(f"decoder_num_heads={decoder_num_heads}", decoder_num_heads,
                f"decoder_embed_dim={decoder_embed_dim}", decoder_embed_dim)
    check_sincos_width("decoder_embed_dim", decoder_embed_dim)
