# UM-MAE Swin-T (gfl_mae_swin_tiny_256_..._fpn_25ep_1024x1024_coco.py): built for 1024 px, window 16 (stages
# padded to the window at any size), drop path 0.1; the last block of each stage (blocks 1/3/9/11 from 0, strides
# 4-32), each projected to 768 by LayerNorm + Linear. Start from the ImageNet-fine-tuned checkpoint
# (checkpoint-99.pth of UM-MAE's fine-tuning): --pretrained. UM-MAE publishes no box AP for this config.
_base_ = ["./_base_gfl_coco.py"]
model = dict(backbone=dict(model="swin_tiny_256", out_indices=(0, 1, 2, 3), out_channels=768,
                           projection="norm_linear"))
