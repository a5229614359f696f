"""``--fsdp``: the model sharded over the processes with FSDP2 (``torch.distributed.fsdp.fully_shard``), and its
checkpoints, written and read through ``torch.distributed.checkpoint`` (DCP) as one folder each.

Sharding is in place: the model object the CLI built stays what evaluation, the probe pictures and checkpoints
see, its parameters become DTensors (each process holds a slice of every weight). Every transformer block
(encoder and decoder) is its own FSDP unit, gathered just before it runs; the root unit holds the rest. Frozen
teachers (DeepMIM's CLIP, DMJD's teacher target) are not registered submodules, so they stay whole replicas
without gradients.

A checkpoint ``checkpoint-<epoch>.dcp/`` holds the DCP files (every process writes its slices: model weights
under ``model.<key>``, the optimizer's tensors under ``optim.<param path>.<name>``) and ``training_state.pth``,
the plain values (epoch, step, args, RNG states of every process, the optimizer's parameter groups) that
``weights_only`` loading reads. Nothing in it is unpickled unchecked: DCP's own reader unpickles its
``.metadata`` file with ``pickle``, so ours (``SafeReader``) admits only DCP's metadata classes.
``sharded_to_plain`` turns a folder into the plain checkpoint format (``tools/dcp_to_plain.py``).
"""
import contextlib
import glob
import json
import os
import pickle
import shutil
from typing import Any, Iterator, Sequence

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from base.errors import UsageError
from base.safe_load import is_sharded_checkpoint, safe_torch_load
from util import distributed as dist_util
from util.checkpoint import (SAME_RUN, check_finite_weights, compare_weights, read_checkpoint, rng_state,
                             save_checkpoint, saved_model, set_rng_state)

SUFFIX = ".dcp"
STATE_FILE = "training_state.pth"


def check_usable(world_size: int, amp_name: str, model_ema: bool = False) -> None:
    """Refuse, in one sentence, what ``--fsdp`` cannot do."""
    if world_size < 2:
        raise UsageError("--fsdp shards the model over the processes of a torchrun launch and this run has one: "
                         "launch it with torchrun --nproc_per_node N, or drop --fsdp")
    if amp_name == "fp16":
        raise UsageError("--fsdp does not take --amp fp16 (its GradScaler would skip steps on some processes and "
                         "not on others): use --amp bf16")
    if model_ema:
        raise UsageError("--model_ema keeps a whole copy of the weights, which --fsdp shards: drop one of them")


def shard_model(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> None:
    """Shard ``model`` (on ``device``, built, pretrained weights loaded, no optimizer yet: FSDP2 replaces the
    parameters) over every process: each module of a ``*blocks`` list is one unit, the model the root unit.
    bf16 on a GPU computes in bf16 weights and reduces gradients in fp32; elsewhere everything stays fp32. The
    root leaves its inputs as they are (the pixel targets are computed from the fp32 images). The main process's
    weights are everyone's first (as DDP does): each process seeds its RNG with its rank, so the random
    initialisation (a classifier's head, a whole model) differs, and each would keep its own slice of it."""
    for tensor in [*model.parameters(), *model.buffers()]:
        torch.distributed.broadcast(tensor.data, src=0)
    mesh = init_device_mesh(device.type, (dist_util.get_world_size(),))
    bf16 = amp_dtype == torch.bfloat16 and device.type == "cuda"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    blocks = [block for name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) and name.rpartition(".")[2].endswith("blocks") for block in module]
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    root_policy = MixedPrecisionPolicy(policy.param_dtype, policy.reduce_dtype, cast_forward_inputs=False)
    # the root's own weights are needed again at once by the backward: keep them gathered after the forward
    fully_shard(model, mesh=mesh, mp_policy=root_policy, reshard_after_forward=False)


