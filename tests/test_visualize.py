"""Tests for util/visualize.py: panels of pixel and HOG targets, the visible-statistics panel, titles, glyphs,
whole-model pictures and PNG writing."""
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine_pretrain import ReconstructionProbe
from models import create_model
from models.hog import HogTarget, MaskFeatHogTarget, cells_to_patches
from models.hog import patches_to_cells
from models.patches import patchify
from models.targets import FrozenTeacherTarget
from util.visualize import (HOG_TITLES, IMAGENET_MEAN, IMAGENET_STD, NORM_PIX_TITLES, TITLES, HogLayout, Panels,
                            glyph_stencils, hog_glyphs, hog_layout, hog_panels, model_picture, no_picture_reason,
                            pixel_panels, save_png, title_strip, titled_grid)

P = 8  # patch size
PAD = 2  # make_grid padding


def _normalized_images(n: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """[n, 3, h, w] ImageNet-normalized images whose pixels lie in [0, 1], so clamping never hides an error."""
    pixels = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _random_mask(n: int, length: int) -> torch.Tensor:
    """[n, length] bool with a mix of masked and visible patches in every row."""
    mask = torch.rand(n, length, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[:, 0], mask[:, 1] = True, False
    return mask


def _pixel_mask(mask: torch.Tensor, h: int = 32, w: int = 32) -> torch.Tensor:
    """[L] patch mask -> [3, h, w] pixel mask (raster patch order)."""
    return mask.view(h // P, w // P).repeat_interleave(P, 0).repeat_interleave(P, 1).expand(3, -1, -1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Panels in [0, 1] as the grey levels they are drawn with."""
    return (x * 255).round()


@pytest.mark.parametrize("h, w", [(32, 32), (32, 48)])
def test_panels_shape_and_titles(h: int, w: int) -> None:
    imgs = _normalized_images(3, h, w)
    pred = torch.randn(3, (h // P) * (w // P), P * P * 3)
    plain = pixel_panels(imgs, pred, _random_mask(3, pred.shape[1]), P, norm_pix=False)
    assert plain.titles == TITLES and plain.images.shape == (3, 4, 3, h, w)
    norm = pixel_panels(imgs, pred, _random_mask(3, pred.shape[1]), P, norm_pix=True)
    assert norm.titles == NORM_PIX_TITLES and norm.images.shape == (3, 5, 3, h, w)
    assert 0 <= norm.images.min() and norm.images.max() <= 1


def test_perfect_prediction_reconstructs_original() -> None:
    imgs = _normalized_images(3)
    panels = pixel_panels(imgs, patchify(imgs, P), _random_mask(3, 16), P, norm_pix=False).images
    torch.testing.assert_close(panels[:, 2], panels[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(panels[:, 3], panels[:, 0], rtol=0, atol=1e-6)


def test_norm_pix_prediction_uses_each_patch_own_statistics() -> None:
    imgs = _normalized_images(3)
    target = patchify(imgs, P)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    panels = pixel_panels(imgs, (target - mean) / (var + 1e-6).sqrt(), _random_mask(3, 16), P, norm_pix=True).images
    torch.testing.assert_close(panels[:, 2], panels[:, 0], rtol=0, atol=1e-5)


def test_visible_stats_panel_by_hand() -> None:
    """Masked patches of panel 5 are pred * s + m with m, s the averages over the visible patches of each patch's
    mean and sqrt(unbiased var + 1e-6), computed here patch by patch; visible patches are the original."""
    imgs = _normalized_images(2)
    mask = _random_mask(2, 16)
    pred = torch.randn(2, 16, P * P * 3, generator=torch.Generator().manual_seed(2))
    panels = pixel_panels(imgs, pred, mask, P, norm_pix=True).images
    target = patchify(imgs, P)
    for i in range(2):
        visible = [j for j in range(16) if not mask[i, j]]
        m = sum(target[i, j].mean().item() for j in visible) / len(visible)
        s = sum(math.sqrt(target[i, j].var().item() + 1e-6) for j in visible) / len(visible)
        expected = pred[i] * s + m  # [16, p*p*3] normalized, in the target's patch layout
        expected = torch.where(mask[i, :, None], expected, target[i])
        expected_pixels = patchify(panels[i:i + 1, 4], P)[0]  # the panel's pixels back in patch layout
        mean = torch.tensor(IMAGENET_MEAN).repeat(P * P)
        std = torch.tensor(IMAGENET_STD).repeat(P * P)
        torch.testing.assert_close(expected_pixels, (expected * std + mean).clamp(0, 1), rtol=0, atol=1e-5)


def test_visible_stats_panel_ignores_masked_truth() -> None:
    """Changing the true pixels of the masked patches leaves the visible-statistics panel as it was, while the
    true-statistics reconstruction changes with them."""
    imgs = _normalized_images(2)
    mask = _random_mask(2, 16)
    pred = torch.randn(2, 16, P * P * 3, generator=torch.Generator().manual_seed(2))
    hidden = torch.stack([_pixel_mask(m) for m in mask])
    other = torch.where(hidden, 0.5 * imgs.flip(-1) + 0.7, imgs)  # other content, brighter, less contrast
    before = pixel_panels(imgs, pred, mask, P, norm_pix=True).images
    after = pixel_panels(other, pred, mask, P, norm_pix=True).images
    assert torch.equal(after[:, 4], before[:, 4])
    assert (after[:, 2] - before[:, 2])[hidden].abs().max() > 0.05


def test_masked_panel_greys_exactly_the_masked_patches() -> None:
    imgs = _normalized_images(3)
    mask = _random_mask(3, 16)
    panels = pixel_panels(imgs, torch.zeros(3, 16, P * P * 3), mask, P, norm_pix=False).images
    for row in range(3):
        original, masked = panels[row, 0], panels[row, 1]
        hidden = _pixel_mask(mask[row])
        assert torch.equal(masked[~hidden], original[~hidden])
        assert (masked[hidden] == 0.5).all()


def test_pasted_panel_takes_visible_from_original_and_masked_from_prediction() -> None:
    imgs = _normalized_images(3)
    mask = _random_mask(3, 16)
    panels = pixel_panels(imgs, torch.zeros(3, 16, P * P * 3), mask, P, norm_pix=False).images
    for row in range(3):
        hidden = _pixel_mask(mask[row])
        pasted = panels[row, 3]
        assert torch.equal(pasted[~hidden], panels[row, 0][~hidden])
        assert torch.equal(pasted[hidden], panels[row, 2][hidden])


def test_max_images_caps_rows() -> None:
    imgs = _normalized_images(5)
    panels = pixel_panels(imgs, patchify(imgs, P), _random_mask(5, 16), P, norm_pix=False, max_images=2)
    assert panels.images.shape[0] == 2


def test_bf16_prediction_accepted() -> None:
    imgs = _normalized_images(3)
    panels = pixel_panels(imgs, patchify(imgs, P).to(torch.bfloat16), _random_mask(3, 16), P, norm_pix=False)
    # bf16 keeps about 3 significant digits: a couple of grey levels at most.
    assert (_grey(panels.images[:, 2]) - _grey(panels.images[:, 0])).abs().max() <= 2


def test_mismatched_prediction_is_rejected() -> None:
    imgs = _normalized_images(2)
    with pytest.raises(ValueError, match="do not match"):
        pixel_panels(imgs, torch.zeros(2, 4, P * P * 3), _random_mask(2, 4), P, norm_pix=False)


def test_titled_grid_layout_enlarges_small_panels_and_keeps_their_pixels() -> None:
    """32-px panels are enlarged 4x (to 128 px); below the title strip sits make_grid of the enlarged panels."""
    imgs = _normalized_images(2)
    panels = pixel_panels(imgs, patchify(imgs, P), _random_mask(2, 16), P, norm_pix=False)
    grid = titled_grid(panels)
    side = 32 * 4
    strip_h = grid.shape[1] - (2 * (side + PAD) + PAD)
    assert grid.dtype == torch.uint8 and grid.shape[2] == 4 * (side + PAD) + PAD and strip_h > 0
    for row in range(2):
        for col in range(4):
            top, left = strip_h + PAD + row * (side + PAD), PAD + col * (side + PAD)
            cut = grid[:, top:top + side, left:left + side]
            expected = _grey(panels.images[row, col]).repeat_interleave(4, 1).repeat_interleave(4, 2)
            assert torch.equal(cut, expected.to(torch.uint8))


def test_title_strip_has_text_over_every_column() -> None:
    """The strip is not blank: each column's part has bright text pixels, and different titles differ."""
    strip = title_strip(("original", "masked", "reconstruction"), column_width=128)
    assert strip.shape[0] == 3 and strip.shape[2] == 3 * (128 + PAD) + PAD
    columns = [strip[0, :, PAD + c * (128 + PAD):PAD + c * (128 + PAD) + 128] for c in range(3)]
    for column in columns:
        assert (column > 200).sum() >= 20  # glyph strokes, not a stray pixel
    assert not torch.equal(columns[0], columns[1])
    assert title_strip(("original",), column_width=128).amax() == 255


def test_long_titles_wrap_into_a_taller_strip() -> None:
    one_line = title_strip(("masked",), column_width=128)
    wrapped = title_strip((NORM_PIX_TITLES[4],), column_width=128)
    assert wrapped.shape[1] >= 2 * one_line.shape[1] - 8


def test_titled_grid_of_norm_pix_panels_shows_all_five_titles() -> None:
    imgs = _normalized_images(1)
    grid = titled_grid(pixel_panels(imgs, patchify(imgs, P), _random_mask(1, 16), P, norm_pix=True))
    side = 128
    strip_h = grid.shape[1] - (side + 2 * PAD)
    for col in range(5):
        left = PAD + col * (side + PAD)
        assert (grid[0, :strip_h, left:left + side] > 200).sum() >= 20


# ----------------------------------------------------------------------------------------------------- HOG


@pytest.mark.parametrize("layout", ["dmjd", "maskfeat"])
def test_patches_to_cells_inverts_cells_to_patches(layout: str) -> None:
    hist = torch.randn(2, 3, 4, 6, 9)  # [N, C, Hc, Wc, nbins]: 2x3 patches of 2x2 cells
    patches = cells_to_patches(hist, 2, layout=layout)
    assert torch.equal(patches_to_cells(patches, (2, 3), 2, 9, 3, layout), hist)


def test_glyph_stencil_draws_the_line_of_its_angle() -> None:
    stencils = glyph_stencils(torch.tensor([0.0, math.pi / 2]), cell=8)
    assert stencils.shape == (2, 8, 8)
    horizontal, vertical = stencils
    # a line through the middle: the two middle rows (columns) at 0.5, nothing two pixels away
    assert torch.allclose(horizontal[3:5], torch.full((2, 8), 0.5)) and horizontal[:2].sum() == 0
    assert torch.allclose(vertical, horizontal.T, atol=1e-6)


def test_hog_glyphs_shape_and_response() -> None:
    angles = torch.tensor([0.0, math.pi / 2, math.pi / 4])
    cells = torch.zeros(2, 3, 4, 3)
    assert torch.equal(hog_glyphs(cells, angles, 8), torch.zeros(2, 24, 32))
    cells[0, 1, 2, 1] = 2.0  # image 0, cell (1, 2): a vertical line of weight 2
    glyphs = hog_glyphs(cells, angles, 8)
    assert glyphs.shape == (2, 24, 32)
    lit = glyphs[0].nonzero()
    assert lit[:, 0].min() >= 8 and lit[:, 0].max() < 16 and lit[:, 1].min() >= 16 and lit[:, 1].max() < 24
    assert torch.allclose(glyphs[0, 8:16, 16:24], 2 * glyph_stencils(angles, 8)[1])
    assert glyphs[1].abs().sum() == 0


def _stripes(direction: str, size: int = 32) -> torch.Tensor:
    """[1, 3, size, size] normalized image of stripes 4 px wide whose edges are all ``vertical`` or all
    ``rising`` (the diagonal from bottom left to top right: rows + columns constant)."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = cols if direction == "vertical" else rows + cols
    pixels = ((phase // 4) % 2).float().expand(1, 3, size, size) * 0.8 + 0.1
    pixels = (pixels * 255).round() / 255
    return (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("target", [HogTarget(patch_size=16, cell_size=8), MaskFeatHogTarget(patch_size=16, pool=8)])
def test_hog_glyphs_follow_the_image_edges(target: nn.Module) -> None:
    """Each recipe's bin-to-angle convention: an image with only vertical edges gives glyphs whose light lies on
    each cell's middle columns, not its middle rows; one with only rising diagonal edges, on the cell's rising
    diagonal (row + column = 7), not the falling one."""
    spec = hog_layout(target)

    def light_per_cell_position(direction: str) -> torch.Tensor:  # [8, 8]: light summed over all cells
        cells = patches_to_cells(target(_stripes(direction)), (2, 2), 2, spec.nbins, spec.channels, spec.layout)
        glyphs = hog_glyphs(cells.clamp(min=0).sum(1), spec.edge_angles, spec.cell)[0]
        return glyphs.view(4, 8, 4, 8).sum((0, 2))

    vertical = light_per_cell_position("vertical")
    middle_columns, middle_rows = vertical[:, 3:5].sum(), vertical[3:5, :].sum()
    assert middle_columns > 0.5 * vertical.sum() and middle_columns > 2 * middle_rows
    rising = light_per_cell_position("rising")
    assert rising.flip(1).diagonal().sum() > 3 * rising.diagonal().sum()


def test_hog_panels_shape_and_prediction_only_in_masked_patches() -> None:
    target_module = HogTarget(patch_size=16, cell_size=8)
    spec = hog_layout(target_module)
    imgs = _normalized_images(2, 32, 32)
    target = target_module(imgs)
    mask = torch.tensor([[True, False, False, True], [False, True, False, False]])
    exact = hog_panels(imgs, target, target, mask, 16, spec)
    assert exact.titles == HOG_TITLES and exact.images.shape == (2, 4, 3, 32, 32)
    assert torch.equal(exact.images[:, 3], exact.images[:, 2])  # a perfect prediction draws the target
    assert exact.images[:, 2].amax() == 1.0
    wrong = hog_panels(imgs, torch.zeros_like(target), target, mask, 16, spec).images
    hidden = torch.stack([m.view(2, 2).repeat_interleave(16, 0).repeat_interleave(16, 1) for m in mask])
    hidden = hidden[:, None].expand(2, 3, 32, 32)
    changed = wrong[:, 3] != exact.images[:, 3]
    assert changed.any() and not changed[~hidden].any()


# ------------------------------------------------------------------------------------------- whole models

TINY_MAE = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                decoder_depth=1, decoder_num_heads=2)


@pytest.mark.parametrize("norm_pix, columns", [(False, 4), (True, 5)])
def test_model_picture_of_a_pixel_model(norm_pix: bool, columns: int) -> None:
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch16", norm_pix_loss=norm_pix, **TINY_MAE)
    imgs = _normalized_images(3)
    grid = model_picture(model, imgs, model.sample_masks(imgs, torch.Generator().manual_seed(0)))
    assert grid.dtype == torch.uint8 and grid.shape[2] == columns * (128 + PAD) + PAD
    assert not model.training


@pytest.mark.parametrize("name", ["dmjd_vit_base_patch16_hog", "maskfeat_vit_base_patch16"])
def test_model_picture_of_a_hog_model(name: str) -> None:
    torch.manual_seed(0)
    # 8-px patches: a 32-px image has four 2x2 blocks, of which block masking keeps some visible
    model = create_model(name, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         **({"decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2}
                            if name.startswith("dmjd") else {}))
    assert no_picture_reason(model) is None
    imgs = _normalized_images(2)
    grid = model_picture(model, imgs, model.sample_masks(imgs, torch.Generator().manual_seed(0)))
    assert grid.shape[2] == 4 * (128 + PAD) + PAD and grid.shape[1] > 2 * (128 + PAD)


def test_feature_target_has_no_picture_and_the_probe_says_so_once(tmp_path, capsys) -> None:
    model = SimpleNamespace(target=FrozenTeacherTarget(nn.Identity(), IMAGENET_MEAN, IMAGENET_STD, out_dim=8))
    assert "no picture" in no_picture_reason(model)
    assert model_picture(model, _normalized_images(1), torch.zeros(1, 16, dtype=torch.bool)) is None
    probe = ReconstructionProbe(_normalized_images(1), None)
    for epoch in range(2):
        probe.draw(model, str(tmp_path), None, epoch, None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "no picture" in lines[0]
    assert os.listdir(tmp_path) == []


def test_save_png_writes_readable_file_and_no_temp(tmp_path) -> None:
    imgs = _normalized_images(2)
    grid = titled_grid(pixel_panels(imgs, patchify(imgs, P), _random_mask(2, 16), P, norm_pix=False))
    path = tmp_path / "recon.png"
    save_png(grid, path)
    assert os.listdir(tmp_path) == ["recon.png"]
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (grid.shape[2], grid.shape[1])
        assert torch.equal(torch.from_numpy(np.array(image)).permute(2, 0, 1), grid)


def test_panels_dataclass_holds_titles_per_column() -> None:
    panels = Panels(("a", "b"), torch.zeros(1, 2, 3, 8, 8))
    assert titled_grid(panels, min_panel_width=8).shape[2] == 2 * (8 + PAD) + PAD
    assert isinstance(hog_layout(MaskFeatHogTarget()), HogLayout) and hog_layout(nn.Identity()) is None
