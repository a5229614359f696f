"""timm's RandAugment on DALI: the plan of each image drawn in the DataLoader workers as timm's ``RandAugment``
draws it, and DALI's auto-augment operators (``nvidia.dali.auto_aug``) applying it to the batch.

timm's ``rand-m9-mstd0.5-inc1`` (MAE's fine-tuning policy) picks ``n`` = 2 of its 15 "increasing" operations
with replacement; each is applied with probability ``p`` = 0.5, at a magnitude drawn from N(9, 0.5) clipped to
[0, 10], negated at random for the geometric and enhancing ones. ``RandAugmentPlan.draw`` makes the very draws
timm's transform makes (numpy's choice, then Python's ``random`` for the probability, the magnitude and the
sign, in its order), under the item's seed, so that the plan of an image is the one timm would have followed and
a run resumed mid-epoch replays it. DALI's ``rand_augment`` draws from its own generator, which a resumed
pipeline cannot replay, and has no per-image magnitude noise; here its building blocks (``select``,
``signed_bin`` and the operations of ``nvidia.dali.auto_aug.augmentations``) apply the plan instead, each
magnitude quantized to 0.1 of timm's 0..10 scale (``BINS``).

What differs from timm's PIL operations, by DALI's implementations: shear, rotate and translate interpolate
bilinearly (timm: bicubic) and fill with one grey level, 115 (timm: the mean colour 124, 116, 104); equalize
follows OpenCV's formula (PIL's rounds its lookup table differently); sharpness leaves a 1-pixel border
unfiltered differently. Their effect on the augmentation's pixel statistics is measured by
``benchmarks/augment_stats.py`` (docs/speed.md).
"""
import random
from typing import Any

import numpy as np
from timm.data.auto_augment import rand_augment_transform

from base.errors import UsageError

