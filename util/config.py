"""The typed, frozen run configuration of each CLI, which is also its command line: every setting is a field
declared once (``base.settings.setting``: default, value type or range, choices, help, negation), and the CLI's
argparse parser is generated from the fields (``RunConfig.parser``), with the official flags of
``util.official_flags`` beside them. The pretraining recipes' method options are fields declared next to the
recipes (``models.recipe_options.MethodOptions``).

Each CLI parses its flags, builds its config with ``from_args`` and reads only the config afterwards; the
``argparse.Namespace`` is never changed. Values derived from the flags alone (the TensorBoard folder, the
checkpoint ``--auto_resume`` finds, DeepMIM's model name) are resolved when the config is built; values that
need the running process (the absolute LR, the number of classes, the start epoch) are returned by the
functions that compute them and recorded in checkpoints by ``util.trainer.Trainer``.
"""
import argparse
import copy
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Self

from base.errors import UsageError
from base.settings import (FRACTION_BELOW_ONE, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_FRACTION,
                           POSITIVE_INT, PROBABILITY, SEED, flag_of, setting)
from models import official
from models.encoders.common import GRAD_CKPT_MODES
from models.recipe_options import UMMAE, MethodOptions
from util.checkpoint import latest_checkpoint
from util.distributed import LaunchFlags
from util.flags import ArgumentParser, aa_policy, add_flags, device_name
from util.optim import scaled_lr
from util.official_flags import add_official_flags, official_values
from util.runtime import AMP_DTYPES, device_or_default

DATA_BACKENDS = ("dali", "pil")  # util.dali_loader.choose_backend
REMODES = ("pixel", "rand", "const")  # timm RandomErasing: per-pixel normal, per-box normal, zeros


