"""The pretraining loop: learning, reproducibility, exact resume, DDP and accumulation equivalence, clear errors."""
import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import main_pretrain
from base.safe_load import load_file
from conftest import TINY_MAE
from engine_pretrain import PretrainEngine
from models import create_model
from models.masking import Masks, RandomMasking
from util import distributed as dist_util
from util.config import PretrainConfig
from util.logging import NonFiniteLossError
from util.optim import weight_decay_groups
from util.session import Session
from util.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY_KWARGS = ["embed_dim=32", "depth=2", "num_heads=2", "patch_size=8",
               "decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2"]


def pretrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "mae_vit_tiny_patch16", "--model_kwargs", *TINY_KWARGS, "--data_path", str(data),
            "--input_size", "32", "--batch_size", "8", "--warmup_epochs", "1", "--lr", "2e-3",
            "--num_workers", "0", "--device", "cpu", "--output_dir", str(out), "--print_freq", "2", *extra]


def pretrain_args(data: Path, out: Path, *extra: str):
    return main_pretrain.get_args_parser().parse_args(pretrain_argv(data, out, *extra))


def one_epoch(model, loader, optimizer, lr: float, *flags: str, wrapped=None) -> dict:
    """Train ``model`` (through ``wrapped``, e.g. DDP, when given) one epoch of ``loader`` with the trainer's loop,
    as main_pretrain would with ``flags``."""
    args = main_pretrain.get_args_parser().parse_args(["--device", "cpu", "--epochs", "1", *flags])
    session = Session(dist_util.get_rank(), dist_util.get_world_size(), torch.device("cpu"), "fp32", None)
    trainer = Trainer(PretrainConfig.from_args(args), session, model, optimizer, lr)
    return trainer.train_epoch(PretrainEngine(None), wrapped or model, loader, epoch=0)


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_short_pretrain_learns_and_leaves_artifacts(image_folder, tmp_path):
    """A few epochs on a generated ImageFolder: the loss goes down; checkpoint, PNG, TensorBoard exist."""
    out = tmp_path / "run"
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "8", "--vis_freq", "4"))
    losses = [rec["train_loss"] for rec in read_log(out)]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0], losses
    assert (out / "checkpoint-7.pth").is_file()
    assert (out / "reconstruction-0003.png").is_file() and (out / "reconstruction-0007.png").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    ckpt = load_file(str(out / "checkpoint-7.pth"))
    assert {"model", "optimizer", "scaler", "epoch", "step", "args", "rng"} <= set(ckpt)
    assert ckpt["epoch"] == 7 and ckpt["step"] == 8 * 4
    # the run's settings as derived (absolute LR, effective batch) beside the flags as given
    assert ckpt["args"]["lr"] == 2e-3 and ckpt["args"]["eff_batch"] == 8 and ckpt["args"]["log_dir"] == str(out)
    assert ckpt["args"]["flags"]["log_dir"] is None and ckpt["args"]["model"] == "mae_vit_tiny_patch16"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def assert_same_models(a: Path, b: Path) -> None:
    state_a, state_b = load_file(str(a))["model"], load_file(str(b))["model"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key


def test_same_command_gives_same_weights(image_folder, tmp_path):
    """The same command run twice gives bit-identical weights, whatever the RNGs held before: the seed is
    set before the model is built. The parsed flags are left as they were."""
    runs = []
    for name, noise in (("a", 0), ("b", 1)):
        torch.manual_seed(noise)  # a different global RNG state before each run
        args = pretrain_args(image_folder, tmp_path / name, "--epochs", "1", "--vis_freq", "100")
        before = copy.deepcopy(vars(args))
        main_pretrain.main(args)
        assert vars(args) == before
        runs.append(tmp_path / name / "checkpoint-0.pth")
    assert_same_models(*runs)


def test_resume_matches_uninterrupted_run(image_folder, tmp_path):
    """Resuming from epoch 0's checkpoint reproduces epoch 1 bit for bit (data order, augmentation,
    masks, optimizer); data loader workers are reseeded from the restored RNG."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = ("--epochs", "2", "--save_freq", "1", "--vis_freq", "100", "--num_workers", "2")
    main_pretrain.main(pretrain_args(image_folder, full, *common))
    main_pretrain.main(pretrain_args(image_folder, resumed, *common, "--resume", str(full / "checkpoint-0.pth")))
    assert_same_models(full / "checkpoint-1.pth", resumed / "checkpoint-1.pth")
    assert read_log(full)[1]["train_loss"] == read_log(resumed)[0]["train_loss"]


def test_auto_resume_picks_newest(image_folder, tmp_path):
    """--auto_resume continues after the newest checkpoint in output_dir."""
    out = tmp_path / "run"
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100"))
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "2", "--vis_freq", "100", "--auto_resume"))
    assert [rec["epoch"] for rec in read_log(out)] == [0, 1]


class SharedMasking:
    """One fixed mask for every sample, so the masks do not depend on how the batch is split."""

    def __call__(self, n, grid_size, device, generator=None):
        one = RandomMasking(0.75)(1, grid_size, device, torch.Generator(device).manual_seed(0))
        return Masks(one.mask.expand(n, -1), one.ids_keep.expand(n, -1), one.ids_restore.expand(n, -1))


def _train_tiny(rank: int, world_size: int, batch_size: int, accum_iter: int = 1) -> dict:
    torch.manual_seed(0)
    model = create_model("mae_vit_tiny_patch16", **TINY_MAE)
    model.masking = SharedMasking()
    data = TensorDataset(torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(1)), torch.zeros(32, dtype=torch.long))
    sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=False)
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    # SGD, not AdamW: Adam rescales gradients that are zero up to rounding (the key bias of attention
    # has none) into full steps, which would compare float noise rather than the averaging
    optimizer = torch.optim.SGD(weight_decay_groups(model, 0.05), lr=0.05, momentum=0.9)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    one_epoch(model, loader, optimizer, 0.05, "--accum_iter", str(accum_iter), "--print_freq", "100", wrapped=wrapped)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank: int, world_size: int, port: int, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist_util.init_distributed("cpu")
    state = _train_tiny(rank, world_size, batch_size=4)
    if rank == 0:
        torch.save(state, out_file)
    dist_util.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_weights(a: dict, b: dict) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-6, msg=key)


@pytest.mark.slow
def test_two_ddp_processes_match_one(tmp_path):
    """2 gloo processes x batch 4 train exactly like 1 process x batch 8 (gradients averaged)."""
    out_file = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out_file), nprocs=2, join=True)
    _assert_same_weights(_train_tiny(0, 1, batch_size=8), torch.load(out_file, weights_only=True))


def test_accumulation_matches_large_batch():
    """batch 4 x accum_iter 2 follows the same trajectory as batch 8."""
    _assert_same_weights(_train_tiny(0, 1, batch_size=8), _train_tiny(0, 1, batch_size=4, accum_iter=2))


def test_nan_loss_stops_with_clear_message():
    """A non-finite loss raises at the next log step with a sentence that suggests the fix."""
    model = create_model("mae_vit_tiny_patch16", **TINY_MAE)
    with torch.no_grad():
        model.encoder.patch_embed.proj.bias.fill_(float("nan"))  # the loaders' uint8 images cannot hold a NaN
    data = TensorDataset(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.zeros(8, dtype=torch.long))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError, match="not finite.*--blr"):
        one_epoch(model, DataLoader(data, batch_size=4), optimizer, 1e-3, "--print_freq", "1")


def run_cli(*argv: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.parametrize("argv,expected", [
    (["--data_path", "/no/such/folder"], "/no/such/folder"),
    (["--model", "mae_vit_bse_patch16", "--data_path", str(ROOT / "docs")], "did you mean mae_vit_base_patch16"),
    (["--data_set", "fashion_mnist", "--data_path", "/no/such/folder"], "dataset-fashion-mnist"),
])
def test_cli_errors_are_one_line(argv, expected, tmp_path):
    """Bad flags and paths fail with exit code 2 and one line naming the fix, no traceback."""
    result = run_cli("main_pretrain.py", "--device", "cpu", "--output_dir", str(tmp_path), *argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["-m", "torch.distributed.run"], ["-m", "torch.distributed.launch"]])
def test_cli_under_distributed_launchers(image_folder, tmp_path, launcher):
    """The CLI trains under torchrun and under the old launcher (which passes --local-rank)."""
    out = tmp_path / "run"
    result = run_cli(*launcher, "--nproc_per_node", "2", "--master_port", str(_free_port()), "main_pretrain.py",
                     "--model", "mae_vit_tiny_patch16", "--model_kwargs", *TINY_KWARGS,
                     "--data_path", str(image_folder), "--input_size", "32", "--batch_size", "4",
                     "--epochs", "1", "--num_workers", "0", "--device", "cpu", "--output_dir", str(out),
                     timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    assert (out / "checkpoint-0.pth").is_file() and len(read_log(out)) == 1


@pytest.mark.slow
def test_compiled_training_saves_official_keys(image_folder, tmp_path):
    """--compile trains (torch.compile on the CPU) and the checkpoint keeps the plain official keys."""
    out = tmp_path / "run"
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100", "--compile"))
    keys = load_file(str(out / "checkpoint-0.pth"))["model"].keys()
    assert "blocks.0.attn.qkv.weight" in keys and not [k for k in keys if "_orig_mod" in k or "encoder." in k]
