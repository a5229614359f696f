"""What fine-tuning and linear probing build alike: the classes, the classifier with its pretrained encoder,
and the train / validation loaders."""
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

from torch import nn
from torch.utils.data import DataLoader, Sampler, SequentialSampler

from base.errors import UsageError
from util import distributed as dist_util
from util.checkpoint import load_pretrained
from util.config import ClassifyConfig
from util.data import Transform, build_dataset, dataset_classes
from util.runtime import build_named_model, recipe_options
from util.sampling import ignore_stop_signals
from util.session import Session, train_loader


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
                  classes: Classes) -> ClassifyData:
    """The training shard and the validation loader (``val/`` of an ImageFolder, or the test split), sharded
    too with ``--dist_eval``; both splits must have the training data's class folders."""
    train_set = build_dataset(cfg.data_set, cfg.data_path, train_transform, train=True, limit=cfg.data_limit,
                              classes=classes.names)
    val_set = build_dataset(cfg.data_set, cfg.data_path, eval_transform, train=False, classes=classes.names)
    if cfg.dist_eval and session.world_size > 1:
        val_sampler = EvalShard(len(val_set), session.world_size, session.rank)
    else:
        val_sampler = SequentialSampler(val_set)
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
