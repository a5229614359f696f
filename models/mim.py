"""The one pretraining module: encoder + masking + target + heads, composed.

State-dict keys are *flat*: the ``encoder.`` and ``heads.<name>.`` prefixes are dropped on save and put
back on load, so a composed MAE has exactly the official ``models_mae.py`` keys and the official
checkpoints load with ``strict=True``. Components must therefore use distinct parameter names (the
official ones already do); a clash is refused at construction.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from .masking import Masks


@dataclass
class MIMOutput:
    """loss: scalar; losses: named terms; mask: [N, L] bool (True = masked); pred: {head: [N, L, C]}."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    mask: torch.Tensor
    pred: dict[str, torch.Tensor] = field(default_factory=dict)


class MaskedImageModel(nn.Module):
    """A MIM method as a composition. ``forward(imgs, mask=None)``; ``mask`` [N, L] overrides the sampler.

    Args:
        encoder: consumes ``(imgs, ids_keep)`` and returns an ``EncoderOutput``.
        masking: callable ``(N, L, device, generator) -> Masks``.
        target: module ``imgs -> [N, L, C]``.
        heads: name -> head with ``forward(features, masks) -> pred`` and ``loss(pred, target, masks)``.
        loss_weights: name -> weight of that head's loss in the total (default 1).
    """

    def __init__(self, encoder: nn.Module, masking, target: nn.Module, heads: dict[str, nn.Module],
                 loss_weights: dict[str, float] | None = None):
        super().__init__()
        self.encoder = encoder
        self.masking = masking
        self.target = target
        self.heads = nn.ModuleDict(heads)
        self.loss_weights = {name: 1.0 for name in heads} | (loss_weights or {})
        self._flat_prefixes = ["encoder."] + [f"heads.{name}." for name in heads]
        self._to_full = self._build_key_map()
        self.register_state_dict_post_hook(_flatten_keys)
        self.register_load_state_dict_pre_hook(_unflatten_keys)

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    def _flat(self, key: str) -> str:
        for prefix in self._flat_prefixes:
            if key.startswith(prefix):
                return key[len(prefix):]
        return key

    def _build_key_map(self) -> dict[str, str]:
        full_keys = list(nn.Module.state_dict(self).keys())
        mapping: dict[str, str] = {}
        for key in full_keys:
            flat = self._flat(key)
            if flat in mapping:
                raise ValueError(f"components both define the state-dict key {flat!r}: {mapping[flat]} and {key}")
            mapping[flat] = key
        return mapping

    def sample_masks(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> Masks:
        return self.masking(imgs.shape[0], self.num_patches, imgs.device, generator)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor | None = None) -> MIMOutput:
        """imgs: [N, 3, H, W] ImageNet-normalized; mask: optional [N, L] bool, True = masked."""
        masks = self.sample_masks(imgs) if mask is None else Masks.from_mask(mask.to(imgs.device))
        features = self.encoder(imgs, masks.ids_keep)
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            target = self.target(imgs)
        preds, losses = {}, {}
        for name, head in self.heads.items():
            preds[name] = head(features, masks)
            losses[name] = head.loss(preds[name], target, masks)
        loss = sum(self.loss_weights[name] * value for name, value in losses.items())
        return MIMOutput(loss=loss, losses=losses, mask=masks.mask, pred=preds)


def _flatten_keys(module: MaskedImageModel, state_dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        flat = prefix + module._flat(key[len(prefix):])
        if flat != key:
            state_dict[flat] = state_dict.pop(key)


def _unflatten_keys(module: MaskedImageModel, state_dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        full = module._to_full.get(key[len(prefix):])
        if full is not None and prefix + full != key:
            state_dict[prefix + full] = state_dict.pop(key)
