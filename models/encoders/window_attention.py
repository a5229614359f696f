"""Swin's window attention with UM-MAE's posMLP bias (docs/methods.md §4.4), the lattice of coordinate
differences that lets the MLP run once per offset instead of once per pair of tokens, and the window partition."""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, ws * ws, C], windows in raster order per sample."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def unwindows(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, ws * ws, C] -> [B, H, W, C]."""
    c = x.shape[-1]
    x = x.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class OffsetLattice(NamedTuple):
    """The coordinate differences (dh, dw) a stage can produce: ``step`` times integers of magnitude at most
    ``radius`` = (rh, rw), the rows of a (2 rh + 1) x (2 rw + 1) table in raster order."""

    step: float
    radius: tuple[int, int]

    def offsets(self, device: torch.device) -> torch.Tensor:
        """[2, 2 rh + 1, 2 rw + 1]: every (dh, dw) of the lattice."""
        rh, rw = self.radius
        grid = torch.meshgrid(torch.arange(-rh, rh + 1, device=device), torch.arange(-rw, rw + 1, device=device),
                              indexing="ij")
        return torch.stack(grid).float() * self.step

    def index(self, delta: torch.Tensor) -> torch.Tensor:
        """delta [..., 2] differences on the lattice -> [...] int32 table rows (exact: delta / step are whole
        numbers, computed exactly in float for a power-of-two step)."""
        rh, rw = self.radius
        steps = delta / self.step
        return ((steps[..., 0] + rh) * (2 * rw + 1) + steps[..., 1] + rw).to(torch.int32)

    def pair_index(self, pos_windows: torch.Tensor) -> torch.Tensor:
        """pos_windows [B, M, 2] -> [B, M(query i), M(key j)] int32 table rows of the differences p_j - p_i."""
        return self.index(pos_windows.unsqueeze(1) - pos_windows.unsqueeze(2))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with the posMLP bias: Conv1x1(2 -> posmlp_dim) -> ReLU ->
    Conv1x1(-> heads) of sign(d) log(1 + |d|), d = (key - query) true (h, w) coordinates.

    The MLP runs once per step on every offset the stage can produce (its :class:`OffsetLattice`: 127² at
    the first stage of a 256-px image, 63², 31², 31² after) and the pairs of the windows look their bias up,
    rather than running it on every pair of every window of every sample (65,536 per image at UM-MAE's
    first stage; 1,048,576 per step on SimMIM's full grid): the same bias within float rounding, a fraction
    of the work and of the activations kept for backward."""

    def __init__(self, dim: int, num_heads: int, posmlp_dim: int = 32, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.posmlp = nn.Sequential(nn.Conv2d(2, posmlp_dim, 1), nn.ReLU(inplace=True),
                                    nn.Conv2d(posmlp_dim, num_heads, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self, pos_windows: torch.Tensor, lattice: OffsetLattice,
                      index: torch.Tensor | None = None) -> torch.Tensor:
        """pos_windows: [B' * nW, M, 2] whose differences lie on ``lattice`` -> bias [B' * nW, heads, M(query),
        M(key)]. ``index``: their ``lattice.pair_index`` when known beforehand (the full grid's, a buffer)."""
        d = lattice.offsets(pos_windows.device)
        table = self.posmlp((torch.sign(d) * torch.log(1.0 + d.abs())).unsqueeze(0)).flatten(2)[0].t()  # [T, heads]
        if index is None:
            index = lattice.pair_index(pos_windows)
        return F.embedding(index, table).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, pos_windows: torch.Tensor, batch: int, lattice: OffsetLattice,
                mask: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B * nW, M, C]; pos_windows: [B' * nW, M, 2] with B' in {1, B}, differences on ``lattice``;
        mask: [nW, M, M] additive; index: ``lattice.pair_index(pos_windows)`` if precomputed."""
        bnw, m, c = x.shape
        nw, h = bnw // batch, self.num_heads
        qkv = self.qkv(x).reshape(batch, nw, m, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)
        q, k, v = (t.reshape(batch, nw * h, m, c // h) for t in qkv.unbind(0))
        bias = self.position_bias(pos_windows, lattice, index=index).reshape(-1, nw, h, m, m)
        if mask is not None:
            bias = bias + mask.unsqueeze(1).to(bias.dtype)
        # windows x heads folded into one axis so a bias shared by the batch broadcasts without a copy
        bias = bias.reshape(-1, nw * h, m, m).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.reshape(batch, nw, h, m, c // h).permute(0, 1, 3, 2, 4).reshape(bnw, m, c)
        return self.proj(out)
