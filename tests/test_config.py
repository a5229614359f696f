"""The typed run configs: one field per flag of each CLI, built once, never changing the parsed flags."""
import copy
import dataclasses
import json

import pytest

import main_finetune
import main_linprobe
import main_pretrain
from base.errors import UsageError
from util.config import ClassifyConfig, FinetuneConfig, PretrainConfig
from util.official_flags import official_flags

CLIS = [(main_pretrain, PretrainConfig), (main_finetune, FinetuneConfig), (main_linprobe, ClassifyConfig)]


@pytest.mark.parametrize("cli,config", CLIS, ids=["pretrain", "finetune", "linprobe"])
def test_config_has_a_field_for_every_flag(cli, config):
    """Every flag of the CLI is a typed field of its config, or an official flag of the one table that means
    something else (--bf16) or nothing (DeepMIM's); every field is a flag, or set by an official flag."""
    flags = set(vars(cli.get_args_parser().parse_args([])))
    official = {flag.dest for flag in official_flags(config.TASK)}
    fields = {f.name for f in dataclasses.fields(config)} - {"flags", *config.NO_FLAG}
    assert fields <= flags and flags - fields <= official
    assert flags - fields == {flag.dest for flag in official_flags(config.TASK) if not flag.sets}


@pytest.mark.parametrize("cli,config", CLIS, ids=["pretrain", "finetune", "linprobe"])
def test_from_args_leaves_flags_alone_and_is_frozen(cli, config, tmp_path):
    """The config resolves log_dir; the Namespace is unchanged; the config cannot be changed; its record
    is plain JSON holding the original flags."""
    args = cli.get_args_parser().parse_args(["--output_dir", str(tmp_path), "--model_kwargs", "depth=2"])
    before = copy.deepcopy(vars(args))
    cfg = config.from_args(args)
    assert vars(args) == before
    assert cfg.log_dir == str(tmp_path) and cfg.resume == "" and cfg.model_kwargs == ("depth=2",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    record = cfg.record()
    assert json.loads(json.dumps(record)) == {**record, "model_kwargs": ["depth=2"],
                                              "flags": {**before, "model_kwargs": ["depth=2"]}}


def test_auto_resume_resolves_the_newest_checkpoint(tmp_path):
    """--auto_resume: the config's resume is the newest checkpoint-<epoch>.pth (or "" in an empty folder);
    --resume wins when given."""
    parse = main_pretrain.get_args_parser().parse_args
    assert PretrainConfig.from_args(parse(["--output_dir", str(tmp_path), "--auto_resume"])).resume == ""
    for epoch in (2, 10):
        (tmp_path / f"checkpoint-{epoch}.pth").write_bytes(b"")
    args = parse(["--output_dir", str(tmp_path), "--auto_resume"])
    assert PretrainConfig.from_args(args).resume == str(tmp_path / "checkpoint-10.pth") and args.resume == ""
    given = parse(["--output_dir", str(tmp_path), "--auto_resume", "--resume", "x.pth"])
    assert PretrainConfig.from_args(given).resume == "x.pth"


def test_deepmim_command_resolves_the_model_name(capsys):
    """DeepMIM's official `--model mae_vit_base_patch16 --clip_path ...` trains DeepMIM-CLIP, says so, and
    leaves --model as typed (kept in the record's flags)."""
    args = main_pretrain.get_args_parser().parse_args(["--model", "mae_vit_base_patch16", "--clip_path", "c.pt"])
    cfg = PretrainConfig.from_args(args)
    assert cfg.model == "deepmim_vit_base_patch16_clip" and args.model == "mae_vit_base_patch16"
    assert "deepmim_vit_base_patch16_clip" in capsys.readouterr().out
    assert cfg.record()["flags"]["model"] == "mae_vit_base_patch16"
    plain = main_pretrain.get_args_parser().parse_args(["--model", "mae_vit_base_patch16"])
    assert PretrainConfig.from_args(plain).model == "mae_vit_base_patch16"


@pytest.mark.parametrize("flag", ["--batch_size", "--accum_iter"])
def test_non_positive_batch_is_a_usage_error(flag):
    with pytest.raises(UsageError, match="positive"):
        FinetuneConfig.from_args(main_finetune.get_args_parser().parse_args([flag, "0"]))


def test_scaled_lr_uses_lr_when_given():
    parse = main_linprobe.get_args_parser().parse_args
    assert ClassifyConfig.from_args(parse(["--blr", "0.1", "--batch_size", "512"])).scaled_lr(4) == (0.8, 2048)
    assert ClassifyConfig.from_args(parse(["--lr", "3.0", "--batch_size", "512"])).scaled_lr(4) == (3.0, 2048)


def test_what_the_trainer_needs_is_declared_by_every_config():
    """fsdp is one field of every config (linear probing takes no --fsdp and is never sharded), evaluates_only
    says whether --eval writes nothing, TASK whether the CLI takes --finetune: no hasattr on the config's class."""
    linprobe = main_linprobe.get_args_parser().parse_args
    assert not ClassifyConfig.from_args(linprobe([])).fsdp
    with pytest.raises(UsageError, match="unrecognized arguments: --fsdp"):
        linprobe(["--fsdp"])
    assert FinetuneConfig.from_args(main_finetune.get_args_parser().parse_args(["--fsdp"])).fsdp
    assert ClassifyConfig.from_args(linprobe(["--eval"])).evaluates_only
    assert not PretrainConfig.from_args(main_pretrain.get_args_parser().parse_args([])).evaluates_only
    assert (PretrainConfig.TASK, ClassifyConfig.TASK, FinetuneConfig.TASK) == ("pretrain", "classify", "classify")