LEVEL_MAX = 10.0  # timm's magnitude scale, 0..10 (its _LEVEL_DENOM)
BINS = 101  # magnitude bins: 0, 0.1, ..., 10 of timm's scale
FILL = 115  # the grey level warps fill with: ImageNet's mean colour, 124, 116, 104, averaged
# timm's operations whose level function negates the magnitude at random (one draw of Python's random each)
NEGATED = {"Rotate", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
           "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
# timm's operations with a level function (a magnitude) that the plan must carry
NO_LEVEL = {"AutoContrast", "Equalize", "Invert"}


def parse_policy(aa: str, input_size: int) -> Any:
    """timm's RandAugment for ``--aa``, refused with one line unless DALI has all its operations (timm's
    "increasing" set, ``inc1``)."""
    if not aa.startswith("rand"):
        raise UsageError(f"--data_backend dali applies timm's RandAugment policies (rand-m9-mstd0.5-inc1), not "
                         f"--aa {aa}: pass --data_backend pil")
    policy = rand_augment_transform(aa, {"translate_const": int(input_size * 0.45), "img_mean": (124, 116, 104)})
    missing = sorted({op.name for op in policy.ops} - set(_suite_names()))
    if missing or policy.choice_weights is not None:
        reason = f"operations {', '.join(missing)}" if missing else "weighted op choices"
        raise UsageError(f"--aa {aa} uses {reason}, which the DALI pipeline does not map (it maps timm's "
                         "increasing set, inc1, chosen uniformly): pass --data_backend pil")
    return policy


def _suite_names() -> tuple[str, ...]:
    return ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
            "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
            "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


IDENTITY = len(_suite_names())  # the plan's operation index for "not applied"


class RandAugmentPlan:
    """Per image, ``layers`` x (operation index into ``_suite_names``, or ``IDENTITY``; magnitude bin 0..BINS-1;
    sign 0/1), drawn from the global RNGs as timm's ``RandAugment(policy)`` draws them. Picklable (it goes to
    the DataLoader workers): it keeps the policy's numbers, not its objects."""

    def __init__(self, aa: str, input_size: int):
        policy = parse_policy(aa, input_size)
        self.layers = policy.num_layers
        self.names = [op.name for op in policy.ops]
        self.prob = [op.prob for op in policy.ops]
        self.magnitude = [op.magnitude for op in policy.ops]
        self.std = [op.magnitude_std for op in policy.ops]
        self.upper = [op.magnitude_max or LEVEL_MAX for op in policy.ops]
        if max(self.upper) > LEVEL_MAX:
            raise UsageError(f"--aa {aa} sets magnitudes above {LEVEL_MAX:g} (mmax), which the DALI pipeline does "
                             "not map: pass --data_backend pil")

    def draw(self) -> list[int]:
        """[layers x 3]: (operation, bin, sign) per layer, flattened."""
        plan = []
        for k in np.random.choice(len(self.names), self.layers, replace=True):
            name = self.names[k]
            if self.prob[k] < 1.0 and random.random() > self.prob[k]:
                plan += [IDENTITY, 0, 0]
                continue
            magnitude = self.magnitude[k]
            if self.std[k] == float("inf"):
                magnitude = random.uniform(0, magnitude)
            elif self.std[k] > 0:
                magnitude = random.gauss(magnitude, self.std[k])
            magnitude = max(0.0, min(magnitude, self.upper[k]))
            negative = name in NEGATED and random.random() > 0.5  # timm's _randomly_negate
            plan += [_suite_names().index(name), round(magnitude * (BINS - 1) / LEVEL_MAX), int(negative)]
        return plan


def _posterize_mask(level: float) -> np.ndarray:
    """timm's PosterizeIncreasing at ``level``: keep 4 - int(0.4 level) bits (0: a black image, as PIL's)."""
    bits = 4 - int(level / LEVEL_MAX * 4)
    return np.array((0xFF << (8 - bits)) & 0xFF, dtype=np.uint8)


def dali_suite() -> list:
    """DALI augmentations in ``_suite_names``' order, then identity, each on timm's magnitude scale: bin b of
    ``BINS`` is timm's level 10 b / (BINS - 1), mapped to the operation's parameter as timm's level function
    maps it (rotate 30 degrees, shear 0.3, translate 0.45 of the side, enhance factors 1 +- 0.9, posterize
    4 - int(0.4 level) bits, solarize threshold 256 - 25.6 level, solarize-add 11 level, all at level 10)."""
    from nvidia.dali.auto_aug import augmentations as a

    return [a.auto_contrast, a.equalize, a.invert, a.rotate.augmentation((0, 30), True),
            a.posterize.augmentation((0, LEVEL_MAX), False, _posterize_mask),
            a.solarize.augmentation((256, 0)), a.solarize_add.augmentation((0, 110)),
            a.color.augmentation((0, 0.9), True, a.shift_enhance_range),
            a.contrast.augmentation((0, 0.9), True, a.shift_enhance_range),
            a.brightness.augmentation((0, 0.9), True, a.shift_enhance_range),
            a.sharpness.augmentation((0, 0.9), True, a.sharpness_kernel),
            a.shear_x.augmentation((0, 0.3), True), a.shear_y.augmentation((0, 0.3), True),
            a.translate_x.augmentation((0, 0.45), True), a.translate_y.augmentation((0, 0.45), True),
            a.identity]


def apply_plan(images, plan_columns: list, size: int):
    """DALI graph: ``images`` (HWC uint8, ``size`` x ``size``) through each layer's planned operation;
    ``plan_columns``: per layer, the batch's (operation, bin, sign) DataNodes."""
    from nvidia.dali.auto_aug.core import select, signed_bin

    suite = dali_suite()
    for op, magnitude_bin, sign in plan_columns:
        images = select(suite, op, data=images, magnitude_bin=signed_bin(magnitude_bin, random_sign=sign),
                        num_magnitude_bins=BINS, shape=(size, size), fill_value=FILL)
    return images