def _plain(value: Any) -> Any:
    """A list flag as a tuple: configs are frozen."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """What every CLI is asked to do: one field per setting, with the flag's name and meaning.

    A CLI's class gives ``TASK`` (the kind of registered model it trains), ``DEFAULTS`` (its defaults for the
    settings below that have none, as the official scripts), and ``NO_FLAG`` (settings it takes no flag for:
    their default holds). ``log_dir``, ``resume`` and ``compile`` hold their resolved values (``--log_dir`` or
    ``output_dir``; ``--resume`` or, with ``--auto_resume``, the newest ``checkpoint-<epoch>.pth`` in
    ``output_dir`` (``.dcp`` under ``--fsdp``), or ""; ``--compile``/``--no_compile``, or whether the run's
    device is CUDA)."""

    TASK: ClassVar[str]  # one of models.registry.TASKS: "pretrain", or "classify" (which takes --finetune)
    DEFAULTS: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    NO_FLAG: ClassVar[tuple[str, ...]] = ()

    batch_size: int = setting(type=POSITIVE_INT, help="images per GPU (effective: x accum_iter x GPUs)")
    epochs: int = setting(type=POSITIVE_INT)
    accum_iter: int = setting(1, type=POSITIVE_INT, help="accumulate gradients over this many batches")
    model: str = setting(type=str, help="a name from models.list_models()")
    input_size: int = setting(224, type=POSITIVE_INT, help="image side in pixels, a multiple of the model's patch size")
    weight_decay: float = setting(type=NON_NEGATIVE)
    lr: float | None = setting(None, type=POSITIVE, help="absolute LR (default: blr x eff_batch / 256)")
    blr: float = setting(type=POSITIVE, help="base LR: lr = blr x eff_batch / 256")
    min_lr: float = setting(type=NON_NEGATIVE)
    warmup_epochs: float = setting(type=NON_NEGATIVE)
    clip_grad: float | None = setting(None, type=POSITIVE, help="max gradient norm (off by default)")
    save_freq: int = setting(type=POSITIVE_INT, help="save a checkpoint every N epochs (and the last)")
    model_kwargs: tuple[str, ...] = setting((), nargs="*", metavar="KEY=VALUE",
                                            help="override recipe defaults, e.g. decoder_depth=2 decoder_embed_dim=128")
    amp: str | None = setting(None, choices=sorted(AMP_DTYPES),
                              help="precision: bf16 on GPU by default, fp32 on CPU; fp16 uses a GradScaler")
    # the flag's None (neither --compile nor --no_compile) is resolved by from_args
    compile: bool = setting(None, switch=True, negation="--no_compile", negation_help="never torch.compile the model",
                            help="torch.compile the model (default: on CUDA; falls back to eager, with a warning, "
                                 "if it fails)")
    grad_ckpt: str = setting("none", choices=GRAD_CKPT_MODES,
                             help="activation checkpointing of the encoder's blocks: none, stage1 (the first, "
                                  "highest-resolution stage; a ViT's first quarter of blocks) or all")
    device: str | None = setting(None, type=device_name, help="cuda or cpu (default: cuda when available)")
    seed: int = setting(0, type=SEED)
    output_dir: str = setting("./output_dir")
    log_dir: str = setting(None, help="TensorBoard folder (default: output_dir)")  # None: resolved by from_args
    resume: str = setting("", help="checkpoint to continue from")
    auto_resume: bool = setting(False, switch=True, help="continue from the newest checkpoint in output_dir")
    start_epoch: int = setting(0, type=NON_NEGATIVE_INT)
    num_workers: int = setting(10, type=NON_NEGATIVE_INT)
    pin_mem: bool = setting(True, switch=True, negation="--no_pin_mem")
    print_freq: int = setting(20, type=POSITIVE_INT)
    data_set: str = setting("imagefolder", choices=["imagefolder", "fashion_mnist"])
    data_path: str | None = setting(None, type=str, help="ImageNet-style root (train/<class>/*, val/<class>/*) or a "
                                                         "folder of images; fashion_mnist: /usr/share/datasets/"
                                                         "fashion-mnist")
    data_limit: int | None = setting(None, type=POSITIVE_INT, help="use only the first N training images (demos)")
    # as given: None means DALI on a GPU when it imports (util.dali_loader.choose_backend)
    data_backend: str | None = setting(None, choices=DATA_BACKENDS,
                                       help="input pipeline: dali (decode and augment on the GPU, or its CPU "
                                            "operators) or pil (default: dali on a GPU with an image folder when "
                                            "DALI is installed and, fine-tuning, maps --aa; else pil)")
    fsdp: bool = setting(False, switch=True, help="shard weights, gradients and optimizer state over the processes "
                                                  "(FSDP2) instead of replicating them (DDP); checkpoints become "
                                                  "checkpoint-<epoch>.dcp folders")
    # set by the official flags (util.official_flags)
    local_rank: int | None = None
    world_size: int | None = None  # as given: None means whatever the launcher started
    dist_url: str = "env://"
    dist_on_itp: bool = False
    # the flags exactly as parsed, kept for the checkpoint record ("what command was run")
    flags: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parser(cls, prog: str) -> ArgumentParser:
        """The CLI's parser: a flag per setting (this CLI's defaults) and the official flags of its task."""
        parser = ArgumentParser(prog, add_help=True)
        add_flags(parser, cls, cls.DEFAULTS, skip=cls.NO_FLAG)
        add_official_flags(parser, cls.TASK, cls)
        return parser

    @classmethod
    def from_args(cls, args: argparse.Namespace, **resolved: Any) -> Self:
        """The config of ``args`` (left unchanged): every setting from its flag (lists as tuples), the official
        flags' values, ``resolved`` overriding; ``log_dir``, ``resume`` and ``compile`` resolved as the class
        says."""
        values = {f.name: _plain(getattr(args, f.name)) for f in fields(cls)
                  if flag_of(f) is not None and f.name not in cls.NO_FLAG}
        values |= official_values(args, cls.TASK)
        values["log_dir"] = args.log_dir or args.output_dir
        if args.compile is None:
            values["compile"] = device_or_default(args.device).startswith("cuda")
        if args.auto_resume and not args.resume:
            suffix = ".dcp" if values.get("fsdp") else ".pth"
            values["resume"] = latest_checkpoint(args.output_dir, suffix) or ""
        flags = MappingProxyType(copy.deepcopy(vars(args)))
        return cls(**values | resolved, flags=flags)

    @property
    def evaluates_only(self) -> bool:
        """Whether the run only evaluates (``--eval``): it then trains and writes nothing."""
        return False

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
class PretrainConfig(MethodOptions, RunConfig):
    """main_pretrain.py: the shared settings, the recipes' method options (handed to the recipe when given,
    ``MethodOptions.method_options``) and pretraining's own. ``model`` is the recipe trained (DeepMIM's official
    ``--model mae_vit_base_patch16 --clip_path`` means DeepMIM-CLIP)."""

    TASK = "pretrain"
    DEFAULTS = MappingProxyType(dict(model="mae_vit_large_patch16", batch_size=64, epochs=400, blr=1e-3, min_lr=0.0,
                                     warmup_epochs=40, weight_decay=0.05, save_freq=20))

    min_crop_scale: float | None = setting(None, type=POSITIVE_FRACTION,
                                           help="RandomResizedCrop lower scale (default: the recipe's, MAE 0.2, "
                                                "DMJD 0.5)")
    token_size: int | None = setting(None, type=POSITIVE_INT, group=UMMAE,
                                     help="the mask grid's side (input_size / 16); checked against the model's patch "
                                          "grid")
    vis_freq: int = setting(20, type=POSITIVE_INT, help="write a reconstruction grid every N epochs")
    # as given: None means every --save_freq epochs when the data have labels, else never (main_pretrain)
    knn_freq: int | None = setting(None, type=NON_NEGATIVE_INT,
                                   help="kNN top-1/top-5 of the encoder's features every N epochs (0: never; "
                                        "default: every --save_freq when the data have labels)")
    knn_bank_size: int = setting(10000, type=POSITIVE_INT, help="labelled training images the kNN monitor "
                                                                "compares against (a class-balanced subset)")
    knn_query_size: int = setting(10000, type=POSITIVE_INT, help="validation images the kNN monitor classifies "
                                                                 "(a class-balanced subset)")
    load_from: str | None = None  # UM-MAE's --load_from (util.official_flags)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **resolved: Any) -> Self:
        model, note = official.pretrain_model_name(args.model, args.clip_path)
        if note:
            print(note)
        return super().from_args(args, **{"model": model} | resolved)


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig(RunConfig):
    """main_linprobe.py, and what main_finetune.py shares with it. Linear probing trains a head on a frozen
    encoder: it has nothing to shard (no ``--fsdp``)."""

    TASK = "classify"
    DEFAULTS = MappingProxyType(dict(model="vit_large_patch16", batch_size=512, epochs=90, blr=0.1, min_lr=0.0,
                                     warmup_epochs=10, weight_decay=0.0, save_freq=10))
    NO_FLAG = ("fsdp",)

    model: str = setting(type=str, help="a classifier from models.list_models()")
    finetune: str = setting("", help="pretrained checkpoint to start from (ours or official)")
    global_pool: bool = setting(False, switch=True, negation="--cls_token", negation_help="use the cls token",
                                help="average patch tokens (+ fc_norm) instead of the cls token")
    # as given: None means the number of classes in the data
    nb_classes: int | None = setting(None, type=POSITIVE_INT, help="default: the number of classes in the data")
    eval: bool = setting(False, switch=True, help="only evaluate (--resume or --finetune weights)")
    dist_eval: bool = setting(False, switch=True, help="shard evaluation over processes")

    @property
    def evaluates_only(self) -> bool:
        return self.eval


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(ClassifyConfig):
    """main_finetune.py: adds stochastic depth, layer decay, augmentation, Mixup/CutMix, EMA and ``--fsdp``."""

    DEFAULTS = MappingProxyType(dict(model="vit_large_patch16", batch_size=64, epochs=50, blr=1e-3, min_lr=1e-6,
                                     warmup_epochs=5, weight_decay=0.05, save_freq=10, global_pool=True))
    NO_FLAG = ()

    drop_path: float = setting(0.1, type=FRACTION_BELOW_ONE, help="stochastic depth rate")
    layer_decay: float = setting(0.75, type=POSITIVE_FRACTION, help="layer-wise LR decay")
    color_jitter: float | None = setting(None, type=NON_NEGATIVE)
    aa: str | None = setting("rand-m9-mstd0.5-inc1", type=aa_policy,  # None: no auto-augment (--aa none)
                             help="timm auto-augment policy (RandAugment by default), or none")
    smoothing: float = setting(0.1, type=FRACTION_BELOW_ONE, help="label smoothing")
    reprob: float = setting(0.25, type=PROBABILITY, help="random erasing probability")
    remode: str = setting("pixel", choices=REMODES, help="what random erasing fills boxes with")
    recount: int = setting(1, type=POSITIVE_INT)
    resplit: bool = setting(False, switch=True)
    mixup: float = setting(0.0, type=NON_NEGATIVE, help="mixup alpha (on if > 0)")
    cutmix: float = setting(0.0, type=NON_NEGATIVE, help="cutmix alpha (on if > 0)")
    cutmix_minmax: tuple[float, ...] | None = setting(None, type=PROBABILITY, nargs=2, metavar=("MIN", "MAX"),
                                                      help="CutMix box side range, as fractions of the image side "
                                                           "(replaces --cutmix's Beta)")
    mixup_prob: float = setting(1.0, type=PROBABILITY)
    mixup_switch_prob: float = setting(0.5, type=PROBABILITY)
    mixup_mode: str = setting("batch", choices=["batch", "pair", "elem"])
    model_ema: bool = setting(False, switch=True, help="also keep and evaluate an EMA of the weights")
    model_ema_decay: float = setting(0.9999, type=PROBABILITY)

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
