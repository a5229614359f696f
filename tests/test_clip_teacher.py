"""The CLIP teacher (timm's VisionTransformer): numerics against an OpenAI-layout nn.MultiheadAttention
reference, the checkpoint formats, frozen loading, one-line errors, and DeepMIM's golden teacher output."""
import argparse
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from base.errors import UsageError
from golden_rules import assert_fingerprint, case_inputs, load_case, write_teacher
from models.clip_teacher import CLIP_MEAN, CLIP_STD, CLIPVisionTransformer, load_clip_teacher, openai_visual_shapes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JIT_DEPRECATED = "ignore:.*torch.jit.* is deprecated:FutureWarning"  # OpenAI's archives are TorchScript
TINY = dict(input_resolution=32, patch_size=16, width=64, layers=2, heads=1, output_dim=16)


# --- a straightforward reference: OpenAI's layout, sequence-first nn.MultiheadAttention -------------------
class RefLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # no super(): TorchScript (the archives) lacks it
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class RefQuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class RefBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)  # batch_first=False: [L, N, D]
        self.ln_1 = RefLayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", RefQuickGELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = RefLayerNorm(width)

    def forward(self, x):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class RefVisual(nn.Module):
    """OpenAI CLIP's ``VisionTransformer`` (keys without ``visual.``), returning every token as DeepMIM."""

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = RefLayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[RefBlock(width, heads) for _ in range(layers)])
        self.ln_post = RefLayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
        x = self.transformer.resblocks(x).permute(1, 0, 2)
        return self.ln_post(x) @ self.proj  # every token, as DeepMIM


class TinyCLIP(nn.Module):
    """Stands in for an OpenAI CLIP TorchScript model: ``visual`` plus text-tower and int entries."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        self.token_embedding = nn.Embedding(10, 8)
        self.register_buffer("input_resolution", torch.tensor(visual.input_resolution))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def random_clip(seed: int = 0, **overrides) -> RefVisual:
    """A tiny reference CLIP tower whose every parameter (biases and LayerNorm affine included) is random."""
    torch.manual_seed(seed)
    model = RefVisual(**{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.ndim > 1 else 0.5)
    return model.eval()


def images(model: nn.Module, n: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.input_resolution, model.input_resolution, generator=gen)


def architecture(teacher: CLIPVisionTransformer) -> tuple[int, ...]:
    """The inferred architecture, read from timm's modules (not from the attributes we set)."""
    return (teacher.patch_embed.img_size[0], teacher.patch_embed.patch_size[0], teacher.embed_dim,
            len(teacher.blocks), teacher.blocks[0].attn.num_heads, teacher.head.out_features)


def save_as(model: RefVisual, fmt: str, path) -> None:
    visual = {k: v.clone() for k, v in model.state_dict().items()}
    text = {"token_embedding.weight": torch.randn(10, 8), "logit_scale": torch.tensor(4.6),
            "transformer.resblocks.0.attn.in_proj_weight": torch.randn(24, 8)}  # text tower: ignored
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(TinyCLIP(model)), str(path))
    elif fmt == "state_dict":  # DeepMIM's --clip_path
        torch.save({**{f"visual.{k}": v for k, v in visual.items()}, **text}, path)
    elif fmt == "open_clip":
        sd = {f"module.{k}": v for k, v in {**{f"visual.{k}": v for k, v in visual.items()}, **text}.items()}
        torch.save({"epoch": 32, "name": "ViT-B-16", "state_dict": sd, "optimizer": {"state": {}}}, path)
    elif fmt == "bare":
        torch.save(visual, path)
    else:
        raise ValueError(fmt)


# --- the module ------------------------------------------------------------------------------------------
def test_openai_layout_table_is_the_reference_modules():
    ref = RefVisual(**TINY)
    assert openai_visual_shapes(64, 2, 16, 2, 16) == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_timm_configuration():
    """OpenAI CLIP's tower in timm: pre-norm, fp32 LayerNorms (eps 1e-5), QuickGELU, bias-free patch embedding,
    no pooling, the projection as the head."""
    teacher = CLIPVisionTransformer(**TINY)
    assert teacher.global_pool == "" and teacher.num_prefix_tokens == 1 and teacher.patch_embed.proj.bias is None
    assert type(teacher.norm_pre).__name__ == type(teacher.norm).__name__ == "LayerNormFp32"
    assert teacher.norm.eps == teacher.blocks[0].norm1.eps == 1e-5
    assert type(teacher.blocks[0].mlp.act).__name__ == "QuickGELU"
    assert architecture(teacher) == tuple(TINY.values())


