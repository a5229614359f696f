"""Named recipes: pretraining models pick one value on every axis (encoder, masking, target, heads);
classification models wrap an encoder for fine-tuning and linear probing."""
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from base.errors import UsageError

from .classifier import Classifier
from .clip_teacher import load_clip_teacher, save_random_clip
from .encoder_teacher import load_encoder_teacher
from .encoders import convvit, pvt, swin, vit
from .heads import (TINY_DECODER, LinearHead, MAEDecoder, VisibleDistillHead, deep_supervision_heads,
                    default_ds_layers)
from .hog import HogTarget, MaskFeatHogTarget
from .interfaces import Masking
from .losses import PatchLoss
from .masking import BlockMasking, DisjointMasking, RandomMasking, UniformMasking
from .mim import Branch, MaskedImageModel
from .official import DMJD_QUIRKS, MASKFEAT_QUIRKS, UMMAE_QUIRKS, share_decoder_pos_embed
from .options import check_decoder, check_pyramid_size
from .pyramid_heads import SimMIMHead, UMDecoder
from .recipe_options import MASK_TYPES, PRED_TYPES, builder
from .registry import Recipe, TrainDefaults, register_model
from .targets import CLIPTarget, PixelTarget


@builder("vis_mask_token")
def build_mae(encoder_fn: Callable, img_size: int = 224, mask_ratio: float = 0.75, norm_pix_loss: bool = False,
              decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
              mask_regular: bool = False, vis_mask_ratio: float = 0.0, masking: Masking | None = None,
              **encoder_kwargs) -> MaskedImageModel:
    """MAE: ViT dropping masked tokens, random masking, pixel target, MAE decoder (docs/methods.md §1).

    ``mask_regular`` switches to UM-MAE's uniform masking (one visible patch per 2x2 group, mask ratio
    0.75) with ``vis_mask_ratio`` of the visible patches behind a learned token (the paper's ViT row).
    ``masking`` replaces the masking altogether by any :class:`Masking` (docs/extending.md)."""
    check_decoder(decoder_embed_dim, decoder_depth, decoder_num_heads)
    encoder = encoder_fn(img_size=img_size, vis_mask_token=vis_mask_ratio > 0, **encoder_kwargs)
    target = PixelTarget(encoder.patch_size, norm_pix=norm_pix_loss)
    decoder = MAEDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim,
                         decoder_depth, decoder_num_heads, num_prefix_tokens=encoder.num_prefix_tokens)
    return MaskedImageModel(encoder, masking or _mae_masking(mask_ratio, mask_regular, vis_mask_ratio), target,
                            {"mim": Branch(decoder, PatchLoss("l2", on="masked"))})


def _mae_masking(mask_ratio: float, mask_regular: bool, vis_mask_ratio: float):
    """Random masking, or with ``mask_regular`` UM-MAE's uniform masking (which fixes the ratio at 0.75)."""
    if not mask_regular:
        if vis_mask_ratio:
            raise UsageError("vis_mask_ratio (secondary masking) needs mask_regular (uniform masking)")
        return RandomMasking(mask_ratio)
    if mask_ratio != 0.75:
        raise UsageError(f"uniform masking keeps one patch in four: mask_ratio must be 0.75, got {mask_ratio}")
    return UniformMasking(vis_mask_ratio)


@register_model(tiny=vit.TINY | TINY_DECODER)
def mae_vit_tiny_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_tiny, patch_size=16), **kwargs)


@register_model(tiny=vit.TINY | TINY_DECODER)
def mae_vit_small_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_small, patch_size=16), **kwargs)


@register_model(tiny=vit.TINY | TINY_DECODER)
def mae_vit_base_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_base, patch_size=16), **kwargs)


@register_model(tiny=vit.TINY | TINY_DECODER)
def mae_vit_large_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_large, patch_size=16), **kwargs)


@register_model(tiny=vit.TINY | TINY_DECODER)
def mae_vit_huge_patch14(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_huge, patch_size=14), **kwargs)


