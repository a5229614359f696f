# DeepMIM ViT-B/16 (docs/methods.md §5.2): blocks 4/6/8/12 without the final norm, the 4-scale
# deconv/deconv/identity/max-pool pyramid; a relative position bias per block (zero-initialized) and layer
# scale 1.0, both new at fine-tuning; lr 5e-5, layer decay 0.9 over 12 layers, drop path 0.1.
# Paper: DeepMIM-CLIP ViT-B 53.05 mIoU (MAE ViT-B 48.1).
_base_ = ["./_base_upernet_ade20k.py"]
model = dict(
    backbone=dict(model="vit_base_patch16", out_indices=(3, 5, 7, 11), drop_path_rate=0.1, rel_pos_bias=True,
                  init_values=1.0),
    neck=dict(type="Feature2Pyramid", embed_dim=768, rescales=[4, 2, 1, 0.5]))
optim_wrapper = dict(optimizer=dict(lr=5e-5), paramwise_cfg=dict(num_layers=12, layer_decay_rate=0.9))
