"""The official golden cases (tests/golden/, format compact-golden/1), rebuilt through the public API only:
``create_model`` with the case's tiny configuration, ``load_pretrained`` of the rule-2 weights (official key
names), the official masks as ``Masks``, ``official_quirks`` where the case is the official behaviour.
Every stored loss term and every stored fingerprint is compared at the tolerances of tests/golden/README.md."""
from pathlib import Path

import pytest
import torch

from golden_rules import (CASES, IMAGENET_MEAN, IMAGENET_STD, assert_fingerprint, assert_loss, case_inputs,
                          fingerprint_deviation, load_case, rule_weights)
from models import create_model
from models.clip_teacher import CLIP_MEAN, CLIP_STD
from models.masking import Masks, group_visible_ids
from util.checkpoint import load_pretrained

FAMILIES = ("mae", "dmjd", "deepmim", "ummae", "simmim")


def family(case: dict) -> str:
    return next(f for f in FAMILIES if case["name"].startswith(f + "_"))


def is_official(case: dict) -> bool:
    """Cases that include an official quirk (DMJD ``_official``, UM-MAE Swin/PVT) run under official_quirks."""
    return case["name"].endswith("_official") or family(case) == "ummae"


def _decoder(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")}


def write_teacher(case: dict, path: Path) -> str:
    """DeepMIM's CLIP teacher by rule 2, saved as the OpenAI-layout ``visual.*`` state dict --clip_path reads."""
    assert not case["teacher_weights"]["fixed_keys"]
    torch.save(rule_weights(case["teacher_weights"], {}), path)
    return str(path)


def build_model(case: dict, tmp_path: Path, official_quirks: bool | None = None) -> torch.nn.Module:
    """The registered recipe with the case's tiny configuration; ``official_quirks`` defaults to the case's."""
    cfg, kind = case["config"], family(case)
    quirks = is_official(case) if official_quirks is None else official_quirks
    assert cfg["layer_norm_eps"] == 1e-6
    if kind == "mae":
        return create_model("mae_vit_tiny_patch16", img_size=cfg["img_size"], patch_size=cfg["patch_size"],
                            embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                            mlp_ratio=cfg["mlp_ratio"], norm_pix_loss=cfg["norm_pix_loss"], **_decoder(cfg))
    if kind == "dmjd":
        assert (cfg["img_size"][0], cfg["patch_size"], cfg["decoder_pred_dim"]) == (224, [4, 2, 2], 108)
        return create_model("dmjd_convvit_base_patch16_hog", embed_dims=tuple(cfg["embed_dim"]),
                            depths=tuple(cfg["depth"]), num_heads=cfg["num_heads"], mlp_ratios=tuple(cfg["mlp_ratio"]),
                            mask_type=cfg["mask_type"], mask_ratio=cfg["mask_ratio"],
                            mim_loss_type=cfg["mim_loss_type"], vis_loss_type=cfg["vis_loss_type"],
                            official_quirks=quirks, **_decoder(cfg))
    if kind == "deepmim":
        assert (cfg["patch_size"], cfg["taps"]) == (16, [6, 8, 10, 12])
        return create_model("deepmim_vit_base_patch16_clip", clip_path=write_teacher(case, tmp_path / "clip.pt"),
                            embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                            mlp_ratio=cfg["mlp_ratio"], mask_ratio=cfg["mask_ratio"], **_decoder(cfg))
    assert (cfg["img_size"], cfg["patch_size"], cfg["stride"]) == (256, 4, 16)
    if case["name"] == "simmim_swin_tiny":
        assert cfg["window_size"] == 16 and not cfg["norm_pix_loss"]
        return create_model("simmim_swin_tiny_256", embed_dim=cfg["embed_dim"], depths=tuple(cfg["depths"]),
                            num_heads=tuple(cfg["num_heads"]), mlp_ratio=cfg["mlp_ratio"],
                            posmlp_dim=cfg["posmlp_dim"])
    common = dict(norm_pix_loss=cfg["norm_pix_loss"], vis_mask_ratio=cfg["vis_mask_ratio"], official_quirks=quirks,
                  **_decoder(cfg))
    if case["name"] == "ummae_swin_tiny":
        return create_model("ummae_swin_tiny_256", embed_dim=cfg["embed_dim"], depths=tuple(cfg["depths"]),
                            num_heads=tuple(cfg["num_heads"]), mlp_ratio=cfg["mlp_ratio"],
                            window_size=cfg["window_size"], posmlp_dim=cfg["posmlp_dim"], **common)
    assert case["name"] == "ummae_pvt_tiny" and cfg["decoder_mlp_ratio"] == 4
    return create_model("ummae_pvt_small_256", embed_dims=tuple(cfg["embed_dims"]), depths=tuple(cfg["depths"]),
                        num_heads=tuple(cfg["num_heads"]), mlp_ratios=tuple(cfg["mlp_ratios"]),
                        sr_ratios=tuple(cfg["sr_ratios"]), **common)


def load_rule_weights(model: torch.nn.Module, case: dict) -> torch.nn.Module:
    """Rule 2 under the official key names, through load_pretrained: every key used, every key filled."""
    report = load_pretrained(model, rule_weights(case["weights"], model.state_dict()))
    assert not (report.missing or report.unexpected or report.resized or report.mismatched), report
    return model.eval()


def case_masks(case: dict) -> Masks:
    """The official masks with the official encoder order: DMJD and DeepMIM/MAE as stored in ``ids_keep``;
    UM-MAE Swin/PVT in group order with the stored secondary mask; SimMIM in raster order."""
    if "ids_keep" in case:
        stored = case["masks"] if "masks" in case else case["mask"]  # [V, N, L] or [N, L]
        views = stored.shape[0] if stored.dim() == 3 else 1
        masks = Masks.from_ids_keep(case["ids_keep"], stored.shape[-1], num_views=views)
        assert torch.equal(masks.view_mask.reshape(stored.shape), stored)
        return masks
    mask = case["mask"]
    if "secondary_mask" in case:
        masks = Masks.from_ids_keep(group_visible_ids(~mask, (16, 16)), mask.shape[1])
        masks.secondary = case["secondary_mask"]
        assert not (masks.secondary & mask).any()
    else:
        masks = Masks.from_mask(mask)
    assert torch.equal(masks.mask, mask)
    return masks


def official_order(mask: torch.Tensor) -> torch.Tensor:
    """UM-MAE's prediction order: the visible patch of every 2x2 group (groups in raster order), then the
    masked patches in raster order -> [N, L] patch ids."""
    masked = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :int(mask[0].sum())]
    return torch.cat([group_visible_ids(~mask, (16, 16)), masked], dim=1)


