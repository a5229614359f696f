"""Safe loading of checkpoints: everything is read with ``torch.load(weights_only=True)``, so no arbitrary
object is ever unpickled (the MAE-family checkpoints' ``argparse.Namespace`` is the one class allowed), and
every failure is one sentence naming the file."""
import argparse
import os
import re
from typing import Any

import torch

from base.errors import UsageError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def safe_torch_load(path: str, what: str) -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True`` (``argparse.Namespace`` allowed: the
    MAE-family checkpoints store their args as one). Any failure is one ``UsageError`` line naming the file
    as ``what`` (``"checkpoint"``, ``"--clip_path"``): the unpickler's own errors are pages long."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = re.search(r"GLOBAL ([\w.]+)", str(err))
        reason = (f"it stores a Python object ({refused.group(1)}) that is not loaded for safety; "
                  "re-save only its tensors" if refused else "it is not a PyTorch checkpoint")
        raise UsageError(f"cannot load {what} {path!r}: {reason}") from err


def is_sharded_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint folder ``--fsdp`` wrote (DCP's ``.metadata`` in it; ``util.fsdp``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ".metadata"))


def load_file(path: str) -> dict[str, Any]:
    """``torch.load`` a checkpoint on the CPU with ``weights_only=True``; one-sentence errors."""
    if is_sharded_checkpoint(path):
        raise UsageError(f"{path} is a checkpoint folder --fsdp wrote: resume it with --fsdp, or convert it to a "
                         f".pth with python tools/dcp_to_plain.py {path} OUT.pth")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint {path!r} does not exist: pass the path of a .pth file")
    return safe_torch_load(path, "checkpoint")


def strip_wrapper_prefixes(key: str) -> str:
    """``key`` without its DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, which can nest in
    either order."""
    while True:
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            return key


def extract_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (``model``/``state_dict``/``module`` entry or the dict itself): its
    tensors under string keys, with DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes removed."""
    for key in ("model", "state_dict", "module"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    return {strip_wrapper_prefixes(key): value for key, value in checkpoint.items()
            if isinstance(key, str) and isinstance(value, torch.Tensor)}
