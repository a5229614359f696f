"""What ``train.py`` and ``test.py`` share: the flags, a config with them applied and checked, a Runner built
from it, and the one-line errors. Nothing here is specific to segmentation: an mm* detection entry point uses
the same functions (the data paths are mmengine ``BaseDataset``'s ``data_root``/``data_prefix``/``ann_file``).
"""
import argparse
import contextlib
import difflib
import inspect
import logging
import numbers
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Callable, Sequence

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from base.errors import UsageError
from util import distributed as dist_util
from util.runtime import usage_message

# top-level config keys the Runner reads besides its arguments (mmengine 0.10); any other top-level name is a
# variable of the config file, substituted when the file was read
RUNNER_EXTRA_KEYS = ("model_wrapper_cfg", "sync_bn", "find_unused_parameters", "activation_checkpointing",
                     "efficient_conv_bn_eval", "compile")
_MISSING = object()
QUOTES = "'\"`"


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="an mmseg or mmdet config (segmentation/configs/, detection/configs/)")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    p.add_argument("--data-root", help="the ADEChallengeData2016 or COCO folder (default: the config's data_root)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys, key=value")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                   help="pytorch under torchrun")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace, loaders: Sequence[str]) -> Config:
    """The config with the command line applied: ``--cfg-options`` checked (:func:`merge_options`) and the
    data folders of ``loaders`` (e.g. ``("train_dataloader", "val_dataloader")``) checked
    (:func:`check_data_paths`); one-line errors for all of it."""
    if not os.path.isfile(args.config):
        raise UsageError(f"config {args.config!r} does not exist; see segmentation/configs/")
    cfg = Config.fromfile(args.config)
    merge_options(cfg, args.cfg_options or {})
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or os.path.join("work_dirs", Path(args.config).stem)
    if args.data_root:
        if not os.path.isdir(args.data_root):
            raise UsageError(f"--data-root {args.data_root!r} does not exist")
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            for dataset in _datasets(cfg.get(loader)):
                dataset.data_root = args.data_root
    check_data_paths(cfg, loaders)
    return cfg


def _lookup(node: object, parts: Sequence[str]) -> object:
    """The value at a dotted path (list items by index, as ``merge_from_dict`` takes them), or ``_MISSING``."""
    for part in parts:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _kind(value: object) -> str | None:
    """What a config value is, for comparing an override with the value it replaces (None: not compared)."""
    for kind, types in (("a boolean", bool), ("a number", numbers.Real), ("a string", str),
                        ("a list", (list, tuple)), ("a dict", Mapping)):
        if isinstance(value, types):
            return kind
    return None