@pytest.mark.parametrize("overrides", [{}, dict(width=128, heads=2), dict(width=192, heads=3, layers=3)])
def test_matches_multihead_attention_reference(tmp_path, overrides):
    """Loaded through --clip_path, the timm tower computes what OpenAI's module does, on every token."""
    ref = random_clip(**overrides)
    save_as(ref, "state_dict", tmp_path / "clip.pt")
    teacher = load_clip_teacher(str(tmp_path / "clip.pt"))
    x = images(ref, n=3)
    with torch.no_grad():
        out, expected = teacher(x), ref(x)
    assert out.shape == (3, 1 + (ref.input_resolution // 16) ** 2, TINY["output_dim"])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_runs_under_caller_autocast(tmp_path):
    """As inside the student's autocast: bf16 matmuls, fp32 LayerNorms, a half-precision output."""
    save_as(random_clip(), "state_dict", tmp_path / "clip.pt")
    teacher = load_clip_teacher(str(tmp_path / "clip.pt"))
    x = images(teacher)
    with torch.no_grad():
        full = teacher(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = teacher(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


# --- loading ---------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("fmt", ["torchscript", "state_dict", "open_clip", "bare"])
def test_loads_every_format_frozen(tmp_path, fmt):
    ref = random_clip()
    save_as(ref, fmt, tmp_path / f"clip-{fmt}.pt")
    save_as(ref, "state_dict", tmp_path / "plain.pt")
    teacher = load_clip_teacher(str(tmp_path / f"clip-{fmt}.pt"))
    assert not teacher.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in teacher.parameters())
    assert architecture(teacher) == tuple(TINY.values())
    assert (teacher.input_resolution, teacher.patch_size, teacher.width, teacher.layers, teacher.heads,
            teacher.output_dim) == tuple(TINY.values())
    x = images(ref)
    out = teacher(x)
    assert not out.requires_grad
    with torch.no_grad():
        assert torch.equal(out, load_clip_teacher(str(tmp_path / "plain.pt"))(x))
        torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)


def test_infers_vit_b16_like_architecture(tmp_path):
    path = tmp_path / "clip.pt"
    save_as(random_clip(input_resolution=224, output_dim=512), "state_dict", path)
    teacher = load_clip_teacher(str(path))
    assert architecture(teacher) == (224, 16, 64, 2, 1, 512)
    with torch.no_grad():
        assert teacher(images(teacher, n=1)).shape == (1, 197, 512)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_half_torchscript_archive_loads_as_float32(tmp_path):
    """OpenAI's archives store fp16 weights; the teacher is built in fp32 from them."""
    ref = random_clip()
    wrapper = torch.jit.script(TinyCLIP(ref))
    wrapper.half()
    torch.jit.save(wrapper, str(tmp_path / "half.pt"))
    teacher = load_clip_teacher(str(tmp_path / "half.pt"))
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    rounded = random_clip()
    rounded.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    save_as(rounded, "state_dict", tmp_path / "rounded.pt")
    x = images(ref)
    with torch.no_grad():
        assert torch.equal(teacher(x), load_clip_teacher(str(tmp_path / "rounded.pt"))(x))


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"--clip_path .*nope\.pt.* does not exist"):
        load_clip_teacher(str(tmp_path / "nope.pt"))


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(UsageError, match=r"notes\.pt.*not a PyTorch checkpoint") as info:
        load_clip_teacher(str(path))
    assert "\n" not in str(info.value)


def test_mae_checkpoint_has_no_clip(tmp_path):
    path = tmp_path / "mae.pth"
    mae = {"cls_token": torch.zeros(1, 1, 32), "patch_embed.proj.weight": torch.zeros(32, 3, 16, 16),
           "blocks.0.attn.qkv.weight": torch.zeros(96, 32)}
    torch.save({"model": mae, "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(UsageError, match=r"mae\.pth.*holds no CLIP visual encoder \(expected visual\.conv1\.weight"):
        load_clip_teacher(str(path))


def test_resnet_clip_and_extra_keys_are_refused(tmp_path):
    path = tmp_path / "rn50.pt"
    torch.save({"visual.conv1.weight": torch.zeros(32, 3, 3, 3), "visual.attnpool.c_proj.weight": torch.zeros(4, 4)},
               path)
    with pytest.raises(UsageError, match="ResNet CLIP"):
        load_clip_teacher(str(path))
    sd = {f"visual.{k}": v for k, v in random_clip().state_dict().items()}
    sd["visual.transformer.resblocks.0.ls_1.gamma"] = torch.ones(64)  # an open_clip layer-scale variant
    torch.save(sd, path)
    with pytest.raises(UsageError, match=r"does not match a CLIP ViT.*unexpected: transformer\.resblocks\.0\.ls_1"):
        load_clip_teacher(str(path))
    del sd["visual.transformer.resblocks.0.ls_1.gamma"], sd["visual.ln_post.bias"]
    sd["visual.transformer.resblocks.1.mlp.c_fc.bias"] = torch.zeros(255)
    torch.save(sd, path)
    with pytest.raises(UsageError, match=r"does not match a CLIP ViT.*missing: ln_post\.bias; "
                                         r"shape: transformer\.resblocks\.1\.mlp\.c_fc\.bias \(255,\)\)$"):
        load_clip_teacher(str(path))


class Pickled:
    """Any class outside the weights_only allow-list."""


def test_arbitrary_pickle_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"visual.proj": torch.zeros(2, 2), "extra": Pickled()}, path)
    with pytest.raises(UsageError, match=r"cannot load --clip_path .*pickled\.pt.*stores a Python object "
                                         r"\(.*Pickled\) that is not loaded for safety") as info:
        load_clip_teacher(str(path))
    assert "\n" not in str(info.value)


def test_non_dict_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UsageError, match="holds a Tensor"):
        load_clip_teacher(str(path))


# --- golden: DeepMIM's clip.VisionTransformer on its rule-2 weights -------------------------------------
def test_golden_teacher_output(tmp_path):
    """DeepMIM's official teacher (clip.VisionTransformer) on its rule-2 weights, read from an OpenAI-layout
    file: same architecture as the case's, and the same output (class token included) on CLIP-normalized input."""
    case = load_case("deepmim_tiny_clip")
    teacher = load_clip_teacher(write_teacher(case, tmp_path / "teacher.pt"))
    cfg = case["config"]["teacher"]
    assert (teacher.width, teacher.layers, teacher.heads, teacher.patch_size, teacher.output_dim) == (
        cfg["width"], cfg["layers"], cfg["heads"], cfg["patch_size"], cfg["output_dim"])
    imgs = case_inputs(case)
    raw = imgs * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    clip_in = (raw - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = teacher(clip_in)
    assert_fingerprint(out, case["fingerprints"]["teacher_out"], "teacher_out")
