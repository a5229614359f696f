"""How a setting is declared once: a dataclass field whose metadata says how it is written on a command line.

``setting(default, help=..., type=...)`` is a ``dataclasses.field`` carrying a :class:`Flag`; ``util.flags``
generates the argparse parser of a config from its fields. :class:`Range` is the value type of every numeric
flag: argparse checks it while parsing, before any model or data exists. The models declare their method options
this way too (``models.recipe_options``), which is why this lives at the bottom layer.
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Range:
    """A flag type: ``kind`` (int or float) from ``low`` to ``high`` (None: unbounded), ends excluded where
    ``*_open``. NaN and infinities are refused too: no flag means anything by them."""

    kind: type
    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """The values it takes, in words: "a positive integer", "a number in (0, 1)"."""
        noun = "an integer" if self.kind is int else "a number"
        show = (lambda v: str(int(v))) if self.kind is int else (lambda v: f"{v:g}")
        if self.high is not None:
            return (f"{noun} in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if (self.low == 0 and self.low_open) or (self.kind is int and self.low == 1 and not self.low_open):
            return f"a positive {noun.split()[-1]}"
        return f"{noun} {'>' if self.low_open else '>='} {show(self.low)}"

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not self._within(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}")
        return value

    def _within(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below


POSITIVE_INT = Range(int, 1)
NON_NEGATIVE_INT = Range(int, 0)
SEED = Range(int, 0, 2 ** 31 - 1)  # numpy takes seeds below 2**32, and each process adds its rank
POSITIVE = Range(float, 0, low_open=True)
NON_NEGATIVE = Range(float, 0)
PROBABILITY = Range(float, 0, 1)
OPEN_FRACTION = Range(float, 0, 1, low_open=True, high_open=True)  # a mask ratio: something masked, something kept
FRACTION_BELOW_ONE = Range(float, 0, 1, high_open=True)  # drop rates, smoothing: 1 would remove everything
POSITIVE_FRACTION = Range(float, 0, 1, low_open=True)  # crop scale, layer decay: 0 would remove everything


@dataclass(frozen=True)
class Group:
    """A section of ``--help``: its title and one line saying what its flags are for."""

    title: str
    description: str | None = None


@dataclass(frozen=True)
class Flag:
    """The command-line form of one setting. ``names``: its option strings (default ``--<field name>``);
    ``switch``: a flag without a value that turns the setting on (``store_true``), and ``negation`` the one
    that turns it off (``--no_pin_mem``, ``--cls_token``; its help ``negation_help``); ``type``: what parses a
    value (a :class:`Range` for numbers; None: the text); ``nargs``: several values (kept as a tuple by the
    configs); ``group``: its section of ``--help``."""

    help: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence | None = None
    nargs: int | str | None = None
    metavar: str | tuple[str, ...] | None = None
    switch: bool = False
    negation: str | None = None
    negation_help: str | None = None
    names: tuple[str, ...] = ()
    group: Group | None = None


FLAG = "flag"  # the key of a setting's Flag in its field's metadata


def setting(default: Any = dataclasses.MISSING, **flag: Any) -> Any:
    """A config field that is also a flag: ``default`` (none: each CLI gives its own, see ``util.config``) and
    the :class:`Flag` keywords."""
    return dataclasses.field(default=default, metadata={FLAG: Flag(**flag)})


def flag_of(field: dataclasses.Field) -> Flag | None:
    """The :class:`Flag` of a config field, None for a field that is no flag."""
    return field.metadata.get(FLAG)