def runner_keys() -> set[str]:
    """The top-level config keys a Runner reads."""
    return set(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"} | set(RUNNER_EXTRA_KEYS)


def merge_options(cfg: Config, options: Mapping[str, object]) -> None:
    """Merge ``--cfg-options`` into ``cfg``, refusing in one line an override of another kind than the value it
    replaces (``train_cfg.max_iters=abc``), a top-level key the Runner does not read (a typo, or a variable of the
    config file such as ``data_root``, already substituted where the file uses it), and a path that does not
    merge. Keys no class takes are caught when the Runner is built (:func:`build_runner`)."""
    known = runner_keys()
    for key, value in options.items():
        parts = key.split(".")
        if parts[0] not in known:
            if parts[0] in cfg:
                raise UsageError(f"--cfg-options {key}: {parts[0]!r} is a variable of the config file, substituted "
                                 "where the file uses it when it was read, so overriding it changes nothing; "
                                 "override the keys that use it (the data folder: --data-root)")
            close = difflib.get_close_matches(parts[0], sorted(known | set(cfg)), n=1)
            raise UsageError(f"--cfg-options {key}: the config has no {parts[0]!r} and the runner reads no such key"
                             + (f"; did you mean {close[0]}?" if close else ""))
        old = _lookup(cfg.to_dict(), parts)
        if old is not _MISSING and None not in (_kind(old), _kind(value)) and _kind(old) != _kind(value):
            raise UsageError(f"--cfg-options {key}={value!r}: the config's value is {_kind(old)} ({old!r}), "
                             f"not {_kind(value)}")
    try:
        cfg.merge_from_dict(dict(options))
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise UsageError(f"--cfg-options does not merge into the config: {err}") from err


def _datasets(spec: object) -> Iterator[Mapping]:
    """The dataset dicts of a data loader's config, through wrappers (``dataset=``, ``datasets=[...]``)."""
    if not isinstance(spec, Mapping):
        return
    inner = spec.get("dataset", spec.get("datasets"))
    if inner is None:
        yield spec
        return
    for item in inner if isinstance(inner, (list, tuple)) else [inner]:
        yield from _datasets(item)


def check_data_paths(cfg: Config, loaders: Sequence[str]) -> None:
    """The folders and files the datasets of ``loaders`` list at build time (``data_root``, each
    ``data_prefix`` entry and ``ann_file`` below it) exist; otherwise one line naming the path."""
    for loader in loaders:
        for dataset in _datasets(cfg.get(loader)):
            root = dataset.get("data_root") or ""
            if root and not os.path.isdir(root):
                raise UsageError(f"the data root {root!r} ({loader}) does not exist: pass --data-root with the "
                                 "dataset's folder")
            prefixes = dataset.get("data_prefix") or {}
            named = [(f"data_prefix.{k}", v) for k, v in prefixes.items()] + [("ann_file", dataset.get("ann_file"))]
            for name, sub in named:
                if isinstance(sub, str) and sub and not os.path.exists(os.path.join(root, sub)):
                    raise UsageError(f"{os.path.join(root, sub)!r} ({loader} {name}) does not exist: is "
                                     f"{root or '.'!r} the dataset's top folder (--data-root)?")


def _paths_to(node: object, key: str, path: str = "") -> Iterator[str]:
    """Dotted paths of every dict entry named ``key`` in a config."""
    if isinstance(node, Mapping):
        for name, value in node.items():
            here = f"{path}.{name}" if path else str(name)
            if name == key:
                yield here
            yield from _paths_to(value, key, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _paths_to(value, key, f"{path}.{i}")


def _unknown_key(err: Exception, cfg: Config, options: Mapping[str, object]) -> str | None:
    """One sentence for a build failing on a config key no class takes (a ``TypeError: unexpected keyword
    argument``, or our models' ``UsageError: ... does not take``), or None for any other error."""
    found = re.search(r"unexpected keyword argument '(\w+)'|does not take (\w+)", str(err))
    if not found:
        return None
    name, tree = found[1] or found[2], cfg.to_dict()
    paths = [k for k in options if k.split(".")[-1] == name] or list(_paths_to(tree, name))
    owner = re.findall(r"(\w+)\.__init__\(\)", str(err)) or re.findall(r"class `(\w+)`", str(err)) or ["its class"]
    what = str(err) if isinstance(err, UsageError) else f"{owner[-1]} takes no {name!r}"
    if not paths:
        return f"the config's {owner[-1]} takes no {name!r}: {err}"
    where = ("--cfg-options " if paths[0] in options else "config key ") + paths[0]
    siblings = _lookup(tree, paths[0].split(".")[:-1])
    close = difflib.get_close_matches(name, [k for k in siblings if k != name], n=1) \
        if isinstance(siblings, Mapping) else []
    return f"{where}: {what}" + (f"; did you mean {close[0]}?" if close else "")


@contextlib.contextmanager
def config_errors(cfg: Config, options: Mapping[str, object]) -> Iterator[None]:
    """Turn the errors mmengine raises while building from a bad config into one line: a key no class takes
    (``TypeError: unexpected keyword argument``; an encoder option a model does not take, named with the key)
    and a ``type`` no registry holds."""
    try:
        yield
    except (TypeError, UsageError) as err:
        message = _unknown_key(err, cfg, options)
        if message is None:
            raise
        raise UsageError(message) from err
    except KeyError as err:
        found = re.search(r"(\S+) is not in the (\S+) registry", str(err))
        if not found:
            raise
        raise UsageError(f"the config's type {found[1].strip(QUOTES)} is not in the {found[2]} registry: check its "
                         "spelling, and that custom_imports imports the module that registers it") from err


def build_runner(cfg: Config, loops: Sequence[str] = (), options: Mapping[str, object] | None = None) -> Runner:
    """The mmengine Runner, with its ``loops`` (``"train"``, ``"val"``, ``"test"``) and their data loaders built
    now, so a bad config key or dataset fails here in one line (:func:`config_errors`), before any weight is
    initialized or loaded. Importing this package registers our backbone and constructor."""
    with config_errors(cfg, options or {}):
        runner = Runner.from_cfg(cfg)
        for loop in loops:
            getattr(runner, f"{loop}_loop")
    return runner


def _uses_type(node: object, name: str) -> bool:
    if isinstance(node, Mapping):
        return node.get("type") == name or any(_uses_type(v, name) for v in node.values())
    return isinstance(node, (list, tuple)) and any(_uses_type(v, name) for v in node)


def batch_report(cfg: Config, world_size: int) -> tuple[str, bool]:
    """(a line saying the effective batch, whether it is a warning): a warning when the batch differs from the
    one the config's learning rate and schedule are for (``auto_scale_lr.base_batch_size``), unless
    ``auto_scale_lr.enable`` scales the learning rate to it."""
    per_process = cfg.train_dataloader.batch_size
    batch = world_size * per_process
    line = f"effective batch {batch} ({world_size} process{'es' if world_size > 1 else ''} x {per_process})"
    scaling = cfg.get("auto_scale_lr") or {}
    base = scaling.get("base_batch_size")
    if base is None or base == batch:
        return line + ("" if base is None else ", the batch the config is for"), False
    if scaling.get("enable"):
        return line + f": the learning rate is scaled by {batch}/{base} (--auto-scale-lr)", False
    sync_bn = " and SyncBN becomes BN over each process's images" if world_size == 1 and _uses_type(
        cfg.model, "SyncBN") else ""
    return (line + f" differs from the batch {base} the config's learning rate and iterations are for{sync_bn}: "
            f"run {max(base // per_process, 1)} processes, or pass --auto-scale-lr to scale the learning rate "
            f"by {batch}/{base}"), True


def report_batch(runner: Runner) -> None:
    """Log :func:`batch_report` for the built runner (a warning when the batch is not the config's)."""
    line, warn = batch_report(runner.cfg, runner.world_size)
    print_log(line, logger="current", level=logging.WARNING if warn else logging.INFO)


def run(main: Callable[[argparse.Namespace], object], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run ``main``; the exit status. A ``UsageError`` and an
    ``OSError`` on a path (a work dir that cannot be made, a file that cannot be read or written) are one line
    on stderr and status 2, no traceback; the process group is left in any case."""
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        main(args)
    except (UsageError, OSError) as err:
        message = usage_message(err)
        if message is None:
            raise
    else:
        return 0
    finally:
        dist_util.cleanup()
    print(f"error: {message}", file=sys.stderr)
    return 2
