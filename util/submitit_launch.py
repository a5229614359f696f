"""Submitting a CLI to Slurm with submitit, as MAE's ``submitit_*.py`` scripts: the CLI's flags plus
``--job_dir --nodes --ngpus --timeout --partition --use_volta32 --comment`` (same names, defaults and meanings).

One task per GPU (``tasks_per_node = gpus_per_node = --ngpus``). Each task exports torchrun's variables from
its ``submitit.JobEnvironment`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` = the first node)
and calls the CLI's ``main``, which joins the process group as under torchrun. ``--output_dir`` defaults to
the job folder, ``%j`` in either replaced by the job id.

Timeouts and preemption: Slurm sends USR2 ``slurm_signal_delay_s`` before the time limit. The tasks take it
as they take SIGTERM (``util.session``): they finish the optimizer step under way and save a checkpoint of
that point; then the first task calls submitit's handler, which calls ``Task.checkpoint`` (the same command
with ``--auto_resume``) and requeues the job. A job that Slurm itself requeues (after a SIGTERM preemption)
continues the same way from the newest checkpoint in its output folder.
"""
import argparse
import contextlib
import copy
import importlib
import os
import shlex
import signal
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import submitit

from base.errors import UsageError
from base.settings import POSITIVE_INT, Group, setting
from util import distributed as dist_util
from util.checkpoint import latest_checkpoint
from util.flags import add_flags

# the official scripts' default job folder: /checkpoint/$USER/experiments/<job id>
SHARED_ROOT = Path("/checkpoint")
ROOT = Path(__file__).resolve().parents[1]  # the tasks import the CLIs from here, wherever the job starts
SECTION = Group("submitit", "the Slurm job (MAE's submitit_*.py flags)")
SIGNAL_DELAY_S = 120  # USR2 this long before the time limit: the step under way and a checkpoint fit in it
MEM_GB_PER_GPU, CPUS_PER_TASK = 40, 10  # the official scripts' request per GPU


@dataclass(frozen=True, kw_only=True)
class SlurmJob:
    """The job a ``submitit_*.py`` command asks for: the official submitit flags (MAE's defaults), and
    ``--cluster`` to run it on this machine. ``job_dir`` "" means the official default (``default_job_dir``)."""

    job_dir: str = setting("", group=SECTION,
                           help="job folder, %%j = job id (default: /checkpoint/$USER/experiments/%%j)")
    nodes: int = setting(2, type=POSITIVE_INT, group=SECTION, help="nodes to request")
    ngpus: int = setting(8, type=POSITIVE_INT, group=SECTION, help="GPUs (and tasks) per node")
    timeout: int = setting(4320, type=POSITIVE_INT, group=SECTION, help="time limit of the job in minutes")
    partition: str = setting("learnfair", group=SECTION, help="Slurm partition")
    use_volta32: bool = setting(False, switch=True, group=SECTION,
                                help="request 32 GB V100s (--constraint volta32gb)")
    comment: str = setting("", group=SECTION, help="comment passed to the scheduler")
    cluster: str | None = setting(None, choices=["slurm", "local", "debug"], group=SECTION,
                                  help="where to run: slurm where srun exists, else local (this machine, one node)")


def default_job_dir() -> str:
    """``/checkpoint/$USER/experiments/%j`` as the official scripts, where ``/checkpoint`` exists."""
    if not SHARED_ROOT.is_dir():
        raise UsageError(f"no shared folder {SHARED_ROOT} for the job: pass --job_dir, a folder every node can reach")
    return str(SHARED_ROOT / os.environ.get("USER", "user") / "experiments" / "%j")


