"""The submitit launchers (submitit_*.py, util/submitit_launch.py): the official flags' Slurm job, each task's
process-group variables, and a tiny job run by submitit's local executor, stopped by the timeout signal,
requeued with --auto_resume, finished, then linear-probed."""
import argparse
import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from base.errors import UsageError
from base.safe_load import load_file
from conftest import make_image_folder
from util import distributed as dist_util
from util.distributed import LaunchFlags
from util.submitit_launch import Task, launch, submit

TINY_PRETRAIN = ["--model", "mae_vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=2", "num_heads=2",
                 "patch_size=8", "decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2",
                 "--input_size", "32", "--batch_size", "4", "--lr", "1e-3", "--warmup_epochs", "0",
                 "--num_workers", "0", "--device", "cpu", "--print_freq", "1"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``srun`` and ``sbatch`` on PATH that launch nothing: sbatch answers as Slurm does, job 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 4242'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "jobs"


def sbatch_lines(job_dir: Path) -> set[str]:
    return {line for line in (job_dir / "4242" / "4242_submission.sh").read_text().splitlines()
            if line.startswith("#SBATCH")}


def test_official_flags_make_the_slurm_job(fake_slurm):
    """MAE's PRETRAIN.md command: 8 nodes x 8 GPUs, one task per GPU, 32 GB V100s, 72 h, USR2 120 s before the
    end; the task runs main_pretrain with the other flags, its output folder the job folder."""
    job = submit("main_pretrain", "test", [
        "--job_dir", str(fake_slurm / "%j"), "--nodes", "8", "--use_volta32", "--batch_size", "64",
        "--model", "mae_vit_large_patch16", "--norm_pix_loss", "--mask_ratio", "0.75", "--epochs", "800",
        "--warmup_epochs", "40", "--blr", "1.5e-4", "--weight_decay", "0.05", "--data_path", "/imagenet",
        "--comment", "mae run"])
    assert job.job_id == "4242"
    assert {"#SBATCH --nodes=8", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=8",
            "#SBATCH --constraint=volta32gb", "#SBATCH --partition=learnfair", "#SBATCH --time=4320",
            "#SBATCH --signal=USR2@120", "#SBATCH --comment='mae run'", "#SBATCH --cpus-per-task=10",
            "#SBATCH --mem=320GB"} <= sbatch_lines(fake_slurm)
    with open(fake_slurm / "4242" / "4242_submitted.pkl", "rb") as f:
        task = pickle.load(f).function
    assert isinstance(task, Task) and task.module == "main_pretrain"
    args = vars(task.args)
    assert args["output_dir"] == str(fake_slurm / "%j") and args["log_dir"] is None
    assert args["batch_size"] == 64 and args["blr"] == 1.5e-4 and args["norm_pix_loss"]
    assert not {"job_dir", "nodes", "ngpus", "timeout", "partition", "use_volta32", "comment"} & set(args)


def test_ngpus_partition_and_timeout(fake_slurm):
    """--ngpus sets GPUs and tasks per node; no --use_volta32, no constraint; --output_dir is kept."""
    submit("main_linprobe", "test", ["--job_dir", str(fake_slurm / "%j"), "--nodes", "4", "--ngpus", "2",
                                     "--partition", "dev", "--timeout", "90", "--output_dir", "/out/%j"])
    lines = sbatch_lines(fake_slurm)
    assert {"#SBATCH --nodes=4", "#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2",
            "#SBATCH --partition=dev", "#SBATCH --time=90", "#SBATCH --mem=80GB"} <= lines
    assert not [line for line in lines if "constraint" in line or "comment" in line]
    with open(fake_slurm / "4242" / "4242_submitted.pkl", "rb") as f:
        assert pickle.load(f).function.args.output_dir == "/out/%j"


def test_local_cluster_refuses_several_nodes(tmp_path):
    with pytest.raises(UsageError, match="--cluster local: .*one node"):
        submit("main_pretrain", "test", ["--cluster", "local", "--job_dir", str(tmp_path), "--nodes", "2"])


def test_each_task_exports_its_place_in_the_job(tmp_path, monkeypatch):
    """Task 9 of 16 (node 1 of node[3-4]): RANK 9, WORLD_SIZE 16, LOCAL_RANK 1, MASTER_ADDR the first node;
    %j in the output folder is the job id; a job Slurm requeued resumes the newest checkpoint there."""
    (tmp_path / "recorder.py").write_text(
        "import os\nseen = {}\n"
        "def main(args):\n"
        "    seen.update(args=args, env={k: os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', "
        "'MASTER_ADDR', 'MASTER_PORT')})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "")  # recorded, so that what the task exports is undone after the test
        monkeypatch.delenv(key)
    slurm = dict(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="777", SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2",
                 SLURM_NODEID="1", SLURM_PROCID="9", SLURM_LOCALID="1", SLURM_JOB_NODELIST="node[3-4]",
                 SLURM_RESTART_COUNT="1")
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "out-777").mkdir()
    (tmp_path / "out-777" / "checkpoint-3.pth").write_bytes(b"")
    args = argparse.Namespace(output_dir=str(tmp_path / "out-%j"), log_dir=None, resume="first.pth",
                              auto_resume=False)
    Task("recorder", args)()
    import recorder
    env = recorder.seen["env"]
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("9", "16", "1", "node3")
    assert 20000 <= int(env["MASTER_PORT"]) <= 60000
    ran = recorder.seen["args"]
    assert ran.output_dir == str(tmp_path / "out-777") and ran.auto_resume and ran.resume == ""
    assert args.output_dir.endswith("out-%j") and args.resume == "first.pth"  # the pickled task is unchanged
    # the CLI then joins the group at exactly that place
    assert dist_util.placement(LaunchFlags()) == dist_util.Placement(9, 16, 1)


def task_pids(job_pid: int) -> list[int]:
    """The job's task processes: descendants of the local job's process running submitit's task runner."""
    found, todo = [], [job_pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"submitit.core._submit" in cmdline:
            found.append(pid)
        todo += [int(c) for c in children]
    return found


def wait_for(path: Path, job) -> None:
    while not path.exists():
        assert job.state == "RUNNING", f"the job ended before {path.name}:\n{job.stdout()}\n{job.stderr()}"
        time.sleep(0.05)


@pytest.mark.slow
def test_local_job_stops_at_the_timeout_signal_requeues_and_finishes(tmp_path, image_folder):
    """A tiny pretraining through submitit's local executor (1 task): the timeout signal (USR2) after its
    first epoch stops it after a step with a checkpoint; the job requeues itself with --auto_resume and
    trains the rest (each epoch logged once). A linear probe from its checkpoint then runs as a job too."""
    job_dir = tmp_path / "jobs" / "%j"
    job = submit("main_pretrain", "test", ["--cluster", "local", "--nodes", "1", "--ngpus", "1",
                                           "--job_dir", str(job_dir), "--data_path", str(image_folder),
                                           "--data_limit", "16", "--epochs", "4", "--save_freq", "1",
                                           *TINY_PRETRAIN])
    out = Path(str(job_dir).replace("%j", job.job_id))
    wait_for(out / "checkpoint-0.pth", job)
    (task,) = task_pids(int(job.job_id))
    os.kill(task, signal.SIGUSR2)
    job.result()
    log = job.stdout()
    assert "SIGTERM: stopped after batch" in log and "requeued: main_pretrain --auto_resume" in log
    assert "resumed from" in log
    assert [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()] == list(range(4))
    ckpt = load_file(str(out / "checkpoint-3.pth"))
    assert ckpt["args"]["auto_resume"] and ckpt["args"]["output_dir"] == str(out)
    assert not list(out.glob("checkpoint-*-batch*.pth"))  # the stop's checkpoint was superseded

    make_image_folder(image_folder, split="val", per_class=4)
    probe = submit("main_linprobe", "test", [
        "--cluster", "local", "--nodes", "1", "--ngpus", "1", "--job_dir", str(tmp_path / "probe" / "%j"),
        "--model", "vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=2", "num_heads=2", "patch_size=8",
        "--finetune", str(out / "checkpoint-3.pth"), "--data_path", str(image_folder), "--input_size", "32",
        "--data_limit", "16", "--batch_size", "8", "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0",
        "--device", "cpu"])
    metrics = probe.result()
    probe_out = tmp_path / "probe" / probe.job_id
    assert 0 <= metrics["acc1"] <= 100 and (probe_out / "checkpoint-0.pth").is_file()
    state = load_file(str(probe_out / "checkpoint-0.pth"))["model"]
    assert torch.equal(state["blocks.0.attn.qkv.weight"], ckpt["model"]["blocks.0.attn.qkv.weight"])


def test_launcher_error_is_one_line(tmp_path, monkeypatch, capsys):
    """A bad flag of the wrapped CLI: one line, exit 2, before anything is submitted."""
    monkeypatch.setattr(sys, "argv", ["submitit_finetune.py", "--cluster", "local", "--job_dir", str(tmp_path),
                                      "--blr", "-1"])
    with pytest.raises(SystemExit) as stop:
        launch("main_finetune", "test")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "--blr" in err
    assert not list(tmp_path.iterdir())
