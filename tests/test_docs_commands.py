"""Every shell command the docs print runs as printed.

Each fenced ```bash / ```sh / ```shell block of DOCS is read line by line (backslash continuations joined,
comment lines and trailing comments dropped, a trailing `...` meaning "more flags" dropped). Each command is then:

* one of our CLIs (CLI_DIRS: main_*.py, submitit_*.py, tools/*.py, benchmarks/*.py, segmentation/*.py, detection/*.py), also
  behind `torchrun ...`, `python -m torch.distributed.launch ...` or a wrapper (`docker run ... IMAGE <cli>`,
  `srun [apptainer exec ... IMAGE] <cli>`): its flags must parse with the CLI's own parser (its module's
  `get_args_parser()` or `build_parser()`; else the script is run with argparse stopped right after parsing)
  and every `--model` / `--recipes` name must be in `models.list_models()`;
* another program: `make` targets must exist in the Makefile, `tools/install.sh` steps in the script,
  `docker build --build-arg`s among the Dockerfile's ARGs, `pip install -r` files in the repository;
* in both cases, every relative path to a repository file it names (*.py, *.sh, *.txt, *.md, *.yaml, ...) must
  exist.

Commands of E2E_PROGRAMS also run end to end, in this process, on the CPU (those differing only in flag values
once: the first), by this substitution rule:

* the launcher and wrapper are dropped: one process, `--device cpu --num_workers 0 --amp fp32`, and the flags
  of MULTI_PROCESS_OR_GPU dropped (`--compile`, `--fsdp`: FSDP shards over several processes);
* `--data_path` -> a tiny ImageNet-layout folder (tests/conftest.py `make_image_folder`: 2 classes x 4 images of
  40 px in train/ and val/); `--data_set fashion_mnist` -> that folder as `imagefolder`;
* `--epochs 1 --warmup_epochs 0 --batch_size 2 --accum_iter 1`;
* `--model NAME` keeps NAME but shrinks it with TINY[NAME] (appended to `--model_kwargs`, after the
  documented ones); `--input_size 64` (`--token_size 4` when given); TINY maps every registered name;
* `--finetune`, `tools/export.py`'s checkpoint -> a checkpoint of a tiny pretraining run (main_pretrain.py)
  of that encoder family; `--eval --resume` -> a tiny classifier's weights (an official fine-tuned
  checkpoint's layout); `--clip_path` -> a tiny random CLIP image tower;
* `--output_dir`, `--log_dir`, `--out` -> a temporary folder.

A failure names the file, line and command, and what went wrong.
"""
import argparse
import contextlib
import importlib
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import models
from base.errors import UsageError
from conftest import make_image_folder

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "PRETRAIN.md", "FINETUNE.md", "SEGMENTATION.md", "DETECTION.md", "RELIABILITY.md",
        "benchmarks/README.md",
        *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
SHELL_FENCES = ("bash", "sh", "shell")
CLI_DIRS = ("", "tools", "benchmarks", "segmentation", "detection")  # "" = the repository root (main_*.py, submitit_*.py)
E2E_PROGRAMS = ("main_pretrain.py", "main_finetune.py", "main_linprobe.py", "tools/export.py")
MULTI_PROCESS_OR_GPU = {"--compile", "--fsdp"}  # switches a one-process CPU run drops

LAUNCHERS = ("torchrun", "torch.distributed.launch", "torch.distributed.run")
LAUNCHER_SWITCHES = {"--standalone", "--no-python", "--no_python", "--module", "-m", "--run-path", "--run_path",
                     "--use-env", "--use_env"}  # torchrun's flags without a value
WRAPPERS = ("srun", "docker", "apptainer", "singularity", "mpirun", "env", "nohup", "time")
REPO_FILE = re.compile(r"^(?:\./)?(?:[\w.-]+/)*[\w.-]+\.(?:py|sh|txt|md|yaml|yml|toml|cfg|ini|json)$")

