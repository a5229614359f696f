"""The CLIP teacher: numerics against an nn.MultiheadAttention reference, the three checkpoint formats,
frozen loading, one-line errors, and DeepMIM's golden teacher output."""
import argparse
from collections import OrderedDict

import pytest
import torch
from torch import nn

from golden_rules import assert_fingerprint, case_inputs, load_case, write_teacher
from models.clip_teacher import CLIP_MEAN, CLIP_STD, CLIPVisualEncoder, load_clip_teacher
from util.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
JIT_DEPRECATED = "ignore:.*torch.jit.* is deprecated:FutureWarning"  # OpenAI's archives are TorchScript
TINY = dict(input_resolution=32, patch_size=16, width=64, layers=2, heads=1, output_dim=16)


# --- a straightforward reference: OpenAI's layout, sequence-first nn.MultiheadAttention -------------------
class RefLayerNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


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
    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch_size, patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = RefLayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[RefBlock(width, heads) for _ in range(layers)])
        self.ln_post = RefLayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x):
        x = self.conv1(x).reshape(x.shape[0], self.conv1.out_channels, -1).permute(0, 2, 1)
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


def random_clip(seed: int = 0, **overrides) -> CLIPVisualEncoder:
    """A tiny CLIP tower whose every parameter (biases and LayerNorm affine included) is random."""
    torch.manual_seed(seed)
    model = CLIPVisualEncoder(**{**TINY, **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2 if p.ndim > 1 else 0.5)
    return model.eval()


def images(model: CLIPVisualEncoder, n: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, model.input_resolution, model.input_resolution, generator=gen)


# --- the module ------------------------------------------------------------------------------------------
def test_key_layout_is_openai():
    keys = set(CLIPVisualEncoder(**TINY).state_dict())
    block = {f"transformer.resblocks.{i}.{k}" for i in range(2) for k in (
        "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
        "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias")}
    assert keys == {"conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight", "ln_pre.bias",
                    "ln_post.weight", "ln_post.bias", "proj"} | block
    shapes = CLIPVisualEncoder(**TINY).state_dict()
    assert shapes["transformer.resblocks.0.attn.in_proj_weight"].shape == (192, 64)
    assert shapes["transformer.resblocks.0.mlp.c_fc.weight"].shape == (256, 64)
    assert shapes["positional_embedding"].shape == (5, 64) and shapes["proj"].shape == (64, 16)


@pytest.mark.parametrize("overrides", [{}, dict(width=128, heads=2), dict(width=128, heads=4, layers=3)])
def test_matches_multihead_attention_reference(overrides):
    model = random_clip(**overrides)
    ref = RefVisual(**{**TINY, **overrides}).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    x = images(model, n=3)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.shape == (3, 1 + (model.input_resolution // 16) ** 2, model.output_dim)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_runs_under_caller_autocast():
    """As inside the student's autocast: bf16 matmuls, fp32 LayerNorms, a half-precision output."""
    model = random_clip()
    x = images(model)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


# --- loading ---------------------------------------------------------------------------------------------
def save_as(model: CLIPVisualEncoder, fmt: str, path) -> None:
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


@pytest.mark.filterwarnings(JIT_DEPRECATED)
@pytest.mark.parametrize("fmt", ["torchscript", "state_dict", "open_clip", "bare"])
def test_loads_every_format_frozen(tmp_path, fmt):
    model = random_clip()
    path = tmp_path / f"clip-{fmt}.pt"
    save_as(model, fmt, path)
    teacher = load_clip_teacher(str(path))
    assert not teacher.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in teacher.parameters())
    assert (teacher.input_resolution, teacher.patch_size, teacher.width, teacher.layers, teacher.heads,
            teacher.output_dim) == tuple(TINY.values())
    x = images(model)
    with torch.no_grad():
        expected = model(x)
    out = teacher(x)
    assert not out.requires_grad
    assert torch.equal(out, expected)


def test_infers_vit_b16_like_architecture(tmp_path):
    model = random_clip(input_resolution=224, output_dim=512)
    path = tmp_path / "clip.pt"
    save_as(model, "state_dict", path)
    teacher = load_clip_teacher(str(path))
    assert (teacher.input_resolution, teacher.patch_size, teacher.width, teacher.layers, teacher.heads,
            teacher.output_dim) == (224, 16, 64, 2, 1, 512)
    with torch.no_grad():
        assert teacher(images(teacher, n=1)).shape == (1, 197, 512)


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_half_torchscript_archive_loads_as_float32(tmp_path):
    """OpenAI's archives store fp16 weights; the teacher is built in fp32 from them."""
    model = random_clip()
    wrapper = torch.jit.script(TinyCLIP(model))
    wrapper.half()
    torch.jit.save(wrapper, str(tmp_path / "half.pt"))
    teacher = load_clip_teacher(str(tmp_path / "half.pt"))
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    rounded = random_clip()
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    x = images(model)
    with torch.no_grad():
        assert torch.equal(teacher(x), rounded(x))


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
