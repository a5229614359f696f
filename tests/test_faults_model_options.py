"""Model options no layer can be built with, image sizes an encoder's grid cannot take and maskings that keep no
visible patch: one UsageError naming the option and the numbers when the model is built, before any data work
(RELIABILITY.md, "Flags and data"; issue 19, cases 8, 14 and 20)."""
from pathlib import Path

import pytest

import main_pretrain
from base.errors import UsageError
from models import create_model
from models.masking import BlockMasking, DisjointMasking, RandomMasking, UniformMasking

VIT = dict(img_size=32, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
           decoder_num_heads=2)
SWIN = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4, decoder_embed_dim=16,
            decoder_depth=1, decoder_num_heads=2)
PVT = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2))
CONVVIT = dict(embed_dims=(16, 24, 32), depths=(1, 1, 1), num_heads=2, decoder_embed_dim=16, decoder_depth=1,
               decoder_num_heads=2)


def pretrain_refusal(tmp_path: Path, *argv: str) -> str:
    """main_pretrain's UsageError on ``argv`` with a data folder that does not exist (so it precedes the data)."""
    args = main_pretrain.get_args_parser().parse_args([
        *argv, "--device", "cpu", "--output_dir", str(tmp_path / "out"), "--num_workers", "0",
        "--data_set", "fashion_mnist", "--data_path", str(tmp_path / "no_data")])
    with pytest.raises(UsageError) as info:
        main_pretrain.main(args)
    return str(info.value)


# --- widths, depths and heads (case 8) -------------------------------------------------------------------------

def test_decoder_options_are_named_from_the_cli(tmp_path):
    """timm's bare AssertionError (heads) and torch's negative-dimension RuntimeError become one line."""
    base = ["--model", "mae_vit_tiny_patch16", "--input_size", "32", "--model_kwargs", "embed_dim=32", "depth=1",
            "num_heads=2", "decoder_depth=1"]
    assert pretrain_refusal(tmp_path, *base, "decoder_num_heads=3") == \
        "decoder_num_heads=3 does not divide decoder_embed_dim=512 into equal heads: pass 2 or 4"
    assert pretrain_refusal(tmp_path, *base, "decoder_embed_dim=-32") == \
        "decoder_embed_dim=-32: expected a positive integer"


@pytest.mark.parametrize("name,options,expected", [
    ("mae_vit_tiny_patch16", VIT | dict(num_heads=3), "num_heads=3 does not divide embed_dim=32 into equal heads: "
                                                      "pass 2 or 4"),
    ("mae_vit_tiny_patch16", VIT | dict(embed_dim=30, num_heads=3),
     "embed_dim=30 is not a multiple of 4, which the 2-D sin-cos position table needs: pass 28 or 32"),
    ("mae_vit_tiny_patch16", VIT | dict(decoder_embed_dim=34),
     "decoder_embed_dim=34 is not a multiple of 4, which the 2-D sin-cos position table needs: pass 32 or 36"),
    ("mae_vit_tiny_patch16", VIT | dict(depth=-1), "depth=-1: expected a non-negative integer"),
    ("mae_vit_tiny_patch16", VIT | dict(decoder_num_heads=0), "decoder_num_heads=0: expected a positive integer"),
    ("mae_vit_tiny_patch16", VIT | dict(mlp_ratio=-1.0), "mlp_ratio=-1.0: expected a positive number"),
    ("vit_tiny_patch16", dict(img_size=32, embed_dim=32, depth=1, num_heads=5),
     "num_heads=5 does not divide embed_dim=32 into equal heads: pass 4 or 8"),
    ("ummae_swin_tiny_256", SWIN | dict(img_size=64, num_heads=(1, 1, 3, 2)),
     "num_heads[2]=3 does not divide embed_dim=8 x 4 into equal heads: pass 2 or 4"),
    ("ummae_swin_tiny_256", SWIN | dict(img_size=64, depths=(1, 0, 1, 1)),
     "depths=(1, 0, 1, 1): expected positive integers"),
    ("ummae_swin_tiny_256", SWIN | dict(img_size=64, num_heads=(1, 1, 2)),
     "depths=(1, 1, 1, 1) and num_heads=(1, 1, 2) need one entry per stage"),
    ("simmim_pvt_small_256", PVT | dict(img_size=64, num_heads=(1, 1, 5, 2)),
     "num_heads[2]=5 does not divide embed_dims[2]=24 into equal heads: pass 4 or 6"),
    ("dmjd_convvit_base_patch16_hog", CONVVIT | dict(img_size=64, num_heads=5),
     "num_heads=5 does not divide embed_dims[2]=32 into equal heads: pass 4 or 8"),
    ("dmjd_convvit_base_patch16_hog", CONVVIT | dict(img_size=64, decoder_num_heads=3),
     "decoder_num_heads=3 does not divide decoder_embed_dim=16 into equal heads: pass 2 or 4"),
])
def test_model_options_are_named(name, options, expected):
    with pytest.raises(UsageError) as info:
        create_model(name, **options)
    assert str(info.value) == expected


# --- image sizes of pyramid encoders (case 14) -----------------------------------------------------------------

