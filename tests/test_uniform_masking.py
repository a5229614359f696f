"""UM-MAE's uniform + secondary masking, and its ViT row (MAE with uniform masking)."""
from dataclasses import replace

import pytest
import torch

import main_pretrain
from base.errors import UsageError
from models import create_model
from models.masking import Masks, UniformMasking
from util.config import PretrainConfig

TINY_VIT = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                decoder_num_heads=2)


@pytest.mark.parametrize("grid", [4, 8, 14, 16])
def test_one_visible_patch_per_group_for_every_sample(grid):
    masks = UniformMasking()(64, (grid, grid), torch.device("cpu"), torch.Generator().manual_seed(grid))
    visible = (~masks.mask).reshape(64, grid // 2, 2, grid // 2, 2).sum((2, 4))
    assert torch.all(visible == 1)
    assert masks.mask.float().mean().item() == 0.75 and masks.secondary is None
    # ids_keep lists the groups in raster order: group g's kept patch lies in group g
    k = masks.ids_keep
    group = torch.div(k // grid, 2, rounding_mode="floor") * (grid // 2) + torch.div(k % grid, 2, rounding_mode="floor")
    assert torch.equal(group, torch.arange(grid * grid // 4).expand_as(group))


def test_corners_come_from_a_balanced_pool():
    """Across many samples each corner is kept equally often, and within one sample no corner exceeds its
    pool share (L/8 = 32 of 64 groups at 16x16)."""
    masks = UniformMasking()(2000, (16, 16), torch.device("cpu"), torch.Generator().manual_seed(0))
    corner = (masks.ids_keep // 16 % 2) * 2 + masks.ids_keep % 2
    counts = torch.stack([(corner == c).sum(1) for c in range(4)], dim=1)
    assert counts.max() <= 32
    share = counts.sum(0).float() / counts.sum()
    assert torch.allclose(share, torch.full((4,), 0.25), atol=0.01)


@pytest.mark.parametrize("ratio,hidden", [(0.25, 16), (0.5, 32), (0.1, 7)])
def test_secondary_masking_hides_exactly_the_ratio(ratio, hidden):
    masks = UniformMasking(ratio)(8, (16, 16), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.all(masks.secondary.sum(1) == 64 - int(64 * (1 - ratio))) and 64 - int(64 * (1 - ratio)) == hidden
    assert not (masks.secondary & masks.mask).any()
    assert not torch.equal(masks.secondary[0], masks.secondary[1])


def test_vit_row_secondary_tokens_and_loss():
    """MAE ViT with --mask_regular --vis_mask_ratio: secondary patches' pixels never reach the encoder, the
    other visible ones do; the loss covers only the 75% masked by the uniform mask."""
    torch.manual_seed(0)
    model = create_model("mae_vit_base_patch16", mask_regular=True, vis_mask_ratio=0.25, **TINY_VIT).eval()
    assert isinstance(model.masking, UniformMasking) and "vis_mask_token" in model.state_dict()
    imgs = torch.randn(2, 3, 64, 64)
    masks = model.sample_masks(imgs, torch.Generator().manual_seed(1))
    assert masks.secondary.sum(1).tolist() == [1, 1]

    def pixels(selected: torch.Tensor) -> torch.Tensor:
        return selected.reshape(2, 4, 4).repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None]

    with torch.no_grad():
        out = model(imgs, mask=masks)
        same = model(imgs + 4 * torch.randn_like(imgs) * pixels(masks.secondary | masks.mask), mask=masks)
        plain_visible = ~masks.mask & ~masks.secondary
        moved = model(imgs + 4 * torch.randn_like(imgs) * pixels(plain_visible), mask=masks)
    torch.testing.assert_close(same.pred["mim"], out.pred["mim"])
    assert not torch.allclose(moved.pred["mim"], out.pred["mim"])
    target = model.target(imgs)
    expected = (((out.pred["mim"] - target) ** 2).mean(-1) * masks.mask).sum() / masks.mask.sum()
    torch.testing.assert_close(out.loss, expected)


def test_uniform_masking_flags_and_errors():
    def config(*argv: str) -> PretrainConfig:
        return PretrainConfig.from_args(main_pretrain.get_args_parser().parse_args(argv))

    cfg = config("--model", "mae_vit_base_patch16", "--mask_regular", "--vis_mask_ratio", "0.25", "--input_size", "64",
                 "--token_size", "4", "--mask_ratio", "0.75", "--model_kwargs", "embed_dim=32", "depth=1", "num_heads=2")
    model = main_pretrain.build_model(cfg).model
    assert isinstance(model.masking, UniformMasking) and model.masking.vis_mask_ratio == 0.25
    with pytest.raises(UsageError, match="token_size"):
        main_pretrain.build_model(replace(cfg, token_size=16))
    with pytest.raises(UsageError, match="0.75"):
        main_pretrain.build_model(replace(cfg, token_size=None, mask_ratio=0.6))
    with pytest.raises(UsageError, match="mask_regular"):
        main_pretrain.build_model(config("--model", "mae_vit_base_patch16", "--vis_mask_ratio", "0.25"))


def test_masks_keep_secondary_through_from_ids_keep_order():
    masks = Masks.from_ids_keep(torch.tensor([[3, 0]]), 4)
    assert masks.mask.tolist() == [[False, True, True, False]] and masks.ids_keep.tolist() == [[3, 0]]
