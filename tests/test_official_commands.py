"""Every launch command of the official repositories' docs (tests/official_commands.txt, verbatim) runs here,
at a tiny scale on the CPU.

The substitution rule, applied to each command's tokens (nothing else is changed or removed):

- Shell variables (``${IMAGENET_DIR}``, ``$noderank``, ...) take placeholder values; the paths are then replaced
  by flag: ``--data_path`` -> a tiny ImageNet-layout folder (``conftest.make_image_folder``: train/ and val/,
  2 classes); ``--output_dir``, ``--log_dir``, ``--job_dir`` -> folders under pytest's tmp; ``--finetune`` -> a
  tiny checkpoint of the matching pretraining recipe (``PRETRAINED_BY``); ``--eval --resume`` -> a tiny
  fine-tuned checkpoint of the classifier; ``--clip_path`` -> a tiny CLIP image tower.
- The launcher: ``VAR=value`` prefixes are dropped; ``python -m torch.distributed.launch <flags>`` is checked by
  torch's own launcher parser, then the script runs as one CPU process with the ``--local-rank=0`` that launcher
  passes; ``submitit_*.py``: the verbatim command is submitted to a fake Slurm (an ``sbatch`` that starts
  nothing) and the job's ``#SBATCH`` lines are checked against ``--nodes``/``--use_volta32``; its CLI flags then
  run in-process, as each task does (``util.submitit_launch.parse_args``).
- Sizes: ``--epochs`` -> 1, ``--batch_size`` -> 4, ``--accum_iter`` -> 1, ``--input_size`` (given or the default
  224/256) -> 4 patches a side (64 px; 56 for ViT-H/14), ``--token_size`` -> input / 16; appended:
  ``--model_kwargs`` with the family's tiny widths and depths (``TINY``), ``--device cpu --num_workers 0
  --data_limit 8 --print_freq 1``, and ``--output_dir`` (tmp) where a command leaves it to the default.

``test_command_parses`` (every command): the CLI's parser takes the flags, the run config is built and the tiny
model built from it (the classifier with its ``--finetune`` weights). ``test_command_runs`` (the first command of
each script and encoder family, 12 of the 28): the command trains (or evaluates) to the end and leaves its
checkpoint (or metrics). The others differ from one of these only in flag values.
"""
import argparse
import importlib
import json
import os
import shlex
import string
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed.launch as torch_launch

import main_pretrain
import models
from base.errors import UsageError
from conftest import make_image_folder
from test_deepmim import save_tiny_clip
from util import distributed as dist_util
from util.classify import build_classifier
from util.config import PretrainConfig
from util.distributed import LaunchFlags, Placement, placement
from util.runtime import parse_model_kwargs
from util.submitit_launch import parse_args, submit

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"IMAGENET_DIR": "/imagenet", "DATA_PATH": "/imagenet", "JOB_DIR": "/jobs/%j", "GPUS": "8",
                "PRETRAIN_CHKPT": "pretrain.pth", "MODEL_PATH": "pretrain.pth", "OUTPUT_DIR": "/out",
                "noderank": "0", "ip": "127.0.0.1", "port": "29500"}
VIT = ["embed_dim=32", "depth=4", "num_heads=2"]
TINY = {"vit": VIT, "convvit": ["embed_dims=(16,24,32)", "depths=(1,1,2)", "num_heads=2"],
        "swin": ["embed_dim=16", "depths=(2,2,2,2)", "num_heads=(1,2,4,8)", "posmlp_dim=8"],
        "pvt": ["embed_dims=(16,32,48,64)", "depths=(1,1,2,1)", "num_heads=(1,2,3,4)"]}
DECODER = ["decoder_embed_dim=16", "decoder_depth=1", "decoder_num_heads=2"]
# the pretraining recipe whose tiny checkpoint a classifier's --finetune gets
PRETRAINED_BY = {"vit_base_patch16": "mae_vit_base_patch16", "vit_large_patch16": "mae_vit_large_patch16",
                 "vit_huge_patch14": "mae_vit_huge_patch14", "convit_base_patch16": "dmjd_convit_base_patch16_dec8_hog",
                 "swin_tiny_256": "mae_swin_tiny_256", "swin_large_256": "mae_swin_large_256",
                 "pvt_small_256": "mae_pvt_small_256"}
CONFIGS = {"main_pretrain": "PretrainConfig", "main_finetune": "FinetuneConfig", "main_linprobe": "ClassifyConfig"}


