"""DMJD's HOG target (docs/methods.md §2.2), computed on the device from the normalized model input.

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

from base.images import IMAGENET_MEAN, IMAGENET_STD


def _channel_stats(values: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-channel constant as a float32 ``[1, C, 1, 1]`` tensor on the device of ``like`` (no copy when
    it already is one there)."""
    return torch.as_tensor(values, dtype=torch.float32, device=like.device).reshape(1, -1, 1, 1)


def _check_images(target: nn.Module, imgs: torch.Tensor) -> None:
    """One-line errors for an input a HOG target cannot cut into its patches."""
    c, h, w = imgs.shape[1:]
    if c != target.in_chans:
        raise ValueError(f"{type(target).__name__} expects {target.in_chans} channels, got {c}")
    if h % target.patch_size or w % target.patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {target.patch_size}")


def _register_input_stats(target: nn.Module, mean: Sequence[float], std: Sequence[float], in_chans: int) -> None:
    """The input's normalization as non-saved [1, C, 1, 1] buffers ``mean``/``std``: on the model's device, so
    no host-to-device copy at every step."""
    if len(mean) != in_chans or len(std) != in_chans:
        raise ValueError(f"mean/std need {in_chans} values (in_chans), got {len(mean)}/{len(std)}")
    target.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    target.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)


