"""Shared by the detection tests: a generated COCO-layout tree and the shipped configs scaled down."""
import json
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "detection" / "configs"
CLASSES = ("square", "bar")
TINY = {  # config -> (backbone overrides, FPN input channels)
    "gfl_swin_tiny_fpn_25ep_1024_coco.py": (
        dict(img_size=64, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4, out_channels=16),
        [16] * 4),
    "gfl_pvt_small_fpn_25ep_1024_coco.py": (
        dict(img_size=64, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
             mlp_ratios=(2, 2, 2, 2), out_channels=16), [16] * 4),
    "gfl_vit_base_fpn_25ep_1024_coco.py": (
        dict(img_size=64, embed_dim=32, depth=4, num_heads=2, out_indices=(0, 1, 2, 3)), [32] * 4),
    "gfl_convvit_base_fpn_25ep_1024_coco.py": (
        dict(img_size=64, embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2, out_indices=(0, 1, 3)),
        [8, 16, 32, 32]),
}
NAMES = sorted(TINY)


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Each test builds in mmdet's registry scope, and the scopes its Runners create end with it (so the
    segmentation tests' builds, in mmseg's scope, never find an mmdet scope left current)."""
    with DefaultScope.overwrite_default_scope("mmdet"):
        yield


def write_coco_tree(root: Path, sizes: dict[str, list[tuple[int, int]]], seed: int = 0) -> Path:
    """COCO 2017 layout under root: for each split, JPEGs of the given (height, width) holding 1-3 bright
    rectangles on a dark noisy background, and ``annotations/instances_<split>.json`` with their boxes
    (category 1 "square", 2 "bar"; ids as COCO's, from 1)."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, shapes in sizes.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i, (h, w) in enumerate(shapes):
            image = rng.uniform(0, 50, (h, w, 3))
            for _ in range(rng.integers(1, 4)):
                cat = int(rng.integers(1, 3))
                bh = int(rng.integers(16, h // 2))
                bw = bh if cat == 1 else min(w - 2, 2 * bh)
                top, left = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
                image[top:top + bh, left:left + bw] = (200, 80, 80) if cat == 1 else (80, 200, 80)
                annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, category_id=cat, iscrowd=0,
                                        bbox=[left, top, bw, bh], area=float(bw * bh)))
            name = f"{i:012d}.jpg"
            Image.fromarray(image.astype(np.uint8)).save(root / split / name, quality=95)
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
        categories = [dict(id=c + 1, name=name) for c, name in enumerate(CLASSES)]
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(dict(images=images, annotations=annotations, categories=categories), f)
    return root


def tiny_config(name: str, data_root: Path, work_dir: Path, epochs: int = 2) -> Config:
    """The shipped config, scaled down: a tiny encoder, narrow FPN and head (2 classes), 96-px training
    crops, the test resize (1333, 800) scaled to (133, 80) (so a 64x96 image is tested at 80x120, padded to
    96x128), ``epochs`` epochs of 2 iterations, a checkpoint every epoch."""
    cfg = Config.fromfile(str(CONFIGS / name))
    backbone, channels = TINY[name]
    cfg.model.backbone.update(backbone)
    necks = cfg.model.neck if isinstance(cfg.model.neck, list) else [cfg.model.neck]
    if len(necks) == 2:  # ViT: the simple pyramid, then the FPN
        necks[0].embed_dim = channels[0]
    necks[-1].update(in_channels=channels, out_channels=16)
    cfg.model.bbox_head.update(num_classes=len(CLASSES), in_channels=16, feat_channels=16, stacked_convs=1,
                               norm_cfg=dict(type="GN", num_groups=4, requires_grad=True))
    cfg.model.test_cfg.score_thr = 0.0  # an untrained detector's scores are low: keep boxes, so COCO eval runs
    pipeline = cfg.train_dataloader.dataset.pipeline
    pipeline[2].scale = (96, 96)
    pipeline[3].crop_size = (96, 96)
    pipeline[6].size = (96, 96)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False, batch_size=2)
        cfg[loader].dataset.update(data_root=str(data_root), metainfo=dict(classes=CLASSES))
        if loader != "train_dataloader":
            cfg[loader].dataset.pipeline[1].scale = (133, 80)
    cfg.train_dataloader.dataset.update(ann_file="annotations/instances_train2017.json",
                                        filter_cfg=dict(filter_empty_gt=False))
    for evaluator in ("val_evaluator", "test_evaluator"):
        cfg[evaluator].ann_file = str(data_root / "annotations" / "instances_val2017.json")
    cfg.train_cfg.update(max_epochs=epochs, val_interval=epochs)
    cfg.default_hooks.update(logger=dict(type="LoggerHook", interval=1), checkpoint=dict(type="CheckpointHook",
                                                                                           interval=1))
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.work_dir = str(work_dir)
    return cfg
