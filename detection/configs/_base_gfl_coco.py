# GFL + FPN on COCO, UM-MAE's detection recipe (its DET/configs/gfl/gfl_mae_*_fpn_25ep_1024x1024_coco.py, on
# MMDetection 2.20) in mmdet 3.x terms: large-scale jitter to 1024x1024 crops, AdamW 1e-4 with no weight
# decay on position tables, norms and biases, 2,000 warmup iterations then a per-epoch cosine to 1% for 25
# epochs, batch 16 (2 per GPU x 8). Self-contained (``mmdet::`` base configs do not resolve with the onedl
# packages). The variants set the backbone (and the FPN's input channels).
custom_imports = dict(imports=["detection"], allow_failed_imports=False)
default_scope = "mmdet"

img_size = 1024
num_classes = 80
model = dict(
    type="GFL",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type="MIMBackbone", img_size=img_size, drop_path_rate=0.1),
    neck=dict(type="FPN", in_channels=[768, 768, 768, 768], out_channels=256, start_level=1,
              add_extra_convs="on_output", num_outs=5, norm_cfg=dict(type="SyncBN", requires_grad=True)),
    bbox_head=dict(
        type="GFLHead", num_classes=num_classes, in_channels=256, stacked_convs=4, feat_channels=256,
        anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                              strides=[8, 16, 32, 64, 128]),
        loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25),
        reg_max=16,
        loss_bbox=dict(type="GIoULoss", loss_weight=2.0)),
    train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.6),
                  max_per_img=100))

# COCO 2017: annotations/instances_{train,val}2017.json, train2017/*.jpg, val2017/*.jpg
dataset_type = "CocoDataset"
data_root = "data/coco"
# the official pads the normalized image with 0 (the mean colour): here padding comes before normalization,
# so pad with the mean itself (BGR, as loaded)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomResize", scale=(img_size, img_size), ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_type="absolute_range", crop_size=(img_size, img_size), recompute_bbox=True,
         allow_negative_crop=True),
    dict(type="FilterAnnotations", min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="Pad", size=(img_size, img_size), pad_val=dict(img=(103.53, 116.28, 123.675))),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=True),
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file="annotations/instances_train2017.json",
                 data_prefix=dict(img="train2017/"), filter_cfg=dict(filter_empty_gt=True, min_size=32),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file="annotations/instances_val2017.json",
                 data_prefix=dict(img="val2017/"), test_mode=True, pipeline=test_pipeline))
test_dataloader = val_dataloader
# ann_file is set from the dataset's data_root and ann_file by detection/train.py and test.py
val_evaluator = dict(type="CocoMetric", ann_file=data_root + "/annotations/instances_val2017.json", metric="bbox",
                     format_only=False)
test_evaluator = val_evaluator

# AdamW (0.9, 0.999), wd 0.05 except names containing pos_embed, norm or bias; no layer decay, no clipping
optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={"pos_embed": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0),
                                    "bias": dict(decay_mult=0.0)}))
max_epochs = 25
# mmcv 1.x: linear warmup over 2,000 iterations from 0.001 x (factor 0.001 + 0.999 i / 2000 at iteration i; mmengine's
# LinearLR reaches its end factor at iteration end - 1, hence 2001), multiplying a cosine stepped once per epoch
# (mmcv's LR hooks default to by_epoch) down to 0.01 x lr
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=2001),
    dict(type="CosineAnnealingLR", eta_min_ratio=0.01, by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs),
]
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
auto_scale_lr = dict(enable=False, base_batch_size=16)

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=5),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="DetVisualizationHook"))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="DetLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=True)
log_level = "INFO"
load_from = None
resume = False
