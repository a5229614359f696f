"""Runs that meet each other or the operating system: one run per output folder, temp files of crashed saves,
an output folder that cannot be written, SIGTERM and kill -9 mid-epoch (RELIABILITY.md, items 3, 4, 8, 10)."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

import main_pretrain
from base.errors import UsageError
from conftest import make_image_folder
from test_pretrain import ROOT, _free_port, assert_same_models, pretrain_args, pretrain_argv, read_log

HOLD_LOCK = ("import sys, time; from util.session import claim_output_dir\n"
             "with claim_output_dir(sys.argv[1], sys.argv[1]):\n"
             "    print('locked', flush=True); time.sleep(120)")


def test_second_run_in_one_output_dir_is_refused(image_folder, tmp_path):
    """While another process holds the folder, a run stops in one line naming it; once that process is killed
    (kill -9: no clean-up of its own), the stale lock file does not stand in the way."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"another run \(pid {holder.pid} on .*\) is writing to --output_dir"):
            main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1"))
        assert not (out / "log.txt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100"))
    assert len(read_log(out)) == 1


def test_stale_temp_files_are_removed_at_start(image_folder, tmp_path, capsys):
    """The .tmp-*.pth/.png of saves killed before their rename go once the lock is held; nothing else is touched."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".tmp-k1ll3d.pth").write_bytes(b"\0" * 4096)
    (out / ".tmp-k1ll3d.png").write_bytes(b"\0" * 16)
    (out / "notes.tmp").write_text("mine")
    main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100"))
    assert not list(out.glob(".tmp-*")) and (out / "notes.tmp").read_text() == "mine"
    assert "removed 2 temp file(s) of an interrupted save" in capsys.readouterr().out


def test_unwritable_output_dir_is_refused_before_model_and_data(tmp_path):
    """An --output_dir that cannot be created (here below a file: root writes anywhere) is one line, before the
    (missing) data is looked at."""
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"
    with pytest.raises(UsageError, match=f"cannot write to {out} .*: pass an --output_dir"):
        main_pretrain.main(pretrain_args(tmp_path / "no_data", out, "--epochs", "1"))
    assert os.path.isfile(tmp_path / "a_file")


# ------------------------------------------------------------------------------- interrupted runs (subprocess)

STEPS = ("--epochs", "2", "--batch_size", "4", "--print_freq", "1", "--num_workers", "1", "--vis_freq", "100")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): 2 epochs of 8 steps each, one thread as in the subprocesses, never stopped."""
    data = make_image_folder(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    torch.set_num_threads(1)
    main_pretrain.main(pretrain_args(data, out, *STEPS))
    return data, out


def start_and_signal(argv: list[str], after: str, send: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """Run ``python argv`` in its own process group, ``send`` it a signal once a line starting with ``after`` is
    printed; return (exit code, output)."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(after):
            send(proc)
            break
    lines += proc.stdout.readlines()
    return proc.wait(timeout=120), "".join(lines)


def to_group(sig: int) -> Callable[[subprocess.Popen], None]:
    """Signal the whole process group, as schedulers do: data loader workers and torchrun's ranks too."""
    return lambda proc: os.killpg(proc.pid, sig)


def pretrain_cli(data: Path, out: Path, *extra: str) -> list[str]:
    return ["main_pretrain.py", *pretrain_argv(data, out, *STEPS, *extra)]


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resumes_exactly(uninterrupted, tmp_path):
    """SIGTERM in epoch 0: the step under way finishes, a checkpoint of where the epoch stopped is written, the
    run exits 0; --auto_resume skips the batches done and ends with the uninterrupted run's weights."""
    data, reference = uninterrupted
    out = tmp_path / "run"
    code, output = start_and_signal(pretrain_cli(data, out), "Epoch: [0] [2/8]", to_group(signal.SIGTERM))
    assert code == 0, output[-3000:]
    partial = re.search(r"SIGTERM: stopped after batch (\d) of 8 of epoch (\d) and saved (\S+):", output)
    assert partial, output[-3000:]
    assert Path(partial.group(3)) == out / "checkpoint-{1}-batch{0}.pth".format(*partial.groups())
    torch.set_num_threads(1)
    main_pretrain.main(pretrain_args(data, out, *STEPS, "--auto_resume"))
    assert_same_models(reference / "checkpoint-1.pth", out / "checkpoint-1.pth")
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint-1.pth"]  # the partial one is superseded


@pytest.mark.slow
def test_kill_9_mid_epoch_resumes_exactly(uninterrupted, tmp_path):
    """kill -9 in epoch 1 (no handler runs): --auto_resume redoes epoch 1 from checkpoint-0.pth and ends with the
    uninterrupted run's weights."""
    data, reference = uninterrupted
    out = tmp_path / "run"
    code, output = start_and_signal(pretrain_cli(data, out, "--save_freq", "1"), "Epoch: [1] [2/8]",
                                    to_group(signal.SIGKILL))
    assert code == -signal.SIGKILL and (out / "checkpoint-0.pth").is_file(), output[-3000:]
    assert not (out / "checkpoint-1.pth").exists()
    torch.set_num_threads(1)
    main_pretrain.main(pretrain_args(data, out, *STEPS, "--save_freq", "1", "--auto_resume"))
    assert_same_models(reference / "checkpoint-1.pth", out / "checkpoint-1.pth")


def kill_one_rank(proc: subprocess.Popen) -> None:
    ranks = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
    os.kill(int(ranks.split()[-1]), signal.SIGKILL)


@pytest.mark.slow
def test_torchrun_sigterm_resume_and_killed_rank(image_folder, tmp_path):
    """2 gloo ranks under torchrun: SIGTERM to the job makes the ranks agree on a step and rank 0 saves there;
    --auto_resume under torchrun goes on from it; a rank killed -9 then ends the job."""
    out = tmp_path / "run"

    def launch(after: str, send: Callable[[subprocess.Popen], None], *extra: str) -> tuple[int, str]:
        argv = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
                *pretrain_cli(image_folder, out, "--epochs", "3", "--batch_size", "2", "--save_freq", "1", *extra)]
        return start_and_signal(argv, after, send)

    code, output = launch("Epoch: [1] [1/8]", to_group(signal.SIGTERM))
    partial = re.search(r"SIGTERM: stopped after batch (\d) of 8 of epoch 1 and saved", output)
    assert partial and (out / f"checkpoint-1-batch{partial.group(1)}.pth").is_file(), output[-3000:]
    code, output = launch("Epoch: [2] ", kill_one_rank, "--auto_resume")
    assert "resumed from" in output and code != 0, output[-3000:]
    assert [r["epoch"] for r in read_log(out)] == [0, 1]
    assert sorted(p.name for p in out.glob("*.pth")) == ["checkpoint-0.pth", "checkpoint-1.pth"]
