"""UM-MAE's PVT encoder: the compact grid, spatial reduction, masking leaks, training, classification and the
official keys (models_mae_pvt.py; the official golden case: test_golden.py)."""
import re

import pytest
import torch

from conftest import adamw_losses, assert_close_across_kernels
from golden_rules import load_case, rebuild, rule_weights
from models.classifier import Classifier
from models.encoders.pvt import PyramidVisionTransformer, pvt_small
from models.losses import PatchLoss
from models.masking import Masks, UniformMasking, compact_order
from models.mim import Branch, MaskedImageModel
from models.pos_embed import sincos_2d
from models.pyramid_heads import UMDecoder
from models.targets import PixelTarget
from util.checkpoint import load_pretrained

# the golden case's encoder: 256 px, cells of 4 px, patches of 16 px
TINY_PVT = dict(img_size=256, embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4),
                mlp_ratios=(8, 8, 4, 4))


def uniform_masks(n: int, seed: int = 0, vis_mask_ratio: float = 0.25, grid_size: tuple[int, int] = (16, 16)) -> Masks:
    return UniformMasking(vis_mask_ratio)(n, grid_size, torch.device("cpu"), torch.Generator().manual_seed(seed))


def tiny_um_model() -> MaskedImageModel:
    encoder = PyramidVisionTransformer(**TINY_PVT, sr_ratios=(4, 2, 1, 1), vis_mask_token=True)
    target = PixelTarget(16, norm_pix=True)
    decoder = UMDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim=16,
                        decoder_depth=1, decoder_num_heads=2)
    return MaskedImageModel(encoder, UniformMasking(0.25), target, {"mim": Branch(decoder, PatchLoss())})


