"""Where and how this process runs, set up the same way by every CLI: device, process group, seed,
precision, the output folder's lock, and this process's shard of the training data."""
import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from base.errors import UsageError
from util import distributed as dist_util
from util.config import RunConfig
from util.data import check_outside_data
from util.output_lock import claim_output_dir
from util.runtime import amp_choice, seed_everything, select_device
from util.sampling import ResumableSampler, SeededItems, ignore_stop_signals


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
    ``seed + rank``, choose the precision and hold ``--output_dir`` (``util.output_lock``; the main process
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


def train_loader(cfg: RunConfig, session: Session, dataset: Dataset, allow_empty: bool = False,
                 collate_fn: Callable[[list], Any] | None = None, start_method: str | None = None) -> DataLoader:
    """This process's shard of ``dataset`` in full batches, reshuffled each epoch, each item augmented from its
    own seed (``util.sampling``: ``Trainer.epochs`` sets the epoch, and where a resumed one starts). Raises
    ``UsageError`` when the data make no full batch, unless ``allow_empty`` (evaluation only). ``collate_fn``:
    batches of another kind (the DALI path's encoded files, ``util.dali_loader``), which are not pinned;
    ``start_method``: how the workers start (default: the platform's, fork on Linux)."""
    sampler = ResumableSampler(dataset, num_replicas=session.world_size, rank=session.rank, shuffle=True,
                               seed=cfg.seed)
    # workers start afresh each epoch (they read the dataset's epoch); the loader's own generator draws their
    # base seeds, so the global RNG, which the checkpoints restore, sees only what the model draws
    loader = DataLoader(SeededItems(dataset, cfg.seed), batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.num_workers, collate_fn=collate_fn,
                        multiprocessing_context=start_method if cfg.num_workers else None,
                        pin_memory=cfg.pin_mem and session.device.type == "cuda" and collate_fn is None,
                        drop_last=True, persistent_workers=False, worker_init_fn=ignore_stop_signals,
                        generator=torch.Generator().manual_seed(cfg.seed + session.rank))
    if len(loader) == 0 and not allow_empty:
        raise UsageError(f"{len(dataset)} images make no full batch of {cfg.batch_size} x {session.world_size} "
                         "processes: lower --batch_size or add data")
    if cfg.accum_iter > len(loader) and not allow_empty:
        raise UsageError(f"--accum_iter {cfg.accum_iter} is more than the {len(loader)} batches of an epoch, so no "
                         f"optimizer step would ever be taken: pass --accum_iter {len(loader)} or less")
    return loader
