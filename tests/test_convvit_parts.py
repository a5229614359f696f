"""ConViT's parts: fusion, layer groups, drop path, init, tapped layers, CBlock, the fine-tune classifier."""
import re

import pytest
import torch
import torch.nn.functional as F

from models.encoders.common import patch_visibility
from models.encoders.convvit import ConvViT
from models.pos_embed import sincos_2d
from test_convvit import TINY, images, random_ids_keep, tiny


# ------------------------------------------------------------------------------------ fusion and groups
def test_fusion_off_has_no_decode_convs_and_matches_zeroed_fusion():
    off = tiny(img_size=64, fusion=False)
    on = tiny(img_size=64)
    assert not any("output_decode" in k for k in off.state_dict())
    assert {k for k in on.state_dict() if "output_decode" in k} == {
        f"stage{s}_output_decode.{p}" for s in (1, 2) for p in ("weight", "bias")}
    off.load_state_dict({k: v for k, v in on.state_dict().items() if "output_decode" not in k}, strict=True)
    imgs, ids_keep = images(2, 64), random_ids_keep(2, 16, 6)
    with torch.no_grad():
        with_fusion = on(imgs, ids_keep).patches
        without = off(imgs, ids_keep).patches
        assert (with_fusion - without).abs().amax() > 1e-3
        for conv in (on.stage1_output_decode, on.stage2_output_decode):
            conv.weight.zero_()
            conv.bias.zero_()
        torch.testing.assert_close(on(imgs, ids_keep).patches, without, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fusion", [True, False])
def test_layer_groups_cover_all_parameters(fusion):
    m = tiny(fusion=fusion)
    stem, blocks = (re.compile(r) for r in m.layer_groups())
    groups = {"stem": set(), "blocks": {}, "rest": set()}
    for name, _ in m.named_parameters():
        s, b = stem.match(name), blocks.match(name)
        assert not (s and b), name
        if s:
            groups["stem"].add(name.split(".")[0])
        elif b:
            groups["blocks"].setdefault(int(b.group(1)), 0)
            groups["blocks"][int(b.group(1))] += 1
        else:
            groups["rest"].add(name)
    expected_stem = {"pos_embed", "patch_embed1", "patch_embed2", "patch_embed3", "patch_embed4", "blocks1", "blocks2"}
    if fusion:
        expected_stem |= {"stage1_output_decode", "stage2_output_decode"}
    assert groups["stem"] == expected_stem
    assert sorted(groups["blocks"]) == [0, 1] and all(v == 12 for v in groups["blocks"].values())
    assert groups["rest"] == {"norm.weight", "norm.bias"}


# --------------------------------------------------------------------------------------- drop path, init
def test_drop_path_linear_over_all_blocks():
    m = ConvViT(img_size=64, **{**TINY, "depths": (2, 2, 3)}, drop_path_rate=0.3)

    def rate(module):
        return getattr(module, "drop_prob", 0.0)

    got = [rate(b.drop_path) for b in m.blocks1] + [rate(b.drop_path) for b in m.blocks2]
    got += [rate(b.drop_path1) for b in m.blocks3]
    assert got == pytest.approx([0.3 * i / 6 for i in range(7)])
    assert [rate(b.drop_path2) for b in m.blocks3] == got[4:]
    assert isinstance(m.blocks1[0].drop_path, torch.nn.Identity)
    # stochastic depth is active in train mode only
    m.train()
    x = images(2, 64)
    with torch.no_grad():
        assert not torch.equal(m(x).patches, m(x).patches)
        m.eval()
        assert torch.equal(m(x).patches, m(x).patches)


def test_init():
    m = tiny()
    # pretraining: fixed sin-cos, frozen, no cls row
    assert m.pos_embed.shape == (1, 196, 32) and not m.pos_embed.requires_grad
    torch.testing.assert_close(m.pos_embed[0], sincos_2d(32, (14, 14), cls_token=False))
    # linear layers: xavier-uniform, zero bias
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear):
            fan_out, fan_in = mod.weight.shape
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert mod.weight.abs().max() <= bound + 1e-6 and mod.weight.abs().max() > 0.8 * bound, name
            assert torch.count_nonzero(mod.bias) == 0, name
        elif isinstance(mod, torch.nn.LayerNorm):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0), name
    # patch_embed3.proj: xavier over [out, in*k*k] (wider than PyTorch's default bound 1/sqrt(fan_in))
    w = m.patch_embed3.proj.weight
    xavier = (6 / (w[0].numel() + w.shape[0])) ** 0.5
    assert 1 / w[0].numel() ** 0.5 < w.abs().max() <= xavier + 1e-6
    # the other convs keep PyTorch's default init: kaiming-uniform(a=sqrt 5) -> bound 1/sqrt(fan_in), biases too
    for conv in (m.patch_embed1.proj, m.patch_embed2.proj, m.blocks1[0].conv1, m.blocks1[0].attn,
                 m.blocks2[0].mlp.fc2, m.stage1_output_decode):
        bound = 1 / conv.weight[0].numel() ** 0.5
        assert conv.weight.abs().max() <= bound + 1e-6
        assert conv.bias.abs().max() <= bound + 1e-6 and torch.count_nonzero(conv.bias) == conv.bias.numel()
    # fine-tuning: learnable, trunc-normal 0.02 (overwritten by the checkpoint)
    ft = tiny(learnable_pos_embed=True, fusion=False, final_norm=False)
    assert ft.pos_embed.requires_grad
    assert 0.015 < ft.pos_embed.std() < 0.025 and abs(ft.pos_embed.mean()) < 0.002
    assert isinstance(ft.norm, torch.nn.Identity)
    assert any(p is ft.pos_embed for p in ft.parameters())


