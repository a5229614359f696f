"""The shipped detection configs against UM-MAE's recipe (its DET/configs/gfl/gfl_mae_{swin_tiny,pvt_small}_256_
..._fpn_25ep_1024x1024_coco.py): key settings, the optimizer's decay groups and the learning rate over the
schedule, so that a later edit cannot drift silently."""
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet", reason="the segmentation extra (with mmdet) is not installed: run `make seg`")

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402

import detection  # noqa: E402,F401  (registrations)
from detection_helpers import CONFIGS, NAMES, mmdet_scope, tiny_config  # noqa: E402,F401 (mmdet_scope: autouse)

OFFICIAL = ["gfl_swin_tiny_fpn_25ep_1024_coco.py", "gfl_pvt_small_fpn_25ep_1024_coco.py"]
# the official backbones' outputs (block indices from 0) and their model
OFFICIAL_BLOCKS = {"swin_tiny_256": [1, 3, 9, 11], "pvt_small_256": [2, 6, 12, 15]}


@pytest.mark.parametrize("name", NAMES)
def test_config_matches_the_recipe(name):
    """The recipe's key settings, read from the shipped config; then the detector it builds gives the head
    five 256-wide levels at strides 8-128."""
    cfg = Config.fromfile(str(CONFIGS / name))
    m = cfg.model
    assert m.type == "GFL" and m.backbone.type == "MIMBackbone" and m.backbone.drop_path_rate == 0.1
    fpn = m.neck[-1] if isinstance(m.neck, list) else m.neck
    assert dict(fpn, in_channels=None) == dict(
        type="FPN", in_channels=None, out_channels=256, start_level=1, add_extra_convs="on_output", num_outs=5,
        norm_cfg=dict(type="SyncBN", requires_grad=True))
    head = m.bbox_head
    assert (head.type, head.num_classes, head.in_channels, head.stacked_convs, head.feat_channels,
            head.reg_max) == ("GFLHead", 80, 256, 4, 256, 16)
    assert head.anchor_generator == dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8,
                                         scales_per_octave=1, strides=[8, 16, 32, 64, 128])
    assert head.loss_cls == dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0)
    assert head.loss_dfl == dict(type="DistributionFocalLoss", loss_weight=0.25)
    assert head.loss_bbox == dict(type="GIoULoss", loss_weight=2.0)
    assert m.train_cfg.assigner == dict(type="ATSSAssigner", topk=9)
    assert m.test_cfg == dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                              nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)
    assert m.data_preprocessor.mean == [123.675, 116.28, 103.53] and m.data_preprocessor.std == [58.395, 57.12, 57.375]
    train = [dict(t) for t in cfg.train_dataloader.dataset.pipeline]
    assert [t["type"] for t in train] == ["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop",
                                          "FilterAnnotations", "RandomFlip", "Pad", "PackDetInputs"]
    assert train[2] == dict(type="RandomResize", scale=(1024, 1024), ratio_range=(0.1, 2.0), keep_ratio=True)
    assert train[3] == dict(type="RandomCrop", crop_type="absolute_range", crop_size=(1024, 1024),
                            recompute_bbox=True, allow_negative_crop=True)
    assert train[4]["min_gt_bbox_wh"] == (1e-2, 1e-2) and train[5]["prob"] == 0.5 and train[6]["size"] == (1024, 1024)
    assert dict(cfg.test_dataloader.dataset.pipeline[1]) == dict(type="Resize", scale=(1333, 800), keep_ratio=True)
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert "clip_grad" not in cfg.optim_wrapper and "constructor" not in cfg.optim_wrapper
    assert cfg.train_cfg == dict(type="EpochBasedTrainLoop", max_epochs=25, val_interval=1)
    assert cfg.default_hooks.checkpoint.interval == 5 and cfg.val_evaluator.metric == "bbox"
    m.backbone.img_size = 256  # the same network (position tables are resized per input), built faster
    detector = MODELS.build(m).eval()
    with torch.no_grad():
        levels = detector.extract_feat(torch.zeros(1, 3, 128, 192))
    assert [tuple(x.shape) for x in levels] == [(1, 256, 128 // s, 192 // s) for s in (8, 16, 32)] + [
        (1, 256, 2, 3), (1, 256, 1, 2)]


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_backbones_are_built_as_umae(name):
    """Full-size Swin-T / PVT-S at the official settings: the official blocks feed the FPN, 768-wide LayerNorm +
    Linear projections (UM-MAE's up1..4), window 16 (Swin), spatial reduction 8/4/2/1 and a 64x64-cell
    table (PVT, built at the 256-px pretraining size)."""
    spec = dict(Config.fromfile(str(CONFIGS / name)).model.backbone)
    assert spec["out_channels"] == 768 and spec["projection"] == "norm_linear"
    if "swin" in name:
        spec["img_size"] = 256  # the same network; 1024 only precomputes larger attention masks
    backbone = MODELS.build(spec)
    encoder = backbone.encoder
    assert [encoder.stage_ends[i] - 1 for i in spec["out_indices"]] == OFFICIAL_BLOCKS[spec["model"]]
    assert [type(p[1]).__name__ for p in backbone.projections] == ["Linear"] * 4
    assert [p[1].out_features for p in backbone.projections] == [768] * 4
    if "swin" in name:
        assert {block.window_size for block in encoder.blocks} == {16}
    else:
        assert encoder.full_sr_ratios == (8, 4, 2, 1) and encoder.pos_embed.shape[1] == 64 * 64
        assert encoder.pos_embed.requires_grad


def official_decay(name: str) -> float:
    """The official paramwise rule (custom_keys, matched as substrings of the whole name): no weight decay
    for pos_embed, norm and bias."""
    return 0.0 if any(key in name for key in ("pos_embed", "norm", "bias")) else 0.05


@pytest.mark.parametrize("name", NAMES)
def test_decay_groups_follow_the_official_rule(name):
    cfg = tiny_config(name, Path("."), Path("."))
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(group_of) == len(named)
    for param_name, param in named.items():
        group = group_of[id(param)]
        assert group["weight_decay"] == official_decay(param_name), param_name
        assert group["lr"] == 1e-4, param_name
    undecayed = [n for n in named if official_decay(n) == 0]
    assert any("norm1" in n for n in undecayed) and any(n.endswith(".bias") for n in undecayed)
    if "pvt" in name or "vit_base" in name:
        assert "backbone.encoder.pos_embed" in undecayed


def official_lr(iteration: int, epoch: int, base: float = 1e-4) -> float:
    """mmcv 1.x: CosineAnnealing (by epoch) to min_lr_ratio 0.01, linear warmup of 2,000 iterations from
    warmup_ratio 0.001 applied to it: lr = regular * (1 - (1 - i / 2000) * (1 - 0.001))."""
    eta_min = base * 0.01
    regular = eta_min + (base - eta_min) * (1 + math.cos(math.pi * epoch / 25)) / 2
    return regular * (1 - (1 - iteration / 2000) * (1 - 0.001)) if iteration < 2000 else regular


def test_schedule_matches_the_official_formula():
    """The shipped schedulers stepped as mmengine's ParamSchedulerHook does (by iteration, then by epoch at
    each epoch's end), 25 epochs of 2,500 iterations: the LR during warmup, at its end and at the last
    iteration equals the official formula."""
    cfg = Config.fromfile(str(CONFIGS / OFFICIAL[0]))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer)) for s in cfg.param_scheduler]
    iters, seen = 2500, {}
    checkpoints = {0, 1000, 1999, 2000, 2001, 2 * iters + 7, 25 * iters - 1}
    for epoch in range(cfg.train_cfg.max_epochs):
        for i in range(iters):
            iteration = epoch * iters + i
            if iteration in checkpoints:
                seen[iteration] = (optimizer.param_groups[0]["lr"], epoch)
            for s in schedulers:
                if not s.by_epoch:
                    s.step()
        for s in schedulers:
            if s.by_epoch:
                s.step()
    for iteration, (lr, epoch) in seen.items():
        assert lr == pytest.approx(official_lr(iteration, epoch), rel=1e-9, abs=1e-15), iteration
    assert seen[2000][0] == pytest.approx(1e-4) and seen[25 * iters - 1][0] < 1.5e-6
