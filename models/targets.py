"""Prediction targets: what the heads regress, computed on the device from the input batch."""
from typing import Sequence

import torch
from torch import nn

from base.images import IMAGENET_MEAN, IMAGENET_STD

from .clip_teacher import CLIP_MEAN, CLIP_STD, CLIPVisionTransformer
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


def teacher_dtype(device: torch.device) -> torch.dtype:
    """The precision a frozen teacher is stored in on ``device``: bf16 on a GPU (the official DeepMIM engine
    ran its teacher inside the student's fp16 autocast; a frozen network needs no fp32 master weights, and
    bf16 halves its memory and bandwidth), fp32 elsewhere (exact, as the golden cases are)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class FrozenTeacherTarget(nn.Module):
    """The final token features of a frozen teacher network, [N, L, C] float32, for the same unmasked crop
    re-normalized from ImageNet to the teacher's statistics (``mean``/``std``, per channel).

    ``teacher``: [N, 3, H, W] normalized with ``mean``/``std`` -> [N, num_prefix_tokens + L, out_dim]; its
    prefix tokens (cls, registers) are dropped. A timm ``VisionTransformer`` with ``num_classes=0`` and
    ``global_pool=''`` is one (e.g. DINO's ViT, ``out_dim=model.num_features``, ``num_prefix_tokens=
    model.num_prefix_tokens``).

    The teacher is deliberately not a registered submodule: it stays out of ``parameters()`` (so out of
    the optimizer and DDP), out of ``state_dict()`` (so out of checkpoints) and in eval mode whatever
    ``.train()`` is called on the model; ``.to()``/``.cuda()`` still move it. It is stored in
    ``teacher_dtype(device)``, at construction and after every move, whatever dtype the model is cast to
    (moved back from a GPU, it keeps the bf16-rounded values). On a GPU it runs under bf16 autocast,
    overriding the caller's.
    """

    def __init__(self, teacher: nn.Module, mean: Sequence[float], std: Sequence[float], out_dim: int,
                 num_prefix_tokens: int = 1):
        super().__init__()
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self._store_teacher_precision()
        self.feature_dim = out_dim
        self.num_prefix_tokens = num_prefix_tokens
        imagenet = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        # x_teacher = (x_imagenet * std_in + mean_in - mean_t) / std_t = x_imagenet * scale + shift
        self.register_buffer("scale", (imagenet[1] / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((imagenet[0] - mean_t) / std_t).view(1, 3, 1, 1), persistent=False)

    def _store_teacher_precision(self) -> None:
        device = next(self.teacher.parameters(), torch.empty(0)).device
        self.teacher.to(teacher_dtype(device))

    def _apply(self, fn, recurse: bool = True):
        self.teacher._apply(fn)
        self._store_teacher_precision()
        return super()._apply(fn, recurse)

    def out_dim(self, in_chans: int = 3) -> int:
        return self.feature_dim

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] ImageNet-normalized -> teacher tokens [N, L, C] float32."""
        # in the teacher's own precision, whatever dtype the model (so scale/shift) was cast to
        x = (imgs.float() * self.scale + self.shift).to(teacher_dtype(imgs.device))
        with torch.autocast(device_type=imgs.device.type, dtype=torch.bfloat16, enabled=imgs.is_cuda):
            out = self.teacher(x)
        return out[:, self.num_prefix_tokens:].float()

    def extra_repr(self) -> str:
        return (f"teacher={type(self.teacher).__name__}, out_dim={self.feature_dim}, "
                f"num_prefix_tokens={self.num_prefix_tokens}")


class CLIPTarget(FrozenTeacherTarget):
    """DeepMIM's target (docs/methods.md §3.3): the final-layer token features of a frozen CLIP image tower
    (``load_clip_teacher``), [N, L, output_dim] with the class token dropped, on CLIP-normalized input."""

    def __init__(self, teacher: CLIPVisionTransformer):
        super().__init__(teacher, CLIP_MEAN, CLIP_STD, out_dim=teacher.output_dim, num_prefix_tokens=1)
