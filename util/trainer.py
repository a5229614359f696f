"""The training loop, the same for every CLI, and the run around it: resume, DDP / FSDP / torch.compile wrapping,
the epochs left, the steps of an epoch (per-iteration LR, autocast, accumulation, clipping, GradScaler, device-side
logging), checkpoints, the run's logs and stopping at SIGTERM or SIGINT (Ctrl-C).

What a method family adds is an ``Engine`` (``engine_pretrain``, ``engine_finetune``): the loss of one batch, and
hooks the loop calls at fixed points: after each optimizer step, after each epoch (before its checkpoints and
after them), at the end of the run."""
import contextlib
import os
import time
import warnings
from typing import Any, Callable, Generic, Mapping, NamedTuple, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from util import distributed as dist_util
from util import fsdp
from util.checkpoint import (batch_change_note, check_resumable, checkpoints_newest_first, read_checkpoint,
                             remove_partial_checkpoints, restore, save_training_state)
from util.config import RunConfig
from util.logging import EtaMeter, MetricLogger, RunLog
from util.optim import lr_at, set_lr
from util.session import Session, StopOnSignals, autocast, begin_epoch

C = TypeVar("C", bound=RunConfig)


class EpochEnd(NamedTuple):
    """What an engine makes of an epoch trained whole: its log.txt record, its printed summary line, and whether
    its weights are the best so far (then saved as ``checkpoint-best.pth``)."""

    record: dict[str, float]
    summary: str
    best: bool = False


