"""The contracts of the axes a method is composed of: encoder, masking, target, head and loss.

A pretraining model (``models/mim.py``) is ``masking -> encoder -> heads``, each head's prediction compared
with the ``target`` by its ``loss``. These Protocols are what the composition relies on; a new value on an
axis is a class that satisfies one of them (``docs/extending.md``). Shapes: N images, V views, B = V * N
rows, L patches on the ``grid_size`` grid, K visible patches, P prefix tokens, D channels.

Conventions: a mask is bool with True = masked, in raster order of the patch grid; ``ids_keep`` lists the
visible patches in the order the encoder sees them. Layer numbers in ``return_layers`` count the encoder's
blocks from 1 (DeepMIM's "block 6"); ``forward_features`` indices count its feature levels from 0 (timm's
and mmseg's ``out_indices``).
"""
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, Sequence, runtime_checkable

import torch

from base.errors import UsageError


@dataclass
class Masks:
    """mask: [B, L] bool (True = masked); ids_keep: [B, K]; ids_restore: [B, L] (inverse of the shuffle).

    With V views of N images, B = V * N rows ordered [view 1 of all images; view 2 of all images; ...]
    (the official DMJD batch layout); ``view_mask`` gives them as [V, N, L].

    ``secondary`` [B, L] bool (UM-MAE): patches that are visible under ``mask`` (so in ``ids_keep``) but
    whose content the encoder replaces by a learned token; they are not reconstructed.

    ``disjoint_views``: the V > 1 views of every image are known to see pairwise disjoint patches, which
    lets an encoder share work across them (``Encoder.forward``'s ``views``). A masking that guarantees it
    says so without looking at the masks; built from given masks or ids, the masks are checked (a host sync).
    """

    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    num_views: int = 1
    secondary: torch.Tensor | None = None
    disjoint_views: bool = False

    @property
    def view_mask(self) -> torch.Tensor:
        """[V, N, L] bool."""
        return self.mask.reshape(self.num_views, -1, self.mask.shape[-1])

    @classmethod
    def from_shuffle(cls, ids_shuffle: torch.Tensor, len_keep: int, num_views: int = 1,
                     disjoint_views: bool | None = None) -> "Masks":
        """Build from a per-sample permutation [N, L] whose first ``len_keep`` entries stay visible.
        ``disjoint_views``: whether the views are known to be disjoint; None checks the masks (a host sync)."""
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones_like(ids_shuffle, dtype=torch.bool)
        mask[:, :len_keep] = False
        mask = torch.gather(mask, 1, ids_restore)
        if disjoint_views is None:
            disjoint_views = num_views > 1 and bool(
                ((~mask).reshape(num_views, -1, mask.shape[1]).sum(0) <= 1).all())
        return cls(mask=mask, ids_keep=ids_shuffle[:, :len_keep], ids_restore=ids_restore, num_views=num_views,
                   disjoint_views=disjoint_views)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Masks":
        """Build from an explicit bool mask [N, L], or [V, N, L] for V views of N images; visible tokens
        are kept in raster order.

        Every row must hide the same number of patches, since the encoder batches visible tokens.
        """
        if mask.dim() not in (2, 3):
            raise ValueError(f"expected a mask of shape [N, L] or [V, N, L], got {tuple(mask.shape)}")
        num_views = mask.shape[0] if mask.dim() == 3 else 1
        mask = mask.reshape(-1, mask.shape[-1]).bool()
        counts = mask.sum(1)
        if (counts != counts[0]).any():
            raise ValueError(f"every sample must mask the same number of patches, got {counts.tolist()}")
        len_keep = mask.shape[1] - int(counts[0])
        # stable sort keeps raster order inside the visible and the masked groups
        ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        return cls.from_shuffle(ids_shuffle, len_keep, num_views)

    @classmethod
    def from_ids_keep(cls, ids_keep: torch.Tensor, num_patches: int, num_views: int = 1) -> "Masks":
        """Build from the visible patches in the order the encoder should see them, ids_keep [B, K]
        (e.g. an order recorded from another implementation); masked patches follow in raster order."""
        hidden = torch.ones(ids_keep.shape[0], num_patches, dtype=torch.bool, device=ids_keep.device)
        hidden.scatter_(1, ids_keep, False)
        rest = torch.argsort(hidden.to(torch.uint8), dim=1, stable=True)[:, ids_keep.shape[1]:]
        return cls.from_shuffle(torch.cat([ids_keep, rest], dim=1), ids_keep.shape[1], num_views)


def repeat_views(rows: torch.Tensor, views: int) -> torch.Tensor:
    """[N, ...] per image -> [V * N, ...] per view, [all images; all images again; ...] (the views' order)."""
    return rows.repeat(views, *[1] * (rows.dim() - 1)) if views > 1 else rows


