"""MaskFeat's HOG target: Sobel gradients, orientation, cells, layout, against an independent numpy/scipy
reference written from the facts of SlowFast's HOGLayerC and MaskMViT (see models/hog.py)."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data as skdata

from base.images import IMAGENET_STD
from conftest import assert_close_across_kernels
from models.hog import (MaskFeatHogTarget, cells_to_patches, gaussian_window_2d, hog_cell_histograms,
                        maskfeat_hog_cells, sobel_gradients)
from test_hog import normalize

SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def reference_maskfeat_hog(img_hwc: np.ndarray, patch: int = 16, pool: int = 8, nbins: int = 9,
                           gaussian_window: int = 0):
    """Plain float64 MaskFeat HOG of an [H, W, C] image (any range). Returns (raw [C, Hc, Wc, nbins] sums,
    target [L, C*nbins*k*k]). torch's reflect padding is scipy's mode='mirror' (scipy's 'reflect' repeats
    the edge pixel); F.conv2d is a correlation, hence ndimage.correlate."""
    h, w, c = img_hwc.shape
    hc, wc, k = h // pool, w // pool, patch // pool
    raw = np.zeros((c, hc, wc, nbins))
    for ch in range(c):
        x = img_hwc[:, :, ch].astype(np.float64)
        gx = ndimage.correlate(x, SOBEL_X, mode="mirror")
        gy = ndimage.correlate(x, SOBEL_X.T, mode="mirror")
        mag = np.sqrt(gx ** 2 + gy ** 2)
        if gaussian_window:
            n = np.arange(gaussian_window) - (gaussian_window - 1) / 2
            g1 = np.exp(-0.5 * (n / (gaussian_window // 2)) ** 2)
            g2 = np.outer(g1, g1) / np.outer(g1, g1).sum()
            mag = mag * np.tile(g2, (h // gaussian_window, w // gaussian_window))
        bins = np.floor(np.arctan2(gx, gy) / np.pi * nbins).astype(np.int64) % nbins
        for r in range(hc):
            for q in range(wc):
                cell = (slice(r * pool, (r + 1) * pool), slice(q * pool, (q + 1) * pool))
                raw[ch, r, q] = np.bincount(bins[cell].ravel(), weights=mag[cell].ravel(), minlength=nbins)
    normed = raw / np.maximum(np.linalg.norm(raw, axis=-1, keepdims=True), 1e-12)
    ph, pw = hc // k, wc // k
    target = np.zeros((ph * pw, c * nbins * k * k))
    for pr in range(ph):
        for pc in range(pw):
            for ch in range(c):
                for d in range(nbins):
                    for dh in range(k):
                        for dw in range(k):
                            target[pr * pw + pc, ((ch * nbins + d) * k + dh) * k + dw] = \
                                normed[ch, pr * k + dh, pc * k + dw, d]
    return raw, target


def crop_to(img: np.ndarray, multiple: int) -> np.ndarray:
    return img[:img.shape[0] // multiple * multiple, :img.shape[1] // multiple * multiple]


def test_maskfeat_sobel_and_ramps_hand_computed():
    """16x16 ramps, 2x2 cells of 8. Sobel = [1,2,1]-smoothed (left - right) / (top - bottom) differences,
    reflect padding -> gx = 0 on the first/last column, gy = 0 on the first/last row."""
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")

    # Horizontal ramp 5j: gx = (5(j-1) - 5(j+1)) * (1+2+1) = -40 inside, 0 on columns 0 and 15; gy = 0.
    gx, gy = sobel_gradients((5 * j)[None, None])
    want = torch.full((16, 16), -40.0)
    want[:, 0] = want[:, 15] = 0
    assert torch.equal(gx[0, 0], want) and torch.equal(gy[0, 0], torch.zeros(16, 16))
    # atan2(-40, 0) = -pi/2 -> phase -4.5 -> floor -5 -> mod 9 = bin 4. Each cell: 8 rows x 7 columns.
    raw = maskfeat_hog_cells((5 * j)[None, None], normalize=False)[0, 0]  # [9, 2, 2]
    assert torch.equal(raw[4], torch.full((2, 2), 56 * 40.0)) and not raw[[0, 1, 2, 3, 5, 6, 7, 8]].any()
    e4 = torch.zeros(9)
    e4[4] = 1
    assert torch.equal(maskfeat_hog_cells((5 * j)[None, None])[0, 0].permute(1, 2, 0), e4.expand(2, 2, 9))

    # Diagonal i + j: inside gx = gy = -8 -> atan2 = -3pi/4 -> phase -6.75 -> -7 -> bin 2, |g| = 8 sqrt 2.
    # Border row (gy = 0, gx = -8): bin 4, |g| 8. Border column (gx = 0, gy = -8): atan2(0, -8) = pi ->
    # phase 9 -> bin 0, |g| 8. Corner: 0. Every cell has 49 inside, 7 row-border and 7 column-border
    # pixels: raw (56, 0, 392 sqrt 2, 0, 56, 0...), L2 norm sqrt(56^2 + 56^2 + 2 * 392^2) = 560.
    raw = maskfeat_hog_cells((i + j)[None, None], normalize=False)[0, 0].permute(1, 2, 0)
    want = torch.zeros(9)
    want[0], want[2], want[4] = 56, 392 * math.sqrt(2), 56
    assert torch.allclose(raw, want.expand(2, 2, 9))
    hist = maskfeat_hog_cells((i + j)[None, None])[0, 0].permute(1, 2, 0)
    want = torch.zeros(9)
    want[0], want[2], want[4] = 0.1, 0.7 * math.sqrt(2), 0.1
    assert torch.allclose(hist, want.expand(2, 2, 9), atol=1e-7)
    # Anti-diagonal i - j: gx = +8, gy = -8 -> 3pi/4 -> 6.75 -> bin 6; border row gx = 8 -> pi/2 -> 4.5 -> bin 4.
    hist = maskfeat_hog_cells((i - j + 15)[None, None])[0, 0].permute(1, 2, 0)
    want[2], want[6] = 0, 0.7 * math.sqrt(2)
    assert torch.allclose(hist, want.expand(2, 2, 9), atol=1e-7)


def test_maskfeat_orientation_convention():
    """atan2(gx, gy): a vertical edge (brightness changes along a row, gy = 0) lands in bin 4 (phase -+4.5),
    a horizontal edge (gx = 0) in bin 0 (phase 0 or 9), whatever the polarity. DMJD's atan2(g_row, g_col)
    does the opposite: vertical edge -> bin 0, horizontal -> bin 4."""
    step = (torch.arange(16) >= 8).float() * 200  # [16]: 0 | 200 between columns 7 and 8
    for img, mf_bin, dmjd_bin in [(step.expand(16, 16), 4, 0), ((200 - step).expand(16, 16), 4, 0),
                                  (step[:, None].expand(16, 16), 0, 4), ((200 - step)[:, None].expand(16, 16), 0, 4)]:
        img = img[None, None].contiguous()
        mf = maskfeat_hog_cells(img, normalize=False)[0, 0].sum((1, 2))  # [9]: mass per bin over all cells
        assert mf[mf_bin] > 0 and mf.count_nonzero() == 1
        dm = hog_cell_histograms(img)[0, 0].sum((0, 1))
        assert dm[dmjd_bin] > 0 and dm.count_nonzero() == 1
        # The vertical step (column 7 | 8): gx = 4 * -+200 on both columns, cells of columns 0-7 and 8-15.
        if mf_bin == 4:
            assert torch.allclose(mf[4], torch.tensor(2 * 16 * 800.0))


def test_maskfeat_cells_unit_or_zero():
    """Every (channel, cell) vector of the target has L2 norm 1, or is all-zero for a gradient-free cell."""
    gen = torch.Generator().manual_seed(4)
    u8 = torch.randint(0, 256, (64, 96, 3), dtype=torch.uint8, generator=gen).numpy()
    u8[:24, :24] = 90  # cells (0..1, 0..1) have no gradient anywhere; cell row/col 2 sees the edge
    out = MaskFeatHogTarget()(normalize(u8)[None])
    assert out.shape == (1, 24, 108)
    cells = out.reshape(1, 24, 3, 9, 2, 2).permute(0, 1, 2, 4, 5, 3)  # [N, L, c, dh, dw, d]
    norms = cells.norm(dim=-1)
    assert torch.equal(cells[0, 0], torch.zeros(3, 2, 2, 9))  # patch 0 = cells (0..1, 0..1): flat
    live = norms.flatten()[norms.flatten() > 0]
    assert live.numel() == norms.numel() - 12
    assert torch.allclose(live, torch.ones(()), atol=1e-6)


def test_maskfeat_layout_index_formula():
    """cells_to_patches(layout="maskfeat") puts (channel c, bin d, cell (dh, dw)) at ((c*9 + d)*k + dh)*k + dw,
    from MaskFeat's [N, C, nbins, H, W] cells."""
    n, c, nbins, k, ph, pw = 2, 3, 9, 2, 3, 4
    b_, c_, d_, r_, q_ = torch.meshgrid(*(torch.arange(s) for s in (n, c, nbins, ph * k, pw * k)), indexing="ij")
    code = (((b_ * 10 + c_) * 100 + d_) * 100 + r_) * 100 + q_  # every entry says where it came from
    out = maskfeat_cells_to_patches(code.double(), k)
    assert out.shape == (n, ph * pw, c * nbins * k * k)
    for b in range(n):
        for p_row in range(ph):
            for p_col in range(pw):
                for ch in range(c):
                    for d in range(nbins):
                        for dh in range(k):
                            for dw in range(k):
                                want = (((b * 10 + ch) * 100 + d) * 100 + p_row * k + dh) * 100 + p_col * k + dw
                                got = out[b, p_row * pw + p_col, ((ch * nbins + d) * k + dh) * k + dw]
                                assert got.item() == want
    with pytest.raises(ValueError):
        maskfeat_cells_to_patches(code.double()[..., :5], k)


