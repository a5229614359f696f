"""Named recipes: pretraining models pick one value on every axis (encoder, masking, target, heads);
classification models wrap an encoder for fine-tuning and linear probing."""
from functools import partial
from typing import Callable

from .classifier import Classifier
from .encoders import vit
from .heads import MAEDecoder
from .masking import RandomMasking
from .mim import MaskedImageModel
from .registry import register_model
from .targets import PixelTarget


def build_mae(encoder_fn: Callable, img_size: int = 224, mask_ratio: float = 0.75, norm_pix_loss: bool = False,
              decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
              **encoder_kwargs) -> MaskedImageModel:
    """MAE: ViT dropping masked tokens, random masking, pixel target, MAE decoder (METHODS.md §1)."""
    encoder = encoder_fn(img_size=img_size, **encoder_kwargs)
    target = PixelTarget(encoder.patch_size, norm_pix=norm_pix_loss)
    decoder = MAEDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), decoder_embed_dim,
                         decoder_depth, decoder_num_heads)
    return MaskedImageModel(encoder, RandomMasking(mask_ratio), target, {"mim": decoder})


@register_model
def mae_vit_tiny_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_tiny, patch_size=16), **kwargs)


@register_model
def mae_vit_small_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_small, patch_size=16), **kwargs)


@register_model
def mae_vit_base_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_base, patch_size=16), **kwargs)


@register_model
def mae_vit_large_patch16(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_large, patch_size=16), **kwargs)


@register_model
def mae_vit_huge_patch14(**kwargs) -> MaskedImageModel:
    return build_mae(partial(vit.vit_huge, patch_size=14), **kwargs)


def build_classifier(encoder_fn: Callable, img_size: int = 224, num_classes: int = 1000, global_pool: bool = True,
                     drop_path_rate: float = 0.1, **encoder_kwargs) -> Classifier:
    """Fine-tune / linear-probe model: learnable position table, no final norm under global pooling."""
    encoder = encoder_fn(img_size=img_size, drop_path_rate=drop_path_rate, learnable_pos_embed=True,
                         final_norm=not global_pool, **encoder_kwargs)
    return Classifier(encoder, num_classes, global_pool)


@register_model
def vit_tiny_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_tiny, patch_size=16), **kwargs)


@register_model
def vit_small_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_small, patch_size=16), **kwargs)


@register_model
def vit_base_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_base, patch_size=16), **kwargs)


@register_model
def vit_large_patch16(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_large, patch_size=16), **kwargs)


@register_model
def vit_huge_patch14(**kwargs) -> Classifier:
    return build_classifier(partial(vit.vit_huge, patch_size=14), **kwargs)
