"""UM-MAE's Pyramid Vision Transformer (docs/methods.md §4.3, §4.4, §4.7): four stages of spatial-reduction
attention over 4-pixel cells, for uniform-masking pretraining on a compact grid, SimMIM and classification.

Stages at 256 px on the full grid: ``patch_embed`` (4x4 conv, no norm) -> 64x64 cells -> stage 1 -> 2x2
stride-2 conv -> 32x32 -> stage 2 -> 16x16 -> stage 3 -> 8x8 -> stage 4 -> ``norm``. The masking unit is a
16-pixel patch (4x4 cells), so a 256-px image has L = 256 patches and the last stage one token per 2x2 group
of patches (32 px).

How masks are consumed (``masked_tokens``):
- ``"compact"`` (UM-MAE): uniform masking leaves one visible patch per 2x2 group. Each group's visible 4x4
  cells (and the same cells of the fixed sin-cos ``pos_embed``) are gathered into a compact grid of half the
  side, the groups keeping their arrangement, so the encoder sees 25% of the image as a dense 32x32 map.
  Patches in ``secondary`` keep their positions but their content is the raw ``vis_mask_token``.
- ``"token"`` (UM-MAE's SimMIM): the cells of every masked patch are replaced by ``mask_token`` before the
  position embedding is added, and the whole grid is encoded.
Without ``ids_keep`` the full grid is encoded (classification, dense tasks).

Spatial reduction is avg-pool(sr) -> 1x1 conv -> LN, so no parameter depends on the ratio: by default the
compact grid uses sr (4, 2, 1, 1) and the full grid (8, 4, 2, 1), which give the same number of keys and
values per stage at stages 1-3. State-dict keys are those of the official ``models_mae_pvt.py`` encoder
(``patch_embed.proj``, ``pos_embed``, ``vis_mask_token``, one flat ``blocks`` list whose first block of
stages 2-4 owns the ``downsample``, ``norm``), of ``models_simmim_pvt.py`` (``mask_token``) and of the
fine-tune ``models_pvt.py`` (without ``norm`` under global pooling).
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, to_2tuple
from torch import nn

from ..init import init_conv_as_linear, init_conv_fan_out, init_linear_and_norm, init_token
from ..interfaces import EncoderArgs, EncoderOutput, FeatureInfo, MaskedTokens, repeat_views
from ..masking import compact_order
from ..options import (check_per_stage, check_positive_ints, check_pyramid_size, check_sincos_width,
                       check_stages)
from ..pos_embed import resize_pos_embed, sincos_2d
from .common import GradCheckpointing, feature_indices, patch_visibility, run_blocks, tokens_to_map

COMPACT_SR_RATIOS = (4, 2, 1, 1)  # official pretraining on the compact grid
FULL_SR_RATIOS = (8, 4, 2, 1)  # official SimMIM and fine-tuning on the full grid


class SRAttention(nn.Module):
    """Multi-head attention whose keys and values come from the map average-pooled by ``sr_ratio``, then a
    1x1 conv and a LayerNorm (eps 1e-5, as officially). The ratio is a forward argument."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], sr_ratio: int) -> torch.Tensor:
        """x: [N, H*W, C] in raster order of the (H, W) map -> [N, H*W, C]."""
        n, s, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(n, s, heads, c // heads).transpose(1, 2)
        kv = x.transpose(1, 2).reshape(n, c, *hw)
        if sr_ratio > 1:
            kv = F.avg_pool2d(kv, sr_ratio)
        kv = self.norm(self.sr(kv).flatten(2).transpose(1, 2))
        k, v = self.kv(kv).reshape(n, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, s, c))


class PatchMerge(nn.Module):
    """2x2 stride-2 conv between stages, without norm: [N, H*W, Cin] -> [N, H/2*W/2, Cout]."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x.transpose(1, 2).reshape(x.shape[0], -1, *hw))
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class PVTBlock(nn.Module):
    """(downsample) -> x + SRA(LN(x)) -> x + MLP(LN(x)); LNs eps 1e-5 as in the official blocks."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, stage: int, drop_path: float = 0.0,
                 downsample_from: int | None = None):
        super().__init__()
        self.stage = stage
        self.downsample = PatchMerge(downsample_from, dim) if downsample_from else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SRAttention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int], sr_ratio: int) -> tuple[torch.Tensor, tuple[int, int]]:
        if self.downsample is not None:
            x, hw = self.downsample(x, hw)
        x = x + self.drop_path(self.attn(self.norm1(x), hw, sr_ratio))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, hw


