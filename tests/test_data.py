"""Tests for util/data.py on tiny generated image trees and idx files (CPU, a few seconds)."""
import gzip
import os
import struct
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from base.errors import UsageError
from base.images import IMAGENET_MEAN, IMAGENET_STD, normalize
from util.classify import build_linprobe_transform
from util.data import (FASHION_MNIST_DIR, build_dataset, build_eval_transform,
                       build_pretrain_transform)
from util.session import Session, begin_epoch, train_loader


def _write_images(folder, count, start=0):
    """Write ``count`` 40x40 PNGs whose flat colour encodes their number (so items are tellable apart)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(start, start + count):
        Image.new("RGB", (40, 40), (10 * i, 255 - 10 * i, 128)).save(os.path.join(folder, f"img{i}.png"))


def _write_idx(path, magic, array):
    """Write a gzipped idx file: big-endian magic, one big-endian uint32 per dimension, then uint8 data."""
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path):
    """5 train and 3 test images with labels, laid out like the Debian package."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 5), ("t10k", 3)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", 0x803, rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", 0x801, np.arange(n) % 10)
    return tmp_path


def test_class_folders_get_sorted_labels(tmp_path):
    _write_images(tmp_path / "dog", 3)
    _write_images(tmp_path / "cat" / "nested", 3, start=3)
    ds = build_dataset("imagefolder", str(tmp_path), build_eval_transform(32))
    assert ds.classes == ["cat", "dog"]
    assert len(ds) == 6 and len(ds.samples) == 6
    assert [label for _, label in ds.samples] == [0, 0, 0, 1, 1, 1]
    image, label = ds[4]
    assert image.shape == (3, 32, 32) and label == 1 and isinstance(label, int)


def test_flat_folder_is_one_class(tmp_path):
    _write_images(tmp_path, 4)
    os.makedirs(tmp_path / "empty_subdir")  # a folder without images is not a class
    ds = build_dataset("imagefolder", str(tmp_path), None)
    assert len(ds.classes) == 1 and len(ds) == 4
    assert all(label == 0 for _, label in ds.samples)
    image, label = ds[0]
    assert image.mode == "RGB" and label == 0


def test_train_and_val_subfolders_are_preferred(tmp_path):
    _write_images(tmp_path / "train" / "a", 2)
    _write_images(tmp_path / "train" / "b", 2, start=2)
    _write_images(tmp_path / "val" / "a", 1)
    assert len(build_dataset("imagefolder", str(tmp_path), None, train=True)) == 4
    val = build_dataset("imagefolder", str(tmp_path), None, train=False)
    assert len(val) == 1 and val.classes == ["a"]


def test_train_without_val_is_an_error(tmp_path):
    _write_images(tmp_path / "train" / "a", 2)
    with pytest.raises(UsageError, match="val"):
        build_dataset("imagefolder", str(tmp_path), None, train=False)


def test_limit_keeps_first_samples(tmp_path):
    _write_images(tmp_path / "a", 3)
    _write_images(tmp_path / "b", 3, start=3)
    ds = build_dataset("imagefolder", str(tmp_path), None, limit=4)
    assert len(ds) == 4 and ds.classes == ["a", "b"] and ds.skipped == 0


# spawn as well as the default fork: the skip counter (one flag per file, in memory the workers write) must
# reach the main process either way.
@pytest.mark.parametrize("context", [None, "spawn"])
def test_corrupt_image_is_skipped_and_counted(tmp_path, context):
    _write_images(tmp_path / "a", 3)
    _write_images(tmp_path / "b", 3, start=3)
    (tmp_path / "a" / "img1.png").write_bytes(b"definitely not a png")
    ds = build_dataset("imagefolder", str(tmp_path), build_pretrain_transform(16))
    with pytest.warns(UserWarning, match="img1.png"):
        _, label = ds[1]  # falls through to img2.png
    assert label == 0 and ds.skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known-bad file is not warned about again
        ds[1]

    fresh = build_dataset("imagefolder", str(tmp_path), build_pretrain_transform(16))
    loader = DataLoader(fresh, batch_size=2, num_workers=2, multiprocessing_context=context,
                        persistent_workers=True)  # spawning workers afresh each epoch costs seconds
    items = 0
    for _ in range(2):  # a second epoch revisits the file without counting it twice
        for images, labels in loader:
            assert images.shape[1:] == (3, 16, 16)
            items += len(labels)
    assert items == 2 * len(fresh) == 12
    assert fresh.skipped == 1  # counted in a worker, visible in the main process


