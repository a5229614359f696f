"""Vision Transformer encoder that consumes an MAE mask by dropping the masked tokens.

State-dict keys are those of the official MAE ``models_mae.py`` encoder (``cls_token``, ``pos_embed``,
``patch_embed.proj.*``, ``blocks.{i}.*``, ``norm.*``); the blocks are timm's (fused SDPA attention).
"""
import math
from functools import partial
from typing import Sequence

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_rel import RelPosBias
from timm.models.vision_transformer import Block
from timm.models.vision_transformer_relpos import RelPosBlock
from torch import nn

from base.errors import UsageError

from ..init import init_conv_as_linear, init_linear_and_norm, init_token
from ..interfaces import EncoderArgs, EncoderOutput, FeatureInfo, MaskedTokens, repeat_views
from ..options import check_counts, check_heads, check_positive_ints, check_positive_numbers, check_sincos_width
from ..pos_embed import resize_pos_embed, sincos_2d
from .common import GradCheckpointing, feature_indices, patch_visibility, run_blocks, tokens_to_map


class VisionTransformer(GradCheckpointing, nn.Module):
    """ViT with a cls token and a 2-D sin-cos position embedding.

    Pretraining keeps the position table frozen; fine-tuning makes it learnable (``learnable_pos_embed``,
    as the official fine-tune model) and, under global pooling, drops the final norm (``final_norm``).
    For dense fine-tuning DeepMIM's segmentation backbone adds a relative position bias per block
    (``rel_pos_bias``, tables initialized at zero) and layer scale (``init_values``, 1.0 there); both are
    new parameters that pretraining checkpoints do not hold.

    ``set_grad_checkpointing("stage1")`` checkpoints the first quarter of the blocks (``stage1_depth``, 3 of
    ViT-B's 12), the share of a four-stage pyramid's first stage; a ViT's blocks all hold the same activations.
    """

    num_prefix_tokens = 1
    encoder_args = EncoderArgs(masked_tokens=(MaskedTokens.DROP, MaskedTokens.TOKEN),
                               secondary=(MaskedTokens.DROP, MaskedTokens.TOKEN))

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0,
                 learnable_pos_embed: bool = False, final_norm: bool = True, masked_tokens: str = "drop",
                 vis_mask_token: bool = False, rel_pos_bias: bool = False, init_values: float | None = None):
        super().__init__()
        masked_tokens = self.encoder_args.check("VisionTransformer", masked_tokens, vis_mask_token,
                                                learnable_pos_embed)
        check_positive_ints(patch_size=patch_size, embed_dim=embed_dim, num_heads=num_heads)
        check_counts(depth=depth)
        check_positive_numbers(mlp_ratio=mlp_ratio)
        check_heads(f"num_heads={num_heads}", num_heads, f"embed_dim={embed_dim}", embed_dim)
        check_sincos_width("embed_dim", embed_dim)  # the position table, learnable or not, starts as sin-cos
        self.masked_tokens = masked_tokens
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        # any input whose sides are multiples of the patch (dense tasks); masking needs the built grid
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.grid_size = self.patch_embed.grid_size
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # a Parameter (not a buffer) so the key and the frozen flag match the official checkpoints
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches + 1, embed_dim),
                                      requires_grad=learnable_pos_embed)
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, as timm
        if rel_pos_bias:  # BEiT-style table per block, 3 extra entries for the cls token (timm's RelPosBias)
            block = partial(RelPosBlock, rel_pos_cls=partial(RelPosBias, window_size=self.grid_size, prefix_tokens=1))
        else:
            block = Block
        self.blocks = nn.ModuleList([
            block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, init_values=init_values, drop_path=dpr[i],
                  norm_layer=norm_layer) for i in range(depth)])
        self.depth = depth
        self.stage1_depth = math.ceil(depth / 4)
        self.feature_info = [FeatureInfo(embed_dim, patch_size)] * depth  # one level per block
        self.norm = norm_layer(embed_dim) if final_norm else nn.Identity()
        if masked_tokens == "token":
            self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if vis_mask_token:  # UM-MAE's secondary masking
            self.vis_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.pos_embed.data.copy_(sincos_2d(self.embed_dim, self.grid_size, cls_token=True).unsqueeze(0))
        init_conv_as_linear(self.patch_embed.proj)
        init_token(self.cls_token)
        for token in ("mask_token", "vis_mask_token"):
            if hasattr(self, token):
                init_token(getattr(self, token))
        self.apply(init_linear_and_norm)
        for block in self.blocks:  # relative position tables start at zero (no bias), as BEiT's
            if hasattr(block.attn, "rel_pos"):
                nn.init.zeros_(block.attn.rel_pos.relative_position_bias_table)

    def layer_groups(self) -> tuple[str, str]:
        """Regexes over this encoder's parameter names: the stem (layer id 0) and the numbered blocks."""
        return r"^(?:cls_token|pos_embed|patch_embed)", r"^blocks\.(\d+)"

    def pos_embed_for(self, grid: tuple[int, int], masked: bool = False) -> torch.Tensor:
        """The position table [1, 1 + h * w, D] of a (h, w) patch grid: the built one, or it resized bicubically
        (unmasked inputs only). A relative position bias is tied to the built grid: another one is refused."""
        if grid == tuple(self.grid_size):
            return self.pos_embed
        if masked:
            raise ValueError(f"masking needs the built grid {self.grid_size}, got {grid}")
        if any(hasattr(block.attn, "rel_pos") for block in self.blocks):
            raise UsageError(f"this ViT's relative position bias (rel_pos_bias=True) is tied to its {self.grid_size} "
                             f"patch grid, and an input of {grid} patches came: build it at the input size or "
                             "without rel_pos_bias")
        return resize_pos_embed(self.pos_embed, grid, 1, self.grid_size)

    def embed(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None,
              secondary: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding, masking and positions -> [N, 1 + S, D] with the cls token first. Without a mask the
        image may be of another size than the built one: the position table is resized to its grid."""
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        pos_embed = self.pos_embed_for(grid, masked=ids_keep is not None or secondary is not None)
        x = self.patch_embed(imgs)
        if ids_keep is not None and self.masked_tokens == "token":
            visible = patch_visibility(ids_keep, self.grid_size).flatten(1).unsqueeze(-1)
            x = torch.where(visible, x, self.mask_token.to(x.dtype))
        if secondary is not None:
            x = torch.where(secondary.unsqueeze(-1), self.vis_mask_token.to(x.dtype), x)
        x = x + pos_embed[:, 1:]
        if ids_keep is not None and self.masked_tokens == "drop":
            x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None,
                return_layers: Sequence[int] = (), secondary: torch.Tensor | None = None,
                views: int = 1) -> EncoderOutput:
        """imgs: [N, C, H, W]; ids_keep: [N, K] visible patch indices (None keeps all L); secondary: [N, L]
        bool, visible patches whose embedding UM-MAE replaces by ``vis_mask_token`` (positions kept);
        ``views`` > 1: imgs holds each image once for its views (``Encoder.forward``), repeated here.

        ``masked_tokens="drop"`` (MAE) encodes only the K visible tokens, in ids_keep order (``grid`` None);
        ``"token"`` (SimMIM, MaskFeat) replaces the masked patches' embeddings by the learned ``mask_token``
        and encodes all L tokens in raster order. prefix: the cls token [N, 1, D].
        """
        imgs = repeat_views(imgs, views)
        grid = self.grid_size if ids_keep is None or self.masked_tokens == "token" else None

        def split(x: torch.Tensor) -> EncoderOutput:
            return EncoderOutput(prefix=x[:, :1], patches=x[:, 1:], grid=grid)

        x, layers = run_blocks(self.blocks, self.embed(imgs, ids_keep, secondary), return_layers, read=split,
                               checkpointed=self.checkpointed_blocks(self.stage1_depth, self.depth))
        out = split(self.norm(x))
        out.layers = layers
        return out

    def forward_features(self, imgs: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Un-normed outputs of the blocks ``indices`` (from 0; default all) on the whole image, each
        [N, D, H / p, W / p] (the cls token dropped)."""
        chosen = feature_indices(indices, self.depth)
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        _, layers = run_blocks(self.blocks[:chosen[-1] + 1], self.embed(imgs), [i + 1 for i in chosen],
                               read=lambda x: tokens_to_map(x[:, 1:], grid),
                               checkpointed=self.checkpointed_blocks(self.stage1_depth, chosen[-1] + 1))
        return [layers[i + 1] for i in chosen]


# the tiny configuration of this family (``models.tiny_kwargs``: tests, benchmarks' and the docs' checks)
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def vit_tiny(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kwargs})


def vit_small(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs})


def vit_base(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


def vit_large(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs})


def vit_huge(**kwargs) -> VisionTransformer:
    return VisionTransformer(**{"patch_size": 14, "embed_dim": 1280, "depth": 32, "num_heads": 16, **kwargs})