class CellEmbed(nn.Module):
    """Non-overlapping conv (kernel = stride = cell) without norm; [N, C, H, W] -> [N, C1, H/cell, W/cell]."""

    def __init__(self, cell_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=cell_size, stride=cell_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PyramidVisionTransformer(GradCheckpointing, nn.Module):
    """UM-MAE's PVT for uniform-masking pretraining (``masked_tokens="compact"``), SimMIM (``"token"``) and
    classification (no ``ids_keep``).

    ``patch_size`` is the masking unit (16 px), ``cell_size`` the stem's (4 px); ``grid_size`` and
    ``num_patches`` count 16-px patches. ``sr_ratios`` None picks the official ratios per grid: (4, 2, 1, 1)
    on the compact grid, (8, 4, 2, 1) on the full grid; given, they are used on both. ``vis_mask_token``
    (UM-MAE secondary masking) and, under ``"token"``, ``mask_token`` are created only when used, so a
    classifier holds no idle parameter. Pretraining keeps the sin-cos position table frozen; fine-tuning
    makes it learnable (``learnable_pos_embed``; initialized with the same table, which the checkpoint then
    overwrites) and, under global pooling, drops the final norm (``final_norm``). Stage 1 of
    ``set_grad_checkpointing("stage1")`` is the blocks of the first stage (at 4-px cells).
    """

    num_prefix_tokens = 0
    # a classifier runs "compact" without ids_keep: the full grid, no mask parameters
    encoder_args = EncoderArgs(masked_tokens=(MaskedTokens.COMPACT, MaskedTokens.TOKEN),
                               secondary=(MaskedTokens.COMPACT,))

    def __init__(self, img_size: int | tuple[int, int] = 256, patch_size: int = 16, cell_size: int = 4,
                 in_chans: int = 3, embed_dims: Sequence[int] = (64, 128, 320, 512),
                 depths: Sequence[int] = (3, 4, 6, 3), num_heads: Sequence[int] = (1, 2, 5, 8),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4),
                 sr_ratios: Sequence[int] | None = None, drop_path_rate: float = 0.0,
                 learnable_pos_embed: bool = False, final_norm: bool = True, masked_tokens: str = "compact",
                 vis_mask_token: bool = False, norm_eps: float = 1e-6):
        super().__init__()
        masked_tokens = self.encoder_args.check("PyramidVisionTransformer", masked_tokens, vis_mask_token,
                                                learnable_pos_embed)
        stages = len(embed_dims)
        check_positive_ints(patch_size=patch_size, cell_size=cell_size, embed_dims=embed_dims)
        check_per_stage(embed_dims=embed_dims, depths=depths, num_heads=num_heads, mlp_ratios=mlp_ratios,
                        **({} if sr_ratios is None else {"sr_ratios": sr_ratios}))
        check_stages(depths, num_heads, {f"embed_dims[{s}]={w}": w for s, w in enumerate(embed_dims)},
                     mlp_ratios=mlp_ratios)
        check_sincos_width("embed_dims[0]", embed_dims[0])
        if patch_size % cell_size:
            raise ValueError(f"patch_size {patch_size} is not a multiple of cell_size {cell_size}")
        img_size = to_2tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        if masked_tokens == "token":  # SimMIM's head upsamples the last stage to the patch grid: no row lost
            check_pyramid_size(img_size, patch_size, cell_size, stages, compact=False)
        self.masked_tokens = masked_tokens
        self.img_size, self.patch_size, self.cell_size = img_size, patch_size, cell_size
        self.cells_per_patch = patch_size // cell_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.cell_grid = (img_size[0] // cell_size, img_size[1] // cell_size)
        self.embed_dims = tuple(embed_dims)
        self.embed_dim = self.embed_dims[-1]
        self.learnable_pos_embed = learnable_pos_embed
        self.compact_sr_ratios = tuple(sr_ratios or COMPACT_SR_RATIOS)
        self.full_sr_ratios = tuple(sr_ratios or FULL_SR_RATIOS)

        c1 = self.embed_dims[0]
        self.patch_embed = CellEmbed(cell_size, in_chans, c1)
        # a Parameter (not a buffer) so the key and the frozen flag match the official checkpoints
        self.pos_embed = nn.Parameter(torch.zeros(1, self.cell_grid[0] * self.cell_grid[1], c1),
                                      requires_grad=learnable_pos_embed)
        if vis_mask_token:
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, c1))
        if masked_tokens == "token":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, c1))

        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear over all blocks
        self.blocks = nn.ModuleList()
        for stage, depth in enumerate(depths):
            for j in range(depth):
                merge_from = self.embed_dims[stage - 1] if stage > 0 and j == 0 else None
                self.blocks.append(PVTBlock(self.embed_dims[stage], num_heads[stage], mlp_ratios[stage], stage,
                                            dpr[len(self.blocks)], merge_from))
        self.depth = len(self.blocks)
        # forward_features levels: the output of each stage (its last block)
        self.stage_ends = [sum(depths[:i + 1]) for i in range(stages)]
        self.feature_info = [FeatureInfo(dim, cell_size * 2 ** i) for i, dim in enumerate(self.embed_dims)]
        self.norm = nn.LayerNorm(self.embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.pos_embed.data.copy_(sincos_2d(self.embed_dims[0], self.cell_grid).unsqueeze(0))
        for token in ("mask_token", "vis_mask_token"):
            if hasattr(self, token):
                init_token(getattr(self, token))
        self.apply(init_linear_and_norm)
        self.apply(init_conv_fan_out)
        init_conv_as_linear(self.patch_embed.proj)

    def layer_groups(self) -> tuple[str, str]:
        """Regexes over this encoder's parameter names: the stem (layer id 0) and the numbered blocks."""
        return r"^(?:patch_embed|pos_embed|vis_mask_token|mask_token)", r"^blocks\.(\d+)"

    def _cells_by_patch(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, h*k * w*k, C] in raster order of the cells -> [N, h*w, k*k*C], one row per 16-px patch."""
        (h, w), k, c = self.grid_size, self.cells_per_patch, x.shape[-1]
        return x.reshape(x.shape[0], h, k, w, k, c).transpose(2, 3).reshape(x.shape[0], h * w, k * k * c)

    def compact(self, x: torch.Tensor, ids_keep: torch.Tensor, secondary: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The official dilated all-ones conv, as a gather: x [N, cells, C1] (full cell grid, raster) ->
        [N, h/2*k * w/2*k, C1], each 2x2 group's visible k x k cells in the group's place (ids_keep from
        :func:`models.masking.compact_order`); patches in ``secondary`` [N, L] become ``vis_mask_token``; then the position
        embedding of the same cells is added."""
        (h, w), k, c = self.grid_size, self.cells_per_patch, x.shape[-1]
        n, groups = ids_keep.shape
        if groups * 4 != self.num_patches or h % 2 or w % 2:
            raise ValueError(f"compact masking needs one visible patch per 2x2 group of the {h}x{w} grid "
                             f"({self.num_patches // 4} per sample), got {groups}")
        merges = 2 ** (len(self.embed_dims) - 1)
        if (h // 2 * k) % merges or (w // 2 * k) % merges:
            raise ValueError(f"the compact grid of {h // 2 * k}x{w // 2 * k} cells does not halve "
                             f"{len(self.embed_dims) - 1} times evenly: use an image side divisible by "
                             f"{2 * self.patch_size * merges // k}")
        index = ids_keep.unsqueeze(-1).expand(-1, -1, k * k * c)
        x = torch.gather(self._cells_by_patch(x), 1, index)
        if secondary is not None:
            hidden = torch.gather(secondary, 1, ids_keep).unsqueeze(-1)
            x = torch.where(hidden, self.vis_mask_token.to(x.dtype).repeat(1, 1, k * k), x)
        pos = torch.gather(self._cells_by_patch(self.pos_embed.to(x.dtype)).expand(n, -1, -1), 1, index)
        x = (x + pos).reshape(n, h // 2, w // 2, k, k, c).transpose(2, 3)
        return x.reshape(n, -1, c), (h // 2 * k, w // 2 * k)

    def embed(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None,
              secondary: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int], Sequence[int]]:
        """The tokens the blocks run on [N, h * w, C1] (positions added), their map size (h, w) and the
        spatial-reduction ratios for that map: the compact grid, or the full grid (mask tokens under
        ``"token"``). Without a mask the image may be of another size than the built one: the position table is
        resized bicubically to its cell grid, as UM-MAE's detection backbone does for every input."""
        masked = ids_keep is not None or secondary is not None
        if masked and tuple(imgs.shape[-2:]) != self.img_size:
            raise ValueError(f"expected {self.img_size} images, got {tuple(imgs.shape[-2:])}")
        x = self.patch_embed(imgs)
        cells = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # [N, cells, C1]
        if ids_keep is not None and self.masked_tokens == "compact":
            x, hw = self.compact(x, compact_order(ids_keep, self.grid_size), secondary)
            return x, hw, self.compact_sr_ratios
        if secondary is not None:
            raise ValueError("secondary masking needs masked_tokens='compact' and ids_keep")
        if ids_keep is not None:  # "token": masked patches' cells become mask_token
            visible = patch_visibility(ids_keep, self.grid_size, self.cells_per_patch).flatten(1).unsqueeze(-1)
            x = torch.where(visible, x, self.mask_token.to(x.dtype))
        pos_embed = resize_pos_embed(self.pos_embed, cells, 0, self.cell_grid)
        return x + pos_embed.to(x.dtype), cells, self.full_sr_ratios

    def _run(self, state: tuple[torch.Tensor, tuple[int, int], Sequence[int]], count: int,
             taps: Sequence[int], read) -> dict:
        """The first ``count`` blocks on ``embed``'s state; ``read(x, hw)`` of the outputs of blocks ``taps``."""
        x, hw, sr_ratios = state

        def step(block: PVTBlock, xs: tuple[torch.Tensor, tuple[int, int]]) -> tuple[torch.Tensor, tuple[int, int]]:
            return block(*xs, sr_ratios[block.stage])

        return run_blocks(self.blocks[:count], (x, hw), taps, step=step, read=lambda xs: read(*xs),
                          checkpointed=self.checkpointed_blocks(self.stage_ends[0], count))

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None,
                return_layers: Sequence[int] = (), secondary: torch.Tensor | None = None,
                views: int = 1) -> EncoderOutput:
        """imgs: [N, C, H, W]; ids_keep: [N, K] visible 16-px patches (None: the full grid); secondary:
        [N, L] bool, visible patches whose content becomes ``vis_mask_token`` (``"compact"`` only);
        ``views`` > 1: imgs holds each image once for its views (``Encoder.forward``), repeated here.

        patches: [N, S, C4] final-normed last-stage tokens in raster order of the map the encoder ran on
        (``grid``): S = L/16 on the compact grid (the groups of ids_keep in raster order of the groups,
        whatever the order of ids_keep), L/4 on the full grid. layers: {block from 1: un-normed output}.
        """
        imgs = repeat_views(imgs, views)
        def as_output(x: torch.Tensor, hw: tuple[int, int]) -> EncoderOutput:
            return EncoderOutput(prefix=x[:, :0], patches=x, grid=tuple(hw))

        (x, hw), layers = self._run(self.embed(imgs, ids_keep, secondary), self.depth, return_layers, as_output)
        out = as_output(self.norm(x), hw)
        out.layers = layers
        return out

    def forward_features(self, imgs: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Un-normed outputs of the stages ``indices`` (from 0; default all) on the full grid: stage i is
        [N, C_i, H / (4 * 2^i), W / (4 * 2^i)] (strides 4, 8, 16, 32 for 4-px cells)."""
        taps = [self.stage_ends[i] for i in feature_indices(indices, len(self.stage_ends))]
        _, layers = self._run(self.embed(imgs), taps[-1], taps, tokens_to_map)
        return [layers[t] for t in taps]


# the tiny configuration of this family (``models.tiny_kwargs``: tests, benchmarks' and the docs' checks)
TINY = dict(img_size=64, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
            mlp_ratios=(2, 2, 2, 2))


def pvt_small(**kwargs) -> PyramidVisionTransformer:
    """PVT-S as UM-MAE (``mae_pvt_small_256``, ``pvt_small_256``): 16 blocks, C4 = 512."""
    return PyramidVisionTransformer(**{"embed_dims": (64, 128, 320, 512), "depths": (3, 4, 6, 3),
                                       "num_heads": (1, 2, 5, 8), "mlp_ratios": (8, 8, 4, 4), **kwargs})
