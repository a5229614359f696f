"""ConvMAE's hybrid "ConViT" encoder (docs/methods.md §2.4, §2.7): two convolutional stages, then ViT blocks.

Stages at 224 px: ``patch_embed1`` (4x4 conv) -> ``blocks1`` (CBlocks on 56x56) -> ``patch_embed2`` (2x2)
-> ``blocks2`` (28x28) -> ``patch_embed3`` (2x2, 14x14) -> flatten -> ``patch_embed4`` (Linear) + fixed
sin-cos ``pos_embed`` (no cls token) -> keep the visible tokens -> ``blocks3`` (timm ViT blocks)
-> + multi-scale fusion (``stage{1,2}_output_decode``, pretraining only) -> ``norm``.

Under masking the convolutional stages see the whole image, but every CBlock multiplies its features by
the visibility map (1 = visible, the 14x14 mask nearest-upsampled to the stage's resolution) before the
depthwise 5x5 conv, so nothing from a masked 16x16 patch reaches a visible one. DMJD's V views of an image
see disjoint patches, so the convolutional stages run once per image for all of them (``views``), with one
masked depthwise conv per view; each view's visible tokens are bit for bit those of a pass of its own.

State-dict keys are those of the official DMJD/ConvMAE models (``models_dmjd.py`` encoder part,
``models_convit.py`` without the fusion convs).
"""
from functools import partial, reduce
from math import prod
from typing import Sequence

import torch
from timm.layers import DropPath, to_2tuple
from timm.models.vision_transformer import Block
from torch import nn

from base.errors import UsageError