# ---------------------------------------------------------------------------------------- return_layers
@pytest.mark.parametrize("masked", [True, False])
def test_return_layers_match_blocks_run_by_hand(masked):
    m = tiny(img_size=64, depths=(1, 1, 3))
    imgs = images(2, 64)
    ids_keep = random_ids_keep(2, 16, 6) if masked else None
    with torch.no_grad():
        out = m(imgs, ids_keep, return_layers=(1, 3))
        # by hand
        v1 = v2 = None
        if masked:
            vis = torch.zeros(2, 16).scatter_(1, ids_keep, 1.0).reshape(2, 1, 4, 4)
            v1, v2 = F.interpolate(vis, scale_factor=4.0), F.interpolate(vis, scale_factor=2.0)
        x = m.blocks1[0](m.patch_embed1(imgs), v1)
        s1 = m.stage1_output_decode(x).flatten(2).transpose(1, 2)
        x = m.blocks2[0](m.patch_embed2(x), v2)
        s2 = m.stage2_output_decode(x).flatten(2).transpose(1, 2)
        x = m.patch_embed4(m.patch_embed3(x).flatten(2).transpose(1, 2)) + m.pos_embed
        if masked:
            index = ids_keep.unsqueeze(-1).expand(-1, -1, 32)
            x, s1, s2 = (torch.gather(t, 1, index) for t in (x, s1, s2))
        hand = []
        for block in m.blocks3:
            x = block(x)
            hand.append(x)
        tokens = m.norm(x + s1 + s2)
    assert set(out.layers) == {1, 3}
    torch.testing.assert_close(out.layers[1].patches, hand[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.layers[3].patches, hand[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.patches, tokens, rtol=0, atol=1e-6)
    # layers are un-normed and before fusion
    assert not torch.allclose(out.layers[3].patches, out.patches, atol=1e-3)


def test_cblock_masks_after_first_pointwise_conv():
    """CBlock = x + conv2(DW5x5(vis * conv1(LN(x)))), then x + fc2(GELU(fc1(LN(x)))); LNs over channels, eps 1e-5.
    The map multiplies conv1's output (bias included), so masked positions feed exact zeros to the DW conv."""
    torch.manual_seed(0)
    m = tiny(img_size=64)
    block = m.blocks1[0]
    for p in (block.norm1.weight, block.norm1.bias, block.norm2.weight, block.norm2.bias):
        p.data.normal_()  # non-trivial affine LNs
    x = torch.randn(2, 16, 16, 16)
    vis = patch_visibility(random_ids_keep(2, 16, 8), (4, 4), 4).unsqueeze(1).float()

    def ln(t, norm):
        return F.layer_norm(t.permute(0, 2, 3, 1), (16,), norm.weight, norm.bias, eps=1e-5).permute(0, 3, 1, 2)

    with torch.no_grad():
        h = x + block.conv2(F.conv2d(vis * block.conv1(ln(x, block.norm1)), block.attn.weight, block.attn.bias,
                                     padding=2, groups=16))
        expected = h + block.mlp.fc2(F.gelu(block.mlp.fc1(ln(h, block.norm2))))
        torch.testing.assert_close(block(x, vis), expected, rtol=0, atol=1e-5)
        # masking the LN output instead (before conv1) would let conv1's bias through: a different result
        h_wrong = x + block.conv2(block.attn(block.conv1(vis * ln(x, block.norm1))))
        assert (h_wrong - h).abs().amax() > 1e-3
        # no map: no multiplication
        h = x + block.conv2(block.attn(block.conv1(ln(x, block.norm1))))
        torch.testing.assert_close(block(x), h + block.mlp.fc2(F.gelu(block.mlp.fc1(ln(h, block.norm2)))),
                                   rtol=0, atol=1e-5)


def test_convvit_classifier_loads_dmjd_pretraining_and_fine_tunes():
    """The fine-tune ConViT (official name ``convit_base_patch16``) takes a DMJD pretraining state dict:
    every encoder weight found, the fusion convs and heads ignored; global pooling only; the conv stages
    form layer 0 of the layer decay and blocks3.k layer k + 1; a training step runs."""
    from timm.optim import param_groups_layer_decay

    from models import create_model
    from util.checkpoint import load_pretrained
    from base.errors import UsageError

    tiny = dict(embed_dims=(16, 24, 32), depths=(1, 1, 2), num_heads=2, num_classes=5, drop_path_rate=0.1)
    pretrain = create_model("dmjd_convvit_base_patch16_hog", embed_dims=(16, 24, 32), depths=(1, 1, 2),
                            num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    clf = create_model("convit_base_patch16", **tiny)
    report = load_pretrained(clf, pretrain.state_dict(), allow_missing=["head.*", "fc_norm.*"])
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "stage1_output_decode.weight" in report.unexpected and "decoder_pred.weight" in report.unexpected
    torch.testing.assert_close(clf.encoder.blocks3[1].mlp.fc2.weight, pretrain.encoder.blocks3[1].mlp.fc2.weight)
    torch.testing.assert_close(clf.encoder.pos_embed, pretrain.encoder.pos_embed)
    assert clf.encoder.pos_embed.requires_grad and not hasattr(clf.encoder, "stage1_output_decode")
    with pytest.raises(UsageError, match="no cls token"):
        create_model("convvit_base_patch16", global_pool=False, **tiny)

    groups = param_groups_layer_decay(clf, 0.05, no_weight_decay_list=clf.no_weight_decay(), layer_decay=0.65)
    scale = {name: g["lr_scale"] for g in groups for name in g["params"]}
    by_name = {p: n for n, p in clf.named_parameters()}
    scale = {by_name[p]: s for p, s in scale.items()}
    assert scale["encoder.blocks1.0.attn.weight"] == pytest.approx(0.65 ** 3)
    assert scale["encoder.patch_embed4.weight"] == pytest.approx(0.65 ** 3)
    assert scale["encoder.blocks3.0.attn.qkv.weight"] == pytest.approx(0.65 ** 2)
    assert scale["encoder.blocks3.1.attn.qkv.weight"] == pytest.approx(0.65)
    assert scale["head.weight"] == 1.0 and scale["fc_norm.weight"] == 1.0

    clf.train()
    imgs, labels = torch.randn(2, 3, 224, 224), torch.tensor([0, 3])
    logits = clf(imgs)
    assert logits.shape == (2, 5)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    assert clf.encoder.blocks1[0].conv1.weight.grad is not None
