"""A small real-data segmentation set in ADE20K's layout, made from Fashion-MNIST (the demo's data).

Each canvas (``--size`` px, a smooth random background) holds 2-4 Fashion-MNIST items, each scaled to 30-55%
of the canvas and tinted, pasted at random places (later ones on top). Every pixel is labelled: 1 the
background, 2 + c an item of class c where its pixel is bright enough (> 40 of 255); 0, ADE20K's "other"
(ignored under reduce_zero_label), is not used. So the segmentor learns 11 classes:

    OUT/images/{training,validation}/*.jpg   OUT/annotations/{training,validation}/*.png

    python -m segmentation.demo_data --fmnist /usr/share/datasets/fashion-mnist --out demo_output/seg_data
"""
import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from util.data import FASHION_MNIST_CLASSES, FashionMNIST

CLASSES = ("background",) + tuple(FASHION_MNIST_CLASSES)
PALETTE = [[40, 40, 40]] + [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(1, len(CLASSES))]


def make_canvas(items: FashionMNIST, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image [size, size, 3] uint8 and its label map [size, size] uint8 (1 background, 2 + class)."""
    low = rng.uniform(20, 110, size=(3, 3, 3)).astype(np.float32)
    image = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    label = np.ones((size, size), np.uint8)
    for _ in range(rng.integers(2, 5)):
        index = int(rng.integers(len(items)))
        side = int(rng.uniform(0.3, 0.55) * size)
        item = np.asarray(Image.fromarray(items.images[index]).resize((side, side), Image.BILINEAR), np.float32)
        top, left = rng.integers(0, size - side + 1, size=2)
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        inside = item > 40
        patch = image[top:top + side, left:left + side]
        patch[inside] = item[inside, None] * tint
        label[top:top + side, left:left + side][inside] = 2 + int(items.targets[index])
    return image.clip(0, 255).astype(np.uint8), label


def write_split(items: FashionMNIST, out: Path, split: str, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, annotations = out / "images" / split, out / "annotations" / split
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label = make_canvas(items, rng, size)
        Image.fromarray(image).save(images / f"{split}_{i:05d}.jpg", quality=95)
        Image.fromarray(label).save(annotations / f"{split}_{i:05d}.png")


def main() -> None:
    p = argparse.ArgumentParser("Fashion-MNIST segmentation set in ADE20K layout")
    p.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args()
    out = Path(args.out)
    write_split(FashionMNIST(args.fmnist, train=True), out, "training", args.train, args.size, seed=0)
    write_split(FashionMNIST(args.fmnist, train=False), out, "validation", args.val, args.size, seed=1)
    print(f"{args.train} + {args.val} images of {args.size} px with {len(CLASSES)} classes in {os.path.abspath(out)}")


if __name__ == "__main__":
    main()
