"""Resuming a run: read the checkpoint ``--resume`` names (``--auto_resume``: the newest readable one), check it
is a training checkpoint of this model and optimizer before loading anything (one line for each way it is not),
then restore it exactly."""
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from base.errors import UsageError
from base.safe_load import load_file
from util import distributed as dist_util
from util.checkpoint import LoadReport, set_rng_state

EXPECTED = "--resume takes a checkpoint-<epoch>.pth this framework wrote"
SAME_RUN = "resume with the --model and --model_kwargs of the run that wrote it"
FINETUNE_HINT = ", or start from its weights with --finetune"


def read_checkpoint(path: str, fallbacks: Sequence[str] = ()) -> tuple[str, Any]:
    """(path, contents) of ``path``, or when it cannot be read of the first readable of ``fallbacks`` (the older
    checkpoints ``--auto_resume`` may fall back on), with a warning naming each unreadable file."""
    for candidate, older in zip([path, *fallbacks], [*fallbacks, None]):
        try:
            return candidate, load_file(candidate)
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
