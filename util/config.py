"""The flags every CLI shares and the typed, frozen run configurations built once from the parsed flags.

Each CLI parses its flags, builds its config with ``from_args`` and reads only the config afterwards; the
``argparse.Namespace`` is never changed. Values derived from the flags alone (the TensorBoard folder, the
checkpoint ``--auto_resume`` finds, DeepMIM's model name) are resolved when the config is built; values that
need the running process (the absolute LR, the number of classes, the start epoch) are returned by the
functions that compute them and recorded in checkpoints by ``util.trainer.Trainer``.
"""
import argparse
import copy
import os
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Mapping, Self

from base.errors import UsageError
from models import official
from models.encoders.common import GRAD_CKPT_MODES
from util.checkpoint import latest_checkpoint
from util.distributed import LaunchFlags
from util.flags import (NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, ArgumentParser,
                         device_name)
from util.optim import scaled_lr
from util.runtime import AMP_DTYPES, device_or_default


def add_training_args(p: ArgumentParser, *, model: str, model_help: str, batch_size: int, epochs: int,
                      blr: float, min_lr: float, warmup_epochs: float, weight_decay: float, save_freq: int) -> None:
    """Length, batch and optimizer-schedule flags of every CLI, with that CLI's defaults (official names)."""
    p.add_argument("--batch_size", default=batch_size, type=POSITIVE_INT,
                   help="images per GPU (effective: x accum_iter x GPUs)")
    p.add_argument("--epochs", default=epochs, type=POSITIVE_INT)
    p.add_argument("--accum_iter", default=1, type=POSITIVE_INT, help="accumulate gradients over this many batches")
    p.add_argument("--model", default=model, type=str, help=model_help)
    p.add_argument("--input_size", default=224, type=POSITIVE_INT,
                   help="image side in pixels, a multiple of the model's patch size")
    p.add_argument("--weight_decay", default=weight_decay, type=NON_NEGATIVE)
    p.add_argument("--lr", default=None, type=POSITIVE, help="absolute LR (default: blr x eff_batch / 256)")
    p.add_argument("--blr", default=blr, type=POSITIVE, help="base LR: lr = blr x eff_batch / 256")
    p.add_argument("--min_lr", default=min_lr, type=NON_NEGATIVE)
    p.add_argument("--warmup_epochs", default=warmup_epochs, type=NON_NEGATIVE)
    p.add_argument("--clip_grad", default=None, type=POSITIVE, help="max gradient norm (off by default)")
    p.add_argument("--save_freq", default=save_freq, type=POSITIVE_INT,
                   help="save a checkpoint every N epochs (and the last)")


def add_runtime_args(p: ArgumentParser) -> None:
    """Device, precision, seed, folders, resume and data flags shared by every CLI."""
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe defaults, e.g. decoder_depth=2 decoder_embed_dim=128")
    p.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES),
                   help="precision: bf16 on GPU by default, fp32 on CPU; fp16 uses a GradScaler")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (default: on CUDA; falls back to eager, with a warning, if it fails)")
    p.add_argument("--no_compile", action="store_false", dest="compile", help="never torch.compile the model")
    p.add_argument("--grad_ckpt", default="none", choices=GRAD_CKPT_MODES,
                   help="activation checkpointing of the encoder's blocks: none, stage1 (the first, highest-resolution "
                        "stage; a ViT's first quarter of blocks) or all")
    p.add_argument("--device", default=None, type=device_name, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", default=0, type=SEED)
    p.add_argument("--output_dir", default="./output_dir")
    p.add_argument("--log_dir", default=None, help="TensorBoard folder (default: output_dir)")
    p.add_argument("--resume", default="", help="checkpoint to continue from")
    p.add_argument("--auto_resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--start_epoch", default=0, type=NON_NEGATIVE_INT)
    p.add_argument("--num_workers", default=10, type=NON_NEGATIVE_INT)
    p.add_argument("--pin_mem", action="store_true", default=True)
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.add_argument("--print_freq", default=20, type=POSITIVE_INT)
    p.add_argument("--data_set", default="imagefolder", choices=["imagefolder", "fashion_mnist"])
    p.add_argument("--data_path", default=None, type=str,
                   help="ImageNet-style root (train/<class>/*, val/<class>/*) or a folder of images; "
                        "fashion_mnist: /usr/share/datasets/fashion-mnist")
    p.add_argument("--data_limit", default=None, type=POSITIVE_INT, help="use only the first N training images (demos)")
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", default=None, type=NON_NEGATIVE_INT,
                   help="set by python -m torch.distributed.launch")


def add_sharding_args(p: ArgumentParser) -> None:
    """``--fsdp``, for the CLIs that train a whole ViT-L/H (pretraining, fine-tuning)."""
    p.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimizer state over the processes (FSDP2) instead of "
                        "replicating them (DDP); checkpoints become checkpoint-<epoch>.dcp folders")


