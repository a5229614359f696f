"""Tests for util/visualize.py: grid layout, de-normalization of predictions, masking and PNG writing."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.patches import patchify
from util.visualize import IMAGENET_MEAN, IMAGENET_STD, reconstruction_grid, save_png

P = 8  # patch size
PAD = 2  # make_grid padding


def _normalized_images(n: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """[n, 3, h, w] ImageNet-normalized images whose pixels lie in [0, 1], so clamping never hides an error."""
    torch.manual_seed(0)
    pixels = torch.rand(n, 3, h, w)
    return (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _random_mask(n: int, length: int) -> torch.Tensor:
    """[n, length] bool with a mix of masked and visible patches in every row."""
    mask = torch.rand(n, length) < 0.5
    mask[:, 0], mask[:, 1] = True, False
    return mask


def _panel(grid: torch.Tensor, row: int, col: int, h: int = 32, w: int = 32) -> torch.Tensor:
    """Cut panel (row, col) of a make_grid(padding=2) picture: [3, h, w] as int for safe subtraction."""
    top, left = PAD + row * (h + PAD), PAD + col * (w + PAD)
    return grid[:, top:top + h, left:left + w].int()


def _pixel_mask(mask: torch.Tensor, h: int = 32, w: int = 32) -> torch.Tensor:
    """[L] patch mask -> [h, w] pixel mask (raster patch order)."""
    return mask.view(h // P, w // P).repeat_interleave(P, 0).repeat_interleave(P, 1)


@pytest.mark.parametrize("h, w", [(32, 32), (32, 48)])
def test_grid_shape_and_dtype(h: int, w: int) -> None:
    imgs = _normalized_images(3, h, w)
    pred = torch.randn(3, (h // P) * (w // P), P * P * 3)
    grid = reconstruction_grid(imgs, pred, _random_mask(3, pred.shape[1]), P, norm_pix=False)
    assert grid.dtype == torch.uint8
    assert grid.shape == (3, 3 * (h + PAD) + PAD, 4 * (w + PAD) + PAD)


def test_perfect_prediction_reconstructs_original() -> None:
    imgs = _normalized_images(3)
    pred = patchify(imgs, P)
    grid = reconstruction_grid(imgs, pred, _random_mask(3, 16), P, norm_pix=False)
    for row in range(3):
        original = _panel(grid, row, 0)
        assert (_panel(grid, row, 2) - original).abs().max() <= 1
        assert (_panel(grid, row, 3) - original).abs().max() <= 1


def test_norm_pix_prediction_uses_each_patch_own_statistics() -> None:
    imgs = _normalized_images(3)
    target = patchify(imgs, P)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    pred = (target - mean) / (var + 1e-6).sqrt()
    grid = reconstruction_grid(imgs, pred, _random_mask(3, 16), P, norm_pix=True)
    for row in range(3):
        assert (_panel(grid, row, 2) - _panel(grid, row, 0)).abs().max() <= 1


def test_masked_panel_greys_exactly_the_masked_patches() -> None:
    imgs = _normalized_images(3)
    mask = _random_mask(3, 16)
    grid = reconstruction_grid(imgs, torch.zeros(3, 16, P * P * 3), mask, P, norm_pix=False)
    for row in range(3):
        original, masked = _panel(grid, row, 0), _panel(grid, row, 1)
        hidden = _pixel_mask(mask[row]).expand(3, -1, -1)
        assert torch.equal(masked[~hidden], original[~hidden])
        assert (masked[hidden] == 128).all()
        assert (original[hidden] != 128).any()


def test_pasted_panel_takes_visible_from_original_and_masked_from_prediction() -> None:
    imgs = _normalized_images(3)
    mask = _random_mask(3, 16)
    grid = reconstruction_grid(imgs, torch.zeros(3, 16, P * P * 3), mask, P, norm_pix=False)
    for row in range(3):
        hidden = _pixel_mask(mask[row]).expand(3, -1, -1)
        pasted = _panel(grid, row, 3)
        assert torch.equal(pasted[~hidden], _panel(grid, row, 0)[~hidden])
        assert torch.equal(pasted[hidden], _panel(grid, row, 2)[hidden])


def test_max_images_caps_rows() -> None:
    imgs = _normalized_images(5)
    grid = reconstruction_grid(imgs, patchify(imgs, P), _random_mask(5, 16), P, norm_pix=False, max_images=2)
    assert grid.shape[1] == 2 * (32 + PAD) + PAD


def test_bf16_prediction_accepted() -> None:
    imgs = _normalized_images(3)
    pred = patchify(imgs, P).to(torch.bfloat16)
    grid = reconstruction_grid(imgs, pred, _random_mask(3, 16), P, norm_pix=False)
    assert grid.dtype == torch.uint8
    # bf16 keeps about 3 significant digits: a couple of grey levels at most.
    assert (_panel(grid, 0, 2) - _panel(grid, 0, 0)).abs().max() <= 2


def test_mismatched_prediction_is_rejected() -> None:
    imgs = _normalized_images(2)
    with pytest.raises(ValueError, match="do not match"):
        reconstruction_grid(imgs, torch.zeros(2, 4, P * P * 3), _random_mask(2, 4), P, norm_pix=False)


def test_save_png_writes_readable_file_and_no_temp(tmp_path) -> None:
    imgs = _normalized_images(2)
    grid = reconstruction_grid(imgs, patchify(imgs, P), _random_mask(2, 16), P, norm_pix=False)
    path = tmp_path / "recon.png"
    save_png(grid, path)
    assert os.listdir(tmp_path) == ["recon.png"]
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (grid.shape[2], grid.shape[1])
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), grid)
