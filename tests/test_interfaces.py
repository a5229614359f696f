"""The axis contracts (models/interfaces.py), checked on every registered model at its registered tiny configuration
and on every encoder module of models/encoders/ at its TINY: a new recipe or encoder is covered without an edit
here."""
import importlib
import inspect
import pkgutil

import pytest
import torch

from base.errors import UsageError
from models import create_model, create_recipe, encoders, list_models, registry, tiny_kwargs
from models.encoders.vit import VisionTransformer
from models.interfaces import (ENCODER_ARGS, Encoder, EncoderOutput, Head, Loss, MaskedTokens, Masking, Target,
                               UnitMasking)
from models.masking import BlockMasking, DisjointMasking, RandomMasking, UniformMasking
from models.registry import model_quirks

CPU = torch.device("cpu")


def encoder_modules() -> dict[str, tuple[type, dict]]:
    """Every module of models/encoders/ with a TINY: its encoder class (the one defined there that declares its
    ``encoder_args``) and TINY."""
    found = {}
    for info in pkgutil.iter_modules(encoders.__path__):
        module = importlib.import_module(f"{encoders.__name__}.{info.name}")
        if hasattr(module, "TINY"):
            (cls,) = [c for c in vars(module).values()
                      if inspect.isclass(c) and c.__module__ == module.__name__ and "encoder_args" in vars(c)]
            found[info.name] = (cls, module.TINY)
    return found


ENCODERS = encoder_modules()


def tiny_model(name: str, folder) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    kwargs = tiny_kwargs(name, folder)
    return create_model(name, **kwargs), kwargs["img_size"]


@pytest.mark.parametrize("name", list_models(task="pretrain"))
def test_recipe_parts_satisfy_the_contracts(name, tmp_path):
    check_recipe(name, tmp_path)


def check_recipe(name: str, folder) -> None:
    """Each axis value is what the composition expects; the output separates prefix and patch tokens."""
    model, size = tiny_model(name, folder)
    assert isinstance(model.encoder, Encoder) and isinstance(model.masking, Masking)
    assert isinstance(model.target, Target)
    assert all(isinstance(h, Head) for h in model.heads.values())
    assert all(isinstance(loss, Loss) for loss in model.losses.values())
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


@pytest.mark.parametrize("name", list_models(task="classify"))
def test_classifier_runs_at_its_tiny_configuration(name, tmp_path):
    model, size = tiny_model(name, tmp_path)
    assert isinstance(model.encoder, Encoder)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, model.num_classes) and torch.isfinite(logits).all()


def test_a_model_without_a_tiny_configuration_is_named_with_the_fix(monkeypatch):
    monkeypatch.setitem(registry._MODELS, "toy_without_tiny", lambda **kwargs: None)
    with pytest.raises(LookupError, match=r"toy_without_tiny has no tiny configuration: register it with "
                                          r"@register_model\(tiny=\.\.\.\)"):
        tiny_kwargs("toy_without_tiny")


def masks_for(mode: MaskedTokens, secondary: bool, grid: tuple[int, int]):
    """Masks an encoder in ``mode`` can consume (None for ``none``): uniform ones for the compact grid and for
    secondary masking, random ones otherwise."""
    if mode == MaskedTokens.NONE:
        return None
    generator = torch.Generator().manual_seed(0)
    if secondary or mode == MaskedTokens.COMPACT:
        return UniformMasking(0.5 if secondary else 0.0)(2, grid, CPU, generator)
    return RandomMasking(0.5)(2, grid, CPU, generator)


@pytest.mark.parametrize("module", sorted(ENCODERS))
def test_encoder_takes_the_declared_arguments(module):
    check_encoder_arguments(*ENCODERS[module])


