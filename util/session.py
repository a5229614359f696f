"""Where and how this process runs, set up the same way by every CLI: device, process group, seed, precision
(and its autocast), the output folder's lock, the stop signals (SIGTERM, SIGINT) and this process's resumable
shard of the training data.

One run per output folder: the lock is ``flock`` on ``output_dir/.lock``, taken before any model or data is built.
Two runs writing into one folder would interleave their checkpoints and log.txt, and ``--auto_resume`` could pick
up the other run's weights; the kernel releases the lock when its holder exits or dies, so a crashed run leaves
no stale lock behind (the file stays; only the lock on it matters).

Stopping at SIGTERM, what cluster schedulers send before they preempt a job, and at SIGINT (Ctrl-C): the run
finishes the optimizer step it is in, saves a checkpoint that ``--auto_resume`` continues from exactly, and exits 0.
A second Ctrl-C ends the process at once, without saving. Why not Python's KeyboardInterrupt: it is raised
wherever the main thread happens to be, e.g. between taking and releasing a lock of the TensorBoard writer or of a
buffered stdout, and closing the run afterwards then waits on that lock forever (seen with stdout piped). Here the
handlers only set a flag; nothing is raised.

An epoch is resumable part-way: the sampler can start after the batches already trained, and each item is made
from its own seed, so that its augmentation is the same whoever draws it and whatever came before."""
import contextlib
import fcntl
import glob
import itertools
import os
import random
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from base.errors import UsageError
from util import distributed as dist_util
from util.config import RunConfig
from util.data import check_outside_data
from util.runtime import amp_choice, seed_everything, select_device

LOCK_FILE = ".lock"
TEMP_PATTERNS = (".tmp-*.pth", ".tmp-*.png")  # util.output_files.atomic_write's temp checkpoints and pictures
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# batches each training DataLoader worker keeps ready: uint8 batches are a quarter of float32's bytes, so four of
# them hold the memory of one float32 batch and ride out RandAugment's uneven cost per image
PREFETCH_BATCHES = 4
FIRST_CTRL_C_NOTE = (b"SIGINT: finishing the optimizer step under way, then saving a checkpoint to resume from "
                     b"(Ctrl-C again stops at once, without saving)\n")


@dataclass(frozen=True)
class Session:
    """This process's rank among ``world_size``, its device, and the precision it trains in."""

    rank: int
    world_size: int
    device: torch.device
    amp_name: str
    amp_dtype: torch.dtype | None


@contextlib.contextmanager
def start_session(cfg: RunConfig) -> Iterator[Session]:
    """Join the process group (torchrun, torch.distributed.launch, or none), seed every RNG with
    ``seed + rank``, choose the precision and hold ``--output_dir`` (``claim_output_dir``; the main process
    locks it, every process learns whether that failed) while the block runs; an output folder inside the data,
    or holding it, is refused (``util.data.check_outside_data``). Each CLI enters it first,
    before any model or data exists, so that the same command builds the same model and draws the same
    batches, and a folder in use or not writable is refused at once. ``--eval`` writes nothing: no lock."""
    rank, world_size, device = dist_util.init_distributed(select_device(cfg.device), cfg.local_rank, cfg.launch)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input sizes: cuDNN picks its fastest kernels once
    if device.type == "cuda":  # TF32 for the matmuls and convolutions left in fp32 (all of them under --amp fp32)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed_everything(cfg.seed + rank)
    with contextlib.ExitStack() as lock:
        refusal = None
        if rank == 0 and not cfg.evaluates_only:
            try:
                check_outside_data(cfg.data_set, cfg.data_path, cfg.output_dir, cfg.log_dir)
                lock.enter_context(claim_output_dir(cfg.output_dir, cfg.log_dir))
            except UsageError as err:
                refusal = str(err)
        refusal = dist_util.broadcast_from_main(refusal)
        if refusal:
            raise UsageError(refusal)
        yield Session(rank, world_size, device, *amp_choice(cfg.amp, device))


