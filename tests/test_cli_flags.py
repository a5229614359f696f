"""Every CLI flag keeps its name and meaning: the parsers generated from the configs describe each flag as the
hand-written parsers did (tests/cli_flags.json, written from them): its option strings, destination,
default, value type, choices, number of values and help."""
import argparse
import json
from pathlib import Path

import pytest

import main_finetune
import main_linprobe
import main_pretrain
from util.flags import Range
from util.submitit_launch import cli_and_launcher_parser

GOLDEN = Path(__file__).parent / "cli_flags.json"  # not in golden/: those are the official cases
CLIS = {"main_pretrain": main_pretrain, "main_finetune": main_finetune, "main_linprobe": main_linprobe}


def _value_type(kind) -> str | None:
    if kind is None or kind is str:
        return None
    return f"range {kind.describe()}" if isinstance(kind, Range) else kind.__name__


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def describe(parser: argparse.ArgumentParser) -> dict[str, dict]:
    """Each flag (its option strings, joined) -> what argparse does with it."""
    return {" ".join(action.option_strings): {
        "dest": action.dest, "action": type(action).__name__, "default": _plain(action.default),
        "type": _value_type(action.type), "choices": _plain(action.choices), "nargs": action.nargs,
        "const": action.const, "metavar": _plain(action.metavar), "help": action.help}
        for action in parser._actions if action.option_strings != ["-h", "--help"]}


def describe_all() -> dict[str, dict]:
    parsers = {name: cli.get_args_parser() for name, cli in CLIS.items()}
    parsers |= {f"submitit {name}": cli_and_launcher_parser(name) for name in CLIS}
    return {name: describe(parser) for name, parser in parsers.items()}


@pytest.mark.parametrize("name", [*CLIS, *(f"submitit {name}" for name in CLIS)])
def test_every_flag_keeps_its_name_and_meaning(name):
    assert describe_all()[name] == json.loads(GOLDEN.read_text())[name]


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_flag_is_in_the_flags_page(name):
    """docs/flags.md, the one page of every flag, names each flag its CLI's generated parser takes."""
    page = (Path(__file__).parents[1] / "docs" / "flags.md").read_text()
    options = [o for a in CLIS[name].get_args_parser()._actions for o in a.option_strings if o.startswith("--")]
    assert [o for o in options if o != "--help" and f"`{o}" not in page] == []