def denormalize_to_uint8(imgs: torch.Tensor, mean: Sequence[float] | torch.Tensor = IMAGENET_MEAN,
                         std: Sequence[float] | torch.Tensor = IMAGENET_STD) -> torch.Tensor:
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
    """Per-channel HOG cell histograms, DMJD's variant (docs/methods.md §2.2 steps 2-4).

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


def cells_to_patches(hist: torch.Tensor, cells_per_patch: int, layout: str = "dmjd") -> torch.Tensor:
    """Group cell histograms by patch: hist ``[N, C, ph*k, pw*k, nbins]`` with k = ``cells_per_patch`` ->
    ``[N, ph*pw, k*k*nbins*C]``, patches in raster order. Inside a patch, cell (dh, dw), bin d, channel c
    sits at

    - ``layout="dmjd"``: ``((dh*k + dw)*nbins + d)*C + c`` (channel fastest; the official
      ``b c (ph dh) (pw dw) d -> b (ph pw) (dh dw d c)``);
    - ``layout="maskfeat"``: ``((c*nbins + d)*k + dh)*k + dw`` (cell fastest; MaskMViT's
      ``_get_hog_label_2d``: channel-bin rows, then two ``unfold``s appending dh, then dw).
    """
    n, c, hc, wc, nbins = hist.shape
    k = cells_per_patch
    if hc % k or wc % k:
        raise ValueError(f"{hc}x{wc} cells do not group into patches of {k}x{k} cells")
    ph, pw = hc // k, wc // k
    # dims of the view: 0 N, 1 C, 2 ph, 3 dh, 4 pw, 5 dw, 6 d
    order = {"dmjd": (0, 2, 4, 3, 5, 6, 1), "maskfeat": (0, 2, 4, 1, 6, 3, 5)}[layout]
    x = hist.reshape(n, c, ph, k, pw, k, nbins).permute(*order)
    return x.reshape(n, ph * pw, k * k * nbins * c)


def patches_to_cells(x: torch.Tensor, grid_size: tuple[int, int], cells_per_patch: int, nbins: int,
                     channels: int, layout: str) -> torch.Tensor:
    """Inverse of ``cells_to_patches``: [N, gh*gw, k*k*nbins*C] -> [N, C, gh*k, gw*k, nbins]."""
    n = x.shape[0]
    gh, gw = grid_size
    k = cells_per_patch
    if layout == "dmjd":  # patch vector (dh, dw, d, c)
        cells = x.reshape(n, gh, gw, k, k, nbins, channels).permute(0, 6, 1, 3, 2, 4, 5)
    else:  # maskfeat: patch vector (c, d, dh, dw)
        cells = x.reshape(n, gh, gw, channels, nbins, k, k).permute(0, 3, 1, 5, 2, 6, 4)
    return cells.reshape(n, channels, gh * k, gw * k, nbins)


class HogTarget(nn.Module):
    """DMJD's HOG regression target per patch (docs/methods.md §2.2), from the ImageNet-normalized input.

    ``forward(imgs [N, C, H, W]) -> [N, L, (patch/cell)^2 * nbins * C]`` float32, L = (H/p)(W/p) in
    raster order. Inside a patch of k x k cells (k = patch/cell) the index of cell (dh, dw), bin d,
    channel c is ``((dh*k + dw)*nbins + d)*C + c``: the official ``b c (ph dh) (pw dw) d ->
    b (ph pw) (dh dw d c)``. Unlike the official code (14x14 hard-coded) any H, W divisible by the patch
    size works. No parameters or saved buffers, so checkpoints are unaffected.
    """

    def __init__(self, patch_size: int = 16, cell_size: int = 8, nbins: int = 9, in_chans: int = 3,
                 *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if patch_size % cell_size:
            raise ValueError(f"patch size {patch_size} is not a multiple of the HOG cell size {cell_size}")
        self.patch_size = patch_size
        self.cell_size = cell_size
        self.nbins = nbins
        self.in_chans = in_chans
        _register_input_stats(self, mean, std, in_chans)

    def out_dim(self, in_chans: Optional[int] = None) -> int:
        """Length of one patch's target: (patch/cell)^2 * nbins * in_chans (108 at 16/8/9/3)."""
        in_chans = self.in_chans if in_chans is None else in_chans
        return (self.patch_size // self.cell_size) ** 2 * self.nbins * in_chans

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: ``[N, C, H, W]`` normalized float -> ``[N, L, out_dim]`` float32."""
        _check_images(self, imgs)
        # The official HOG runs outside autocast on float32 0..255 pixels; a bf16 target would be noise.
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            pixels = denormalize_to_uint8(imgs, self.mean, self.std)
            hist = whiten_histograms(hog_cell_histograms(pixels, self.cell_size, self.nbins))
            return cells_to_patches(hist, self.patch_size // self.cell_size)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, cell_size={self.cell_size}, nbins={self.nbins}, "
                f"in_chans={self.in_chans}")


# ============================================================================ MaskFeat's HOG target
#
# Facts from facebookresearch/SlowFast (read, not copied):
#   slowfast/models/operators.py, class HOGLayerC (~l.63-113 at 198bf9de): Sobel + reflect pad, atan2(gx, gy),
#     floor(phase / pi * nbins) % nbins, optional Gaussian window, sum pool by unfold, F.normalize(p=2) over bins.
#   slowfast/models/masked.py, MaskMViT.__init__ (adc55ca): HOGLayerC(nbins=9, pool=8), no gaussian_window;
#     head size nbins * (16 // 8)**2 * 3 = 108; loss "mse". MaskMViT._get_hog_label_2d: hog(x).flatten(1, 2)
#     -> permute(0, 2, 3, 1).unfold(1, k, k).unfold(2, k, k).flatten(1, 2).flatten(2), k = cells per patch side.
#   slowfast/models/utils.py get_gkern; configs/masked_ssl/in1k_VIT_B_MaskFeat_PT.yaml (224 px, patch 16,
#     ImageNet mean/std); slowfast/datasets/imagenet.py: the model input is ToTensor + Normalize(mean, std), and
#     _maskfeat_forward passes that same tensor (x.detach()) to the HOG.


def sobel_gradients(img: torch.Tensor) -> tuple:
    """HOGLayerC's per-channel 3x3 Sobel responses with reflect padding (mirror without repeating the edge).

    img: ``[N, C, H, W]`` float (H, W >= 2). Returns ``(gx, gy)``, each ``[N, C, H, W]``, the cross-correlations
    (``F.conv2d``) with ``wx = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]`` and ``wy = wx.T``:

    - ``gx[i, j] = sum_u s[u] * (I[i+u-1, j-1] - I[i+u-1, j+1])``, s = (1, 2, 1): left minus right, so a
      brightness increase to the right gives gx < 0;
    - ``gy[i, j] = sum_v s[v] * (I[i-1, j+v-1] - I[i+1, j+v-1])``: top minus bottom.

    Written as differences, not a conv: exact for integer pixels (no TF32 / Winograd rounding on the device)
    and exactly 0 wherever the compared neighbours are equal. Reflect padding makes gx = 0 on the first and
    last column and gy = 0 on the first and last row.
    """
    xp = F.pad(img, (1, 1, 1, 1), mode="reflect")
    dx = xp[..., :, :-2] - xp[..., :, 2:]  # [N, C, H+2, W]: left - right
    dy = xp[..., :-2, :] - xp[..., 2:, :]  # [N, C, H, W+2]: top - bottom
    gx = dx[..., :-2, :] + 2 * dx[..., 1:-1, :] + dx[..., 2:, :]
    gy = dy[..., :, :-2] + 2 * dy[..., :, 1:-1] + dy[..., :, 2:]
    return gx, gy


def gaussian_window_2d(window: int) -> torch.Tensor:
    """SlowFast's ``get_gkern(window, window // 2)``: ``[window, window]`` float32, summing to 1.

    1-D taps ``exp(-0.5 * ((n - (window-1)/2) / (window // 2))**2)``, n = 0..window-1, outer product, / sum.
    """
    n = torch.arange(window, dtype=torch.float32)
    w = torch.exp(-0.5 * ((n - n.mean()) / (window // 2)) ** 2)
    k = torch.outer(w, w)
    return k / k.sum()


def maskfeat_hog_cells(img: torch.Tensor, pool: int = 8, nbins: int = 9, gaussian_window: int = 0,
                       normalize: bool = True) -> torch.Tensor:
    """HOGLayerC.forward, batched: per-channel cell histograms, ``[N, C, H, W] -> [N, C, nbins, H//pool, W//pool]``.

    - gradients: :func:`sobel_gradients` (3x3 Sobel, reflect padding), float32 outside autocast;
    - magnitude ``hypot(gx, gy)``; phase ``atan2(gx, gy) / pi * nbins`` in [-nbins, nbins], bin
      ``floor(phase) mod nbins`` (Python/floor modulo): hard assignment, unsigned orientation in pi/nbins bins.
      Note the argument order: a brightness change along the columns (vertical edge, gy = 0) gives
      phase -+nbins/2 -> bin nbins//2 (4 of 9); along the rows (horizontal edge, gx = 0) phase 0 or nbins ->
      bin 0, which sits on the edge between bins 0 and nbins-1. The phase is taken in float64: float32 atan2
      already bins every integer-valued gradient pair as float64 does on the CPU, but the closest pair lies
      under one float32 ulp from an edge (gx, gy = -297, -816: phase 8 - 9e-7), too close for a device
      atan2 that may err by a few ulps.
    - ``gaussian_window`` k > 0: magnitudes times ``gaussian_window_2d(k)`` tiled over the image (one Gaussian
      per k x k tile; H, W must be multiples of k). MaskFeat's image model uses 0 (off).
    - cells: sum (not mean) of the magnitudes per bin over pool x pool pixels; trailing partial cells are
      dropped (unfold); gradients still see the whole image.
    - ``normalize``: each cell's nbins vector / max(L2 norm, 1e-12) (``F.normalize``), per channel; a cell
      without gradient stays all-zero. ``False`` returns the raw sums (for tests).
    """
    n, c, h, w = img.shape
    hc, wc = h // pool, w // pool
    with torch.autocast(device_type=img.device.type, enabled=False):
        gx, gy = sobel_gradients(img.float().contiguous())  # one memory layout -> one summation order
        magnitude = torch.hypot(gx, gy)
        phase = torch.atan2(gx.double(), gy.double()) / torch.pi * nbins
        bins = torch.remainder(torch.floor(phase), nbins).to(torch.uint8 if nbins <= 256 else torch.int64)
        del phase, gx, gy
        if gaussian_window:
            if h % gaussian_window or w % gaussian_window:
                raise ValueError(f"image {h}x{w} is not tiled by the {gaussian_window}-px Gaussian window")
            g = gaussian_window_2d(gaussian_window).to(img.device)
            magnitude = magnitude * g.repeat(h // gaussian_window, w // gaussian_window)
        magnitude = magnitude[..., :hc * pool, :wc * pool]
        bins = bins[..., :hc * pool, :wc * pool]
        hist = torch.empty(n, c, nbins, hc, wc, dtype=torch.float32, device=img.device)
        for b in range(nbins):  # one bin at a time: no 9x one-hot map; a fixed summation order (deterministic)
            hist[:, :, b] = (magnitude * (bins == b)).reshape(n, c, hc, pool, wc, pool).sum((3, 5))
        if normalize:
            hist = F.normalize(hist, p=2.0, dim=2, eps=1e-12)
    return hist


class MaskFeatHogTarget(nn.Module):
    """MaskFeat's HOG regression target per patch, for images (SlowFast ``HOGLayerC`` + ``MaskMViT``).

    ``forward(imgs [N, C, H, W]) -> [N, L, out_dim]`` float32 (computed outside autocast), L = (H/p)(W/p) in
    raster order, ``out_dim = C * nbins * (p/pool)^2`` (108 at the defaults: 3 channels x 9 bins x 2x2 cells);
    index ``((c*nbins + d)*k + dh)*k + dw`` with k = p/pool (:func:`cells_to_patches`, ``layout="maskfeat"``).
    Defaults are MaskFeat's ImageNet ViT-B setting: nbins 9, pool (cell) 8, no Gaussian window, patch 16.

    Input: the ImageNet-normalized model input, which is what MaskFeat feeds its HOG (``_maskfeat_forward``
    calls ``hog(x.detach())`` on the loader's ``Normalize(mean, std)`` tensor). Every step of the target is
    unchanged by a per-channel ``a*x + b`` with a > 0 (the Sobel taps sum to 0 and reflect padding keeps a
    constant constant; the phase depends on gx/gy only; each cell's vector is one channel's and is
    L2-normalized), so HOG of the normalized input equals HOG of its 0..255 pixels. With ``from_uint8``
    (default) the exact 0..255 integers are recovered first (:func:`denormalize_to_uint8`, needs a float32
    input made from a uint8 image): integer gradients make every bin exact and reproducible. On the literal
    float input (``from_uint8=False``, the official computation) a gx that should cancel to 0 (say 1 - 2 + 1
    grey levels) comes out as +-1e-8, and since gx = 0 is the edge between bins 0 and nbins-1, such pixels
    land in either bin depending on rounding. The official targets are noisy exactly there (measured on
    skimage images: ~0.6% of pixels, 0.15% of the gradient mass, but ~25-30% of the cell vectors move by >1e-5).

    Unlike DMJD's :class:`HogTarget`: Sobel (not central differences), reflect padding (no zeroed border),
    ``atan2(gx, gy)`` orientation with horizontal edges at the 0/nbins-1 bin edge, sum pooling, per-cell L2
    normalization (no LayerNorm), channel-slowest layout. No parameters or saved buffers.
    """

    def __init__(self, patch_size: int = 16, pool: int = 8, nbins: int = 9, gaussian_window: int = 0,
                 in_chans: int = 3, *, from_uint8: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        if patch_size % pool:
            raise ValueError(f"patch size {patch_size} is not a multiple of the HOG cell size {pool}")
        self.patch_size = patch_size
        self.pool = pool
        self.nbins = nbins
        self.gaussian_window = gaussian_window
        self.in_chans = in_chans
        self.from_uint8 = from_uint8
        _register_input_stats(self, mean, std, in_chans)

    def out_dim(self, in_chans: Optional[int] = None) -> int:
        """Length of one patch's target: in_chans * nbins * (patch/pool)^2 (108 at 3/9/16/8)."""
        in_chans = self.in_chans if in_chans is None else in_chans
        return in_chans * self.nbins * (self.patch_size // self.pool) ** 2

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: ``[N, C, H, W]`` normalized float -> ``[N, L, out_dim]`` float32, no grad."""
        _check_images(self, imgs)
        p = self.patch_size
        with torch.no_grad(), torch.autocast(device_type=imgs.device.type, enabled=False):
            x = denormalize_to_uint8(imgs, self.mean, self.std) if self.from_uint8 else imgs.float()
            hist = maskfeat_hog_cells(x, self.pool, self.nbins, self.gaussian_window)
            return cells_to_patches(hist.permute(0, 1, 3, 4, 2), p // self.pool, layout="maskfeat")

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, pool={self.pool}, nbins={self.nbins}, "
                f"gaussian_window={self.gaussian_window}, in_chans={self.in_chans}, from_uint8={self.from_uint8}")
