"""What fine-tuning and linear probing build alike: the classes (and the check that a checkpoint was trained on
them), the classifier with its pretrained encoder, the train / validation loaders, and the augmentations: the
linear probe's, and fine-tuning's, whose random erasing runs on the device."""
import math
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from timm.data.random_erasing import RandomErasing
from torch import nn
from torch.utils.data import DataLoader, Sampler, SequentialSampler
from torchvision import transforms
from torchvision.transforms import functional as F

from base.errors import UsageError
from base.images import IMAGENET_MEAN, IMAGENET_STD
from util import distributed as dist_util
from util.checkpoint import load_pretrained
from util.config import ClassifyConfig, FinetuneConfig
from util.dali_augment import RandAugmentPlan
from util.dali_loader import dali_eval_loader, dali_train_loader
from util.dali_plans import RandomCrops
from util.data import Transform, build_dataset, dataset_classes
from util.runtime import build_named_model, recipe_options
from util.session import Session, ignore_stop_signals, train_loader


class Classes(NamedTuple):
    names: list[str]  # the training data's classes, label i = names[i]
    count: int  # the classifier's outputs: --nb_classes, or the number of names


class ClassifyData(NamedTuple):
    train: DataLoader
    val: DataLoader


def data_classes(cfg: ClassifyConfig) -> Classes:
    """The classes of the training data, from its folder names (no image is read, so that the classifier is
    built, and its ``--input_size`` checked, before the data)."""
    names = dataset_classes(cfg.data_set, cfg.data_path)
    if cfg.nb_classes is not None and cfg.nb_classes < len(names):
        raise UsageError(f"--nb_classes {cfg.nb_classes} is fewer than the {len(names)} classes of the data: "
                         f"pass at least {len(names)}")
    return Classes(names, cfg.nb_classes or len(names))


def build_loaders(cfg: ClassifyConfig, session: Session, train_transform: Transform, eval_transform: Transform,
                  classes: Classes, dali_plan: RandomCrops | None = None) -> ClassifyData:
    """The training shard and the validation loader (``val/`` of an ImageFolder, or the test split), sharded
    too with ``--dist_eval``; both splits must have the training data's class folders. With ``dali_plan``
    (``--data_backend dali``) both run on DALI: training as the plan says (the DALI form of ``train_transform``),
    evaluation as ``eval_transform`` (``build_eval_transform``) does."""
    dali = dali_plan is not None
    train_set = build_dataset(cfg.data_set, cfg.data_path, None if dali else train_transform, train=True,
                              limit=cfg.data_limit, classes=classes.names)
    val_set = build_dataset(cfg.data_set, cfg.data_path, None if dali else eval_transform, train=False,
                            classes=classes.names)
    if cfg.dist_eval and session.world_size > 1:
        val_sampler = EvalShard(len(val_set), session.world_size, session.rank)
    else:
        val_sampler = SequentialSampler(val_set)
    if dali:
        return ClassifyData(dali_train_loader(cfg, session, train_set, dali_plan, allow_empty=cfg.eval),
                            dali_eval_loader(cfg, session, val_set, val_sampler))
    val = DataLoader(val_set, batch_size=cfg.batch_size, sampler=val_sampler, num_workers=cfg.num_workers,
                     pin_memory=cfg.pin_mem and session.device.type == "cuda", drop_last=False,
                     worker_init_fn=ignore_stop_signals)  # the epoch's evaluation must finish at a stop signal
    return ClassifyData(train_loader(cfg, session, train_set, allow_empty=cfg.eval), val)


