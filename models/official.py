"""Compatibility with the official code, in one place: its model names, its checkpoint keys, its quirks.

- Names: the official repositories' model names are registered as aliases of ours, so their commands run
  as printed (DMJD ``dmjd_convit_*`` and ``convit_*``, UM-MAE ``mae_swin_*`` / ``mae_pvt_*``), and
  :func:`pretrain_model_name` maps DeepMIM's ``--model mae_vit_base_patch16 --clip_path ...``.
- Keys: checkpoint adapters that a recipe attaches to its model (``MaskedImageModel(checkpoint_filters=)``).
- Quirks: each method's documented bugs of the official code, named and described once (``QUIRKS``; the docs'
  table is :func:`quirks_table`'s output). ``--official_quirks`` turns on the recipe's whole set; the default is
  what the paper describes.
"""
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Quirk:
    """One documented bug of an official code base that ``--official_quirks`` reproduces: the method whose
    code has it, what the framework does by default (the paper) and what it does under the flag."""

    method: str
    paper: str
    official: str


# every quirk, by name: the one place they are named and described (the docs' table is :func:`quirks_table`)
QUIRKS = {
    "masking_ignores_pred_ratio": Quirk(
        "DMJD", "`--pred_ratio` reaches the masking (and the LR)",
        "the masking always uses pred_ratio 1; `--pred_ratio` only scales the LR"),
    "raster_visible_targets": Quirk(
        "DMJD", "each visible prediction is compared with its own patch's target",
        "targets taken in raster order while predictions follow the kept-token order, so most pairs are different "
        "patches (docs/methods.md §2.5)"),
    "theta_is_one": Quirk("DMJD", "`--theta` weights the visible loss", "`--theta` ignored (always 1)"),
    "float_input_hog": Quirk(
        "MaskFeat", "HOG of the exact 0-255 pixels (HOG is invariant to the per-channel normalization)",
        "HOG of the normalized floats, where rounding picks bin 0 or 8 for gradients on the 0/180° boundary"),
    "raster_decoder_positions": Quirk(
        "UM-MAE (Swin, PVT)", "each visible decoder token gets its own patch's position",
        "positions taken in raster order while the tokens are in 2x2-group order, so most visible tokens get "
        "another patch's position (docs/methods.md §4.5)"),
}


def quirk_set(method: str) -> dict[str, str]:
    """The quirks of ``method``'s official code, name -> the official behaviour reproduced (a recipe's set)."""
    return {name: quirk.official for name, quirk in QUIRKS.items() if quirk.method == method}


DMJD_QUIRKS = quirk_set("DMJD")
MASKFEAT_QUIRKS = quirk_set("MaskFeat")
UMMAE_QUIRKS = quirk_set("UM-MAE (Swin, PVT)")


def quirks_table() -> str:
    """The Markdown table of every quirk, as the docs print it (tests/test_docs_commands.py checks they do)."""
    rows = ["| method | quirk | default (paper) | `--official_quirks` (official code) |", "|---|---|---|---|"]
    rows += [f"| {q.method} | `{name}` | {q.paper} | {q.official} |" for name, q in QUIRKS.items()]
    return "\n".join(rows)
