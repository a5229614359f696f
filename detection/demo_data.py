"""A small real-data detection set in COCO's layout, made from Fashion-MNIST (the detection demo's data).

Each canvas (``--size`` px, a smooth random background) holds 2-4 tinted Fashion-MNIST items, each scaled to
20-50% of the canvas side and pasted at a random place where it overlaps no earlier item (an item with no
free place after 20 draws is left out). An item's box is the extent of its bright pixels (> 40 of 255); its
category is its class (COCO ids 1..10):

    OUT/train2017/*.jpg  OUT/val2017/*.jpg  OUT/annotations/instances_{train,val}2017.json

    python -m detection.demo_data --fmnist /usr/share/datasets/fashion-mnist --out demo_output/det_data
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from util.data import FASHION_MNIST_CLASSES, FashionMNIST

CLASSES = tuple(FASHION_MNIST_CLASSES)


def make_canvas(items: FashionMNIST, rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """One image [size, size, 3] uint8 and its objects: dicts with ``bbox`` [x, y, w, h] and ``label`` 0..9."""
    low = rng.uniform(20, 110, size=(3, 3, 3)).astype(np.float32)
    image = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    objects, taken = [], []  # taken: the (x, y, w, h) squares of the items pasted so far
    for _ in range(rng.integers(2, 5)):
        index = int(rng.integers(len(items)))
        side = int(rng.uniform(0.2, 0.5) * size)
        item = np.asarray(Image.fromarray(items.images[index]).resize((side, side), Image.BILINEAR), np.float32)
        inside = item > 40
        if not inside.any():
            continue
        for _ in range(20):
            top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(top >= b + h or b >= top + side or left >= a + w or a >= left + side for a, b, w, h in taken):
                break
        else:
            continue
        taken.append((left, top, side, side))
        tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
        patch = image[top:top + side, left:left + side]
        patch[inside] = item[inside, None] * tint
        rows, cols = np.nonzero(inside)
        objects.append(dict(bbox=[left + int(cols.min()), top + int(rows.min()), int(cols.max() - cols.min()) + 1,
                                  int(rows.max() - rows.min()) + 1], label=int(items.targets[index])))
    return image.clip(0, 255).astype(np.uint8), objects


def write_split(items: FashionMNIST, out: Path, split: str, count: int, size: int, seed: int) -> None:
    """``count`` canvases as ``out/<split>/*.jpg`` and ``out/annotations/instances_<split>.json``."""
    rng = np.random.default_rng(seed)
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image, objects = make_canvas(items, rng, size)
        name = f"{i:012d}.jpg"
        Image.fromarray(image).save(out / split / name, quality=95)
        images.append(dict(id=i + 1, file_name=name, height=size, width=size))
        for obj in objects:
            w, h = obj["bbox"][2:]
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=obj["label"] + 1,
                                    bbox=obj["bbox"], area=float(w * h), iscrowd=0))
    categories = [dict(id=c + 1, name=name) for c, name in enumerate(CLASSES)]
    with open(out / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def main() -> None:
    p = argparse.ArgumentParser("Fashion-MNIST detection set in COCO layout")
    p.add_argument("--fmnist", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args()
    out = Path(args.out)
    write_split(FashionMNIST(args.fmnist, train=True), out, "train2017", args.train, args.size, seed=0)
    write_split(FashionMNIST(args.fmnist, train=False), out, "val2017", args.val, args.size, seed=1)
    print(f"{args.train} + {args.val} images of {args.size} px with {len(CLASSES)} classes in {os.path.abspath(out)}")


if __name__ == "__main__":
    main()
