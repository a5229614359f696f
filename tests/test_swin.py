"""UM-MAE's Swin (compact grid, posMLP, windows) and its pyramid heads (official golden cases: test_golden.py)."""
import re

import pytest
import torch

from conftest import adamw_losses, group_visible_ids
from golden_rules import assert_loss, rebuild
from models.classifier import Classifier
from models.encoders.swin import OffsetLattice, SwinMIM, WindowAttention
from models.losses import PatchLoss
from models.masking import RandomMasking, UniformMasking
from models.mim import Branch, MaskedImageModel
from models.pyramid_heads import SimMIMHead, UMDecoder
from models.targets import PixelTarget
from util.checkpoint import load_pretrained

# 128 px: 8x8 patches, a 16x16 compact cell grid, stages 16/8/4/2
TINY_SWIN = dict(img_size=128, embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 2), posmlp_dim=4, window_size=4)


def um_model(encoder_kw: dict) -> MaskedImageModel:
    encoder = SwinMIM(**encoder_kw, vis_mask_token=True)
    target = PixelTarget(16, norm_pix=True)
    decoder = UMDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim=16,
                        decoder_depth=1, decoder_num_heads=2)
    return MaskedImageModel(encoder, UniformMasking(0.25), target, {"mim": Branch(decoder, PatchLoss())})


def test_raster_positions_only_change_positions(tmp_path):
    """On the official Swin case, the fix (each visible token gets its own patch's position) changes the loss,
    and only through the decoder positions: with the position table zeroed both orders give the same result."""
    case, quirky, imgs, masks = rebuild("ummae_swin_tiny", tmp_path, official_quirks=True)
    fixed = rebuild("ummae_swin_tiny", tmp_path, official_quirks=False)[1]
    with torch.no_grad():
        quirk, fix = quirky(imgs, masks), fixed(imgs, masks)
        # the golden loss matches to ~1e-7; the fix moves it by ~2e-5 here (tiny random decoder)
        assert_loss(quirk.loss, case["losses"]["loss"])
        assert not torch.allclose(quirk.loss, fix.loss, rtol=2e-6, atol=0)
        assert (quirk.pred["mim"] - fix.pred["mim"]).abs().max() > 1e-2
        for model in (quirky, fixed):
            model.heads["mim"].decoder_pos_embed.zero_()
        quirk, fix = quirky(imgs, masks), fixed(imgs, masks)
    torch.testing.assert_close(quirk.pred["mim"], fix.pred["mim"], rtol=1e-6, atol=1e-6)


