"""DMJD's HOG target (METHODS.md §2.2), computed on the device from the normalized model input.

The official code feeds a second, uint8 copy of every image from the data loader to its HOG. The
normalized input already determines that copy exactly (:func:`denormalize_to_uint8`), so here the target
is rebuilt from the input on the device and the loader ships one tensor per image.

Pipeline of :class:`HogTarget`: 0..255 pixels -> per-channel gradients (central difference, no 1/2) ->
unsigned orientation, hard-assigned to ``nbins`` bins -> per-cell mean of magnitudes per bin
(:func:`hog_cell_histograms`) -> "instance whitening" (LayerNorm over the bins, no affine) -> one vector
per patch with the channel fastest. There is no block normalization and no max over channels.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from util.data import IMAGENET_MEAN, IMAGENET_STD


def _channel_stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A per-channel constant as a float32 ``[1, C, 1, 1]`` tensor on the device of ``like``."""
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).reshape(1, -1, 1, 1)


def denormalize_to_uint8(imgs: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Recover the 0..255 pixels an input was normalized from.

    imgs: ``[N, C, H, W]`` float, made as ``Normalize(mean, std)(ToTensor()(uint8 image))``.
    Returns ``[N, C, H, W]`` float32 holding the original integers 0..255 exactly.

    Exact because the float32 round trip errs by ~1e-5 of a grey level, far below the 0.5 that rounding
    forgives. This needs the input in float32: a bf16/fp16 copy has lost the information.
    """
    x = imgs.float()
    x = x * _channel_stats(std, x) + _channel_stats(mean, x)
    return (x * 255.0).round_().clamp_(0.0, 255.0)


def hog_cell_histograms(img: torch.Tensor, cell_size: int = 8, nbins: int = 9) -> torch.Tensor:
    """Per-channel HOG cell histograms, DMJD's variant (METHODS.md §2.2 steps 2-4).

    img: ``[N, C, H, W]``, any float range (DMJD: 0..255, no gamma); cast to float32.
    Returns ``[N, C, H // cell_size, W // cell_size, nbins]`` float32: for each cell and bin, the sum of
    the magnitudes of the cell's pixels whose orientation falls in the bin, divided by ``cell_size**2``.
    Pixels beyond the last whole cell are ignored.

    - gradients: ``g_row[i] = I[i+1] - I[i-1]``, ``g_col[j] = I[j+1] - I[j-1]``; 0 on the first and last
      row (column). No padding, no Sobel, no 1/2.
    - orientation: ``rad2deg(atan2(g_row, g_col)) mod 180`` (unsigned), bin ``floor(angle / (180/nbins))``,
      hard assignment (no interpolation between bins or cells).
    """
    n, c, h, w = img.shape
    hc, wc = h // cell_size, w // cell_size
    with torch.autocast(device_type=img.device.type, enabled=False):
        x = img.float()
        g_row = torch.zeros_like(x)
        g_col = torch.zeros_like(x)
        g_row[:, :, 1:-1, :] = x[:, :, 2:, :] - x[:, :, :-2, :]
        g_col[:, :, :, 1:-1] = x[:, :, :, 2:] - x[:, :, :, :-2]
        # Gradients come from the whole image (as in skimage); only whole cells are pooled.
        g_row = g_row[:, :, :hc * cell_size, :wc * cell_size]
        g_col = g_col[:, :, :hc * cell_size, :wc * cell_size]
        magnitude = torch.hypot(g_col, g_row)
        # Same float32 ops as the official code, so the bins agree with it pixel for pixel. For integer
        # pixels no angle lies within 6e-4 degrees of a bin edge (checked over all 511^2 gradient pairs),
        # so float32 vs float64 cannot change a bin. The clamp catches an angle just below 180 that
        # rounds to 180.0, which belongs to the last bin (the official code would drop that pixel).
        angle = torch.rad2deg(torch.atan2(g_row, g_col)) % 180
        bin_dtype = torch.uint8 if nbins <= 256 else torch.int64  # a quarter of the memory of float32
        bins = torch.div(angle, 180.0 / nbins, rounding_mode="floor").clamp_(0, nbins - 1).to(bin_dtype)
        del angle, g_row, g_col
        # One bin at a time: peak memory stays a few [N, C, H, W] maps instead of a 9x one-hot at 224 px.
        flat_mag = magnitude.reshape(n * c, 1, hc * cell_size, wc * cell_size)
        flat_bins = bins.reshape(n * c, 1, hc * cell_size, wc * cell_size)
        hist = torch.empty(n * c, nbins, hc, wc, dtype=torch.float32, device=img.device)
        for b in range(nbins):
            # avg_pool2d = sum over the cell / cell_size**2, the official "mean over the cell".
            hist[:, b:b + 1] = F.avg_pool2d(flat_mag * (flat_bins == b), cell_size)
    return hist.reshape(n, c, nbins, hc, wc).permute(0, 1, 3, 4, 2)


def whiten_histograms(hist: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """DMJD's "instance whitening": LayerNorm over the last (bins) dim, no affine.

    hist: ``[..., nbins]`` -> same shape; every histogram zero-mean with unit biased variance (an
    all-zero histogram stays zero). It replaces HOG's block normalization.
    """
    return F.layer_norm(hist, hist.shape[-1:], eps=eps)


def cells_to_patches(hist: torch.Tensor, cells_per_patch: int) -> torch.Tensor:
    """Group cell histograms by patch, the official ``b c (ph dh) (pw dw) d -> b (ph pw) (dh dw d c)``.

    hist: ``[N, C, ph*k, pw*k, nbins]`` with k = ``cells_per_patch`` -> ``[N, ph*pw, k*k*nbins*C]``,
    patches in raster order; inside a patch, cell (dh, dw), bin d, channel c sits at
    ``((dh*k + dw)*nbins + d)*C + c`` (channel fastest).
    """
    n, c, hc, wc, nbins = hist.shape
    k = cells_per_patch
    if hc % k or wc % k:
        raise ValueError(f"{hc}x{wc} cells do not group into patches of {k}x{k} cells")
    ph, pw = hc // k, wc // k
    # [N, C, ph, dh, pw, dw, d] -> [N, ph, pw, dh, dw, d, C]
    x = hist.reshape(n, c, ph, k, pw, k, nbins).permute(0, 2, 4, 3, 5, 6, 1)
    return x.reshape(n, ph * pw, k * k * nbins * c)


class HogTarget(nn.Module):
    """DMJD's HOG regression target per patch (METHODS.md §2.2), from the ImageNet-normalized input.

    ``forward(imgs [N, C, H, W]) -> [N, L, (patch/cell)^2 * nbins * C]`` float32, L = (H/p)(W/p) in
    raster order. Inside a patch of k x k cells (k = patch/cell) the index of cell (dh, dw), bin d,
    channel c is ``((dh*k + dw)*nbins + d)*C + c``: the official ``b c (ph dh) (pw dw) d ->
    b (ph pw) (dh dw d c)``. Unlike the official code (14x14 hard-coded) any H, W divisible by the patch
    size works. No parameters or buffers, so checkpoints are unaffected.
    """

    def __init__(self, patch_size: int = 16, cell_size: int = 8, nbins: int = 9, in_chans: int = 3,
                 *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if patch_size % cell_size:
            raise ValueError(f"patch size {patch_size} is not a multiple of the HOG cell size {cell_size}")
        if len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"mean/std need {in_chans} values (in_chans), got {len(mean)}/{len(std)}")
        self.patch_size = patch_size
        self.cell_size = cell_size
        self.nbins = nbins
        self.in_chans = in_chans
        self.mean = tuple(mean)
        self.std = tuple(std)

    def out_dim(self, in_chans: Optional[int] = None) -> int:
        """Length of one patch's target: (patch/cell)^2 * nbins * in_chans (108 at 16/8/9/3)."""
        in_chans = self.in_chans if in_chans is None else in_chans
        return (self.patch_size // self.cell_size) ** 2 * self.nbins * in_chans

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: ``[N, C, H, W]`` normalized float -> ``[N, L, out_dim]`` float32."""
        c, h, w = imgs.shape[1:]
        p = self.patch_size
        if c != self.in_chans:
            raise ValueError(f"HogTarget expects {self.in_chans} channels, got {c}")
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        # The official HOG runs outside autocast on float32 0..255 pixels; a bf16 target would be noise.
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            pixels = denormalize_to_uint8(imgs, self.mean, self.std)
            hist = whiten_histograms(hog_cell_histograms(pixels, self.cell_size, self.nbins))
            return cells_to_patches(hist, self.patch_size // self.cell_size)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, cell_size={self.cell_size}, nbins={self.nbins}, "
                f"in_chans={self.in_chans}")
