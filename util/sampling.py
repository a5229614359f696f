"""What makes an epoch resumable part-way: a sampler that can start after the batches already trained, and
per-item seeding, so that every item's augmentation is the same whoever draws it and whatever came before.

``util.session.train_loader`` builds the loader from both; ``begin_epoch`` sets them for each epoch."""
import contextlib
import itertools
import random
import signal
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (this process's shard, reshuffled by epoch) that can leave out the first ``skip``
    indices of an epoch: a run resumed mid-epoch goes on with the rest of the very same order."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return super().__len__() - self.skip


class SeededItems(Dataset):
    """``dataset`` whose item ``i`` in epoch ``epoch`` is made with the CPU RNGs (torch, numpy, random) seeded
    from (``seed``, epoch, i), the caller's RNG states put back afterwards. Without it an augmentation depends on
    the worker that drew it and the items before, which a run resumed mid-epoch cannot replay; with it
    ``--num_workers`` changes no result either."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with _seeded(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(4)):
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


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a scheduler's SIGTERM reaches every process of the job, as Ctrl-C's SIGINT
    reaches every process of the terminal's foreground group, and a worker that died of either would fail the
    step the main process is finishing before it saves (``util.preemption``)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
