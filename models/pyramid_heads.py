"""Heads for pyramid (multi-stage) encoders pretrained with UM-MAE or SimMIM (docs/methods.md §4.3-4.5, §4.8).

A pyramid encoder ends at a coarse final stage: with UM-MAE's compact grid (one visible 16-px patch per 2x2
group, gathered group by group) the final map has half the side of the group grid (4x4 at 256 px); on the
full grid (SimMIM) it has half the side of the patch grid (8x8). Both heads expand it by a linear layer and
a PixelShuffle(2) to one token per group (UM) or per patch (SimMIM). Parameter names are the official ones.
"""

import torch
import torch.nn.functional as F
from torch import nn

from base.errors import UsageError

from .heads import MAEDecoder
from .init import init_linear_and_norm
from .interfaces import EncoderOutput, Masks
from .masking import compact_order


def _shuffle_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, h * w, 4 D] tokens of an (h, w) map -> PixelShuffle(2) -> [N, 2h * 2w, D] in raster order;
    output (2y + i, 2x + j) takes channels 4 c + 2 i + j (the official layout)."""
    n, length, dim = x.shape
    h, w = size
    if length != h * w:
        raise ValueError(f"expected the final stage as {h}x{w} = {h * w} tokens, got {length}")
    x = F.pixel_shuffle(x.transpose(1, 2).reshape(n, dim, h, w), 2)
    return x.flatten(2).transpose(1, 2)


class UMDecoder(MAEDecoder):
    """UM-MAE's decoder for pyramid encoders (docs/methods.md §4.5).

    ``decoder_embed`` Linear(C_out -> 4 D) + PixelShuffle(2) turns the final compact map into one token per
    UM-visible patch, in raster order of the 2x2 groups; fixed 2-D sin-cos positions are added; the
    ``mask_token`` (+ its position) is appended for every masked patch in raster order; transformer blocks,
    LN and ``decoder_pred``. The prediction is returned for every patch in raster order.

    ``raster_positions`` reproduces the official ordering bug (``--official_quirks``): the visible tokens get
    the positions of the visible patches in *raster* order (``decoder_pos_embed[~mask]``) although they come
    in group order, so most get the position of another patch of the same two-row band. By default each gets
    its own patch's position.
    """

    def __init__(self, grid_size: tuple[int, int], embed_dim: int, out_dim: int, decoder_embed_dim: int = 512,
                 decoder_depth: int = 2, decoder_num_heads: int = 16, mlp_ratio: float = 4.0,
                 raster_positions: bool = False):
        if grid_size[0] % 4 or grid_size[1] % 4:
            raise UsageError(f"the UM decoder needs a patch grid divisible by 4, got {tuple(grid_size)}: pass an "
                             "--input_size of a multiple of 4 patches")
        super().__init__(grid_size, embed_dim, out_dim, decoder_embed_dim, decoder_depth, decoder_num_heads,
                         mlp_ratio, num_prefix_tokens=0)
        self.raster_positions = raster_positions
        # one 4D token per final-map cell, pixel-shuffled into 2x2 decoder tokens
        self.decoder_embed = nn.Linear(embed_dim, 4 * decoder_embed_dim)
        init_linear_and_norm(self.decoder_embed)

    def sequence_order(self, masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches behind the decoder's sequence: visible [N, G] in group order, masked [N, L - G] in
        raster order (the official order of the sequence and of ``pred``)."""
        visible = compact_order(masks.ids_keep, self.grid_size)
        masked = torch.argsort((~masks.mask).to(torch.uint8), dim=1, stable=True)[:, :-visible.shape[1]]
        return visible, masked

    def forward(self, features: EncoderOutput, masks: Masks) -> torch.Tensor:
        """features.patches: [N, (h/4) * (w/4), C_out] final compact map -> predictions [N, L, out_dim]."""
        gh, gw = self.grid_size
        x = _shuffle_up(self.decoder_embed(features.patches), (gh // 4, gw // 4))  # [N, G, D]
        n, _, dim = x.shape
        vis_ids, mask_ids = self.sequence_order(masks)
        pos = self.decoder_pos_embed.to(x.dtype).expand(n, -1, -1)
        pos_ids = vis_ids.sort(dim=1).values if self.raster_positions else vis_ids
        pos_vis = torch.gather(pos, 1, pos_ids.unsqueeze(-1).expand(-1, -1, dim))
        pos_mask = torch.gather(pos, 1, mask_ids.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x + pos_vis, self.mask_token.to(x.dtype) + pos_mask], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        order = torch.cat([vis_ids, mask_ids], dim=1)
        return torch.empty_like(x).scatter_(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)

    def extra_repr(self) -> str:
        return f"raster_positions={self.raster_positions}"


class SimMIMHead(nn.Module):
    """UM-MAE's SimMIM "decoder" (docs/methods.md §4.8): ``decoder_pred`` Linear(C_out -> upscale^2 * P) and
    PixelShuffle(upscale) give one P-dim prediction per patch from the final stage (P = 16 * 16 * 3); its
    loss is L1 over the masked patches."""

    def __init__(self, embed_dim: int, out_dim_per_patch: int = 768, upscale: int = 2):
        super().__init__()
        self.upscale = upscale
        self.decoder_pred = nn.Linear(embed_dim, upscale ** 2 * out_dim_per_patch)
        self.apply(init_linear_and_norm)

    def forward(self, features: EncoderOutput, masks: Masks | None = None) -> torch.Tensor:
        """features.patches: [N, h * w, C_out] final map (``grid`` (h, w)) -> [N, (u h) * (u w), P] raster."""
        x = self.decoder_pred(features.patches)
        n, _, dim = x.shape
        x = F.pixel_shuffle(x.transpose(1, 2).reshape(n, dim, *features.grid), self.upscale)
        return x.flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"upscale={self.upscale}"