def reference_compact(cells: torch.Tensor, visible: torch.Tensor, k: int = 4) -> torch.Tensor:
    """The operator as docs/methods.md §4.3 states it: zero the cells of hidden patches, then sum the four k x k
    sub-blocks of every 2x2 group (exactly one is non-zero). cells: [N, C, H, W]; visible: [N, h, w] bool
    patches -> [N, C, H/2, W/2]."""
    n, c, hh, ww = cells.shape
    keep = visible.repeat_interleave(k, 1).repeat_interleave(k, 2).unsqueeze(1)
    x = (cells * keep).reshape(n, c, hh // (2 * k), 2, k, ww // (2 * k), 2, k)
    return x.sum(dim=(3, 6)).reshape(n, c, hh // 2, ww // 2)


def test_keys_equal_official_encoder_keys():
    """Encoder keys and shapes are the official models_mae_pvt.py ones (decoder and its mask_token aside)."""
    shapes = load_case("ummae_pvt_tiny")["weights"]["shapes"]
    official = {k: shape for k, shape in shapes.items() if not k.startswith("decoder") and k != "mask_token"}
    encoder = PyramidVisionTransformer(**TINY_PVT, vis_mask_token=True)
    assert {k: list(v.shape) for k, v in encoder.state_dict().items()} == official


def test_compact_grid_matches_the_official_operator_and_positions():
    """The gather equals zero-then-sum over each group's sub-blocks, for the content and the sin-cos
    positions; every compact cell holds its original cell's true position; the order of ids_keep does
    not matter (the compact grid is always in raster order of the groups)."""
    torch.manual_seed(0)
    enc = PyramidVisionTransformer(**TINY_PVT)
    masks = uniform_masks(3, vis_mask_ratio=0.0)
    visible = (~masks.mask).reshape(3, 16, 16)
    cells = torch.randn(3, 16, 64, 64)
    out, hw = enc.compact(cells.flatten(2).transpose(1, 2), compact_order(masks.ids_keep, enc.grid_size))
    assert hw == (32, 32) and out.shape == (3, 1024, 16)
    pos = enc.pos_embed.detach().reshape(1, 64, 64, 16).permute(0, 3, 1, 2).expand(3, -1, -1, -1)
    want = reference_compact(cells, visible) + reference_compact(pos, visible)
    torch.testing.assert_close(out.transpose(1, 2).reshape(3, 16, 32, 32), want, rtol=0, atol=1e-6)

    # positions: a map holding each cell's (row, col), with the position table zeroed
    with torch.no_grad():
        enc.pos_embed.zero_()
    rows, cols = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    coords = torch.zeros(3, 16, 64, 64)
    coords[:, 0], coords[:, 1] = rows, cols
    shuffled = masks.ids_keep[:, torch.randperm(64)]  # any order of the visible patches
    got, _ = enc.compact(coords.flatten(2).transpose(1, 2), compact_order(shuffled, enc.grid_size))
    got = got.reshape(3, 8, 4, 8, 4, 16)  # [N, group row, i, group col, j, C]
    for n in range(3):
        for g, patch in enumerate(masks.ids_keep[n].tolist()):
            gr, gc = divmod(g, 8)
            pr, pc = divmod(patch, 16)
            assert (pr // 2, pc // 2) == (gr, gc)
            block = got[n, gr, :, gc, :, :2]
            assert torch.equal(block[..., 0], pr * 4 + torch.arange(4.0).unsqueeze(1).expand(4, 4))
            assert torch.equal(block[..., 1], pc * 4 + torch.arange(4.0).unsqueeze(0).expand(4, 4))
    # and the real table of a compact cell is the sin-cos of its true coordinates
    enc.reset_parameters()
    table = sincos_2d(16, (64, 64))
    pos_only, _ = enc.compact(torch.zeros(3, 4096, 16), compact_order(masks.ids_keep, enc.grid_size))
    patch = masks.ids_keep[1, 5].item()
    r, c = (patch // 16) * 4 + 2, (patch % 16) * 4 + 3  # cell (2, 3) of that patch
    gr, gc = divmod(5, 8)
    assert torch.equal(pos_only[1, (gr * 4 + 2) * 32 + gc * 4 + 3], table[r * 64 + c])


def test_ids_keep_order_does_not_matter():
    torch.manual_seed(1)
    enc = PyramidVisionTransformer(**TINY_PVT, vis_mask_token=True).eval()
    masks = uniform_masks(2)
    imgs = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        a = enc(imgs, masks.ids_keep, secondary=masks.secondary).patches
        b = enc(imgs, masks.ids_keep.flip(1), secondary=masks.secondary).patches
    assert_close_across_kernels(a, b)


def _kv_lengths(enc: PyramidVisionTransformer, *args, **kwargs) -> tuple[list[int], torch.Tensor]:
    lengths = []
    hooks = [b.attn.norm.register_forward_hook(lambda m, i, o: lengths.append(o.shape[1])) for b in enc.blocks]
    with torch.no_grad():
        out = enc(*args, **kwargs)
    for h in hooks:
        h.remove()
    return lengths, out.patches


@pytest.mark.parametrize("size", [256, 224])
def test_spatial_reduction_shapes(size):
    """Full grid: sr (8, 4, 2, 1) pools every stage to (side/32)^2 keys; compact grid (256 only): sr
    (4, 2, 1, 1) on a half-side map gives the same 64 keys in stages 1-3."""
    enc = PyramidVisionTransformer(**{**TINY_PVT, "img_size": size}).eval()
    side = size // 32
    lengths, tokens = _kv_lengths(enc, torch.randn(1, 3, size, size))
    assert lengths == [side * side] * 5 and tokens.shape == (1, side * side, 64)
    if size == 256:
        lengths, tokens = _kv_lengths(enc, torch.randn(2, 3, 256, 256), uniform_masks(2, vis_mask_ratio=0).ids_keep)
        assert lengths == [64, 64, 64, 64, 16] and tokens.shape == (2, 16, 64)
    else:  # 14x14 patches: the compact grid would not halve three times evenly
        with pytest.raises(ValueError, match="divisible by 64"):
            enc(torch.randn(1, 3, 224, 224), uniform_masks(1, vis_mask_ratio=0, grid_size=(14, 14)).ids_keep)
    # explicit ratios apply to both grids
    enc = PyramidVisionTransformer(**{**TINY_PVT, "img_size": size}, sr_ratios=(1, 1, 1, 1)).eval()
    lengths, _ = _kv_lengths(enc, torch.randn(1, 3, size, size))
    assert lengths == [(size // 4) ** 2, (size // 8) ** 2, (size // 16) ** 2, (size // 16) ** 2, side * side]


def test_return_layers_and_layer_groups():
    enc = PyramidVisionTransformer(**TINY_PVT, vis_mask_token=True)
    masks = uniform_masks(2)
    out = enc(torch.randn(2, 3, 256, 256), masks.ids_keep, return_layers=(1, 2, 5), secondary=masks.secondary)
    assert {i: tuple(v.patches.shape) for i, v in out.layers.items()} == {1: (2, 1024, 16), 2: (2, 256, 32), 5: (2, 16, 64)}
    assert enc.num_prefix_tokens == 0 and enc.patch_size == 16 and enc.grid_size == (16, 16)
    assert enc.num_patches == 256 and enc.embed_dim == 64 and enc.depth == 5
    stem, blocks = enc.layer_groups()
    for name, _ in enc.named_parameters():
        assert re.match(stem, name) or re.match(blocks, name) or name.startswith("norm."), name
    assert re.match(blocks, "blocks.4.attn.q.weight").group(1) == "4"


def test_masked_pixels_do_not_leak():
    """UM: nothing of a masked patch, nor of a secondary-masked patch's content, reaches the tokens.
    SimMIM: nothing of a masked patch reaches them either (its cells hold mask_token)."""
    torch.manual_seed(2)
    masks = uniform_masks(2)
    hidden = (masks.mask | masks.secondary).reshape(2, 1, 16, 1, 16, 1)
    hidden = hidden.expand(-1, 3, -1, 16, -1, 16).reshape(2, 3, 256, 256)
    imgs = torch.randn(2, 3, 256, 256)
    other = torch.where(hidden, 10 * torch.randn_like(imgs), imgs)
    enc = PyramidVisionTransformer(**TINY_PVT, vis_mask_token=True).eval()
    with torch.no_grad():
        a = enc(imgs, masks.ids_keep, secondary=masks.secondary).patches
        b = enc(other, masks.ids_keep, secondary=masks.secondary).patches
        c = enc(other, masks.ids_keep).patches  # without secondary masking the content is seen
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (a - c).abs().max() > 1e-3

    simmim = PyramidVisionTransformer(**TINY_PVT, masked_tokens="token").eval()
    assert "mask_token" in simmim.state_dict() and "vis_mask_token" not in simmim.state_dict()
    masked = masks.mask.reshape(2, 1, 16, 1, 16, 1).expand(-1, 3, -1, 16, -1, 16).reshape(2, 3, 256, 256)
    other = torch.where(masked, 10 * torch.randn_like(imgs), imgs)
    with torch.no_grad():
        a = simmim(imgs, masks.ids_keep).patches
        b = simmim(other, masks.ids_keep).patches
    assert a.shape == (2, 64, 64)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="secondary"):
        simmim(imgs, masks.ids_keep, secondary=masks.secondary)


def test_few_adamw_steps_reduce_the_loss():
    torch.manual_seed(3)
    model = tiny_um_model()
    imgs = torch.nn.functional.interpolate(torch.randn(2, 3, 8, 8), size=256, mode="bilinear")
    masks = uniform_masks(2, seed=3)
    losses = adamw_losses(model, imgs, steps=10, lr=1e-2, masks=masks, betas=(0.9, 0.95))
    assert losses[-1] < 0.95 * losses[0], losses
    assert model.encoder.vis_mask_token.grad is not None and model.encoder.pos_embed.grad is None


def test_classification_from_the_pretrained_encoder(tmp_path):
    """Fine-tuning from the official pretraining keys (the golden case's rule-2 weights): full grid, learnable
    position table loaded from the fixed one (resized at 224), no final norm under global pooling; only
    fc_norm and head are missing from a pretraining checkpoint."""
    case, pretrained, _, _ = rebuild("ummae_pvt_tiny", tmp_path)
    official = rule_weights(case["weights"], pretrained.state_dict())
    for size in (256, 224):
        state_dict = dict(official)
        encoder = PyramidVisionTransformer(**{**TINY_PVT, "img_size": size}, drop_path_rate=0.1,
                                           learnable_pos_embed=True, final_norm=False)
        model = Classifier(encoder, num_classes=5)
        report = load_pretrained(model, state_dict, allow_missing=("fc_norm.*", "head.*"))
        assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
        assert "vis_mask_token" in report.unexpected and "norm.weight" in report.unexpected
        assert report.resized == ([] if size == 256 else ["pos_embed"])
        if size == 256:
            torch.testing.assert_close(model.encoder.pos_embed.detach(), official["pos_embed"], rtol=0, atol=0)
        logits = model(torch.randn(2, 3, size, size))
        assert logits.shape == (2, 5)
        logits.sum().backward()
        assert model.encoder.pos_embed.requires_grad and model.encoder.pos_embed.grad is not None


def test_pvt_small_shapes():
    enc = pvt_small()
    assert enc.depth == 16 and enc.embed_dim == 512 and enc.grid_size == (16, 16)
    assert [enc.blocks[i].downsample is not None for i in range(16)] == \
        [i in (3, 7, 13) for i in range(16)]
    assert enc.pos_embed.shape == (1, 4096, 64) and not enc.pos_embed.requires_grad
    assert [enc.blocks[i].attn.num_heads for i in (0, 3, 7, 13)] == [1, 2, 5, 8]
    assert enc.blocks[0].mlp.fc1.out_features == 512 and enc.blocks[13].mlp.fc1.out_features == 2048
