"""ConvMAE ConViT encoder (models/encoders/convvit.py): shapes, official keys, masked convolution, init."""
import re

import pytest
import torch
import torch.nn.functional as F

from base.errors import UsageError
from golden_rules import assert_fingerprint, load_case, rule_tensor
from models.encoders.common import patch_visibility
from models.encoders.convvit import ConvViT, convvit_base, convvit_large
from models.masking import BlockMasking
from models.pos_embed import sincos_2d

# the golden DMJD config's encoder sizes
TINY = dict(patch_sizes=(4, 2, 2), embed_dims=(16, 24, 32), depths=(1, 1, 2), num_heads=2, mlp_ratios=(8, 8, 4))
ENCODER_KEY = re.compile(r"^(?:pos_embed|patch_embed\d|stage\d_output_decode|blocks[123]\.|norm\.)")


def tiny(**kwargs) -> ConvViT:
    torch.manual_seed(0)
    return ConvViT(**{**TINY, **kwargs}).eval()


def random_ids_keep(n: int, num_patches: int, k: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, num_patches, generator=gen).argsort(1)[:, :k]


def images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def repeat_and_permute(mask: torch.Tensor, grid: int, factor: int) -> torch.Tensor:
    """The official-style upsampling of a [N, grid*grid] mask to [N, 1, grid*f, grid*f]."""
    n = mask.shape[0]
    up = mask.reshape(n, grid, grid).unsqueeze(-1).repeat(1, 1, 1, factor * factor)
    up = up.reshape(n, grid, grid, factor, factor).permute(0, 1, 3, 2, 4)
    return up.reshape(n, grid * factor, grid * factor).unsqueeze(1)


def patch_pixels(index: int, grid: int, patch: int = 16) -> tuple[slice, slice]:
    r, c = divmod(index, grid)
    return slice(r * patch, (r + 1) * patch), slice(c * patch, (c + 1) * patch)


# ----------------------------------------------------------------------------------------------- shapes
def test_shapes_and_attributes_at_224():
    m = tiny()
    assert (m.patch_size, m.grid_size, m.num_patches, m.embed_dim, m.depth, m.num_prefix_tokens) == \
        (16, (14, 14), 196, 32, 2, 0)
    imgs = images(2, 224)
    assert m.patch_embed1(imgs).shape == (2, 16, 56, 56)
    assert m.patch_embed2(torch.zeros(2, 16, 56, 56)).shape == (2, 24, 28, 28)
    assert m.patch_embed3(torch.zeros(2, 24, 28, 28)).shape == (2, 32, 14, 14)
    ids_keep = random_ids_keep(2, 196, 49)
    with torch.no_grad():
        out = m(imgs, ids_keep)
        full = m(imgs)
    assert out.patches.shape == (2, 49, 32) and out.layers == {}
    assert full.patches.shape == (2, 196, 32)
    assert torch.isfinite(out.patches).all() and torch.isfinite(full.patches).all()


def test_all_visible_equals_unmasked():
    """ids_keep = every patch in raster order is the same computation as no masking (vis == 1)."""
    m = tiny(img_size=64)
    imgs = images(2, 64)
    with torch.no_grad():
        a = m(imgs, torch.arange(16).expand(2, -1)).patches
        b = m(imgs).patches
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_other_img_size():
    m = tiny(img_size=64)
    assert m.grid_size == (4, 4) and m.num_patches == 16 and m.pos_embed.shape == (1, 16, 32)
    torch.testing.assert_close(m.pos_embed[0], sincos_2d(32, (4, 4)))
    with torch.no_grad():
        out = m(images(3, 64), random_ids_keep(3, 16, 5))
    assert out.patches.shape == (3, 5, 32)
    r = tiny(img_size=(32, 64))
    assert r.grid_size == (2, 4) and r.num_patches == 8
    with torch.no_grad():
        assert r(torch.randn(1, 3, 32, 64)).patches.shape == (1, 8, 32)
    with pytest.raises(UsageError, match="multiple of 16"):
        tiny(img_size=72)


