"""Datasets and transforms for pretraining and evaluation.

Every dataset yields ``(image, label)`` where ``image`` is whatever ``transform`` makes of an RGB
PIL image and ``label`` is an int. The transforms built here end in a uint8 ``[3, S, S]`` tensor (0..255): a
quarter of float32's bytes across the worker boundary and to the device, where ``base.images.normalize`` makes
the model's input.
"""
import gzip
import multiprocessing
import os
import warnings
from typing import Callable, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from base.errors import UsageError
from base.images import UnreadableImage, read_image

DATA_SETS = ("imagefolder", "fashion_mnist")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

Transform = Callable[[Image.Image], object]
T = TypeVar("T")
# what a dataset skips and counts: the reader's refusal, and OSError of the DALI path reading a file's bytes itself
UNREADABLE = (UnreadableImage, OSError)


def build_pretrain_transform(input_size: int, min_scale: float = 0.2) -> transforms.Compose:
    """MAE pretraining augmentation: RGB PIL image -> uint8 ``[3, input_size, input_size]`` tensor.

    ``min_scale`` bounds the crop area from below: 0.2 for MAE, 0.5 for DMJD (docs/methods.md §2.1). DMJD's HOG
    input, the uint8 crop, is recovered exactly from the normalized tensor on the device (``models/hog.py``)."""
    return transforms.Compose([
        transforms.RandomResizedCrop(input_size, scale=(min_scale, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


def build_eval_transform(input_size: int) -> transforms.Compose:
    """MAE evaluation preprocessing: resize (the short side to ``eval_resize_size``) then center crop to uint8
    ``[3, input_size, input_size]``."""
    return transforms.Compose([
        transforms.Resize(eval_resize_size(input_size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(input_size),
        transforms.PILToTensor(),
    ])


def eval_resize_size(input_size: int) -> int:
    """The short side evaluation resizes to before its center crop: up to 224 the crop keeps the usual 224/256
    of the resized image (MAE's ``crop_pct``; 256 for 224), larger sizes use the whole image."""
    crop_pct = 224 / 256 if input_size <= 224 else 1.0
    return int(input_size / crop_pct)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _unreadable(err: OSError) -> UsageError:
    return UsageError(f"cannot read the folder {err.filename} of --data_path ({err.strerror}): fix its permissions "
                      "or move it out of the data")


def _raise_unreadable(err: OSError):
    raise _unreadable(err) from err


def class_folders(root: str) -> list[str]:
    """The sorted names of the non-hidden folders in ``root``: the classes, as torchvision's ImageFolder has them."""
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise _unreadable(err) from err


def _images_under(folder: str) -> list[str]:
    """All image files below ``folder``, in a deterministic (sorted) order, each real folder read once however many
    links lead to it; a folder that cannot be listed is an error (``os.walk`` would skip it silently, and its images
    with it), and so is a link to a folder holding the one it is in (the walk would go round in circles, filing
    other classes' images under this one)."""
    found, seen = [], {os.path.realpath(folder)}
    roots = (os.path.abspath(folder), os.path.realpath(folder))
    for dirpath, dirnames, filenames in os.walk(folder, onerror=_raise_unreadable, followlinks=True):
        here = os.path.realpath(dirpath)
        kept = []
        for name in sorted(dirnames):
            target = os.path.realpath(os.path.join(dirpath, name))
            if any(_within(path, target) for path in (here, *roots)):
                raise UsageError(f"{os.path.join(dirpath, name)} links to {target}, a folder holding it: a loop "
                                 "that would read the data over and over; remove the link")
            if target not in seen:  # another link to a folder already read (or queued)
                seen.add(target)
                kept.append(name)
        dirnames[:] = kept
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
    return found


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or inside it (both absolute, normalized)."""
    return os.path.commonpath([path, folder]) == folder


def _check_classes(root: str, found: list[str], expected: list[str]) -> None:
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        differences = ([f"lacks {', '.join(missing)}"] if missing else []) + \
            ([f"has extra {', '.join(extra)}"] if extra else [])
        raise UsageError(f"the class folders of {root} differ from the training data's "
                         f"({' and '.join(differences)}): give it the same class folders, empty ones included")


class ImageFiles(Dataset):
    """Images from a class-per-folder tree (``root/<class>/**/*.jpg``) or a flat folder (all label 0).

    The classes are the folder names in ``root``, an empty one included (with a warning), so that labels mean
    the same classes in every split; ``classes``, when given (the training split's), must be exactly those.
    Without ``classes``, a root whose folders hold no image is a flat folder of images.
    Unreadable files are skipped with a warning: the sample at the next readable index is returned
    instead, so ``len`` and the number of items per epoch stay fixed.
    """

    def __init__(self, root: str, transform: Transform | None = None, limit: int | None = None,
                 classes: list[str] | None = None):
        self.root, self.transform = root, transform
        subdirs = class_folders(root)
        if classes is not None:
            _check_classes(root, subdirs, classes)
        per_class = [(name, _images_under(os.path.join(root, name))) for name in subdirs]
        if classes is not None or any(paths for _, paths in per_class):
            for name in (name for name, paths in per_class if not paths):
                warnings.warn(f"class folder {os.path.join(root, name)} holds no images: class {name!r} keeps its "
                              "label but has no samples")
            self.classes = subdirs
            self.samples = [(p, label) for label, (_, paths) in enumerate(per_class) for p in paths]
        else:
            self.classes = [os.path.basename(os.path.abspath(root))]
            self.samples = [(e.path, 0) for e in sorted(os.scandir(root), key=lambda e: e.name)
                            if e.is_file() and _is_image(e.name)]
        if not self.samples:
            raise UsageError(f"--data_path {root} holds no images ({', '.join(IMG_EXTENSIONS)}): expected "
                             "an ImageNet-style folder (train/<class>/*.JPEG) or a folder of images.")
        self.samples = self.samples[:limit]
        # One shared flag per file: DataLoader workers get this shared memory, so the main process sees
        # their skips, and a file is warned about and counted once however many epochs revisit it.
        # No lock: flags only go 0 -> 1, and a lock's semaphore cannot reach workers of another start method.
        self._bad = multiprocessing.RawArray("b", len(self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def skipped(self) -> int:
        """Number of distinct files found unreadable so far, across all worker processes."""
        return int(self.skipped_flags().sum())

    def skipped_flags(self) -> torch.Tensor:
        """A copy of the per-file flags, 1 where the file was found unreadable: what processes combine."""
        return torch.from_numpy(np.frombuffer(self._bad, dtype=np.uint8).copy())

    def __getitem__(self, index: int) -> tuple[object, int]:
        _, image, label = self.read(index, read_image)
        return (self.transform(image) if self.transform else image), label

    def read(self, index: int, load: Callable[[str], T]) -> tuple[int, T, int]:
        """(file index, ``load(path)``, label) of the first readable file from ``index`` on (wrapping around):
        a file ``load`` fails on is flagged unreadable (``mark_unreadable``) and never tried again."""
        n = len(self.samples)
        for i in (j % n for j in range(index, index + n)):
            if self._bad[i]:
                continue
            path, label = self.samples[i]
            try:
                return i, load(path), label
            except UNREADABLE as err:
                self.mark_unreadable(i, err)
        raise UsageError(f"none of the {n} images under {self.root} could be read: check the files.")

    def mark_unreadable(self, index: int, err: Exception) -> None:
        """Flag file ``index`` as unreadable (counted in ``skipped``, skipped from now on) with a warning."""
        if not self._bad[index]:
            self._bad[index] = 1
            warnings.warn(f"skipping unreadable image {self.samples[index][0]}: {err}")


def _read_idx(path: str, magic: int) -> np.ndarray:
    """Read a gzipped idx file into a uint8 array: ``[N]`` labels or ``[N, rows, cols]`` images."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = magic & 0xFF  # the last magic byte is the number of dimensions, the third the dtype (uint8)
    if len(raw) < 4 * (1 + ndim) or int.from_bytes(raw[:4], "big") != magic:
        raise UsageError(f"{path} is not an idx file with magic number {magic:#010x}: re-download it.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise UsageError(f"{path} holds {data.size} bytes of data, its header promises shape {shape}.")
    return data.reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST from its gzipped idx files; each 28x28 grey image is handed to ``transform`` as RGB."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: str, train: bool = True, transform: Transform | None = None,
                 limit: int | None = None):
        split = "train" if train else "t10k"
        paths = [os.path.join(root, f"{split}-{kind}-ubyte.gz") for kind in ("images-idx3", "labels-idx1")]
        for path in paths:
            if not os.path.isfile(path):
                raise UsageError(f"{path} not found: run `apt-get install dataset-fashion-mnist` or pass "
                                 "--data_path a folder holding the Fashion-MNIST *-ubyte.gz files.")
        images, labels = _read_idx(paths[0], 0x803), _read_idx(paths[1], 0x801)
        if len(images) != len(labels):
            raise UsageError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels.")
        self.images = images[:limit]  # [N, 28, 28] uint8
        self.targets = torch.from_numpy(labels[:limit].astype(np.int64))  # [N]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[object, int]:
        # RGB so the ImageNet-style transforms (3-channel normalize) and encoders apply unchanged.
        image = Image.fromarray(self.images[index]).convert("RGB")
        return (self.transform(image) if self.transform else image), int(self.targets[index])


def build_dataset(data_set: str, data_path: str | None, transform: Transform | None, train: bool = True,
                  limit: int | None = None, classes: list[str] | None = None) -> Dataset:
    """Build the ``train`` (or validation) split of ``data_set``, keeping its first ``limit`` samples; an image
    folder split must have exactly the class folders ``classes`` when given (``dataset_classes``)."""
    if data_set == "fashion_mnist":
        return FashionMNIST(data_path or FASHION_MNIST_DIR, train, transform, limit)
    return ImageFiles(_split_root(data_set, data_path, train), transform, limit, classes)


def dataset_classes(data_set: str, data_path: str | None) -> list[str]:
    """The class names of ``data_set``'s training split, from its folder names alone (no image is read), for a
    classifier to be built before its data."""
    if data_set == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    root = _split_root(data_set, data_path, train=True)
    classes = class_folders(root)
    if not classes:
        raise UsageError(f"{root} has no class folders: classification needs <class>/ folders of images "
                         "in train/ and val/")
    return classes


def check_outside_data(data_set: str, data_path: str | None, output_dir: str, log_dir: str | None) -> None:
    """Refuse an ``--output_dir`` (or ``--log_dir``) inside a folder of images the run reads, or holding one: the
    run's own pictures would become data (a flat folder: ``reconstruction-*.png`` read as images; a folder of
    classes: the output folder read as a class). A folder beside ``train/`` and ``val/`` is not read and allowed."""
    read = _image_roots(data_set, data_path)
    written = [("--output_dir", output_dir)] + ([("--log_dir", log_dir)] if log_dir not in (None, output_dir) else [])
    for flag, path in written:
        where = os.path.realpath(path)
        for folder in read:
            if _within(where, folder):
                raise UsageError(f"{flag} {path} is inside {folder}, whose images --data_path reads: the run would "
                                 f"read its own files as data; pass a {flag} outside it")
            if _within(folder, where):
                raise UsageError(f"{flag} {path} holds {folder}, whose images --data_path reads: the run would "
                                 f"write among its data; pass a {flag} that does not contain the data")


def _image_roots(data_set: str, data_path: str | None) -> list[str]:
    """The resolved folders an image-folder dataset reads its splits from (none for another data set, or for a
    --data_path that is no folder: reading the data says what is wrong with it)."""
    if data_set != "imagefolder" or not data_path or not os.path.isdir(data_path):
        return []
    splits = [os.path.join(data_path, split) for split in ("train", "val")]
    return [os.path.realpath(path) for path in ([p for p in splits if os.path.isdir(p)] or [data_path])]


def _split_root(data_set: str, data_path: str | None, train: bool) -> str:
    """The folder of an image-folder split: ``data_path/train`` (``val``), or ``data_path`` itself when it has
    neither."""
    if data_set != "imagefolder":
        raise UsageError(f"--data_set {data_set} is unknown: choose one of {', '.join(DATA_SETS)}.")
    if data_path is None:
        raise UsageError("--data_set imagefolder needs --data_path: a folder of images, or of train/ and val/.")
    if not os.path.isdir(data_path):
        raise UsageError(f"--data_path {data_path} does not exist: expected an ImageNet-style folder "
                         "(train/<class>/*.JPEG) or a folder of images.")
    split, other = ("train", "val") if train else ("val", "train")
    root = os.path.join(data_path, split)
    if not os.path.isdir(root):
        # Without this, a lone train/ would be read as one class of an unsplit dataset.
        if os.path.isdir(os.path.join(data_path, other)):
            raise UsageError(f"--data_path {data_path} has {other}/ but no {split}/: "
                             f"add {split}/<class>/ folders of images.")
        root = data_path
    return root
