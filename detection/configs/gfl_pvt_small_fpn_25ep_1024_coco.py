# UM-MAE PVT-S (gfl_mae_pvt_small_256_..._fpn_25ep_1024x1024_coco.py): built at the pretraining size, 256 px,
# so the learnable position table keeps its 64x64 cells and is resized bicubically to each input's cell grid
# (as the official ``_get_pos_embed``); spatial reduction 8/4/2/1, drop path 0.1; the last block of each stage
# (blocks 2/6/12/15 from 0, strides 4-32), each projected to 768 by LayerNorm + Linear. Start from the
# ImageNet-fine-tuned checkpoint: --pretrained. UM-MAE publishes no box AP for this config.
_base_ = ["./_base_gfl_coco.py"]
model = dict(backbone=dict(model="pvt_small_256", img_size=256, out_indices=(0, 1, 2, 3), out_channels=768,
                           projection="norm_linear"))