class Engine:
    """A method family's part of a run. ``loss`` and ``end_epoch`` are its own; the other hooks do nothing unless
    overridden. ``state_dict`` is saved beside the weights in every checkpoint, ``load_state_dict`` gets it back
    when the run resumes."""

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {name: scalar tensor to log}) of one batch as the loader yields it (``batch[0]``: its images);
        ``model`` is the module trained (maybe DDP-wrapped or compiled), called under the run's autocast."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """After every optimizer step (an EMA of the weights), with the module trained."""

    def end_epoch(self, trainer: "Trainer", epoch: int, stats: dict[str, float]) -> EpochEnd:
        """After an epoch trained whole, before its checkpoints (which then hold what it measured, and the RNG
        states after it): evaluation. ``stats``: the epoch's mean scalars (``train_epoch``)."""
        raise NotImplementedError

    def after_save(self, trainer: "Trainer", epoch: int) -> None:
        """After the epoch's checkpoints, before its log line: outputs nothing saved depends on (pictures)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, ckpt: dict[str, Any], path: str) -> None:
        """``ckpt``: the checkpoint ``path`` the run resumes, read and restored into the model already."""

    def end_run(self) -> Any:
        """After the last epoch (or a stop); what ``Trainer.fit`` returns."""
        return None


class Trainer(Generic[C]):
    """A run's state: the plain model (what checkpoints and evaluation see), its optimizer, the GradScaler
    (fp16 only), the first epoch (and batch) to train and the optimizer steps taken.

    ``lr`` is the absolute LR the run resolved (``RunConfig.scaled_lr``); ``derived`` holds other values
    computed at run time (effective batch, number of classes). Both are recorded in checkpoints beside
    the config. ``cfg`` is the CLI's config (``Trainer[PretrainConfig]``, ...), whose flags are the loop's knobs."""

    def __init__(self, cfg: C, session: Session, model: nn.Module, optimizer: torch.optim.Optimizer,
                 lr: float, derived: Mapping[str, Any] | None = None):
        self.cfg, self.session, self.model, self.optimizer, self.lr = cfg, session, model, optimizer, lr
        self.scaler = torch.amp.GradScaler(session.device.type) if session.amp_name == "fp16" else None
        self.derived = {"lr": lr, **(derived or {})}
        self.start_epoch, self.step = cfg.start_epoch, 0
        self.resumed_from = ""
        self.resumed_batches = (0, 0)  # (batches done, batches in all) of start_epoch: a checkpoint of a stop
        # while ``fit`` runs: the train loader, its log, the stop flag; the current epoch's first batch, size and
        # optimizer steps before it; the step-time meter, kept across epochs for the whole run's ETA
        self.loader: DataLoader | None = None
        self.log: RunLog | None = None
        self.stop: StopOnSignals | None = None
        self.first_batch = self.epoch_batches = self.epoch_start_step = 0
        self.eta = EtaMeter()

    def fit(self, engine: Engine, loader: DataLoader) -> Any:
        """Train from the resumed epoch (if any) to the last: each epoch its steps (``train_epoch``), then
        ``engine.end_epoch``, a checkpoint every ``--save_freq`` epochs and after the last (``checkpoint-best.pth``
        when the engine says so), ``engine.after_save`` and one log.txt line. At SIGTERM or SIGINT the epoch ends
        at the next optimizer step, a checkpoint of that point is saved, and the run ends. Returns
        ``engine.end_run()``."""
        self.resume(engine)
        model = self.wrapped()
        if self.start_epoch >= self.cfg.epochs:
            if dist_util.is_main_process():
                source = f"{self.resumed_from} ends at epoch {self.start_epoch - 1}" if self.resumed_from else \
                    f"--start_epoch is {self.start_epoch}"
                print(f"nothing left to train: {source} and --epochs is {self.cfg.epochs}; pass a larger --epochs "
                      "to train on")
            return engine.end_run()
        self.loader, self.log, self.stop = loader, RunLog(self.cfg.output_dir, self.cfg.log_dir), StopOnSignals()
        start = time.time()
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self._begin_epoch(loader, epoch)
                stats = self.train_epoch(engine, model, loader, epoch)
                if self.stopped:
                    self.save(epoch, **engine.state_dict())
                    break
                end = engine.end_epoch(self, epoch, stats)
                if end.best:
                    self.save(epoch, name="checkpoint-best.pth", **engine.state_dict())
                if self.due(epoch, self.cfg.save_freq):
                    self.save(epoch, **engine.state_dict())
                engine.after_save(self, epoch)
                self.log_epoch(epoch, end.record, end.summary)
        finally:
            self.log.close()
            self.stop.close()
        if not self.stopped and dist_util.is_main_process():
            print(f"training time {time.time() - start:.0f}s")
        return engine.end_run()

    def train_epoch(self, engine: Engine, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]:
        """Train ``model`` (``self.model``, or as ``wrapped`` returns it) for one epoch of ``loader``, which starts
        ``first_batch`` batches into it (a run resumed part-way); return the epoch's mean scalars.

        The LR is set per optimizer step from the fractional epoch. Gradients are accumulated over ``--accum_iter``
        batches without all-reducing the intermediate ones; as in the official loop, a trailing partial
        accumulation is dropped. After each optimizer step but the epoch's last, the stop flag (while ``fit``
        runs) may end the epoch there."""
        cfg, device, optimizer = self.cfg, self.session.device, self.optimizer
        model.train()
        num_steps = self.first_batch + len(loader)
        logger = MetricLogger(f"Epoch: [{epoch}]", num_steps, cfg.print_freq, device,
                              later_steps=(cfg.epochs - epoch - 1) * num_steps, eta_meter=self.eta)
        optimizer.zero_grad(set_to_none=True)
        lr = optimizer.param_groups[0]["lr"]
        for step, batch in enumerate(loader, start=self.first_batch):
            if step % cfg.accum_iter == 0:
                lr = lr_at(epoch + step / num_steps, self.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs)
                set_lr(optimizer, lr)
            update = (step + 1) % cfg.accum_iter == 0
            sync = contextlib.nullcontext() if update or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast(device, self.session.amp_dtype):
                    loss, logs = engine.loss(model, batch, device)
                scaled = loss / cfg.accum_iter
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            if update:
                if self.scaler:
                    self.scaler.unscale_(optimizer)
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                if self.scaler:
                    self.scaler.step(optimizer)
                    self.scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                engine.after_step(model)
            logger.update(len(batch[0]), loss=loss, **logs)
            if logger.maybe_print(step, lr) and self.log:
                self.log.scalars({**logger.last, "lr": lr}, int((epoch + step / num_steps) * 1000))
            if update and self.stop is not None and step + 1 < num_steps and self.stop.poll(step + 1):
                break
        return {**logger.averages(), "lr": lr}

    def _begin_epoch(self, loader: DataLoader, epoch: int) -> None:
        """Reshuffle ``loader`` for ``epoch``, leaving out the batches a stopped run did, and move ``step`` to the
        count at the epoch's end (what its checkpoints record)."""
        begin_epoch(loader, epoch)
        self.epoch_batches = len(loader)
        self.first_batch = self._batches_done() if epoch == self.start_epoch else 0
        begin_epoch(loader, epoch, self.first_batch)
        self.epoch_start_step = self.step
        self.step += len(loader) // self.cfg.accum_iter

    def _batches_done(self) -> int:
        """The batches of the resumed epoch its checkpoint trained: as many as then, or the same share of the
        epoch when the batches are another size now, at an optimizer step."""
        done, total = self.resumed_batches
        if done and total != self.epoch_batches:
            done = done * self.epoch_batches // total
        return done - done % self.cfg.accum_iter

    def resume(self, engine: Engine, with_optimizer: bool = True) -> None:
        """Restore ``cfg.resume`` exactly (weights, optimizer unless ``with_optimizer`` is False, scaler, RNG
        states, then ``engine.load_state_dict``): training continues after its epoch. With ``--auto_resume``, an
        unreadable newest checkpoint falls back on the one before. Nothing when there is none."""
        if not self.cfg.resume:
            return
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
        engine.load_state_dict(ckpt, path)

    def wrapped(self) -> nn.Module:
        """The module the loop trains: DistributedDataParallel over processes (--fsdp: the model sharded already,
        with DDP's no_sync), then torch.compile (``cfg.compile``: on CUDA by default), which falls back to eager
        with a warning if it fails (``CompiledOrEager``)."""
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
        the weights (the engine's state: best metrics, EMA weights). After a stop, ``checkpoint-<epoch>-batch<k>.pth``
        of the epoch part-way; a regular checkpoint removes those it supersedes. --fsdp: ``.dcp`` folders instead."""
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


class CompiledOrEager(nn.Module):
    """torch.compile that falls back to eager: a model the compiler cannot handle (a missing C compiler, an
    unsupported op, an inductor bug) trains uncompiled, with one warning, instead of ending the run.

    Calls ``torch.compile(module, backend=backend)``; when a call raises, runs ``module`` eagerly on the same
    inputs: if that succeeds the failure was the compiler's, so it warns once and stays eager from then on; if
    it fails too, the error is the model's and is raised as such. Compilation is lazy (at the first call, and
    again when a guard fails: train/eval, a new shape), so this is where its failures surface. One compiled by
    inductor whose backward graph fails to compile fails in ``backward()``, outside this wrapper. ``module`` is
    a registered submodule (``parameters()``, ``train()``, ``state_dict()`` in its order) and its other
    attributes (DDP's ``no_sync``) are reachable as this one's."""

    def __init__(self, module: nn.Module, backend: str | Callable = "inductor"):
        super().__init__()
        self.module = module
        # not a submodule: the compiled wrapper shares module's parameters and must not list them twice
        object.__setattr__(self, "compiled", torch.compile(module, backend=backend))

    @property
    def is_compiled(self) -> bool:
        """False once a compile failure switched this wrapper to eager."""
        return self.compiled is not None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (compiler errors have no common base class)
            failure = err
        out = self.module(*args, **kwargs)  # the model's own error, if any, is raised here
        object.__setattr__(self, "compiled", None)
        message = " ".join(str(failure).split())  # dynamo's messages span lines: the cause comes second
        warnings.warn(f"torch.compile failed ({type(failure).__name__}: {message[:300]}); training continues "
                      "without it (pass --no_compile to skip the attempt)", RuntimeWarning, stacklevel=2)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)