def maskfeat_cells_to_patches(cells: torch.Tensor, k: int) -> torch.Tensor:
    """MaskFeat's cells [N, C, nbins, H, W] through the shared layout function."""
    return cells_to_patches(cells.permute(0, 1, 3, 4, 2), k, layout="maskfeat")


def test_maskfeat_layout_on_constructed_input():
    """A flat 32x48 image with a vertical step inside cell column 3 of channel 1 (bin 4 in every cell of
    that column) and a horizontal step inside cell row 2 of channel 2 (bin 0 in that row): the target's
    nonzero entries are exactly those the index formula names, each 1 (one-hot cells)."""
    u8 = np.full((32, 48, 3), 100, dtype=np.uint8)
    u8[:, 28:, 1] = 180  # columns 27|28 are both in cell column 3 (columns 24-31)
    u8[20:, :, 2] = 30   # rows 19|20 are both in cell row 2 (rows 16-23)
    out = MaskFeatHogTarget()(normalize(u8)[None])[0]  # [6, 108], patches 2 x 3
    want = torch.zeros(6, 108)
    for cell_row in range(4):  # channel 1, bin 4, cell column 3 -> patch column 1, dw = 1
        want[(cell_row // 2) * 3 + 1, ((1 * 9 + 4) * 2 + cell_row % 2) * 2 + 1] = 1
    for cell_col in range(6):  # channel 2, bin 0, cell row 2 -> patch row 1, dh = 0
        want[1 * 3 + cell_col // 2, ((2 * 9 + 0) * 2 + 0) * 2 + cell_col % 2] = 1
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [64, 224])
def test_maskfeat_shapes_and_module(size: int):
    gen = torch.Generator().manual_seed(size)
    u8 = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8, generator=gen).numpy()
    imgs = torch.stack([normalize(im) for im in u8])
    target = MaskFeatHogTarget()
    assert target.out_dim() == target.out_dim(3) == 108 and target.out_dim(1) == 36
    assert MaskFeatHogTarget(pool=4).out_dim() == 3 * 9 * 16
    out = target(imgs)
    assert out.dtype == torch.float32 and out.shape == (2, (size // 16) ** 2, 108)
    # Same as the HOG of the 0..255 pixels taken literally: the normalization's scale and shift cancel.
    pixels = torch.from_numpy(u8).permute(0, 3, 1, 2).float()
    assert torch.equal(MaskFeatHogTarget(from_uint8=False)(pixels), out)
    with pytest.raises(ValueError):
        target(imgs[..., :40])
    with pytest.raises(ValueError):
        target(imgs[:, :2])
    with pytest.raises(ValueError):
        MaskFeatHogTarget(patch_size=12, pool=8)
    assert "pool=8" in repr(target) and "nbins=9" in repr(target) and "gaussian_window=0" in repr(target)
    assert not list(target.state_dict())


def test_maskfeat_batch_equals_per_image_and_float32_under_autocast():
    gen = torch.Generator().manual_seed(5)
    u8 = torch.randint(0, 256, (3, 48, 64, 3), dtype=torch.uint8, generator=gen).numpy()
    imgs = torch.stack([normalize(im) for im in u8])
    target = MaskFeatHogTarget()
    alone = torch.cat([target(imgs[k:k + 1]) for k in range(3)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = target(imgs)
    assert batched.dtype == torch.float32 and batched.shape == (3, 12, 108)
    assert_close_across_kernels(batched, alone)
    for literal in (MaskFeatHogTarget(from_uint8=False), MaskFeatHogTarget(gaussian_window=16)):
        alone = torch.cat([literal(imgs[k:k + 1]) for k in range(3)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert_close_across_kernels(literal(imgs), alone)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_maskfeat_matches_independent_reference(name: str):
    """The target of a real image equals the plain float64 reference (1e-5); with 224 crops too."""
    img = crop_to(getattr(skdata, name)(), 16)
    ours = MaskFeatHogTarget()(normalize(img)[None])[0]
    _, ref = reference_maskfeat_hog(img)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=0, atol=1e-5)
    crop = img[:224, :224]
    _, ref = reference_maskfeat_hog(crop)
    np.testing.assert_allclose(MaskFeatHogTarget()(normalize(crop)[None])[0].double().numpy(), ref,
                               rtol=0, atol=1e-5)


def test_maskfeat_gaussian_window_matches_reference():
    """gaussian_window=16 (off in MaskFeat's image model): get_gkern's formula, tiled per 16x16."""
    g = gaussian_window_2d(16)
    n = torch.arange(16.0) - 7.5
    g1 = torch.exp(-0.5 * (n / 8) ** 2)
    assert torch.allclose(g, torch.outer(g1, g1) / torch.outer(g1, g1).sum()) and abs(g.sum().item() - 1) < 1e-6
    img = skdata.chelsea()[:64, :96]
    ours = MaskFeatHogTarget(gaussian_window=16)(normalize(img)[None])[0]
    _, ref = reference_maskfeat_hog(img, gaussian_window=16)
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):  # 48 px wide: whole patches, but not whole 32-px windows
        MaskFeatHogTarget(gaussian_window=32)(normalize(skdata.chelsea()[:64, :48])[None])


def test_maskfeat_literal_float_input_differs_only_at_the_bin0_edge():
    """from_uint8=False (the official computation on the normalized floats): magnitudes equal the exact
    ones times 1/(255 std_c), and bins agree except that mass moves between bins 0 and 8 -- pixels whose
    integer gx cancels to 0 get gx = +-1e-8 from float rounding, on the 0/8 bin edge. Cells without such a
    move equal the exact target."""
    img = crop_to(skdata.astronaut(), 16)[:256, :256]
    x = normalize(img)[None]
    raw_ref, ref = reference_maskfeat_hog(img)  # exact, on the integers
    scale = torch.tensor([255 * s for s in IMAGENET_STD]).reshape(3, 1, 1, 1).double()
    raw = (maskfeat_hog_cells(x, normalize=False)[0].double() * scale).permute(0, 2, 3, 1).numpy()
    tol = dict(rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(raw[..., 1:8], raw_ref[..., 1:8], **tol)
    np.testing.assert_allclose(raw[..., 0] + raw[..., 8], raw_ref[..., 0] + raw_ref[..., 8], **tol)
    moved = ~np.isclose(raw[..., 0], raw_ref[..., 0], **tol)  # [3, Hc, Wc]
    assert 0 < moved.mean() < 0.5  # it happens, in many cells (~25% on natural images)
    ours = MaskFeatHogTarget(from_uint8=False)(x)[0].reshape(16, 16, 3, 9, 2, 2)  # [ph, pw, c, d, dh, dw]
    ours = ours.permute(2, 0, 4, 1, 5, 3).reshape(3, 32, 32, 9).double().numpy()
    ref = ref.reshape(16, 16, 3, 9, 2, 2).transpose(2, 0, 4, 1, 5, 3).reshape(3, 32, 32, 9)
    np.testing.assert_allclose(ours[~moved], ref[~moved], rtol=0, atol=1e-5)
