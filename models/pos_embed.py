"""Fixed 2-D sin-cos position embeddings and their resizing to a new patch grid.

Layout (official MAE, docs/methods.md §1.3): the first D/2 channels encode the column index, the last D/2
the row; each half is [sin(pos * w_k) for all k, cos(pos * w_k) for all k] with w_k = 1 / 10000^(k / (D/4)).
The table is computed in float64 and cast to float32, like the official NumPy code.
"""
import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos: [M] -> [M, embed_dim] = [sin(pos * w), cos(pos * w)] (not interleaved)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """Return [(1 if cls_token) + h*w, embed_dim] float32; the cls row (first) is zeros."""
    h, w = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {embed_dim}")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, cols.flatten()), sincos_1d(embed_dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resize_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], num_extra_tokens: int,
                     old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Bicubically resize the patch part of pos_embed [1, E + h*w, D] to new_grid; extra tokens kept.

    The old grid is ``old_grid`` (h, w), or else square (as every official checkpoint's is); align_corners=False
    as in MAE. Differentiable: a dense encoder resizes its learnable table to each input's grid in forward.
    """
    extra, patch = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    if old_grid is None:
        side = int(round(patch.shape[1] ** 0.5))
        if side * side != patch.shape[1]:
            raise ValueError(f"cannot resize a position embedding of {patch.shape[1]} non-square patches")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = patch.shape[-1]
    patch = patch.reshape(1, *old_grid, dim).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([extra, patch], dim=1)
