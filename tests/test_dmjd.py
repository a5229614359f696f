"""DMJD as a composition: the two branches, the LR rule, the CLI (its golden cases: test_golden.py)."""
import json
from pathlib import Path

import pytest
import torch

import main_pretrain
from conftest import adamw_losses, smooth_images
from golden_rules import assert_loss, rebuild
from models import create_model, create_recipe, list_models
from models.losses import PatchLoss
from models.masking import BlockMasking, DisjointMasking, Masks, RandomMasking
from models.official import DMJD_QUIRKS
from util.config import PretrainConfig

# tiny ConViT (the golden cases' stages 16/24/32, depths 1/1/2), decoder 16 x 1
TINY_CONVVIT = dict(embed_dims=(16, 24, 32), depths=(1, 1, 2), num_heads=2, mlp_ratios=(8, 8, 4),
                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["block", "rand"])
def test_fixed_loss_does_not_depend_on_the_kept_order(kind, tmp_path):
    """With targets gathered in the predictions' order, raster-ordered visible tokens give the official
    loss of the golden case that used the official kept-token order (the ``_fixed`` cases)."""
    case, model, imgs, _ = rebuild(f"dmjd_tiny_{kind}_fixed", tmp_path)
    with torch.no_grad():
        out = model(imgs, mask=case["masks"])
    assert_loss(out.loss, case["losses"]["loss"])


def test_official_quirks_ignore_pred_ratio_in_the_masking():
    """The official code never hands --pred_ratio to the masking; by default it reaches it."""
    kwargs = dict(mask_ratio=0.6, pred_ratio=0.8, **TINY_CONVVIT)
    default = create_recipe("dmjd_convvit_base_patch16_hog", **kwargs)
    quirky = create_recipe("dmjd_convvit_base_patch16_hog", official_quirks=True, **kwargs)
    assert isinstance(default.model.masking, DisjointMasking) and isinstance(default.model.masking.base, BlockMasking)
    assert default.model.masking.pred_ratio == 0.8 and quirky.model.masking.pred_ratio == 1.0
    assert default.defaults.lr_batch_ratio == quirky.defaults.lr_batch_ratio == pytest.approx(0.8 / 0.6)
    assert set(quirky.quirks) == set(DMJD_QUIRKS) and not default.quirks


