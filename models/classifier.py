"""Classification models around any encoder, for fine-tuning and linear probing.

Keys equal the official fine-tune model's (``MAE:models_vit.py``, a timm VisionTransformer): the encoder's
flat keys, ``fc_norm.*`` under global pooling (where the encoder's final ``norm`` is removed), and
``head.*``. So official fine-tuned checkpoints load strictly and pretraining checkpoints load with only the
head (and ``fc_norm``) missing.
"""
import torch
from timm.layers import trunc_normal_
from torch import nn

from base.errors import UsageError

from .flat_keys import FlatKeys


class Classifier(FlatKeys, nn.Module):
    """Encoder -> pooled feature [N, D] -> (fc_norm) -> head -> logits [N, num_classes].

    global_pool: average the patch tokens then ``fc_norm`` (LN eps 1e-6); otherwise the final-normed cls
    token. The head weight starts as trunc_normal(std=2e-5), the official fine-tune initialization.
    """

    def __init__(self, encoder: nn.Module, num_classes: int = 1000, global_pool: bool = True):
        super().__init__()
        if not global_pool and encoder.num_prefix_tokens == 0:
            raise UsageError(f"{type(encoder).__name__} has no cls token: use --global_pool")
        self.encoder = encoder
        self.global_pool = global_pool
        dim = encoder.embed_dim
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if global_pool else nn.Identity()
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.num_features, self.num_classes = dim, num_classes
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)
        self.flatten_keys(["encoder."])

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: [N, 3, H, W] -> pooled features [N, D] (before the head)."""
        out = self.encoder(imgs)
        if self.global_pool:
            return self.fc_norm(out.patches.mean(dim=1))
        return out.prefix[:, 0]

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(imgs))

    def set_grad_checkpointing(self, mode: str | bool = "all") -> None:
        """Activation checkpointing of the encoder's blocks: ``"none"``, ``"stage1"`` or ``"all"``
        (``models.encoders.common.GradCheckpointing``)."""
        self.encoder.set_grad_checkpointing(mode)

    def no_weight_decay(self) -> set[str]:
        """Parameters exempt from weight decay besides 1-D ones (official: pos_embed, cls_token)."""
        return {name for name, _ in self.named_parameters()
                if name.split(".")[-1] in {"pos_embed", "cls_token", "dist_token"}}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer grouping for layer-wise LR decay: stem -> 0, block k -> k + 1, the rest -> depth + 1.

        The encoder names its stem and its numbered blocks (``layer_groups``): for ConViT the stem is every
        convolutional stage and the blocks are the transformer stage (docs/methods.md §2.7).

        With ``param_groups_layer_decay`` this gives scale decay^(depth + 1 - id), the official formula
        (docs/methods.md §1.7), whatever the encoder's depth. The final group's ordinal must not be timm's
        99999, which would merge it into the last block's group (and give that block scale 1)."""
        stem, blocks = self.encoder.layer_groups()
        return {"stem": r"^encoder\." + stem.removeprefix("^"),
                "blocks": [(r"^encoder\." + blocks.removeprefix("^"), None),
                           (r"^(?:encoder\.norm|fc_norm|head)", (1e6,))]}


def to_linear_probe(model: Classifier) -> Classifier:
    """The official linear-probe surgery: head weight trunc_normal(std=0.01), a ``BatchNorm1d(D,
    affine=False, eps=1e-6)`` before it, and every parameter outside the head frozen."""
    head = model.head
    trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model.head = nn.Sequential(nn.BatchNorm1d(head.in_features, affine=False, eps=1e-6), head)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("head.")
    return model
