"""Stopping at SIGTERM, what cluster schedulers send before they preempt a job: the run finishes the optimizer
step it is in, saves a checkpoint that ``--auto_resume`` continues from exactly, and exits 0."""
import signal
import threading

import torch
import torch.distributed as dist

from util import distributed as dist_util


class StopOnSigterm:
    """A flag SIGTERM sets and the loop reads at each optimizer-step boundary (``poll``). Under DDP the processes
    agree there, by an all-reduce of the flag on a CPU (gloo) group: no device sync, and all stop after the same
    step whichever of them got the signal. The previous handler comes back with ``close``."""

    def __init__(self):
        self.requested = False
        self.stopped_after: int | None = None  # batches of the epoch done when the run stopped
        self._group = dist.new_group(backend="gloo") if dist_util.is_distributed() else None
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.requested = True  # only a flag: the step under way finishes, the loop saves at its end

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
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
