"""Compatibility with the official code, in one place: its model names, its checkpoint keys, its quirks.

- Names: the official repositories' model names are registered as aliases of ours, so their commands run
  as printed (DMJD ``dmjd_convit_*`` and ``convit_*``, UM-MAE ``mae_swin_*`` / ``mae_pvt_*``), and
  :func:`pretrain_model_name` maps DeepMIM's ``--model mae_vit_base_patch16 --clip_path ...``.
- Keys: checkpoint adapters that a recipe attaches to its model (``MaskedImageModel(checkpoint_filters=)``).
- Quirks: each method's documented bugs of the official code, by name, with the official behaviour each
  reproduces. ``--official_quirks`` turns on the recipe's whole set (docs/methods.md and PRETRAIN.md list
  them); the default is what the paper describes.
"""
import torch

from .registry import register_alias

ALIASES = {
    # DMJD PRETRAIN.md / FINETUNE.md
    "dmjd_convit_base_patch16_dec8_hog": "dmjd_convvit_base_patch16_hog",
    "dmjd_convit_base_patch16_dec2_hog": "dmjd_convvit_base_patch16_dec2_hog",
    "dmjd_convit_large_patch16_dec8_hog": "dmjd_convvit_large_patch16_hog",
    "convit_base_patch16": "convvit_base_patch16",
    "convit_large_patch16": "convvit_large_patch16",
    # UM-MAE Makefile
    "mae_swin_tiny_256": "ummae_swin_tiny_256",
    "mae_swin_large_256": "ummae_swin_large_256",
    "mae_pvt_small_256": "ummae_pvt_small_256",
}


def register_aliases() -> None:
    """Register the official names; called once the recipes are registered."""
    for name, target in ALIASES.items():
        register_alias(name, target)
    # UM-MAE's ViT-B Makefile targets: MAE ViT-B/16 with a 512-wide, 2-block decoder
    register_alias("mae_vit_base_patch16_dec512d2b", "mae_vit_base_patch16", decoder_depth=2)


# the official DeepMIM repository names its model mae_vit_base_patch16; with --clip_path its command means DeepMIM
DEEPMIM_NAMES = {"mae_vit_base_patch16": "deepmim_vit_base_patch16_clip"}


def pretrain_model_name(name: str, clip_path: str | None) -> tuple[str, str | None]:
    """The recipe an official pretraining command means, and a line saying so when it differs from ``name``."""
    if clip_path and name in DEEPMIM_NAMES:
        ours = DEEPMIM_NAMES[name]
        return ours, f"--clip_path with --model {name}: training {ours}, as the official DeepMIM command does"
    return name, None


def share_decoder_pos_embed(own_keys: set[str], state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepMIM: the official checkpoint holds one fixed ``decoder_pos_embed`` shared by its numbered decoders;
    each of ours keeps its own copy (``decoder_pos_embed1``, ...), which all get the shared table."""
    if "decoder_pos_embed" in state_dict and "decoder_pos_embed" not in own_keys:
        shared = state_dict.pop("decoder_pos_embed")
        for key in own_keys:
            if key.startswith("decoder_pos_embed") and key not in state_dict:
                state_dict[key] = shared
    return state_dict


# name -> the official behaviour it reproduces
DMJD_QUIRKS = {
    "masking_ignores_pred_ratio": "the views are masked as if pred_ratio were 1; pred_ratio only scales the LR",
    "raster_visible_targets": "the visible branch compares each prediction (ids_keep order) with the target of "
                              "the visible patch at the same index in raster order (docs/methods.md §2.5)",
    "theta_is_one": "--theta is parsed but never used: the visible loss has weight 1",
}
MASKFEAT_QUIRKS = {
    "float_input_hog": "HOG on the normalized floats (SlowFast), where rounding decides the bin of gradients "
                       "on the 0/180-degree boundary, instead of the exact 0-255 pixels",
}
UMMAE_QUIRKS = {
    "raster_decoder_positions": "the pyramid decoder gives its visible tokens (group order) the positions of "
                                "the visible patches in raster order, mostly another patch's (§4.5)",
}


def quirks(table: dict[str, str], official: bool) -> dict[str, str]:
    """The quirks of ``table`` that are on: all of them under ``--official_quirks``, else none."""
    return dict(table) if official else {}