def add_official_compat_args(p: ArgumentParser, pretrain: bool) -> None:
    """The official repositories' flags that have no flag of ours: each is taken with its official meaning
    where it maps onto ours (``resolve_official_compat``), else with one printed line saying it does nothing
    here, and why. MAE's distributed flags on every CLI; UM-MAE's and DeepMIM's pretraining flags on
    ``main_pretrain.py`` (PRETRAIN.md, "Official flags")."""
    g = p.add_argument_group("official flags", "accepted for the official commands (PRETRAIN.md, FINETUNE.md)")
    g.add_argument("--world_size", default=None, type=POSITIVE_INT,
                   help="number of processes: checked against the launcher's (srun: starts the group with it)")
    g.add_argument("--dist_url", default="env://", help="process-group init method, e.g. tcp://host:port")
    g.add_argument("--dist_on_itp", action="store_true", help="processes from OpenMPI's OMPI_COMM_WORLD_* variables")
    if not pretrain:
        return
    g.add_argument("--bf16", action="store_true", help="UM-MAE: bf16 autocast, the same as --amp bf16")
    g.add_argument("--load_from", default=None,
                   help="UM-MAE: start from these weights (every key must match); a resumed run ignores it")
    for name in ("--hybrid", "--teacher_path", "--teacher_type"):
        g.add_argument(name, default=None, help="DeepMIM: parsed and never read by the official code; no effect")


# DeepMIM's main_pretrain.py defines these and never reads them
DEEPMIM_UNUSED = ("hybrid", "teacher_path", "teacher_type")


def resolve_official_compat(args: argparse.Namespace) -> dict[str, Any]:
    """Config values the official flags set (``amp`` from ``--bf16``); prints one line (on the first process)
    for the given flags that have no effect here."""
    amp = args.amp
    if getattr(args, "bf16", False):
        if amp not in (None, "bf16"):
            raise UsageError(f"--bf16 asks for bf16 autocast but --amp is {amp}: pass one of them")
        amp = "bf16"
    unused = [f"--{name}" for name in DEEPMIM_UNUSED if getattr(args, name, None) is not None]
    if unused and int(os.environ.get("RANK", "0")) == 0:
        print(f"{' '.join(unused)}: no effect, as in the official DeepMIM code, which parses and never reads them "
              "(the CLIP teacher is --clip_path)")
    return {"amp": amp}


