"""ConViT's convolution stages shared by disjoint views (models/encoders/convvit.py ``views``): each view's
output is exactly that of a pass of its own, forward and backward; overlapping views are never shared."""
import dataclasses

import pytest
import torch

from conftest import assert_close_across_kernels
from models import create_model
from models.encoders.convvit import ConvViT
from models.interfaces import Masks, repeat_views
from models.masking import BlockMasking, DisjointMasking, RandomMasking

TINY = dict(img_size=128, embed_dims=(16, 24, 32), depths=(2, 2, 2), num_heads=2, mlp_ratios=(8, 8, 4))
DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
CPU = torch.device("cpu")


def encoder(dtype: torch.dtype = torch.float32, **kwargs) -> ConvViT:
    """A tiny ConViT with weights far from their init (std 0.1), so every op moves the features."""
    torch.manual_seed(0)
    m = ConvViT(**{**TINY, **kwargs}).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return m


def disjoint_masks(n: int, views: int, kind: str, seed: int = 0) -> Masks:
    """V pairwise disjoint views of n images on the 8x8 grid: one random permutation of the patches (or of
    the 2x2 blocks) per image, cut into V equal visible sets."""
    g = torch.Generator().manual_seed(seed)
    units = 64 if kind == "rand" else 16
    order = torch.rand(n, units, generator=g).argsort(1)
    visible = torch.zeros(views, n, units, dtype=torch.bool)
    for v in range(views):
        visible[v].scatter_(1, order[:, v * (units // 4):(v + 1) * (units // 4)], True)
    if kind == "block":
        visible = visible.reshape(views, n, 4, 1, 4, 1).expand(-1, -1, -1, 2, -1, 2).reshape(views, n, 64)
    return Masks.from_mask(~visible)


def drawn_masks(n: int, kind: str) -> Masks:
    base = RandomMasking(0.75) if kind == "rand" else BlockMasking(0.6)
    return DisjointMasking(base, num_views=2)(n, (8, 8), CPU, torch.Generator().manual_seed(1))


def run(m: ConvViT, imgs: torch.Tensor, masks: Masks, shared: bool) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(final tokens + tapped block, parameter grads, image grad) of one pass, per view or shared."""
    m.zero_grad()
    x = imgs.clone().requires_grad_()
    views = masks.num_views
    out = m(x, masks.ids_keep, return_layers=(1,), views=views) if shared else \
        m(repeat_views(x, views), masks.ids_keep, return_layers=(1,))
    tokens = torch.cat([out.patches, out.layers[1].patches], dim=-1)
    (tokens.square().sum() + tokens.sum()).backward()
    return tokens.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}, x.grad


@pytest.mark.parametrize("masks", [drawn_masks(3, "rand"), drawn_masks(3, "block"), disjoint_masks(3, 2, "rand"),
                                   disjoint_masks(3, 3, "rand"), disjoint_masks(3, 3, "block")],
                         ids=["drawn-rand-V2", "drawn-block-V2", "rand-V2", "rand-V3", "block-V3"])
def test_shared_stages_equal_per_view_passes(masks):
    """fp32: the same tokens and image gradient (other batch shapes: within 1e-6 of their scale); the parameter
    gradients sum the same terms in another order (fp32 within 2e-6 of their scale; fp64 within 1e-12)."""
    assert masks.disjoint_views
    imgs = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    m = encoder()
    ref, ref_grads, ref_img = run(m, imgs, masks, shared=False)
    out, grads, img = run(m, imgs, masks, shared=True)
    assert_close_across_kernels(out, ref)
    assert_close_across_kernels(img, ref_img)
    assert grads.keys() == ref_grads.keys()
    for key, g in grads.items():
        torch.testing.assert_close(g, ref_grads[key], rtol=0, atol=2e-6 * ref_grads[key].abs().max().item())
    m = encoder(torch.float64)
    _, ref_grads, _ = run(m, imgs.double(), masks, shared=False)
    _, grads, _ = run(m, imgs.double(), masks, shared=True)
    for key, g in grads.items():
        torch.testing.assert_close(g, ref_grads[key], rtol=1e-12, atol=1e-12)


def test_the_composition_shares_only_disjoint_views(monkeypatch):
    """DMJD passes each image once with ``views`` = 2 for its disjoint views, and the repeated images with
    ``views`` = 1 for overlapping ones (or when the masks do not say they are disjoint): same loss."""
    model = create_model("dmjd_convvit_base_patch16_hog", **TINY, **DECODER)
    seen = []
    forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda imgs, *a, **kw: seen.append((len(imgs), kw["views"]))
                        or forward(imgs, *a, **kw))
    imgs = torch.randn(2, 3, 128, 128)
    masks = drawn_masks(2, "block")
    shared = model(imgs, mask=masks).loss
    alone = model(imgs, mask=dataclasses.replace(masks, disjoint_views=False)).loss
    overlapping = DisjointMasking(RandomMasking(0.75), num_views=3)(2, (8, 8), CPU, torch.Generator().manual_seed(0))
    assert not overlapping.disjoint_views
    model(imgs, mask=overlapping)
    assert_close_across_kernels(shared, alone)
    assert seen == [(2, 2), (4, 1), (6, 1)]


def test_overlapping_views_are_refused():
    """Views that share a visible patch cannot share the stages: the encoder's device-side check fails."""
    masks = DisjointMasking(RandomMasking(0.75), num_views=3)(2, (8, 8), CPU, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="disjoint"):
        encoder()(torch.randn(2, 3, 128, 128), masks.ids_keep, views=3)
    with pytest.raises(ValueError, match="ids_keep"):
        encoder()(torch.randn(2, 3, 128, 128), views=2)


def test_drop_path_training_gives_each_view_its_rows():
    """DropPath in the convolution stages draws per row: in training the views get rows of their own
    (the same draws as repeated images); in evaluation the stages are shared again. The two batch shapes may
    run other CPU kernels: equal within 1e-6 of the scale, not bit for bit."""
    m = encoder(drop_path_rate=0.3).train()
    imgs, masks = torch.randn(2, 3, 128, 128), drawn_masks(2, "rand")
    torch.manual_seed(5)
    ref = m(repeat_views(imgs, 2), masks.ids_keep).patches
    torch.manual_seed(5)
    assert_close_across_kernels(m(imgs, masks.ids_keep, views=2).patches, ref)
    m.eval()
    with torch.no_grad():
        assert_close_across_kernels(m(imgs, masks.ids_keep, views=2).patches,
                                    m(repeat_views(imgs, 2), masks.ids_keep).patches)