# --- the tiny model of every registered name: its --model_kwargs, at --input_size TINY_SIZE ---------------
TINY_SIZE = 64
VIT = ["embed_dim=32", "depth=2", "num_heads=2", "patch_size=16"]
DECODER = ["decoder_embed_dim=16", "decoder_depth=1", "decoder_num_heads=2"]
CONVVIT = ["embed_dims=(16,24,32)", "depths=(1,1,2)", "num_heads=2"]
SWIN = ["embed_dim=8", "depths=(1,1,1,1)", "num_heads=(1,1,2,2)", "posmlp_dim=4"]
PVT = ["embed_dims=(8,16,24,32)", "depths=(1,1,1,1)", "num_heads=(1,1,2,2)", "mlp_ratios=(2,2,2,2)"]
TINY = {
    **{name: VIT + DECODER for name in (
        "mae_vit_tiny_patch16", "mae_vit_small_patch16", "mae_vit_base_patch16", "mae_vit_large_patch16",
        "mae_vit_huge_patch14", "mae_vit_base_patch16_dec512d2b", "deepmim_vit_base_patch16",
        "deepmim_vit_base_patch16_clip", "dmjd_vit_base_patch16_hog")},
    **{name: VIT for name in (
        "maskfeat_vit_base_patch16", "simmim_vit_base_patch16", "vit_tiny_patch16", "vit_small_patch16",
        "vit_base_patch16", "vit_large_patch16", "vit_huge_patch14")},
    **{name: CONVVIT + DECODER for name in (
        "dmjd_convvit_base_patch16_hog", "dmjd_convvit_base_patch16_dec2_hog", "dmjd_convvit_large_patch16_hog",
        "dmjd_convit_base_patch16_dec8_hog", "dmjd_convit_base_patch16_dec2_hog", "dmjd_convit_large_patch16_dec8_hog",
        "convmae_convvit_base_patch16")},
    **{name: CONVVIT for name in (
        "convvit_base_patch16", "convvit_large_patch16", "convit_base_patch16", "convit_large_patch16")},
    **{name: SWIN + DECODER for name in (
        "ummae_swin_tiny_256", "ummae_swin_large_256", "mae_swin_tiny_256", "mae_swin_large_256")},
    **{name: SWIN for name in ("simmim_swin_tiny_256", "swin_tiny_256", "swin_large_256")},
    **{name: PVT + DECODER for name in ("ummae_pvt_small_256", "mae_pvt_small_256")},
    **{name: PVT for name in ("simmim_pvt_small_256", "pvt_small_256")},
}
# a classifier's encoder family -> the pretraining recipe whose tiny checkpoint --finetune gets
PRETRAINED_FOR = {"vit": "mae_vit_base_patch16", "conv": "dmjd_convvit_base_patch16_hog",
                  "swin": "ummae_swin_tiny_256", "pvt": "ummae_pvt_small_256"}


# --- reading the docs ----------------------------------------------------------------------------------------

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


SEPARATORS = {"&&", "||", ";", "|", "&"}