def add_classify_args(p: ArgumentParser, global_pool_default: bool) -> None:
    """Flags fine-tuning and linear probing share (official names)."""
    p.add_argument("--finetune", default="", help="pretrained checkpoint to start from (ours or official)")
    p.add_argument("--global_pool", action="store_true", default=global_pool_default,
                   help="average patch tokens (+ fc_norm) instead of the cls token")
    p.add_argument("--cls_token", action="store_false", dest="global_pool", help="use the cls token")
    p.add_argument("--nb_classes", default=None, type=POSITIVE_INT, help="default: the number of classes in the data")
    p.add_argument("--eval", action="store_true", help="only evaluate (--resume or --finetune weights)")
    p.add_argument("--dist_eval", action="store_true", help="shard evaluation over processes")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every CLI is asked to do: one field per shared flag, with the flag's name and meaning.

    ``log_dir``, ``resume`` and ``compile`` hold their resolved values (``--log_dir`` or ``output_dir``;
    ``--resume`` or, with ``--auto_resume``, the newest ``checkpoint-<epoch>.pth`` in ``output_dir`` (``.dcp``
    under ``--fsdp``), or ""; ``--compile``/``--no_compile``, or whether the run's device is CUDA)."""

    model: str
    epochs: int
    batch_size: int
    accum_iter: int
    input_size: int
    weight_decay: float
    lr: float | None  # as given: None means the scaling rule (see scaled_lr)
    blr: float
    min_lr: float
    warmup_epochs: float
    clip_grad: float | None
    save_freq: int
    model_kwargs: tuple[str, ...]
    amp: str | None
    compile: bool  # resolved: --compile, --no_compile, or on when the run's device is CUDA
    grad_ckpt: str
    device: str | None
    seed: int
    output_dir: str
    log_dir: str
    resume: str
    auto_resume: bool
    start_epoch: int
    num_workers: int
    pin_mem: bool
    print_freq: int
    data_set: str
    data_path: str | None
    data_limit: int | None
    local_rank: int | None
    world_size: int | None  # as given: None means whatever the launcher started
    dist_url: str
    dist_on_itp: bool
    # the flags exactly as parsed, kept for the checkpoint record ("what command was run")
    flags: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **resolved: Any) -> Self:
        """The config of ``args`` (left unchanged): every field from the flag of its name (lists as tuples),
        ``resolved`` overriding; ``log_dir``, ``resume`` and ``compile`` resolved as the class says."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if f.name != "flags"}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        values |= resolve_official_compat(args)
        values["log_dir"] = args.log_dir or args.output_dir
        if args.compile is None:
            values["compile"] = device_or_default(args.device).startswith("cuda")
        if args.auto_resume and not args.resume:
            suffix = ".dcp" if getattr(args, "fsdp", False) else ".pth"
            values["resume"] = latest_checkpoint(args.output_dir, suffix) or ""
        flags = MappingProxyType(copy.deepcopy(vars(args)))
        return cls(**values | resolved, flags=flags)

    @property
    def launch(self) -> LaunchFlags:
        """The official distributed flags, as ``util.distributed.init_distributed`` takes them."""
        return LaunchFlags(self.world_size, self.dist_url, self.dist_on_itp)

    def scaled_lr(self, world_size: int, lr_batch_ratio: float = 1.0) -> tuple[float, float]:
        """(absolute LR, effective batch): ``--lr`` when given, else ``blr x eff_batch / 256``, where eff_batch
        counts every process and accumulation step, times the recipe's ``lr_batch_ratio`` (DMJD's pred/mask)."""
        lr, eff_batch = scaled_lr(self.blr, self.batch_size, self.accum_iter, world_size, lr_batch_ratio)
        return (lr if self.lr is None else self.lr), eff_batch

    def record(self) -> dict[str, Any]:
        """The fields as a plain dict, and the original flags under ``flags``: what checkpoints store."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "flags"}
        return out | {"flags": dict(self.flags)}


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(RunConfig):
    """main_pretrain.py: the shared fields and the method flags handed to the recipe. ``model`` is the
    recipe trained (DeepMIM's official ``--model mae_vit_base_patch16 --clip_path`` means DeepMIM-CLIP)."""

    mask_ratio: float | None
    norm_pix_loss: bool
    min_crop_scale: float | None
    official_quirks: bool
    mask_regular: bool
    vis_mask_ratio: float | None
    token_size: int | None
    clip_path: str | None
    ds_layers: tuple[int, ...] | None
    mask_type: str | None
    pred_ratio: float | None
    num_views: int | None
    pred_type: str | None
    mim_loss_type: str | None
    vis_loss_type: str | None
    theta: float | None
    vis_freq: int
    data_backend: str | None  # as given: None means DALI on a GPU when it imports (util.dali_loader.choose_backend)
    fsdp: bool
    bf16: bool  # UM-MAE's, resolved into amp
    load_from: str | None
    hybrid: str | None  # DeepMIM's three unused flags
    teacher_path: str | None
    teacher_type: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace, **resolved: Any) -> Self:
        model, note = official.pretrain_model_name(args.model, args.clip_path)
        if note:
            print(note)
        return super().from_args(args, **{"model": model} | resolved)


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig(RunConfig):
    """main_linprobe.py, and what main_finetune.py shares with it."""

    finetune: str
    global_pool: bool
    nb_classes: int | None  # as given: None means the number of classes in the data
    eval: bool
    dist_eval: bool


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(ClassifyConfig):
    """main_finetune.py: adds stochastic depth, layer decay, augmentation, Mixup/CutMix and EMA."""

    drop_path: float
    layer_decay: float
    color_jitter: float | None
    aa: str | None  # None: no auto-augment (--aa none)
    smoothing: float
    reprob: float
    remode: str
    recount: int
    resplit: bool
    mixup: float
    cutmix: float
    cutmix_minmax: tuple[float, ...] | None
    mixup_prob: float
    mixup_switch_prob: float
    mixup_mode: str
    model_ema: bool
    model_ema_decay: float
    fsdp: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, **resolved: Any) -> Self:
        cfg = super().from_args(args, **resolved)
        cfg.check_mixing()
        return cfg

    @property
    def mixes(self) -> bool:
        """Whether Mixup / CutMix mix the training batches (timm's ``Mixup``, on when any of its flags is)."""
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None

    def check_mixing(self) -> None:
        """What timm's Mixup would assert on at the first batch, refused while the flags are read: an odd batch
        (images are mixed in pairs) and a ``--cutmix_minmax`` range with no box size in it."""
        batch = self.batch_size
        if self.mixes and not self.eval and batch % 2:
            raise UsageError(f"--mixup/--cutmix mix the images of a batch in pairs: --batch_size {batch} must be "
                             f"even; pass {f'{batch - 1} or {batch + 1}' if batch > 1 else 2}")
        if self.cutmix_minmax is None:
            return
        low, high = self.cutmix_minmax
        if low >= high:
            raise UsageError(f"--cutmix_minmax {low:g} {high:g}: the first (smallest box side) must be below the "
                             "second")
        # timm draws a box side in [int(side x min), int(side x max)), which must not be empty
        sides = int(self.input_size * low), int(self.input_size * high)
        if sides[0] >= sides[1]:
            raise UsageError(f"--cutmix_minmax {low:g} {high:g} gives boxes of {sides[0]} to {sides[1]} pixels at "
                             f"--input_size {self.input_size}: widen the range")
