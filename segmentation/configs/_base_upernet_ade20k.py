# UperNet on ADE20K at 512x512 for 160k iterations, batch 16 (2 per GPU x 8), as the papers' segmentation
# runs (docs/methods.md §5.1). Self-contained: mmseg's ``mmseg::`` base configs do not resolve with the onedl
# packages. The variants set the backbone, its channels and the optimizer.
custom_imports = dict(imports=["segmentation"], allow_failed_imports=False)
default_scope = "mmseg"

crop_size = (512, 512)
num_classes = 150
norm_cfg = dict(type="SyncBN", requires_grad=True)  # plain BN when not distributed
data_preprocessor = dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(type="MIMBackbone", img_size=crop_size[0]),
    decode_head=dict(type="UPerHead", in_channels=[768, 768, 768, 768], in_index=[0, 1, 2, 3],
                     pool_scales=(1, 2, 3, 6), channels=768, dropout_ratio=0.1, num_classes=num_classes,
                     norm_cfg=norm_cfg, align_corners=False,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(type="FCNHead", in_channels=768, in_index=2, channels=256, num_convs=1, concat_input=False,
                        dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
                        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=crop_size, stride=(341, 341)))

# ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/{training,validation}/*.png
# (0 = "other", ignored by reduce_zero_label; 1..150 the classes)
dataset_type = "ADE20KDataset"
data_root = "data/ade/ADEChallengeData2016"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

# AdamW (0.9, 0.999), wd 0.05. The official schedule (mmcv 1.x ``policy='poly'``, warmup linear, 1500 iterations,
# ratio 1e-6) is lr * (1 - it / 160000) at every iteration it, times 1 - (1 - it / 1500) * (1 - 1e-6) during the
# warmup. mmengine's schedulers multiply when they overlap and count ``end - begin - 1`` steps, hence PolyLR over
# [0, 160001) (reaching 1 - it / 160000) and LinearLR over [0, 1501) (reaching 1 at it = 1500).
optim_wrapper = dict(type="OptimWrapper",
                     optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
                     constructor="EncoderLayerDecayConstructor",
                     paramwise_cfg=dict(num_layers=12, layer_decay_rate=1.0))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=0, end=160001, by_epoch=False),
]
# the batch the learning rate and the 160k iterations are for; train.py warns at another, --auto-scale-lr scales
auto_scale_lr = dict(enable=False, base_batch_size=16)
train_cfg = dict(type="IterBasedTrainLoop", max_iters=160000, val_interval=16000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=16000),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"))
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
               dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