def test_tokens_follow_ids_keep_order():
    m = tiny(img_size=64)
    imgs = images(2, 64)
    ids_keep = random_ids_keep(2, 16, 7)
    perm = torch.tensor([[3, 0, 6, 1, 5, 2, 4], [6, 5, 4, 3, 2, 1, 0]])
    with torch.no_grad():
        a = m(imgs, ids_keep, return_layers=(1,))
        b = m(imgs, torch.gather(ids_keep, 1, perm), return_layers=(1,))
        full = m(imgs, return_layers=(1,))
    expected = torch.gather(a.patches, 1, perm.unsqueeze(-1).expand(-1, -1, 32))
    torch.testing.assert_close(b.patches, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.layers[1].patches, torch.gather(a.layers[1].patches, 1, perm.unsqueeze(-1).expand(-1, -1, 32)),
                               rtol=0, atol=1e-5)
    # and masking changes the result (the visible tokens do not attend to, or convolve with, the rest)
    assert not torch.allclose(a.patches, torch.gather(full.patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, 32)),
                              atol=1e-3)


def test_factories():
    with torch.device("meta"):
        base, large = convvit_base(), convvit_large(fusion=False)
    for m, dims, depths, heads in ((base, (256, 384, 768), (2, 2, 11), 12), (large, (384, 768, 1024), (2, 2, 23), 16)):
        assert (m.embed_dims, m.embed_dim, m.depth, m.grid_size) == (dims, dims[2], depths[2], (14, 14))
        assert (len(m.blocks1), len(m.blocks2), len(m.blocks3)) == depths
        assert m.blocks3[0].attn.num_heads == heads
        assert m.blocks1[0].mlp.fc1.out_channels == 8 * dims[0] and m.blocks2[0].mlp.fc1.out_channels == 8 * dims[1]
        assert m.blocks3[0].mlp.fc1.out_features == 4 * dims[2]
    assert hasattr(base, "stage1_output_decode") and not hasattr(large, "stage1_output_decode")
    # ConvMAE-B is reported at ~88M parameters (the fine-tune model, no fusion convs)
    with torch.device("meta"):
        ft = convvit_base(fusion=False)
    assert 87e6 < sum(p.numel() for p in ft.parameters()) < 89e6


