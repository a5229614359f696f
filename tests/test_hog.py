"""DMJD's HOG target (docs/methods.md §2.2): exact denormalization, skimage parity, whitening, layout, golden."""
import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.feature import hog as sk_hog
from torchvision import transforms

from golden_rules import assert_fingerprint, case_inputs, load_case, make_uint8
from models.hog import (HogTarget, cells_to_patches, denormalize_to_uint8, hog_cell_histograms,
                        whiten_histograms)
from util.data import IMAGENET_MEAN, IMAGENET_STD

NORMALIZE = transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def normalize(u8_hwc: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float32, exactly as the data pipeline makes the model input."""
    return NORMALIZE(u8_hwc)


# ---------------------------------------------------------------------------- denormalization

def test_denormalize_is_exact():
    """Every grey level of every channel, plus random images, comes back bit-exact from the input."""
    gen = torch.Generator().manual_seed(0)
    every_level = torch.arange(256, dtype=torch.uint8).reshape(16, 16, 1).expand(16, 16, 3)
    images = [every_level.numpy().copy()]
    images += [torch.randint(0, 256, (24, 40, 3), dtype=torch.uint8, generator=gen).numpy() for _ in range(4)]
    for u8 in images:
        x = normalize(u8)[None]
        assert x.dtype == torch.float32
        out = denormalize_to_uint8(x)
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert torch.equal(out, torch.from_numpy(u8).permute(2, 0, 1)[None].float())


# ---------------------------------------------------------------------------- cell histograms

def l1_like_skimage(hist: np.ndarray) -> np.ndarray:
    """skimage's block_norm='L1' with 1x1 blocks: each cell's histogram / (its L1 sum + 1e-5)."""
    return hist / (np.abs(hist).sum(-1, keepdims=True) + 1e-5)


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@pytest.mark.parametrize("crop", [True, False], ids=["whole-cells", "ragged"])
def test_cell_histograms_match_skimage(name: str, crop: bool):
    """Per channel, our raw cell histograms L1-normalized equal skimage's hog with 1x1 L1 blocks.

    skimage 0.26 uses the same gradients (central difference without 1/2, 0 on the border rows/cols),
    the same orientation ``arctan2(g_row, g_col) * 180/pi % 180`` (in float64), the same hard bins
    [20i, 20(i+1)) and the same cells (rows/cols [8i, 8i+8), whole cells only, gradients taken on the
    whole image), each cell summed and divided by 64. So no pixel is treated differently, not even at
    0/180 degrees (a gradient pointing left is exactly 180 -> 0, bin 0, in both) or at 90 degrees;
    test_binning_equals_float64_on_every_integer_gradient shows float32 cannot move a bin. What remains
    is float32 rounding: skimage accumulates each cell in a C float, we in float32 too (~1e-7).
    ``ragged`` keeps the uncropped size (chelsea is 300x451): partial cells are dropped by both, and the
    last whole row of cells sees the gradient across the crop line in both.
    """
    img = getattr(skdata, name)()
    if crop:
        img = img[:img.shape[0] // 8 * 8, :img.shape[1] // 8 * 8]
    ours = hog_cell_histograms(torch.from_numpy(img).permute(2, 0, 1)[None].float())[0]
    assert ours.dtype == torch.float32
    assert ours.shape == (3, img.shape[0] // 8, img.shape[1] // 8, 9)
    ours = l1_like_skimage(ours.double().numpy())
    for c in range(3):
        ref = sk_hog(img[:, :, c], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                     block_norm="L1", feature_vector=False, transform_sqrt=False)[:, :, 0, 0]
        assert ref.shape == ours[c].shape
        # Measured max |diff| is ~8e-8 on these images; a misbinned pixel would cost >= ~1e-3.
        np.testing.assert_allclose(ours[c], ref, rtol=0, atol=5e-7)


def test_binning_equals_float64_on_every_integer_gradient():
    """All 511^2 gradient pairs (g_row, g_col) a uint8 image can produce land in the same bin, with the
    same magnitude, as skimage's float64 ``floor((arctan2 * 180/pi % 180) / 20)``.

    One 3x3 image per pair, one 3x3 cell: only the centre pixel has a nonzero gradient (the border
    rows/cols are 0 and the pixels set to make the centre's differences are 0 elsewhere), so the cell
    histogram is one-hot at the centre pixel's bin with value magnitude / 9. The nearest any pair gets
    to a bin edge is ~6e-4 degrees, far above float32's ~1e-5 at 180.
    """
    g = torch.arange(-255, 256, dtype=torch.float32)
    g_row, g_col = (t.reshape(-1) for t in torch.meshgrid(g, g, indexing="ij"))
    img = torch.zeros(g_row.numel(), 1, 3, 3)
    img[:, 0, 2, 1], img[:, 0, 0, 1] = g_row.clamp(min=0), (-g_row).clamp(min=0)
    img[:, 0, 1, 2], img[:, 0, 1, 0] = g_col.clamp(min=0), (-g_col).clamp(min=0)
    hist = hog_cell_histograms(img, cell_size=3, nbins=9).reshape(-1, 9)

    gr, gc = g_row.double().numpy(), g_col.double().numpy()
    angle = np.arctan2(gr, gc) * (180 / np.pi) % 180
    expected = np.zeros((gr.size, 9))
    expected[np.arange(gr.size), np.floor(angle / 20).astype(int)] = np.hypot(gr, gc) / 9
    np.testing.assert_allclose(hist.double().numpy(), expected, rtol=1e-6, atol=0)


def test_hand_computed_gradients():
    """16x16 ramps, four 8x8 cells. Border rows/cols have a zero gradient component, no 1/2 factor."""
    i, j = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")

    def hist(img: torch.Tensor) -> torch.Tensor:
        return hog_cell_histograms(img[None, None])[0, 0]  # [2, 2, 9]

    # Horizontal ramp, +5 per column: g_col = 10, g_row = 0 -> 0 degrees, bin 0. Each cell has 8 rows x 7
    # columns with a gradient (column 0, resp. 15, is the border): 56 * 10 / 64 = 8.75.
    h = hist(5 * j)
    assert torch.allclose(h[..., 0], torch.full((2, 2), 8.75)) and (h[..., 1:] == 0).all()
    # Decreasing ramp: exactly 180 degrees, which is 0 mod 180 -> bin 0 as well.
    assert torch.allclose(hist(255 - 5 * j), h)
    # Vertical ramp: 90 degrees -> bin 4.
    assert torch.allclose(hist(5 * i)[..., 4], torch.full((2, 2), 8.75))

    # Diagonal ramp 3(i+j): g_row = g_col = 6 -> 45 degrees, bin 2, magnitude 6*sqrt(2), on the 7x7
    # interior pixels of the top-left cell; its border row 0 has only g_col (0 deg, bin 0) and its
    # border column 0 only g_row (90 deg, bin 4): 7 pixels of magnitude 6 each.
    h = hist(3 * (i + j))[0, 0]
    expected = torch.zeros(9)
    expected[0] = expected[4] = 7 * 6 / 64
    expected[2] = 49 * 6 * math.sqrt(2) / 64
    assert torch.allclose(h, expected)
    # Anti-diagonal 3(i + 15 - j): g_row = 6, g_col = -6 -> 135 degrees, bin 6 (and 180 -> bin 0 on row 0).
    h = hist(3 * (i + 15 - j))[0, 0]
    expected = torch.zeros(9)
    expected[0] = expected[4] = 7 * 6 / 64
    expected[6] = 49 * 6 * math.sqrt(2) / 64
    assert torch.allclose(h, expected)


def test_float32_under_autocast_and_batched():
    """bf16 autocast and a batch do not change a sample's histograms."""
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 3, 32, 48), generator=gen).float()
    alone = torch.cat([hog_cell_histograms(img[k:k + 1]) for k in range(3)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = hog_cell_histograms(img)
    assert batched.dtype == torch.float32 and batched.shape == (3, 3, 4, 6, 9)
    assert torch.equal(batched, alone)


# ---------------------------------------------------------------------------- whitening and layout

def test_whitening_zero_mean_unit_variance_and_zero_cells():
    gen = torch.Generator().manual_seed(2)
    hist = torch.rand(2, 3, 4, 4, 9, generator=gen) * 20
    hist[0, 1, 2, 3] = 0  # a flat cell
    out = whiten_histograms(hist)
    assert out.shape == hist.shape
    assert torch.equal(out[0, 1, 2, 3], torch.zeros(9))
    live = out.reshape(-1, 9)[hist.reshape(-1, 9).abs().sum(-1) > 0]
    assert torch.allclose(live.mean(-1), torch.zeros(()), atol=1e-6)
    # Biased variance var / (var + 1e-5): 1 up to ~1e-5 / var for these bins (var ~ 30).
    assert torch.allclose(live.var(-1, unbiased=False), torch.ones(()), atol=1e-5)


def test_layout_index_formula():
    """cells_to_patches puts (cell (dh, dw), bin d, channel c) at ((dh*k + dw)*9 + d)*3 + c."""
    n, c, k, ph, pw, nbins = 2, 3, 2, 3, 4, 9
    b_, c_, r_, q_, d_ = torch.meshgrid(*(torch.arange(s) for s in (n, c, ph * k, pw * k, nbins)), indexing="ij")
    code = (((b_ * 10 + c_) * 100 + r_) * 100 + q_) * 100 + d_  # every entry says where it came from
    out = cells_to_patches(code.double(), k)
    assert out.shape == (n, ph * pw, k * k * nbins * c)
    for b in range(n):
        for p_row in range(ph):
            for p_col in range(pw):
                for dh in range(k):
                    for dw in range(k):
                        for d in range(nbins):
                            for ch in range(c):
                                row, col = p_row * k + dh, p_col * k + dw
                                want = (((b * 10 + ch) * 100 + row) * 100 + col) * 100 + d
                                got = out[b, p_row * pw + p_col, ((dh * k + dw) * nbins + d) * c + ch]
                                assert got.item() == want


def test_hog_target_shapes_whitening_and_flat_cells():
    """Any H, W divisible by the patch; 108 values per 16-px patch; whitened per (cell, channel)."""
    gen = torch.Generator().manual_seed(3)
    u8 = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8, generator=gen).numpy()
    u8[:16, :16] = 77  # the top-left patch is flat: its four cells' histograms are all zero
    imgs = normalize(u8)[None]
    target = HogTarget()
    assert target.out_dim() == target.out_dim(3) == 108
    assert HogTarget(patch_size=16, cell_size=4).out_dim() == 16 * 9 * 3
    out = target(imgs)
    assert out.dtype == torch.float32 and out.shape == (1, 6, 108)
    # Flat patch 0: zero everywhere, except that the cells touching its right/bottom edge see the
    # neighbour through the central difference -- the interior cell (0, 0) has only zero gradients.
    per_cell = out.reshape(1, 6, 4, 9, 3)  # [N, L, dh*2+dw, d, c]
    assert torch.equal(per_cell[0, 0, 0], torch.zeros(9, 3))
    live = per_cell[:, 1:].permute(0, 1, 2, 4, 3).reshape(-1, 9)
    assert torch.allclose(live.mean(-1), torch.zeros(()), atol=1e-6)
    assert torch.allclose(live.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(target(imgs), out)
    with pytest.raises(ValueError):
        target(imgs[..., :40])
    with pytest.raises(ValueError):
        HogTarget(patch_size=12, cell_size=8)
    assert "cell_size=8" in repr(target)
    assert not list(target.state_dict())


# ---------------------------------------------------------------------------- golden (official DMJD)

def test_golden_hog_target():
    """The official HOG input (rule 1's uint8 pixels) is recovered exactly from the normalized input, and our
    target matches the official one (HOG -> whitening -> layout) to the fingerprint tolerance in every DMJD case."""
    cases = [load_case(f"dmjd_tiny_{m}_{v}") for m in ("block", "rand") for v in ("official", "fixed")]
    spec = cases[0]["inputs"]
    assert all(case["inputs"] == spec for case in cases)  # one input for all four
    imgs = case_inputs(cases[0])
    pixels = make_uint8(spec["N"], spec["size"], spec["seed"]).permute(0, 3, 1, 2).float()
    assert torch.equal(denormalize_to_uint8(imgs), pixels)
    out = HogTarget()(imgs)
    for case in cases:
        assert_fingerprint(out, case["fingerprints"]["target"], case["name"])


# ============================================================================ MaskFeat's HOG target
# Facts from SlowFast slowfast/models/operators.py HOGLayerC and slowfast/models/masked.py MaskMViT (see
# models/hog.py). The reference below is written from those facts with numpy/scipy, without torch.

from scipy import ndimage  # noqa: E402

from models.hog import MaskFeatHogTarget, gaussian_window_2d, maskfeat_hog_cells, sobel_gradients  # noqa: E402

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
    assert torch.equal(batched, alone)
    for literal in (MaskFeatHogTarget(from_uint8=False), MaskFeatHogTarget(gaussian_window=16)):
        alone = torch.cat([literal(imgs[k:k + 1]) for k in range(3)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(literal(imgs), alone)


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