class EvalShard(Sampler[int]):
    """Process ``rank``'s share of ``size`` validation items under ``--dist_eval``: items rank, rank + W, ... (W =
    ``num_replicas``), each item on exactly one process, then repeats of one of them up to ceil(size / W), so that
    every process runs as many batches as the others (a sharded model's forward is a collective). The first ``real``
    items are the share; ``engine_finetune.evaluate`` leaves the repeats out of the metrics (``DistributedSampler``
    pads alike, and its repeats would be counted: 3 images over 2 processes scored as 4)."""

    def __init__(self, size: int, num_replicas: int, rank: int):
        self.num_replicas, self.rank = num_replicas, rank
        share = list(range(rank, size, num_replicas))
        self.real = len(share)
        self.indices = share + [share[0] if share else 0] * (-(-size // num_replicas) - self.real)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def evaluation_note(cfg: ClassifyConfig, data: ClassifyData) -> str:
    """What ``--eval`` evaluates, in one line: the model and its weights, and the data (no training settings)."""
    weights = cfg.resume or cfg.finetune or "its random initialization"
    source = cfg.data_set if cfg.data_path is None else f"{cfg.data_set} {cfg.data_path}"
    return f"evaluate {cfg.model} from {weights} on {len(data.val.dataset)} validation images ({source})"


def build_classifier(cfg: ClassifyConfig, num_classes: int,
                     flags: Mapping[str, tuple[str, Any]] = MappingProxyType({}), **defaults: Any) -> nn.Module:
    """The ``--model`` classifier, its encoder loaded from ``--finetune`` unless a checkpoint is resumed (which
    holds every weight). Its options: the shared flags' and ``flags`` (option -> (flag, value)), which
    ``--model_kwargs`` may not contradict (``util.runtime.recipe_options``), over the CLI's ``defaults``."""
    flags = {"num_classes": ("--nb_classes", num_classes), "img_size": ("--input_size", cfg.input_size),
             "global_pool": ("--global_pool/--cls_token", cfg.global_pool), **flags}
    model = build_named_model(cfg.model, "classify", **defaults | recipe_options(flags, cfg.model_kwargs)).model
    if cfg.finetune and not cfg.resume:
        load_encoder(model, cfg.finetune)
    return model


def load_encoder(model: nn.Module, path: str) -> None:
    """Pretrained weights into a classifier: every encoder weight must be found; decoder and other
    pretraining-only weights are ignored, position embeddings resized, the head kept fresh."""
    report = load_pretrained(model, path, allow_missing=["head.*", "fc_norm.*"])
    if dist_util.is_main_process():
        print(f"loaded {path}: {report}")


def check_classes(path: str, ckpt: dict[str, Any], names: Sequence[str]) -> str | None:
    """Refuse a classifier checkpoint trained on other classes than ``names`` (the data's, in label order), or in
    another order: its outputs would be scored against other classes. The names are those its run recorded
    (``args['classes']``, which fine-tuning and linear probing store). Returns a warning line for a checkpoint that
    records none (an official or older one), whose outputs can only be assumed to be ``names``; else None."""
    args = ckpt.get("args")
    saved = args.get("classes") if isinstance(args, dict) else getattr(args, "classes", None)
    if saved is None:
        return (f"warning: {path} records no class names (an official or older checkpoint): its outputs are taken "
                f"to be the data's class folders in sorted order, {_shown(names)}{_text_order_note(names)}")
    if list(saved) == list(names):
        return None
    how = "in another order" if sorted(saved) == sorted(names) else "other classes"
    raise UsageError(f"{path} was trained on classes {_shown(saved)} but the data's class folders are {_shown(names)} "
                     f"({how}{_text_order_note(names)}): evaluate or resume it on data whose class folders are its "
                     "classes, renamed if need be")


def _shown(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")


def _text_order_note(names: Sequence[str]) -> str:
    """A note when the folders are numbers, which sort as text (0, 1, 10, 100, ...: ImageNet-V2's)."""
    numbered = all(name.isdigit() for name in names) and list(names) != sorted(names, key=int)
    return "; folders named by number sort as text: 0, 1, 10, 100, ..." if numbered else ""


class SingleDrawResizedCrop(transforms.RandomResizedCrop):
    """The linear probe's random resized crop: one draw, TF style, as in the official MAE linear probe.
    torchvision's ``RandomResizedCrop`` retries up to ten draws until the box fits and then falls back to a centre
    crop; the official probe instead draws once and clips the box to the image.

    Constructed like the parent (size, scale, ratio, interpolation, antialias); the official
    probe passes ``interpolation=InterpolationMode.BICUBIC``.
    """

    @staticmethod
    def get_params(img, scale: list[float], ratio: list[float]) -> tuple[int, int, int, int]:
        """Box ``(i, j, h, w)`` (top, left, height, width) for ``img`` (PIL image or ``[..., H, W]`` tensor).

        Draws, in order, from torch's global RNG (so DataLoader worker seeding applies): one
        uniform for the area fraction, one for the log aspect ratio, one randint each for i and j.
        """
        _, height, width = F.get_dimensions(img)
        area = height * width
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1])).item())

        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        # Clipping to the image is the official rule; the lower bound of 1 only matters for
        # draws that round to an empty box (extreme ratios on tiny images), which cannot be resized.
        w = max(1, min(w, width))
        h = max(1, min(h, height))

        i = torch.randint(0, height - h + 1, size=(1,)).item()
        j = torch.randint(0, width - w + 1, size=(1,)).item()
        return i, j, h, w


