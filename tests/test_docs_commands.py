"""Every shell command the docs print runs as printed.

Each fenced ```bash / ```sh / ```shell block of every Markdown file of the repository is read line by line
(backslash continuations joined, comments and a trailing `...`, "more flags", dropped). A command of one of our
CLIs (main_*.py, submitit_*.py, tools/, benchmarks/, segmentation/, detection/), also behind `torchrun`, `python -m
torch.distributed.launch` or a wrapper (`docker run ... IMAGE`, `srun ...`), must parse with the CLI's own parser
and name registered models only; of another program, name what exists (make targets, tools/install.sh steps,
Dockerfile ARGs, requirement files); and every repository file a command names must exist. The first documented
command of each kind of E2E_KINDS also runs end to end on the CPU, made tiny (TinyWorld: the model at its
registered tiny configuration, `models.tiny_kwargs`, a tiny image folder, one epoch of batches of 2).
"""
import argparse
import re
import shlex
from pathlib import Path

import pytest
import torch

import models
from base.errors import UsageError
from conftest import make_image_folder, tiny_cli_args
from doc_commands import (CLI_COMMANDS, COMMANDS, DOCS, OTHER_COMMANDS, ROOT, DocCommand, check_paths, cli_module,
                          cli_parser, ids, is_python, parse, resolve)
from models.official import quirks_table

MULTI_PROCESS_OR_GPU = {"--compile", "--fsdp"}  # switches a one-process CPU run drops


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=ids(CLI_COMMANDS))
def test_cli_command_parses(command: DocCommand):
    program, argv, _ = resolve(command.words)
    if program.startswith(("segmentation/", "detection/")):
        pytest.importorskip("mmdet" if program.startswith("detection/") else "mmseg",
                            reason="the segmentation extra is not installed: run `make seg`")
    check_paths(command)
    try:
        args = parse(program, argv)
    except UsageError as err:
        raise AssertionError(f"{command}\n  {program} refuses its flags: {err}") from None
    names = [args.model] if isinstance(getattr(args, "model", None), str) else []
    names += list(getattr(args, "recipes", None) or [])
    unknown = [name for name in names if name not in models.list_models()]
    assert not unknown, f"{command}\n  {unknown}: not in models.list_models()"


# --- a representative few end to end at tiny scale -----------------------------------------------------------

E2E_KINDS = {  # kind -> its first command runs: (program, whether it evaluates a --resume'd checkpoint)
    "pretraining": ("main_pretrain.py", False), "fine-tuning": ("main_finetune.py", False),
    "evaluation": ("main_finetune.py", True), "linear probing": ("main_linprobe.py", False),
    "export": ("tools/export.py", False)}


def kind(command: DocCommand) -> str | None:
    program, argv, _ = resolve(command.words)
    return next((k for k, v in E2E_KINDS.items() if v == (program, "--eval" in argv and "--resume" in argv)), None)


E2E_COMMANDS = [c for c in (next((c for c in CLI_COMMANDS if kind(c) == k), None) for k in E2E_KINDS) if c]


class TinyWorld:
    """The substitutes: a tiny dataset, tiny teachers and tiny checkpoints made on first use."""

    def __init__(self, root: Path):
        self.root, self.runs, self.checkpoints = root, 0, {}
        self.data = make_image_folder(root / "data", num_classes=2, per_class=4, size=40)
        make_image_folder(root / "data", num_classes=2, per_class=4, size=40, seed=1, split="val")

    def output_dir(self) -> Path:
        self.runs += 1
        return self.root / f"run{self.runs}"

    def tiny(self, parser: argparse.ArgumentParser, name: str) -> list[str]:
        return tiny_cli_args(name, self.root, parser._option_string_actions)

    def common(self, out: Path) -> list[str]:
        return ["--epochs", "1", "--warmup_epochs", "0", "--batch_size", "2", "--accum_iter", "1", "--device", "cpu",
                "--num_workers", "0", "--amp", "fp32", "--data_set", "imagefolder", "--data_path", str(self.data),
                "--output_dir", str(out), "--log_dir", str(out)]

    def encoder_shapes(self, name: str) -> dict:
        model = models.create_model(name, **models.tiny_kwargs(name, self.root))
        return {key: value.shape for key, value in model.encoder.state_dict().items()}

    def pretrained(self, classifier: str) -> Path:
        """The checkpoint of a tiny main_pretrain.py run of the first pretraining recipe whose tiny encoder holds
        every weight of ``classifier``'s tiny encoder, in its shape."""
        want = self.encoder_shapes(classifier)
        recipe = next(name for name in models.list_models(task="pretrain")
                      if want.items() <= self.encoder_shapes(name).items())
        if recipe not in self.checkpoints:
            import main_pretrain
            out = self.output_dir()
            main_pretrain.main(main_pretrain.get_args_parser().parse_args(
                ["--model", recipe, *self.common(out), *self.tiny(main_pretrain.get_args_parser(), recipe)]))
            self.checkpoints[recipe] = out / "checkpoint-0.pth"
        return self.checkpoints[recipe]

    def finetuned(self, classifier: str) -> Path:
        """A tiny classifier's weights for the 2 classes, as an official fine-tuned checkpoint holds them."""
        path = self.root / f"{classifier}-finetuned.pth"
        model = models.create_model(classifier, num_classes=2, **models.tiny_kwargs(classifier, self.root))
        torch.save({"model": model.state_dict()}, path)
        return path

    def argv(self, program: str, argv: list[str], args: argparse.Namespace, out: Path) -> list[str]:
        """``argv`` made tiny (flags appended: argparse keeps the last value; --model_kwargs keeps the documented
        keys, then the tiny ones)."""
        argv, tiny = [w for w in argv if w not in MULTI_PROCESS_OR_GPU], self.tiny(cli_parser(program), args.model)
        if "--model_kwargs" in tiny:
            tiny[tiny.index("--model_kwargs") + 1:tiny.index("--model_kwargs") + 1] = args.model_kwargs
        if program == "tools/export.py":
            return [str(self.pretrained(args.model)), *argv[1:], "--out", str(out / Path(args.out).name), *tiny]
        argv += self.common(out)
        if getattr(args, "eval", False):
            argv += ["--resume", str(self.finetuned(args.model))]
        elif getattr(args, "finetune", ""):
            argv += ["--finetune", str(self.pretrained(args.model))]
        return argv + tiny


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("docs_e2e"))


