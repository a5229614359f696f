"""One training run around the optimization loop, the same for every CLI: resume, DDP and torch.compile
wrapping, the epochs left, optimizer-step counting, checkpoints, the run's logs and stopping at SIGTERM or
SIGINT (Ctrl-C). The engines (``engine_pretrain.pretrain``, ``engine_finetune.fit``) drive it epoch by epoch."""
import os
import time
from typing import Any, Generic, Iterator, Mapping, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from util import distributed as dist_util
from util import fsdp
from util.checkpoint import checkpoints_newest_first, remove_partial_checkpoints, save_training_state
from util.compile import CompiledOrEager
from util.config import RunConfig
from util.logging import RunLog
from util.preemption import StopOnSignals
from util.resume import batch_change_note, check_resumable, read_checkpoint, restore
from util.sampling import begin_epoch
from util.session import Session
from util.train_loop import TrainConfig

C = TypeVar("C", bound=RunConfig)


class Trainer(Generic[C]):
    """A run's state: the plain model (what checkpoints and evaluation see), its optimizer, the GradScaler
    (fp16 only), the loop's knobs, the first epoch (and batch) to train and the optimizer steps taken.

    ``lr`` is the absolute LR the run resolved (``RunConfig.scaled_lr``); ``derived`` holds other values
    computed at run time (effective batch, number of classes). Both are recorded in checkpoints beside
    the config. ``cfg`` is the CLI's config (``Trainer[PretrainConfig]``, ...)."""

    def __init__(self, cfg: C, session: Session, model: nn.Module, optimizer: torch.optim.Optimizer,
                 lr: float, derived: Mapping[str, Any] | None = None):
        self.cfg, self.session, self.model, self.optimizer = cfg, session, model, optimizer
        self.scaler = torch.amp.GradScaler(session.device.type) if session.amp_name == "fp16" else None
        self.loop = TrainConfig(epochs=cfg.epochs, lr=lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs,
                                accum_iter=cfg.accum_iter, clip_grad=cfg.clip_grad, amp_dtype=session.amp_dtype,
                                print_freq=cfg.print_freq)
        self.derived = {"lr": lr, **(derived or {})}
        self.start_epoch, self.step = cfg.start_epoch, 0
        self.resumed_from = ""
        self.resumed_batches = (0, 0)  # (batches done, batches in all) of start_epoch: a checkpoint of a stop
        # while ``epochs`` runs: the train loader, its log, the stop flag, and the current epoch's first batch,
        # size and optimizer steps before it
        self.loader: DataLoader | None = None
        self.log: RunLog | None = None
        self.stop: StopOnSignals | None = None
        self.first_batch = self.epoch_batches = self.epoch_start_step = 0

    def resume(self, with_optimizer: bool = True) -> dict[str, Any]:
        """Restore ``cfg.resume`` exactly (weights, optimizer unless ``with_optimizer`` is False, scaler, RNG
        states): training continues after its epoch. With ``--auto_resume``, an unreadable newest checkpoint
        falls back on the one before. Returns the checkpoint, or {} when there is none."""
        if not self.cfg.resume:
            return {}
        auto = self.cfg.auto_resume and not self.cfg.flags.get("resume")
        older = [p for p in checkpoints_newest_first(self.cfg.output_dir, self.suffix) if p != self.cfg.resume] \
            if auto else []
        optimizer = self.optimizer if with_optimizer else None
        if self.sharded:
            path, ckpt = fsdp.resume_sharded(self.cfg.resume, older, self.model, optimizer)
        else:
            path, ckpt = read_checkpoint(self.cfg.resume, older)
            check_resumable(path, ckpt, self.model, optimizer, can_finetune=self.cfg.TASK == "classify")
            restore(ckpt, self.model, optimizer, self.scaler)
        # released fine-tuned checkpoints hold only 'model'; one saved at a stop, its epoch part-way
        done = ckpt.get("batches_done", 0)
        self.start_epoch, self.step = ckpt.get("epoch", -1) + (0 if done else 1), ckpt.get("step", 0)
        self.resumed_from, self.resumed_batches = path, (done, ckpt.get("epoch_batches", 0))
        if dist_util.is_main_process() and with_optimizer:  # evaluation (--eval) names its checkpoint itself
            print(f"resumed from {path}" + (f" at epoch {self.start_epoch}" if "epoch" in ckpt else "")
                  + (f", after its batch {done}" if done else ""))
            note = batch_change_note(path, ckpt, self.derived)
            if note:
                print(note)
        return ckpt

    def wrapped(self) -> nn.Module:
        """The module the loop trains: DistributedDataParallel over processes (--fsdp: the model sharded already,
        with DDP's no_sync), then torch.compile (``cfg.compile``: on CUDA by default), which falls back to eager
        with a warning if it fails (``util.compile``)."""
        model, device = self.model, self.session.device
        if self.sharded:
            model = fsdp.ShardedTrainee(model)
        elif self.session.world_size > 1:
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if self.cfg.compile:
            model = CompiledOrEager(model)
        return model

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded (--fsdp): checkpoints are then ``.dcp`` folders written through DCP."""
        return self.cfg.fsdp

    @property
    def suffix(self) -> str:
        return fsdp.SUFFIX if self.sharded else ".pth"

    def epochs(self, loader: DataLoader) -> Iterator[int]:
        """The epochs left to train. Before each: the loader reshuffles for it (leaving out the batches a stopped
        run did) and ``step`` moves to the count at its end (what its checkpoints record). ``log`` (TensorBoard,
        log.txt) and ``stop`` (SIGTERM, SIGINT) are open meanwhile. When no epoch is left (a finished run resumed),
        says so and yields nothing."""
        if self.start_epoch >= self.cfg.epochs:
            if dist_util.is_main_process():
                source = f"{self.resumed_from} ends at epoch {self.start_epoch - 1}" if self.resumed_from else \
                    f"--start_epoch is {self.start_epoch}"
                print(f"nothing left to train: {source} and --epochs is {self.cfg.epochs}; pass a larger --epochs "
                      "to train on")
            return
        self.loader, self.log, self.stop = loader, RunLog(self.cfg.output_dir, self.cfg.log_dir), StopOnSignals()
        start = time.time()
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                begin_epoch(loader, epoch)
                self.epoch_batches = len(loader)
                self.first_batch = self._batches_done() if epoch == self.start_epoch else 0
                begin_epoch(loader, epoch, self.first_batch)
                self.epoch_start_step = self.step
                self.step += len(loader) // self.cfg.accum_iter
                yield epoch
        finally:
            self.log.close()
            self.stop.close()
        if dist_util.is_main_process():
            print(f"training time {time.time() - start:.0f}s")

    def _batches_done(self) -> int:
        """The batches of the resumed epoch its checkpoint trained: as many as then, or the same share of the
        epoch when the batches are another size now, at an optimizer step."""
        done, total = self.resumed_batches
        if done and total != self.epoch_batches:
            done = done * self.epoch_batches // total
        return done - done % self.cfg.accum_iter

    @property
    def stopped(self) -> bool:
        """Whether SIGTERM or SIGINT ended the epoch just trained part-way (``save`` then writes where it
        stopped)."""
        return self.stop is not None and self.stop.stopped_after is not None

    def log_epoch(self, epoch: int, record: dict[str, float], summary: str) -> None:
        """``record`` as the epoch's log.txt line and ``summary`` as its printed line, both with the number of
        unreadable images skipped so far (by every worker of every process: a collective under DDP)."""
        skipped = self._skipped_images()
        self.log.json_line({**record, "epoch": epoch, "skipped_images": skipped})
        if dist_util.is_main_process():
            print(f"epoch {epoch}: {summary}" + (f"; {skipped} unreadable image(s) skipped" if skipped else ""))

    def _skipped_images(self) -> int:
        flags = getattr(self.loader.dataset.dataset, "skipped_flags", None)  # ImageFiles' (under SeededItems)
        if flags is None:
            return 0
        return int(dist_util.all_reduce_max(flags().to(self.session.device)).sum())

    def due(self, epoch: int, every: int) -> bool:
        """Whether something done every ``every`` epochs (checkpoints, pictures) is due after ``epoch``:
        every ``every`` epochs and after the last."""
        return (epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs

    def save(self, epoch: int, name: str | None = None, **extra) -> None:
        """``checkpoint-<epoch>.pth`` (or ``name``) in output_dir, resumable exactly; ``extra`` entries beside
        the weights (best metrics, EMA weights). After a stop, ``checkpoint-<epoch>-batch<k>.pth`` of the epoch
        part-way; a regular checkpoint removes those it supersedes. --fsdp: ``.dcp`` folders instead."""
        step = self.step
        if self.stopped:
            done = self.stop.stopped_after
            name = f"checkpoint-{epoch}-batch{done}.pth"
            step = self.epoch_start_step + (done - self.first_batch) // self.cfg.accum_iter
            extra |= {"batches_done": done, "epoch_batches": self.epoch_batches}
        if self.sharded:
            written = (name or f"checkpoint-{epoch}.pth").removesuffix(".pth") + fsdp.SUFFIX
            fsdp.save_sharded(self.cfg.output_dir, written, self.model, self.optimizer, epoch, step, self.record(),
                              **extra)
        else:
            written = name
            save_training_state(self.cfg.output_dir, self.model, self.optimizer, self.scaler, epoch, step,
                                self.record(), name=name, **extra)
        if not dist_util.is_main_process():
            return
        if self.stopped:
            print(f"{self.stop.reason}: stopped after batch {done} of {self.epoch_batches} of epoch {epoch} and saved "
                  f"{os.path.join(self.cfg.output_dir, written)}: --auto_resume continues from there", flush=True)
        elif name is None:
            remove_partial_checkpoints(self.cfg.output_dir, epoch, self.suffix)

    def record(self) -> dict[str, Any]:
        """The run's settings as checkpoints store them (``args``): the config, the run-time derived values and
        the epoch this process started at."""
        return self.cfg.record() | self.derived | {"start_epoch": self.start_epoch}
