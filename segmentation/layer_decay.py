"""Layer-wise LR decay for our backbones, as the official segmentation code computes it (docs/methods.md §5.1).

mmseg's own ``LayerDecayOptimizerConstructor`` recognizes blocks only under ``backbone.layers.<i>`` of a class
named like MAE or BEiT: on our encoders it would put every block in the top group, silently. This one asks the
encoder for its layer groups (``layer_groups()``, the same regexes fine-tuning uses).

With ``num_layers`` = L and ``layer_decay_rate`` = r: the stem (position table, cls token, patch embedding;
ConViT's convolutional stages) has id 0, block i (from 0) id i + 1, everything else (the rest of the backbone,
the neck and the heads) id L + 1; a parameter's LR is ``lr * r ** (L + 1 - id)``. Weight decay is off for 1-D
parameters and biases; the position table and cls token are decayed, as officially (the official no-decay
check compared unprefixed names, so it never matched them).
"""
import re

from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS


def layer_id(name: str, stem: str, blocks: str, num_layers: int, prefix: str = "backbone.encoder.") -> int:
    """The layer id of the parameter ``name`` of the whole segmentor (see the module docstring)."""
    if not name.startswith(prefix):
        return num_layers + 1
    inner = name[len(prefix):]
    if re.match(stem, inner):
        return 0
    match = re.match(blocks, inner)
    return int(match.group(1)) + 1 if match else num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class EncoderLayerDecayConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg=dict(num_layers=L, layer_decay_rate=r)``; the backbone must expose ``encoder``."""

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        num_layers = self.paramwise_cfg["num_layers"]
        rate = self.paramwise_cfg["layer_decay_rate"]
        stem, blocks = module.backbone.encoder.layer_groups()
        groups: dict[tuple[int, bool], dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = param.ndim == 1 or name.endswith(".bias")
            lid = layer_id(name, stem, blocks, num_layers)
            group = groups.setdefault((lid, no_decay), {
                "params": [], "lr": self.base_lr * rate ** (num_layers + 1 - lid),
                "weight_decay": 0.0 if no_decay else self.base_wd, "layer_id": lid})
            group["params"].append(param)
        params.extend(groups[key] for key in sorted(groups))
