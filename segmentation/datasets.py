"""The demo's dataset: Fashion-MNIST canvases in ADE20K's layout (``demo_data.py``), with its own 11 classes
(mmseg's ADE20KDataset accepts only a subset of ADE20K's 150)."""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .demo_data import CLASSES, PALETTE


@DATASETS.register_module()
class FashionMNISTSegDataset(BaseSegDataset):
    """images/<split>/*.jpg with annotations/<split>/*.png; 0 unused (ignored), 1 background, 2 + c item c."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = True,
                 **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
