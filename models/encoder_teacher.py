"""A pretrained encoder of this project as a frozen teacher (DeepMIM's ``teacher_path``): the final normed tokens
of a pretraining checkpoint's encoder, for a student of the same architecture. It stands in for the CLIP
teacher where no CLIP weights can be had (e.g. an MAE run's encoder teaching DeepMIM, benchmarks/mini_table.py)."""
import os

import torch
from torch import nn

from base.errors import UsageError
from base.images import IMAGENET_MEAN, IMAGENET_STD
from base.safe_load import extract_state_dict, safe_torch_load

from .interfaces import Encoder
from .targets import FrozenTeacherTarget


class EncoderTokens(nn.Module):
    """An encoder on the whole image, returning its prefix then patch tokens: [N, P + L, D] (final norm applied)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] ImageNet-normalized -> [N, P + L, D]."""
        out = self.encoder(imgs)
        return torch.cat([out.prefix, out.patches], dim=1)


def load_encoder_teacher(path: str, encoder: Encoder) -> FrozenTeacherTarget:
    """The weights of ``encoder`` (a fresh one of the checkpoint's architecture) read strictly from the pretraining
    checkpoint ``path``, wrapped as a frozen target of its final tokens [N, L, D] on ImageNet-normalized input.

    Our pretraining checkpoints save the encoder's keys without the ``encoder.`` prefix (``models.flat_keys``,
    the official layout), beside the decoder's; both spellings are read. A file of another architecture is one
    ``UsageError`` line."""
    if not os.path.isfile(path):
        raise UsageError(f"teacher_path {path!r} does not exist: pass a pretraining checkpoint (checkpoint-N.pth)")
    state = extract_state_dict(safe_torch_load(path, "teacher_path"))
    wanted = encoder.state_dict()
    weights = {k: state.get(k, state.get(f"encoder.{k}")) for k in wanted}
    missing = sorted(k for k, v in weights.items() if v is None)
    reshaped = sorted(f"{k} {tuple(v.shape)} (the student's: {tuple(wanted[k].shape)})" for k, v in weights.items()
                      if v is not None and v.shape != wanted[k].shape)
    if missing or reshaped:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"shape of {reshaped[0]}"
        raise UsageError(f"teacher_path {path!r} is not an encoder of the student's architecture ({detail}): pass "
                         "a checkpoint of a run with the same encoder --model_kwargs")
    encoder.load_state_dict(weights, strict=True)
    return FrozenTeacherTarget(EncoderTokens(encoder), IMAGENET_MEAN, IMAGENET_STD, out_dim=encoder.embed_dim,
                               num_prefix_tokens=encoder.num_prefix_tokens)
