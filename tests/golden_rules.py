"""The compact golden cases (tests/golden/README.md): their two rules, their tolerances, and their rebuild
through the project's public API.

A case stores no weights and no images: :func:`make_inputs` (rule 1) and :func:`rule_weights` (rule 2)
regenerate them, each checked against the sums the case keeps; :func:`assert_fingerprint` and
:func:`assert_loss` compare our outputs with the official ones. :func:`rebuild` makes a case's model with
``create_model`` (its tiny configuration, ``official_quirks`` where the case is official), loads the rule-2
weights under the official key names with ``load_pretrained`` and gives the official masks as ``Masks``;
:func:`run_case` names our outputs as the case names its losses and fingerprints.
"""
import json
import math
import re
import zlib
from pathlib import Path

import torch

from conftest import group_visible_ids
from models import create_model
from models.clip_teacher import CLIP_MEAN, CLIP_STD
from models.masking import Masks
from util.checkpoint import load_pretrained

CASE_DIR = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in CASE_DIR.glob("*.json"))
FAMILIES = ("mae", "dmjd", "deepmim", "ummae", "simmim")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _decode(value):
    """JSON back to the case's values: ``{"__tensor__": dtype, "shape", "data"}`` objects become tensors
    (exact: float32 values survive the round trip through JSON's float64 text)."""
    if isinstance(value, dict):
        if "__tensor__" in value:
            dtype = getattr(torch, value["__tensor__"])
            return torch.tensor(value["data"], dtype=dtype).reshape(value["shape"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def load_case(name: str) -> dict:
    """The case ``name`` (``tests/golden/<name>.json``: text, nothing unpickled), checked to be of the format
    these rules describe."""
    case = _decode(json.loads((CASE_DIR / f"{name}.json").read_text()))
    assert case["format"] == "compact-golden/1" and case["name"] == name, (case["format"], case["name"])
    return case


def _rel_close(ours: float, ref: float, rel: float = 1e-12) -> bool:
    return abs(ours - ref) <= rel * abs(ref)


# ---------------------------------------------------------------------------------------- rule 1: inputs
def make_uint8(N: int, size: int, seed: int) -> torch.Tensor:
    """Rule 1's pixels: seeded uint8 noise [N, size, size, 3] (HWC), a flat 32x32 corner of 128 and a
    left-to-right ramp 0..255 in rows 32..63."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (N, size, size, 3), generator=g, dtype=torch.uint8)
    u8[:, :32, :32, :] = 128
    u8[:, 32:64, :, :] = torch.linspace(0, 255, size).round().to(torch.uint8)[None, None, :, None]
    return u8


def make_inputs(N: int, size: int, seed: int, check: dict | None = None) -> torch.Tensor:
    """Rule 1: :func:`make_uint8` through ToTensor and the ImageNet Normalize -> float32 [N, 3, size, size].
    ``check``: the case's ``inputs['check']`` sums, asserted."""
    u8 = make_uint8(N, size, seed)
    x = u8.permute(0, 3, 1, 2).to(torch.float32) / 255
    imgs = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    if check is not None:
        assert int(u8.long().sum()) == check["uint8_sum"]
        assert _rel_close(imgs.double().sum().item(), check["imgs_sum"])
        assert _rel_close(imgs.double().abs().mean().item(), check["imgs_abs_mean"])
    return imgs


def case_inputs(case: dict) -> torch.Tensor:
    """The case's images by rule 1, checked against its sums."""
    spec = case["inputs"]
    assert spec["rule"] == "official.make_inputs"
    return make_inputs(spec["N"], spec["size"], spec["seed"], spec["check"])


# --------------------------------------------------------------------------------------- rule 2: weights
def rule_tensor(key: str, shape: list[int], seed: int, norm: bool) -> torch.Tensor:
    """Rule 2 for one key: N(0, std) from a generator seeded by the seed and the key's crc32, std 1/sqrt(fan-in)
    for >= 2-D tensors and 0.02 otherwise, +1 for the LayerNorm weights (``norm``)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    std = 0.02 if len(shape) < 2 else math.prod(shape[1:]) ** -0.5
    return torch.randn(shape, generator=g) * std + (1.0 if norm else 0.0)


def _own_fixed(key: str, own_state_dict: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own value of the fixed official ``key``. A table the official code shares between
    numbered copies (DeepMIM's ``decoder_pos_embed`` -> ours ``decoder_pos_embed1``, ...) must be one table."""
    if key in own_state_dict:
        return own_state_dict[key]
    copies = [v for k, v in own_state_dict.items() if re.fullmatch(re.escape(key) + r"\d+", k)]
    assert copies, f"fixed key {key} has no counterpart in the model"
    assert all(torch.equal(c, copies[0]) for c in copies), f"the copies of {key} differ"
    return copies[0]


def rule_weights(case_weights: dict, own_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rule 2: a state dict keyed by the OFFICIAL names of ``case_weights['shapes']``. Fixed keys take the
    model's own values (``own_state_dict``) and must match ``fixed_fingerprint``; the rule tensors must
    match ``check`` (count, numel, float64 sum and abs-sum, ~1e-12 relative)."""
    seed, fixed, norm = case_weights["seed"], set(case_weights["fixed_keys"]), set(case_weights["norm_keys"])
    state_dict, count, numel, total, abs_total = {}, 0, 0, 0.0, 0.0
    for key, shape in case_weights["shapes"].items():
        if key in fixed:
            value = _own_fixed(key, own_state_dict)
            assert list(value.shape) == list(shape), (key, value.shape, shape)
            assert_fingerprint(value, case_weights["fixed_fingerprint"][key], key)
        else:
            value = rule_tensor(key, shape, seed, key in norm)
            count, numel = count + 1, numel + value.numel()
            total += value.double().sum().item()
            abs_total += value.double().abs().sum().item()
        state_dict[key] = value
    check = case_weights["check"]
    assert (count, numel) == (check["count"], check["numel"]), (count, numel, check)
    assert _rel_close(total, check["sum"]) and _rel_close(abs_total, check["abs_sum"]), (total, abs_total, check)
    return state_dict


def write_teacher(case: dict, path: Path) -> str:
    """DeepMIM's CLIP teacher by rule 2, saved as the OpenAI-layout ``visual.*`` state dict --clip_path reads."""
    assert not case["teacher_weights"]["fixed_keys"]
    torch.save(rule_weights(case["teacher_weights"], {}), path)
    return str(path)


# ------------------------------------------------------------------------------ fingerprints, tolerances
def fingerprint(t: torch.Tensor) -> dict:
    """The README's fingerprint: shape, an 8x8 (3-D) or 64-element head, float64 sum and mean |t|."""
    head = t[:, :8, :8] if t.dim() == 3 else t.flatten()[:64]
    return {"shape": list(t.shape), "slice": head, "sum": t.double().sum().item(),
            "abs_mean": t.double().abs().mean().item()}


def fingerprint_deviation(ours: torch.Tensor, ref: dict) -> float:
    """The largest deviation of ``ours`` from ``ref`` in units of its tolerance (<= 1 passes; inf: shape)."""
    if list(ours.shape) != list(ref["shape"]):
        return math.inf
    mine, a, n = fingerprint(ours.detach().float()), ref["abs_mean"], math.prod(ref["shape"])
    slice_dev = ((mine["slice"] - ref["slice"]).abs() / (1e-4 * ref["slice"].abs() + 1e-4 * a)).max().item()
    return max(slice_dev, abs(mine["sum"] - ref["sum"]) / (1e-4 * a * n), abs(mine["abs_mean"] - a) / (1e-4 * a))


def assert_fingerprint(ours: torch.Tensor, ref: dict, name: str = "tensor") -> None:
    """Same shape; slice |d| <= 1e-4 |ref| + 1e-4 a; |sum - ref| <= 1e-4 a n; |abs_mean - a| <= 1e-4 a
    (a = ref['abs_mean'], n = numel)."""
    assert list(ours.shape) == list(ref["shape"]), f"{name}: shape {list(ours.shape)} != {ref['shape']}"
    deviation = fingerprint_deviation(ours, ref)
    assert deviation <= 1.0, f"{name}: fingerprint off by {deviation:.3g} x its tolerance"


def assert_loss(ours: torch.Tensor | float, ref: float, name: str = "loss") -> None:
    """|ours - ref| <= 1e-5 |ref|."""
    ours = float(ours)
    assert abs(ours - ref) <= 1e-5 * abs(ref), f"{name}: {ours!r} vs official {ref!r}"


# --------------------------------------------------------------------- rebuilding a case (public API)
def family(case: dict) -> str:
    return next(f for f in FAMILIES if case["name"].startswith(f + "_"))


def is_official(case: dict) -> bool:
    """Cases that include an official quirk (DMJD ``_official``, UM-MAE Swin/PVT) run under official_quirks."""
    return case["name"].endswith("_official") or family(case) == "ummae"


def _decoder(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")}


def build_model(case: dict, tmp_path: Path, official_quirks: bool | None = None) -> torch.nn.Module:
    """The registered recipe with the case's tiny configuration; ``official_quirks`` defaults to the case's.
    ``tmp_path``: where DeepMIM's teacher file is written."""
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
    """The official masks with the official encoder order: DMJD, DeepMIM and MAE as stored in ``ids_keep``;
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


def rebuild(name: str, tmp_path: Path, official_quirks: bool | None = None):
    """(case, its model with the rule-2 weights in eval mode, its images, its masks)."""
    case = load_case(name)
    model = load_rule_weights(build_model(case, tmp_path, official_quirks), case)
    return case, model, case_inputs(case), case_masks(case)


def run_case(case: dict, model: torch.nn.Module, imgs: torch.Tensor, masks: Masks):
    """One forward pass without grad -> (losses, tensors), each named as the case names its entries."""
    with torch.no_grad():
        out = model(imgs, mask=masks)
        kind = family(case)
        if kind == "dmjd":
            losses = {"loss": out.loss, "loss_mim": out.losses["mim"], "loss_vis": out.losses["vis"]}
            return losses, {"pred": out.pred["mim"], "pred_vis": out.pred["vis"], "target": model.target(imgs)}
        if kind == "deepmim":
            taps = case["config"]["taps"]
            assert list(out.losses) == [f"ds{t}" for t in taps]  # one head per tap, in the taps' order
            losses = {"loss": out.loss, **{f"loss_tap{t}": out.losses[f"ds{t}"] for t in taps}}
            raw = imgs * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
            clip_in = (raw - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
            tensors = {"teacher_out": model.target.teacher(clip_in), "teacher_target": model.target(imgs),
                       **{f"pred_tap{t}": out.pred[f"ds{t}"] for t in taps}}
            return losses, tensors
        pred = out.pred["mim"]
        if kind == "ummae":  # ours is in raster order
            order = official_order(masks.mask)
            pred = torch.gather(pred, 1, order[..., None].expand(-1, -1, pred.shape[-1]))
        return {"loss": out.loss}, {"pred": pred}
