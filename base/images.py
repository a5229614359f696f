"""Images as every part of the project reads them: the one reader of image files and the normalization
constants (ImageNet's mean and std, which the models' targets and the data pipelines share)."""
import io
import struct
import warnings

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """What the model is fed: uint8 images ``[..., 3, H, W]`` (0..255, as every input pipeline delivers them, on
    the device) -> float32 ``(x / 255 - mean) / std`` with ImageNet's mean and std, by the very float32 operations
    of torchvision's ``ToTensor`` + ``Normalize``, so that the values are theirs. Anything but uint8 is refused:
    a float batch could be normalized already, and normalizing it twice would train on wrong inputs silently."""
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize takes uint8 images (0..255), got {images.dtype}")
    mean = torch.tensor(IMAGENET_MEAN, device=images.device)[:, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device)[:, None, None]
    return images.float().div(255).sub_(mean).div_(std)

# what PIL raises on a file that is not a readable image (missing, truncated, garbage, not an image, too large;
# SyntaxError .. struct.error are what its format plugins raise on a malformed header)
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
               Image.DecompressionBombError, Image.DecompressionBombWarning)


class UnreadableImage(Exception):
    """A file ``read_image`` cannot make an image of; the message is PIL's reason."""


def is_deep(mode: str) -> bool:
    """Whether PIL ``mode`` holds more than 8 bits a pixel (16-bit PNG ``I;16*``, 32-bit ``I``, float ``F``), which
    PIL's ``convert("RGB")`` clips to 0..255."""
    return mode in ("I", "F") or mode.startswith("I;16")


def read_image(source: str | bytes, header_only: bool = False) -> Image.Image:
    """The project's one reader of image files: ``source`` (a path, or a file's bytes) decoded as an 8-bit RGB
    image; with ``header_only``, as PIL opens it (size, mode and format read, no pixel decoded, the file closed).

    Deeper pixels (``is_deep``) are scaled, never clipped (PIL's ``convert("RGB")`` clips them, so a 16-bit PNG
    turns white and a float TIFF black): 16-bit ones by their depth (``v / 257``, as libpng and OpenCV reduce
    them, so brightness stays comparable between images); 32-bit integer and float ones, which have no fixed
    scale, linearly from the image's own range, its lowest finite value to 0 and its highest to 255 (a constant
    image is black). Any failure of PIL's raises ``UnreadableImage``, a decompression bomb included (more
    than ``Image.MAX_IMAGE_PIXELS`` pixels, which PIL only warns about below twice the limit)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as image:
                return image if header_only else _to_rgb8(image)
    except _PIL_ERRORS as err:
        raise UnreadableImage(str(err) or type(err).__name__) from err


def _to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` decoded as 8-bit RGB, deep pixels scaled from their range (``read_image``)."""
    if not is_deep(image.mode):
        return image.convert("RGB")
    pixels = np.asarray(image, dtype=np.float32)  # [H, W]
    if image.mode.startswith("I;16"):
        return Image.fromarray(np.rint(pixels / 257).astype(np.uint8)).convert("RGB")
    finite = pixels[np.isfinite(pixels)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    pixels = np.nan_to_num(pixels, nan=low, posinf=high, neginf=low) - low
    scaled = pixels * (255 / (high - low)) if high > low else np.zeros_like(pixels)
    return Image.fromarray(np.rint(scaled).astype(np.uint8)).convert("RGB")
