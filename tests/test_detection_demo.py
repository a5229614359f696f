"""make det-demo's pieces: the Fashion-MNIST detection set in COCO layout and the demo config, which trains,
validates and tests at tiny scale. Needs the segmentation extra (``make seg``, with mmdet)."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("mmdet", reason="the segmentation extra (with mmdet) is not installed: run `make seg`")

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from detection.demo_data import CLASSES, make_canvas, write_split  # noqa: E402
from conftest import TinyFashionMNIST  # noqa: E402
from detection_helpers import CONFIGS, mmdet_scope  # noqa: E402,F401  (mmdet_scope: autouse)


def test_canvas_boxes_cover_their_items_without_overlap():
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, objects = make_canvas(TinyFashionMNIST(), rng, 64)
        assert image.shape == (64, 64, 3) and 1 <= len(objects) <= 4
        boxes = [o["bbox"] for o in objects]
        for x, y, w, h in boxes:
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
        for i, (x, y, w, h) in enumerate(boxes):
            for a, b, c, d in boxes[i + 1:]:
                assert x >= a + c or a >= x + w or y >= b + d or b >= y + h


def test_demo_set_and_config_train(tmp_path):
    """The demo set in COCO layout (10 categories, ids from 1) read by mmdet's CocoDataset; the demo config,
    narrowed, trains 2 iterations, validates and tests with COCO box AP."""
    data = tmp_path / "data"
    for split, count in (("train2017", 4), ("val2017", 2)):
        write_split(TinyFashionMNIST(), data, split, count, 64, seed=0)
    annotations = json.loads((data / "annotations" / "instances_val2017.json").read_text())
    assert [c["name"] for c in annotations["categories"]] == list(CLASSES) and annotations["annotations"]
    cfg = Config.fromfile(str(CONFIGS / "demo_fmnist_gfl_vit_tiny.py"))
    cfg.model.backbone.update(img_size=64, embed_dim=32, depth=4, num_heads=2, out_indices=(0, 1, 2, 3))
    cfg.model.neck[0].embed_dim = 32
    cfg.model.neck[1].update(in_channels=[32] * 4, out_channels=16)
    cfg.model.bbox_head.update(in_channels=16, feat_channels=16, norm_cfg=dict(type="GN", num_groups=4))
    cfg.model.test_cfg.score_thr = 0.0  # untrained: keep boxes, so COCO eval runs
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False, batch_size=2)
        cfg[loader].dataset.data_root = str(data)
    for evaluator in ("val_evaluator", "test_evaluator"):
        cfg[evaluator].ann_file = str(data / "annotations" / "instances_val2017.json")
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2)]
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.val_evaluator.dataset_meta["classes"] == CLASSES
    assert -1 <= runner.test()["coco/bbox_mAP"] <= 1
    assert (tmp_path / "work" / "iter_2.pth").is_file()
