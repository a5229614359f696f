"""Prediction heads: they map the encoder's output to predictions for patches (``models/losses.py`` compares
them with the target). Parameter names follow the official checkpoints (``decoder_*``, ``mask_token``) so
that composed models keep the official flat state-dict keys.
"""
from functools import partial
from typing import Callable, Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from base.errors import UsageError

from .init import init_linear_and_norm, init_token
from .interfaces import EncoderOutput, Masks
from .pos_embed import sincos_2d


# the tiny decoder of the recipes' tiny configurations (``models.tiny_kwargs``), with an encoder module's TINY
TINY_DECODER = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


class MAEDecoder(nn.Module):
    """MAE decoder (docs/methods.md §1.4): embed [prefix, visible], append mask tokens, unshuffle to raster
    order, add fixed sin-cos positions, transformer blocks, LN, linear prediction of every patch.

    ``num_prefix_tokens`` is the number of rows the position table keeps for the encoder's prefix tokens:
    1 for the ViT's cls token (MAE), 0 for ConViT (DMJD's decoder, docs/methods.md §2.5, has no cls row); the
    encoder's output must bring that many."""

    def __init__(self, grid_size: tuple[int, int], embed_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 8, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_prefix_tokens: int = 1):
        super().__init__()
        self.grid_size = tuple(grid_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = num_prefix_tokens
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + num_prefix_tokens, decoder_embed_dim),
                                              requires_grad=False)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        table = sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=self.num_prefix_tokens > 0)
        self.decoder_pos_embed.data.copy_(table.unsqueeze(0))
        init_token(self.mask_token)
        self.apply(init_linear_and_norm)

    def forward(self, features: EncoderOutput, masks: Masks) -> torch.Tensor:
        """features: prefix [N, P, D], patches [N, K, D] visible in ids_keep order -> [N, L, out_dim] raster."""
        p = features.prefix.shape[1]
        if p != self.num_prefix_tokens:
            raise ValueError(f"this decoder's position table has {self.num_prefix_tokens} prefix rows, the encoder "
                             f"gives {p} prefix tokens")
        x = self.decoder_embed(torch.cat([features.prefix, features.patches], dim=1))
        n, length = masks.ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(n, length + p - x.shape[1], -1)
        patches = torch.cat([x[:, p:], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, masks.ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :p], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, p:]


class LinearHead(nn.Module):
    """A linear prediction of every patch from the encoder's own token (SimMIM / MaskFeat: the encoder
    saw mask tokens in place of the masked patches)."""

    def __init__(self, embed_dim: int, out_dim: int):
        super().__init__()
        self.decoder_pred = nn.Linear(embed_dim, out_dim)
        self.apply(init_linear_and_norm)

    def forward(self, features: EncoderOutput, masks: Masks) -> torch.Tensor:
        """features.patches: [N, L, D] (all patches, raster order) -> [N, L, out_dim]."""
        return self.decoder_pred(features.patches)


class VisibleDistillHead(nn.Module):
    """DMJD's visible-distillation branch (docs/methods.md §2.5): the final-normed visible tokens go through a
    projection MLP (``proj_embed``) and a linear ``predictor`` that regresses the target of their own patch
    (its loss: ``PatchLoss(on="visible")``, smooth-L1 with beta 2 officially)."""

    def __init__(self, embed_dim: int, out_dim: int, hidden_dim: int = 512):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        # indices 0..7 and the one-layer predictor Sequential keep the official keys
        self.proj_embed = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), norm_layer(hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), norm_layer(hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), norm_layer(hidden_dim, elementwise_affine=False))
        self.predictor = nn.Sequential(nn.Linear(hidden_dim, out_dim))
        self.apply(init_linear_and_norm)

    def forward(self, features: EncoderOutput, masks: Masks) -> torch.Tensor:
        """features.patches: [N, K, D] visible -> predictions for the K visible patches [N, K, out_dim]."""
        return self.predictor(self.proj_embed(features.patches))


class TappedHead(nn.Module):
    """Deep supervision (DeepMIM, docs/methods.md §3.1): ``head`` reads the un-normed output of encoder block
    ``layer`` (counted from 1) instead of the final-normed tokens; ``layer=None`` reads the final tokens.

    ``key_suffix`` numbers the head's weights in checkpoints (``decoder_embed`` -> ``decoder_embed1``),
    as the official DeepMIM keys do; the model reads it, with ``inner_prefix``, to flatten the keys.
    """

    inner_prefix = "head."

    def __init__(self, head: nn.Module, layer: int | None, key_suffix: str = ""):
        super().__init__()
        self.head, self.layer, self.key_suffix = head, layer, key_suffix

    def forward(self, features: EncoderOutput, masks: Masks) -> torch.Tensor:
        return self.head(features if self.layer is None else features.layers[self.layer], masks)

    def extra_repr(self) -> str:
        return f"layer={self.layer if self.layer is not None else 'final'}"


def default_ds_layers(depth: int) -> tuple[int, ...]:
    """DeepMIM's taps: after blocks 6, 8 and 10 of 12 and the final output, scaled to ``depth``."""
    return tuple(sorted({max(1, round(depth * k / 12)) for k in (6, 8, 10)} | {depth}))


def deep_supervision_heads(make_head: Callable[[], nn.Module], layers: Sequence[int],
                           depth: int) -> dict[str, TappedHead]:
    """One independent head per tap: ``ds<k>`` reads block k's un-normed output, and the tap at ``depth``
    the final-normed tokens, as the official code. Weights are numbered 1.. in tap order."""
    layers = sorted(set(layers))
    if not layers or layers[0] < 1 or layers[-1] > depth:
        raise UsageError(f"ds_layers must lie in 1..{depth} (the encoder's depth), got {list(layers)}")
    return {f"ds{k}": TappedHead(make_head(), None if k == depth else k, str(i))
            for i, k in enumerate(layers, start=1)}
