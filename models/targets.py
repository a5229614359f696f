"""Prediction targets: what the heads regress, computed on the device from the input batch."""
import torch
from torch import nn

from .patches import patchify


class PixelTarget(nn.Module):
    """ImageNet-normalized pixels per patch, optionally normalized per patch (MAE ``--norm_pix_loss``).

    norm-pix uses each patch's mean and *unbiased* variance over all p*p*3 values, eps 1e-6 inside the
    sqrt (METHODS.md §1.1); only the target is normalized.
    """

    def __init__(self, patch_size: int, norm_pix: bool = False, eps: float = 1e-6):
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix = norm_pix
        self.eps = eps

    def out_dim(self, in_chans: int = 3) -> int:
        return self.patch_size ** 2 * in_chans

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, C, H, W] -> [N, L, p*p*C] float32."""
        target = patchify(imgs.float(), self.patch_size)
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + self.eps) ** 0.5
        return target

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, norm_pix={self.norm_pix}"
