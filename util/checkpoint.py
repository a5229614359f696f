"""Checkpoints: atomic save, exact resume, and safe loading of pretrained weights (ours and official).

Resuming reads the checkpoint ``--resume`` names (``--auto_resume``: the newest readable one), checks it is a
training checkpoint of this model and optimizer before loading anything (one line for each way it is not), then
restores it exactly. ``util.fsdp`` writes and resumes the sharded ``.dcp`` folders of ``--fsdp`` alike.

Everything is read with ``torch.load(weights_only=True)``: no arbitrary object is ever unpickled. The
official MAE-family checkpoints hold an ``argparse.Namespace`` under ``'args'``; that one class is
allow-listed so they load without ``weights_only=False``.
"""
import errno
import fnmatch
import glob
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from base.errors import UsageError
from base.safe_load import extract_state_dict, load_file
from models.pos_embed import resize_pos_embed
from util import distributed as dist_util
from util.output_files import atomic_write

EXPECTED = "--resume takes a checkpoint-<epoch>.pth this framework wrote"
SAME_RUN = "resume with the --model and --model_kwargs of the run that wrote it"
FINETUNE_HINT = ", or start from its weights with --finetune"


def save_checkpoint(path: str, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (``util.output_files.atomic_write``: temp file, fsync, rename). A
    full disk is one line saying which checkpoint is still intact (torch.save buries the OS error in a page of
    C++)."""
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except BaseException as err:
        if _disk_full(err):
            folder = os.path.dirname(os.path.abspath(path))
            raise UsageError(f"No space left on device while writing {path}; {previous_checkpoint_note(folder)}: "
                             "free some space, then resume with --auto_resume") from err
        raise


def _disk_full(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it was raised from is the OS saying the disk (or the quota) is full."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def previous_checkpoint_note(output_dir: str) -> str:
    """The clause "the previous checkpoint <path> is intact", for messages about a checkpoint not written."""
    previous = latest_checkpoint(output_dir) or latest_checkpoint(output_dir, ".dcp")
    return f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was written"


def check_finite_weights(model: nn.Module, epoch: int, output_dir: str) -> None:
    """Refuse to save diverged weights: NaN, infinite, or so large that their norm overflows (max |w| 3e37 is
    finite but garbage). One norm on the device and one host sync per save, nothing per step."""
    tensors = [t.detach() for t in model.state_dict().values() if t.is_floating_point()]
    norm = torch.nn.utils.get_total_norm(tensors)
    if isinstance(norm, DTensor):  # --fsdp: each process holds slices; the norm of the whole weights
        norm = norm.full_tensor()
    if not torch.isfinite(norm):
        raise UsageError(f"the weights after epoch {epoch} are not finite (norm {norm.item()}): training diverged, "
                         f"so no checkpoint was written and {previous_checkpoint_note(output_dir)}; resume from it "
                         "with a lower --blr (or --lr) or with --clip_grad")


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as plain Python values: weights_only-safe, and
    gatherable across processes with ``all_gather_object``."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state().tolist(), "python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _numbered_checkpoints(output_dir: str, suffix: str = ".pth") -> list[tuple[int, float, str]]:
    """(epoch, batches done, path) of each ``checkpoint-<epoch><suffix>`` (an epoch done: inf batches) and each
    ``checkpoint-<epoch>-batch<k><suffix>`` (saved at a stop, ``k`` batches into the epoch) in ``output_dir``.
    ``suffix``: ``.pth`` (files) or ``.dcp`` (the folders ``--fsdp`` writes)."""
    found = []
    for path in glob.glob(os.path.join(output_dir, f"checkpoint-*{suffix}")):
        match = re.fullmatch(rf"checkpoint-(\d+)(?:-batch(\d+))?{re.escape(suffix)}", os.path.basename(path))
        if match:
            found.append((int(match.group(1)), float(match.group(2) or "inf"), path))
    return found


def checkpoints_newest_first(output_dir: str, suffix: str = ".pth") -> list[str]:
    """The checkpoints of ``output_dir`` a run can continue from, the furthest in training first."""
    return [path for *_, path in sorted(_numbered_checkpoints(output_dir, suffix), reverse=True)]


def remove_partial_checkpoints(output_dir: str, epoch: int, suffix: str = ".pth") -> None:
    """Delete the checkpoints saved at a stop part-way through ``epoch`` or before: one at its end supersedes them."""
    for done_epoch, batches, path in _numbered_checkpoints(output_dir, suffix):
        if batches != float("inf") and done_epoch <= epoch:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)


def latest_checkpoint(output_dir: str, suffix: str = ".pth") -> str | None:
    """The newest checkpoint in ``output_dir`` (``--auto_resume``), or None."""
    return next(iter(checkpoints_newest_first(output_dir, suffix)), None)


def save_training_state(output_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None, epoch: int, step: int, args: dict[str, Any],
                        name: str | None = None, **extra) -> None:
    """Every process contributes its RNG state; the main process writes ``checkpoint-<epoch>.pth``
    (or ``name``) holding model, optimizer, scaler, epoch, step, ``args`` (the run's settings, stored as
    plain JSON values so that ``weights_only`` loading reads them) and RNG states. Diverged weights are
    never written (``check_finite_weights``: every process has the same weights, so all stop alike)."""
    check_finite_weights(model, epoch, output_dir)
    world_size = dist_util.get_world_size()
    rng = rng_state()
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, rng)
        rng = gathered
    if dist_util.is_main_process():
        save_checkpoint(os.path.join(output_dir, name or f"checkpoint-{epoch}.pth"), {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None, "epoch": epoch, "step": step,
            "args": json.loads(json.dumps(args, default=str)), "rng": rng, "world_size": world_size,
            **extra})
    dist_util.barrier()


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: keys missing from / unexpected in the checkpoint, resized and
    shape-mismatched (dropped) keys."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        for name, keys in vars(self).items():
            if keys:
                shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
                parts.append(f"{name} ({len(keys)}): {shown}")
        return "loaded all keys" if not parts else "; ".join(parts)


def _grids_with_extra(rows_a: int, rows_b: int) -> tuple[int, int, int] | None:
    """Find E in (1, 0) such that both rows - E are perfect squares: (E, side_a, side_b)."""
    for extra in (1, 0):
        side_a, side_b = int(round((rows_a - extra) ** 0.5)), int(round((rows_b - extra) ** 0.5))
        if side_a ** 2 == rows_a - extra and side_b ** 2 == rows_b - extra:
            return extra, side_a, side_b
    return None


def load_pretrained(model: nn.Module, path_or_state_dict: str | dict[str, Any],
                    allow_missing: Iterable[str] = ()) -> LoadReport:
    """Load our or an official checkpoint into ``model`` and report what did not match.

    The model may define ``checkpoint_filter_fn(state_dict) -> state_dict`` to adapt foreign key names
    (as in timm). Position embeddings (keys ending in ``pos_embed``) of another grid are resized
    bicubically, extra (cls) tokens kept; other keys of another shape are dropped and reported. Raises
    ``UsageError`` if any key of the model is missing unless it matches an ``allow_missing`` pattern.
    """
    checkpoint = load_file(path_or_state_dict) if isinstance(path_or_state_dict, str) else path_or_state_dict
    state_dict = extract_state_dict(checkpoint)
    if hasattr(model, "checkpoint_filter_fn"):
        state_dict = model.checkpoint_filter_fn(state_dict)
    own = model.state_dict()
    report = LoadReport()
    for key in list(state_dict):
        if key not in own or state_dict[key].shape == own[key].shape:
            continue
        value, want = state_dict[key], own[key]
        grids = _grids_with_extra(value.shape[1], want.shape[1]) if value.dim() == 3 == want.dim() else None
        if key.endswith("pos_embed") and grids and value.shape[-1] == want.shape[-1]:
            state_dict[key] = resize_pos_embed(value, (grids[2], grids[2]), grids[0])
            report.resized.append(key)
        else:
            del state_dict[key]
            report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(want.shape)}")
    model.load_state_dict(state_dict, strict=False)
    # compared on the names state_dict() shows (flat for composed models), not the module paths
    report.unexpected = [k for k in state_dict if k not in own]
    report.missing = [k for k in own if k not in state_dict]
    allow = list(allow_missing)
    fatal = [k for k in report.missing if not any(fnmatch.fnmatch(k, pattern) for pattern in allow)]
    if fatal:
        shown = ", ".join(fatal[:5]) + (f" and {len(fatal) - 5} more" if len(fatal) > 5 else "")
        raise UsageError(f"checkpoint is missing {len(fatal)} weights of this model ({shown}): "
                         "is it a checkpoint of the same architecture?")
    return report


def read_checkpoint(path: str, fallbacks: Sequence[str] = (),
                    read: Callable[[str], Any] = load_file) -> tuple[str, Any]:
    """(path, ``read(path)``), or when it cannot be read (a ``UsageError``) of the first readable of ``fallbacks``
    (the older checkpoints ``--auto_resume`` may fall back on), with a warning naming each unreadable one.
    ``read``: a file's contents, or (``util.fsdp``) a sharded checkpoint folder's."""
    for candidate, older in zip([path, *fallbacks], [*fallbacks, None]):
        try:
            return candidate, read(candidate)
        except UsageError as err:
            if not fallbacks:
                raise
            if dist_util.is_main_process():
                print(f"warning: {err}; " + (f"falling back to {older}" if older else "no older checkpoint is left"))
    raise UsageError(f"none of the {len(fallbacks) + 1} checkpoints --auto_resume found can be read: remove them "
                     "to start afresh, or pass --resume a good one")


def check_resumable(path: str, ckpt: Any, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    can_finetune: bool) -> None:
    """Raise a one-line ``UsageError`` unless ``ckpt`` holds weights for exactly ``model`` (and, when given, an
    optimizer state for ``optimizer``'s parameters). ``can_finetune``: the CLI has ``--finetune``, the flag for
    starting from weights that are not a run of its own."""
    hint = SAME_RUN + (FINETUNE_HINT if can_finetune else "")
    if not isinstance(ckpt, dict):
        shape = f" of shape {tuple(ckpt.shape)}" if isinstance(ckpt, torch.Tensor) else ""
        raise UsageError(f"{path} holds a {type(ckpt).__name__}{shape}, not a training checkpoint: {EXPECTED}")
    state = ckpt.get("model")
    if not isinstance(state, dict):
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise UsageError(f"{path} holds bare weights (a state dict of {len(ckpt)} tensors), not a training "
                             f"checkpoint: {EXPECTED}" + (FINETUNE_HINT if can_finetune else ""))
        raise UsageError(f"{path} has no 'model' entry (it has {', '.join(map(str, ckpt)) or 'nothing'}), so it is "
                         f"not a training checkpoint: {EXPECTED}")
    report = compare_weights(state, model.state_dict())
    if str(report) != "loaded all keys":
        saved = saved_model(ckpt)
        if can_finetune and _is_pretraining(ckpt):
            raise UsageError(f"{path} is a pretraining checkpoint ({saved}), not one of a classifier: start "
                             f"from its weights with --finetune {path}")
        raise UsageError(f"{path} holds weights of another model ({saved}; {report}): {hint}")
    if optimizer is not None and ckpt.get("optimizer"):
        _check_optimizer(path, ckpt["optimizer"], optimizer)


def compare_weights(saved: dict[str, Any], own: dict[str, torch.Tensor]) -> LoadReport:
    """Keys of ``own`` missing from ``saved``, keys of ``saved`` not in ``own``, and shapes that differ."""
    return LoadReport(
        missing=[k for k in own if k not in saved], unexpected=[k for k in saved if k not in own],
        mismatched=[f"{k} {tuple(saved[k].shape)}->{tuple(v.shape)}" for k, v in own.items()
                    if isinstance(saved.get(k), torch.Tensor) and saved[k].shape != v.shape])


def _args(ckpt: dict) -> dict:
    args = ckpt.get("args")
    return args if isinstance(args, dict) else vars(args) if args is not None else {}


def saved_model(ckpt: dict) -> str:
    """"saved by --model X --model_kwargs ..." from a checkpoint's recorded args."""
    args = _args(ckpt)
    if "model" not in args:
        return "saved by an unknown command"
    kwargs = " ".join(args.get("model_kwargs") or ())
    return f"saved by --model {args['model']}" + (f" --model_kwargs {kwargs}" if kwargs else "")


def _is_pretraining(ckpt: dict) -> bool:
    # ours record main_pretrain's flags, the official MAE-family ones their Namespace; both have mask_ratio
    return "mask_ratio" in _args(ckpt)


def _check_optimizer(path: str, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """The saved optimizer must have this optimizer's parameter groups and, for each parameter, state of its
    shape: ``Optimizer.load_state_dict`` checks only the group sizes, and a wrong shape fails steps later."""
    sizes = [len(group["params"]) for group in saved.get("param_groups", [])]
    own = [len(group["params"]) for group in optimizer.param_groups]
    problem = None if sizes == own else (f"{len(sizes)} parameter groups of {sum(sizes)} tensors where this run's "
                                         f"has {len(own)} of {sum(own)}")
    for group, own_group in zip(saved.get("param_groups", []) if problem is None else [], optimizer.param_groups):
        for key, param in zip(group["params"], own_group["params"]):
            for name, value in saved.get("state", {}).get(key, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    problem = f"'{name}' of shape {tuple(value.shape)} for a parameter of shape {tuple(param.shape)}"
    if problem:
        raise UsageError(f"{path} holds an optimizer state of another shape ({problem}): {SAME_RUN} and "
                         "its optimizer flags (--layer_decay, --weight_decay)")


def restore(ckpt: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None,
            scaler: torch.amp.GradScaler | None) -> None:
    """Restore a checked checkpoint exactly: weights (strict), optimizer, scaler, and this process's RNG states
    when the world size is unchanged."""
    model.load_state_dict(ckpt["model"], strict=True)
    if optimizer is not None and ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng")
    if rng is not None and ckpt.get("world_size", 1) == dist_util.get_world_size():
        set_rng_state(rng[dist_util.get_rank()] if isinstance(rng, list) else rng)


def batch_change_note(path: str, ckpt: dict[str, Any], now: Mapping[str, Any]) -> str | None:
    """A warning line when this run's effective batch or LR (``now``: ``Trainer.derived``) differs from the
    checkpoint's run (another --batch_size, --accum_iter, world size or LR flag): its steps per epoch and LR
    schedule change from here on."""
    then, keys = _args(ckpt), ("eff_batch", "lr")
    if not all(k in then and k in now for k in keys) or all(then[k] == now[k] for k in keys):
        return None
    return (f"warning: {path} was trained with effective batch {then['eff_batch']:g} and lr {then['lr']:.3e}, "
            f"this run uses {now['eff_batch']:g} and {now['lr']:.3e}: its steps per epoch and LR schedule "
            "change from here on")
