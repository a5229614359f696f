"""The official implementations as benchmark steps: import a model file from a checkout of an official repository,
build the model matching one of our recipes and wrap its training step as a :class:`benchmarks.measure.Step`.

Nothing of the official code is vendored: ``--compare-official PATH`` points at a clone (facebookresearch/mae,
mx-mark/DMJD, OliverRensu/DeepMIM, implus/UM-MAE). Their files are MAE forks written for timm 0.3.2 and
NumPy < 1.24; the import tolerates the two differences that break them on today's libraries (timm's ``Block``
lost ``qk_scale``; ``np.float`` is gone), only while their module is imported and built.

So that the two steps do the same work, the parts the official code computes outside its model (the HOG
target and the CLIP teacher in the training loop, the UM-MAE and SimMIM masks in the data loader) come from
our recipe on both sides; the ratio compares the models and their steps.
"""
import contextlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import timm.models.vision_transformer as timm_vit
import torch
import torch.nn.functional as F
from torch import nn

from base.errors import UsageError
from benchmarks.measure import Step

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_LIBRARIES = "timm 0.3.2 / 0.4.12 and NumPy < 1.24 (only Block's qk_scale and np.float are bridged here)"


@dataclass(frozen=True)
class OfficialModel:
    """Where the official counterpart of a recipe lives and how its forward is called.

    module, builder: ``<module>.py`` at the checkout's top level and the model function in it.
    kwargs: what the official ``main_pretrain.py`` passes to the builder for the matching run.
    kwargs_from: the builder arguments the official command derives from its own flags, read off our recipe's
        model instead (DMJD's ``decoder_pred_dim``, the width of the HOG target its ``--pred_type hog`` sets).
    loss: ``(official model, our recipe's model, imgs) -> scalar``; the recipe supplies the target, the teacher
        or the masks the official loop or loader would (see the module docstring).
    """

    repo: str
    module: str
    builder: str
    loss: Callable[[nn.Module, nn.Module, torch.Tensor], torch.Tensor]
    kwargs: dict = field(default_factory=dict)
    kwargs_from: Callable[[nn.Module], dict] | None = None


