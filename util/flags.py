"""The value types of the CLIs' flags: every numeric flag declares its valid range here, and argparse checks it
while parsing, before any model or data exists. A bad value is one line naming the flag and what it takes."""
import argparse
import math
import re
from dataclasses import dataclass

from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

from base.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are ``UsageError``s: one line, exit 2 through ``util.runtime.run_cli``, like every
    other mistake a user can fix (argparse's own prints the whole usage block first)."""

    def error(self, message: str):
        raise UsageError(message)


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
