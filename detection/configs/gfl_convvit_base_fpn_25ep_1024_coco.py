# DMJD / ConvMAE ConViT-B (our composition, not a paper's recipe): the stage-1 (stride 4) and stage-2 (stride 8)
# maps, the last transformer block (stride 16) and its 2x2 max-pool (stride 32), as in our segmentation config,
# then UM-MAE's FPN + GFL recipe. Built for 1024 px (the position table resized on loading and to each other
# input's grid in forward); drop path 0.1.
_base_ = ["./_base_gfl_coco.py"]
model = dict(
    backbone=dict(model="convvit_base_patch16", out_indices=(0, 1, 12), add_pool=True),
    neck=dict(in_channels=[256, 384, 768, 768]))
