# ViT-B/16 (MAE, DeepMIM; our composition, not a paper's recipe): blocks 4/6/8/12 (stride 16, no final norm),
# made a 4-scale pyramid by mmseg's Feature2Pyramid (deconv x2 / deconv / identity / max-pool, as in our
# segmentation configs), then UM-MAE's FPN + GFL recipe. Built for 1024 px: the learnable position table is
# resized to 64x64 on loading and to each other input's grid in forward. No relative position bias (it is
# tied to one grid); drop path 0.1; inputs padded to 32 px multiples, so the max-pool level is whole.
_base_ = ["./_base_gfl_coco.py"]
model = dict(
    backbone=dict(model="vit_base_patch16", out_indices=(3, 5, 7, 11), size_divisor=32),
    neck=[dict(type="mmseg.Feature2Pyramid", embed_dim=768, rescales=[4, 2, 1, 0.5],
               norm_cfg=dict(type="SyncBN", requires_grad=True)),
          dict(type="FPN", in_channels=[768, 768, 768, 768], out_channels=256, start_level=1,
               add_extra_convs="on_output", num_outs=5, norm_cfg=dict(type="SyncBN", requires_grad=True))])