def build_masking(mask_type: str, mask_ratio: float, pred_ratio: float = 1.0, num_views: int = 1):
    """``rand`` (MAE) or ``block`` (2x2 groups) masking; with ``num_views`` > 1, DMJD's disjoint views."""
    if mask_type not in MASK_TYPES:
        raise UsageError(f"unknown mask_type {mask_type!r}; choose one of {', '.join(MASK_TYPES)}")
    base = BlockMasking(mask_ratio) if mask_type == "block" else RandomMasking(mask_ratio)
    return DisjointMasking(base, pred_ratio, num_views) if num_views > 1 else base


def build_target(pred_type: str, patch_size: int, norm_pix_loss: bool = False) -> nn.Module:
    """``pixel`` (optionally norm-pix) or DMJD's ``hog`` (108 values per 16x16 patch)."""
    if pred_type not in PRED_TYPES:
        raise UsageError(f"unknown pred_type {pred_type!r}; choose one of {', '.join(PRED_TYPES)}")
    if pred_type == "hog":
        if norm_pix_loss:
            raise UsageError("norm_pix_loss applies to the pixel target, not to HOG")
        return HogTarget(patch_size)
    return PixelTarget(patch_size, norm_pix=norm_pix_loss)


@builder()
def build_dmjd(encoder_fn: Callable, img_size: int = 224, mask_ratio: float = 0.6, mask_type: str = "block",
               pred_ratio: float = 1.0, num_views: int = 2, pred_type: str = "hog", norm_pix_loss: bool = False,
               mim_loss_type: str = "l2", vis_loss_type: str = "smooth_l1", distill: bool = True,
               theta: float = 1.0, decoder_embed_dim: int = 512, decoder_depth: int = 8,
               decoder_num_heads: int = 16, decoder_mlp_ratio: float = 8.0, official_quirks: bool = False,
               **encoder_kwargs) -> Recipe:
    """DMJD (docs/methods.md §2): disjoint views of one crop, an MAE-style decoder for the masked patches and,
    with ``distill``, the visible-distillation branch weighted by ``theta``. With one view and no
    distillation it is the ConvMAE / MaskFeat-style single-view baseline on the same parts.

    ``official_quirks`` reproduces the official code (``official.DMJD_QUIRKS``): the masking ignores
    ``pred_ratio`` (it only scales the LR), the visible branch takes its targets in raster order, and
    ``theta`` is 1. The training defaults: crop scale 0.5 and, with several views, DMJD's LR rule.
    """
    quirks = DMJD_QUIRKS if official_quirks else {}
    check_decoder(decoder_embed_dim, decoder_depth, decoder_num_heads, decoder_mlp_ratio)
    encoder = encoder_fn(img_size=img_size, **encoder_kwargs)
    masking = build_masking(mask_type, mask_ratio, 1.0 if "masking_ignores_pred_ratio" in quirks else pred_ratio,
                            num_views)
    target = build_target(pred_type, encoder.patch_size, norm_pix_loss)
    decoder = MAEDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim, decoder_depth,
                         decoder_num_heads, decoder_mlp_ratio, num_prefix_tokens=encoder.num_prefix_tokens)
    branches = {"mim": Branch(decoder, PatchLoss(mim_loss_type, beta=2.0, on="masked"))}
    if distill:
        order = "raster" if "raster_visible_targets" in quirks else "keep"
        branches["vis"] = Branch(VisibleDistillHead(encoder.embed_dim, target.out_dim(), decoder_embed_dim),
                                 PatchLoss(vis_loss_type, beta=2.0, on="visible", visible_order=order),
                                 1.0 if "theta_is_one" in quirks else theta)
    model = MaskedImageModel(encoder, masking, target, branches)
    return Recipe(model, TrainDefaults(min_crop_scale=0.5,
                                       lr_batch_ratio=pred_ratio / mask_ratio if num_views > 1 else 1.0))


@register_model(quirks=DMJD_QUIRKS, tiny=convvit.TINY | TINY_DECODER)
def dmjd_convvit_base_patch16_hog(**kwargs) -> MaskedImageModel:
    """DMJD ConViT-B with the 8-block decoder (the PRETRAIN.md setting)."""
    return build_dmjd(convvit.convvit_base, **kwargs)


