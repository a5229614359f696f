"""UM-MAE's Swin Transformer (docs/methods.md §4.3-4.4): one encoder for UM-MAE pretraining on the compact grid,
the SimMIM baseline (mask token on the full grid) and fine-tuning (full grid, no masking).

Differences from the original Swin: the relative-position bias table is a small MLP (``posmlp``) of the
log-spaced differences of the tokens' *true* coordinates, so it stays correct on the compacted grid where
neighbours are not evenly spaced and does not depend on the window size (``window_attention.py``: the MLP
runs once per step on the offsets a stage can produce, looked up per pair); patch merging is LN + a 2x2
stride-2 conv; every block sits in one flat ``blocks`` list and the first block of stages 2.. owns the
``downsample``. There is no absolute position embedding.

LayerNorm eps (verified on the golden cases): 1e-6 for ``patch_embed.norm``, ``downsample.norm`` and the
final ``norm``, but 1e-5 for the blocks' ``norm1``/``norm2``: the official models build their blocks without
passing their ``norm_layer``, so those keep ``nn.LayerNorm``'s default.
Stages that are not a multiple of the window (e.g. 56 cells at 224 px, window 16) are padded at the
bottom/right with the padded keys masked out (the official code supports only exact multiples).

Grids: the image is cut into ``patch_size`` cells (4 px) by ``patch_embed``; masks live on the
``stride`` token grid (16 px, ``grid_size``), each token covering K x K cells (K = stride / patch_size).
State-dict keys are the official ones (``patch_embed.{proj,norm}``, ``blocks.{i}.{norm1,attn.{qkv,proj,
posmlp.{0,2}},norm2,mlp.{fc1,fc2},downsample.{norm,proj}}``, ``norm``, ``vis_mask_token`` / ``mask_token``).
"""
import math
from functools import partial
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from ..init import init_conv_as_linear, init_conv_fan_out, init_linear_and_norm, init_token
from ..interfaces import EncoderArgs, EncoderOutput, FeatureInfo, MaskedTokens, repeat_views
from ..masking import compact_order
from ..options import check_positive_ints, check_pyramid_size, check_stages
from .common import GradCheckpointing, feature_indices, patch_visibility, run_blocks
from .window_attention import OffsetLattice, WindowAttention, unwindows, windows

_MASK_VALUE = -100.0  # the official additive mask of the shifted windows (not -inf)