@dataclass
class EncoderOutput:
    """What an encoder hands to the heads.

    prefix: [B, P, D] the encoder's prefix tokens (the ViT's cls; P = 0 for ConViT, Swin, PVT).
    patches: [B, S, D] the patch tokens: the K visible ones in ids_keep order (MAE-style encoders), or a
        map of ``grid`` = (h, w) tokens in raster order (encoders that keep every position, or the final
        stage of a pyramid encoder).
    grid: (h, w) when ``patches`` is such a map, None when it is a set of visible tokens.
    layers: {block number from 1: EncoderOutput of that block's un-normed output} for ``return_layers``.
    The final ``prefix``/``patches`` are normed (when the encoder has a final norm).
    """

    prefix: torch.Tensor
    patches: torch.Tensor
    grid: tuple[int, int] | None = None
    layers: dict[int, "EncoderOutput"] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature level of ``forward_features``: channels and stride (pixels per map cell)."""

    num_chs: int
    reduction: int


class MaskedTokens(StrEnum):
    """How an encoder treats the patches a mask hides: its ``masked_tokens`` constructor argument."""

    DROP = "drop"  # encode only the K visible tokens, in ids_keep order (MAE; ConViT after masking its convolutions)
    TOKEN = "token"  # a learned mask token in place of every masked patch, all L encoded (SimMIM, MaskFeat)
    COMPACT = "compact"  # the visible patch of every 2x2 group packed into a half-side grid (UM-MAE, pyramids)
    NONE = "none"  # no mask at all (a classifier): no mask parameters, ids_keep must be None


# the constructor arguments every encoder takes besides its architecture's own (widths, depths, heads, ...)
ENCODER_ARGS = ("img_size", "drop_path_rate", "final_norm", "learnable_pos_embed", "masked_tokens", "vis_mask_token")


def _choices(values: Sequence) -> str:
    shown = [repr(str(v)) if isinstance(v, str) else repr(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


@dataclass(frozen=True)
class EncoderArgs:
    """The values an encoder allows of the shared constructor arguments (``ENCODER_ARGS``); each encoder class
    declares its own as ``encoder_args`` and checks them with :meth:`check` when built.

    Every encoder constructor takes:

    - ``img_size``: int or (h, w), the input its patch grid and position table are built for;
    - ``drop_path_rate``: stochastic depth of the last block, rising linearly from 0 over the blocks;
    - ``final_norm``: a LayerNorm on the final tokens (fine-tuning under global pooling goes without);
    - ``learnable_pos_embed``: the absolute position table trains (fine-tuning) or stays frozen (pretraining);
    - ``masked_tokens``: a :class:`MaskedTokens`, how the masked patches are handled;
    - ``vis_mask_token``: a learned token that UM-MAE's secondary masking puts in place of the visible patches
      it hides (``Masks.secondary``).

    The first three take any value. ``masked_tokens`` takes the modes listed here (the first is the default),
    ``vis_mask_token=True`` only under the ``secondary`` modes, ``learnable_pos_embed`` the listed values
    (``(False,)`` for an encoder without an absolute position table).
    """

    masked_tokens: tuple[MaskedTokens, ...]
    secondary: tuple[MaskedTokens, ...] = ()
    learnable_pos_embed: tuple[bool, ...] = (False, True)

    def check(self, encoder: str, masked_tokens: str, vis_mask_token: bool,
              learnable_pos_embed: bool) -> MaskedTokens:
        """Refuse (``UsageError``, naming the allowed values) what ``encoder`` does not implement; return the
        mode as a :class:`MaskedTokens`."""
        if masked_tokens not in self.masked_tokens:
            raise UsageError(f"{encoder} takes masked_tokens={_choices(self.masked_tokens)}, got {masked_tokens!r}")
        mode = MaskedTokens(masked_tokens)
        if vis_mask_token and mode not in self.secondary:
            where = f"masked_tokens={_choices(self.secondary)}" if self.secondary else "no masked_tokens mode"
            raise UsageError(f"{encoder} has secondary masking (vis_mask_token=True) under {where}, not under "
                             f"masked_tokens={str(mode)!r}: pass vis_mask_token=False")
        if learnable_pos_embed not in self.learnable_pos_embed:
            raise UsageError(f"{encoder} takes learnable_pos_embed={_choices(self.learnable_pos_embed)}, got "
                             f"{learnable_pos_embed!r}")
        return mode


class EncoderBuilder(Protocol):
    """What a recipe calls to build its encoder (an encoder class, or a function such as ``vit.vit_base``): the
    shared arguments of :class:`EncoderArgs` by keyword, plus overrides of its architecture's own."""

    def __call__(self, *, img_size: int | tuple[int, int], drop_path_rate: float = 0.0, final_norm: bool = True,
                 learnable_pos_embed: bool = False, masked_tokens: MaskedTokens | str = ...,
                 vis_mask_token: bool = False, **architecture) -> "Encoder":
        ...


