"""Prediction targets: what the heads regress, computed on the device from the input batch."""
import torch
from torch import nn

from util.data import IMAGENET_MEAN, IMAGENET_STD

from .clip_teacher import CLIP_MEAN, CLIP_STD
from .patches import patchify


class PixelTarget(nn.Module):
    """ImageNet-normalized pixels per patch, optionally normalized per patch (MAE ``--norm_pix_loss``).

    norm-pix uses each patch's mean and *unbiased* variance over all p*p*3 values, eps 1e-6 inside the
    sqrt (docs/methods.md §1.1); only the target is normalized.
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


class CLIPTarget(nn.Module):
    """DeepMIM's target (docs/methods.md §3.3): the final-layer token features of a frozen CLIP image tower,
    [N, L, C] (cls dropped), for the same unmasked crop re-normalized from ImageNet to CLIP statistics.

    The teacher is deliberately not a registered submodule: it stays out of ``parameters()`` (so out of
    the optimizer and DDP), out of ``state_dict()`` (so out of checkpoints) and in eval mode whatever
    ``.train()`` is called on the model; ``.to()``/``.cuda()`` still move it. On a GPU it runs in bf16
    autocast, as the official code runs it inside the student's autocast.
    """

    def __init__(self, teacher: nn.Module):
        super().__init__()
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        imagenet = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        clip = torch.tensor(CLIP_MEAN), torch.tensor(CLIP_STD)
        # x_clip = (x_imagenet * std_in + mean_in - mean_clip) / std_clip = x_imagenet * scale + shift
        self.register_buffer("scale", (imagenet[1] / clip[1]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((imagenet[0] - clip[0]) / clip[1]).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        self.teacher._apply(fn)
        return super()._apply(fn, recurse)

    def out_dim(self, in_chans: int = 3) -> int:
        return self.teacher.output_dim

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] ImageNet-normalized -> teacher tokens [N, L, C] float32."""
        x = imgs.float() * self.scale + self.shift
        with torch.autocast(device_type=imgs.device.type, dtype=torch.bfloat16, enabled=imgs.is_cuda):
            out = self.teacher(x)
        return out[:, 1:].float()
