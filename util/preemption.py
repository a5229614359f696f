"""Stopping at SIGTERM, what cluster schedulers send before they preempt a job, and at SIGINT (Ctrl-C): the run
finishes the optimizer step it is in, saves a checkpoint that ``--auto_resume`` continues from exactly, and
exits 0. A second Ctrl-C ends the process at once, without saving.

Why not Python's KeyboardInterrupt: it is raised wherever the main thread happens to be, e.g. between taking and
releasing a lock of the TensorBoard writer or of a buffered stdout, and closing the run afterwards then waits on
that lock forever (seen with stdout piped). Here the handlers only set a flag; nothing is raised."""
import os
import signal
import threading

import torch
import torch.distributed as dist

from util import distributed as dist_util

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FIRST_CTRL_C_NOTE = (b"SIGINT: finishing the optimizer step under way, then saving a checkpoint to resume from "
                     b"(Ctrl-C again stops at once, without saving)\n")


class StopOnSignals:
    """A flag SIGTERM or SIGINT sets and the loop reads at each optimizer-step boundary (``poll``). Under DDP the
    processes agree there, by an all-reduce of the flag on a CPU (gloo) group: no device sync, and all stop after
    the same step whichever of them got the signal. The first SIGINT also gives SIGINT back to the system's
    default action, so the next one ends the process even while it is blocked in C code (a collective, a lock).
    The previous handlers come back with ``close``."""

    def __init__(self):
        self.received: str | None = None  # the first stop signal this process got ("SIGTERM", "SIGINT")
        self.stopped_after: int | None = None  # batches of the epoch done when the run stopped
        self._group = dist.new_group(backend="gloo") if dist_util.is_distributed() else None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def reason(self) -> str:
        """The signal that stopped the run, as its messages name it."""
        return self.received or "a stop signal to another process"

    def _handle(self, signum: int, frame) -> None:
        # only a flag: the step under way finishes, the loop saves at its end
        self.received = self.received or signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:  # os.write, not print: the main thread may be inside a print to the same stream
                os.write(2, FIRST_CTRL_C_NOTE)
            except OSError:  # no stderr to tell (closed, or its reader gone)
                pass

    def poll(self, batches_done: int) -> bool:
        """Whether to stop now, ``batches_done`` batches into the epoch (the same answer on every process)."""
        requested = self.requested
        if self._group is not None:
            flag = torch.tensor([int(requested)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            requested = bool(flag.item())
        if requested:
            self.stopped_after = batches_done
        return requested

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