@dataclass(frozen=True)
class Command:
    source: str  # the official file, e.g. MAE:FINETUNE.md
    line: str

    @property
    def tokens(self) -> list[str]:
        return shlex.split(string.Template(self.line).safe_substitute(PLACEHOLDERS))

    def split(self) -> tuple[list[str], str, list[str]]:
        """(launcher tokens after ``python``, the script, its flags); ``VAR=value`` prefixes dropped."""
        tokens = self.tokens
        while "=" in tokens[0] and not tokens[0].startswith("-"):
            tokens = tokens[1:]
        assert tokens[0] == "python", self.line
        at = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
        return tokens[1:at], tokens[at], tokens[at + 1:]

    @property
    def script(self) -> str:
        return self.split()[1]

    @property
    def module(self) -> str:
        """The CLI module the script runs (submitit_pretrain.py -> main_pretrain)."""
        return "main_" + Path(self.script).stem.split("_")[-1]

    @property
    def model(self) -> str:
        flags = self.split()[2]
        return flags[flags.index("--model") + 1]

    @property
    def family(self) -> str:
        name = self.model
        return next((f for f in ("convvit", "swin", "pvt") if f in name.replace("convit", "convvit")), "vit")


def read_commands() -> list[Command]:
    commands, source = [], ""
    for line in (ROOT / "tests" / "official_commands.txt").read_text().splitlines():
        if line.startswith("# ") and ":" in line.split()[1]:
            source = line.split()[1]
        elif line and not line.startswith("#"):
            commands.append(Command(source, line))
    return commands


COMMANDS = read_commands()
IDS = [f"{c.source}-{i}" for i, c in enumerate(COMMANDS)]
# the first command of each (script, encoder family): these run end to end
RUN = [i for i, c in enumerate(COMMANDS)
       if (c.script, c.family) not in {(d.script, d.family) for d in COMMANDS[:i]}]


def flag_value(flags: list[str], name: str, default: str | None = None) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else default


def tiny_kwargs(command: Command) -> list[str]:
    pretraining = command.module == "main_pretrain"
    decoder = pretraining and not command.model.startswith("simmim")
    return TINY[command.family] + (DECODER if decoder else [])


def input_size(command: Command) -> int:
    return 56 if "patch14" in command.model else 64


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """The tiny data (train/ and val/) and the CLIP tower the commands get."""
    root = tmp_path_factory.mktemp("assets")
    make_image_folder(root / "data", per_class=4, size=64)
    make_image_folder(root / "data", per_class=2, size=64, split="val", seed=1)
    save_tiny_clip(root / "clip.pt", resolution=64)
    return root


