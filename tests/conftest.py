"""Shared fixtures: tiny models, generated image folders, training helpers (the golden cases: golden_rules.py)."""
import logging
import os
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models.masking import compact_order

TINY_MAE = models.tiny_kwargs("mae_vit_base_patch16")  # every registered model's tiny configuration: the registry's


def tiny_cli_args(name: str, folder: Path | None = None, flags: Iterable[str] = ("--input_size",)) -> list[str]:
    """The registered tiny configuration of ``name`` as a CLI's arguments: the image size as ``--input_size`` (or
    ``--img_size``, whichever of the CLI's ``flags``), another key with a flag of its own as that flag, the rest
    in ``--model_kwargs``."""
    kwargs, flags = models.tiny_kwargs(name, folder), set(flags)
    args = [next(f for f in ("--input_size", "--img_size") if f in flags), str(kwargs.pop("img_size"))]
    args += [word for key, value in kwargs.items() if f"--{key}" in flags for word in (f"--{key}", str(value))]
    rest = [f"{key}={value!r}" for key, value in kwargs.items() if f"--{key}" not in flags]
    return args + (["--model_kwargs", *rest] if rest else [])


def assert_close_across_kernels(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-6) -> None:
    """Two different computations of the same values (other batch shapes, shared vs per-view passes, batched vs
    one by one): the CPU's BLAS/oneDNN may pick other kernels for other shapes (seen on AMD EPYC: 1.4e-7 of
    0.34), so bit-equality is not promised. Equal within ``rel`` of the largest magnitude: fp32 rounding stays
    orders of magnitude below that, a wrong row or a swapped view does not."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * max(scale, 1e-12))


@pytest.fixture(autouse=True)
def _mmengine_logs_to_this_tests_output():
    """mmengine's loggers are process-wide and keep the stream they were created with: one made in an earlier
    test writes to that test's captured (since closed) stdout. Point their console handlers at this test's."""
    logging_module = sys.modules.get("mmengine.logging")
    if logging_module is not None:
        loggers = [logging.getLogger("mmengine"), *logging_module.MMLogger._instance_dict.values()]
        for handler in (h for logger in loggers for h in logger.handlers):
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                handler.stream = sys.stdout  # not setStream: it flushes the closed one first
    yield


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


def smooth_images(n: int, size: int, seed: int | None = None) -> torch.Tensor:
    """[n, 3, size, size] ImageNet-normalized-looking images upsampled from 8x8 noise (learnable structure)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=gen)
    return (torch.nn.functional.interpolate(low, size=size, mode="bilinear") - 0.45) / 0.25


def adamw_losses(model: torch.nn.Module, imgs: torch.Tensor, steps: int, lr: float, masks=None,
                 mask_seeds: int = 1, betas: tuple[float, float] = (0.9, 0.999)) -> list[float]:
    """Train a MIM model on one batch for ``steps`` AdamW steps and return the losses. ``masks``: fixed masks,
    or None to draw them with the seeds 0..mask_seeds-1 in turn."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas)
    losses = []
    for step in range(steps):
        step_masks = masks if masks is not None else model.sample_masks(
            imgs, torch.Generator().manual_seed(step % mask_seeds))
        loss = model(imgs, mask=step_masks).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def group_visible_ids(visible: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """The visible patch of every 2x2 group from a bool map [N, L] (True = visible) -> [N, L/4] ids in the
    compact grid's order (``models.masking.compact_order``); for tests that start from a mask."""
    ids = torch.argsort((~visible).to(torch.uint8), dim=1, stable=True)[:, :visible.shape[1] // 4]
    return compact_order(ids, grid_size)


class TinyFashionMNIST:
    """Stands in for util.data.FashionMNIST in the demos' data tests: 28x28 uint8 blobs with labels."""

    def __init__(self, n: int = 20):
        rng = np.random.default_rng(0)
        self.images = np.zeros((n, 28, 28), np.uint8)
        self.images[:, 6:22, 8:20] = rng.integers(80, 255, (n, 16, 12))
        self.targets = torch.arange(n) % 10

    def __len__(self) -> int:
        return len(self.targets)
