"""Stand-ins for clones of the official repositories, for the ``--compare-official`` tests (no clone is vendored).

Each stand-in checkout mirrors what ``benchmarks/official.py`` depends on in the real one: the model file's name,
the builder's name (and its aliases), the constructor's keyword arguments with the official defaults (so a
keyword the official constructor does not take is a TypeError, as there), the ``forward`` signature and what it
returns, and the shape contracts of the official losses (DMJD's ``decoder_pred_dim`` against the HOG target's
width, DeepMIM's 512-wide heads against the teacher's, UM-MAE's compact visible grid). They are written like the
forks: timm 0.3.2's ``Block(qk_scale=None)``, ``np.float``, the checkout's own ``util/`` (no ``__init__.py``).

What they compute is a tiny model of the right interface (one patch embedding, timm Blocks, linear heads) at the
size of our recipes' tiny configurations, not the official architecture; the builders fix the tiny widths where
the official ones fix the full ones.
"""
import textwrap
from pathlib import Path

UTIL_POS_EMBED = '''
def patches_per_side(img_size, patch):
    return img_size // patch
'''

# shared by every stand-in file: timm 0.3.2's Block call, np.float, the checkout's own util/
HEADER = '''
from functools import partial

import numpy as np
import torch
from torch import nn
from timm.models.vision_transformer import Block
from util.pos_embed import patches_per_side


def patchify(imgs, p):
    """[N, C, H, W] -> [N, (H/p)(W/p), p*p*C]"""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def blocks(dim, heads, depth, mlp_ratio, norm_layer):
    return nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, qk_scale=None, norm_layer=norm_layer)
                           for _ in range(depth)])


def random_keep(n, length, mask_ratio):
    """(indices kept [n, K], mask [n, length] with 1 = removed)"""
    keep = torch.rand(n, length).argsort(dim=1)[:, :int(length * (1 - mask_ratio))]
    mask = torch.ones(n, length)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


def gather_tokens(x, keep):
    return torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
'''

# facebookresearch/mae models_mae.py: MaskedAutoencoderViT(..., norm_pix_loss=False), forward(imgs, mask_ratio)
MAE = '''
class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3,
                 embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=nn.LayerNorm, norm_pix_loss=False):
        super().__init__()
        self.patch, self.side = patch_size, patches_per_side(img_size, patch_size)
        self.embed = nn.Linear(in_chans * patch_size ** 2, embed_dim)
        self.blocks = blocks(embed_dim, num_heads, depth, mlp_ratio, norm_layer)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_blocks = blocks(decoder_embed_dim, decoder_num_heads, decoder_depth, mlp_ratio, norm_layer)
        self.decoder_pred = nn.Linear(decoder_embed_dim, in_chans * patch_size ** 2)
        self.norm_pix_loss = norm_pix_loss
        self.register_buffer("scale", torch.tensor(np.float(1.0)))

    def forward(self, imgs, mask_ratio=0.75):
        target = patchify(imgs, self.patch)
        keep, mask = random_keep(imgs.shape[0], self.side ** 2, mask_ratio)
        latent = self.blocks(self.embed(gather_tokens(target, keep)))
        pred = self.decoder_pred(self.decoder_blocks(self.decoder_embed(latent)))
        loss = ((pred - gather_tokens(target, keep)) ** 2).mean() * self.scale
        return loss, pred, mask


def mae_vit_base_patch16_dec512d8b(**kwargs):
    return MaskedAutoencoderViT(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
        mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
'''