def build_linprobe_transform(input_size: int) -> transforms.Compose:
    """Linear-probe training augmentation: RGB PIL image -> uint8 ``[3, input_size, input_size]`` tensor."""
    return transforms.Compose([
        SingleDrawResizedCrop(input_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])


def build_finetune_transform(cfg: FinetuneConfig) -> transforms.Compose:
    """Fine-tuning's augmentation in the workers, timm's as MAE builds it (RandomResizedCrop with scale 0.08-1,
    flip, ``--aa`` RandAugment or ``--color_jitter``, bicubic): RGB PIL image -> uint8 ``[3, input_size,
    input_size]``. Its normalization and random erasing run on the device, on the batch (``build_random_erasing``):
    timm's transform would do both here, on each image, in float32."""
    primary, secondary, _ = create_transform(input_size=cfg.input_size, is_training=True,
                                             color_jitter=cfg.color_jitter, auto_augment=cfg.aa,
                                             interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                             separate=True)
    return transforms.Compose([*primary.transforms, *secondary.transforms, transforms.PILToTensor()])


def build_random_erasing(cfg: FinetuneConfig, device: torch.device) -> RandomErasing | None:
    """timm's random erasing (``--reprob``, ``--remode``, ``--recount``) of a normalized batch ``[B, 3, S, S]``
    on ``device``, in place, each image on its own as in timm's transform (its boxes from Python's RNG, 'pixel' and
    'rand' fills from ``device``'s, both restored on resume); None when ``--reprob`` is 0."""
    if cfg.reprob == 0:
        return None
    return RandomErasing(cfg.reprob, mode=cfg.remode, max_count=cfg.recount, device=device)


def linprobe_plan(input_size: int) -> RandomCrops:
    """``build_linprobe_transform``'s DALI plan: the single-draw crop, a flip."""
    return RandomCrops(input_size, SingleDrawResizedCrop.get_params, (0.08, 1.0))


def finetune_plan(cfg: FinetuneConfig) -> RandomCrops:
    """``build_finetune_transform``'s DALI plan: timm's crop, a flip, RandAugment (``util.dali_augment``).
    Raises ``UsageError`` for what it does not map: another ``--aa`` than timm's RandAugment with increasing
    magnitudes, or ``--color_jitter`` without it."""
    if cfg.aa is None and cfg.color_jitter:
        raise UsageError("--data_backend dali has no color jitter: pass --data_backend pil for --color_jitter "
                         "without --aa")
    augment = RandAugmentPlan(cfg.aa, cfg.input_size) if cfg.aa else None
    return RandomCrops(cfg.input_size, RandomResizedCropAndInterpolation.get_params, (0.08, 1.0), augment=augment)
