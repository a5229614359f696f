# make seg-demo: UperNet over the demo's ViT-Tiny/16 on the Fashion-MNIST segmentation set (demo_data.py),
# 128 px canvases, 11 classes, a few CPU minutes. The same model from random init is the baseline.
_base_ = ["./_base_upernet_ade20k.py"]
crop_size = (128, 128)
num_classes = 11
norm_cfg = dict(type="SyncBN", requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(model="vit_tiny_patch16", img_size=128, out_indices=(3, 5, 7, 11), drop_path_rate=0.1),
    neck=dict(type="Feature2Pyramid", embed_dim=192, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[192, 192, 192, 192], channels=128, num_classes=num_classes),
    auxiliary_head=dict(in_channels=192, channels=64, num_classes=num_classes),
    test_cfg=dict(mode="whole"))
data_root = "demo_output/seg_data"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", reduce_zero_label=True),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=8, num_workers=2,
                        dataset=dict(type="FashionMNISTSegDataset", data_root=data_root,
                                     pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=2,
                      dataset=dict(type="FashionMNISTSegDataset", data_root=data_root,
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3), paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9))
max_iters = 400
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
auto_scale_lr = dict(enable=False, base_batch_size=8)  # one CPU process
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=max_iters),
                     visualization=dict(type="SegVisualizationHook", draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