@runtime_checkable
class Encoder(Protocol):
    """A backbone that consumes a mask its own way (drop tokens, mask convolutions, compact grid, mask token).

    ``grid_size``/``num_patches`` describe the patch grid the masks live on (``patch_size`` pixels a patch);
    ``embed_dim`` is the width of the final tokens, ``depth`` the number of blocks ``return_layers`` counts,
    ``num_prefix_tokens`` the P of :class:`EncoderOutput` (a decoder's position table needs it when built),
    ``encoder_args`` the values it allows of the shared constructor arguments, ``masked_tokens`` its mode.
    """

    encoder_args: EncoderArgs
    masked_tokens: MaskedTokens
    num_prefix_tokens: int
    patch_size: int
    grid_size: tuple[int, int]
    num_patches: int
    embed_dim: int
    depth: int
    feature_info: list[FeatureInfo]

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None, return_layers: Sequence[int] = (),
                secondary: torch.Tensor | None = None, views: int = 1) -> EncoderOutput:
        """imgs [B, 3, H, W]; ids_keep [B, K] (None: every patch); secondary [B, L] (UM-MAE) or None.

        ``views`` = V > 1: imgs holds each of N images once, [N, 3, H, W], and ids_keep (and secondary) hold
        V * N rows, row v * N + n a view of image n, the V views of an image seeing pairwise disjoint
        patches (``Masks.disjoint_views``). An encoder may then share work across the views (ConViT runs
        its convolution stages once per image); one that cannot repeats the images (:func:`repeat_views`).
        The output has B = V * N rows either way."""

    def forward_features(self, imgs: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Unmasked dense features for dense tasks: the levels ``indices`` of ``feature_info`` (default all),
        each [B, C_i, H / r_i, W / r_i]."""

    def layer_groups(self) -> tuple[str, str]:
        """(stem, numbered blocks) regexes over parameter names, for layer-wise LR decay."""

    def set_grad_checkpointing(self, mode: str | bool = "all") -> None:
        """Activation checkpointing of the blocks while training: ``"none"``, ``"stage1"`` (the first,
        highest-resolution stage) or ``"all"`` (``models.encoders.common.GradCheckpointing`` implements it)."""


@runtime_checkable
class Masking(Protocol):
    """Draws the masks of a batch on its device, batched, from ``generator`` or the global RNG, for the encoder's
    patch grid ``grid_size`` = (rows, cols) (L = rows * cols, not necessarily square).

    A masking may also define ``check(grid_size)``, which the model calls once when it is built: refuse
    (``UsageError``) a grid it cannot mask, e.g. one it would leave no patch of visible."""

    mask_ratio: float

    def __call__(self, batch_size: int, grid_size: tuple[int, int], device: torch.device,
                 generator: torch.Generator | None = None) -> Masks:
        ...


@runtime_checkable
class UnitMasking(Masking, Protocol):
    """A masking that hides whole units (a patch, a 2x2 block) and can give its draw as an order of units, which
    DMJD's disjoint views (``masking.DisjointMasking``) permute to derive each view from the one before."""

    def num_units(self, grid_size: tuple[int, int]) -> int:
        """S, the number of units of the grid."""

    def units_to_patches(self, order: torch.Tensor, len_keep: int,
                         grid_size: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """order [B, S] of units, the first ``len_keep`` visible -> (the order of patches [B, L'], the number of
        them kept), as ``Masks.from_shuffle`` takes them."""


@runtime_checkable
class Target(Protocol):
    """What the heads regress, computed on the device from the model input: imgs [N, 3, H, W] -> [N, L, C]."""

    def out_dim(self, in_chans: int = 3) -> int:
        ...

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        ...


@runtime_checkable
class Head(Protocol):
    """Predicts from the encoder's output: [B, L, C] for every patch, or [B, K, C] for the visible ones.
    A head with a ``layer`` attribute reads that block's output (deep supervision) instead of the final one."""

    def __call__(self, features: EncoderOutput, masks: Masks) -> torch.Tensor:
        ...


@runtime_checkable
class Loss(Protocol):
    """Compares a head's prediction with the target [B, L, C] on the patches it is responsible for -> scalar."""

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, masks: Masks) -> torch.Tensor:
        ...
