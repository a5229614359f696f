"""MAE pieces: masking, patches, position embeddings, target, loss (the official golden cases: test_golden.py)."""
import math

import pytest
import torch

from base.errors import UsageError
from conftest import TINY_MAE
from models import create_model, list_models
from models.masking import Masks, RandomMasking
from models.patches import patchify, unpatchify
from models.pos_embed import resize_pos_embed, sincos_2d
from models.targets import PixelTarget


@pytest.mark.parametrize("ratio,grid", [(0.75, (14, 14)), (0.75, (4, 4)), (0.6, (7, 7)), (0.9, (8, 8)),
                                        (0.0, (2, 5))])
def test_random_masking_keeps_exactly_floor(ratio, grid):
    """Each sample keeps exactly int(L * (1 - ratio)) patches; mask and ids_keep agree."""
    masks = RandomMasking(ratio)(5, grid, torch.device("cpu"), torch.Generator().manual_seed(0))
    length = grid[0] * grid[1]
    keep = int(length * (1 - ratio))
    assert masks.mask.dtype == torch.bool and masks.mask.shape == (5, length)
    assert ((~masks.mask).sum(1) == keep).all()
    assert masks.ids_keep.shape == (5, keep)
    assert (~torch.gather(masks.mask, 1, masks.ids_keep)).all()


def test_restore_is_inverse_of_shuffle():
    """ids_restore undoes the shuffle; the kept ids are the noise-smallest, in shuffled order."""
    gen = torch.Generator().manual_seed(1)
    masks = RandomMasking(0.75)(4, (8, 8), torch.device("cpu"), gen)
    shuffle = torch.argsort(masks.ids_restore, dim=1)
    assert torch.equal(torch.gather(shuffle, 1, masks.ids_restore), torch.arange(64).expand(4, -1))
    assert torch.equal(shuffle[:, :16], masks.ids_keep)
    # same seed, same draw: the masking is reproducible through the generator
    again = RandomMasking(0.75)(4, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(1))
    assert torch.equal(again.mask, masks.mask)


def test_explicit_mask_is_honoured():
    """Masks.from_mask keeps the given mask, visible tokens in raster order, and rejects ragged masks."""
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 3, 4, 6]] = True
    mask[1, [0, 1, 2, 7]] = True
    masks = Masks.from_mask(mask)
    assert torch.equal(masks.mask, mask)
    assert masks.ids_keep.tolist() == [[0, 2, 5, 7], [3, 4, 5, 6]]
    model = create_model("mae_vit_tiny_patch16", **TINY_MAE)
    full = torch.rand(2, 16) < 2  # all True
    full[:, :4] = False
    out = model(torch.randn(2, 3, 32, 32), mask=full)
    assert torch.equal(out.mask, full)
    with pytest.raises(ValueError, match="same number"):
        Masks.from_mask(torch.tensor([[True, False], [True, True]]))


def test_patchify_round_trip_and_layout():
    """unpatchify(patchify(x)) == x; inside a patch the channel index changes fastest."""
    imgs = torch.randn(2, 3, 16, 24)
    patches = patchify(imgs, 8)
    assert patches.shape == (2, 6, 192)
    assert torch.equal(unpatchify(patches, 8, grid_size=(2, 3)), imgs)
    # patch 1 is row 0, column 1; its value k = (row * p + col) * 3 + channel
    assert patches[0, 1, (2 * 8 + 5) * 3 + 1] == imgs[0, 1, 2, 8 + 5]
    square = torch.randn(1, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(square, 4), 4), square)


def test_norm_pix_target_matches_definition():
    """norm-pix: per patch over all p*p*3 values, unbiased variance, eps 1e-6 inside the sqrt."""
    imgs = torch.randn(2, 3, 16, 16)
    raw = PixelTarget(8, norm_pix=False)(imgs)
    normed = PixelTarget(8, norm_pix=True)(imgs)
    patch = raw[1, 2]
    n = patch.numel()
    mean = patch.sum() / n
    var = ((patch - mean) ** 2).sum() / (n - 1)
    torch.testing.assert_close(normed[1, 2], (patch - mean) / math.sqrt(var + 1e-6))
    torch.testing.assert_close(raw, patchify(imgs, 8))


def test_loss_only_on_masked_patches():
    """Changing the pixels of a visible patch changes the target there but not the loss."""
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch16", **TINY_MAE).eval()
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, [0, 5, 10, 15]] = False
    out = model(imgs, mask=mask)
    pred = out.pred["mim"].detach()
    loss = model.losses["mim"]
    target = model.target(imgs)
    changed = target.clone()
    changed[:, 5] += 10.0  # a visible patch
    masks = Masks.from_mask(mask)
    assert loss(pred, changed, masks) == loss(pred, target, masks)
    changed[:, 1] += 10.0  # a masked patch
    assert loss(pred, changed, masks) != loss(pred, target, masks)
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(out.loss, expected)


