"""The linear probe's random resized crop: one draw, TF style, as in the official MAE linear probe.

torchvision's ``RandomResizedCrop`` retries up to ten draws until the box fits and then falls back
to a centre crop; the official probe instead draws once and clips the box to the image.
"""
import math

import torch
from torchvision import transforms
from torchvision.transforms import functional as F

from base.images import IMAGENET_MEAN, IMAGENET_STD


class SingleDrawResizedCrop(transforms.RandomResizedCrop):
    """``RandomResizedCrop`` whose box comes from a single draw, clipped to the image.

    Constructed like the parent (size, scale, ratio, interpolation, antialias); the official
    probe passes ``interpolation=InterpolationMode.BICUBIC``.
    """

    @staticmethod
    def get_params(img, scale: list[float], ratio: list[float]) -> tuple[int, int, int, int]:
        """Box ``(i, j, h, w)`` (top, left, height, width) for ``img`` (PIL image or ``[..., H, W]`` tensor).

        Draws, in order, from torch's global RNG (so DataLoader worker seeding applies): one
        uniform for the area fraction, one for the log aspect ratio, one randint each for i and j.
        """
        _, height, width = F.get_dimensions(img)
        area = height * width
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1])).item())

        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        # Clipping to the image is the official rule; the lower bound of 1 only matters for
        # draws that round to an empty box (extreme ratios on tiny images), which cannot be resized.
        w = max(1, min(w, width))
        h = max(1, min(h, height))

        i = torch.randint(0, height - h + 1, size=(1,)).item()
        j = torch.randint(0, width - w + 1, size=(1,)).item()
        return i, j, h, w


def build_linprobe_transform(input_size: int) -> transforms.Compose:
    """Linear-probe training augmentation: RGB PIL image -> normalized ``[3, input_size, input_size]`` tensor."""
    return transforms.Compose([
        SingleDrawResizedCrop(input_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
