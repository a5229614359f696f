"""COCO object detection with mmdetection (the onedl-* packages), on the segmentation extra's pieces: the same
dense adapter over any encoder (``segmentation.backbones.MIMBackbone``, registered here in mmdet's registry
too) and the same weights_only-safe checkpoint loading inside mmengine. Importing this package registers them
(configs name it in ``custom_imports``)."""
from mmdet.registry import MODELS

import segmentation  # noqa: F401  (mmseg registrations, used by ``mmseg.*`` types; the loading guard)
from segmentation.backbones import MIMBackbone

MODELS.register_module(module=MIMBackbone)