def test_visible_branch_sees_only_visible_tokens():
    """The distillation head predicts exactly the K kept tokens; perturbing masked pixels changes neither
    its predictions nor its loss, and its loss reads only the visible patches' targets."""
    torch.manual_seed(0)
    model = create_model("dmjd_convvit_base_patch16_hog", img_size=64, **TINY_CONVVIT).eval()
    imgs = torch.randn(2, 3, 64, 64)
    masks = model.sample_masks(imgs, torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(imgs, mask=masks)
        hidden = masks.view_mask[0].reshape(2, 4, 4).repeat_interleave(16, 1).repeat_interleave(16, 2)
        # perturb only pixels masked in view 1; compare view 1's rows (the first N)
        noisy = imgs + 5 * torch.randn_like(imgs) * hidden[:, None]
        again = model(noisy, mask=masks)
    n, k = 2, masks.ids_keep.shape[1]
    assert out.pred["vis"].shape == (2 * n, k, 108)
    _assert_close(again.pred["vis"][:n], out.pred["vis"][:n])

    loss = model.losses["vis"]
    target = torch.randn(2 * n, 16, 108)
    changed = torch.where(masks.mask[..., None], torch.randn_like(target), target)
    pred = out.pred["vis"]
    assert torch.equal(loss(pred, target, masks), loss(pred, changed, masks))


def test_smooth_l1_beta_two_by_hand():
    """0.5 x^2 / 2 below |x| = 2 and |x| - 1 above, averaged over every element."""
    loss = PatchLoss("smooth_l1", beta=2.0, on="visible")
    masks = Masks.from_mask(torch.tensor([[False, True]]))
    pred = torch.tensor([[[1.0, 3.0]]])
    target = torch.zeros(1, 2, 2)
    assert loss(pred, target, masks).item() == pytest.approx((0.25 + 2.0) / 2)


def test_adaptive_lr_rule():
    """eff = batch x accum x world x pred / mask: the PRETRAIN.md run (64 x 8 GPUs, m 0.6, p 1, blr 6e-4)
    gives 853.3 and lr 2.0e-3; MAE recipes keep ratio 1."""
    recipe = create_recipe("dmjd_convvit_base_patch16_hog", **TINY_CONVVIT)
    args = main_pretrain.get_args_parser().parse_args(["--blr", "6e-4", "--batch_size", "64"])
    lr, eff = PretrainConfig.from_args(args).scaled_lr(8, recipe.defaults.lr_batch_ratio)
    assert eff == pytest.approx(853.333, abs=1e-3) and lr == pytest.approx(2.0e-3)
    assert args.lr is None  # derived, never written back into the flags
    assert recipe.defaults.min_crop_scale == 0.5
    mae = create_recipe("mae_vit_tiny_patch16", img_size=32)
    assert mae.defaults.lr_batch_ratio == 1.0 and mae.defaults.min_crop_scale == 0.2


def test_recipes_and_official_names():
    names = set(list_models("*"))
    assert {"dmjd_convvit_base_patch16_hog", "dmjd_convvit_base_patch16_dec2_hog", "dmjd_convvit_large_patch16_hog",
            "dmjd_vit_base_patch16_hog", "convmae_convvit_base_patch16", "dmjd_convit_base_patch16_dec8_hog",
            "dmjd_convit_base_patch16_dec2_hog", "dmjd_convit_large_patch16_dec8_hog"} <= names
    dec2 = create_model("dmjd_convit_base_patch16_dec2_hog", **{**TINY_CONVVIT, "decoder_depth": 2})
    assert len(dec2.heads["mim"].decoder_blocks) == 2
    convmae = create_model("convmae_convvit_base_patch16", img_size=64, embed_dims=(16, 24, 32), depths=(1, 1, 2),
                           num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    assert isinstance(convmae.masking, RandomMasking) and set(convmae.heads) == {"mim"}
    assert convmae.heads["mim"].decoder_pred.out_features == 16 * 16 * 3
    vit = create_model("dmjd_vit_base_patch16_hog", img_size=64, embed_dim=32, depth=2, num_heads=2,
                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    out = vit(torch.randn(2, 3, 64, 64))
    assert out.pred["mim"].shape == (4, 16, 108) and out.pred["vis"].shape == (4, 4, 108)
    assert torch.isfinite(out.loss)


def test_short_dmjd_pretrain_learns():
    """A tiny DMJD ConViT on a fixed batch: the joint loss falls by a clear margin in a few AdamW steps."""
    torch.manual_seed(0)
    model = create_model("dmjd_convvit_base_patch16_hog", img_size=64, **TINY_CONVVIT)
    losses = adamw_losses(model, smooth_images(4, 64), steps=40, lr=3e-3, mask_seeds=3)
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


@pytest.mark.slow
def test_official_pretrain_command_runs(image_folder, tmp_path):
    """The PRETRAIN.md command of the official repository, at full ConViT-B size, for one tiny epoch."""
    out = tmp_path / "run"
    argv = ["--batch_size", "2", "--model", "dmjd_convit_base_patch16_dec8_hog", "--mask_ratio", "0.6",
            "--mask_type", "block", "--pred_type", "hog", "--mim_loss_type", "l2", "--vis_loss_type", "smooth_l1",
            "--epochs", "1", "--warmup_epochs", "20", "--blr", "6e-4", "--weight_decay", "0.05",
            "--data_path", str(image_folder), "--output_dir", str(out), "--data_limit", "4",
            "--num_workers", "0", "--device", "cpu", "--print_freq", "1"]
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(records) == 1 and records[0]["train_loss"] > 0
    assert {"train_loss_mim", "train_loss_vis"} <= set(records[0])
    assert Path(out / "checkpoint-0.pth").is_file()


def test_maskfeat_baseline():
    """MaskFeat: every patch encoded (mask tokens), a linear HOG head, loss on masked patches only; the
    official float-input HOG only under --official_quirks."""
    kwargs = dict(img_size=64, embed_dim=32, depth=2, num_heads=2)
    model = create_model("maskfeat_vit_base_patch16", **kwargs)
    assert model.encoder.masked_tokens == "token" and model.masking.mask_ratio == 0.4
    assert model.target.from_uint8 and not create_model("maskfeat_vit_base_patch16", official_quirks=True,
                                                        **kwargs).target.from_uint8
    imgs = torch.randn(2, 3, 64, 64)
    masks = model.sample_masks(imgs, torch.Generator().manual_seed(0))
    out = model(imgs, mask=masks)
    assert out.pred["mim"].shape == (2, 16, 108) and torch.isfinite(out.loss)
    target = model.target(imgs)
    expected = (((out.pred["mim"] - target) ** 2).mean(-1) * masks.mask).sum() / masks.mask.sum()
    torch.testing.assert_close(out.loss, expected)
    assert {"mask_token", "decoder_pred.weight", "cls_token"} <= set(model.state_dict())
