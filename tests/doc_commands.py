"""The docs' shell commands, read and resolved: every command of every fenced ```bash / ```sh / ```shell block of
every Markdown file of the repository (continuations joined, comments and a trailing `...` dropped), the program
it runs and its argv, and a CLI's own parser (tests/test_docs_commands.py checks them)."""
import argparse
import contextlib
import importlib
import io
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from base.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
SHELL_FENCES = ("bash", "sh", "shell")
CLI_DIRS = ("", "tools", "benchmarks", "segmentation", "detection")  # "" = the repository root (main_*.py, submitit_*.py)
LAUNCHERS = ("torchrun", "torch.distributed.launch", "torch.distributed.run")
LAUNCHER_SWITCHES = {"--standalone", "--no-python", "--no_python", "--module", "-m", "--run-path", "--run_path",
                     "--use-env", "--use_env"}  # torchrun's flags without a value
WRAPPERS = ("srun", "docker", "apptainer", "singularity", "mpirun", "env", "nohup", "time")
REPO_FILE = re.compile(r"^(?:\./)?(?:[\w.-]+/)*[\w.-]+\.(?:py|sh|txt|md|yaml|yml|toml|cfg|ini|json)$")
SEPARATORS = {"&&", "||", ";", "|", "&"}


def markdown_files() -> list[str]:
    """Every .md file of the repository, hidden folders (.git, .venv) left out."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [str((Path(folder) / f).relative_to(ROOT)) for f in files if f.endswith(".md")]
    return sorted(found)


DOCS = markdown_files()


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str  # the line as printed, continuations joined
    part: int = 0  # which command of the line (`a && b`, `a | b`, `a; b`)

    @property
    def words(self) -> list[str]:
        words = split_commands(self.text)[self.part]
        return words[:-1] if words and words[-1] == "..." else words

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}" + (f" (command {self.part + 1})" if self.part else "")


def split_commands(text: str) -> list[list[str]]:
    """The words of each command of a shell line: split at `&&`, `||`, `;`, `|`, `&`, comments and `>` / `2>&1`
    redirections dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, words, tokens, i = [], [], list(lexer), 0
    while i < len(tokens):
        token = tokens[i]
        if token in SEPARATORS:
            commands.append(words)
            words = []
        elif re.fullmatch(r"\d*>>?", token):  # `> file`, `2> file`; `2>&1` lexes as `2>`, `&`, `1`
            i += 2 if tokens[i + 1:i + 2] != ["&"] else 3
            continue
        else:
            words.append(token)
        i += 1
    return [w for w in commands + [words] if w]


def doc_commands() -> list[DocCommand]:
    """Every command of every shell block of DOCS."""
    commands = []
    for name in DOCS:
        fenced, pending, start = False, "", 0
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            stripped = line.strip()
            if not fenced:
                fenced = stripped.startswith("```") and stripped[3:].strip() in SHELL_FENCES
                continue
            if stripped.startswith("```"):
                assert not pending, f"{name}:{start}: the block ends inside a `\\` continuation"
                fenced = False
                continue
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            start = start if pending else number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            # after a `\`, a comment line ends the command (shlex drops the comment), as in bash
            text = pending + stripped
            commands += [DocCommand(name, start, text, part) for part in range(len(split_commands(text)))]
            pending = ""
    return commands


COMMANDS = doc_commands()


def is_python(word: str) -> bool:
    return re.fullmatch(r"(?:\S*/)?python(?:3(?:\.\d+)?)?", word) is not None


def cli_path(word: str) -> str | None:
    """``word`` as one of our CLIs (a repository-relative .py path), or None."""
    path = word.removeprefix("./")
    folder = str(Path(path).parent)
    return path if path.endswith(".py") and ("" if folder == "." else folder) in CLI_DIRS else None


def skip_launcher_options(words: list[str]) -> list[str]:
    """torchrun's (or torch.distributed.launch's) own flags dropped: what follows is the script."""
    i = 0
    while i < len(words) and words[i].startswith("-"):
        i += 1 if "=" in words[i] or words[i] in LAUNCHER_SWITCHES else 2
    return words[i:]


def resolve(words: list[str]) -> tuple[str, list[str], str]:
    """(program, its argv, how it was launched): a CLI's program is its path ("module.py" for ``python -m``)."""
    while words and re.match(r"^\w+=", words[0]) and not words[0].split("=", 1)[1].startswith("$("):
        words = words[1:]  # VAR=value before the command
    if not words:
        return "", [], ""
    head, rest = words[0], words[1:]
    if head == "torchrun":
        return *resolve(skip_launcher_options(rest))[:2], "torchrun"
    if is_python(head):
        while rest and rest[0] in ("-u", "-O", "-B"):
            rest = rest[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            if rest[1] in LAUNCHERS:
                return *resolve(skip_launcher_options(rest[2:]))[:2], rest[1]
            return rest[1].replace(".", "/") + ".py", rest[2:], "python -m"
        if rest and cli_path(rest[0]):
            return cli_path(rest[0]), rest[1:], "python"
        return head, rest, ""
    if cli_path(head):
        return cli_path(head), rest, "script"
    if head in WRAPPERS:
        for i, word in enumerate(rest):
            if word == "torchrun" or is_python(word) or cli_path(word):
                return *resolve(rest[i:])[:2], head
    return head, rest, ""


def is_cli(program: str) -> bool:
    return program.endswith(".py") and cli_path(program) is not None and (ROOT / program).is_file()


CLI_COMMANDS = [c for c in COMMANDS if is_cli(resolve(c.words)[0])]
OTHER_COMMANDS = [c for c in COMMANDS if c not in CLI_COMMANDS]


def ids(commands: list[DocCommand]) -> list[str]:
    return [f"{c.file}:{c.line}" + (f"+{c.part}" if c.part else "") for c in commands]


# --- parsing with the CLI's own parser -----------------------------------------------------------------------

class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the script's namespace, its run stopped before any work."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__()
        self.namespace = namespace


def cli_module(program: str):
    return importlib.import_module(program.removesuffix(".py").replace("/", "."))


def cli_parser(program: str) -> argparse.ArgumentParser | None:
    module = cli_module(program)
    build = getattr(module, "get_args_parser", None) or getattr(module, "build_parser", None)
    return build() if build is not None else None


def parse(program: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``program``'s own parser; a parse error raises UsageError with argparse's message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser = cli_parser(program)
            return parser.parse_args(argv) if parser is not None else run_until_parsed(program, argv)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise AssertionError(f"{program} exited while parsing (--help?)") from None
        raise UsageError(stderr.getvalue().strip().splitlines()[-1]) from None


def run_until_parsed(program: str, argv: list[str]) -> argparse.Namespace:
    """A script without a parser factory: run it as __main__, stopping when its parser has parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    old_argv, sys.argv = sys.argv, [program, *argv]
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        runpy.run_path(str(ROOT / program), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = old_argv
    raise AssertionError(f"{program} never parsed its flags with argparse: give it a get_args_parser()")


def check_paths(command: DocCommand) -> None:
    for word in command.words:
        value = word.split("=", 1)[-1] if word.startswith("-") else word
        if REPO_FILE.match(value) and not (ROOT / value).exists():
            raise AssertionError(f"{command}\n  names {value}, which is not in the repository")
