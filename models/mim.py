"""The one pretraining module: encoder + masking + target + heads, composed.

State-dict keys are flat (``models/flat_keys.py``): a composed MAE has exactly the official
``models_mae.py`` keys, so the official checkpoints load with ``strict=True``.
"""
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .flat_keys import FlatKeys
from .interfaces import Encoder, Loss, Masking, Masks, Target, repeat_views


@dataclass
class Branch:
    """One prediction branch: a head (an ``nn.Module``), the loss comparing its prediction with the target,
    and the loss's weight in the total."""

    head: nn.Module
    loss: Loss
    weight: float = 1.0


@dataclass
class MIMOutput:
    """loss: scalar; losses: named terms; mask: [B, L] bool (True = masked; B = views x images);
    pred: {branch: [B, L, C] (or [B, K, C] for heads that predict only the visible tokens)}."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    mask: torch.Tensor
    pred: dict[str, torch.Tensor] = field(default_factory=dict)


class MaskedImageModel(FlatKeys, nn.Module):
    """A MIM method as a composition (``models/interfaces.py``). ``forward(imgs, mask=None)``; ``mask``
    [N, L] overrides the sampler.

    Args:
        encoder: an :class:`Encoder`.
        masking: a :class:`Masking`.
        target: a :class:`Target` module ``imgs -> [N, L, C]``.
        branches: name -> :class:`Branch` (head, loss, weight); the heads' weights are saved under the
            official flat keys (``models/flat_keys.py``).
        checkpoint_filters: adapters ``(own_keys, state_dict) -> state_dict`` for official checkpoints
            (``models/official.py``), applied by ``load_pretrained`` through :meth:`checkpoint_filter_fn`.
    """

    def __init__(self, encoder: Encoder, masking: Masking, target: Target, branches: dict[str, Branch],
                 checkpoint_filters: list[Callable] = ()):
        super().__init__()
        if hasattr(masking, "check"):  # ours refuse a grid they would keep nothing of, before any data is read
            masking.check(encoder.grid_size)
        self.encoder = encoder
        self.masking = masking
        self.target = target
        self.heads = nn.ModuleDict({name: branch.head for name, branch in branches.items()})
        self.losses = {name: branch.loss for name, branch in branches.items()}
        self.loss_weights = {name: branch.weight for name, branch in branches.items()}
        self.checkpoint_filters = list(checkpoint_filters)
        # blocks whose un-normed outputs the heads read (deep supervision); the encoder runs once
        self.tapped_layers = sorted({h.layer for h in self.heads.values() if getattr(h, "layer", None) is not None})
        self.flatten_keys(["encoder."] + [(f"heads.{name}.{getattr(head, 'inner_prefix', '')}",
                                           getattr(head, "key_suffix", "")) for name, head in self.heads.items()])

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def num_patches(self) -> int:
        return self.encoder.num_patches

    def set_grad_checkpointing(self, mode: str | bool = "all") -> None:
        """Activation checkpointing of the encoder's blocks: ``"none"``, ``"stage1"`` or ``"all"``
        (``models.encoders.common.GradCheckpointing``); the heads are not checkpointed."""
        self.encoder.set_grad_checkpointing(mode)

    def checkpoint_filter_fn(self, state_dict: dict) -> dict:
        """The recipe's official-checkpoint adapters, in order (as timm's ``checkpoint_filter_fn``)."""
        for adapt in self.checkpoint_filters:
            state_dict = adapt(set(self._to_full), state_dict)
        return state_dict

    def sample_masks(self, imgs: torch.Tensor, generator: torch.Generator | None = None) -> Masks:
        """The sampler's masks for imgs [N, 3, H, W], on the encoder's patch grid."""
        return self.masking(imgs.shape[0], tuple(self.encoder.grid_size), imgs.device, generator)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor | Masks | None = None) -> MIMOutput:
        """imgs: [N, 3, H, W] ImageNet-normalized.

        mask: optional override of the sampler: a bool tensor [N, L] or [V, N, L] (True = masked; visible
        tokens taken in raster order) or a ready :class:`Masks`. With V views the encoder's output and the
        heads have V * N rows, [view 1 of all images; view 2; ...]; the target is computed once per image, and
        so is the encoder's shareable work when the views are disjoint.
        """
        if mask is None:
            masks = self.sample_masks(imgs)
        elif isinstance(mask, Masks):
            masks = mask
        else:
            masks = Masks.from_mask(mask.to(imgs.device))
        views = masks.num_views
        # disjoint views let the encoder take each image once and share work across its views
        shared = views if masks.disjoint_views else 1
        features = self.encoder(repeat_views(imgs, views // shared), masks.ids_keep,
                                return_layers=self.tapped_layers, secondary=masks.secondary, views=shared)
        with torch.autocast(device_type=imgs.device.type, enabled=False):
            target = repeat_views(self.target(imgs), views)
        preds = {name: head(features, masks) for name, head in self.heads.items()}
        losses = {name: self.losses[name](pred, target, masks) for name, pred in preds.items()}
        loss = sum(self.loss_weights[name] * value for name, value in losses.items())
        return MIMOutput(loss=loss, losses=losses, mask=masks.mask, pred=preds)