@register_model(quirks=DMJD_QUIRKS, tiny=convvit.TINY | TINY_DECODER)
def dmjd_convvit_base_patch16_dec2_hog(**kwargs) -> MaskedImageModel:
    """DMJD ConViT-B with a 2-block decoder."""
    return build_dmjd(convvit.convvit_base, **{"decoder_depth": 2, **kwargs})


@register_model(quirks=DMJD_QUIRKS, tiny=convvit.TINY | TINY_DECODER)
def dmjd_convvit_large_patch16_hog(**kwargs) -> MaskedImageModel:
    return build_dmjd(convvit.convvit_large, **kwargs)


@register_model(quirks=DMJD_QUIRKS, tiny=vit.TINY | TINY_DECODER)
def dmjd_vit_base_patch16_hog(**kwargs) -> MaskedImageModel:
    """DMJD on a plain ViT-B (the paper's MaskFeat + DMJD row; the official repository has no code for
    it): the same views, heads and HOG target over the MAE encoder, decoder MLP ratio 4."""
    return build_dmjd(partial(vit.vit_base, patch_size=16), **{"decoder_mlp_ratio": 4.0, **kwargs})


@register_model(tiny=convvit.TINY | TINY_DECODER)
def convmae_convvit_base_patch16(**kwargs) -> Recipe:
    """ConvMAE baseline: ConViT-B (MLP ratios 4/4/4), one randomly masked view at 75%, pixel target,
    MAE decoder, no distillation."""
    defaults = {"mask_ratio": 0.75, "mask_type": "rand", "num_views": 1, "pred_type": "pixel", "distill": False,
                "decoder_mlp_ratio": 4.0, "mlp_ratios": (4, 4, 4)}
    return Recipe(build_dmjd(convvit.convvit_base, **{**defaults, **kwargs}).model)


@builder("masked_tokens")
def build_maskfeat(encoder_fn: Callable, img_size: int = 224, mask_ratio: float = 0.4, mask_type: str = "block",
                   official_quirks: bool = False, **encoder_kwargs) -> Recipe:
    """MaskFeat on images: a ViT that encodes every patch, masked ones replaced by a learned mask token;
    a linear head predicts MaskFeat's HOG (Sobel, 9 bins, 8x8 cells, L2 per cell; 108 per 16x16 patch)
    of the masked patches, l2 loss. The MaskFeat code is not part of the three papers' repositories, so
    this is our composition; masking here is our 2x2-block masking (MaskFeat uses BEiT-style blocks).

    ``official_quirks`` (``official.MASKFEAT_QUIRKS``) computes the HOG on the normalized floats as SlowFast
    does, where rounding decides the bin of gradients on the 0/180-degree boundary; by default it runs on the
    exact 0-255 pixels. The training default: crop scale 0.5."""
    encoder = encoder_fn(img_size=img_size, masked_tokens="token", **encoder_kwargs)
    target = MaskFeatHogTarget(encoder.patch_size, from_uint8=not official_quirks)
    head = Branch(LinearHead(encoder.embed_dim, target.out_dim()), PatchLoss("l2", on="masked"))
    model = MaskedImageModel(encoder, build_masking(mask_type, mask_ratio), target, {"mim": head})
    return Recipe(model, TrainDefaults(min_crop_scale=0.5))


@register_model(quirks=MASKFEAT_QUIRKS, tiny=vit.TINY)
def maskfeat_vit_base_patch16(**kwargs) -> Recipe:
    """MaskFeat ViT-B/16 baseline: HOG target, one 40%-masked view, linear head."""
    return build_maskfeat(partial(vit.vit_base, patch_size=16), **kwargs)


