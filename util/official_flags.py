"""The official flags that are not flags of ours, in one table: each is taken with its official meaning where it
maps onto ours, else with one printed line saying it does nothing here, and why (PRETRAIN.md, "Official flags").

MAE's distributed flags and the launcher's ``--local-rank`` on every CLI; UM-MAE's and DeepMIM's pretraining flags
on ``main_pretrain.py``. A flag that ``sets`` a config field takes that field's default; the others are not config
fields (``--bf16`` means ``--amp bf16``; DeepMIM's three never did anything) and stay only in the record of the
flags as given.
"""
import argparse
import os
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from base.errors import UsageError
from base.settings import NON_NEGATIVE_INT, POSITIVE_INT, Flag, Group
from util.flags import add_flag

SECTION = Group("official flags", "accepted for the official commands (PRETRAIN.md, FINETUNE.md)")
EVERY_CLI, PRETRAINING = ("pretrain", "classify"), ("pretrain",)  # the CLIs' tasks (models.registry.TASKS)


def _bf16_is_amp_bf16(args: argparse.Namespace) -> dict[str, Any]:
    if args.amp not in (None, "bf16"):
        raise UsageError(f"--bf16 asks for bf16 autocast but --amp is {args.amp}: pass one of them")
    return {"amp": "bf16"}


@dataclass(frozen=True)
class OfficialFlag:
    """One official flag: its option strings, its parsing (``flag``), the CLIs that take it (by
    task) and what it does here: ``sets`` a config field of ours, ``means`` other config values when given
    (computed from all the flags), or, with ``no_effect`` (why), nothing."""

    names: tuple[str, ...]
    flag: Flag
    tasks: tuple[str, ...] = EVERY_CLI
    sets: str | None = None
    means: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    no_effect: str | None = None

    @property
    def dest(self) -> str:
        return self.sets or self.names[0].lstrip("-").replace("-", "_")


DEEPMIM_UNUSED = "as in the official DeepMIM code, which parses and never reads them (the CLIP teacher is --clip_path)"

OFFICIAL_FLAGS = (
    # MAE's util/misc.init_distributed_mode (util.distributed.LaunchFlags)
    OfficialFlag(("--world_size",), Flag(type=POSITIVE_INT, help="number of processes: checked against the "
                                         "launcher's (srun: starts the group with it)"), sets="world_size"),
    OfficialFlag(("--dist_url",), Flag(help="process-group init method, e.g. tcp://host:port"), sets="dist_url"),
    OfficialFlag(("--dist_on_itp",), Flag(switch=True, help="processes from OpenMPI's OMPI_COMM_WORLD_* variables"),
                 sets="dist_on_itp"),
    # passed by python -m torch.distributed.launch (the older spelling by older versions)
    OfficialFlag(("--local-rank", "--local_rank"), Flag(type=NON_NEGATIVE_INT,
                                                        help="set by python -m torch.distributed.launch"),
                 sets="local_rank"),
    # UM-MAE's main_pretrain.py
    OfficialFlag(("--bf16",), Flag(switch=True, help="UM-MAE: bf16 autocast, the same as --amp bf16"), PRETRAINING,
                 means=_bf16_is_amp_bf16),
    OfficialFlag(("--load_from",), Flag(help="UM-MAE: start from these weights (every key must match); a resumed run "
                                             "ignores it"), PRETRAINING, sets="load_from"),
    # DeepMIM's main_pretrain.py defines these and never reads them
    *(OfficialFlag((name,), Flag(help="DeepMIM: parsed and never read by the official code; no effect"), PRETRAINING,
                   no_effect=DEEPMIM_UNUSED) for name in ("--hybrid", "--teacher_path", "--teacher_type")),
)


def official_flags(task: str) -> list[OfficialFlag]:
    """The official flags the CLIs of ``task`` take."""
    return [official for official in OFFICIAL_FLAGS if task in official.tasks]


def add_official_flags(parser: argparse.ArgumentParser, task: str, config: type) -> None:
    """The official flags of ``task``'s CLIs, in their own ``--help`` section; one that sets a field of the
    dataclass ``config`` has that field's default."""
    section = parser.add_argument_group(SECTION.title, SECTION.description)
    defaults = {f.name: f.default for f in fields(config)}
    for official in official_flags(task):
        default = defaults[official.sets] if official.sets else (False if official.flag.switch else None)
        add_flag(section, official.dest, replace(official.flag, names=official.names), default)


def official_values(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The config values the official flags in ``args`` set; prints one line (on the first process) per reason
    for the given flags that have no effect here."""
    values: dict[str, Any] = {}
    unused: dict[str, list[str]] = {}
    for official in official_flags(task):
        value = getattr(args, official.dest)
        if official.sets:
            values[official.sets] = value
        elif value not in (None, False) and official.means:
            values |= official.means(args)
        elif value not in (None, False):
            unused.setdefault(official.no_effect, []).append(official.names[0])
    if int(os.environ.get("RANK", "0")) == 0:
        for why, names in unused.items():
            print(f"{' '.join(names)}: no effect, {why}")
    return values
