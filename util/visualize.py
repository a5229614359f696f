"""Pictures of what a masked-image model predicts: one row of titled panels per sample.

Pixel targets: original | masked | reconstruction | reconstruction + visible, and with a norm-pix target a
fifth panel, reconstruction + visible de-normalized with statistics of the visible patches only (below).
HOG targets (DMJD, MaskFeat): original | masked | HOG target | HOG prediction, drawn as glyphs. Feature
targets (CLIP) have no picture (``no_picture_reason``).

Why the fifth panel. A norm-pix model predicts each masked patch up to its mean and spread (MAE's target is
``(t - mean) / sqrt(var + 1e-6)`` per patch). The usual picture maps the prediction back with each masked
patch's *true* mean and variance, so the coarse content of every masked patch comes from the ground truth:
an untrained model already looks good and epoch 0 is hard to tell from epoch 4. The fifth panel uses what
the model could know instead: every masked patch gets the average over the image's *visible* patches of
their means and of their standard deviations (the same per-patch statistics as the target, over all
p*p*3 values). The per-channel (colour) offsets inside a patch are the prediction's own, which is why the
statistics are per patch and not per channel: per-channel visible means would add the colour twice.
"""
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.utils import make_grid

from base.images import IMAGENET_MEAN, IMAGENET_STD
from models.hog import HogTarget, MaskFeatHogTarget, patches_to_cells
from models.interfaces import Masks
from models.patches import patchify, unpatchify
from models.targets import CLIPTarget, FrozenTeacherTarget, PixelTarget
from util.output_files import atomic_write
from util.session import autocast

_MASK_GREY = 0.5  # fill value of masked patches in the "masked" panel
_PAD = 2  # make_grid padding between panels, in pixels
MIN_PANEL_WIDTH = 128  # narrower images are enlarged (nearest neighbour) so that the titles fit
TITLE_FONT_SIZE = 12
_PATCH_EPS = 1e-6  # MAE's norm-pix eps inside the sqrt

TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
NORM_PIX_TITLES = ("original", "masked", "reconstruction (true mean/std of each masked patch)",
                   "reconstruction + visible", "reconstruction + visible (mean/std of visible patches only)")
HOG_TITLES = ("original", "masked", "HOG target", "HOG prediction (masked) + target (visible)")


@dataclass
class Panels:
    """titles: one per column; images: [n, len(titles), 3, h, w] float in [0, 1]."""

    titles: tuple[str, ...]
    images: torch.Tensor


def _to_pixels(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Normalized [n, 3, h, w] -> displayable pixels in [0, 1]."""
    return (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)


def _pixel_mask(mask: torch.Tensor, patch_size: int, channels: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """Patch mask [n, L] bool -> pixel mask [n, channels, h, w] bool, through the images' patch layout."""
    per_patch = mask[..., None].expand(*mask.shape, patch_size * patch_size * channels).float()
    return unpatchify(per_patch, patch_size, grid_size).bool()


def _check_shapes(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patches: int) -> None:
    """One-line error unless pred [N, L, ...] and mask [N, L] have a row per image and per patch."""
    if pred.shape[:2] != (len(imgs), patches) or mask.shape != pred.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and mask {tuple(mask.shape)} do not match the {patches} "
                         f"patches of images {tuple(imgs.shape)}")


