"""Shared fixtures: tiny models, generated image folders, the golden cases' folder."""
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"
requires_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden cases not found at {GOLDEN}")

TINY_MAE = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep each test on the cores CI has; the suite runs on 2."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_image_folder(root: Path, num_classes: int = 2, per_class: int = 16, size: int = 40,
                      seed: int = 0, split: str = "train", separable: bool = False) -> Path:
    """An ImageNet-layout tree root/<split>/<class>/*.png of smooth random images (learnable structure).
    ``separable``: class c is tinted towards colour channel c, so a classifier can tell them apart."""
    gen = torch.Generator().manual_seed(seed)
    for c in range(num_classes):
        folder = root / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            low = torch.rand(3, 4, 4, generator=gen)
            if separable:
                low = 0.3 * low
                low[c % 3] += 0.7
            img = torch.nn.functional.interpolate(low[None], size=(size, size), mode="bilinear",
                                                  align_corners=False)[0]
            arr = (img.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(folder / f"{i}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")
