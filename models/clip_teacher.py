"""Frozen CLIP image tower used as DeepMIM's regression target (docs/methods.md §3.3).

Parameter names are those of OpenAI CLIP's ``VisionTransformer`` without the ``visual.`` prefix
(``conv1.weight``, ``class_embedding``, ``positional_embedding``, ``ln_pre.*``,
``transformer.resblocks.{i}.{ln_1,attn,ln_2,mlp}.*``, ``ln_post.*``, ``proj``), so OpenAI and open_clip
ViT weights load strictly. Attention keeps ``nn.MultiheadAttention``'s parameter names but runs fused
``F.scaled_dot_product_attention``.
"""
import argparse
import math
import os
import re
import warnings
import zipfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from util.errors import UsageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class LayerNormFp32(nn.LayerNorm):
    """CLIP's LayerNorm: normalizes in float32 and returns the input's dtype (so it is fp32 under autocast
    too, and a half residual stream stays half)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class FusedMultiheadAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters (``in_proj_weight`` [3D, D] packing q, k, v;
    ``in_proj_bias``; ``out_proj``) on batch-first input, computed with ``F.scaled_dot_product_attention``."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L, D] -> [N, L, D]."""
        n, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, H, L, D/H]
        return self.out_proj(out.transpose(1, 2).reshape(n, length, dim))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNormFp32(width)
        self.attn = FusedMultiheadAttention(width, heads)
        self.ln_2 = LayerNormFp32(width)
        self.mlp = nn.Sequential()  # named children so the keys are mlp.c_fc.* / mlp.c_proj.*
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class CLIPVisualEncoder(nn.Module):
    """CLIP's image ViT returning every token projected to ``output_dim``: [N, 1 + L, output_dim].

    DeepMIM's variant: ``ln_post`` and ``proj`` are applied to all tokens (cls first, then the patches in
    raster order); official CLIP applies them to the class token only. Nothing casts the input or sets
    autocast: under the caller's autocast the matmuls run in half precision while the LayerNorms compute in
    fp32 (as DeepMIM, which runs the teacher inside the student's autocast), and the output is then half.
    The input must be ``input_resolution`` px square and normalized with ``CLIP_MEAN``/``CLIP_STD``.
    """

    def __init__(self, input_resolution: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, output_dim: int = 512):
        super().__init__()
        if input_resolution % patch_size:
            raise ValueError(f"input_resolution {input_resolution} is not a multiple of patch_size {patch_size}")
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.width, self.layers, self.heads, self.output_dim = width, layers, heads, output_dim
        self.grid_size = input_resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size ** 2 + 1, width))
        self.ln_pre = LayerNormFp32(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNormFp32(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, 3, H, W] CLIP-normalized -> [N, 1 + (H/p)(W/p), output_dim]."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, L, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x) @ self.proj


def _is_torchscript_archive(path: str) -> bool:
    """A TorchScript zip carries ``<root>/constants.pkl`` and ``<root>/code/``; a ``torch.save`` zip does not."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _read_weights(path: str) -> dict[str, Any]:
    """The mapping a CLIP file holds: a TorchScript archive's state dict, else ``torch.load(weights_only=True)``."""
    if _is_torchscript_archive(path):
        try:  # TorchScript deserializes only tensors and TorchScript code: no arbitrary Python objects
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.jit.load.* is deprecated", category=FutureWarning)
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
        except Exception as err:
            raise UsageError(f"cannot load --clip_path {path!r}: it is a TorchScript archive that fails to "
                             f"load ({type(err).__name__})") from err
    try:  # MAE-family checkpoints store args as a Namespace: allowed, so they reach the clear error below
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler's errors are pages long; say what matters in one line
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        reason = (f"it stores a Python object ({refused.group(1)}) that is not loaded for safety; "
                  "re-save only its tensors" if refused else "it is not a PyTorch checkpoint")
        raise UsageError(f"cannot load --clip_path {path!r}: {reason}") from err
    if not isinstance(loaded, dict):
        raise UsageError(f"--clip_path {path!r} holds a {type(loaded).__name__}, not a CLIP state dict")
    return loaded


def _visual_state_dict(loaded: dict[str, Any], path: str) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors without that prefix, after unwrapping ``state_dict``/``model`` and stripping
    DDP/compile prefixes; a bare visual state dict (``conv1.weight`` at the top) is taken as is."""
    for key in ("state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    tensors = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        tensors[key] = value
    visual = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
    if not visual and "conv1.weight" in tensors:
        visual = tensors
    if any(k.startswith("attnpool.") for k in visual):
        raise UsageError(f"--clip_path {path!r} holds a ResNet CLIP image encoder; only ViT CLIP models "
                         "are supported")
    needed = ("conv1.weight", "class_embedding", "positional_embedding", "proj")
    if not all(k in visual for k in needed):
        raise UsageError(f"--clip_path {path!r} holds no CLIP visual encoder (expected visual.conv1.weight, "
                         "visual.class_embedding, visual.positional_embedding and visual.proj)")
    return visual


def load_clip_teacher(path: str) -> CLIPVisualEncoder:
    """Build the CLIP image tower that ``path`` holds, its architecture inferred from the weights, loaded
    strictly, float32, in eval mode and with every parameter frozen (on the CPU).

    Reads an OpenAI TorchScript archive (``ViT-B-16.pt``), a ``torch.save``d CLIP state dict with ``visual.*``
    keys (DeepMIM's format), an open_clip checkpoint (``{"state_dict": {"module.visual.*": ...}}``), or a bare
    visual state dict. Heads are width // 64, which holds for OpenAI's ViTs (and open_clip's up to ViT-L).
    """
    if not os.path.isfile(path):
        raise UsageError(f"--clip_path {path!r} does not exist: pass a CLIP checkpoint such as ViT-B-16.pt")
    state = _visual_state_dict(_read_weights(path), path)
    conv = state["conv1.weight"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = sum(1 for k in state if re.fullmatch(r"transformer\.resblocks\.\d+\.attn\.in_proj_weight", k))
    grid = math.isqrt(state["positional_embedding"].shape[0] - 1)
    if conv.ndim != 4 or grid * grid + 1 != state["positional_embedding"].shape[0] or width % 64:
        raise UsageError(f"--clip_path {path!r} holds CLIP visual weights of an unsupported shape "
                         f"(conv1 {tuple(conv.shape)}, positional_embedding "
                         f"{tuple(state['positional_embedding'].shape)})")
    model = CLIPVisualEncoder(input_resolution=patch * grid, patch_size=patch, width=width, layers=layers,
                              heads=width // 64, output_dim=state["proj"].shape[1])
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        detail = "; ".join(f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        raise UsageError(f"--clip_path {path!r} does not match a CLIP ViT image encoder "
                         f"({detail or 'shape mismatch'})") from err
    model.eval()
    model.requires_grad_(False)
    return model
