"""Process-group set-up for torchrun and ``python -m torch.distributed.launch``, and small collectives."""
import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device: str, local_rank: int | None = None) -> tuple[int, int, torch.device]:
    """Join the process group if launched by torchrun / torch.distributed.launch; return
    (rank, world_size, device). ``local_rank`` is the ``--local-rank`` the old launcher passes.

    NCCL on GPUs, gloo on the CPU. A plain ``python main_*.py`` runs as a single process.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, torch.device(device)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank if local_rank is not None else 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                rank=rank, world_size=world_size,
                                device_id=torch.device(device) if device.startswith("cuda") else None)
    return rank, world_size, torch.device(device)


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


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