def run_case(case: dict, model: torch.nn.Module, imgs: torch.Tensor, masks: Masks):
    """One forward pass -> (losses, tensors) under the case's names."""
    with torch.no_grad():
        out = model(imgs, mask=masks)
        kind = family(case)
        if kind == "dmjd":
            losses = {"loss": out.loss, "loss_mim": out.losses["mim"], "loss_vis": out.losses["vis"]}
            return losses, {"pred": out.pred["mim"], "pred_vis": out.pred["vis"], "target": model.target(imgs)}
        if kind == "deepmim":
            taps = case["config"]["taps"]
            losses = {"loss": out.loss, **{f"loss_tap{t}": out.losses[f"ds{t}"] for t in taps}}
            raw = imgs * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
            clip_in = (raw - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
            tensors = {"teacher_out": model.target.teacher(clip_in), "teacher_target": model.target(imgs),
                       **{f"pred_tap{t}": out.pred[f"ds{t}"] for t in taps}}
            return losses, tensors
        pred = out.pred["mim"]
        if kind == "ummae":
            order = official_order(masks.mask)
            pred = torch.gather(pred, 1, order[..., None].expand(-1, -1, pred.shape[-1]))
        return {"loss": out.loss}, {"pred": pred}


def rebuild(name: str, tmp_path: Path, official_quirks: bool | None = None):
    """(case, model with the rule weights, images, masks)."""
    case = load_case(name)
    model = load_rule_weights(build_model(case, tmp_path, official_quirks), case)
    return case, model, case_inputs(case), case_masks(case)


@pytest.mark.parametrize("name", CASES)
def test_case_reproduces_the_official_run(name, tmp_path):
    """Every loss term within 1e-5 relative and every fingerprint within its tolerance of the official run."""
    case, model, imgs, masks = rebuild(name, tmp_path)
    losses, tensors = run_case(case, model, imgs, masks)
    assert set(losses) == set(case["losses"]) and set(tensors) == set(case["fingerprints"])
    for key, ref in case["losses"].items():
        assert_loss(losses[key], ref, f"{name} {key}")
    for key, ref in case["fingerprints"].items():
        assert_fingerprint(tensors[key], ref, f"{name} {key}")


def test_all_ten_cases_are_present():
    """The ten official cases travel with the tests."""
    assert len(CASES) == 10 and {family(load_case(n)) for n in CASES} == set(FAMILIES)


@pytest.mark.parametrize("name,key", [("ummae_swin_tiny", "patch_embed.proj.weight"),
                                      ("mae_tiny_normpix1", "patch_embed.proj.weight"),
                                      ("dmjd_tiny_rand_fixed", "patch_embed1.proj.weight")])
def test_fingerprints_see_a_one_percent_weight_change(name, key, tmp_path):
    """Scaling one early encoder weight by 1.01 breaks the fingerprint check: the tolerance is meaningful."""
    case, model, imgs, masks = rebuild(name, tmp_path)
    with torch.no_grad():
        model.state_dict()[key].mul_(1.01)
    _, tensors = run_case(case, model, imgs, masks)
    assert fingerprint_deviation(tensors["pred"], case["fingerprints"]["pred"]) > 1.0
    with pytest.raises(AssertionError, match="fingerprint off"):
        assert_fingerprint(tensors["pred"], case["fingerprints"]["pred"])


@pytest.mark.parametrize("name", ["dmjd_tiny_block_official", "dmjd_tiny_rand_official"])
def test_dmjd_official_cases_need_the_quirk(name, tmp_path):
    """Without official_quirks the visible-branch loss leaves the official one; the masked branch does not."""
    case, model, imgs, masks = rebuild(name, tmp_path, official_quirks=False)
    losses, _ = run_case(case, model, imgs, masks)
    assert_loss(losses["loss_mim"], case["losses"]["loss_mim"])
    with pytest.raises(AssertionError, match="loss_vis"):
        assert_loss(losses["loss_vis"], case["losses"]["loss_vis"], "loss_vis")


@pytest.mark.parametrize("name", ["ummae_swin_tiny", "ummae_pvt_tiny"])
def test_ummae_cases_need_the_quirk(name, tmp_path):
    """Without official_quirks (each visible token at its own patch's position) the predictions leave the
    official ones."""
    case, model, imgs, masks = rebuild(name, tmp_path, official_quirks=False)
    _, tensors = run_case(case, model, imgs, masks)
    assert fingerprint_deviation(tensors["pred"], case["fingerprints"]["pred"]) > 1.0
