"""The segmentation tests' tiny setup: the shipped configs scaled down to 64 px and 4 iterations, and an
ADEChallengeData2016-layout tree of a few generated images (needs the segmentation extra)."""
from pathlib import Path

import numpy as np
from mmengine.config import Config
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "segmentation" / "configs"
TINY = {  # config -> (backbone overrides, decode-head input channels)
    "upernet_vit_base_512_160k_ade20k.py": (
        dict(embed_dim=32, depth=4, num_heads=2, out_indices=(0, 1, 2, 3)), [32] * 4),
    "upernet_convvit_base_512_160k_ade20k.py": (
        dict(embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2, out_indices=(0, 1, 3)), [8, 16, 32, 32]),
    "upernet_swin_tiny_512_160k_ade20k.py": (
        dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4, out_channels=16), [16] * 4),
    "upernet_pvt_small_512_160k_ade20k.py": (
        dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2),
             out_channels=16), [16] * 4),
}


def make_ade_tree(root: Path) -> Path:
    """ADEChallengeData2016 layout: 4 training and 2 validation 64x96 JPEGs, PNG labels 0 (other) .. 4."""
    rng = np.random.default_rng(0)
    for split, count in (("training", 4), ("validation", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(count):
            label = np.zeros((64, 96), np.uint8)
            for cls in range(1, 5):
                top, left = rng.integers(0, 40), rng.integers(0, 70)
                label[top:top + 24, left:left + 26] = cls
            image = (rng.uniform(0, 60, (64, 96, 3)) + label[..., None] * 45).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{split}_{i}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{split}_{i}.png")
    return root


def tiny_config(name: str, data_root: Path, work_dir: Path) -> Config:
    """The shipped config, scaled down: a tiny encoder at 64 px, narrow heads, 4 iterations, slide 64/43."""
    cfg = Config.fromfile(str(CONFIGS / name))
    backbone, channels = TINY[name]
    cfg.model.backbone.update(img_size=64, **backbone)
    cfg.model.data_preprocessor.size = (64, 64)
    if "neck" in cfg.model:
        cfg.model.neck.embed_dim = channels[0]
    cfg.model.decode_head.update(in_channels=channels, channels=16)
    cfg.model.auxiliary_head.update(in_channels=channels[2], channels=8)
    cfg.model.test_cfg = dict(mode="slide", crop_size=(64, 64), stride=(43, 43))
    cfg.train_dataloader.dataset.pipeline[2].scale = (128, 64)
    cfg.train_dataloader.dataset.pipeline[3].crop_size = (64, 64)
    for loader in ("val_dataloader", "test_dataloader"):  # the 64x96 images stay 64x96: 3 slide windows
        cfg[loader].dataset.pipeline[1].scale = (96, 64)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False, batch_size=2)
        cfg[loader].dataset.data_root = str(data_root)
    cfg.train_cfg.update(max_iters=4, val_interval=4)
    cfg.default_hooks.update(logger=dict(type="LoggerHook", interval=1), checkpoint=dict(
        type="CheckpointHook", by_epoch=False, interval=4), visualization=dict(type="SegVisualizationHook"))
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2)]
    cfg.env_cfg.dist_cfg = dict(backend="gloo")
    cfg.work_dir = str(work_dir)
    return cfg
