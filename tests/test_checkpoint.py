"""Tests for util/checkpoint.py and the flat state-dict keys of models/mim.py (CPU, tiny models, seconds)."""
import argparse
import os
import random

import numpy as np
import pytest
import torch

from base.errors import UsageError
from base.safe_load import extract_state_dict, load_file
from models import create_model
from models.pos_embed import resize_pos_embed
from util.checkpoint import latest_checkpoint, load_pretrained, rng_state, save_checkpoint, set_rng_state

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)

_BLOCK = [f"{layer}.{p}" for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
          for p in ("weight", "bias")]
# The official models_mae.py names of a depth-2, decoder-depth-1 MAE, written out.
OFFICIAL_KEYS = (
    ["cls_token", "pos_embed", "mask_token", "decoder_pos_embed",
     "patch_embed.proj.weight", "patch_embed.proj.bias"]
    + [f"blocks.{i}.{k}" for i in (0, 1) for k in _BLOCK]
    + ["norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias"]
    + [f"decoder_blocks.0.{k}" for k in _BLOCK]
    + ["decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]
)


class _Custom:
    """Not allow-listed: a weights-only load must refuse it."""

    def __init__(self):
        self.value = 3


def _tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model("mae_vit_tiny_patch16", **(TINY | overrides))


def _leftover_temps(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".tmp-")]


# ---------------------------------------------------------------------------------------------- save


def test_save_checkpoint_writes_complete_file_without_temp(tmp_path):
    """save_checkpoint writes a loadable file with the saved contents and leaves no .tmp-* file behind."""
    path = tmp_path / "sub" / "checkpoint-0.pth"
    state = {"epoch": 3, "w": torch.arange(6.0)}
    save_checkpoint(str(path), state)
    loaded = load_file(str(path))
    assert loaded["epoch"] == 3 and torch.equal(loaded["w"], state["w"])
    assert _leftover_temps(path.parent) == []
    assert os.listdir(path.parent) == ["checkpoint-0.pth"]


def test_save_checkpoint_failure_keeps_previous_file(tmp_path, monkeypatch):
    """If torch.save dies midway, the previous checkpoint at the path is byte-identical and no temp remains."""
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(str(path), {"epoch": 1, "w": torch.ones(4)})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(str(path), {"epoch": 2, "w": torch.zeros(4)})
    assert path.read_bytes() == before
    assert _leftover_temps(tmp_path) == []
    monkeypatch.undo()
    assert load_file(str(path))["epoch"] == 1


# ---------------------------------------------------------------------------------------------- load


def test_load_file_accepts_namespace_args(tmp_path):
    """A checkpoint holding an argparse.Namespace under 'args' (as the official ones do) loads weights-only."""
    path = tmp_path / "official.pth"
    args = argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.75, epochs=800)
    torch.save({"model": {"w": torch.ones(2)}, "args": args, "epoch": 799}, path)
    loaded = load_file(str(path))
    assert isinstance(loaded["args"], argparse.Namespace)
    assert loaded["args"].mask_ratio == 0.75 and loaded["args"].model == "mae_vit_large_patch16"
    assert torch.equal(loaded["model"]["w"], torch.ones(2))


