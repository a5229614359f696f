"""Losses: how a head's prediction is compared with the target. Heads predict; a :class:`PatchLoss` compares.

One per-patch loss (l2, l1, smooth-l1 with ``beta``, or DeepMIM's cosine), reduced over the patches a branch
is responsible for: the masked ones (MAE, SimMIM, DMJD's decoder, DeepMIM) or the visible ones (DMJD's
distillation branch). A recipe pairs each head with its loss and weight (``models.mim.Branch``).
"""
import torch
import torch.nn.functional as F

from base.errors import UsageError

from .interfaces import Masks

LOSS_KINDS = ("l2", "l1", "smooth_l1", "cosine")


def per_patch_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2", beta: float = 1.0) -> torch.Tensor:
    """pred, target [B, S, C] -> [B, S]: the elementwise loss averaged over C, or for ``cosine``
    2 - 2 cos(pred, target) over C (DeepMIM: the squared distance of the unit vectors)."""
    pred = pred.float()
    if kind == "cosine":
        return 2 - 2 * (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)
    if kind == "l2":
        err = (pred - target) ** 2
    elif kind == "l1":
        err = (pred - target).abs()
    elif kind == "smooth_l1":
        err = F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    else:
        raise UsageError(f"unknown loss type {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    return err.mean(dim=-1)


class PatchLoss:
    """A branch's loss on the patches it answers for.

    kind: ``l2`` | ``l1`` | ``smooth_l1`` (with ``beta``) | ``cosine``.
    on: ``masked``: pred [B, L, C] for every patch in raster order, the per-patch losses averaged over the
        masked patches (sum(l * mask) / sum(mask), MAE's reduction); ``visible``: pred [B, K, C] for the
        visible patches in ``ids_keep`` order, the per-patch losses averaged over all of them (DMJD's plain
        mean over every visible element).
    visible_order: ``keep`` compares each visible prediction with its own patch's target; ``raster``
        reproduces the official DMJD bug (the targets taken in raster order while the predictions follow
        ``ids_keep``, so most pairs belong to different patches; ``--official_quirks``).
    """

    def __init__(self, kind: str = "l2", beta: float = 1.0, on: str = "masked", visible_order: str = "keep"):
        if kind not in LOSS_KINDS:
            raise UsageError(f"unknown loss type {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
        if on not in ("masked", "visible") or visible_order not in ("keep", "raster"):
            raise ValueError(f"on must be 'masked' or 'visible' and visible_order 'keep' or 'raster', "
                             f"got {on!r}, {visible_order!r}")
        self.kind, self.beta, self.on, self.visible_order = kind, beta, on, visible_order

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, masks: Masks) -> torch.Tensor:
        """pred [B, L or K, C], target [B, L, C] -> scalar."""
        if self.on == "masked":
            weight = masks.mask.to(torch.float32)
            return (per_patch_loss(pred, target, self.kind, self.beta) * weight).sum() / weight.sum()
        ids = masks.ids_keep.sort(dim=1).values if self.visible_order == "raster" else masks.ids_keep
        visible = torch.gather(target, 1, ids.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
        return per_patch_loss(pred, visible, self.kind, self.beta).mean()

    def __repr__(self) -> str:
        beta = f", beta={self.beta}" if self.kind == "smooth_l1" else ""
        order = f", visible_order={self.visible_order!r}" if self.on == "visible" else ""
        return f"PatchLoss({self.kind!r}{beta}, on={self.on!r}{order})"
