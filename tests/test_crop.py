"""Tests for the linear probe's augmentation (util/classify.py): the single-draw (TF-style) random resized crop."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from util.classify import SingleDrawResizedCrop, build_linprobe_transform

DEFAULT_SCALE, DEFAULT_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def test_output_size_pil_and_tensor():
    crop = SingleDrawResizedCrop(16, interpolation=transforms.InterpolationMode.BICUBIC)
    assert crop(Image.new("RGB", (40, 30))).size == (16, 16)
    assert crop(torch.rand(3, 30, 40)).shape == (3, 16, 16)


@pytest.mark.parametrize("height,width", [(5, 40), (40, 5), (1, 1), (224, 224)])
@pytest.mark.parametrize("scale,ratio", [
    (DEFAULT_SCALE, DEFAULT_RATIO),
    (DEFAULT_SCALE, (1 / 100, 100.0)),
    ((1e-4, 1e-3), (1e-3, 1e-3)),
    ((1.0, 1.0), (1e3, 1e3)),
])
def test_box_always_inside_image(height, width, scale, ratio):
    img = torch.zeros(3, height, width)
    for seed in range(100):
        torch.manual_seed(seed)
        i, j, h, w = SingleDrawResizedCrop.get_params(img, scale, ratio)
        assert 1 <= h <= height and 1 <= w <= width
        assert 0 <= i <= height - h and 0 <= j <= width - w


def _count_draws(monkeypatch, get_params, img, scale, ratio) -> dict[str, int]:
    """Calls of Tensor.uniform_ and torch.randint made by one get_params call."""
    counts = {"uniform": 0, "randint": 0}
    uniform, randint = torch.Tensor.uniform_, torch.randint

    def counting_uniform(self, *args, **kwargs):
        counts["uniform"] += 1
        return uniform(self, *args, **kwargs)

    def counting_randint(*args, **kwargs):
        counts["randint"] += 1
        return randint(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "uniform_", counting_uniform)
        m.setattr(torch, "randint", counting_randint)
        get_params(img, scale, ratio)
    return counts


def test_draws_once_without_retry(monkeypatch):
    """Exactly one uniform for scale, one for ratio and two randints, even where torchvision retries."""
    img = torch.zeros(3, 5, 40)
    ratio = (1 / 100, 100.0)
    parent_retried = False
    for seed in range(50):
        torch.manual_seed(seed)
        counts = _count_draws(monkeypatch, SingleDrawResizedCrop.get_params, img, DEFAULT_SCALE, ratio)
        assert counts == {"uniform": 2, "randint": 2}
        torch.manual_seed(seed)
        parent = _count_draws(monkeypatch, transforms.RandomResizedCrop.get_params, img, DEFAULT_SCALE, ratio)
        parent_retried |= parent["uniform"] > 2
    assert parent_retried   # the case does exercise torchvision's retry loop


@pytest.mark.parametrize("scale,ratio,expected_hw", [
    ((1.0, 1.0), (1.0, 1.0), (40, 40)),       # whole image
    ((0.25, 0.25), (1.0, 1.0), (20, 20)),     # area 400, square
    ((0.25, 0.25), (4.0, 4.0), (10, 40)),     # area 400, w = sqrt(1600) = 40, h = sqrt(100) = 10
    ((1.0, 1.0), (16.0, 16.0), (10, 40)),     # w = 160 clipped to 40; h = sqrt(100) = 10 (no centre-crop fallback)
])
def test_deterministic_sizes(scale, ratio, expected_hw):
    img = torch.zeros(3, 40, 40)
    for seed in range(20):
        torch.manual_seed(seed)
        i, j, h, w = SingleDrawResizedCrop.get_params(img, scale, ratio)
        assert (h, w) == expected_hw
        assert 0 <= i <= 40 - h and 0 <= j <= 40 - w


def test_full_scale_square_crop_is_whole_image():
    torch.manual_seed(0)
    assert SingleDrawResizedCrop.get_params(torch.zeros(3, 32, 32), (1.0, 1.0), (1.0, 1.0)) == (0, 0, 32, 32)


def test_same_seed_same_params():
    img = Image.new("RGB", (64, 48))
    boxes = []
    for _ in range(2):
        torch.manual_seed(123)
        boxes.append([SingleDrawResizedCrop.get_params(img, DEFAULT_SCALE, DEFAULT_RATIO) for _ in range(5)])
    assert boxes[0] == boxes[1]
    assert len(set(boxes[0])) > 1


def test_build_linprobe_transform_shape():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8))
    out = build_linprobe_transform(32)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert isinstance(build_linprobe_transform(32).transforms[0], SingleDrawResizedCrop)