def _cpu(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
         max_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``max_images`` of each on the CPU: images and prediction as float32, the mask as bool."""
    return (imgs[:max_images].detach().to("cpu", torch.float32), pred[:max_images].detach().to("cpu", torch.float32),
            mask[:max_images].detach().to("cpu", torch.bool))


def visible_patch_stats(target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation a masked patch is given in the visible-statistics panel.

    target: [n, L, D] patches of the normalized image; mask: [n, L] bool (True = masked).
    Returns (mean, std), each [n, 1, 1]: the averages over the visible patches of each patch's mean and of
    its ``sqrt(unbiased var + 1e-6)`` (norm-pix's own statistics). No masked patch's value enters. An image
    with no visible patch gets mean 0 and std 0.
    """
    visible = (~mask).float()[..., None]  # [n, L, 1]
    count = visible.sum(dim=1, keepdim=True).clamp(min=1)
    patch_mean = target.mean(dim=-1, keepdim=True)
    patch_std = (target.var(dim=-1, keepdim=True) + _PATCH_EPS).sqrt()
    return (patch_mean * visible).sum(1, keepdim=True) / count, (patch_std * visible).sum(1, keepdim=True) / count


@torch.no_grad()
def pixel_panels(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool,
                 mean: tuple[float, float, float] = IMAGENET_MEAN, std: tuple[float, float, float] = IMAGENET_STD,
                 max_images: int = 8) -> Panels:
    """The panels of a pixel-target model (``TITLES``, or ``NORM_PIX_TITLES`` with ``norm_pix``).

    imgs: [N, 3, H, W] normalized model input (``(pixel - mean) / std``).
    pred: [N, L, p*p*3] prediction in the target space (any float dtype, e.g. bf16); L = (H/p) * (W/p).
    mask: [N, L] bool, True = masked.
    norm_pix: the target was per-patch normalized (MAE ``norm_pix_loss``): "reconstruction" maps the
        prediction back with each patch's own mean and unbiased variance, taken from the original image; the
        fifth panel with the visible patches' statistics (``visible_patch_stats``).
    Returns ``min(N, max_images)`` rows.
    """
    imgs, pred, mask = _cpu(imgs, pred, mask, max_images)
    n, channels, h, w = imgs.shape
    grid_size = (h // patch_size, w // patch_size)
    target = patchify(imgs, patch_size)  # [n, L, p*p*3]
    _check_shapes(imgs, pred, mask, target.shape[1])
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} does not match the {tuple(target.shape)} patches of images "
                         f"{tuple(imgs.shape)} at patch size {patch_size}")

    def pixels(patches: torch.Tensor) -> torch.Tensor:
        return _to_pixels(unpatchify(patches, patch_size, grid_size), mean, std)

    original = _to_pixels(imgs, mean, std)
    pixel_mask = _pixel_mask(mask, patch_size, channels, grid_size)
    masked = original.masked_fill(pixel_mask, _MASK_GREY)
    if not norm_pix:
        reconstruction = pixels(pred)
        pasted = torch.where(pixel_mask, reconstruction, original)
        return Panels(TITLES, torch.stack([original, masked, reconstruction, pasted], dim=1))
    # Inverse of the MAE target (t - mean) / sqrt(var + 1e-6), with each patch's true statistics.
    true_std = (target.var(dim=-1, keepdim=True) + _PATCH_EPS).sqrt()
    reconstruction = pixels(pred * true_std + target.mean(dim=-1, keepdim=True))
    pasted = torch.where(pixel_mask, reconstruction, original)
    vis_mean, vis_std = visible_patch_stats(target, mask)
    honest = torch.where(pixel_mask, pixels(pred * vis_std + vis_mean), original)
    return Panels(NORM_PIX_TITLES, torch.stack([original, masked, reconstruction, pasted, honest], dim=1))


@dataclass(frozen=True)
class HogLayout:
    """How a HOG target lays out one patch's vector (``models.hog.cells_to_patches``) and how its bins map to
    edges. edge_angles: [nbins] radians, the direction of the edge each bin stands for, in image coordinates
    (x = column to the right, y = row downwards); the edge is perpendicular to the binned gradient."""

    cell: int
    nbins: int
    channels: int
    layout: str
    edge_angles: torch.Tensor


def hog_layout(target: nn.Module) -> HogLayout | None:
    """The ``HogLayout`` of a DMJD or MaskFeat HOG target, or None for another target."""
    if isinstance(target, HogTarget):
        # bin d holds gradient angles atan2(g_row, g_col) in [d, d+1) * pi / nbins: the edge is 90 degrees on
        centres = (torch.arange(target.nbins) + 0.5) * math.pi / target.nbins
        return HogLayout(target.cell_size, target.nbins, target.in_chans, "dmjd", centres + math.pi / 2)
    if isinstance(target, MaskFeatHogTarget):
        # bin d holds atan2(gx, gy) in [d, d+1) * pi / nbins with gx = left - right, gy = top - bottom: that is
        # pi/2 minus the gradient's angle (mod pi), so the edge (gradient + pi/2) lies at minus the bin's angle
        centres = (torch.arange(target.nbins) + 0.5) * math.pi / target.nbins
        return HogLayout(target.pool, target.nbins, target.in_chans, "maskfeat", -centres)
    return None