def test_load_file_refuses_arbitrary_class(tmp_path):
    """A pickled custom class instance is refused with a one-line UsageError (never unpickled)."""
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "thing": _Custom()}, path)
    with pytest.raises(UsageError) as info:
        load_file(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_load_file_missing_path(tmp_path):
    """A path that does not exist raises UsageError naming it."""
    path = tmp_path / "nope.pth"
    with pytest.raises(UsageError, match="does not exist"):
        load_file(str(path))


def test_load_file_garbage(tmp_path):
    """A file that is not a PyTorch checkpoint raises a one-line UsageError."""
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint\x00\x01\x02" * 10)
    with pytest.raises(UsageError) as info:
        load_file(str(path))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- rng


def _draw():
    return torch.rand(5), random.random(), np.random.rand(3)


def _assert_same_draws(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[2], b[2])


def test_rng_state_round_trip():
    """After set_rng_state, torch/python/numpy draw exactly what they drew right after rng_state()."""
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    _draw()
    state = rng_state()
    expected = _draw()
    _draw()  # move every generator on
    set_rng_state(state)
    _assert_same_draws(_draw(), expected)


def test_rng_state_survives_checkpoint_file(tmp_path):
    """The RNG state written by save_checkpoint and read back by (weights-only) load_file still restores."""
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    np.random.randn()  # leave a cached gaussian in the numpy state
    path = tmp_path / "rng.pth"
    save_checkpoint(str(path), {"rng": rng_state()})
    expected = _draw()
    _draw()
    set_rng_state(load_file(str(path))["rng"])
    _assert_same_draws(_draw(), expected)


# ------------------------------------------------------------------------------------------- latest


def test_latest_checkpoint_numeric_order(tmp_path):
    """The highest epoch wins by number (10 > 2), other names are ignored, an empty folder gives None."""
    assert latest_checkpoint(str(tmp_path)) is None
    for name in ("checkpoint-2.pth", "checkpoint-10.pth", "checkpoint-best.pth", "checkpoint-99.pth.tmp",
                 "checkpoint-50.pt", "log.txt", ".tmp-abc.pth"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10.pth")


def test_latest_checkpoint_only_other_names(tmp_path):
    """A folder with no checkpoint-<int>.pth file gives None."""
    (tmp_path / "checkpoint-last.pth").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)) is None


# ------------------------------------------------------------------------------------ extract_state_dict


@pytest.mark.parametrize("wrap", [lambda sd: {"model": sd, "epoch": 1},
                                  lambda sd: {"state_dict": sd},
                                  lambda sd: sd],
                         ids=["model", "state_dict", "plain"])
def test_extract_state_dict_layouts(wrap):
    """The weights are found under 'model', 'state_dict' or as the dict itself."""
    sd = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    out = extract_state_dict(wrap(dict(sd)))
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_extract_state_dict_strips_wrapper_prefixes():
    """DDP 'module.' and torch.compile '_orig_mod.' prefixes (also stacked) are removed."""
    sd = {"module.a": torch.ones(1), "_orig_mod.b": torch.ones(1), "module._orig_mod.c": torch.ones(1),
          "d": torch.ones(1)}
    assert sorted(extract_state_dict({"model": sd})) == ["a", "b", "c", "d"]


def test_extract_state_dict_strips_compile_of_ddp_prefix():
    """torch.compile(DDP(model)).state_dict() keys ('_orig_mod.module.') come out bare."""
    assert list(extract_state_dict({"_orig_mod.module.a": torch.ones(1)})) == ["a"]


# ------------------------------------------------------------------------------------- load_pretrained