# OliverRensu/DeepMIM models_mae.py: MAE's constructor; four heads of a hard-coded width 512 (CLIP ViT-B/16's
# output) after depths 6/8/10/12; forward(imgs, teacher_out [N, 1 + L, 512], mask_ratio) -> four losses
DEEPMIM = '''
class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3,
                 embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=nn.LayerNorm, norm_pix_loss=False):
        super().__init__()
        self.patch, self.side = patch_size, patches_per_side(img_size, patch_size)
        self.embed = nn.Linear(in_chans * patch_size ** 2, embed_dim)
        self.stages = nn.ModuleList([blocks(embed_dim, num_heads, depth, mlp_ratio, norm_layer) for _ in range(4)])
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_embed = nn.ModuleList([nn.Linear(embed_dim, decoder_embed_dim) for _ in range(4)])
        self.decoder_pred = nn.ModuleList([nn.Linear(decoder_embed_dim, 512) for _ in range(4)])

    def forward_loss(self, pred, teacher_out, mask):
        pred = pred / pred.norm(dim=2, keepdim=True)
        teacher_out = teacher_out / teacher_out.norm(dim=2, keepdim=True)
        assert pred.shape == teacher_out.shape
        loss = 2 - 2 * (pred * teacher_out).sum(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, teacher_out, mask_ratio=0.75):
        n = imgs.shape[0]
        keep, mask = random_keep(n, self.side ** 2, mask_ratio)
        x = self.embed(gather_tokens(patchify(imgs, self.patch), keep))
        losses = []
        for stage, embed, head in zip(self.stages, self.decoder_embed, self.decoder_pred):
            x = stage(x)
            full = self.mask_token.to(x.dtype).expand(n, self.side ** 2, -1).scatter(1, keep[..., None].expand_as(x), x)
            pred = head(embed(torch.cat([full[:, :1], full], dim=1)))  # a cls row first, as the official decoder
            losses.append(self.forward_loss(pred[:, 1:], teacher_out[:, 1:], mask))
        return tuple(losses)


def mae_vit_base_patch16_dec512d8b(**kwargs):
    return MaskedAutoencoderViT(
        img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
        mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


mae_vit_base_patch16 = mae_vit_base_patch16_dec512d8b
'''

# mx-mark/DMJD models_dmjd.py: DMJDConViT(..., decoder_pred_dim=768), two masked views per image;
# forward(imgs, target [N, L, D], mask_ratio, mask_type) repeats the target for the views and compares it with
# heads decoder_pred_dim wide: a target of another width fails in forward_loss, as the official one does
DMJD = '''
class DMJDConViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24,
                 num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                 mlp_ratio=4., norm_layer=nn.LayerNorm, decoder_pred_dim=768):
        super().__init__()
        self.patch, self.side = patch_size, patches_per_side(img_size, patch_size)
        self.embed = nn.Linear(in_chans * patch_size ** 2, embed_dim)
        self.blocks = blocks(embed_dim, num_heads, depth, mlp_ratio, norm_layer)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.decoder_blocks = blocks(decoder_embed_dim, decoder_num_heads, decoder_depth, mlp_ratio, norm_layer)
        self.decoder_pred = nn.Linear(decoder_embed_dim, decoder_pred_dim)
        self.proj_vis = nn.Linear(embed_dim, decoder_pred_dim)

    def forward_loss(self, imgs, pred, target, mask):
        target = torch.cat([target, target], dim=0)
        pred, pred_vis = pred
        target_vis = target[torch.abs(mask - 1).to(torch.bool)].view(target.shape[0], -1, target.shape[-1])
        loss_vis = nn.functional.smooth_l1_loss(pred_vis, target_vis, reduction="none", beta=2.0).mean()
        loss_mim = ((pred - target) ** 2).mean(dim=-1)
        return (loss_mim * mask).sum() / mask.sum() + loss_vis

    def forward(self, imgs, target, mask_ratio=0.75, mask_type="rand", mim_loss_type="l2",
                vis_loss_type="smooth_l1"):
        if mask_type not in ("rand", "block"):
            raise NotImplementedError(mask_type)
        views = torch.cat([imgs, imgs], dim=0)
        n = views.shape[0]
        keep, mask = random_keep(n, self.side ** 2, mask_ratio)
        latent = self.blocks(self.embed(gather_tokens(patchify(views, self.patch), keep)))
        full = self.mask_token.to(latent.dtype).expand(n, self.side ** 2, -1).scatter(
            1, keep[..., None].expand_as(latent), latent)
        pred = self.decoder_pred(self.decoder_blocks(self.decoder_embed(full)))
        loss = self.forward_loss(imgs, (pred, self.proj_vis(latent)), target, mask)
        return loss, pred, mask


def dmjd_convit_base_patch16_dec512d8b_hog(**kwargs):
    return DMJDConViT(
        img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
        mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)


dmjd_convit_base_patch16_dec8_hog = dmjd_convit_base_patch16_dec512d8b_hog
'''

