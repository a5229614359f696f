"""Process-group set-up for torchrun, ``python -m torch.distributed.launch``, the submitit launchers and the
official code's own ways (``--dist_url``, ``--world_size`` under srun, ``--dist_on_itp``), and small collectives."""
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from base.errors import UsageError


@dataclass(frozen=True)
class LaunchFlags:
    """The official code's distributed flags (MAE ``util/misc.init_distributed_mode``): ``world_size`` as given
    (None: not given), ``dist_url`` the process group's init method, ``dist_on_itp`` the OpenMPI variables."""

    world_size: int | None = None
    dist_url: str = "env://"
    dist_on_itp: bool = False


@dataclass(frozen=True)
class Placement:
    """This process among the launched ones, and how the process group meets."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str = "env://"


def placement(launch: LaunchFlags, local_rank: int | None = None) -> Placement | None:
    """Where the launcher put this process, or None for a single process.

    In the official order: ``--dist_on_itp`` reads OpenMPI's ``OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}`` and meets
    at ``tcp://MASTER_ADDR:MASTER_PORT``; else torchrun's (and the submitit launchers') ``RANK``/``WORLD_SIZE``/
    ``LOCAL_RANK``; else, under srun with ``--world_size`` > 1, ``SLURM_PROCID``/``SLURM_LOCALID``. A
    ``--world_size`` that disagrees with what was launched is refused, one line."""
    env = os.environ
    if launch.dist_on_itp:
        names = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "MASTER_ADDR",
                 "MASTER_PORT")
        missing = [n for n in names if n not in env]
        if missing:
            raise UsageError(f"--dist_on_itp needs the OpenMPI launcher's variables; {', '.join(missing)} not set")
        found = Placement(int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                          int(env["OMPI_COMM_WORLD_LOCAL_RANK"]), f"tcp://{env['MASTER_ADDR']}:{env['MASTER_PORT']}")
        launcher = "OpenMPI"
    elif "WORLD_SIZE" in env:
        found = Placement(int(env["RANK"]), int(env["WORLD_SIZE"]),
                          int(env.get("LOCAL_RANK", local_rank if local_rank is not None else 0)), launch.dist_url)
        launcher = "the launcher"
    elif "SLURM_PROCID" in env and launch.world_size is not None and launch.world_size > 1:
        tasks = int(env.get("SLURM_NTASKS", launch.world_size))
        if tasks != launch.world_size:
            raise UsageError(f"--world_size {launch.world_size} but srun started {tasks} tasks: pass --world_size "
                             f"{tasks}")
        return Placement(int(env["SLURM_PROCID"]), launch.world_size, int(env.get("SLURM_LOCALID", 0)),
                         launch.dist_url)
    else:
        found, launcher = None, "no launcher (a single process)"
    launched = found.world_size if found else 1
    if launch.world_size is not None and launch.world_size != launched:
        raise UsageError(f"--world_size {launch.world_size} but {launcher} started {launched} process(es): pass "
                         f"--world_size {launched} or leave it out")
    return found if found and found.world_size > 1 else None


def init_distributed(device: str, local_rank: int | None = None,
                     launch: LaunchFlags = LaunchFlags()) -> tuple[int, int, torch.device]:
    """Join the process group if launched (see ``placement``); return (rank, world_size, device).
    ``local_rank`` is the ``--local-rank`` the old launcher passes.

    NCCL on GPUs, gloo on the CPU. A plain ``python main_*.py`` runs as a single process.
    """
    where = placement(launch, local_rank)
    if where is None:
        return 0, 1, torch.device(device)
    if device.startswith("cuda"):
        torch.cuda.set_device(where.local_rank)
        device = f"cuda:{where.local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method=where.init_method,
                                rank=where.rank, world_size=where.world_size,
                                device_id=torch.device(device) if device.startswith("cuda") else None)
    return where.rank, where.world_size, torch.device(device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over processes (a copy; identity when not distributed)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / get_world_size()


def broadcast_from_main(value: Any) -> Any:
    """The main process's ``value`` on every process (a picklable object; identity when not distributed)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over processes (in place; identity when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` [n, ...] (the same shape on each) concatenated in rank order, [world * n, ...]
    (identity when not distributed)."""
    if not is_distributed():
        return tensor
    out = tensor.new_empty((get_world_size() * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_into_tensor(out, tensor.contiguous())
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