def glyph_stencils(edge_angles: torch.Tensor, cell: int) -> torch.Tensor:
    """One anti-aliased line per bin through the middle of a cell: [nbins, cell, cell] in [0, 1].

    A pixel's value falls linearly with its centre's distance from the line (1 on it, 0 from one pixel
    away) and is 0 past half a cell along it."""
    coords = torch.arange(cell, dtype=torch.float32) + 0.5 - cell / 2
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # row, column offsets from the cell's centre
    cos, sin = edge_angles.float().cos().view(-1, 1, 1), edge_angles.float().sin().view(-1, 1, 1)
    across = (y * cos - x * sin).abs()
    along = (x * cos + y * sin).abs()
    return (1 - across).clamp(min=0) * (along <= cell / 2)


def hog_glyphs(cells: torch.Tensor, edge_angles: torch.Tensor, cell: int) -> torch.Tensor:
    """HOG glyph picture: every cell's bins drawn as lines along their edges, each weighted by the bin's value.

    cells: [N, Hc, Wc, nbins] non-negative weights. Returns [N, Hc*cell, Wc*cell]: the weighted sum of the
    bins' lines (``glyph_stencils``), not clamped."""
    n, hc, wc, _ = cells.shape
    drawn = torch.einsum("nhwb,bij->nhiwj", cells.float(), glyph_stencils(edge_angles, cell))
    return drawn.reshape(n, hc * cell, wc * cell)


@torch.no_grad()
def hog_panels(imgs: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               patch_size: int, spec: HogLayout, mean: tuple[float, float, float] = IMAGENET_MEAN,
               std: tuple[float, float, float] = IMAGENET_STD, max_images: int = 8) -> Panels:
    """The panels of a HOG-target model (``HOG_TITLES``).

    imgs: [N, 3, H, W] normalized input; pred, target: [N, L, D] the head's prediction and the HOG target
    (``spec`` says their layout); mask: [N, L] bool (True = masked).
    Each cell's glyph sums its channels' histograms, negative values (below a whitened histogram's mean)
    left out; prediction and target share one brightness scale per image, the target's largest glyph
    pixel at full white. The prediction panel draws the prediction in the masked patches and the target in
    the visible ones.
    """
    target = target[:max_images].detach().to("cpu", torch.float32)
    imgs, pred, mask = _cpu(imgs, pred, mask, max_images)
    n, channels, h, w = imgs.shape
    grid_size = (h // patch_size, w // patch_size)
    _check_shapes(imgs, pred, mask, grid_size[0] * grid_size[1])
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} does not match the HOG target {tuple(target.shape)}")
    patch_mask = mask[..., None].expand_as(pred)
    k = patch_size // spec.cell

    def glyphs(x: torch.Tensor) -> torch.Tensor:  # [n, L, D] -> [n, h, w]
        cells = patches_to_cells(x, grid_size, k, spec.nbins, spec.channels, spec.layout)
        return hog_glyphs(cells.clamp(min=0).sum(dim=1), spec.edge_angles, spec.cell)

    target_glyphs = glyphs(target)
    scale = target_glyphs.flatten(1).amax(dim=1).clamp(min=1e-12).view(n, 1, 1)
    drawn = [(g / scale).clamp(0, 1)[:, None].expand(n, 3, h, w)
             for g in (target_glyphs, glyphs(torch.where(patch_mask, pred, target)))]
    original = _to_pixels(imgs, mean, std)
    masked = original.masked_fill(_pixel_mask(mask, patch_size, channels, grid_size), _MASK_GREY)
    return Panels(HOG_TITLES, torch.stack([original, masked, *drawn], dim=1))


