"""FrozenTeacherTarget: any frozen network's tokens as a MIM target (a DINO-like timm ViT in a few lines),
the ImageNet -> teacher re-normalization, and the teacher's precision per device."""
import timm
import torch
from torch import nn

from base.images import IMAGENET_MEAN, IMAGENET_STD
from conftest import adamw_losses, smooth_images
from models.encoders.vit import VisionTransformer
from models.heads import MAEDecoder
from models.losses import PatchLoss
from models.masking import RandomMasking
from models.mim import Branch, MaskedImageModel
from models.targets import FrozenTeacherTarget, teacher_dtype


def dino_like_teacher() -> nn.Module:
    """A tiny timm ViT with 2 register tokens, every token out (no pooling, no head): DINO's layout."""
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, reg_tokens=2, num_classes=0, global_pool="")


def test_dino_like_teacher_is_a_target_in_a_few_lines():
    teacher = dino_like_teacher()
    target = FrozenTeacherTarget(teacher, IMAGENET_MEAN, IMAGENET_STD, out_dim=teacher.num_features,
                                 num_prefix_tokens=teacher.num_prefix_tokens)
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    decoder = MAEDecoder(encoder.grid_size, encoder.embed_dim, target.out_dim(), 16, 1, 2)
    model = MaskedImageModel(encoder, RandomMasking(0.75), target, {"mim": Branch(decoder, PatchLoss("cosine"))})

    imgs = smooth_images(2, 32, seed=0)
    with torch.no_grad():  # ImageNet statistics: the teacher sees the batch as is; cls and registers dropped
        assert torch.equal(model.target(imgs), teacher(imgs)[:, 3:])
    assert model(imgs).pred["mim"].shape == (2, 16, 24)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    losses = adamw_losses(model, imgs, steps=30, lr=1e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in model.parameters()}
    assert not [k for k in model.state_dict() if "teacher" in k or "reg_token" in k]
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    model.train()
    assert not teacher.training


class EchoTeacher(nn.Module):
    """Returns its input pixels as tokens behind one zero prefix token: [N, 1 + H*W, 3]."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # a frozen network has parameters; their dtype is checked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        return torch.cat([torch.zeros_like(tokens[:, :1]), tokens], dim=1)


def test_renormalizes_from_imagenet_to_the_teachers_statistics():
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    target = FrozenTeacherTarget(EchoTeacher(), mean, std, out_dim=3)
    imgs = smooth_images(2, 8, seed=1)
    raw = imgs * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    expected = ((raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(target(imgs), expected.flatten(2).transpose(1, 2), rtol=1e-6, atol=1e-6)
    assert target.out_dim() == 3


def test_teacher_precision_follows_the_device():
    """bf16 on a GPU, fp32 elsewhere, whatever dtype the model is cast to."""
    assert teacher_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert teacher_dtype(torch.device("cpu")) == torch.float32
    target = FrozenTeacherTarget(EchoTeacher(), IMAGENET_MEAN, IMAGENET_STD, out_dim=3)
    target.to(torch.float64)
    assert target.teacher.unused.dtype == torch.float32 and target.scale.dtype == torch.float64
    assert target(smooth_images(1, 8)).dtype == torch.float32