def check_encoder_arguments(cls: type, tiny: dict) -> None:
    """Every encoder takes the shared constructor arguments (ENCODER_ARGS). Each masked_tokens mode it declares
    builds and encodes a masked batch (with secondary masking under the modes that declare it); a mode, a
    secondary masking or a learnable position table it does not declare is one UsageError naming what it takes."""
    params, declared = inspect.signature(cls).parameters, cls.encoder_args
    assert set(ENCODER_ARGS) <= set(params), f"{cls.__name__} lacks {set(ENCODER_ARGS) - set(params)}"
    assert params["masked_tokens"].default == declared.masked_tokens[0] and params["vis_mask_token"].default is False
    size = tiny["img_size"]
    imgs = torch.randn(2, 3, size, size)
    for mode in MaskedTokens:
        if mode not in declared.masked_tokens:
            with pytest.raises(UsageError, match=f"^{cls.__name__} takes masked_tokens="):
                cls(**tiny, masked_tokens=mode)
            continue
        for secondary in {False, mode in declared.secondary}:
            torch.manual_seed(0)
            encoder = cls(**tiny, masked_tokens=mode, vis_mask_token=secondary, drop_path_rate=0.1,
                          final_norm=False)
            assert isinstance(encoder, Encoder) and encoder.masked_tokens == mode
            masks = masks_for(mode, secondary, encoder.grid_size)
            with torch.no_grad():
                out = encoder(imgs, None if masks is None else masks.ids_keep,
                              secondary=None if masks is None else masks.secondary)
            assert out.patches.shape[0] == 2 and torch.isfinite(out.patches).all()
        if mode not in declared.secondary:
            with pytest.raises(UsageError, match="pass vis_mask_token=False"):
                cls(**tiny, masked_tokens=mode, vis_mask_token=True)
    for learnable in (False, True):
        if learnable not in declared.learnable_pos_embed:
            with pytest.raises(UsageError, match="takes learnable_pos_embed="):
                cls(**tiny, learnable_pos_embed=learnable)


@pytest.mark.parametrize("name", ["dmjd_vit_base_patch16_hog", "dmjd_convvit_base_patch16_hog",
                                  "simmim_vit_base_patch16", "ummae_swin_tiny_256", "ummae_pvt_small_256"])
def test_spatial_maskings_take_a_grid_that_is_not_square(name):
    """The maskings get the grid's shape: on an h x 2h image, block masking (DMJD's disjoint views of it
    included) hides whole 2x2 groups and uniform masking three patches of every group."""
    kwargs = tiny_kwargs(name)
    side = kwargs["img_size"]
    model = create_model(name, **{**kwargs, "img_size": (side, 2 * side)})
    rows, cols = model.encoder.grid_size
    assert cols == 2 * rows
    out = model(torch.randn(2, 3, side, 2 * side))
    hidden = out.mask.reshape(-1, rows // 2, 2, cols // 2, 2).sum((2, 4))  # masked patches per 2x2 group
    uniform = isinstance(model.masking, UniformMasking)
    assert ((hidden == 3) if uniform else ((hidden == 0) | (hidden == 4))).all() and torch.isfinite(out.loss)


def test_unit_maskings_give_disjoint_views_on_any_grid():
    """Random and block masking are unit maskings, from which DMJD's views are derived on a 4x6 grid."""
    for base in (RandomMasking(0.75), BlockMasking(0.5)):
        assert isinstance(base, UnitMasking)
        masks = DisjointMasking(base)(3, (4, 6), CPU, torch.Generator().manual_seed(0))
        visible = ~masks.view_mask
        assert masks.disjoint_views and visible.shape == (2, 3, 24) and not (visible[0] & visible[1]).any()


@pytest.mark.parametrize("module", sorted(ENCODERS))
def test_forward_features_maps_follow_feature_info(module):
    check_feature_maps(*ENCODERS[module])


def check_feature_maps(cls: type, tiny: dict) -> None:
    """forward_features gives [N, C_i, H / r_i, W / r_i] for every level; a subset (negative indices
    included) returns the same maps as the full call."""
    torch.manual_seed(0)
    encoder = cls(**tiny).eval()
    size = tiny["img_size"]
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


@pytest.mark.parametrize("module", sorted(ENCODERS))
def test_dense_features_are_the_unmasked_block_outputs(module):
    """The last level of forward_features is the un-normed output of the last block of the unmasked
    forward, laid out as a map."""
    cls, tiny = ENCODERS[module]
    torch.manual_seed(0)
    encoder = cls(**tiny).eval()
    imgs = torch.randn(2, 3, tiny["img_size"], tiny["img_size"])
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
    mae = create_recipe("mae_vit_tiny_patch16", official_quirks=True, **tiny_kwargs("mae_vit_tiny_patch16"))
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
