"""The one pretraining module: encoder + masking + target + heads, composed.

State-dict keys are flat (``models/flat_keys.py``): a composed MAE has exactly the official
``models_mae.py`` keys, so the official checkpoints load with ``strict=True``.
"""
from dataclasses import dataclass, field

import torch
from torch import nn

from .flat_keys import FlatKeys
from .masking import Masks


@dataclass
class MIMOutput:
    """loss: scalar; losses: named terms; mask: [N, L] bool (True = masked); pred: {head: [N, L, C]}."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    mask: torch.Tensor
    pred: dict[str, torch.Tensor] = field(default_factory=dict)


class MaskedImageModel(FlatKeys, nn.Module):
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
        self.flatten_keys(["encoder."] + [f"heads.{name}." for name in heads])

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

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