@builder()
def build_deepmim(encoder_fn: Callable, img_size: int = 224, mask_ratio: float = 0.75, clip_path: str | None = None,
                  teacher_path: str | None = None, norm_pix_loss: bool = False, ds_layers: Sequence[int] | None = None,
                  decoder_embed_dim: int = 512, decoder_depth: int = 4, decoder_num_heads: int = 16,
                  **encoder_kwargs) -> MaskedImageModel:
    """DeepMIM (docs/methods.md §3): MAE's encoder and masking, one independent MAE decoder per tap
    (``ds_layers``, default blocks 6/8/10 of 12 and the final output, scaled to the depth), each with its
    own loss of weight 1. With ``clip_path`` the target is a frozen CLIP teacher's final tokens and the
    loss 2 - 2 cos; with ``teacher_path`` (a pretraining checkpoint of an encoder of the student's architecture,
    ``models.encoder_teacher``) that encoder's final tokens, the same loss; with neither the MAE pixel target
    (``norm_pix_loss``) and the MAE loss. The official
    DeepMIM oddities (an unused ``--norm_pix_loss``, a hard-coded resume path) do not touch the arithmetic,
    so it has no quirks; its checkpoints' one shared ``decoder_pos_embed`` is read into every decoder."""
    check_decoder(decoder_embed_dim, decoder_depth, decoder_num_heads)
    encoder = encoder_fn(img_size=img_size, **encoder_kwargs)
    if clip_path and teacher_path:
        raise UsageError("DeepMIM takes one frozen teacher: pass --clip_path or --model_kwargs teacher_path=..., "
                         "not both")
    if clip_path:
        target, loss = CLIPTarget(load_clip_teacher(clip_path)), PatchLoss("cosine", on="masked")
    elif teacher_path:
        teacher = load_encoder_teacher(teacher_path, encoder_fn(img_size=img_size, **encoder_kwargs))
        target, loss = teacher, PatchLoss("cosine", on="masked")
    else:
        target, loss = PixelTarget(encoder.patch_size, norm_pix=norm_pix_loss), PatchLoss("l2", on="masked")

    def make_decoder() -> MAEDecoder:
        return MAEDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim, decoder_depth,
                          decoder_num_heads, num_prefix_tokens=encoder.num_prefix_tokens)

    layers = default_ds_layers(encoder.depth) if ds_layers is None else ds_layers
    heads = deep_supervision_heads(make_decoder, layers, encoder.depth)
    return MaskedImageModel(encoder, RandomMasking(mask_ratio), target,
                            {name: Branch(head, loss) for name, head in heads.items()},
                            checkpoint_filters=[share_decoder_pos_embed])


def _tiny_deepmim_clip(folder: Path) -> dict:
    """Tiny DeepMIM-CLIP: patch 16 at 64 px, so that a random 2-layer CLIP teacher (written into ``folder``) has
    the student's 4x4 grid."""
    clip = save_random_clip(folder / "tiny_clip.pt", width=64, layers=2, patch_size=16, grid_size=4, output_dim=24)
    return vit.TINY | TINY_DECODER | {"img_size": 64, "patch_size": 16, "clip_path": str(clip)}


@register_model(tiny=_tiny_deepmim_clip)
def deepmim_vit_base_patch16_clip(clip_path: str | None = None, **kwargs) -> MaskedImageModel:
    """DeepMIM-CLIP ViT-B/16: taps after blocks 6, 8, 10 and 12, CLIP ViT-B/16 teacher (``--clip_path``)."""
    if not clip_path:
        raise UsageError("deepmim_vit_base_patch16_clip needs a CLIP checkpoint: pass --clip_path")
    return build_deepmim(partial(vit.vit_base, patch_size=16), clip_path=clip_path, **kwargs)


@register_model(tiny=vit.TINY | TINY_DECODER)
def deepmim_vit_base_patch16(**kwargs) -> MaskedImageModel:
    """DeepMIM-MAE ViT-B/16: the same deep supervision with the MAE pixel target (norm-pix by flag)."""
    return build_deepmim(partial(vit.vit_base, patch_size=16), **kwargs)


