"""Tests for util/optim.py's LR scaling rule, warmup + half-cosine schedule, lr_scale, AdamW weight-decay groups."""
import math

import numpy as np
import pytest
import torch

from models import create_model
from util.optim import lr_at, scaled_lr, set_lr, weight_decay_groups

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)

LR, MIN_LR, WARMUP, EPOCHS = 1e-3, 1e-5, 5.0, 25.0


def test_scaled_lr_documented_mae_run():
    """blr 1.5e-4, batch 64 x 64 GPUs, no accumulation -> eff_batch 4096 and lr 2.4e-3 (MAE ViT-L)."""
    lr, eff = scaled_lr(1.5e-4, 64, 1, 64)
    assert eff == 4096
    assert lr == pytest.approx(2.4e-3, rel=1e-12)


def test_scaled_lr_accum_and_ratio():
    """accum_iter and ratio multiply eff_batch, and lr scales linearly with it."""
    base_lr, base_eff = scaled_lr(1.5e-4, 64, 1, 8)
    lr, eff = scaled_lr(1.5e-4, 64, 2, 8, ratio=0.5)
    assert eff == pytest.approx(base_eff) and lr == pytest.approx(base_lr)
    lr, eff = scaled_lr(1.5e-4, 64, 1, 8, ratio=1.6)
    assert eff == pytest.approx(base_eff * 1.6)
    assert lr == pytest.approx(1.5e-4 * eff / 256)


def test_lr_at_warmup_is_linear():
    """0 at epoch 0, lr/2 at warmup/2, lr at the end of warmup, linear in between."""
    assert lr_at(0.0, LR, MIN_LR, WARMUP, EPOCHS) == 0.0
    assert lr_at(WARMUP / 2, LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(LR / 2)
    assert lr_at(WARMUP, LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(LR)
    for epoch in np.linspace(0, WARMUP, 11, endpoint=False):
        assert lr_at(float(epoch), LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(LR * epoch / WARMUP)


def test_lr_at_cosine_part():
    """min_lr at the end (and after it), min_lr + (lr - min_lr)/2 halfway between warmup and end."""
    assert lr_at(EPOCHS, LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(MIN_LR)
    assert lr_at(EPOCHS + 3, LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(MIN_LR)
    mid = (WARMUP + EPOCHS) / 2
    assert lr_at(mid, LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(MIN_LR + (LR - MIN_LR) / 2)
    quarter = WARMUP + (EPOCHS - WARMUP) / 4
    expected = MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_at(quarter, LR, MIN_LR, WARMUP, EPOCHS) == pytest.approx(expected)


def test_lr_at_monotone_after_warmup():
    """After warmup the LR never increases and stays within [min_lr, lr] (1000 sampled fractional epochs)."""
    values = [lr_at(float(e), LR, MIN_LR, WARMUP, EPOCHS) for e in np.linspace(WARMUP, EPOCHS + 1, 1000)]
    assert all(b <= a + 1e-18 for a, b in zip(values, values[1:]))
    assert all(MIN_LR - 1e-15 <= v <= LR + 1e-15 for v in values)
    warm = [lr_at(float(e), LR, MIN_LR, WARMUP, EPOCHS) for e in np.linspace(0, WARMUP, 100, endpoint=False)]
    assert all(b > a for a, b in zip(warm, warm[1:]))


def test_lr_at_without_warmup():
    """warmup_epochs=0 starts the cosine at lr right away."""
    assert lr_at(0.0, LR, MIN_LR, 0.0, EPOCHS) == pytest.approx(LR)
    assert lr_at(EPOCHS, LR, MIN_LR, 0.0, EPOCHS) == pytest.approx(MIN_LR)


def test_set_lr_applies_lr_scale():
    """Groups with lr_scale get lr * lr_scale; groups without it get lr."""
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [a], "lr_scale": 0.25}, {"params": [b]}], lr=1.0)
    set_lr(opt, 0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1)


@pytest.fixture
def tiny_mae():
    torch.manual_seed(0)
    return create_model("mae_vit_tiny_patch16", **TINY)


def test_weight_decay_groups_partition(tiny_mae):
    """Every trainable parameter is in exactly one group; frozen pos embeds are in none."""
    groups = weight_decay_groups(tiny_mae, 0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in tiny_mae.parameters() if p.requires_grad}
    assert set(ids) == trainable
    named = dict(tiny_mae.named_parameters())
    for frozen in ("encoder.pos_embed", "heads.mim.decoder_pos_embed"):
        assert not named[frozen].requires_grad
        assert id(named[frozen]) not in ids
    torch.optim.AdamW(groups, lr=1e-3)  # an optimizer accepts them


def test_weight_decay_groups_membership(tiny_mae):
    """Biases and 1-D params get no decay; weights and the 3-D cls/mask tokens are decayed (timm 0.3.2)."""
    no_decay, decay = weight_decay_groups(tiny_mae, 0.05)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    no_ids, dec_ids = {id(p) for p in no_decay["params"]}, {id(p) for p in decay["params"]}
    named = dict(tiny_mae.named_parameters())
    for name, p in named.items():
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or p.ndim == 1:
            assert id(p) in no_ids, name
        else:
            assert id(p) in dec_ids, name
    assert id(named["encoder.cls_token"]) in dec_ids and named["encoder.cls_token"].ndim == 3
    assert id(named["heads.mim.mask_token"]) in dec_ids and named["heads.mim.mask_token"].ndim == 3
    assert id(named["encoder.blocks.0.norm1.weight"]) in no_ids
    assert id(named["heads.mim.decoder_norm.weight"]) in no_ids
    assert id(named["encoder.blocks.0.attn.qkv.weight"]) in dec_ids
    assert id(named["encoder.patch_embed.proj.weight"]) in dec_ids  # 4-D conv weight


def test_weight_decay_groups_skip(tiny_mae):
    """Names in ``skip`` move to the no-decay group."""
    no_decay, decay = weight_decay_groups(tiny_mae, 0.05, skip={"encoder.cls_token"})
    cls = dict(tiny_mae.named_parameters())["encoder.cls_token"]
    assert any(p is cls for p in no_decay["params"]) and not any(p is cls for p in decay["params"])
