"""The axis contracts (models/interfaces.py): every recipe's parts satisfy them, and every encoder's dense
feature API gives maps of the channels and strides its ``feature_info`` announces."""
import pytest
import torch

from models import create_model, create_recipe, list_models
from models.encoders.convvit import ConvViT
from models.encoders.pvt import PyramidVisionTransformer
from models.encoders.swin import SwinMIM
from models.encoders.vit import VisionTransformer
from models.interfaces import Encoder, EncoderOutput, Head, Loss, Masking, Target
from models.registry import model_quirks

TINY_ENCODERS = {
    "vit": lambda: VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2),
    "convvit": lambda: ConvViT(img_size=64, embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2, fusion=False),
    "swin": lambda: SwinMIM(img_size=128, embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4,
                            window_size=4, masked_tokens="none"),
    "pvt": lambda: PyramidVisionTransformer(img_size=128, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                            num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2)),
}
TINY_RECIPES = {
    "mae_vit_tiny_patch16": dict(img_size=32, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                                 decoder_depth=1, decoder_num_heads=2),
    "dmjd_convvit_base_patch16_hog": dict(img_size=64, embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2,
                                          decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2),
    "deepmim_vit_base_patch16": dict(img_size=32, embed_dim=32, depth=4, num_heads=2, decoder_embed_dim=16,
                                     decoder_depth=1, decoder_num_heads=2),
    "ummae_pvt_small_256": dict(img_size=128, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                num_heads=(1, 1, 2, 2), decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2),
    "simmim_swin_tiny_256": dict(img_size=128, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                                 posmlp_dim=4, window_size=4),
    "maskfeat_vit_base_patch16": dict(img_size=64, embed_dim=32, depth=1, num_heads=2),  # 2 of 4 blocks seen
}


@pytest.mark.parametrize("name", sorted(TINY_RECIPES))
def test_recipe_parts_satisfy_the_contracts(name):
    """Each axis value is what the composition expects; the output separates prefix and patch tokens."""
    model = create_model(name, **TINY_RECIPES[name])
    assert isinstance(model.encoder, Encoder) and isinstance(model.masking, Masking)
    assert isinstance(model.target, Target)
    assert all(isinstance(h, Head) for h in model.heads.values())
    assert all(isinstance(loss, Loss) for loss in model.losses.values())
    size = TINY_RECIPES[name]["img_size"]
    imgs = torch.randn(2, 3, size, size)
    masks = model.sample_masks(imgs, torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.encoder(imgs.repeat(masks.num_views, 1, 1, 1), masks.ids_keep, secondary=masks.secondary)
        out = model(imgs, mask=masks)
    assert isinstance(features, EncoderOutput)
    assert features.prefix.shape[1] == model.encoder.num_prefix_tokens
    assert features.prefix.shape[0] == features.patches.shape[0] == masks.mask.shape[0]
    assert features.grid is None or features.grid[0] * features.grid[1] == features.patches.shape[1]
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("kind", sorted(TINY_ENCODERS))
def test_forward_features_maps_follow_feature_info(kind):
    """forward_features gives [N, C_i, H / r_i, W / r_i] for every level; a subset (negative indices
    included) returns the same maps as the full call."""
    torch.manual_seed(0)
    encoder = TINY_ENCODERS[kind]().eval()
    size = 64 if kind in ("vit", "convvit") else 128
    imgs = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = encoder.forward_features(imgs)
        some = encoder.forward_features(imgs, indices=[0, -1])
    assert len(maps) == len(encoder.feature_info)
    for level, info in zip(maps, encoder.feature_info):
        assert level.shape == (2, info.num_chs, size // info.reduction, size // info.reduction)
    torch.testing.assert_close(some[0], maps[0])
    torch.testing.assert_close(some[1], maps[-1])
    with pytest.raises(ValueError, match="feature indices"):
        encoder.forward_features(imgs, indices=[len(maps)])


@pytest.mark.parametrize("kind", ["vit", "convvit", "pvt"])
def test_dense_features_are_the_unmasked_block_outputs(kind):
    """The last level of forward_features is the un-normed output of the last block of the unmasked
    forward, laid out as a map."""
    torch.manual_seed(0)
    encoder = TINY_ENCODERS[kind]().eval()
    size = 128 if kind == "pvt" else 64
    imgs = torch.randn(2, 3, size, size)
    with torch.no_grad():
        last = encoder(imgs, return_layers=(encoder.depth,)).layers[encoder.depth]
        dense = encoder.forward_features(imgs, indices=[-1])[0]
    h, w = last.grid
    torch.testing.assert_close(dense, last.patches.transpose(1, 2).reshape(2, -1, h, w))


def test_quirks_are_named_per_recipe():
    """--official_quirks turns on a recipe's named quirk set; recipes without quirks are never handed the
    flag and report an empty set."""
    assert set(model_quirks("dmjd_convvit_base_patch16_hog")) == {
        "masking_ignores_pred_ratio", "raster_visible_targets", "theta_is_one"}
    assert model_quirks("dmjd_convit_base_patch16_dec8_hog") == model_quirks("dmjd_convvit_base_patch16_hog")
    assert set(model_quirks("mae_swin_tiny_256")) == {"raster_decoder_positions"}
    mae = create_recipe("mae_vit_tiny_patch16", official_quirks=True, **TINY_RECIPES["mae_vit_tiny_patch16"])
    assert mae.quirks == {}
    with_quirks = [n for n in list_models() if model_quirks(n)]
    assert all(n.startswith(("dmjd_", "maskfeat_", "ummae_", "mae_swin", "mae_pvt")) for n in with_quirks)


def test_vit_relative_position_bias_and_layer_scale_start_as_identity():
    """DeepMIM's dense fine-tuning ViT (rel_pos_bias, init_values=1) computes what the plain ViT computes
    until training moves its zero-initialized tables."""
    torch.manual_seed(0)
    kwargs = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, learnable_pos_embed=True, final_norm=False)
    rel = VisionTransformer(rel_pos_bias=True, init_values=1.0, **kwargs).eval()
    plain = VisionTransformer(**kwargs).eval()
    result = plain.load_state_dict(rel.state_dict(), strict=False)
    assert sorted({k.split(".", 2)[2] for k in result.unexpected_keys}) == [
        "attn.rel_pos.relative_position_bias_table", "ls1.gamma", "ls2.gamma"]
    imgs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rel.forward_features(imgs), plain.forward_features(imgs), rtol=1e-5, atol=1e-5)