# ------------------------------------------------------------------------------------------ golden keys
def test_golden_encoder_keys_and_shapes():
    """The official DMJDConViT's encoder keys and shapes (every key and shape of the golden case) are ours, its
    fixed position table is our sin-cos table, its weights load strictly where they belong, and the fine-tune
    encoder reads them all but the fusion convs."""
    case = load_case("dmjd_tiny_block_official")
    cfg, weights = case["config"], case["weights"]
    encoder_keys = [k for k in weights["shapes"] if ENCODER_KEY.match(k)]
    rest = set(weights["shapes"]) - set(encoder_keys)
    assert all(k.startswith(("mask_token", "decoder_", "proj_embed", "predictor")) for k in rest), rest
    m = ConvViT(img_size=cfg["img_size"][0], patch_sizes=tuple(cfg["patch_size"]), embed_dims=tuple(cfg["embed_dim"]),
                depths=tuple(cfg["depth"]), num_heads=cfg["num_heads"], mlp_ratios=tuple(cfg["mlp_ratio"]))
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == {k: weights["shapes"][k] for k in encoder_keys}
    # the official (fixed) pos_embed is the same sin-cos table as ours
    pos_embed = sincos_2d(32, (14, 14))[None]
    assert_fingerprint(pos_embed, weights["fixed_fingerprint"]["pos_embed"], "pos_embed")
    golden = {k: pos_embed if k in weights["fixed_keys"] else
              rule_tensor(k, weights["shapes"][k], weights["seed"], k in weights["norm_keys"]) for k in encoder_keys}
    m.load_state_dict(golden, strict=True)
    assert torch.equal(m.blocks3[1].attn.qkv.weight, golden["blocks3.1.attn.qkv.weight"])
    # the fine-tune model is the same keys minus the fusion convs
    ft = ConvViT(img_size=224, **TINY, fusion=False, learnable_pos_embed=True)
    result = ft.load_state_dict(golden, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(k for k in golden if k.startswith("stage"))


# ---------------------------------------------------------------------------------- masked convolution
MASKINGS = [
    pytest.param(64, lambda n, grid, g: random_ids_keep(n, grid[0] * grid[1], grid[0] * grid[1] // 2, seed=3),
                 id="random"),
    pytest.param(128, lambda n, grid, g: BlockMasking(0.5)(n, grid, torch.device("cpu"), generator=g).ids_keep,
                 id="block2x2"),
]


@pytest.mark.parametrize("depth3", [2, 0], ids=["full", "conv-only"])
@pytest.mark.parametrize("size,draw", MASKINGS)
def test_masked_patches_leak_nothing(size, draw, depth3):
    m = tiny(img_size=size, depths=(1, 1, depth3))
    grid = m.grid_size[0]
    L = m.num_patches
    ids_keep = draw(2, m.grid_size, torch.Generator().manual_seed(5))
    imgs = images(2, size)
    visible = torch.zeros(2, L, dtype=torch.bool).scatter_(1, ids_keep, True)
    perturbed = imgs.clone()
    for n in range(2):
        for p in (~visible[n]).nonzero().flatten().tolist():
            rows, cols = patch_pixels(p, grid)
            perturbed[n, :, rows, cols] += 3 * torch.randn(3, 16, 16)
    layers = tuple(range(1, depth3 + 1))
    with torch.no_grad():
        a = m(imgs, ids_keep, return_layers=layers)
        b = m(perturbed, ids_keep, return_layers=layers)
        # without the visibility map the same perturbation does reach the visible positions
        full_a, full_b = m(imgs).patches, m(perturbed).patches
    torch.testing.assert_close(b.patches, a.patches, rtol=0, atol=1e-6)
    for i in layers:
        torch.testing.assert_close(b.layers[i].patches, a.layers[i].patches, rtol=0, atol=1e-6)
    index = ids_keep.unsqueeze(-1).expand(-1, -1, 32)
    assert (torch.gather(full_b, 1, index) - torch.gather(full_a, 1, index)).abs().amax() > 1e-2

    # perturbing one visible patch changes the visible tokens next to it (the test can see leaks)
    n = 0
    kept = ids_keep[n].tolist()
    target = next(p for p in kept if any(q in kept for q in _neighbours(p, grid)))
    neighbour_ids = [i for i, q in enumerate(kept) if q in _neighbours(target, grid)]
    far_ids = [i for i, q in enumerate(kept) if q != target and q not in _neighbours(target, grid, radius=2)]
    poked = imgs.clone()
    rows, cols = patch_pixels(target, grid)
    poked[n, :, rows, cols] += 3 * torch.randn(3, 16, 16)
    with torch.no_grad():
        c = m(poked, ids_keep)
    delta = (c.patches[n] - a.patches[n]).abs().amax(-1)
    assert delta[neighbour_ids].min() > 1e-3
    if depth3 == 0 and far_ids:
        # without attention the convolutional receptive field is local: far tokens are untouched
        assert delta[far_ids].max() < 1e-6
    torch.testing.assert_close(c.patches[1], a.patches[1], rtol=0, atol=1e-6)


def _neighbours(p: int, grid: int, radius: int = 1) -> set[int]:
    r, c = divmod(p, grid)
    return {rr * grid + cc for rr in range(r - radius, r + radius + 1) for cc in range(c - radius, c + radius + 1)
            if 0 <= rr < grid and 0 <= cc < grid and (rr, cc) != (r, c)}


def test_visibility_upsampling_matches_repeat_and_permute():
    m = tiny()
    ids_keep = random_ids_keep(3, 196, 78, seed=7)
    mask = torch.ones(3, 196).scatter_(1, ids_keep, 0.0)  # 1 = masked, as the official code's input
    vis = patch_visibility(ids_keep, (14, 14)).unsqueeze(1).float()
    assert vis.shape == (3, 1, 14, 14)
    torch.testing.assert_close(vis, 1 - mask.reshape(3, 1, 14, 14))
    for factor in (4, 2):
        expected = 1 - repeat_and_permute(mask, 14, factor)
        assert torch.equal(patch_visibility(ids_keep, (14, 14), factor).unsqueeze(1).float(), expected)
        assert torch.equal(F.interpolate(vis, scale_factor=factor, mode="nearest"), expected)

    # and those are the maps the CBlocks of each stage receive
    seen = {}
    m.blocks1[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__(1, args[1]))
    m.blocks2[0].register_forward_pre_hook(lambda mod, args: seen.__setitem__(2, args[1]))
    with torch.no_grad():
        m(images(3, 224), ids_keep)
    assert torch.equal(seen[1], 1 - repeat_and_permute(mask, 14, 4))
    assert torch.equal(seen[2], 1 - repeat_and_permute(mask, 14, 2))
    with torch.no_grad():
        m(images(3, 224))
    assert seen[1] is None and seen[2] is None
