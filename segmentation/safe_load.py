"""Keep every checkpoint load inside mmengine safe (``torch.load(weights_only=True)``) and whole.

onedl-mmengine first tries ``weights_only=True`` with an allow-list, then, when the file holds anything else
(our and the official MAE-family checkpoints hold an ``argparse.Namespace``), falls back to
``weights_only=False``: unpickling arbitrary code. :func:`install` replaces that loader with one that never
falls back: the allow-list is mmengine's own (numpy arrays and scalars, its ``HistoryBuffer``) plus
``argparse.Namespace``, and anything else is refused with one sentence.

mmengine's Runner also loads ``load_from`` and ``resume`` checkpoints non-strict: a file whose keys do not fit
the model (a pretraining checkpoint given to ``test.py``) loads nothing, logs a warning pages up, and the run
goes on with random weights. :func:`install` makes the Runner refuse such a file in one line that names the
missing and unexpected key prefixes. Nothing here is specific to segmentation: any mm* task's Runner is covered.
"""
import argparse
import functools
import pickle
import re
from collections.abc import Mapping
from typing import Iterable

import torch
from mmengine.runner import Runner
from mmengine.runner import checkpoint as mmengine_checkpoint
from mmengine.runner import runner as mmengine_runner
from torch import nn

from base.errors import UsageError

SHOWN = 6  # prefixes named in a refusal; the rest are counted


class CheckpointMismatch(UsageError):
    """A checkpoint whose keys or shapes do not fit the model it is loaded into (said without the file name,
    which the Runner's ``load_checkpoint`` adds)."""


def weights_only_load(file, map_location=None, weights_only=None):
    """mmengine's ``_safe_torch_load`` without the unsafe fallback (``weights_only`` is always True)."""
    allowed = mmengine_checkpoint.get_torch_safe_globals() + [argparse.Namespace]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(f"refusing to load {file!r}: it stores Python objects that are not loaded for safety "
                         f"({str(err).splitlines()[0][:200]})") from err


def key_prefixes(keys: Iterable[str], others: Iterable[str]) -> list[str]:
    """The shortest dotted prefixes of ``keys`` that no key of ``others`` shares, block numbers as ``*``:
    ``["decoder.0.w", "decoder.1.w", "model"]`` against ``["encoder.w"]`` -> ``["decoder", "model"]``."""
    taken = {".".join(parts[:i]) for parts in (k.split(".") for k in others) for i in range(1, len(parts) + 1)}
    prefixes = []
    for key in keys:
        parts = key.split(".")
        depth = next((i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in taken), len(parts))
        prefix = ".".join("*" if part.isdigit() else part for part in parts[:depth])
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _named(what: str, keys: list[str], prefixes: list[str]) -> str:
    """``what`` with ``{n}`` the number of ``keys``, then the first prefixes: "missing 3 keys (a, b)"."""
    shown = ", ".join(prefixes[:SHOWN]) + (f" and {len(prefixes) - SHOWN} more" if len(prefixes) > SHOWN else "")
    return what.format(n=f"{len(keys)} key{'s' if len(keys) > 1 else ''}") + f" ({shown})"


def check_fits(model: nn.Module, checkpoint: object, revise_keys: Iterable[tuple[str, str]] = ()) -> None:
    """Raise :class:`CheckpointMismatch` unless the weights of ``checkpoint`` (its ``state_dict`` entry or the
    dict itself, keys rewritten by ``revise_keys`` regex pairs, as mmengine reads them) are exactly the
    model's: no key missing (BN's ``num_batches_tracked`` aside, as mmengine ignores it), none unexpected,
    no shape changed."""
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatch(f"holds a {type(state_dict).__name__}, not the weights of a model")
    for pattern, replacement in revise_keys:
        state_dict = {re.sub(pattern, replacement, k): v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [k for k in own if k in state_dict and getattr(state_dict[k], "shape", None) != own[k].shape]
    if not (missing or unexpected or reshaped):
        return
    matched = [k for k in own if k in state_dict]
    parts = []
    if missing:
        parts.append(_named("missing {n}", missing, key_prefixes(missing, matched)))
    if unexpected:
        parts.append(_named("unexpected {n}", unexpected, key_prefixes(unexpected, matched)))
    if reshaped:
        parts.append(_named("{n} of another shape", reshaped, [
            f"{k} {tuple(getattr(state_dict[k], 'shape', ()))} for {tuple(own[k].shape)}" for k in reshaped]))
    if "state_dict" not in checkpoint and isinstance(checkpoint.get("model"), Mapping):
        hint = ("it holds a 'model' entry, as pretraining and fine-tuning checkpoints do: give encoder weights "
                "to train.py --pretrained")
    else:
        hint = "was it written with this config?"
    raise CheckpointMismatch(f"does not fit the model: {'; '.join(parts)}; {hint}")


def _checked_load_checkpoint_to_model(load):
    """mmengine's ``_load_checkpoint_to_model`` behind :func:`check_fits`."""
    @functools.wraps(load)
    def checked(model, checkpoint, strict=False, logger=None, revise_keys=((r"^module\.", ""),)):
        check_fits(model, checkpoint, revise_keys)
        return load(model, checkpoint, strict, logger=logger, revise_keys=list(revise_keys))
    checked.checks_fit = True
    return checked


def _naming_load_checkpoint(load_checkpoint):
    """``Runner.load_checkpoint`` (``load_from`` and ``resume``) naming the file in a refusal."""
    @functools.wraps(load_checkpoint)
    def named(self, filename, *args, **kwargs):
        try:
            return load_checkpoint(self, filename, *args, **kwargs)
        except CheckpointMismatch as err:
            raise UsageError(f"checkpoint {filename} {err}") from err
    named.names_file = True
    return named


def install() -> None:
    """Route mmengine's checkpoint loading (``load_from``, ``resume``, ``init_cfg``) through
    :func:`weights_only_load`, and the Runner's (``load_from``, ``resume``) through :func:`check_fits`.
    ``init_cfg=Pretrained`` stays non-strict: it loads parts of models on purpose."""
    mmengine_checkpoint._safe_torch_load = weights_only_load
    if not getattr(mmengine_runner._load_checkpoint_to_model, "checks_fit", False):
        mmengine_runner._load_checkpoint_to_model = _checked_load_checkpoint_to_model(
            mmengine_runner._load_checkpoint_to_model)
    if not getattr(Runner.load_checkpoint, "names_file", False):
        Runner.load_checkpoint = _naming_load_checkpoint(Runner.load_checkpoint)