def test_load_pretrained_own_state_dict_reports_nothing():
    """A model's own weights load into a fresh model with an empty report and equal parameters."""
    src, dst = _tiny(0), _tiny(1)
    report = load_pretrained(dst, src.state_dict())
    assert (report.missing, report.unexpected, report.resized, report.mismatched) == ([], [], [], [])
    assert str(report) == "loaded all keys"
    for (name, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_pretrained_from_file(tmp_path):
    """A path to a training checkpoint ({'model': sd, 'args': Namespace}) loads like the dict itself."""
    src, dst = _tiny(0), _tiny(1)
    path = tmp_path / "checkpoint-0.pth"
    save_checkpoint(str(path), {"model": src.state_dict(), "args": argparse.Namespace(lr=1e-3)})
    assert str(load_pretrained(dst, str(path))) == "loaded all keys"
    assert torch.equal(dst.state_dict()["blocks.1.mlp.fc2.weight"], src.state_dict()["blocks.1.mlp.fc2.weight"])


def test_load_pretrained_missing_key_raises():
    """A checkpoint lacking an encoder weight raises UsageError naming that key."""
    sd = _tiny(0).state_dict()
    del sd["blocks.0.norm1.weight"]
    with pytest.raises(UsageError, match=r"blocks\.0\.norm1\.weight"):
        load_pretrained(_tiny(1), sd)


def test_load_pretrained_allow_missing_flat_pattern():
    """A missing key matched by an allow_missing pattern (flat name) passes and is listed in .missing."""
    sd = _tiny(0).state_dict()
    del sd["blocks.0.norm1.weight"]
    report = load_pretrained(_tiny(1), sd, allow_missing=["blocks.*"])
    assert report.missing == ["blocks.0.norm1.weight"]


def test_load_pretrained_allow_missing_keeps_the_rest():
    """With the missing key allowed (a pattern matching either naming), every other weight is loaded."""
    src, dst = _tiny(0), _tiny(1)
    sd = src.state_dict()
    del sd["blocks.0.norm1.weight"]
    report = load_pretrained(dst, sd, allow_missing=["blocks.0.*"])
    assert len(report.missing) == 1 and report.missing[0].endswith("blocks.0.norm1.weight")
    out = dst.state_dict()
    assert torch.equal(out["blocks.0.norm1.bias"], sd["blocks.0.norm1.bias"])
    assert torch.equal(out["decoder_pred.weight"], sd["decoder_pred.weight"])


def test_load_pretrained_reports_unexpected_key():
    """A key the model does not have is reported in .unexpected and does not stop the load."""
    sd = _tiny(0).state_dict()
    sd["head.weight"] = torch.zeros(10, 32)
    report = load_pretrained(_tiny(1), sd)
    assert report.unexpected == ["head.weight"]
    assert report.missing == [] and "unexpected (1): head.weight" in str(report)


def test_load_pretrained_resizes_pos_embed():
    """pos_embed of a 4x4 grid (img 32) loaded at img 48 (6x6) is resized bicubically, cls row kept;
    decoder_pos_embed is resized too; the rest loads unchanged."""
    sd = _tiny(0).state_dict()
    torch.manual_seed(5)
    sd["pos_embed"] = torch.randn_like(sd["pos_embed"])  # a non-zero cls row makes the check meaningful
    dst = _tiny(1, img_size=48)
    report = load_pretrained(dst, dict(sd))
    assert sorted(report.resized) == ["decoder_pos_embed", "pos_embed"]
    assert report.mismatched == [] and report.missing == [] and report.unexpected == []
    out = dst.state_dict()
    assert out["pos_embed"].shape == (1, 37, 32) and out["decoder_pos_embed"].shape == (1, 37, 32)
    assert torch.equal(out["pos_embed"][:, :1], sd["pos_embed"][:, :1])
    assert torch.allclose(out["pos_embed"], resize_pos_embed(sd["pos_embed"], (6, 6), 1))
    assert torch.allclose(out["decoder_pos_embed"], resize_pos_embed(sd["decoder_pos_embed"], (6, 6), 1))
    assert torch.equal(out["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])


def test_load_pretrained_drops_mismatched_shape():
    """A non-pos key of another shape is dropped (model keeps its own value) and listed in .mismatched."""
    dst = _tiny(1)
    own = dst.state_dict()["decoder_pred.weight"].clone()
    sd = _tiny(0).state_dict()
    sd["decoder_pred.weight"] = torch.zeros(5, 32)
    report = load_pretrained(dst, sd, allow_missing=["decoder_pred.*"])
    assert len(report.mismatched) == 1 and report.mismatched[0].startswith("decoder_pred.weight")
    assert "(5, 32)" in report.mismatched[0]
    assert torch.equal(dst.state_dict()["decoder_pred.weight"], own)
    assert torch.equal(dst.state_dict()["decoder_pred.bias"], sd["decoder_pred.bias"])


def test_load_pretrained_mismatched_shape_is_fatal_unless_allowed():
    """The dropped mismatched key counts as missing: without allow_missing the load raises UsageError."""
    sd = _tiny(0).state_dict()
    sd["decoder_pred.weight"] = torch.zeros(5, 32)
    with pytest.raises(UsageError, match="decoder_pred.weight"):
        load_pretrained(_tiny(1), sd)


# ----------------------------------------------------------------------------------------- flat keys


def test_state_dict_keys_are_official_mae_names():
    """The composed model's keys are flat and exactly the official models_mae.py names."""
    keys = list(_tiny(0).state_dict())
    assert not any(k.startswith(("encoder.", "heads.")) for k in keys)
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(OFFICIAL_KEYS)


def test_flat_state_dict_loads_strict():
    """load_state_dict(strict=True) of the flat keys into a fresh model makes every tensor equal."""
    src, dst = _tiny(0), _tiny(1)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    assert not torch.equal(dst.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    result = dst.load_state_dict(sd, strict=True)
    assert list(result.missing_keys) == [] and list(result.unexpected_keys) == []
    src_params = dict(src.named_parameters())
    for name, param in dst.named_parameters():
        assert torch.equal(param, src_params[name]), name