def _mae_loss(official: nn.Module, ours: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """MAE ``forward(imgs, mask_ratio) -> (loss, pred, mask)``."""
    return official(imgs, mask_ratio=0.75)[0]


def _deepmim_loss(official: nn.Module, ours: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """DeepMIM ``forward(imgs, teacher_out, mask_ratio) -> (loss1, loss2, loss3, loss4)``, summed as its loop
    does; ``teacher_out`` is the CLIP teacher's [N, 1 + L, 512] (the official forward drops the cls row)."""
    with torch.no_grad():
        teacher = F.pad(ours.target(imgs), (0, 0, 1, 0))  # [N, L, 512] -> a zero row in the cls place
    return sum(official(imgs, teacher, mask_ratio=0.75))


def _dmjd_loss(official: nn.Module, ours: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """DMJD ``forward(imgs, target, mask_ratio, mask_type) -> (loss, pred, mask)`` with the HOG target [N, L, 108]
    of the PRETRAIN.md run (block masking at 0.6)."""
    return official(imgs, ours.target(imgs), mask_ratio=0.6, mask_type="block")[0]


def _dmjd_kwargs(ours: nn.Module) -> dict:
    """The official main_pretrain.py builds the model with ``decoder_pred_dim=108`` (2x2 cells x 9 bins x 3
    channels) for ``--pred_type hog``: its heads regress the HOG target, whose width the builder's default (768)
    does not fit. Ours is read off our recipe's target."""
    return {"decoder_pred_dim": ours.target.out_dim()}


def _given_mask_loss(official: nn.Module, ours: nn.Module, imgs: torch.Tensor) -> torch.Tensor:
    """UM-MAE / SimMIM ``forward(imgs, mask) -> (loss, pred, mask)``, mask [N, L] bool at 16-px tokens (uniform
    for UM-MAE, random for SimMIM: our recipe's sampler draws it as their loader would)."""
    return official(imgs, ours.sample_masks(imgs).mask)[0]


OFFICIAL = {
    "mae_vit_base_patch16": OfficialModel("facebookresearch/mae", "models_mae", "mae_vit_base_patch16", _mae_loss),
    "deepmim_vit_base_patch16_clip": OfficialModel("OliverRensu/DeepMIM", "models_mae", "mae_vit_base_patch16",
                                                   _deepmim_loss),
    "dmjd_convvit_base_patch16_hog": OfficialModel("mx-mark/DMJD", "models_dmjd", "dmjd_convit_base_patch16_dec8_hog",
                                                   _dmjd_loss, kwargs_from=_dmjd_kwargs),
    "ummae_swin_tiny_256": OfficialModel("implus/UM-MAE", "models_mae_swin", "mae_swin_tiny_256", _given_mask_loss,
                                         {"norm_pix_loss": False, "vis_mask_ratio": 0.25}),
    "simmim_swin_tiny_256": OfficialModel("implus/UM-MAE", "models_simmim_swin", "simmim_swin_tiny_256",
                                          _given_mask_loss, {"norm_pix_loss": False}),
    "ummae_pvt_small_256": OfficialModel("implus/UM-MAE", "models_mae_pvt", "mae_pvt_small_256", _given_mask_loss,
                                         {"norm_pix_loss": False, "vis_mask_ratio": 0.25}),
    "simmim_pvt_small_256": OfficialModel("implus/UM-MAE", "models_simmim_pvt", "simmim_pvt_small_256",
                                          _given_mask_loss, {"norm_pix_loss": False}),
}


class _Timm032Block(timm_vit.Block):
    """timm 0.3.2's ``Block`` signature on today's timm: ``qk_scale=None`` (the default scale) is accepted."""

    def __init__(self, *args, qk_scale: float | None = None, **kwargs):
        if qk_scale is not None:
            raise UsageError("the official model sets qk_scale, which today's timm Block cannot express")
        super().__init__(*args, **kwargs)


def _top_level_names(path: str) -> set[str]:
    """The module and package names a checkout provides at its top level."""
    entries = [entry for entry in os.listdir(path) if not entry.startswith(".")]
    return ({entry[:-3] for entry in entries if entry.endswith(".py")}
            | {entry for entry in entries if os.path.isdir(os.path.join(path, entry))})


@contextlib.contextmanager
def _official_imports(path: str) -> Iterator[None]:
    """While the official module is imported and built: ``path`` first on ``sys.path``; modules of ours whose
    names the checkout also uses (``util``: every fork has a ``util/pos_embed.py``) stepped aside, so that its
    own are found, and put back after; timm's ``Block`` taking ``qk_scale``; ``np.float`` meaning float."""
    shadowed = _top_level_names(path)
    ours = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in shadowed}
    for name in ours:
        del sys.modules[name]
    # our root leaves the path too: a regular package there (util/__init__.py) would win over the checkout's
    # namespace package of the same name (the forks' util/ has no __init__.py)
    saved_path = list(sys.path)
    sys.path[:] = [path] + [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != REPO_ROOT]
    timm_block, had_np_float = timm_vit.Block, "float" in np.__dict__
    timm_vit.Block = _Timm032Block
    if not had_np_float:
        np.float = float
    try:
        yield
    finally:
        timm_vit.Block = timm_block
        if not had_np_float:
            del np.float
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if name.split(".")[0] in shadowed]:
            del sys.modules[name]  # theirs: their module objects keep what they imported
        sys.modules.update(ours)


def official_builder(recipe: str, path: str) -> Callable[[nn.Module], nn.Module]:
    """Import the official model file matching ``recipe`` from the checkout at ``path`` and return a function
    ``build(ours) -> official model``, building it with the official builder and the arguments the official
    pretraining command passes (some read off ``ours``, our recipe's model), so that a wrong path fails before
    anything is measured."""
    spec = OFFICIAL.get(recipe)
    if spec is None:
        raise UsageError(f"--compare-official has no official counterpart for --model {recipe}: it knows "
                         f"{', '.join(OFFICIAL)}")
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise UsageError(f"--compare-official {path} is not a folder: pass a clone of {spec.repo}")
    if not os.path.isfile(os.path.join(path, f"{spec.module}.py")):
        raise UsageError(f"--compare-official {path} has no {spec.module}.py: expected a clone of {spec.repo}")
    with _official_imports(path):
        try:
            module = importlib.import_module(spec.module)
        except (ImportError, AttributeError, TypeError) as err:
            raise UsageError(f"importing {spec.module} from {path} failed ({err}): the official code needs its own "
                             f"requirements (einops for UM-MAE) and was written for {OLD_LIBRARIES}") from err
    builder = getattr(module, spec.builder, None)
    if not callable(builder):
        raise UsageError(f"{path}/{spec.module}.py has no {spec.builder}(): expected the model builder of {spec.repo}")

    def build(ours: nn.Module) -> nn.Module:
        kwargs = {**spec.kwargs, **(spec.kwargs_from(ours) if spec.kwargs_from else {})}
        with _official_imports(path):  # the forks' builders reach np.float (the sin-cos tables)
            try:
                return builder(**kwargs)
            except (AttributeError, TypeError) as err:
                raise UsageError(f"building {spec.builder} from {path} failed ({err}): the official code was written "
                                 f"for {OLD_LIBRARIES}") from err
    return build


def official_step(recipe: str, official: nn.Module, ours: nn.Module) -> Step:
    """The official model's training step; ``ours`` (a recipe instance whose ``target`` is already on the
    device) supplies the target, teacher or masks."""
    loss = OFFICIAL[recipe].loss
    return Step(official, lambda imgs: loss(official, ours, imgs), getattr(ours, "target", None))