@builder("masked_tokens", "vis_mask_token")
def build_ummae(encoder_fn: Callable, img_size: int = 256, mask_ratio: float = 0.75, mask_regular: bool = True,
                vis_mask_ratio: float = 0.25, norm_pix_loss: bool = False, decoder_embed_dim: int = 512,
                decoder_depth: int = 2, decoder_num_heads: int = 16, official_quirks: bool = False,
                **encoder_kwargs) -> MaskedImageModel:
    """UM-MAE on a pyramid encoder (docs/methods.md §4): uniform masking, the visible quarter packed into a compact
    grid, secondary masking by ``vis_mask_ratio``, the pixel-shuffle decoder, MAE's pixel loss on the 75%.

    ``official_quirks`` (``official.UMMAE_QUIRKS``) gives the decoder's visible tokens the official
    (raster-order) positions, which mostly belong to other patches (§4.5); by default each token gets its
    own patch's position."""
    if not mask_regular:
        raise UsageError("UM-MAE on a pyramid encoder needs uniform masking (--mask_regular); random masking "
                         "with every token encoded is SimMIM (simmim_* recipes)")
    masking = _mae_masking(mask_ratio, True, vis_mask_ratio)
    check_decoder(decoder_embed_dim, decoder_depth, decoder_num_heads)
    encoder = encoder_fn(img_size=img_size, masked_tokens="compact", vis_mask_token=vis_mask_ratio > 0,
                         **encoder_kwargs)
    # the compact grid must halve through every merge (a Swin checks this itself, a PVT classifier need not)
    check_pyramid_size(encoder.img_size, encoder.patch_size, encoder.cell_size, len(encoder.feature_info), True)
    target = PixelTarget(encoder.patch_size, norm_pix=norm_pix_loss)
    decoder = UMDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim, decoder_depth,
                        decoder_num_heads, raster_positions=official_quirks)
    return MaskedImageModel(encoder, masking, target, {"mim": Branch(decoder, PatchLoss("l2", on="masked"))})


@builder("masked_tokens")
def build_simmim(encoder_fn: Callable, img_size: int = 256, mask_ratio: float = 0.75, mask_type: str = "rand",
                 norm_pix_loss: bool = False, **encoder_kwargs) -> MaskedImageModel:
    """SimMIM as UM-MAE compares to it (docs/methods.md §4.8): a learned mask token for every masked patch inside
    the encoder, all tokens encoded, a linear + pixel-shuffle head, L1 on the masked patches; random 75%
    masking at 16 px (``mask_type="block", mask_ratio=0.6`` gives SimMIM's own 32-px blocks at 0.6)."""
    encoder = encoder_fn(img_size=img_size, masked_tokens="token", **encoder_kwargs)
    target = PixelTarget(encoder.patch_size, norm_pix=norm_pix_loss)
    upscale = encoder.feature_info[-1].reduction // encoder.patch_size
    if upscale == 1:  # ViT: one token per patch already (SimMIM's stride-16 head)
        head = LinearHead(encoder.embed_dim, target.out_dim())
    else:  # pyramid encoders end at stride 32: PixelShuffle(2) gives one prediction per 16-px patch
        head = SimMIMHead(encoder.embed_dim, target.out_dim(), upscale=upscale)
    return MaskedImageModel(encoder, build_masking(mask_type, mask_ratio), target,
                            {"mim": Branch(head, PatchLoss("l1", on="masked"))})


@register_model(quirks=UMMAE_QUIRKS, tiny=swin.TINY | TINY_DECODER)
def ummae_swin_tiny_256(**kwargs) -> MaskedImageModel:
    """UM-MAE Swin-T at 256 px: window 8 on the compact grid, decoder 512 x 2."""
    return build_ummae(swin.swin_tiny, **kwargs)


@register_model(quirks=UMMAE_QUIRKS, tiny=swin.TINY | TINY_DECODER)
def ummae_swin_large_256(**kwargs) -> MaskedImageModel:
    """UM-MAE Swin-L at 256 px: window 8 on the compact grid, decoder 512 x 8."""
    return build_ummae(swin.swin_large, **{"decoder_depth": 8, **kwargs})