def _wrap(text: str, font: ImageFont.ImageFont, width: int, draw: ImageDraw.ImageDraw) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken between words (a longer word stands alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def title_strip(titles: tuple[str, ...], column_width: int, padding: int = _PAD) -> torch.Tensor:
    """White titles on black, one centred over each column of a ``make_grid`` row: uint8 [3, strip_h, W],
    W = len(titles) * (column_width + padding) + padding. Long titles wrap between words; PIL's default font."""
    width = len(titles) * (column_width + padding) + padding
    font = ImageFont.load_default(size=TITLE_FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    wrapped = [_wrap(t, font, column_width - 2, measure) for t in titles]
    line_height = TITLE_FONT_SIZE + 2
    strip = Image.new("L", (width, line_height * max(len(lines) for lines in wrapped) + 4), 0)
    draw = ImageDraw.Draw(strip)
    for col, lines in enumerate(wrapped):
        centre = padding + col * (column_width + padding) + column_width / 2
        for row, line in enumerate(lines):
            draw.text((centre, 2 + row * line_height), line, fill=255, font=font, anchor="ma")
    return torch.from_numpy(np.array(strip, dtype=np.uint8)).expand(3, -1, -1)


def titled_grid(panels: Panels, min_panel_width: int = MIN_PANEL_WIDTH) -> torch.Tensor:
    """One row per sample, one titled column per panel: uint8 [3, strip_h + rows, W].

    Panels narrower than ``min_panel_width`` are enlarged by the smallest whole factor that reaches it
    (nearest neighbour: every pixel stays a sharp square), so that titles fit over 32- or 64-pixel images.
    Below the title strip is ``make_grid(nrow=columns, padding=2)`` of the enlarged panels."""
    n, cols, _, h, w = panels.images.shape
    factor = max(1, math.ceil(min_panel_width / w))
    images = panels.images.reshape(n * cols, 3, h, w)
    images = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    grid = (make_grid(images, nrow=cols, padding=_PAD) * 255).round().clamp(0, 255).to(torch.uint8)
    return torch.cat([title_strip(panels.titles, w * factor), grid], dim=1)


def no_picture_reason(model: nn.Module) -> str | None:
    """Why ``model_picture`` draws nothing for ``model`` (its target is no picture), or None when it draws."""
    target = model.target
    if isinstance(target, PixelTarget) or hog_layout(target) is not None:
        return None
    if isinstance(target, FrozenTeacherTarget):
        what = "CLIP features" if isinstance(target, CLIPTarget) else "a teacher network's features"
        return f"the target is {what} ({type(target).__name__}), which have no picture"
    return f"the target {type(target).__name__} has no picture"


@torch.no_grad()
def model_picture(model: nn.Module, imgs: torch.Tensor, masks: Masks | torch.Tensor,
                  amp_dtype: torch.dtype | None = None, max_images: int = 8) -> torch.Tensor | None:
    """Run ``model`` (a ``MaskedImageModel``, put in eval mode) on ``imgs`` [N, 3, H, W] with ``masks`` and
    draw its first branch's prediction against its target: the ``titled_grid`` (first view of each image),
    or None when ``no_picture_reason`` gives one or the branch predicts only some tokens."""
    if no_picture_reason(model) is not None:
        return None
    model.eval()
    with autocast(imgs.device, amp_dtype):
        out = model(imgs, mask=masks)
    n = len(imgs)
    pred, mask, target = next(iter(out.pred.values()))[:n], out.mask[:n], model.target
    if pred.shape[:2] != mask.shape:
        return None
    if isinstance(target, PixelTarget):
        panels = pixel_panels(imgs, pred, mask, target.patch_size, target.norm_pix, max_images=max_images)
    else:
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            hog = target(imgs)
        panels = hog_panels(imgs, pred, hog, mask, target.patch_size, hog_layout(target), max_images=max_images)
    return titled_grid(panels)


def save_png(grid: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a uint8 [3, H, W] picture as PNG; a reader never sees a half-written file, and the file gets the
    permissions of any other output (``util.output_files.atomic_write``)."""
    image = Image.fromarray(grid.detach().cpu().permute(1, 2, 0).contiguous().numpy())
    with atomic_write(path) as f:
        image.save(f, format="PNG")