def test_group_visible_ids_is_group_order():
    masks = UniformMasking()(3, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(0))
    ids = group_visible_ids(~masks.mask, (8, 8))
    assert torch.equal(ids, masks.ids_keep)  # UniformMasking lists the groups in raster order
    rows, cols = ids // 8, ids % 8
    assert torch.equal(rows // 2 * 4 + cols // 2, torch.arange(16).expand(3, -1))
    with pytest.raises(RuntimeError, match="exactly one visible patch"):
        group_visible_ids(torch.ones(1, 64, dtype=torch.bool), (8, 8))


def test_compact_grid_round_trip():
    """The compact map holds the visible patches' own cells (as embedded on the full grid) at their true
    coordinates, group by group; secondary patches hold the normed vis_mask_token."""
    torch.manual_seed(0)
    encoder = SwinMIM(**TINY_SWIN, vis_mask_token=True).eval()
    imgs = torch.randn(2, 3, 128, 128)
    masks = UniformMasking(0.25)(2, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(1))
    with torch.no_grad():
        x, pos = encoder._compact(imgs, masks.ids_keep, None)
        x_sec, pos_sec = encoder._compact(imgs, masks.ids_keep, masks.secondary)
        full = encoder.patch_embed(imgs)  # [N, 32, 32, C]
        token = encoder.patch_embed.norm(encoder.vis_mask_token)[0, 0]
    assert x.shape == (2, 16, 16, 8) and pos.shape == (2, 16, 16, 2)
    assert torch.equal(pos, pos_sec)
    ids = group_visible_ids(~masks.mask, (8, 8))
    for n in range(2):
        for g in range(16):
            gy, gx = divmod(g, 4)
            ty, tx = divmod(int(ids[n, g]), 8)
            cells = (slice(4 * gy, 4 * gy + 4), slice(4 * gx, 4 * gx + 4))
            rows, cols = torch.meshgrid(torch.arange(4 * ty, 4 * ty + 4), torch.arange(4 * tx, 4 * tx + 4),
                                        indexing="ij")
            assert torch.equal(pos[n][cells], torch.stack([rows, cols], -1).float())
            torch.testing.assert_close(x[n][cells], full[n, 4 * ty:4 * ty + 4, 4 * tx:4 * tx + 4])
            expected = token.expand(4, 4, -1) if masks.secondary[n, ids[n, g]] else x[n][cells]
            torch.testing.assert_close(x_sec[n][cells], expected)


def test_ids_keep_order_does_not_matter():
    torch.manual_seed(0)
    encoder = SwinMIM(**TINY_SWIN, vis_mask_token=True).eval()
    imgs = torch.randn(2, 3, 128, 128)
    masks = UniformMasking(0.25)(2, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(2))
    perm = torch.randperm(16)
    with torch.no_grad():
        a = encoder(imgs, masks.ids_keep, secondary=masks.secondary).patches
        b = encoder(imgs, masks.ids_keep[:, perm], secondary=masks.secondary).patches
    torch.testing.assert_close(a, b)


def stage_sizes(encoder: SwinMIM, compact: bool) -> list[tuple[int, int]]:
    """(h, w) of every block's input grid after its downsample."""
    h, w = (side // encoder.cell_size // (2 if compact else 1) for side in encoder.img_size)
    sizes = []
    for block in encoder.blocks:
        if block.downsample is not None:
            h, w = h // 2, w // 2
        sizes.append((h, w))
    return sizes


@pytest.mark.parametrize("img_size,window,compact,expected", [
    (256, 8, True, [(32, 8, 0), (32, 8, 4), (16, 8, 0), (16, 8, 4), (8, 8, 0), (8, 8, 0), (4, 4, 0), (4, 4, 0)]),
    (256, 16, False, [(64, 16, 0), (64, 16, 8), (32, 16, 0), (32, 16, 8), (16, 16, 0), (16, 16, 0),
                      (8, 8, 0), (8, 8, 0)]),
    (224, 16, False, [(56, 16, 0), (56, 16, 8), (28, 16, 0), (28, 16, 8), (14, 14, 0), (14, 14, 0),
                      (7, 7, 0), (7, 7, 0)]),
    (192, 8, True, [(24, 8, 0), (24, 8, 4), (12, 8, 0), (12, 8, 4), (6, 6, 0), (6, 6, 0), (3, 3, 0), (3, 3, 0)]),
])
def test_window_and_shift(img_size, window, compact, expected):
    """Stage sizes, windows and shifts; a stage no larger than the window is one global window, unshifted."""
    encoder = SwinMIM(img_size=img_size, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), posmlp_dim=4,
                      window_size=window, masked_tokens="compact" if compact else "none")
    got = [(h, *block.window_and_shift(h, w)) for (h, w), block in zip(stage_sizes(encoder, compact), encoder.blocks)]
    assert got == expected
    imgs = torch.randn(1, 3, img_size, img_size)
    ids_keep = None
    if compact:
        ids_keep = UniformMasking()(1, encoder.grid_size, torch.device("cpu")).ids_keep
    with torch.no_grad():
        out = encoder(imgs, ids_keep, return_layers=(1, 8))
    side = img_size // (64 if compact else 32)
    assert out.patches.shape == (1, side * side, 64)
    assert out.layers[1].patches.shape == (1, (img_size // (8 if compact else 4)) ** 2, 8)


def test_padded_windows_mask_padding(monkeypatch):
    """A stage that is not a multiple of the window is padded at the bottom/right; padded keys are masked
    out, so the padding's content (features and coordinates) does not reach the real tokens."""
    import models.encoders.swin as swin
    torch.manual_seed(0)
    encoder = SwinMIM(img_size=224, embed_dim=8, depths=(2, 1, 1, 1), num_heads=(1, 1, 1, 1), posmlp_dim=4,
                      window_size=16, masked_tokens="none").eval()
    block = encoder.blocks[1]
    mask = block.attention_mask(56, 56, torch.device("cpu"))
    assert mask is block.attn_mask_56x56  # precomputed for the stage the model is built for
    assert mask.shape == (16, 256, 256)
    pad = torch.ones(64, 64)
    pad[:56, :56] = 0
    pad = torch.roll(pad, (-8, -8), (0, 1)).reshape(4, 16, 4, 16).permute(0, 2, 1, 3).reshape(16, 256)
    assert (mask.permute(0, 2, 1)[pad > 0] == -100).all()  # every query ignores every padded key
    assert encoder.blocks[0].attention_mask(64, 64, torch.device("cpu")) is None  # unshifted, no padding
    imgs = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        zeros = encoder(imgs, return_layers=(1, 2)).layers
        pad_fn = torch.nn.functional.pad
        monkeypatch.setattr(swin.F, "pad", lambda x, p: pad_fn(x, p, value=7.0))
        sevens = encoder(imgs, return_layers=(1, 2)).layers
    for i in (1, 2):
        torch.testing.assert_close(zeros[i], sevens[i])


def test_no_leakage_from_masked_patches():
    """UM-MAE: changing the pixels of masked (and of secondary-masked) patches changes nothing."""
    torch.manual_seed(0)
    model = um_model(TINY_SWIN).eval()
    imgs = torch.randn(2, 3, 128, 128)
    masks = model.masking(2, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(3))
    hidden = (masks.mask | masks.secondary).reshape(2, 1, 8, 1, 8, 1).expand(-1, 3, -1, 16, -1, 16)
    changed = torch.where(hidden.reshape(2, 3, 128, 128), torch.randn_like(imgs), imgs)
    with torch.no_grad():
        a = model.encoder(imgs, masks.ids_keep, secondary=masks.secondary).patches
        b = model.encoder(changed, masks.ids_keep, secondary=masks.secondary).patches
        pa = model.heads["mim"](model.encoder(imgs, masks.ids_keep, secondary=masks.secondary), masks)
        pb = model.heads["mim"](model.encoder(changed, masks.ids_keep, secondary=masks.secondary), masks)
    assert torch.equal(a, b) and torch.equal(pa, pb)
    # but the visible, not secondary-masked, patches are seen
    seen = (~hidden).reshape(2, 3, 128, 128)
    with torch.no_grad():
        c = model.encoder(torch.where(seen, torch.randn_like(imgs), imgs), masks.ids_keep,
                          secondary=masks.secondary).patches
    assert not torch.allclose(a, c)


def test_simmim_head_and_mask_token():
    """SimMIM: one prediction per patch in raster order; the masked patches' pixels do not leak."""
    torch.manual_seed(0)
    encoder = SwinMIM(**{**TINY_SWIN, "window_size": 8}, masked_tokens="token").eval()
    head = SimMIMHead(encoder.embed_dim, 768, 2)
    imgs = torch.randn(2, 3, 128, 128)
    masks = RandomMasking(0.75)(2, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(0))
    hidden = masks.mask.reshape(2, 1, 8, 1, 8, 1).expand(-1, 3, -1, 16, -1, 16).reshape(2, 3, 128, 128)
    with torch.no_grad():
        pred = head(encoder(imgs, masks.ids_keep), masks)
        again = head(encoder(torch.where(hidden, torch.randn_like(imgs), imgs), masks.ids_keep), masks)
    assert pred.shape == (2, 64, 768)
    assert torch.equal(pred, again)
    target = PixelTarget(16)(imgs)
    expected = ((pred - target).abs().mean(-1) * masks.mask).sum() / masks.mask.sum()
    torch.testing.assert_close(PatchLoss("l1")(pred, target, masks), expected)


def test_pretraining_steps_reduce_loss():
    torch.manual_seed(0)
    model = um_model(TINY_SWIN)
    imgs = torch.randn(2, 3, 128, 128).cumsum(-1).cumsum(-2) / 50  # smooth images
    masks = model.masking(2, (8, 8), torch.device("cpu"), torch.Generator().manual_seed(0))
    losses = adamw_losses(model, imgs, steps=5, lr=2e-3, masks=masks, betas=(0.9, 0.95))
    assert losses[-1] < losses[0]
    # every trainable parameter got a gradient (vis_mask_token through the secondary-masked patches)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_classification_forward():
    torch.manual_seed(0)
    encoder = SwinMIM(**{**TINY_SWIN, "window_size": 8}, masked_tokens="none", final_norm=False,
                      drop_path_rate=0.1)
    model = Classifier(encoder, num_classes=5)
    assert not any("mask_token" in k for k in model.state_dict())
    assert encoder.depth == len(encoder.blocks) == 6 and encoder.num_patches == 64
    logits = model(torch.randn(2, 3, 128, 128))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    # a pretraining checkpoint loads: only the classifier's head and fc_norm are new
    pretrained = um_model(TINY_SWIN)
    report = load_pretrained(model, pretrained.state_dict(), allow_missing=["head.*", "fc_norm.*"])
    assert report.unexpected and all(
        k.startswith(("decoder_", "mask_token", "vis_mask_token", "norm.")) for k in report.unexpected)
    stem, blocks = encoder.layer_groups()
    names = [n for n, _ in encoder.named_parameters()]
    assert {int(re.match(blocks, n).group(1)) for n in names if re.match(blocks, n)} == set(range(6))
    assert all(re.match(stem, n) or re.match(blocks, n) for n in names)


def per_pair_bias(attn: WindowAttention, pos_windows: torch.Tensor, lattice: OffsetLattice,
                  index: torch.Tensor | None = None) -> torch.Tensor:
    """The official posMLP bias, the MLP run on every pair of every window (from the coordinates, whatever table
    rows were precomputed); checks that the pairs' coordinate differences lie on the stage's lattice."""
    delta = pos_windows.unsqueeze(1) - pos_windows.unsqueeze(2)
    steps = delta / lattice.step
    assert torch.equal(steps, steps.round()) and (steps.abs() <= torch.tensor(lattice.radius)).all()
    delta = delta.permute(0, 3, 1, 2)
    return attn.posmlp(torch.sign(delta) * torch.log(1.0 + delta.abs()))


@pytest.mark.parametrize("mode,img_size,window,run_size", [
    ("compact", 128, 4, 128), ("compact", 192, 8, 192), ("token", 128, 8, 128), ("none", 224, 16, 224),
    ("none", 128, 8, 160)], ids=["ummae-128", "ummae-192-padded", "simmim-128", "finetune-224-padded",
                                 "features-160"])
def test_position_bias_lookup_equals_the_per_pair_mlp(monkeypatch, mode, img_size, window, run_size):
    """The bias looked up in each stage's table of offsets is the posMLP of every pair within float rounding
    (the same MLP on the same inputs, batched differently), forward and backward, on the compact grid
    (UM-MAE, secondary tokens), the full grid with mask tokens (SimMIM), padded windows, and dense
    features of another image size."""
    torch.manual_seed(0)
    encoder = SwinMIM(img_size=img_size, embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 2), posmlp_dim=4,
                      window_size=window, masked_tokens=mode, vis_mask_token=mode == "compact")
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "posmlp" in name:
                p.normal_(0, 0.5)  # biases well apart from zero, so rounding is all that may differ
    imgs = torch.randn(2, 3, run_size, run_size)
    masks = UniformMasking(0.25)(2, encoder.grid_size, torch.device("cpu"), torch.Generator().manual_seed(1)) \
        if mode == "compact" else RandomMasking(0.6)(2, encoder.grid_size, torch.device("cpu"))

    def run() -> tuple[torch.Tensor, dict]:
        encoder.zero_grad()
        if mode == "none":
            out = torch.cat([f.flatten(1) for f in encoder.forward_features(imgs)], dim=1)
        else:
            out = encoder(imgs, masks.ids_keep, secondary=masks.secondary if mode == "compact" else None).patches
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in encoder.named_parameters() if p.grad is not None}

    looked_up, grads = run()
    monkeypatch.setattr(WindowAttention, "position_bias", per_pair_bias)
    reference, ref_grads = run()
    torch.testing.assert_close(looked_up, reference, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for key, g in grads.items():
        if key.endswith("posmlp.2.bias"):  # truly 0 (softmax ignores a shift of all keys): rounding noise
            continue
        torch.testing.assert_close(g, ref_grads[key], rtol=1e-4, atol=1e-4 * ref_grads[key].abs().max().item())


def test_offset_lattices_follow_the_stage_geometry():
    """Coordinates are whole cells until the merges pass a patch (k = 4 cells), then halves of a patch
    row; the table spans the image at the stage's step."""
    encoder = SwinMIM(img_size=256, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), posmlp_dim=4)
    assert encoder.offset_lattices((64, 64)) == [OffsetLattice(1.0, (63, 63)), OffsetLattice(1.0, (31, 31)),
                                                 OffsetLattice(1.0, (15, 15)), OffsetLattice(0.5, (15, 15))]
    lattice = OffsetLattice(0.5, (2, 3))
    offsets = lattice.offsets(torch.device("cpu"))
    assert offsets.shape == (2, 5, 7) and offsets[:, 0, 0].tolist() == [-1.0, -1.5]
    assert torch.equal(lattice.index(offsets.permute(1, 2, 0)), torch.arange(35, dtype=torch.int32).view(5, 7))


@pytest.mark.parametrize("mode,img_size,window", [("token", 128, 8), ("none", 224, 16)],
                         ids=["simmim-shifted", "finetune-padded"])
def test_full_grid_table_rows_are_precomputed(mode, img_size, window):
    """On the full grid every block holds its windows' table rows as a buffer, equal to those built from the
    coordinates; a training step gives bit for bit the same as one that builds them, and keeps no index for
    backward (the buffer is what the lookup saves)."""
    torch.manual_seed(0)
    encoder = SwinMIM(img_size=img_size, embed_dim=8, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 2), posmlp_dim=4,
                      window_size=window, masked_tokens=mode)
    cells = img_size // 4
    rows, cols = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    pos = torch.stack([rows, cols], dim=-1).float()[None]
    lattices = encoder.offset_lattices((cells, cells))
    for block in encoder.blocks:
        if block.downsample is not None:
            pos = pos[:, ::2, ::2] / 2
        pairs = block.window_positions(pos)
        index = getattr(block, f"attn_index_{pos.shape[1]}x{pos.shape[2]}")
        assert torch.equal(index, lattices[block.stage].index(pairs.unsqueeze(1) - pairs.unsqueeze(2)))
    masks = RandomMasking(0.6)(2, encoder.grid_size, torch.device("cpu")) if mode == "token" else None
    imgs = torch.randn(2, 3, img_size, img_size)

    def step() -> tuple[torch.Tensor, list[torch.Tensor], int]:
        """-> output, gradients, and how many int32 tensors saved for backward are not buffers (built indices)."""
        encoder.zero_grad()
        buffers = {b.untyped_storage().data_ptr() for b in encoder.buffers()}
        saved = []

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.dtype == torch.int32 and tensor.untyped_storage().data_ptr() not in buffers:
                saved.append(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = encoder(imgs, None if masks is None else masks.ids_keep).patches
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in encoder.parameters() if p.grad is not None], len(saved)

    out, grads, built_indices = step()
    assert built_indices == 0
    for block in encoder.blocks:  # without the buffers: the rows are built at each step, as on the compact grid
        for name in [n for n, _ in block.named_buffers() if n.startswith("attn_index_")]:
            delattr(block, name)
    built_out, built_grads, built_indices = step()
    assert built_indices == len(encoder.blocks)
    assert torch.equal(out, built_out) and all(torch.equal(a, b) for a, b in zip(grads, built_grads))
