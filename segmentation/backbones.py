"""Our encoders as mmseg and mmdet backbones (``detection/`` registers the same class in mmdet's registry).
They consume an encoder only through its dense feature API, ``forward_features(imgs, indices) ->
[[N, C, H/r, W/r], ...]`` (``models/interfaces.py``), on inputs of any size: the image is padded at the
bottom/right to a multiple of the coarsest output stride, and encoders with a position table resize it to
each input's grid (a ViT with a relative position bias cannot, and refuses in one line).

The encoder is the fine-tuning one of a registered classifier recipe (learnable position table, no final
norm, full grid, no masking parameters): ``vit_base_patch16``, ``convvit_base_patch16``, ``swin_tiny_256``,
``pvt_small_256``, ... built at the crop size. Its weights come from ``pretrained`` through
``util.checkpoint.load_pretrained`` (``weights_only``, official key adapters, position tables resized to the
crop's grid), never through mmengine's ``init_cfg``, which reads only a ``state_dict`` entry and would load
nothing from ``{'model': ...}`` checkpoints.
"""
from typing import Sequence

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn

import models
from mmseg.registry import MODELS
from util.checkpoint import load_pretrained


# parameters a dense fine-tuning encoder may add, which no pretraining checkpoint holds (DeepMIM's ViT)
NEW_AT_FINE_TUNING = ("*.attn.rel_pos.relative_position_bias_table", "*.ls1.gamma", "*.ls2.gamma")


class NormLinear(nn.Sequential):
    """LayerNorm then Linear over the channels of a map, [N, C, H, W] -> [N, out, H, W]: UM-MAE's detection
    projections ``up1..4`` (children ``0``/``1`` as there, so name-based optimizer rules treat them alike)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.LayerNorm(in_channels), nn.Linear(in_channels, out_channels))
        nn.init.trunc_normal_(self[1].weight, std=0.02)
        nn.init.zeros_(self[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


PROJECTIONS = {"conv": lambda c, out: nn.Conv2d(c, out, 1), "norm_linear": NormLinear}


@MODELS.register_module()
class MIMBackbone(BaseModule):
    """A registered classifier recipe's encoder as a backbone returning 4 maps for UperNet.

    Args:
        model: a classifier recipe name (``models.list_models()``), e.g. ``vit_base_patch16``.
        img_size: the crop size the encoder is built for (position tables are resized to it on loading).
        out_indices: the encoder's feature levels (``forward_features`` indices, from 0): ViT blocks
            ``(3, 5, 7, 11)``; ConViT ``(0, 1, 12)`` (stage 1, stage 2, the last of 11 blocks); Swin/PVT stages
            ``(0, 1, 2, 3)``.
        drop_path_rate: stochastic depth of the encoder.
        pretrained: a checkpoint (ours or official; pretraining or fine-tuning) loaded in ``init_weights``.
        out_channels: a projection per output to this width (UM-MAE's to 768), or None.
        projection: ``"conv"``, a 1x1 conv (UM-MAE's segmentation ``fpn1..4``), or ``"norm_linear"``, LayerNorm
            then Linear (its detection ``up1..4``).
        add_pool: append a 2x2 max-pool of the last map (a stride-32 level for ConViT).
        size_divisor: inputs are padded at the bottom/right to a multiple of it; default the coarsest output
            stride (doubled by ``add_pool``). A ViT whose neck pools its stride-16 maps to 32 sets 32.
        model_kwargs: other recipe options (e.g. ``window_size`` for Swin).
    """

    def __init__(self, model: str, img_size: int = 512, out_indices: Sequence[int] = (3, 5, 7, 11),
                 drop_path_rate: float = 0.1, pretrained: str | None = None, out_channels: int | None = None,
                 add_pool: bool = False, projection: str = "conv", size_divisor: int | None = None, init_cfg=None,
                 **model_kwargs):
        super().__init__(init_cfg=init_cfg)
        classifier = models.create_model(model, img_size=img_size, num_classes=0, global_pool=True,
                                         drop_path_rate=drop_path_rate, **model_kwargs)
        self.encoder = classifier.encoder
        self.out_indices = tuple(out_indices)
        self.pretrained = pretrained
        self.load_report = None  # what init_weights loaded from ``pretrained`` (util.checkpoint.LoadReport)
        self.add_pool = add_pool
        channels = [self.encoder.feature_info[i].num_chs for i in self.out_indices]
        # every chosen level then has a whole grid (and the pool an even one)
        self.size_divisor = size_divisor or max(self.encoder.feature_info[i].reduction
                                                for i in self.out_indices) * (1 + add_pool)
        if projection not in PROJECTIONS:
            raise ValueError(f"projection must be one of {sorted(PROJECTIONS)}, got {projection!r}")
        if out_channels is not None:
            self.projections = nn.ModuleList([PROJECTIONS[projection](c, out_channels) for c in channels])
            channels = [out_channels] * len(channels)
        else:
            self.projections = None
        self.out_channels = channels + ([channels[-1]] if add_pool else [])

    def init_weights(self) -> None:
        super().init_weights()
        if self.pretrained:
            self.load_report = load_pretrained(self.encoder, self.pretrained, allow_missing=NEW_AT_FINE_TUNING)
            print_log(f"backbone weights from {self.pretrained}: {self.load_report}", logger="current")

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """imgs [N, 3, H, W] -> the maps of ``out_indices`` (projected), plus the pooled last one; level i is
        [N, C_i, ceil(H / d) * d / r_i, ...] for the padding multiple d = ``size_divisor`` and stride r_i."""
        pad_h, pad_w = -imgs.shape[-2] % self.size_divisor, -imgs.shape[-1] % self.size_divisor
        if pad_h or pad_w:
            imgs = nn.functional.pad(imgs, (0, pad_w, 0, pad_h))
        maps = self.encoder.forward_features(imgs, self.out_indices)
        if self.projections is not None:
            maps = [proj(m) for proj, m in zip(self.projections, maps)]
        if self.add_pool:
            maps.append(nn.functional.max_pool2d(maps[-1], 2))
        return tuple(maps)