from ..init import init_conv_as_linear, init_linear_and_norm
from ..interfaces import EncoderArgs, EncoderOutput, FeatureInfo, MaskedTokens, repeat_views
from ..options import check_heads, check_positive_ints, check_positive_numbers, check_sincos_width
from ..pos_embed import resize_pos_embed, sincos_2d
from .common import GradCheckpointing, feature_indices, patch_visibility, run_blocks, tokens_to_map


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (applied channels-last); keys ``weight``/``bias``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvPatchEmbed(nn.Module):
    """conv (kernel = stride = patch) -> channel LN (eps 1e-5) -> GELU; NCHW in, NCHW out."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = ChannelLayerNorm(embed_dim, eps=1e-5)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


class CMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CBlock(nn.Module):
    """Convolutional block: x + DropPath(conv2(DW5x5(vis * conv1(LN(x))))), then x + DropPath(CMlp(LN(x)))."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, eps=1e-5)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = ChannelLayerNorm(dim, eps=1e-5)
        self.mlp = CMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, vis: torch.Tensor | None = None) -> torch.Tensor:
        """x: [N, C, h, w]; vis: None (no masking), [N, 1, h, w] the visibility of x's rows (1 = visible), or
        [V, N, 1, h, w] the visibilities of V views of x's images that see pairwise disjoint positions.

        With V views, x at a position visible in view v stands for view v's map there: the depthwise conv,
        the only op that mixes positions, runs per view on that view's visible positions, and each position
        keeps the result of the view it is visible in. Every other op is per position, so a view's visible
        positions come out exactly as from a block run on that view alone; the positions visible in no view
        take values nothing visible ever reads."""
        y = self.conv1(self.norm1(x))
        if vis is None:
            a = self.attn(y)
        elif vis.dim() == 4:
            a = self.attn(y * vis.to(y.dtype))
        else:
            vis = vis.to(y.dtype)
            per_view = self.attn((y * vis).flatten(0, 1)).unflatten(0, vis.shape[:2]) * vis
            # added view by view rather than .sum(0), which returns a contiguous map: the additions keep y's
            # memory layout (channels-last here), so conv2 computes exactly as in a per-view pass
            a = reduce(torch.add, per_view.unbind(0))
        x = x + self.drop_path(self.conv2(a))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def gather_visible(tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """tokens [M, L, C] in raster order, ids_keep [V * M, K] -> [V * M, K, C]: row v * M + m takes its tokens
    from row m (V = 1: row by row; V > 1: the views of M images, without copying the images' tokens)."""
    m, length, c = tokens.shape
    index = ids_keep.reshape(-1, m, ids_keep.shape[1], 1).expand(-1, -1, -1, c)
    return torch.gather(tokens.expand(index.shape[0], m, length, c), 2, index).flatten(0, 1)


class ConvViT(GradCheckpointing, nn.Module):
    """ConvMAE ConViT for masked pretraining (``ids_keep`` given, ``fusion``) and classification.

    Pretraining keeps the sin-cos position table frozen; fine-tuning makes it learnable
    (``learnable_pos_embed``, trunc-normal 0.02 like the official fine-tune model, which the checkpoint
    then overwrites), drops the fusion convs (``fusion=False``) and, under global pooling, the final norm.
    Stage 1 of ``set_grad_checkpointing("stage1")`` is ``blocks1`` (at H/4 x W/4, most of the activations).
    """

    num_prefix_tokens = 0
    encoder_args = EncoderArgs(masked_tokens=(MaskedTokens.DROP,))  # no secondary masking

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_sizes: Sequence[int] = (4, 2, 2),
                 in_chans: int = 3, embed_dims: Sequence[int] = (256, 384, 768), depths: Sequence[int] = (2, 2, 11),
                 num_heads: int = 12, mlp_ratios: Sequence[float] = (8, 8, 4), drop_path_rate: float = 0.0,
                 learnable_pos_embed: bool = False, final_norm: bool = True, fusion: bool = True,
                 masked_tokens: str = "drop", vis_mask_token: bool = False):
        super().__init__()
        self.masked_tokens = self.encoder_args.check("ConvViT", masked_tokens, vis_mask_token, learnable_pos_embed)
        if not (len(patch_sizes) == len(embed_dims) == len(depths) == len(mlp_ratios) == 3):
            raise ValueError("patch_sizes, embed_dims, depths and mlp_ratios need one entry per stage (3)")
        check_positive_ints(patch_sizes=patch_sizes, embed_dims=embed_dims, num_heads=num_heads)
        check_positive_numbers(mlp_ratios=mlp_ratios)
        check_heads(f"num_heads={num_heads}", num_heads, f"embed_dims[2]={embed_dims[2]}", embed_dims[2])
        if not learnable_pos_embed:
            check_sincos_width("embed_dims[2]", embed_dims[2])
        img_size = to_2tuple(img_size)
        self.patch_sizes = tuple(patch_sizes)
        self.patch_size = prod(self.patch_sizes)
        if img_size[0] % self.patch_size or img_size[1] % self.patch_size:
            raise UsageError(f"img_size {img_size} is not divisible by the total patch size {self.patch_size}: pass "
                             f"an --input_size that is a multiple of {self.patch_size}")
        self.img_size = img_size
        self.grid_size = (img_size[0] // self.patch_size, img_size[1] // self.patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.embed_dims = tuple(embed_dims)
        c1, c2, c3 = self.embed_dims
        self.embed_dim = c3
        self.learnable_pos_embed = learnable_pos_embed

        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear over all stages
        d1, d2, d3 = depths
        # DropPath in the convolution stages draws per row, so training with it gives every view its own rows
        self.conv_drop_path = any(rate > 0 for rate in dpr[:d1 + d2])

        self.patch_embed1 = ConvPatchEmbed(patch_sizes[0], in_chans, c1)
        self.patch_embed2 = ConvPatchEmbed(patch_sizes[1], c1, c2)
        self.patch_embed3 = ConvPatchEmbed(patch_sizes[2], c2, c3)
        self.patch_embed4 = nn.Linear(c3, c3)
        if fusion:
            # the stage maps downsampled to the token grid (kernel = stride = the remaining patch size)
            s1, s2 = patch_sizes[1] * patch_sizes[2], patch_sizes[2]
            self.stage1_output_decode = nn.Conv2d(c1, c3, s1, stride=s1)
            self.stage2_output_decode = nn.Conv2d(c2, c3, s2, stride=s2)
        self.fusion = fusion
        # a Parameter (not a buffer) so the key and the frozen flag match the official checkpoints
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, c3), requires_grad=learnable_pos_embed)

        self.blocks1 = nn.ModuleList([CBlock(c1, mlp_ratios[0], dpr[i]) for i in range(d1)])
        self.blocks2 = nn.ModuleList([CBlock(c2, mlp_ratios[1], dpr[d1 + i]) for i in range(d2)])
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks3 = nn.ModuleList([
            Block(c3, num_heads, mlp_ratios[2], qkv_bias=True, drop_path=dpr[d1 + d2 + i], norm_layer=norm_layer)
            for i in range(d3)])
        self.depth = d3
        # forward_features levels: the two convolutional stages, then every transformer block
        self.feature_info = [FeatureInfo(c1, patch_sizes[0]), FeatureInfo(c2, patch_sizes[0] * patch_sizes[1])] + \
            [FeatureInfo(c3, self.patch_size)] * d3
        self.norm = norm_layer(c3) if final_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.learnable_pos_embed:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed.data.copy_(sincos_2d(self.embed_dim, self.grid_size, cls_token=False).unsqueeze(0))
        init_conv_as_linear(self.patch_embed3.proj)
        self.apply(init_linear_and_norm)  # Linear + LN only: the other convs keep PyTorch's default init

    def layer_groups(self) -> tuple[str, str]:
        """(stem, blocks) regexes over this encoder's parameter names for layer-wise LR decay: the stem
        (everything before ``blocks3``) gets layer id 0, ``blocks3.k`` gets k + 1 (the group), the rest
        (``norm``) the last id."""
        return r"^(?:pos_embed|patch_embed\d|blocks1|blocks2|stage\d_output_decode)", r"^blocks3\.(\d+)"

    def conv_stages(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None, views: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The convolutional stages: -> stage-1 map [M, C1, H/4, W/4], stage-2 map [M, C2, H/8, W/8] and the
        positioned tokens [M, L, C3] in raster order. With ``ids_keep`` every CBlock masks its depthwise
        conv input by the visibility of its stage.

        imgs [N, C, H, W] and ids_keep [V * N, K] with ``views`` = V > 1 pairwise disjoint views: the stages
        run once per image (M = N; each view's visible tokens are exact, :class:`CBlock`), or, while DropPath
        is active in them, once per view (M = V * N). With ``views`` = 1, M = N, one row per row of ids_keep."""
        stage1 = self.patch_embed1(imgs)
        if views > 1 and self.training and self.conv_drop_path:
            stage1, views = repeat_views(stage1, views), 1
        vis1 = vis2 = None
        if ids_keep is not None:
            k1, k2 = self.patch_sizes[1] * self.patch_sizes[2], self.patch_sizes[2]
            vis1 = patch_visibility(ids_keep, self.grid_size, k1).unsqueeze(1).to(imgs.dtype)
            vis2 = patch_visibility(ids_keep, self.grid_size, k2).unsqueeze(1).to(imgs.dtype)
            if views > 1:
                vis1, vis2 = vis1.unflatten(0, (views, -1)), vis2.unflatten(0, (views, -1))
                torch._assert_async((vis2.sum(0) <= 1).all(), "the views share the convolution stages only when "
                                    "no patch is visible in two of them (Masks.disjoint_views)")
        elif views > 1:
            raise ValueError("views > 1 needs ids_keep with one row per view")
        stage1, _ = run_blocks(self.blocks1, stage1, step=lambda block, x: block(x, vis1),
                               checkpointed=self.checkpointed_blocks(len(self.blocks1), len(self.blocks1)))
        stage2, _ = run_blocks(self.blocks2, self.patch_embed2(stage1), step=lambda block, x: block(x, vis2),
                               checkpointed=self.checkpointed_blocks(0, len(self.blocks2)))
        x = self.patch_embed3(stage2)
        grid = tuple(x.shape[-2:])
        pos_embed = self.pos_embed
        if grid != self.grid_size:  # an unmasked input of another size (dense tasks): the table resized to it
            pos_embed = resize_pos_embed(pos_embed, grid, 0, self.grid_size)
        return stage1, stage2, self.patch_embed4(x.flatten(2).transpose(1, 2)) + pos_embed

    def forward(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None,
                return_layers: Sequence[int] = (), secondary: torch.Tensor | None = None,
                views: int = 1) -> EncoderOutput:
        """imgs: [N, C, H, W]; ids_keep: [B, K] visible patch indices on the token grid (None keeps all L),
        B = N, or B = V * N for ``views`` = V > 1 pairwise disjoint views of each image (``Encoder.forward``:
        the convolution stages then run once per image).

        patches: [B, K, C3] final-normed, in ids_keep order (no prefix tokens); layers: un-normed blocks3
        outputs (before fusion). ConViT has no secondary masking.
        """
        if secondary is not None:
            raise ValueError("ConViT has no secondary masking (vis_mask_token)")
        stage1, stage2, x = self.conv_stages(imgs, ids_keep, views)
        if self.fusion:
            stage1 = self.stage1_output_decode(stage1).flatten(2).transpose(1, 2)
            stage2 = self.stage2_output_decode(stage2).flatten(2).transpose(1, 2)
        if ids_keep is not None:
            x = gather_visible(x, ids_keep)
            if self.fusion:
                stage1, stage2 = gather_visible(stage1, ids_keep), gather_visible(stage2, ids_keep)
        grid = self.grid_size if ids_keep is None else None

        def split(tokens: torch.Tensor) -> EncoderOutput:
            return EncoderOutput(prefix=tokens[:, :0], patches=tokens, grid=grid)

        x, layers = run_blocks(self.blocks3, x, return_layers, read=split,
                               checkpointed=self.checkpointed_blocks(0, self.depth))
        if self.fusion:
            x = x + stage1 + stage2
        out = split(self.norm(x))
        out.layers = layers
        return out

    def forward_features(self, imgs: torch.Tensor, indices: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Unmasked feature levels ``indices`` (from 0; default all): 0 the stage-1 map [N, C1, H/4, W/4],
        1 the stage-2 map [N, C2, H/8, W/8], 2 + i the un-normed output of transformer block i (from 0)
        [N, C3, H/16, W/16]."""
        chosen = feature_indices(indices, len(self.feature_info))
        stage1, stage2, x = self.conv_stages(imgs)
        grid = (imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size)
        taps = [i - 1 for i in chosen if i >= 2]  # block numbers from 1
        count = max(taps, default=0)
        _, layers = run_blocks(self.blocks3[:count], x, taps, read=lambda t: tokens_to_map(t, grid),
                               checkpointed=self.checkpointed_blocks(0, count))
        return [(stage1, stage2)[i] if i < 2 else layers[i - 1] for i in chosen]


# the tiny configuration of this family (``models.tiny_kwargs``: tests, benchmarks' and the docs' checks)
TINY = dict(img_size=64, embed_dims=(16, 24, 32), depths=(1, 1, 2), num_heads=2)


def convvit_base(**kwargs) -> ConvViT:
    return ConvViT(**{"embed_dims": (256, 384, 768), "depths": (2, 2, 11), "num_heads": 12,
                      "mlp_ratios": (8, 8, 4), **kwargs})


def convvit_large(**kwargs) -> ConvViT:
    return ConvViT(**{"embed_dims": (384, 768, 1024), "depths": (2, 2, 23), "num_heads": 16,
                      "mlp_ratios": (8, 8, 4), **kwargs})
