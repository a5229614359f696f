"""The official MAE-family initialization (docs/methods.md §1.3, pitfall 14)."""
import math

import torch
from torch import nn


def init_linear_and_norm(module: nn.Module) -> None:
    """``module.apply`` target: xavier-uniform Linear (fused qkv as one matrix), zero bias; LN 1/0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_conv_as_linear(conv: nn.Conv2d) -> None:
    """Xavier-uniform on the patch-embedding kernel viewed as a [out, in*k*k] matrix."""
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))


def init_token(token: torch.Tensor) -> None:
    """cls / mask tokens: normal, std 0.02 (timm's trunc_normal at this std is effectively normal)."""
    nn.init.normal_(token, std=0.02)


def init_conv_fan_out(module: nn.Module) -> None:
    """``module.apply`` target: Conv2d weights normal(0, sqrt(2 / fan_out)), zero bias (the official Swin/PVT
    init)."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