class ShardedTrainee(nn.Module):
    """The module the loop trains under ``--fsdp``: the sharded model, with DDP's ``no_sync()`` (the loop's
    accumulation steps): FSDP2 then keeps the gradients whole and reduces them once, at the last batch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        self.module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.module.set_requires_gradient_sync(True)


_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "TensorProperties", "ChunkStorageMetadata",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
     ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file admitting only DCP's metadata classes, sizes and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                   torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not DCP metadata")


class SafeReader(FileSystemReader):
    """DCP's file reader with a safe ``.metadata`` (the tensors it reads with ``weights_only`` already)."""

    def __init__(self, path: str):
        super().__init__(path)
        self.folder = path

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        with open(os.path.join(self.folder, ".metadata"), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"its .metadata holds a {type(metadata).__name__}")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def read_sharded(path: str) -> tuple[dict[str, Any], Metadata]:
    """(training state, DCP metadata) of the checkpoint folder ``path``, both read safely; one-line errors."""
    if not is_sharded_checkpoint(path):
        raise UsageError(f"checkpoint {path!r} is not a checkpoint folder --fsdp wrote (no .metadata in it): "
                         "pass a checkpoint-<epoch>.dcp folder")
    state = safe_torch_load(os.path.join(path, STATE_FILE), "checkpoint state")
    try:
        metadata = SafeReader(path).read_metadata()
    except Exception as err:
        raise UsageError(f"cannot load checkpoint {path!r}: its .metadata is not DCP's ({err})") from err
    if not isinstance(state, dict):
        raise UsageError(f"cannot load checkpoint {path!r}: its {STATE_FILE} holds a {type(state).__name__}")
    return state, metadata


