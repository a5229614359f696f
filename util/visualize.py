"""Reconstruction pictures for masked image modeling: original | masked | reconstruction | reconstruction + visible."""
import os
import tempfile

import torch
from PIL import Image
from torchvision.utils import make_grid

from models.patches import patchify, unpatchify

# Kept here rather than imported from util.data so that visualization has no dependency on the data pipeline.
from util.data import IMAGENET_MEAN, IMAGENET_STD

_MASK_GREY = 0.5  # fill value of masked patches in the "masked" panel


@torch.no_grad()
def reconstruction_grid(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int,
                        norm_pix: bool, mean: tuple[float, float, float] = IMAGENET_MEAN,
                        std: tuple[float, float, float] = IMAGENET_STD, max_images: int = 8) -> torch.Tensor:
    """Build a picture with one row of four panels per sample.

    imgs: [N, 3, H, W] normalized model input (``(pixel - mean) / std``).
    pred: [N, L, p*p*3] prediction in the target space (any float dtype, e.g. bf16); L = (H/p) * (W/p).
    mask: [N, L] bool, True = masked.
    norm_pix: the target was per-patch normalized (MAE ``norm_pix_loss``); the prediction is mapped back with
        each patch's own mean and unbiased variance, taken from the original image.
    Returns uint8 [3, H_grid, W_grid] with ``min(N, max_images)`` rows, made by ``make_grid(nrow=4, padding=2)``.
    """
    imgs = imgs[:max_images].detach().to("cpu", torch.float32)
    pred = pred[:max_images].detach().to("cpu", torch.float32)
    mask = mask[:max_images].detach().to("cpu", torch.bool)
    n, _, h, w = imgs.shape
    grid_size = (h // patch_size, w // patch_size)

    target = patchify(imgs, patch_size)  # [n, L, p*p*3]
    if pred.shape != target.shape or mask.shape != target.shape[:2]:
        raise ValueError(f"pred {tuple(pred.shape)} and mask {tuple(mask.shape)} do not match the "
                         f"{tuple(target.shape)} patches of images {tuple(imgs.shape)} at patch size {patch_size}")
    if norm_pix:
        # Inverse of the MAE target (t - mean) / sqrt(var + 1e-6); torch.var is unbiased, as in MAE.
        patch_mean = target.mean(dim=-1, keepdim=True)
        patch_var = target.var(dim=-1, keepdim=True)
        pred = pred * (patch_var + 1e-6).sqrt() + patch_mean

    channel_mean = torch.tensor(mean).view(1, 3, 1, 1)
    channel_std = torch.tensor(std).view(1, 3, 1, 1)

    def to_pixels(x: torch.Tensor) -> torch.Tensor:
        """Normalized [n, 3, h, w] -> displayable pixels in [0, 1]."""
        return (x * channel_std + channel_mean).clamp(0, 1)

    original = to_pixels(imgs)
    reconstruction = to_pixels(unpatchify(pred, patch_size, grid_size))
    # Spread the patch mask to pixels through the same layout as the images: [n, L] -> [n, 3, h, w].
    pixel_mask = unpatchify(mask[..., None].expand_as(target).float(), patch_size, grid_size).bool()
    masked = original.masked_fill(pixel_mask, _MASK_GREY)
    pasted = torch.where(pixel_mask, reconstruction, original)

    # Interleave per sample so each grid row reads original, masked, reconstruction, reconstruction + visible.
    panels = torch.stack([original, masked, reconstruction, pasted], dim=1).reshape(n * 4, 3, h, w)
    grid = make_grid(panels, nrow=4, padding=2)
    return (grid * 255).round().clamp(0, 255).to(torch.uint8)


def save_png(grid: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a uint8 [3, H, W] picture as PNG; a reader never sees a half-written file (temp file + os.replace)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    image = Image.fromarray(grid.detach().cpu().permute(1, 2, 0).contiguous().numpy())
    # The temp file lives in the target folder so os.replace is a same-filesystem rename, hence atomic.
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp_path, path)
    except BaseException:
        os.unlink(tmp_path)
        raise