def test_too_small_uniform_masking_swin_names_the_smallest_size(tmp_path):
    """ZeroDivisionError in the shifted-window mask before: the compact grid of 32 px has no cell left after the
    merges."""
    message = pretrain_refusal(tmp_path, "--model", "ummae_swin_tiny_256", "--mask_regular", "--input_size", "32")
    assert message == ("image size 32 (--input_size) does not fit UM-MAE's compact grid on a 4-stage encoder "
                       "(16-px patches, 4-px cells halved 3 times): it takes multiples of 64; pass 64 (the smallest)")


@pytest.mark.parametrize("name,options,size,expected", [
    ("simmim_swin_tiny_256", SWIN, 16, "a 4-stage encoder's full grid (16-px patches, 4-px cells halved 3 times): "
                                       "it takes multiples of 32; pass 32 (the smallest)"),
    ("swin_tiny_256", SWIN, 48, "a 4-stage encoder's full grid (16-px patches, 4-px cells halved 3 times): "
                                "it takes multiples of 32; pass 32 or 64"),
    ("simmim_pvt_small_256", PVT, 80, "a 4-stage encoder's full grid (16-px patches, 4-px cells halved 3 times): "
                                      "it takes multiples of 32; pass 64 or 96"),
    ("ummae_pvt_small_256", PVT | dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2), 96,
     "UM-MAE's compact grid on a 4-stage encoder (16-px patches, 4-px cells halved 3 times): it takes multiples "
     "of 64; pass 64 or 128"),
])
def test_pyramid_sizes_the_grid_cannot_halve(name, options, size, expected):
    """Sizes whose cell grid does not halve evenly through the merges failed with a shape error at the first
    batch (or in the constructor)."""
    options = {k: v for k, v in options.items() if name.startswith(("ummae", "mae")) or "decoder" not in k}
    with pytest.raises(UsageError) as info:
        create_model(name, img_size=size, **options)
    assert str(info.value) == f"image size {size} (--input_size) does not fit {expected}"


# --- maskings that keep nothing (case 20) ------------------------------------------------------------------------

def test_dmjd_on_a_one_block_grid_is_refused_before_training(tmp_path):
    """Before: 0 visible patches, a NaN visible-branch loss and "loss is not finite ... lower --blr"."""
    message = pretrain_refusal(tmp_path, "--model", "dmjd_vit_base_patch16_hog", "--input_size", "32",
                               "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2", "decoder_embed_dim=16",
                               "decoder_depth=1", "decoder_num_heads=2")
    assert message == ("block masking at mask_ratio 0.6 keeps none of the 1 2x2 block of a 2x2 patch grid visible "
                       "(int(1 x 0.4) = 0): pass a larger --input_size")


def test_mae_that_would_see_no_patch_is_refused(tmp_path):
    """Before: MAE trained silently on 0 visible patches."""
    message = pretrain_refusal(tmp_path, "--model", "mae_vit_tiny_patch16", "--input_size", "32", "--mask_ratio",
                               "0.9", "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2",
                               "decoder_embed_dim=16", "decoder_depth=1", "decoder_num_heads=2")
    assert message == ("random masking at mask_ratio 0.9 keeps none of the 4 patches of a 2x2 patch grid visible "
                       "(int(4 x 0.1) = 0): pass a mask_ratio below 0.75 or a larger --input_size")


@pytest.mark.parametrize("masking,grid,expected", [
    (BlockMasking(0.6), (3, 3), "block masking needs an even patch grid, got 3x3: pass an --input_size of an even "
                                "number of patches"),
    (UniformMasking(), (2, 3), "uniform masking needs an even patch grid, got 2x3: pass an --input_size of an even "
                               "number of patches"),
    (UniformMasking(vis_mask_ratio=0.5), (2, 2),
     "secondary masking at vis_mask_ratio 0.5 keeps none of the 1 visible patch of a 2x2 patch grid visible "
     "(int(1 x 0.5) = 0): pass a larger --input_size"),
    (DisjointMasking(RandomMasking(0.6), pred_ratio=0.8), (2, 2),
     "2 views at mask_ratio 0.6 and pred_ratio 0.8 swap int(4 x 0.2) = 0 of the 4 patches between views, so "
     "every view is the same: pass a larger pred_ratio or --input_size"),
    (DisjointMasking(BlockMasking(0.75), pred_ratio=1.0), (2, 2),
     "block masking at mask_ratio 0.75 keeps none of the 1 2x2 block of a 2x2 patch grid visible "
     "(int(1 x 0.25) = 0): pass a larger --input_size"),
])
def test_masking_checks_its_grid(masking, grid, expected):
    with pytest.raises(UsageError) as info:
        masking.check(grid)
    assert str(info.value) == expected


def test_maskings_that_keep_patches_pass_their_check():
    """The smallest grids the recipes' defaults can use: one visible unit each, and DMJD's two views disjoint."""
    RandomMasking(0.75).check((2, 2))
    BlockMasking(0.6).check((4, 4))
    UniformMasking(0.25).check((4, 4))
    DisjointMasking(BlockMasking(0.6), pred_ratio=1.0).check((4, 4))
    DisjointMasking(RandomMasking(0.75), pred_ratio=0.75).check((2, 2))  # pred = mask: identical views, as asked
