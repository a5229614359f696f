"""The CLIs' parsers, generated from their configs (each setting declared once, ``base.settings``), and the value
types of their flags: every numeric flag has a range (``base.settings.Range``), and argparse checks it while
parsing, before any model or data exists. A bad value is one line naming the flag and what it takes."""
import argparse
import dataclasses
import re
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

from base.errors import UsageError
from base.settings import (FRACTION_BELOW_ONE, NON_NEGATIVE, NON_NEGATIVE_INT, OPEN_FRACTION, POSITIVE,
                           POSITIVE_FRACTION, POSITIVE_INT, PROBABILITY, SEED, Flag, Group, Range, flag_of)

# the ranges are the flags' value types: the tools' and benchmarks' parsers take them from here too
__all__ = ["ArgumentParser", "add_flags", "add_flag", "device_name", "aa_policy", "Range", "FRACTION_BELOW_ONE",
           "NON_NEGATIVE", "NON_NEGATIVE_INT", "OPEN_FRACTION", "POSITIVE", "POSITIVE_FRACTION", "POSITIVE_INT",
           "PROBABILITY", "SEED"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are ``UsageError``s: one line, exit 2 through ``util.runtime.run_cli``, like every
    other mistake a user can fix (argparse's own prints the whole usage block first)."""

    def error(self, message: str):
        raise UsageError(message)


def add_flags(parser: argparse.ArgumentParser, config: type, defaults: Mapping[str, Any] = MappingProxyType({}),
              skip: Iterable[str] = ()) -> None:
    """One argument per field of the dataclass ``config`` that is a flag (``base.settings.setting``), in field
    order, each in its ``--help`` section (``Flag.group``, made at its first flag); ``defaults`` replace the
    fields' own (a CLI's defaults for the settings every CLI has); ``skip``: fields this CLI takes no flag for."""
    sections: dict[Group, argparse._ArgumentGroup] = {}
    for field in dataclasses.fields(config):
        flag = flag_of(field)
        if flag is None or field.name in skip:
            continue
        default = defaults.get(field.name, field.default)
        if default is dataclasses.MISSING:
            raise TypeError(f"{config.__name__}.{field.name} has no default: give it one in DEFAULTS")
        section = parser
        if flag.group is not None:
            if flag.group not in sections:
                sections[flag.group] = parser.add_argument_group(flag.group.title, flag.group.description)
            section = sections[flag.group]
        add_flag(section, field.name, flag, default)


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, dest: str, flag: Flag, default: Any) -> None:
    """The argument(s) of one setting: a switch (and its negation), or a flag taking values of ``flag.type``."""
    names = flag.names or (f"--{dest}",)
    if flag.switch:
        parser.add_argument(*names, dest=dest, action="store_true", default=default, help=flag.help)
        if flag.negation:
            parser.add_argument(flag.negation, dest=dest, action="store_false", help=flag.negation_help)
        return
    if isinstance(default, tuple):  # argparse gives several values as a list
        default = list(default)
    parser.add_argument(*names, dest=dest, default=default, type=flag.type, choices=flag.choices, nargs=flag.nargs,
                        metavar=flag.metavar, help=flag.help)


def device_name(text: str) -> str:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:<index>`` (whether a GPU is there is checked when the run starts)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:<index>, got {text!r}")
    return text


def aa_policy(text: str) -> str | None:
    """``--aa``: a timm auto-augment policy (``rand-m9-mstd0.5-inc1``, ``augmix-m5-w4-d2``, ``original``, ``v0``,
    ``3a``...), checked by timm's own parser while parsing; ``none`` turns auto-augment off (None)."""
    if text.lower() in ("none", ""):
        return None
    if text.startswith("rand"):
        build = rand_augment_transform
    elif text.startswith("augmix"):
        build = augment_and_mix_transform
    else:
        build = auto_augment_transform
    try:  # timm signals a policy it cannot read by an assertion (or a number that does not parse)
        build(text, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except (AssertionError, ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a timm auto-augment policy such as rand-m9-mstd0.5-inc1, "
                                         f"augmix-m5-w4-d2, original or v0, or none (off), got {text!r}") from None
    return text
