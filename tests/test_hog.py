"""DMJD's HOG target (docs/methods.md §2.2): exact denormalization, skimage parity, whitening, layout, golden."""
import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.feature import hog as sk_hog
from torchvision import transforms

from base.images import IMAGENET_MEAN, IMAGENET_STD
from conftest import assert_close_across_kernels
from golden_rules import assert_fingerprint, case_inputs, load_case, make_uint8
from models.hog import (HogTarget, cells_to_patches, denormalize_to_uint8, hog_cell_histograms,
                        whiten_histograms)

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
    """bf16 autocast and a batch do not change a sample's histograms (other batch shapes: within 1e-6 of the
    scale, as the convolution may run other kernels)."""
    gen = torch.Generator().manual_seed(1)
    img = torch.randint(0, 256, (3, 3, 32, 48), generator=gen).float()
    alone = torch.cat([hog_cell_histograms(img[k:k + 1]) for k in range(3)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batched = hog_cell_histograms(img)
    assert batched.dtype == torch.float32 and batched.shape == (3, 3, 4, 6, 9)
    assert_close_across_kernels(batched, alone)


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