class PatchEmbed(nn.Module):
    """Conv p x p stride p, then LN over channels: [N, 3, H, W] -> [N, H/p, W/p, C]."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm_layer):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerge(nn.Module):
    """LN, then a 2x2 stride-2 conv; coordinates are subsampled [::2, ::2] and halved (docs/methods.md §4.4)."""

    def __init__(self, in_dim: int, out_dim: int, norm_layer):
        super().__init__()
        self.norm = norm_layer(in_dim)
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, pos_hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, H, W, C]; pos_hw: [B or 1, H, W, 2] -> [B, H/2, W/2, C'], [., H/2, W/2, 2]."""
        x = self.proj(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x, self.merge_positions(pos_hw)

    @staticmethod
    def merge_positions(pos_hw: torch.Tensor) -> torch.Tensor:
        """[., H, W, 2] coordinates -> [., H/2, W/2, 2] those of the merged cells (in units of the new stage)."""
        return pos_hw[:, 0::2, 0::2] / 2.0


class SwinBlock(nn.Module):
    """(Optional downsample), then pre-norm (shifted-)window attention and MLP with residuals.

    ``window_size`` and ``shift_size`` are the nominal ones; at run time a stage no larger than the window
    gets one global window and no shift (as officially), and other stages are padded at the bottom/right to
    a multiple of the window (padded keys are masked out).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 posmlp_dim: int, drop_path: float, norm_layer, stage: int, downsample: nn.Module | None = None):
        super().__init__()
        self.window_size, self.shift_size, self.stage = window_size, shift_size, stage
        self.downsample = downsample
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, num_heads, posmlp_dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def window_and_shift(self, h: int, w: int) -> tuple[int, int]:
        """The window and shift used on an h x w stage."""
        if min(h, w) <= self.window_size:
            return min(h, w), 0
        return self.window_size, self.shift_size

    def attention_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        """[nW, M, M] additive mask of an h x w stage: -100 between tokens of different regions of a shifted
        window, and on keys that are padding; None when neither occurs. Precomputed (:meth:`precompute_mask`)
        for the stage sizes the model is built for, so a step neither rebuilds it nor, under torch.compile,
        guards on a cache."""
        mask = getattr(self, f"attn_mask_{h}x{w}", None)
        return mask if mask is not None else self._build_mask(h, w, device)

    def precompute_mask(self, h: int, w: int) -> None:
        """Keep the mask of an h x w stage as a (non-saved) buffer."""
        mask = self._build_mask(h, w, torch.device("cpu"))
        if mask is not None:
            self.register_buffer(f"attn_mask_{h}x{w}", mask, persistent=False)

    def _build_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor | None:
        ws, shift = self.window_and_shift(h, w)
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        if not shift and (hp, wp) == (h, w):
            return None
        region = torch.zeros(hp, wp, device=device)
        if shift:  # the official labelling of the rolled map: 3 bands per axis
            bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
            for i, hs in enumerate(bands):
                for j, wsl in enumerate(bands):
                    region[hs, wsl] = 3 * i + j
        pad = torch.ones(hp, wp, device=device)
        pad[:h, :w] = 0
        pad = torch.roll(pad, shifts=(-shift, -shift), dims=(0, 1))
        region = windows(region[None, :, :, None], ws).squeeze(-1)  # [nW, M]
        pad = windows(pad[None, :, :, None], ws).squeeze(-1)
        blocked = (region.unsqueeze(1) != region.unsqueeze(2)) | (pad.unsqueeze(1) > 0)
        return torch.zeros(blocked.shape, device=device).masked_fill(blocked, _MASK_VALUE)

    def window_positions(self, pos_hw: torch.Tensor) -> torch.Tensor:
        """pos_hw [B', H, W, 2] (this block's stage) -> [B' * nW, M, 2], padded, rolled and windowed as x is."""
        h, w = pos_hw.shape[1:3]
        ws, shift = self.window_and_shift(h, w)
        pad_h, pad_w = -h % ws, -w % ws
        if pad_h or pad_w:
            pos_hw = F.pad(pos_hw, (0, 0, 0, pad_w, 0, pad_h))
        if shift:
            pos_hw = torch.roll(pos_hw, shifts=(-shift, -shift), dims=(1, 2))
        return windows(pos_hw, ws)

    def precompute_index(self, pos_hw: torch.Tensor, lattice: OffsetLattice) -> None:
        """Keep the posMLP table rows of every window pair on the full grid of coordinates ``pos_hw`` [1, H, W, 2]
        (shared by every image) as a (non-saved) buffer: a step then neither rebuilds them nor keeps a copy for
        backward (the embedding lookup's saved indices are this buffer)."""
        h, w = pos_hw.shape[1:3]
        self.register_buffer(f"attn_index_{h}x{w}", lattice.pair_index(self.window_positions(pos_hw)),
                             persistent=False)

    def forward(self, x: torch.Tensor, pos_hw: torch.Tensor, lattice: OffsetLattice, full_grid: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, H, W, C]; pos_hw: [B or 1, H, W, 2] true (h, w) cell coordinates (after the downsample: of
        this block's stage), whose differences lie on ``lattice``; ``full_grid``: pos_hw is the encoder's full
        grid, whose table rows :meth:`precompute_index` may hold."""
        if self.downsample is not None:
            x, pos_hw = self.downsample(x, pos_hw)
        b, h, w, c = x.shape
        ws, shift = self.window_and_shift(h, w)
        shortcut = x
        x = self.norm1(x)
        pad_h, pad_w = -h % ws, -w % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        hp, wp = h + pad_h, w + pad_w
        mask = self.attention_mask(h, w, x.device)
        index = getattr(self, f"attn_index_{h}x{w}", None) if full_grid else None
        x = self.attn(windows(x, ws), self.window_positions(pos_hw), b, lattice, mask, index)
        x = unwindows(x, ws, hp, wp)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = x[:, :h, :w]
        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, pos_hw


class SwinMIM(GradCheckpointing, nn.Module):
    """UM-MAE's Swin with the three ways of treating a mask (``masked_tokens``):

    - ``"compact"`` (UM-MAE pretraining): the one visible 16-px patch of each 2x2 group is gathered into a
      dense grid of half the side (32x32 cells at 256 px) that keeps the groups' arrangement, with the true
      coordinates of its cells; ``secondary`` patches get ``patch_embed.norm(vis_mask_token)`` in place of
      their embedding (but keep their coordinates). Tokens: the final stage of the compact grid,
      (H/64) x (W/64) in raster order.
    - ``"token"`` (SimMIM): the full cell grid, the raw learned ``mask_token`` in place of the (normed)
      embedding of every cell of a masked patch. Tokens: the final stage, (H/32) x (W/32).
    - ``"none"`` (fine-tuning): no masking parameters; ``ids_keep`` must be None.

    With ``ids_keep=None`` every mode runs on the full grid without masking. The window is 8 for UM-MAE
    pretraining and 16 for SimMIM and fine-tuning (docs/methods.md §4.4, §4.7). Stage 1 of
    ``set_grad_checkpointing("stage1")`` is the blocks of the first stage (at 4-px cells).
    """

    num_prefix_tokens = 0
    # no absolute position table: positions enter through the posMLP of the tokens' offsets
    encoder_args = EncoderArgs(masked_tokens=(MaskedTokens.COMPACT, MaskedTokens.TOKEN, MaskedTokens.NONE),
                               secondary=(MaskedTokens.COMPACT,), learnable_pos_embed=(False,))

    def __init__(self, img_size: int | tuple[int, int] = 256, patch_size: int = 4, stride: int = 16,
                 in_chans: int = 3, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), mlp_ratio: float = 4.0, window_size: int = 8,
                 posmlp_dim: int = 32, drop_path_rate: float = 0.0, masked_tokens: str = "compact",
                 vis_mask_token: bool = False, final_norm: bool = True, learnable_pos_embed: bool = False):
        super().__init__()
        masked_tokens = self.encoder_args.check("SwinMIM", masked_tokens, vis_mask_token, learnable_pos_embed)
        check_positive_ints(patch_size=patch_size, stride=stride, embed_dim=embed_dim, window_size=window_size,
                            posmlp_dim=posmlp_dim)
        check_stages(depths, num_heads, {f"embed_dim={embed_dim} x {2 ** s}": embed_dim * 2 ** s
                                         for s in range(len(depths))}, mlp_ratio=mlp_ratio)
        if stride % patch_size:
            raise ValueError(f"stride {stride} must be a multiple of patch_size {patch_size}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        check_pyramid_size(img_size, stride, patch_size, len(depths), compact=masked_tokens == "compact")
        self.masked_tokens = masked_tokens
        self.img_size, self.cell_size, self.patch_size = img_size, patch_size, stride
        self.cells_per_patch = stride // patch_size
        self.grid_size = (img_size[0] // stride, img_size[1] // stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_stages = len(depths)
        self.embed_dim = embed_dim * 2 ** (self.num_stages - 1)
        self.depth = sum(depths)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm_layer)
        dpr = torch.linspace(0, drop_path_rate, self.depth).tolist()
        self.blocks = nn.ModuleList()
        for stage, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** stage
            for j in range(depth):
                down = PatchMerge(dim // 2, dim, norm_layer) if stage > 0 and j == 0 else None
                # officially the blocks are built without the model's norm_layer: their LNs keep eps 1e-5
                self.blocks.append(SwinBlock(dim, heads, window_size, window_size // 2 if j % 2 else 0, mlp_ratio,
                                             posmlp_dim, dpr[len(self.blocks)], nn.LayerNorm, stage, down))
        for compact in ((False, True) if masked_tokens == "compact" else (False,)):
            h, w = (side // patch_size // (2 if compact else 1) for side in img_size)
            for block in self.blocks:
                if block.downsample is not None:
                    h, w = h // 2, w // 2
                block.precompute_mask(h, w)
        cells = (img_size[0] // patch_size, img_size[1] // patch_size)
        pos, lattices = self._cell_coords(*cells, torch.device("cpu")), self.offset_lattices(cells)
        for block in self.blocks:
            if block.downsample is not None:
                pos = PatchMerge.merge_positions(pos)
            block.precompute_index(pos, lattices[block.stage])
        # forward_features levels: the output of each stage (its last block)
        self.stage_ends = [sum(depths[:i + 1]) for i in range(self.num_stages)]
        self.feature_info = [FeatureInfo(embed_dim * 2 ** i, patch_size * 2 ** i) for i in range(self.num_stages)]
        self.norm = norm_layer(self.embed_dim) if final_norm else nn.Identity()
        if vis_mask_token:  # only under "compact" (encoder_args)
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if masked_tokens == "token":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear xavier / LN 1-0, convs normal(0, sqrt(2 / fan_out)), then the patch conv xavier as a
        matrix (pretraining; the official fine-tune model keeps the conv init), tokens normal(0.02)."""
        self.apply(init_linear_and_norm)
        self.apply(init_conv_fan_out)
        if self.masked_tokens != "none":
            init_conv_as_linear(self.patch_embed.proj)
        for name in ("vis_mask_token", "mask_token"):
            if hasattr(self, name):
                init_token(getattr(self, name))

    def layer_groups(self) -> tuple[str, str]:
        """Regexes over this encoder's parameter names: the stem (layer id 0) and the flat blocks."""
        return r"^(?:patch_embed|vis_mask_token|mask_token)", r"^blocks\.(\d+)"

    def offset_lattices(self, cells: tuple[int, int]) -> list[OffsetLattice]:
        """Per stage, the lattice of the coordinate differences on an image of ``cells`` (h, w) cells. Stage s
        keeps every 2^s-th cell of the grid it runs on, halving coordinates at each merge: c / 2^s for a cell
        coordinate c. On the full grid c is a multiple of 2^s; on the compact grid, whose runs of k cells (a
        patch) start at multiples of k, a multiple of gcd(2^s, k). Padding sits at 0, so every difference is
        a multiple of gcd(2^s, k) / 2^s, at most (cells - 1) / 2^s."""
        lattices = []
        for stage in range(self.num_stages):
            unit = math.gcd(2 ** stage, self.cells_per_patch)
            lattices.append(OffsetLattice(unit / 2 ** stage, ((cells[0] - 1) // unit, (cells[1] - 1) // unit)))
        return lattices

    def _run(self, imgs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], count: int, taps: Sequence[int],
             read, full_grid: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], dict]:
        """The first ``count`` blocks on ``embed``'s state (x, pos) of ``imgs``; ``read(state)`` after the
        blocks ``taps``. ``full_grid``: pos is the full grid of cells (not UM-MAE's compact grid)."""
        lattices = self.offset_lattices((imgs.shape[-2] // self.cell_size, imgs.shape[-1] // self.cell_size))
        return run_blocks(self.blocks[:count], state, taps, read=read,
                          step=lambda block, xs: block(*xs, lattices[block.stage], full_grid),
                          checkpointed=self.checkpointed_blocks(self.stage_ends[0], count))

    def _cell_coords(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """[1, h, w, 2] float (row, col) cell coordinates."""
        rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        return torch.stack([rows, cols], dim=-1).float().unsqueeze(0)

    def _compact(self, imgs: torch.Tensor, ids_keep: torch.Tensor,
                 secondary: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the visible patches laid out as the compact grid -> x [N, Hc, Wc, C], pos [N, Hc, Wc, 2]."""
        n, c = imgs.shape[:2]
        gh, gw = imgs.shape[2] // self.patch_size, imgs.shape[3] // self.patch_size
        merges = 2 ** (self.num_stages - 1)
        if (gh // 2 * self.cells_per_patch) % merges or (gw // 2 * self.cells_per_patch) % merges or gh % 2 or gw % 2:
            raise ValueError(f"UM-MAE's compact grid ({self.num_stages} stages on half the token grid) does not fit "
                             f"an image of {tuple(imgs.shape[2:])}: use a multiple of 64 px")
        ids = compact_order(ids_keep, (gh, gw))  # [N, G]
        s, k = self.patch_size, self.cells_per_patch
        # gather the visible 16-px patches' pixels: a conv of stride 4 inside each patch gives the same cells
        patches = imgs.reshape(n, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * s * s)
        patches = torch.gather(patches, 1, ids.unsqueeze(-1).expand(-1, -1, c * s * s))
        compact = patches.reshape(n, gh // 2, gw // 2, c, s, s).permute(0, 3, 1, 4, 2, 5)
        x = self.patch_embed(compact.reshape(n, c, gh // 2 * s, gw // 2 * s))  # [N, Hc, Wc, C]
        hc, wc = x.shape[1:3]
        if secondary is not None:
            if not hasattr(self, "vis_mask_token"):
                raise ValueError("secondary masking needs vis_mask_token=True")
            sec = torch.gather(secondary.bool(), 1, ids).reshape(n, gh // 2, 1, gw // 2, 1)
            sec = sec.expand(-1, -1, k, -1, k).reshape(n, hc, wc, 1)
            x = torch.where(sec, self.patch_embed.norm(self.vis_mask_token).to(x.dtype), x)
        # true cell coordinates of the gathered cells
        rows = torch.div(ids, gw, rounding_mode="floor").reshape(n, gh // 2, 1, gw // 2, 1)
        cols = (ids % gw).reshape(n, gh // 2, 1, gw // 2, 1)
        offset = torch.arange(k, device=imgs.device)
        pos_h = (rows * k + offset.view(1, 1, k, 1, 1)).expand(-1, -1, -1, -1, k)
        pos_w = (cols * k + offset.view(1, 1, 1, 1, k)).expand(-1, -1, k, -1, -1)
        pos = torch.stack([pos_h.reshape(n, hc, wc), pos_w.reshape(n, hc, wc)], dim=-1).float()
        return x, pos

    def embed(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None,
              secondary: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The cell map the blocks run on, x [N, h, w, C], and its true cell coordinates pos [N or 1, h, w, 2]:
        the compact grid (``"compact"`` with ids_keep) or the full grid (mask tokens under ``"token"``)."""
        if ids_keep is not None and self.masked_tokens == "none":
            raise ValueError("this encoder was built without masking (masked_tokens='none')")
        if ids_keep is not None and self.masked_tokens == "compact":
            return self._compact(imgs, ids_keep, secondary)
        x = self.patch_embed(imgs)
        n, h, w, _ = x.shape
        if ids_keep is not None:  # "token": the mask token replaces every cell of a masked patch
            visible = patch_visibility(ids_keep, (h // self.cells_per_patch, w // self.cells_per_patch),
                                       self.cells_per_patch).unsqueeze(-1)
            x = torch.where(visible, x, self.mask_token.to(x.dtype))
        return x, self._cell_coords(h, w, x.device)

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None, return_layers: Sequence[int] = (),
                secondary: torch.Tensor | None = None, views: int = 1) -> EncoderOutput:
        """imgs: [N, C, H, W]; ids_keep: [N, K] visible patches of the 16-px token grid (any order; for
        ``"compact"`` exactly one per 2x2 group); secondary: [N, L] bool, visible patches to hide behind
        ``vis_mask_token`` (``"compact"`` only); ``views`` > 1: imgs holds each image once for its views
        (``Encoder.forward``), repeated here.

        patches: [N, h * w, embed_dim] the final stage in raster order (``grid`` = (h, w)); layers: the
        un-normed outputs of the requested blocks (counted from 1) as maps of their stage.
        """
        imgs = repeat_views(imgs, views)
        def as_output(state: tuple[torch.Tensor, torch.Tensor]) -> EncoderOutput:
            x = state[0]
            return EncoderOutput(prefix=x.new_zeros(x.shape[0], 0, x.shape[-1]), patches=x.flatten(1, 2),
                                 grid=tuple(x.shape[1:3]))

        full_grid = ids_keep is None or self.masked_tokens != "compact"
        (x, _), layers = self._run(imgs, self.embed(imgs, ids_keep, secondary), self.depth, return_layers,
                                   as_output, full_grid)
        out = as_output((self.norm(x), None))
        out.layers = layers
        return out

    def forward_features(self, imgs: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Un-normed outputs of the stages ``indices`` (from 0; default all) on the full grid: stage i is
        [N, C * 2^i, H / (4 * 2^i), W / (4 * 2^i)] (strides 4, 8, 16, 32 for 4-px cells)."""
        chosen = feature_indices(indices, self.num_stages)
        taps = [self.stage_ends[i] for i in chosen]
        _, layers = self._run(imgs, self.embed(imgs), taps[-1], taps, lambda state: state[0].permute(0, 3, 1, 2),
                              full_grid=True)
        return [layers[t] for t in taps]


# the tiny configuration of this family (``models.tiny_kwargs``: tests, benchmarks' and the docs' checks); at 128 px
# the first stage is larger than the window in every mode, so its windows are shifted
TINY = dict(img_size=128, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4)


def swin_tiny(**kwargs) -> SwinMIM:
    """Swin-T of UM-MAE: 96 -> 768, depths 2/2/6/2, heads 3/6/12/24, posMLP 32."""
    return SwinMIM(**{"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "posmlp_dim": 32,
                      **kwargs})


def swin_large(**kwargs) -> SwinMIM:
    """Swin-L of UM-MAE: 192 -> 1536, depths 2/2/18/2, heads 6/12/24/48, posMLP 64."""
    return SwinMIM(**{"embed_dim": 192, "depths": (2, 2, 18, 2), "num_heads": (6, 12, 24, 48), "posmlp_dim": 64,
                      **kwargs})
