"""Ctrl-C (SIGINT) during training: the step under way finishes and a resumable checkpoint of where the epoch
stopped is saved, with stdout piped as under nohup, tee or a CI runner (where KeyboardInterrupt once left the
run hung on a lock); a second Ctrl-C ends the process at once (RELIABILITY.md, Interruptions)."""
import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from base.safe_load import load_file
from conftest import make_image_folder
from test_faults_runs import pretrain_cli
from test_pretrain import ROOT
from util.session import StopOnSignals, ignore_stop_signals

# Every checkpoint save hangs (as a save stuck on a lock or a full network disk would): the run is held inside
# its stop, where only the second Ctrl-C can end it.
STUCK_SAVE = ("import runpy, sys, time\n"
              "import util.checkpoint\n"
              "def stuck(path, state):\n"
              "    print('saving', path, flush=True)\n"
              "    time.sleep(600)\n"
              "util.checkpoint.save_checkpoint = stuck\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")


class Output:
    """The merged stdout and stderr of a process started with pipes, read by a thread, so that waiting for a line
    has a deadline even when the process hangs."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, start: str, timeout: float = 120) -> bool:
        """Whether a line starting with ``start`` comes before the output ends (``queue.Empty`` past ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
            self.lines.append(line)
            if line.startswith(start):
                return True
        return False

    def text(self, timeout: float = 30) -> str:
        """All of it, once the process has closed its end (what came within ``timeout`` if it has not)."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Empty):
            while (line := self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
                self.lines.append(line)
        return "".join(self.lines)


@contextlib.contextmanager
def started(argv: list[str]):
    """``python argv`` in its own process group (its data loader worker in it), stdout and stderr piped; the
    group is killed on the way out, whatever the test found."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)
    try:
        yield proc, Output(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_workers_ignore_ctrl_c():
    """Ctrl-C reaches the whole foreground group: data loader workers leave it to the main process."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ignore_stop_signals(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_first_ctrl_c_only_sets_the_flag(capfd):
    """No KeyboardInterrupt: the flag is set, the user told (stderr), and the next Ctrl-C left to the system's
    default action; ``close`` gives Python's handler back."""
    stop = StopOnSignals()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs in this thread at the next bytecode boundary
        assert stop.requested and stop.reason == "SIGINT"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert stop.poll(3) and stop.stopped_after == 3
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert "Ctrl-C again stops at once" in capfd.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_mid_epoch_with_stdout_piped(tmp_path):
    """SIGINT to the run's group in epoch 0: the run saves checkpoint-0-batch<k>.pth, says so in one line and
    exits 0 within seconds, no traceback."""
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    with started(pretrain_cli(data, out)) as (proc, output):
        assert output.wait_for("Epoch: [0] [2/8]"), output.text()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    text = output.text()
    assert code == 0 and "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    stopped = re.search(r"^SIGINT: stopped after batch (\d) of 8 of epoch 0 and saved (\S+): --auto_resume "
                        r"continues from there$", text, re.MULTILINE)
    assert stopped, text[-3000:]
    done, path = int(stopped.group(1)), stopped.group(2)
    assert path == str(out / f"checkpoint-0-batch{done}.pth")
    ckpt = load_file(path)
    assert (ckpt["epoch"], ckpt["batches_done"], ckpt["epoch_batches"]) == (0, done, 8)


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once(tmp_path):
    """A second SIGINT while the stop's save hangs ends the process at once (killed by SIGINT), no traceback."""
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    with started(["-c", STUCK_SAVE, *pretrain_cli(data, out)]) as (proc, output):
        assert output.wait_for("Epoch: [0] [2/8]"), output.text()
        os.killpg(proc.pid, signal.SIGINT)
        assert output.wait_for("saving "), output.text()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=20)
    text = output.text()
    assert code == -signal.SIGINT and "Traceback" not in text, text[-3000:]
    assert not list(out.glob("checkpoint-*"))