def save_checkpoint(path: Path, name: str, kwargs: list[str], size: int, **extra) -> str:
    model = models.create_model(name, img_size=size, **extra, **parse_model_kwargs(kwargs))
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def substitute(command: Command, assets: Path, out: Path) -> list[str]:
    """The command's flags after the substitution rule (module docstring)."""
    launcher, script, flags = command.split()
    size, flags = input_size(command), list(flags)
    replace = {"--data_path": str(assets / "data"), "--output_dir": str(out / "output"), "--log_dir": str(out / "log"),
               "--job_dir": str(out / "jobs" / "%j"), "--clip_path": str(assets / "clip.pt"), "--epochs": "1",
               "--batch_size": "4", "--accum_iter": "1", "--input_size": str(size), "--token_size": str(size // 16)}
    if "--finetune" in flags:
        pretrain = PRETRAINED_BY[command.model]
        kwargs = TINY[command.family] + DECODER
        replace["--finetune"] = save_checkpoint(out / "pretrain.pth", pretrain, kwargs, size)
    if "--eval" in flags:
        replace["--resume"] = save_checkpoint(out / "finetuned.pth", command.model, TINY[command.family], size,
                                              num_classes=2)
    for i, token in enumerate(flags[:-1]):
        if token in replace:
            flags[i + 1] = replace[token]
    flags += ["--model_kwargs", *tiny_kwargs(command), "--device", "cpu", "--num_workers", "0",
              "--data_limit", "8", "--print_freq", "1"]
    flags += [] if "--input_size" in flags else ["--input_size", str(size)]
    if "--output_dir" not in flags and not script.startswith("submitit_"):  # not ./output_dir
        flags += ["--output_dir", replace["--output_dir"]]
    if launcher[:2] == ["-m", "torch.distributed.launch"]:
        torch_launch.get_args_parser().parse_args(launcher[2:] + [script])  # the launcher's own flags
        flags.append("--local-rank=0")
    return flags


def cli_args(command: Command, flags: list[str]) -> argparse.Namespace:
    """The CLI's Namespace, as the script (or each task of the submitit job: %j is the job id) parses it."""
    if command.script.startswith("submitit_"):
        args = parse_args(command.module, flags)[1]
        args.output_dir = args.output_dir.replace("%j", "4242")
        return args
    return importlib.import_module(command.module).get_args_parser().parse_args(flags)


def check_slurm_job(command: Command, flags: list[str], out: Path, monkeypatch) -> None:
    """A submitit command's job on a fake Slurm: nodes, one task per GPU (8), the 32 GB constraint."""
    bin_dir = out / "bin"
    bin_dir.mkdir()
    for tool, text in (("srun", "exit 0"), ("sbatch", "echo 'Submitted batch job 4242'")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    submit(command.module, "test", flags)
    lines = (out / "jobs" / "4242" / "4242_submission.sh").read_text().splitlines()
    nodes = flag_value(command.split()[2], "--nodes")
    assert {f"#SBATCH --nodes={nodes}", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8"} <= set(lines)
    assert ("#SBATCH --constraint=volta32gb" in lines) == ("--use_volta32" in command.tokens)


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=IDS)
def test_command_parses(index, assets, tmp_path, monkeypatch):
    """The flags parse, the run config builds, and so does the tiny model (the classifier loading --finetune)."""
    command = COMMANDS[index]
    flags = substitute(command, assets, tmp_path)
    args = cli_args(command, flags)
    cli = importlib.import_module(command.module)
    cfg = getattr(importlib.import_module("util.config"), CONFIGS[command.module]).from_args(args)
    if command.module == "main_pretrain":
        assert cli.build_model(cfg).model.encoder.grid_size
    else:
        assert build_classifier(cfg, num_classes=2).head.out_features == 2
    if command.script.startswith("submitit_"):
        check_slurm_job(command, flags, tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("index", RUN, ids=[IDS[i] for i in RUN])
def test_command_runs(index, assets, tmp_path):
    """The command trains one tiny epoch to its checkpoint (``--eval``: evaluates and returns the metrics)."""
    command = COMMANDS[index]
    args = cli_args(command, substitute(command, assets, tmp_path))
    result = importlib.import_module(command.module).main(args)
    if getattr(args, "eval", False):
        assert 0 <= result["acc1"] <= 100
        return
    assert (Path(args.output_dir) / "checkpoint-0.pth").is_file()
    log = [json.loads(line) for line in (Path(args.output_dir) / "log.txt").read_text().splitlines()]
    assert [rec["epoch"] for rec in log] == [0] and torch.isfinite(torch.tensor(log[0]["train_loss"]))


# The official flags that have no flag of ours (PRETRAIN.md, "Official flags")

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS", "MASTER_ADDR",
               "MASTER_PORT", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")


@pytest.fixture
def launched(monkeypatch):
    """Sets the launcher's variables given (and only those) for the test."""
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)

    def set_vars(**values):
        for key, value in values.items():
            monkeypatch.setenv(key, str(value))
    return set_vars


def test_world_size_is_checked_against_the_launcher(launched):
    launched(RANK=1, WORLD_SIZE=4, LOCAL_RANK=1)
    assert placement(LaunchFlags()) == Placement(1, 4, 1, "env://")
    assert placement(LaunchFlags(world_size=4, dist_url="tcp://node0:23456")) == Placement(1, 4, 1, "tcp://node0:23456")
    with pytest.raises(UsageError, match=r"^--world_size 8 but the launcher started 4 process\(es\): pass "
                                         r"--world_size 4 or leave it out$"):
        placement(LaunchFlags(world_size=8))


def test_world_size_without_a_launcher(launched):
    assert placement(LaunchFlags(world_size=1)) is None
    with pytest.raises(UsageError, match="--world_size 2 but no launcher"):
        placement(LaunchFlags(world_size=2))


def test_world_size_under_srun_forms_the_group_as_officially(launched):
    """MAE's SLURM_PROCID branch: srun's tasks, --world_size of them, meeting at --dist_url."""
    launched(SLURM_PROCID=3, SLURM_LOCALID=1, SLURM_NTASKS=4)
    assert placement(LaunchFlags(world_size=4, dist_url="tcp://node0:23456")) == Placement(3, 4, 1,
                                                                                           "tcp://node0:23456")
    assert placement(LaunchFlags()) is None  # without --world_size, a plain single process as officially
    with pytest.raises(UsageError, match="--world_size 8 but srun started 4 tasks"):
        placement(LaunchFlags(world_size=8))


def test_dist_on_itp_reads_openmpi(launched):
    with pytest.raises(UsageError, match="OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, .* not set"):
        placement(LaunchFlags(dist_on_itp=True))
    launched(OMPI_COMM_WORLD_RANK=5, OMPI_COMM_WORLD_SIZE=8, OMPI_COMM_WORLD_LOCAL_RANK=1, MASTER_ADDR="h0",
             MASTER_PORT=1234)
    assert placement(LaunchFlags(dist_on_itp=True)) == Placement(5, 8, 1, "tcp://h0:1234")


def test_bf16_is_amp_bf16(tmp_path):
    parse = main_pretrain.get_args_parser().parse_args
    assert PretrainConfig.from_args(parse(["--bf16", "--output_dir", str(tmp_path)])).amp == "bf16"
    assert PretrainConfig.from_args(parse(["--bf16", "--amp", "bf16"])).amp == "bf16"
    with pytest.raises(UsageError, match="--bf16 .* --amp is fp16"):
        PretrainConfig.from_args(parse(["--bf16", "--amp", "fp16"]))


def test_deepmim_unused_flags_say_so(capsys):
    args = main_pretrain.get_args_parser().parse_args(["--hybrid", "True", "--teacher_path", "t.pt",
                                                       "--teacher_type", "clip"])
    cfg = PretrainConfig.from_args(args)
    out = capsys.readouterr().out.splitlines()
    assert out == ["--hybrid --teacher_path --teacher_type: no effect, as in the official DeepMIM code, which "
                   "parses and never reads them (the CLIP teacher is --clip_path)"]
    assert cfg.clip_path is None and cfg.model == "mae_vit_large_patch16"


def test_load_from_starts_from_the_weights(tmp_path, capsys):
    """UM-MAE's --load_from: every weight from the file (its 'model' or a plain state dict); a checkpoint of
    another model is refused in one line; a resumed run keeps the resumed weights."""
    kwargs = ["--model", "mae_vit_tiny_patch16", "--input_size", "32", "--model_kwargs", *VIT, *DECODER]
    source = models.create_model("mae_vit_tiny_patch16", img_size=32, embed_dim=32, depth=4, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    torch.save(source.state_dict(), tmp_path / "plain.pth")
    parse = main_pretrain.get_args_parser().parse_args
    cfg = PretrainConfig.from_args(parse([*kwargs, "--load_from", str(tmp_path / "plain.pth")]))
    model = main_pretrain.build_model(cfg).model
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(model.state_dict()[key], source.state_dict()[key])
    main_pretrain.load_initial_weights(cfg, model)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    other = models.create_model("mae_vit_tiny_patch16", img_size=32, embed_dim=32, depth=4, num_heads=2)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    cfg = PretrainConfig.from_args(parse([*kwargs, "--load_from", str(tmp_path / "other.pth")]))
    with pytest.raises(UsageError, match="^--load_from .*other.pth: checkpoint is missing"):
        main_pretrain.load_initial_weights(cfg, main_pretrain.build_model(cfg).model)
    torch.save({"model": source.state_dict() | {"extra.weight": torch.zeros(2)}}, tmp_path / "extra.pth")
    cfg = PretrainConfig.from_args(parse([*kwargs, "--load_from", str(tmp_path / "extra.pth")]))
    with pytest.raises(UsageError, match="^--load_from .* does not fit mae_vit_tiny_patch16: unexpected .*extra"):
        main_pretrain.load_initial_weights(cfg, main_pretrain.build_model(cfg).model)

    cfg = PretrainConfig.from_args(parse([*kwargs, "--load_from", "x.pth", "--resume", "run/checkpoint-3.pth"]))
    fresh = main_pretrain.build_model(cfg).model
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    main_pretrain.load_initial_weights(cfg, fresh)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert "--load_from x.pth not loaded: the run resumes run/checkpoint-3.pth" in capsys.readouterr().out


def _srun_task(rank: int, init_file: str, out_dir: str) -> None:
    """One of two srun tasks (no torchrun variables) given MAE's ``--world_size 2 --dist_url file://...``."""
    for key in LAUNCH_VARS:
        os.environ.pop(key, None)
    os.environ.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2")
    torch.set_num_threads(1)
    rank_seen, world, _ = dist_util.init_distributed("cpu", None, LaunchFlags(2, f"file://{init_file}"))
    total = dist_util.all_reduce_mean(torch.tensor([float(rank + 1)]))
    torch.save({"rank": rank_seen, "world": world, "mean": total.item()}, f"{out_dir}/{rank}.pt")
    dist_util.cleanup()


@pytest.mark.slow
def test_world_size_and_dist_url_form_the_group_under_srun(tmp_path):
    """Two processes with srun's variables and ``--world_size 2 --dist_url file://...`` join one gloo group,
    ranks from SLURM_PROCID: the mean of 1 and 2 is 1.5 on both."""
    torch.multiprocessing.spawn(_srun_task, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    seen = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    assert seen == [{"rank": 0, "world": 2, "mean": 1.5}, {"rank": 1, "world": 2, "mean": 1.5}]