def test_sincos_matches_direct_formula():
    """Row (i, j) of the table: first half encodes the column j, second the row i; sin then cos."""
    dim, h, w = 16, 3, 5
    table = sincos_2d(dim, (h, w), cls_token=True)
    assert table.shape == (1 + h * w, dim) and table.dtype == torch.float32
    assert torch.equal(table[0], torch.zeros(dim))
    quarter = dim // 4
    for i in range(h):
        for j in range(w):
            row = table[1 + i * w + j]
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                expected = [math.sin(j * omega), math.cos(j * omega), math.sin(i * omega), math.cos(i * omega)]
                got = [row[k], row[quarter + k], row[2 * quarter + k], row[3 * quarter + k]]
                for e, g in zip(expected, got):
                    assert abs(float(g) - e) < 1e-6


def test_pos_embed_is_frozen_sincos_and_resizes():
    """The encoder's pos_embed is the fixed table, not trained; resizing to the same grid is identity."""
    model = create_model("mae_vit_tiny_patch16", **TINY_MAE)
    pos = model.encoder.pos_embed
    assert not pos.requires_grad
    torch.testing.assert_close(pos[0], sincos_2d(32, 4, cls_token=True))
    assert torch.equal(resize_pos_embed(pos.data, (4, 4), 1), pos.data)
    bigger = resize_pos_embed(pos.data, (6, 6), 1)
    assert bigger.shape == (1, 37, 32) and torch.equal(bigger[:, 0], pos.data[:, 0])


def test_intermediate_layers_equal_blocks_run_by_hand():
    """Asking the encoder for layers returns exactly the outputs of running those blocks by hand."""
    torch.manual_seed(0)
    encoder = create_model("mae_vit_tiny_patch16", **(TINY_MAE | {"depth": 3})).encoder.eval()
    imgs = torch.randn(2, 3, 32, 32)
    ids_keep = torch.tensor([[0, 3, 5, 9], [1, 2, 14, 15]])
    out = encoder(imgs, ids_keep, return_layers=(1, 3))
    x = encoder.patch_embed(imgs) + encoder.pos_embed[:, 1:]
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, 32))
    x = torch.cat([(encoder.cls_token + encoder.pos_embed[:, :1]).expand(2, -1, -1), x], 1)
    by_hand = []
    for block in encoder.blocks:
        x = block(x)
        by_hand.append(x)
    assert sorted(out.layers) == [1, 3]
    for i in (1, 3):  # the cls token is the prefix, the visible tokens the patches
        torch.testing.assert_close(torch.cat([out.layers[i].prefix, out.layers[i].patches], 1), by_hand[i - 1])
    final = encoder.norm(by_hand[2])
    torch.testing.assert_close(out.prefix, final[:, :1])
    torch.testing.assert_close(out.patches, final[:, 1:])
    assert out.grid is None and out.layers[1].grid is None


def test_recipes_and_official_sizes():
    """The five MAE recipes exist with the official encoder and decoder sizes."""
    assert {"mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16",
            "mae_vit_large_patch16", "mae_vit_huge_patch14"} <= set(list_models("mae_*"))
    with torch.device("meta"):
        for name, (dim, depth, patch) in {"mae_vit_base_patch16": (768, 12, 16),
                                          "mae_vit_large_patch16": (1024, 24, 16),
                                          "mae_vit_huge_patch14": (1280, 32, 14)}.items():
            model = create_model(name)
            assert (model.encoder.embed_dim, len(model.encoder.blocks), model.patch_size) == (dim, depth, patch)
            head = model.heads["mim"]
            assert head.decoder_embed.out_features == 512 and len(head.decoder_blocks) == 8
            assert head.decoder_blocks[0].attn.num_heads == 16
            assert head.decoder_pred.out_features == patch * patch * 3


def test_unknown_model_lists_close_names():
    with pytest.raises(UsageError, match="mae_vit_base_patch16"):
        create_model("mae_vit_bas_patch16")


def test_mask_token_encoder_replaces_masked_patches():
    """masked_tokens="token" (SimMIM / MaskFeat): all L tokens in raster order, a masked patch's pixels
    never matter (its embedding is the mask token), a visible patch's do; "drop" keeps only K tokens."""
    from models.encoders.vit import VisionTransformer
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, masked_tokens="token")
    masks = RandomMasking(0.5)(2, (4, 4), torch.device("cpu"), torch.Generator().manual_seed(0))
    imgs = torch.randn(2, 3, 32, 32)
    hidden = masks.mask.reshape(2, 4, 4).repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None]
    with torch.no_grad():
        full = enc(imgs, masks.ids_keep)
        out = full.patches
        same = enc(imgs + 3 * torch.randn_like(imgs) * hidden, masks.ids_keep).patches
        moved = enc(imgs + 3 * torch.randn_like(imgs) * ~hidden, masks.ids_keep).patches
    assert out.shape == (2, 16, 32) and full.prefix.shape == (2, 1, 32) and full.grid == (4, 4)
    torch.testing.assert_close(same, out)
    assert not torch.allclose(moved, out)
    assert "mask_token" in enc.state_dict()
    with pytest.raises(UsageError, match="masked_tokens='drop' or 'token', got 'zero'"):
        VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, masked_tokens="zero")
