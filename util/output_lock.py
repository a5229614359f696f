"""One run per output folder: an exclusive lock in ``--output_dir``, taken before any model or data is built.

Two runs writing into one folder would interleave their checkpoints and log.txt, and ``--auto_resume`` could pick
up the other run's weights. The lock is ``flock`` on ``output_dir/.lock``: the kernel releases it when its holder
exits or dies, so a crashed run leaves no stale lock behind (the file stays; only the lock on it matters).
"""
import contextlib
import fcntl
import glob
import os
import socket
from typing import Iterator

from base.errors import UsageError

LOCK_FILE = ".lock"
TEMP_PATTERNS = (".tmp-*.pth", ".tmp-*.png")  # util.output_files.atomic_write's temp checkpoints and pictures


@contextlib.contextmanager
def claim_output_dir(output_dir: str, log_dir: str) -> Iterator[None]:
    """Hold ``output_dir`` for this run while the block runs: check that it and ``log_dir`` can be written, lock
    it (a second run is refused with one line), then remove the temp files an interrupted save left in it."""
    try:
        for folder in dict.fromkeys((output_dir, log_dir)):
            os.makedirs(folder, exist_ok=True)
        handle = open(os.path.join(output_dir, LOCK_FILE), "a+")
    except OSError as err:
        raise UsageError(f"cannot write to {err.filename or output_dir} ({err.strerror}): pass an --output_dir "
                         "(and --log_dir) you can write to") from err
    with handle:  # closing the file releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that is starting"
            raise UsageError(f"another run ({holder}) is writing to --output_dir {output_dir}: wait for it to end "
                             "or pass another --output_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        remove_stale_temps(output_dir)
        yield


def remove_stale_temps(output_dir: str) -> None:
    """Delete the ``.tmp-*.pth`` / ``.tmp-*.png`` files of saves that were killed before their rename (each can be
    as large as a checkpoint). Only with the lock held: then no save of a live run is under way in this folder."""
    stale = [path for pattern in TEMP_PATTERNS for path in glob.glob(os.path.join(output_dir, pattern))]
    if not stale:
        return
    size = sum(os.path.getsize(path) for path in stale)
    for path in stale:
        os.remove(path)
    print(f"removed {len(stale)} temp file(s) of an interrupted save from {output_dir} "
          f"({size / 2 ** 20:.1f} MiB)")
