"""The compact golden cases' two rules and their tolerances (tests/golden/README.md).

A case stores no weights and no images: :func:`make_inputs` (rule 1) and :func:`rule_weights` (rule 2)
regenerate them, each checked against the sums the case keeps; :func:`assert_fingerprint` and
:func:`assert_loss` compare our outputs with the official ones.
"""
import math
import re
import zlib
from pathlib import Path

import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
CASES = sorted(p.stem for p in GOLDEN_DIR.glob("*.pt"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_case(name: str) -> dict:
    """The case ``name`` (``tests/golden/<name>.pt``), checked to be of the format these rules describe."""
    case = torch.load(GOLDEN_DIR / f"{name}.pt", weights_only=True)
    assert case["format"] == "compact-golden/1" and case["name"] == name, (case["format"], case["name"])
    return case


def _rel_close(ours: float, ref: float, rel: float = 1e-12) -> bool:
    return abs(ours - ref) <= rel * abs(ref)


def make_inputs(N: int, size: int, seed: int, check: dict | None = None) -> torch.Tensor:
    """Rule 1: seeded uint8 HWC noise with a flat 32x32 corner and a horizontal ramp in rows 32..63,
    through ToTensor and the ImageNet Normalize -> float32 [N, 3, size, size]. ``check``: the case's
    ``inputs['check']`` sums, asserted."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (N, size, size, 3), generator=g, dtype=torch.uint8)
    u8[:, :32, :32, :] = 128
    u8[:, 32:64, :, :] = torch.linspace(0, 255, size).round().to(torch.uint8)[None, None, :, None]
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
    assert abs(ours - ref) <= 1e-5 * abs(ref), f"{name}: {ours!r} vs official {ref!r} ({abs(ours - ref) / abs(ref):.3g} rel)"