def test_all_images_unreadable_raises(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    ds = build_dataset("imagefolder", str(tmp_path), None)
    with pytest.warns(UserWarning), pytest.raises(UsageError):
        ds[0]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_path_is_a_one_line_usage_error(tmp_path, make):
    path = tmp_path / "nowhere"
    if make == "empty":
        os.makedirs(path / "train" / "class_without_images")
    with pytest.raises(UsageError) as info:
        build_dataset("imagefolder", str(path), None)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_data_set_is_a_usage_error():
    with pytest.raises(UsageError, match="imagefolder"):
        build_dataset("cifar10", "/tmp", None)


@pytest.mark.parametrize("build", [build_pretrain_transform, build_eval_transform, build_linprobe_transform])
def test_transforms_hand_over_uint8_normalized_on_the_device_as_torchvision_would(build):
    """Every transform ends in a uint8 [3, S, S] crop; ``normalize`` of it is ToTensor + Normalize of the same
    crop bit for bit (the same float32 operations), so moving normalization out of the workers changes no
    value a model sees."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
    torch.manual_seed(0)
    out = build(24)(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
    crop = Image.fromarray(out.permute(1, 2, 0).numpy())
    reference = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(transforms.ToTensor()(crop))
    assert torch.equal(normalize(out[None])[0], reference)
    # uniform pixels normalized with ImageNet's statistics land in about [-2.2, 2.7] around zero
    assert -2.5 < reference.min() and reference.max() < 3.0 and abs(reference.mean()) < 0.5


def test_normalize_refuses_a_float_batch():
    with pytest.raises(TypeError, match="uint8"):
        normalize(torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("size", [32, 224, 256])
def test_eval_transform_shape(size):
    assert build_eval_transform(size)(Image.new("RGB", (300, 200))).shape == (3, size, size)


def test_fashion_reader_on_synthetic_idx(fake_fashion):
    train = build_dataset("fashion_mnist", str(fake_fashion), build_eval_transform(32))
    test = build_dataset("fashion_mnist", str(fake_fashion), None, train=False)
    assert len(train) == 5 and len(test) == 3 and len(train.classes) == 10
    assert train.targets.tolist() == [0, 1, 2, 3, 4]
    image, label = train[2]
    assert image.shape == (3, 32, 32) and label == 2
    grey = test[0][0]
    assert grey.mode == "RGB" and grey.size == (28, 28)
    r, g, b = grey.split()
    assert r.tobytes() == g.tobytes() == b.tobytes()  # grey replicated, not recoloured
    assert len(build_dataset("fashion_mnist", str(fake_fashion), None, limit=2)) == 2


def test_fashion_wrong_magic_and_missing_files(fake_fashion):
    _write_idx(fake_fashion / "t10k-labels-idx1-ubyte.gz", 0x803, np.zeros(3))
    with pytest.raises(UsageError, match="magic"):
        build_dataset("fashion_mnist", str(fake_fashion), None, train=False)
    os.remove(fake_fashion / "train-images-idx3-ubyte.gz")
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist") as info:
        build_dataset("fashion_mnist", str(fake_fashion), None)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_debian_files():
    train = build_dataset("fashion_mnist", None, build_pretrain_transform(32))
    test = build_dataset("fashion_mnist", None, build_eval_transform(32), train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.targets.min() == 0 and train.targets.max() == 9
    image, label = test[0]
    assert image.shape == (3, 32, 32) and 0 <= label <= 9
    assert len(build_dataset("fashion_mnist", None, None, limit=100)) == 100


def test_persistent_workers_follow_the_epochs_and_resume(tmp_path):
    """train_loader's workers live across epochs, which their copies of the dataset never hear of: each epoch
    (and a resumed epoch's rest) still gives the batches of a loader without workers, and epochs differ."""
    _write_images(tmp_path / "a", 6)
    _write_images(tmp_path / "b", 6, start=6)
    files = build_dataset("imagefolder", str(tmp_path), build_pretrain_transform(16))
    session = Session(0, 1, torch.device("cpu"), "fp32", None)
    made = {workers: train_loader(SimpleNamespace(seed=0, batch_size=4, accum_iter=1, num_workers=workers,
                                                  pin_mem=False), session, files) for workers in (0, 1)}
    assert made[1].persistent_workers and not made[0].persistent_workers
    epochs = {}
    for epoch, skip in ((0, 0), (1, 0), (2, 1), (1, 0)):
        got = {}
        for workers, loader in made.items():
            begin_epoch(loader, epoch, skip)
            got[workers] = torch.cat([images for images, _ in loader])
        assert torch.equal(got[0], got[1]), (epoch, skip)
        epochs[epoch, skip] = got[1]
    assert not torch.equal(epochs[0, 0], epochs[1, 0])
