# UM-MAE PVT-S (docs/methods.md §5.3): the 4 stage outputs (strides 4-32) projected to 768; spatial reduction
# 8/4/2/1, the position table resized 64x64 -> 128x128 cells on loading; lr 1e-4, no layer decay (rate 1.0
# over 16 layers), drop path 0.1. Start from the ImageNet-fine-tuned checkpoint, as UM-MAE does.
_base_ = ["./_base_upernet_ade20k.py"]
model = dict(backbone=dict(model="pvt_small_256", out_indices=(0, 1, 2, 3), out_channels=768, drop_path_rate=0.1))
optim_wrapper = dict(optimizer=dict(lr=1e-4), paramwise_cfg=dict(num_layers=16, layer_decay_rate=1.0))
