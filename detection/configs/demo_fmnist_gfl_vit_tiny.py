# make det-demo: GFL + FPN over the demo's ViT-Tiny/16 on the Fashion-MNIST detection set (demo_data.py): 128-px
# canvases, 10 classes, a few CPU minutes. The same model from random init is the baseline. Blocks 4/6/8/12,
# made a pyramid by mmseg's Feature2Pyramid, as the ViT-B config; a narrow FPN and head; AdamW with the
# recipe's decay rule at a higher LR for the short run, warmup then cosine by iteration; flips only.
_base_ = ["./_base_gfl_coco.py"]
img_size = 128
num_classes = 10
model = dict(
    backbone=dict(model="vit_tiny_patch16", img_size=img_size, out_indices=(3, 5, 7, 11), size_divisor=32),
    neck=[dict(type="mmseg.Feature2Pyramid", embed_dim=192, rescales=[4, 2, 1, 0.5],
               norm_cfg=dict(type="SyncBN", requires_grad=True)),
          dict(type="FPN", in_channels=[192, 192, 192, 192], out_channels=64, start_level=1,
               add_extra_convs="on_output", num_outs=5, norm_cfg=dict(type="SyncBN", requires_grad=True))],
    bbox_head=dict(num_classes=num_classes, in_channels=64, feat_channels=64, stacked_convs=2))
data_root = "demo_output/det_data"
classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(img_size, img_size), keep_ratio=True),  # the canvas size: records scale_factor 1
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
]
train_dataloader = dict(batch_size=8, num_workers=2, batch_sampler=None, sampler=dict(type="InfiniteSampler"),
                        dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=train_pipeline))
val_dataloader = dict(batch_size=8, num_workers=2,
                      dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=5e-4))
max_iters = 600
param_scheduler = [
    dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=50),
    dict(type="CosineAnnealingLR", eta_min=5e-6, by_epoch=False, begin=0, end=max_iters, T_max=max_iters),
]
train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(by_epoch=False, interval=max_iters),
                     visualization=dict(type="DetVisualizationHook", draw=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend="gloo"))
