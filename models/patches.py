"""Patch layout shared by every target and visualization.

The layout is the official MAE one: an image ``[N, C, H, W]`` becomes ``[N, L, p*p*C]`` with patches in
raster order and, inside a patch, row, then column, then channel (channel fastest).
"""
import torch


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """imgs: [N, C, H, W] -> [N, L, p*p*C], L = (H/p) * (W/p)."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, grid_size: tuple[int, int] | None = None,
               channels: int = 3) -> torch.Tensor:
    """x: [N, L, p*p*C] -> [N, C, H, W]. ``grid_size`` (h, w) defaults to a square grid."""
    n, length, _ = x.shape
    p = patch_size
    if grid_size is None:
        side = int(round(length ** 0.5))
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid_size")
        grid_size = (side, side)
    h, w = grid_size
    x = x.reshape(n, h, w, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, h * p, w * p)
