"""Masking strategies: who is hidden from the encoder.

Every strategy returns a :class:`Masks` drawn on the device of the batch, batched, from the global RNG
or an explicit ``torch.Generator`` (no per-sample Python). Convention: ``mask`` is bool, True = masked,
in raster order; ``ids_keep`` lists the visible patches in the order the encoder sees them.
"""
from dataclasses import dataclass

import torch


@dataclass
class Masks:
    """mask: [N, L] bool (True = masked); ids_keep: [N, K]; ids_restore: [N, L] (inverse of the shuffle)."""

    mask: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor

    @classmethod
    def from_shuffle(cls, ids_shuffle: torch.Tensor, len_keep: int) -> "Masks":
        """Build from a per-sample permutation [N, L] whose first ``len_keep`` entries stay visible."""
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        mask = torch.ones_like(ids_shuffle, dtype=torch.bool)
        mask[:, :len_keep] = False
        mask = torch.gather(mask, 1, ids_restore)
        return cls(mask=mask, ids_keep=ids_shuffle[:, :len_keep], ids_restore=ids_restore)

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "Masks":
        """Build from an explicit bool mask [N, L]; visible tokens are kept in raster order.

        Every sample must hide the same number of patches, since the encoder batches visible tokens.
        """
        if mask.dim() != 2:
            raise ValueError(f"expected a mask of shape [N, L], got {tuple(mask.shape)}")
        mask = mask.bool()
        counts = mask.sum(1)
        if (counts != counts[0]).any():
            raise ValueError(f"every sample must mask the same number of patches, got {counts.tolist()}")
        len_keep = mask.shape[1] - int(counts[0])
        # stable sort keeps raster order inside the visible and the masked groups
        ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        return cls.from_shuffle(ids_shuffle, len_keep)


class RandomMasking:
    """MAE random masking (METHODS.md §1.2): keep ``int(L * (1 - ratio))`` patches of lowest noise."""

    def __init__(self, mask_ratio: float = 0.75):
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio

    def num_visible(self, num_patches: int) -> int:
        return int(num_patches * (1 - self.mask_ratio))

    def __call__(self, batch_size: int, num_patches: int, device: torch.device,
                 generator: torch.Generator | None = None) -> Masks:
        noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        return Masks.from_shuffle(ids_shuffle, self.num_visible(num_patches))

    def __repr__(self) -> str:
        return f"RandomMasking(mask_ratio={self.mask_ratio})"