def autocast(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on the given device (``Session.amp_dtype``), or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a scheduler's SIGTERM reaches every process of the job, as Ctrl-C's SIGINT
    reaches every process of the terminal's foreground group, and a worker that died of either would fail the
    step the main process is finishing before it saves (``StopOnSignals``)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_loader(cfg: RunConfig, session: Session, dataset: Dataset, allow_empty: bool = False,
                 collate_fn: Callable[[list], Any] | None = None, start_method: str | None = None) -> DataLoader:
    """This process's shard of ``dataset`` in full batches, reshuffled each epoch, each item augmented from its
    own seed (``ResumableSampler``, ``SeededItems``: ``begin_epoch`` sets the epoch, and where a resumed one
    starts). Workers keep ``PREFETCH_BATCHES`` batches each in flight and, started the default way (fork),
    persist across epochs (the epoch reaches them with each index). Raises ``UsageError`` when the data make no full batch, unless
    ``allow_empty`` (evaluation only).
    ``collate_fn``: batches of another kind (the DALI path's encoded files, ``util.dali_loader``), which are not
    pinned; ``start_method``: how the workers start (default: the platform's, fork on Linux)."""
    sampler = ResumableSampler(dataset, num_replicas=session.world_size, rank=session.rank, shuffle=True,
                               seed=cfg.seed)
    # the loader's own generator draws the workers' base seeds, so the global RNG, which the checkpoints restore,
    # sees only what the model draws
    workers = cfg.num_workers > 0
    # the DALI path's forkserver workers only read bytes, cheap to restart; kept alive, they left the process
    # hanging at its exit (seen in tests/test_dali_classify.py)
    persistent = workers and start_method is None
    loader = DataLoader(SeededItems(dataset, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.num_workers, collate_fn=collate_fn,
                        multiprocessing_context=start_method if workers else None,
                        pin_memory=cfg.pin_mem and session.device.type == "cuda" and collate_fn is None,
                        drop_last=True, persistent_workers=persistent,
                        prefetch_factor=PREFETCH_BATCHES if workers else None,
                        worker_init_fn=ignore_stop_signals,
                        generator=torch.Generator().manual_seed(cfg.seed + session.rank))
    if len(loader) == 0 and not allow_empty:
        raise UsageError(f"{len(dataset)} images make no full batch of {cfg.batch_size} x {session.world_size} "
                         "processes: lower --batch_size or add data")
    if cfg.accum_iter > len(loader) and not allow_empty:
        raise UsageError(f"--accum_iter {cfg.accum_iter} is more than the {len(loader)} batches of an epoch, so no "
                         f"optimizer step would ever be taken: pass --accum_iter {len(loader)} or less")
    return loader


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (this process's shard, reshuffled by epoch) that can leave out the first ``skip``
    indices of an epoch: a run resumed mid-epoch goes on with the rest of the very same order. It yields
    (epoch, index) pairs: persistent DataLoader workers hold copies of the dataset made once, which never see
    ``begin_epoch``, so the epoch that seeds an item (``SeededItems``) travels with its index."""

    skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in itertools.islice(super().__iter__(), self.skip, None))

    def __len__(self) -> int:
        return super().__len__() - self.skip


class SeededItems(Dataset):
    """``dataset`` whose item ``i`` in epoch ``epoch`` is made with the CPU RNGs (torch, numpy, random) seeded
    from (``seed``, epoch, i), the caller's RNG states put back afterwards. Without it an augmentation depends on
    the worker that drew it and the items before, which a run resumed mid-epoch cannot replay; with it
    ``--num_workers`` changes no result either. Its keys: (epoch, i), as ``ResumableSampler`` yields them, or
    an index ``i`` alone, of the epoch ``begin_epoch`` set in this process."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        with _seeded(np.random.SeedSequence([self.seed, epoch, index]).generate_state(4)):
            return self.dataset[index]


@contextlib.contextmanager
def _seeded(words: np.ndarray):
    saved = torch.get_rng_state(), random.getstate(), np.random.get_state()
    # the CPU generator only: torch.manual_seed would reseed the GPUs', which draw the masks
    torch.default_generator.manual_seed(int(words[0]) << 32 | int(words[1]))
    random.seed(int(words[2]))
    np.random.seed(int(words[3]))
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


def begin_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Set a ``train_loader`` for ``epoch``: its order, its items' seeds, and the batches to leave out."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = skip_batches * loader.batch_size
    loader.dataset.epoch = epoch