def _saved_shapes(metadata: Metadata, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors saved under ``prefix``, as empty meta tensors of their full shapes, by key without it."""
    return {key[len(prefix):]: torch.empty(md.size, dtype=md.properties.dtype, device="meta")
            for key, md in metadata.state_dict_metadata.items()
            if key.startswith(prefix) and isinstance(md, TensorStorageMetadata)}


def _optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], list]:
    """({"<param path>.<name>": tensor}, parameter groups) of the optimizer: state keyed by parameter path
    (``get_optimizer_state_dict``; the steps' state slices are DTensors like the parameters)."""
    state = get_optimizer_state_dict(model, optimizer)
    tensors = {}
    for param, values in state["state"].items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                raise UsageError(f"the optimizer state {param}.{name} is a {type(value).__name__}: --fsdp "
                                 "checkpoints hold tensors only")
            tensors[f"{param}.{name}"] = value
    return tensors, state["param_groups"]


def save_sharded(output_dir: str, name: str, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                 step: int, args: dict[str, Any], **extra) -> None:
    """Write ``output_dir/name`` (a folder) atomically, every process its slices: into a temp folder, then
    renamed; a folder of that name is moved aside for the swap and removed after. Diverged weights are never
    written."""
    check_finite_weights(model, epoch, output_dir)
    path = os.path.join(output_dir, name)
    tmp = os.path.join(output_dir, f".tmp-{name}")
    world_size = dist_util.get_world_size()
    rng = [None] * world_size
    torch.distributed.all_gather_object(rng, rng_state())
    optim_tensors, groups = _optimizer_tensors(model, optimizer)
    if dist_util.is_main_process():
        _tidy(output_dir)
    dist_util.barrier()
    dcp.save({"model": model.state_dict(), "optim": optim_tensors}, checkpoint_id=tmp)
    if dist_util.is_main_process():
        save_checkpoint(os.path.join(tmp, STATE_FILE), {
            "epoch": epoch, "step": step, "args": json.loads(json.dumps(args, default=str)), "rng": rng,
            "world_size": world_size, "param_groups": groups, "scaler": None, **extra})
        old = os.path.join(output_dir, f".old-{name}")
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    dist_util.barrier()


def _tidy(output_dir: str) -> None:
    """Undo what a save killed part-way left (this run holds the folder's lock: no other save is under way): its
    temp folders, and a folder moved aside for the instant of a swap, put back when the swap never ended."""
    for tmp in glob.glob(os.path.join(output_dir, f".tmp-*{SUFFIX}")):
        shutil.rmtree(tmp)
    for old in glob.glob(os.path.join(output_dir, f".old-*{SUFFIX}")):
        path = os.path.join(output_dir, os.path.basename(old)[len(".old-"):])
        if os.path.exists(path):
            shutil.rmtree(old)
        else:
            os.replace(old, path)


def check_sharded(path: str, state: dict[str, Any], metadata: Metadata, model: nn.Module,
                  optimizer: torch.optim.Optimizer | None) -> None:
    """One ``UsageError`` line unless ``path`` holds weights of exactly ``model`` (and, when given, an optimizer
    state of ``optimizer``'s parameters and shapes)."""
    report = compare_weights(_saved_shapes(metadata, "model."), model.state_dict())
    if str(report) != "loaded all keys":
        raise UsageError(f"{path} holds weights of another model ({saved_model(state)}; {report}): {SAME_RUN}")
    if optimizer is None:
        return
    own = dict(model.named_parameters())
    saved = _saved_shapes(metadata, "optim.")
    sizes = [len(group["params"]) for group in state.get("param_groups", [])]
    problem = None if sizes == [len(group["params"]) for group in optimizer.param_groups] else \
        f"{len(sizes)} parameter groups of {sum(sizes)} tensors"
    for key, value in saved.items() if problem is None else ():
        param = own.get(key.rpartition(".")[0])
        if param is None or (value.dim() and value.shape != param.shape):
            problem = f"{key} of shape {tuple(value.shape)}"
    if problem:
        raise UsageError(f"{path} holds an optimizer state of another shape ({problem}): {SAME_RUN} and its "
                         "optimizer flags (--layer_decay, --weight_decay)")


def _read_to_resume(path: str) -> tuple[dict[str, Any], Metadata]:
    """``read_sharded``, and for a plain checkpoint file the flag that resumes it."""
    try:
        return read_sharded(path)
    except UsageError as err:
        if os.path.isfile(path) and path.endswith(".pth"):
            raise UsageError(f"{path} is a plain checkpoint and --fsdp resumes checkpoint-<epoch>.dcp folders: "
                             "resume it without --fsdp, or start from its weights with --finetune") from err
        raise


def resume_sharded(path: str, fallbacks: Sequence[str], model: nn.Module,
                   optimizer: torch.optim.Optimizer | None) -> tuple[str, dict[str, Any]]:
    """Restore the folder ``path`` (or, when it cannot be read, the first readable of ``fallbacks``: the older
    checkpoints ``--auto_resume`` found) into the sharded ``model`` and ``optimizer`` exactly, with this
    process's RNG states when the world size is unchanged. Returns (path, its training state)."""
    candidate, (state, metadata) = read_checkpoint(path, fallbacks, _read_to_resume)
    check_sharded(candidate, state, metadata, model, optimizer)
    weights = model.state_dict()
    wanted = {"model": weights}
    if optimizer is not None:
        optim_tensors, _ = _optimizer_tensors(model, optimizer)
        wanted["optim"] = optim_tensors
    dcp.load(wanted, storage_reader=SafeReader(candidate))
    model.load_state_dict(weights)
    if optimizer is not None:
        nested: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in optim_tensors.items():
            param, _, name = key.rpartition(".")
            nested.setdefault(param, {})[name] = value
        set_optimizer_state_dict(model, optimizer, {"state": nested, "param_groups": state["param_groups"]})
    rng = state.get("rng")
    if rng is not None and state.get("world_size") == dist_util.get_world_size():
        set_rng_state(rng[dist_util.get_rank()])
    return candidate, state


def sharded_to_plain(path: str) -> dict[str, Any]:
    """The checkpoint folder ``path`` in the plain format (``util.checkpoint.save_training_state``'s): whole
    weights under the model's keys, the optimizer state keyed by parameter index as ``Optimizer.state_dict``
    numbers them (in the order of the parameter groups), and the training state. One process, on the CPU."""
    state, metadata = read_sharded(path)
    tensors = {key: torch.empty(md.size, dtype=md.properties.dtype)
               for key, md in metadata.state_dict_metadata.items() if isinstance(md, TensorStorageMetadata)}
    dcp.load(tensors, storage_reader=SafeReader(path), no_dist=True)
    groups = state.pop("param_groups")
    index = {name: i for i, name in enumerate(name for group in groups for name in group["params"])}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            param, _, name = key[len("optim."):].rpartition(".")
            optim_state.setdefault(index[param], {})[name] = value
    optimizer = {"state": dict(sorted(optim_state.items())),
                 "param_groups": [group | {"params": [index[name] for name in group["params"]]} for group in groups]}
    model = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    return {"model": model, "optimizer": optimizer, **state}

