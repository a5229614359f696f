# DMJD / ConvMAE ConViT-B: the stage-1 (stride 4) and stage-2 (stride 8) maps, the last transformer block
# (stride 16) and its 2x2 max-pool (stride 32). DMJD ships no segmentation config; ConvMAE's: lr 1e-4, layer
# decay 0.75 over 11 layers (the convolutional stages are layer 0), drop path 0.2.
_base_ = ["./_base_upernet_ade20k.py"]
model = dict(
    backbone=dict(model="convvit_base_patch16", out_indices=(0, 1, 12), add_pool=True, drop_path_rate=0.2),
    decode_head=dict(in_channels=[256, 384, 768, 768]))
optim_wrapper = dict(optimizer=dict(lr=1e-4), paramwise_cfg=dict(num_layers=11, layer_decay_rate=0.75))