@pytest.mark.slow
@pytest.mark.parametrize("command", E2E_COMMANDS, ids=ids(E2E_COMMANDS))
def test_command_runs_end_to_end_at_tiny_scale(command: DocCommand, tiny_world: TinyWorld):
    program, argv, _ = resolve(command.words)
    module, out = cli_module(program), tiny_world.output_dir()
    run = tiny_world.argv(program, argv, parse(program, argv), out)
    try:
        result = module.main(run) if program == "tools/export.py" else \
            module.main(module.get_args_parser().parse_args(run))
    except Exception as err:
        raise AssertionError(f"{command}\n  fails at tiny scale ({type(err).__name__}: {err});\n  ran: "
                             f"{program} {shlex.join(run)}") from err
    if program == "main_pretrain.py":
        assert (out / "checkpoint-0.pth").is_file() and (out / "log.txt").read_text().count("\n") == 1, command
    elif program == "tools/export.py":
        assert result == 0 and (out / Path(parse(program, argv).out).name).stat().st_size > 0, command
    else:  # fine-tuning and probing report their validation accuracy
        assert 0.0 <= result["acc1"] <= 100.0, (command, result)


def test_every_kind_runs_end_to_end():
    assert {kind(c) for c in E2E_COMMANDS} == set(E2E_KINDS)


# --- other programs ------------------------------------------------------------------------------------------

def check_other(command: DocCommand) -> None:
    words = command.words
    if words and re.match(r"^\w+=\$\(", words[0]):
        return  # a shell variable set from a command's output (scontrol): nothing of ours
    while words and re.match(r"^\w+=", words[0]):
        words = words[1:]
    if not words:
        return
    head, rest = words[0], words[1:]
    if head == "make":
        lines = re.findall(r"^([\w./$() -]+?)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M)
        targets = {target for line in lines for target in line.split()}
        missing = sorted({w for w in rest if not w.startswith("-") and "=" not in w} - targets)
        assert not missing, f"{command}\n  make has no target {missing}"
    elif head.removeprefix("./") == "tools/install.sh":
        steps = set(re.findall(r"^\s+([\w-]+)\) step_\w+ ;;$", (ROOT / "tools/install.sh").read_text(), re.M))
        unknown = sorted(set(rest) - steps - {"help"})
        assert not unknown, f"{command}\n  tools/install.sh has no step {unknown}"
    elif head == "docker" and rest[:1] == ["build"]:
        build_args = {rest[i + 1].split("=")[0] for i, w in enumerate(rest[:-1]) if w == "--build-arg"}
        unknown = sorted(build_args - set(re.findall(r"^ARG\s+(\w+)", (ROOT / "Dockerfile").read_text(), re.M)))
        assert not unknown, f"{command}\n  the Dockerfile has no ARG {unknown}"
    elif head in ("pip", "pip3") or (is_python(head) and rest[:2] == ["-m", "pip"]):
        for name in [rest[i + 1] for i, w in enumerate(rest[:-1]) if w in ("-r", "--requirement")]:
            assert (ROOT / name).is_file(), f"{command}\n  {name} is not in the repository"
    elif head.endswith(".sh"):
        assert (ROOT / head.removeprefix("./")).is_file(), f"{command}\n  {head} is not in the repository"
    check_paths(command)


@pytest.mark.parametrize("command", OTHER_COMMANDS, ids=ids(OTHER_COMMANDS))
def test_other_command_refers_to_what_exists(command: DocCommand):
    check_other(command)


def test_docs_have_commands_of_every_kind():
    """The reader finds what it should: make, torchrun, the three training CLIs, segmentation, benchmarks."""
    programs = {resolve(c.words)[0] for c in COMMANDS}
    launches = {resolve(c.words)[2] for c in COMMANDS}
    assert {"make", "main_pretrain.py", "main_finetune.py", "main_linprobe.py", "segmentation/train.py",
            "tools/export.py", "benchmarks/pretrain_throughput.py"} <= programs, sorted(programs)
    assert {"torchrun", "docker", "srun"} <= launches, sorted(launches)


def test_the_quirks_are_documented_from_their_one_definition():
    """The docs print the table of official quirks that models/official.py renders from ``QUIRKS``, once."""
    table = quirks_table()
    homes = [name for name in DOCS if table in (ROOT / name).read_text()]
    assert len(homes) == 1, f"the quirks table (models.official.quirks_table()) is printed in {homes}"
