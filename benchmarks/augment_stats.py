"""What RandAugment does to the pixels, timm's PIL operations against the DALI pipeline's, on the same crops
with the same plans: both draw the same windows, flips and operations for an item's seed (util/dali_augment.py),
so the difference measured is that of the operations' implementations (interpolation, fill, equalize's formula,
magnitudes quantized to 0.1 of timm's scale).

    python benchmarks/augment_stats.py --data_path /tmp/fake_imagenet --images 512

Per backend over the images: the mean absolute pixel change RandAugment makes (0..255 levels; the mean over
images and its standard deviation), the share of images it changes, and the mean and standard deviation of the
augmented pixels. Prints a Markdown table, then one JSON object.
"""
import datetime
import json
import os
import sys
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from util.classify import build_finetune_transform, finetune_plan  # noqa: E402
from util.dali_loader import dali_train_loader  # noqa: E402
from util.data import ImageFiles  # noqa: E402
from util.flags import POSITIVE_INT, ArgumentParser  # noqa: E402
from util.session import Session, SeededItems, begin_epoch  # noqa: E402


def pil_pairs(root: str, cfg: SimpleNamespace, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, 3, S, S] uint8 without RandAugment, the same items with it) through timm's transforms."""
    plain = SeededItems(ImageFiles(root, build_finetune_transform(SimpleNamespace(**vars(cfg) | {"aa": None}))), 0)
    augmented = SeededItems(ImageFiles(root, build_finetune_transform(cfg)), 0)
    return (torch.stack([plain[i][0] for i in range(count)]), torch.stack([augmented[i][0] for i in range(count)]))


def dali_pairs(root: str, cfg: SimpleNamespace, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same through the DALI pipeline on its CPU operators (the items in index order)."""
    session = Session(0, 1, torch.device("cpu"), "fp32", None)
    out = []
    for aa in (None, cfg.aa):
        plan = finetune_plan(SimpleNamespace(**vars(cfg) | {"aa": aa}))
        loader = dali_train_loader(cfg, session, ImageFiles(root), plan, num_threads=1)
        loader.sampler.shuffle = False  # index order, as pil_pairs
        begin_epoch(loader, 0)
        out.append(torch.cat([images for images, _ in loader])[:count])
    return out[0], out[1]


def statistics(plain: torch.Tensor, augmented: torch.Tensor) -> dict:
    change = (augmented.float() - plain.float()).abs().mean(dim=(1, 2, 3))  # [N]
    return {"mean_change": round(float(change.mean()), 2), "std_change": round(float(change.std()), 2),
            "changed": round(float((change > 0).float().mean()), 3),
            "pixel_mean": round(float(augmented.float().mean()), 2),
            "pixel_std": round(float(augmented.float().std()), 2)}


def main(argv: list[str] | None = None) -> dict:
    p = ArgumentParser("RandAugment's pixel statistics, timm (PIL) vs DALI", add_help=True)
    p.add_argument("--data_path", required=True, help="an image folder (train/<class>/* or a folder of images)")
    p.add_argument("--images", default=256, type=POSITIVE_INT)
    p.add_argument("--input_size", default=224, type=POSITIVE_INT)
    p.add_argument("--aa", default="rand-m9-mstd0.5-inc1")
    args = p.parse_args(argv)
    root = os.path.join(args.data_path, "train") if os.path.isdir(os.path.join(args.data_path, "train")) \
        else args.data_path
    count = min(args.images, len(ImageFiles(root)))
    batch = max(1, min(32, count))
    count -= count % batch
    cfg = SimpleNamespace(seed=0, batch_size=batch, accum_iter=1, num_workers=0, pin_mem=False,
                          input_size=args.input_size, aa=args.aa, color_jitter=None)
    rows = {"pil (timm)": statistics(*pil_pairs(root, cfg, count)),
            "dali-cpu": statistics(*dali_pairs(root, cfg, count))}
    print("| backend | mean change | std of change | images changed | pixel mean | pixel std |\n"
          "|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['mean_change']} | {row['std_change']} | {row['changed']} | {row['pixel_mean']} | "
              f"{row['pixel_std']} |")
    result = {"rows": rows, "images": count, "input_size": args.input_size, "aa": args.aa,
              "date": datetime.date.today().isoformat(),
              "command": " ".join(["python", "benchmarks/augment_stats.py", *(sys.argv[1:] if argv is None else argv)])}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