# implus/UM-MAE: forward(imgs, mask [N, L] bool at stride-16 tokens); the UM-MAE encoders (models_mae_*.py,
# vis_mask_ratio) see the visible quarter as a compact grid, which a mask other than UM-MAE's uniform one breaks;
# the SimMIM ones (models_simmim_*.py, no vis_mask_ratio) the full grid with mask tokens
UMMAE_BODY = '''
class {cls}(nn.Module):
    def __init__(self, img_size={img_size}, patch_size=4, in_chans=3, stride=16,
                 {stage_args}
                 {decoder_args}norm_layer=nn.LayerNorm, norm_pix_loss=False{vis_arg}):
        super().__init__()
        self.stride, self.side, self.compact = stride, patches_per_side(img_size, stride), {compact}
        dim = {dim}
        self.embed = nn.Linear(in_chans * stride ** 2, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = blocks(dim, 2, 1, 4, norm_layer)
        self.pred = nn.Linear(dim, in_chans * stride ** 2)
        self.norm_pix_loss = norm_pix_loss

    def forward(self, imgs, mask):
        target = patchify(imgs, self.stride)
        n, length, d = target.shape
        assert mask.shape == (n, length), (mask.shape, target.shape)
        x = self.embed(target)
        if self.compact:  # the visible quarter as a (side/2, side/2) grid: only a uniform mask gives one
            x = x[~mask].reshape(n, self.side // 2, self.side // 2, -1).flatten(1, 2)
            pred = self.pred(self.blocks(x))
            loss = ((pred - target[~mask].reshape(n, -1, d)) ** 2).mean()
        else:
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
            pred = self.pred(self.blocks(x))
            loss = (pred[mask].reshape(n, -1, d) - target[mask].reshape(n, -1, d)).abs().mean()
        return loss, pred, mask


def {builder}(**kwargs):
    return {cls}(img_size={tiny_size}, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
{alias}'''

SWIN_ARGS = ("embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],\n"
             "                 mlp_ratio=4, window_size=8, posmlp_dim=32,\n                 ")
PVT_ARGS = ("embed_dims=[64, 128, 320, 512], depths=[3, 4, 6, 3], num_heads=[1, 2, 5, 8],\n"
            "                 mlp_ratios=[8, 8, 4, 4], sr_ratios=[4, 2, 1, 1],\n                 ")
UMMAE_FILES = {
    "models_mae_swin.py": dict(cls="MaskedAutoencoderSwin", img_size=256, stage_args=SWIN_ARGS, compact=True,
                               dim="embed_dim", tiny_size=128, builder="mae_swin_tiny_256_dec512d2b",
                               alias="\n\nmae_swin_tiny_256 = mae_swin_tiny_256_dec512d2b\n",
                               decoder_args="decoder_embed_dim=512, decoder_depth=2, decoder_num_heads=16, ",
                               vis_arg=", vis_mask_ratio=0."),
    "models_simmim_swin.py": dict(cls="SimMIMSwin", img_size=256, stage_args=SWIN_ARGS, compact=False,
                                  dim="embed_dim", tiny_size=128, builder="simmim_swin_tiny_256", alias="",
                                  decoder_args="", vis_arg=""),
    "models_mae_pvt.py": dict(cls="MaskedAutoencoderPVT", img_size=224, stage_args=PVT_ARGS, compact=True,
                              dim="embed_dims[0]", tiny_size=64, builder="mae_pvt_small_256_dec512d2b",
                              alias="\n\nmae_pvt_small_256 = mae_pvt_small_256_dec512d2b\n",
                              decoder_args=("decoder_embed_dim=512, decoder_depth=2, decoder_num_heads=16,\n"
                                            "                 decoder_mlp_ratio=4, "),
                              vis_arg=",\n                 vis_mask_ratio=0."),
    "models_simmim_pvt.py": dict(cls="SimMIMPVT", img_size=224, stage_args=PVT_ARGS.replace("[4, 2, 1, 1]",
                                                                                            "[8, 4, 2, 1]"),
                                 compact=False, dim="embed_dims[0]", tiny_size=64, builder="simmim_pvt_small_256",
                                 alias="", decoder_args="", vis_arg=""),
}

CHECKOUTS = {"mae": {"models_mae.py": MAE}, "DeepMIM": {"models_mae.py": DEEPMIM},
             "DMJD": {"models_dmjd.py": DMJD},
             "UM-MAE": {name: UMMAE_BODY.format(**fields) for name, fields in UMMAE_FILES.items()}}


def write_checkout(name: str, folder: Path) -> Path:
    """Write the stand-in clone ``name`` (a key of ``CHECKOUTS``: mae, DeepMIM, DMJD, UM-MAE) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for filename, body in CHECKOUTS[name].items():
        (folder / filename).write_text(textwrap.dedent(HEADER) + textwrap.dedent(body))
    (folder / "util").mkdir(exist_ok=True)
    (folder / "util" / "pos_embed.py").write_text(textwrap.dedent(UTIL_POS_EMBED))
    return folder