def build_executor(args: SlurmJob, job_dir: str, name: str) -> submitit.AutoExecutor:
    """The executor of the job ``args``: one task per GPU on ``--nodes`` nodes, ``--timeout``
    minutes, the partition, the 32 GB V100 constraint and the comment; USR2 ``SIGNAL_DELAY_S`` before the end."""
    executor = submitit.AutoExecutor(folder=job_dir, cluster=args.cluster, slurm_max_num_timeout=30)
    setup = [f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    extra = {"slurm_setup": setup, "local_setup": setup}
    if args.use_volta32:
        extra["slurm_constraint"] = "volta32gb"
    if args.comment:
        extra["slurm_comment"] = args.comment
    try:
        executor.update_parameters(name=name, mem_gb=MEM_GB_PER_GPU * args.ngpus, gpus_per_node=args.ngpus,
                                   tasks_per_node=args.ngpus, cpus_per_task=CPUS_PER_TASK, nodes=args.nodes,
                                   timeout_min=args.timeout, slurm_partition=args.partition,
                                   slurm_signal_delay_s=SIGNAL_DELAY_S, **extra)
    except ValueError as err:  # e.g. the local executor asked for several nodes
        raise UsageError(f"--cluster {executor.cluster}: {err}") from err
    return executor


def continue_from_output_dir(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` resuming the newest checkpoint in their output folder (``--auto_resume``), ``--resume`` left out
    once the folder has one: what a requeued job runs."""
    args = copy.copy(args)
    args.auto_resume = True
    if latest_checkpoint(args.output_dir):
        args.resume = ""
    return args


class Task:
    """What every task of the job runs (pickled by submitit): ``<module>.main(args)`` in the process group of
    the job's tasks. ``args`` are the CLI's flags, ``output_dir`` still holding ``%j``."""

    def __init__(self, module: str, args: argparse.Namespace):
        self.module, self.args = module, args

    def __call__(self) -> Any:
        job = submitit.JobEnvironment()
        args = copy.copy(self.args)
        for key in ("output_dir", "log_dir"):
            if getattr(args, key):
                setattr(args, key, getattr(args, key).replace("%j", str(job.job_id)))
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:  # requeued by Slurm (preemption)
            args = continue_from_output_dir(args)
        # torchrun's variables; every GPU stays visible (the CLI picks LOCAL_RANK's)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        main = importlib.import_module(self.module).main
        try:
            with timeout_signal_stops_training():
                return main(args)
        finally:
            dist_util.cleanup()

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the first task at the timeout signal: the same command with ``--auto_resume``
        (the checkpoint is already saved), which submitit requeues."""
        resumed = copy.copy(self.args)
        resumed.auto_resume, resumed.resume = True, ""
        print(f"requeued: {self.module} --auto_resume in {resumed.output_dir}", flush=True)
        return submitit.helpers.DelayedSubmission(Task(self.module, resumed))


@contextlib.contextmanager
def timeout_signal_stops_training() -> Iterator[None]:
    """While the block runs, submitit's timeout signal (USR2) stops training as SIGTERM does (the training's
    own SIGTERM handler, ``util.session``: the step under way finishes and a checkpoint is saved); when the
    block has returned, submitit's handler runs (checkpoint and requeue). Outside training (the handler of
    SIGTERM is the one found on entry), nothing is lost: submitit's handler runs at once. Processes forked
    meanwhile (data-loader workers) ignore the signal."""
    usr_sig = getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)
    submitit_handler: Callable = signal.getsignal(usr_sig)
    idle_sigterm = signal.getsignal(signal.SIGTERM)
    owner, received = os.getpid(), []

    def relay(signum: int, frame) -> None:
        if os.getpid() != owner:
            return
        sigterm = signal.getsignal(signal.SIGTERM)
        if sigterm is idle_sigterm or not callable(sigterm):
            submitit_handler(signum, frame)
            return
        received.append(signum)
        sigterm(signal.SIGTERM, frame)

    signal.signal(usr_sig, relay)
    try:
        yield
    finally:
        signal.signal(usr_sig, submitit_handler)
    if received:
        submitit_handler(usr_sig, None)


def cli_and_launcher_parser(module: str, description: str = "") -> argparse.ArgumentParser:
    """``<module>.py``'s parser with the job's flags (``SlurmJob``); the CLI's ``--output_dir`` defaults to the job
    folder (None)."""
    parser = importlib.import_module(module).get_args_parser()
    parser.description = description
    add_flags(parser, SlurmJob)
    parser.set_defaults(output_dir=None)
    return parser


def parse_args(module: str, argv: list[str] | None = None,
               description: str = "") -> tuple[SlurmJob, argparse.Namespace]:
    """``argv`` split into (the job, the CLI's flags), as ``<module>.py`` parses its own; the CLI's
    ``--output_dir`` is the job folder unless given."""
    args = cli_and_launcher_parser(module, description).parse_args(argv)
    job = {f.name for f in fields(SlurmJob)}
    launcher = SlurmJob(**{k: v for k, v in vars(args).items() if k in job})
    launcher = replace(launcher, job_dir=launcher.job_dir or default_job_dir())
    cli_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in job})
    if cli_args.output_dir is None:
        cli_args.output_dir = launcher.job_dir
    return launcher, cli_args


def submit(module: str, description: str, argv: list[str] | None = None) -> submitit.Job:
    """Parse ``argv`` (the CLI's flags and the launcher's), submit the job and return it."""
    launcher, cli_args = parse_args(module, argv, description)
    executor = build_executor(launcher, launcher.job_dir, name=f"mim_{module.removeprefix('main_')}")
    return executor.submit(Task(module, cli_args))


def launch(module: str, description: str) -> None:
    """The ``submitit_*.py`` entry point: submit, print the job id (as the official scripts) and where its
    logs go; a ``UsageError`` is one line and exit status 2."""
    try:
        job = submit(module, description)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(job.job_id)
    print(f"logs: {job.paths.stdout.parent}", file=sys.stderr)
