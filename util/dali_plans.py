"""What the DALI input pipelines do to each image, in two halves: ``draw`` runs in the DataLoader workers on
the file's header alone (its size) and draws the image's plan from the global RNGs, exactly as the PIL path's
transform draws it (under ``util.session.SeededItems``: the same windows, flips and RandAugment choices for the
same seed); ``graph`` is the DALI graph that carries the plans out on the batch (``util.dali_loader``).

- ``RandomCrops``: RandomResizedCrop's window (the drawer of the PIL transform it stands for: torchvision's for
  pretraining, the linear probe's single draw, timm's for fine-tuning), decoded alone (``decoders.image_slice``),
  resized bicubically to ``size`` x ``size``, flipped, and for fine-tuning RandAugment (``util.dali_augment``).
- ``CenterCrops``: evaluation's resize of the short side (``util.data.eval_resize_size``) and center crop.

Every graph ends in uint8 ``[3, size, size]``, as the PIL transforms do: the trainer normalizes on the device.
"""
from typing import Callable

import numpy as np
import torch

from util.dali_augment import IDENTITY, RandAugmentPlan, apply_plan
from util.data import eval_resize_size

CropParams = Callable[[object, tuple, tuple], tuple[int, int, int, int]]  # (image, scale, ratio) -> window


class RandomCrops:
    """Plan: top, left, height, width, flip, then ``augment``'s RandAugment layers (operation, bin, sign)."""

    def __init__(self, size: int, crop_params: CropParams, scale: tuple[float, float],
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), augment: RandAugmentPlan | None = None):
        self.size, self.crop_params, self.scale, self.ratio, self.augment = size, crop_params, scale, ratio, augment

    def draw(self, header) -> list[float]:
        """The window as ``crop_params`` draws it, then RandomHorizontalFlip's draw, then RandAugment's."""
        window = self.crop_params(header, self.scale, self.ratio)
        flip = bool(torch.rand(1) < 0.5)
        return [*window, flip] + (self.augment.draw() if self.augment is not None else [])

    @property
    def layers(self) -> int:
        return self.augment.layers if self.augment is not None else 0

    def feed(self, plans: np.ndarray) -> list[list[np.ndarray]]:
        """The DALI inputs of a batch's plans ``[B, P]``: window anchors (x, y), shapes (w, h), flips, and per
        RandAugment layer its operations, bins and signs."""
        anchors = np.ascontiguousarray(plans[:, [1, 0]], dtype=np.float32)  # DALI takes no strided rows
        shapes = np.ascontiguousarray(plans[:, [3, 2]], dtype=np.float32)
        ints = np.ascontiguousarray(plans[:, 4:], dtype=np.int32)
        return [list(anchors), list(shapes), *(list(ints[:, c]) for c in range(1 + 3 * self.layers))]

    def types(self) -> list:
        import nvidia.dali.types as types

        return [types.FLOAT, types.FLOAT, types.INT32] + [types.INT32] * (3 * self.layers)

    def graph(self, encoded, inputs: list, gpu: bool):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        anchors, shapes, flips, *plan = inputs
        # only the window is decoded; EXIF orientation is ignored, as PIL's convert("RGB") ignores it
        images = fn.decoders.image_slice(encoded, anchors, shapes, device="mixed" if gpu else "cpu",
                                         output_type=types.RGB, normalized_anchor=False, normalized_shape=False,
                                         adjust_orientation=False)
        images = fn.resize(images, size=(self.size, self.size), interp_type=types.INTERP_CUBIC, antialias=True)
        images = fn.flip(images, horizontal=flips)
        if self.layers:
            images = apply_plan(images, [plan[3 * k:3 * k + 3] for k in range(self.layers)], self.size)
        return fn.transpose(images, perm=[2, 0, 1])

    def applied(self, plans: np.ndarray) -> np.ndarray:
        """``[B, layers]`` bool: which RandAugment layers of the plans apply an operation (not identity)."""
        return plans[:, 5::3].astype(np.int64) != IDENTITY


class CenterCrops:
    """Plan: the resized height and width (short side ``eval_resize_size(size)``, long side scaled and truncated
    as torchvision's ``Resize``), then the center crop's top and left (rounded as ``CenterCrop``)."""

    layers = 0

    def __init__(self, size: int):
        self.size = size

    def draw(self, header) -> list[float]:
        width, height = header.size
        short = eval_resize_size(self.size)
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        return [new_h, new_w, int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))]

    def feed(self, plans: np.ndarray) -> list[list[np.ndarray]]:
        return [list(np.ascontiguousarray(plans[:, 0:2], dtype=np.float32)),
                list(np.ascontiguousarray(plans[:, 2:4], dtype=np.int32))]

    def types(self) -> list:
        import nvidia.dali.types as types

        return [types.FLOAT, types.INT32]

    def graph(self, encoded, inputs: list, gpu: bool):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types

        sizes, starts = inputs
        images = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                   adjust_orientation=False)
        images = fn.resize(images, size=sizes, interp_type=types.INTERP_CUBIC, antialias=True)
        images = fn.slice(images, start=starts, shape=[self.size, self.size], axis_names="HW")
        return fn.transpose(images, perm=[2, 0, 1])