def split_commands(text: str) -> list[list[str]]:
    """The words of each command of a shell line: split at `&&`, `||`, `;`, `|`, `&`, comments and `>` / `2>&1`
    redirections dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, words = [], []
    tokens = list(lexer)
    i = 0
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
        fence, pending, start = None, "", 0
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            stripped = line.strip()
            if fence is None:
                if stripped.startswith("```") and stripped[3:].strip() in SHELL_FENCES:
                    fence = stripped
                continue
            if stripped.startswith("```"):
                assert not pending, f"{name}:{start}: the block ends inside a `\\` continuation"
                fence = None
                continue
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            # after a `\`, a comment line ends the command (shlex drops the comment), as in bash
            text = pending + stripped
            commands += [DocCommand(name, start, text, part) for part in range(len(split_commands(text)))]
            pending = ""
    return commands


COMMANDS = doc_commands()


# --- what a command runs -------------------------------------------------------------------------------------

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
        rest = skip_launcher_options(rest)
        program, argv, _ = resolve(rest)
        return program, argv, "torchrun"
    if is_python(head):
        while rest and rest[0] in ("-u", "-O", "-B"):
            rest = rest[1:]
        if rest[:1] == ["-m"] and len(rest) > 1:
            if rest[1] in LAUNCHERS:
                program, argv, _ = resolve(skip_launcher_options(rest[2:]))
                return program, argv, rest[1]
            return rest[1].replace(".", "/") + ".py", rest[2:], "python -m"
        if rest and cli_path(rest[0]):
            return cli_path(rest[0]), rest[1:], "python"
        return head, rest, ""
    if cli_path(head):
        return cli_path(head), rest, "script"
    if head in WRAPPERS:
        for i, word in enumerate(rest):
            if word == "torchrun" or is_python(word) or cli_path(word):
                program, argv, _ = resolve(rest[i:])
                return program, argv, head
    return head, rest, ""


def is_cli(program: str) -> bool:
    return program.endswith(".py") and cli_path(program) is not None and (ROOT / program).is_file()


CLI_COMMANDS = [c for c in COMMANDS if is_cli(resolve(c.words)[0])]
OTHER_COMMANDS = [c for c in COMMANDS if c not in CLI_COMMANDS]


# flags whose values the substitution rule replaces: they do not tell two tiny runs apart
SUBSTITUTED = {"--data_path", "--data_set", "--data_limit", "--output_dir", "--log_dir", "--epochs", "--warmup_epochs",
               "--batch_size", "--accum_iter", "--input_size", "--token_size", "--num_workers", "--device", "--amp",
               *MULTI_PROCESS_OR_GPU, "--finetune", "--resume", "--clip_path", "--out", "--img_size", "--auto_resume"}


def e2e_key(command: DocCommand) -> tuple:
    """What a tiny run of ``command`` exercises: its program, --model and other flags' names."""
    program, argv, _ = resolve(command.words)
    model = next((argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--model"), None)
    flags = {w.split("=")[0] for w in argv if w.startswith("--")} - SUBSTITUTED
    return program, model, tuple(sorted(flags)), "--clip_path" in argv


def e2e_commands() -> list[DocCommand]:
    """The first command of E2E_PROGRAMS of each e2e_key."""
    first: dict[tuple, DocCommand] = {}
    for command in CLI_COMMANDS:
        if resolve(command.words)[0] in E2E_PROGRAMS:
            first.setdefault(e2e_key(command), command)
    return list(first.values())


E2E_COMMANDS = e2e_commands()


def ids(commands: list[DocCommand]) -> list[str]:
    return [f"{c.file}:{c.line}" + (f"+{c.part}" if c.part else "") for c in commands]


# --- parsing with the CLI's own parser -----------------------------------------------------------------------

class _Parsed(Exception):
    """Raised by the patched ``parse_args``: the script's namespace, its run stopped before any work."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__()
        self.namespace = namespace


def parse(program: str, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by ``program``'s own parser; a parse error raises UsageError with argparse's message."""
    module = importlib.import_module(program.removesuffix(".py").replace("/", "."))
    build = getattr(module, "get_args_parser", None) or getattr(module, "build_parser", None)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            if build is not None:
                return build().parse_args(argv)
            return run_until_parsed(program, argv)
    except SystemExit as exit_:
        if exit_.code in (0, None):
            raise AssertionError(f"{program} exited while parsing (--help?)") from None
        raise UsageError(stderr.getvalue().strip().splitlines()[-1]) from None


def run_until_parsed(program: str, argv: list[str]) -> argparse.Namespace:
    """A script without a parser factory: run it as __main__, stopping when its parser has parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    old_argv = sys.argv
    sys.argv = [program, *argv]
    argparse.ArgumentParser.parse_args = parse_and_stop
    try:
        runpy.run_path(str(ROOT / program), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = old_argv
    raise AssertionError(f"{program} never parsed its flags with argparse: give it a get_args_parser()")


def needs_segmentation_extra(program: str) -> bool:
    return program.startswith(("segmentation/", "detection/"))


def check_paths(command: DocCommand) -> None:
    for word in command.words:
        value = word.split("=", 1)[-1] if word.startswith("-") else word
        if REPO_FILE.match(value) and not (ROOT / value).exists():
            raise AssertionError(f"{command}\n  names {value}, which is not in the repository")


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=ids(CLI_COMMANDS))
def test_cli_command_parses(command: DocCommand):
    program, argv, _ = resolve(command.words)
    if needs_segmentation_extra(program):
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


# --- end to end at tiny scale (the substitution rule of the module docstring) ---------------------------------

def family(name: str) -> str:
    """A classifier's encoder family: the key of PRETRAINED_FOR."""
    return next(f for f in ("swin", "pvt", "conv", "vit") if f in name)


class TinyWorld:
    """The substitutes: a tiny dataset, a tiny CLIP teacher, and tiny checkpoints made on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.data = make_image_folder(root / "data", num_classes=2, per_class=4, size=40)
        make_image_folder(root / "data", num_classes=2, per_class=4, size=40, seed=1, split="val")
        self.clip = root / "clip.pt"
        self._save_clip(self.clip, size=TINY_SIZE)
        self._pretrained: dict[str, Path] = {}
        self._runs = 0

    @staticmethod
    def _save_clip(path: Path, size: int) -> None:
        """A random CLIP image tower (OpenAI layout: width 64, 2 layers, output 24) for ``size`` px inputs."""
        from models.clip_teacher import openai_visual_shapes
        gen = torch.Generator().manual_seed(0)
        shapes = openai_visual_shapes(width=64, layers=2, patch_size=16, grid_size=size // 16, output_dim=24)
        torch.save({f"visual.{k}": 0.1 * torch.randn(shape, generator=gen) for k, shape in shapes.items()}, path)

    def output_dir(self) -> Path:
        self._runs += 1
        return self.root / f"run{self._runs}"

    def common(self, out: Path) -> list[str]:
        return ["--epochs", "1", "--warmup_epochs", "0", "--batch_size", "2", "--accum_iter", "1", "--device", "cpu",
                "--num_workers", "0", "--amp", "fp32", "--data_set", "imagefolder", "--data_path", str(self.data),
                "--input_size", str(TINY_SIZE), "--output_dir", str(out), "--log_dir", str(out)]

    def pretrained(self, classifier: str) -> Path:
        """The last checkpoint of a tiny main_pretrain.py run of the recipe behind ``classifier``'s encoder."""
        recipe = PRETRAINED_FOR[family(classifier)]
        if recipe not in self._pretrained:
            import main_pretrain
            out = self.output_dir()
            main_pretrain.main(main_pretrain.get_args_parser().parse_args(
                ["--model", recipe, *self.common(out), "--model_kwargs", *TINY[recipe]]))
            self._pretrained[recipe] = out / "checkpoint-0.pth"
        return self._pretrained[recipe]

    def finetuned(self, classifier: str) -> Path:
        """A tiny classifier's weights for the 2 classes, as an official fine-tuned checkpoint holds them."""
        path = self.root / f"{classifier}-finetuned.pth"
        model = models.create_model(classifier, num_classes=2, img_size=TINY_SIZE, **parse_kwargs(TINY[classifier]))
        torch.save({"model": model.state_dict()}, path)
        return path


def parse_kwargs(items: list[str]) -> dict:
    from util.runtime import parse_model_kwargs
    return parse_model_kwargs(items)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> TinyWorld:
    return TinyWorld(tmp_path_factory.mktemp("docs_e2e"))


def tiny_argv(program: str, argv: list[str], args: argparse.Namespace, world: TinyWorld, out: Path) -> list[str]:
    """``argv`` as the substitution rule makes it tiny (flags appended: argparse keeps the last value)."""
    argv = [w for w in argv if w not in MULTI_PROCESS_OR_GPU]
    kwargs = [*args.model_kwargs, *TINY[args.model]]
    if program == "tools/export.py":
        return [str(world.pretrained(args.model)), *argv[1:], "--img_size", str(TINY_SIZE),
                "--out", str(out / Path(args.out).name), "--model_kwargs", *kwargs]
    argv += world.common(out)
    if getattr(args, "token_size", None):
        argv += ["--token_size", str(TINY_SIZE // 16)]
    if getattr(args, "clip_path", None):
        argv += ["--clip_path", str(world.clip)]
    if getattr(args, "eval", False) and args.resume:
        argv += ["--resume", str(world.finetuned(args.model))]
    elif getattr(args, "finetune", ""):
        argv += ["--finetune", str(world.pretrained(args.model))]
    return argv + ["--model_kwargs", *kwargs]


@pytest.mark.slow
@pytest.mark.parametrize("command", E2E_COMMANDS, ids=ids(E2E_COMMANDS))
def test_command_runs_end_to_end_at_tiny_scale(command: DocCommand, tiny_world: TinyWorld):
    program, argv, _ = resolve(command.words)
    module = importlib.import_module(program.removesuffix(".py").replace("/", "."))
    out = tiny_world.output_dir()
    run = tiny_argv(program, argv, parse(program, argv), tiny_world, out)
    try:
        if program == "tools/export.py":
            assert module.main(run) == 0, "tools/export.py exited with status 2"
            result = None
        else:
            result = module.main(module.get_args_parser().parse_args(run))
    except Exception as err:
        raise AssertionError(f"{command}\n  fails at tiny scale ({type(err).__name__}: {err});\n  ran: "
                             f"{program} {shlex.join(run)}") from err
    if program == "main_pretrain.py":
        assert (out / "checkpoint-0.pth").is_file() and (out / "log.txt").read_text().count("\n") == 1, command
    elif program == "tools/export.py":
        assert (out / Path(parse(program, argv).out).name).stat().st_size > 0, command
    else:  # fine-tuning and probing report their validation accuracy
        assert 0.0 <= result["acc1"] <= 100.0, (command, result)


# --- other programs ------------------------------------------------------------------------------------------

def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^([\w./$() -]+?)\s*:(?!=)", text, re.M) for t in line.split()}


def install_steps() -> set[str]:
    return set(re.findall(r"^\s+([\w-]+)\) step_\w+ ;;$", (ROOT / "tools/install.sh").read_text(), re.M))


def dockerfile_args() -> set[str]:
    return set(re.findall(r"^ARG\s+(\w+)", (ROOT / "Dockerfile").read_text(), re.M))


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
        targets = [w for w in rest if not w.startswith("-") and "=" not in w]
        missing = sorted(set(targets) - make_targets())
        assert not missing, f"{command}\n  make has no target {missing}"
    elif head.removeprefix("./") == "tools/install.sh":
        unknown = sorted(set(rest) - install_steps() - {"help"})
        assert not unknown, f"{command}\n  tools/install.sh has no step {unknown}"
    elif head == "docker" and rest[:1] == ["build"]:
        build_args = [rest[i + 1].split("=")[0] for i, w in enumerate(rest[:-1]) if w == "--build-arg"]
        unknown = sorted(set(build_args) - dockerfile_args())
        assert not unknown, f"{command}\n  the Dockerfile has no ARG {unknown}"
        assert (ROOT / "Dockerfile").is_file()
    elif head in ("pip", "pip3") or (is_python(head) and rest[:2] == ["-m", "pip"]):
        files = [rest[i + 1] for i, w in enumerate(rest[:-1]) if w in ("-r", "--requirement")]
        for name in files:
            assert (ROOT / name).is_file(), f"{command}\n  {name} is not in the repository"
    elif head.endswith(".sh"):
        path = ROOT / head.removeprefix("./")
        assert path.is_file(), f"{command}\n  {head} is not in the repository"
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


def test_tiny_covers_every_registered_model(tmp_path):
    """TINY maps every name, and each tiny model runs a batch at TINY_SIZE (a pretraining recipe gives a loss)."""
    registered = set(models.list_models())
    assert set(TINY) == registered, f"add to TINY: {sorted(registered - set(TINY))}; stale: {sorted(set(TINY) - registered)}"
    TinyWorld._save_clip(tmp_path / "clip.pt", size=TINY_SIZE)
    imgs = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    for name, kwargs in TINY.items():
        extra = {"clip_path": str(tmp_path / "clip.pt")} if name.endswith("_clip") else {}
        model = models.create_model(name, img_size=TINY_SIZE, **parse_kwargs(kwargs), **extra)
        out = model(imgs)
        assert torch.isfinite(out.loss if hasattr(out, "loss") else out).all(), name
