"""Keep every checkpoint load inside mmengine on ``torch.load(weights_only=True)``.

onedl-mmengine first tries ``weights_only=True`` with an allow-list, then, when the file holds anything else
(our and the official MAE-family checkpoints hold an ``argparse.Namespace``), falls back to
``weights_only=False``: unpickling arbitrary code. :func:`install` replaces that loader with one that never
falls back: the allow-list is mmengine's own (numpy arrays and scalars, its ``HistoryBuffer``) plus
``argparse.Namespace``, and anything else is refused with one sentence.
"""
import argparse
import pickle

import torch
from mmengine.runner import checkpoint as mmengine_checkpoint

from base.errors import UsageError


def weights_only_load(file, map_location=None, weights_only=None):
    """mmengine's ``_safe_torch_load`` without the unsafe fallback (``weights_only`` is always True)."""
    allowed = mmengine_checkpoint.get_torch_safe_globals() + [argparse.Namespace]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(f"refusing to load {file!r}: it stores Python objects that are not loaded for safety "
                         f"({str(err).splitlines()[0][:200]})") from err


def install() -> None:
    """Route mmengine's checkpoint loading (``load_from``, ``resume``, ``init_cfg``) through
    :func:`weights_only_load`."""
    mmengine_checkpoint._safe_torch_load = weights_only_load