@register_model(quirks=UMMAE_QUIRKS, tiny=pvt.TINY | TINY_DECODER)
def ummae_pvt_small_256(**kwargs) -> MaskedImageModel:
    """UM-MAE PVT-S at 256 px: spatial reduction 4/2/1/1 on the compact grid, decoder 512 x 2."""
    return build_ummae(pvt.pvt_small, **kwargs)


@register_model(tiny=swin.TINY)
def simmim_swin_tiny_256(**kwargs) -> MaskedImageModel:
    """SimMIM Swin-T at 256 px (UM-MAE's baseline): the full 64x64 grid, window 16."""
    return build_simmim(partial(swin.swin_tiny, window_size=16, vis_mask_token=False), **kwargs)


@register_model(tiny=pvt.TINY)
def simmim_pvt_small_256(**kwargs) -> MaskedImageModel:
    """SimMIM PVT-S at 256 px (UM-MAE's baseline): the full grid, spatial reduction 8/4/2/1."""
    return build_simmim(pvt.pvt_small, **kwargs)


@register_model(tiny=vit.TINY)
def simmim_vit_base_patch16(**kwargs) -> MaskedImageModel:
    """SimMIM ViT-B/16 at 224 px: SimMIM's own 32-px blocks at 0.6, a linear head per patch (its 1x1 conv +
    PixelShuffle(16) on a stride-16 map)."""
    defaults = {"img_size": 224, "mask_type": "block", "mask_ratio": 0.6}
    return build_simmim(partial(vit.vit_base, patch_size=16), **{**defaults, **kwargs})


@builder("final_norm")
def build_classifier(encoder_fn: Callable, img_size: int = 224, num_classes: int = 1000, global_pool: bool = True,
                     drop_path_rate: float = 0.1, **encoder_kwargs) -> Classifier:
    """Fine-tune / linear-probe model: every encoder gets the image size, the drop-path rate and, under global
    pooling, no final norm; the variants give encoders with a position table a learnable one."""
    encoder = encoder_fn(img_size=img_size, drop_path_rate=drop_path_rate, final_norm=not global_pool,
                         **encoder_kwargs)
    return Classifier(encoder, num_classes, global_pool)


@register_model(task="classify", tiny=vit.TINY)
def vit_tiny_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_tiny, patch_size=16, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=vit.TINY)
def vit_small_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_small, patch_size=16, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=vit.TINY)
def vit_base_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_base, patch_size=16, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=vit.TINY)
def vit_large_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_large, patch_size=16, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=vit.TINY)
def vit_huge_patch14(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_huge, patch_size=14, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=convvit.TINY)
def convvit_base_patch16(**kwargs) -> Classifier:
    """ConViT-B for fine-tuning / linear probing: no multi-scale fusion, global pooling (docs/methods.md §2.7)."""
    return build_classifier(partial(convvit.convvit_base, fusion=False, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=convvit.TINY)
def convvit_large_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(convvit.convvit_large, fusion=False, learnable_pos_embed=True), **kwargs)


@register_model(task="classify", tiny=swin.TINY)
def swin_tiny_256(**kwargs) -> Classifier:
    """Swin-T for fine-tuning at 256 px (UM-MAE FINETUNE.md): the full grid, window 16."""
    return build_classifier(partial(swin.swin_tiny, masked_tokens="none", window_size=16, vis_mask_token=False),
                            **{"img_size": 256, **kwargs})


@register_model(task="classify", tiny=swin.TINY)
def swin_large_256(**kwargs) -> Classifier:
    return build_classifier(partial(swin.swin_large, masked_tokens="none", window_size=16, vis_mask_token=False),
                            **{"img_size": 256, **kwargs})


@register_model(task="classify", tiny=pvt.TINY)
def pvt_small_256(**kwargs) -> Classifier:
    """PVT-S for fine-tuning at 256 px: spatial reduction 8/4/2/1, learnable position table."""
    return build_classifier(partial(pvt.pvt_small, learnable_pos_embed=True), **{"img_size": 256, **kwargs})
