"""Frozen CLIP image tower used as DeepMIM's regression target (docs/methods.md §3.3).

The tower is timm's ``VisionTransformer`` in OpenAI CLIP's configuration (pre-norm ``ln_pre``, QuickGELU,
LayerNorms computed in fp32 with eps 1e-5, bias-free patch embedding); its architecture is inferred from
the checkpoint, and timm's OpenAI-CLIP converter (``checkpoint_filter_fn``) maps the OpenAI/open_clip
``visual.*`` weights onto it (``proj`` becomes the head, a ``Linear`` with zero bias).
"""
import math
import os
import re
import warnings
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import torch
from timm.layers import LayerNormFp32
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from base.errors import UsageError
from base.safe_load import extract_state_dict, safe_torch_load

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPVisionTransformer(VisionTransformer):
    """CLIP's image ViT returning every token projected to ``output_dim``: [N, 1 + L, output_dim].

    DeepMIM's variant: ``ln_post`` (timm's final ``norm``) and ``proj`` (the ``head``) are applied to all
    tokens, cls first, then the patches in raster order; official CLIP applies them to the class token only.
    With ``global_pool=''`` timm pools nothing and its head maps every token. Nothing casts the input or
    sets autocast: under the caller's autocast the matmuls run in half precision while the LayerNorms
    compute in fp32 (``LayerNormFp32`` returns its input's dtype, as CLIP's). The input must be
    ``input_resolution`` px square and normalized with ``CLIP_MEAN``/``CLIP_STD``.
    """

    def __init__(self, input_resolution: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 heads: int = 12, output_dim: int = 512):
        super().__init__(img_size=input_resolution, patch_size=patch_size, embed_dim=width, depth=layers,
                         num_heads=heads, num_classes=output_dim, global_pool="", class_token=True, pre_norm=True,
                         norm_layer=partial(LayerNormFp32, eps=1e-5), act_layer="quick_gelu")
        self.input_resolution, self.patch_size, self.output_dim = input_resolution, patch_size, output_dim
        self.width, self.layers, self.heads = width, layers, heads


def openai_visual_shapes(width: int, layers: int, patch_size: int, grid_size: int,
                         output_dim: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an OpenAI CLIP ViT image tower's state dict (without ``visual.``): what a checkpoint
    must hold exactly, and the layout to write a synthetic one in."""
    shapes = {"conv1.weight": (width, 3, patch_size, patch_size), "class_embedding": (width,),
              "positional_embedding": (grid_size ** 2 + 1, width), "ln_pre.weight": (width,), "ln_pre.bias": (width,)}
    for i in range(layers):
        block = {"ln_1.weight": (width,), "ln_1.bias": (width,), "attn.in_proj_weight": (3 * width, width),
                 "attn.in_proj_bias": (3 * width,), "attn.out_proj.weight": (width, width),
                 "attn.out_proj.bias": (width,), "ln_2.weight": (width,), "ln_2.bias": (width,),
                 "mlp.c_fc.weight": (4 * width, width), "mlp.c_fc.bias": (4 * width,),
                 "mlp.c_proj.weight": (width, 4 * width), "mlp.c_proj.bias": (width,)}
        shapes |= {f"transformer.resblocks.{i}.{k}": shape for k, shape in block.items()}
    return shapes | {"ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, output_dim)}


def save_random_clip(path: str | Path, width: int, layers: int, patch_size: int, grid_size: int, output_dim: int,
                     std: float = 0.1, seed: int = 0) -> Path:
    """Write a random-weight OpenAI CLIP image tower of this shape (normal(0, ``std``) weights) as a state dict:
    a teacher for tests and timings, where the weights do not matter and nothing can be downloaded."""
    gen = torch.Generator().manual_seed(seed)
    shapes = openai_visual_shapes(width, layers, patch_size, grid_size, output_dim)
    torch.save({f"visual.{k}": std * torch.randn(shape, generator=gen) for k, shape in shapes.items()}, path)
    return Path(path)


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
    loaded = safe_torch_load(path, "--clip_path")
    if not isinstance(loaded, dict):
        raise UsageError(f"--clip_path {path!r} holds a {type(loaded).__name__}, not a CLIP state dict")
    return loaded


def _visual_state_dict(loaded: dict[str, Any], path: str) -> dict[str, torch.Tensor]:
    """The ``visual.*`` tensors without that prefix (after ``extract_state_dict`` unwraps ``state_dict``/
    ``model`` and strips DDP/compile prefixes); a bare visual state dict (``conv1.weight`` at the top) as is."""
    tensors = extract_state_dict(loaded)
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


def _check_layout(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], path: str) -> None:
    """Refuse, in OpenAI's key names, weights that are not exactly this architecture's (e.g. open_clip's
    layer-scale variants): timm's converter would otherwise rename them and fail in timm's names."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(f"{k} {tuple(state[k].shape)}" for k in set(state) & set(expected)
                      if tuple(state[k].shape) != expected[k])
    detail = "; ".join(f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                       for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", reshaped))
                       if keys)
    if detail:
        raise UsageError(f"--clip_path {path!r} does not match a CLIP ViT image encoder ({detail})")


def load_clip_teacher(path: str) -> CLIPVisionTransformer:
    """Build the CLIP image tower that ``path`` holds, its architecture inferred from the weights, loaded
    strictly, float32, in eval mode and with every parameter frozen (on the CPU).

    Reads an OpenAI TorchScript archive (``ViT-B-16.pt``), a ``torch.save``d CLIP state dict with ``visual.*``
    keys (DeepMIM's format), an open_clip checkpoint (``{"state_dict": {"module.visual.*": ...}}``), or a bare
    visual state dict. Heads are width // 64, which holds for OpenAI's ViTs (and open_clip's up to ViT-L).
    """
    if not os.path.isfile(path):
        raise UsageError(f"--clip_path {path!r} does not exist: pass a CLIP checkpoint such as ViT-B-16.pt")
    state = _visual_state_dict(_read_weights(path), path)
    conv, pos = state["conv1.weight"], state["positional_embedding"]
    width, patch = conv.shape[0], conv.shape[-1]
    layers = sum(1 for k in state if re.fullmatch(r"transformer\.resblocks\.\d+\.attn\.in_proj_weight", k))
    grid = math.isqrt(pos.shape[0] - 1)
    if conv.ndim != 4 or pos.ndim != 2 or grid * grid + 1 != pos.shape[0] or width % 64:
        raise UsageError(f"--clip_path {path!r} holds CLIP visual weights of an unsupported shape "
                         f"(conv1 {tuple(conv.shape)}, positional_embedding {tuple(pos.shape)})")
    output_dim = state["proj"].shape[-1]
    _check_layout(state, openai_visual_shapes(width, layers, patch, grid, output_dim), path)
    model = CLIPVisionTransformer(input_resolution=patch * grid, patch_size=patch, width=width, layers=layers,
                                  heads=width // 64, output_dim=output_dim)
    # OpenAI's archives store fp16 weights: the teacher is built in fp32 from them
    model.load_state_dict(checkpoint_filter_fn({f"visual.{k}": v.float() for k, v in state.items()}, model),
                          strict=True)
    model.eval()
    model.requires_grad_(False)
    return model
