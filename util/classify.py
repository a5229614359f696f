"""What fine-tuning and linear probing build alike: the train / validation loaders with the number of
classes, and the classifier with its pretrained encoder."""
from typing import NamedTuple

from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from util import distributed as dist_util
from util.checkpoint import load_pretrained
from util.config import ClassifyConfig
from util.data import Transform, build_dataset
from util.runtime import build_named_model, parse_model_kwargs
from util.session import Session, train_loader


class ClassifyData(NamedTuple):
    train: DataLoader
    val: DataLoader
    num_classes: int  # --nb_classes, or the number of classes in the training data


def build_loaders(cfg: ClassifyConfig, session: Session, train_transform: Transform,
                  eval_transform: Transform) -> ClassifyData:
    """The training shard and the validation loader (``val/`` of an ImageFolder, or the test split), sharded
    too with ``--dist_eval``."""
    train_set = build_dataset(cfg.data_set, cfg.data_path, train_transform, train=True, limit=cfg.data_limit)
    val_set = build_dataset(cfg.data_set, cfg.data_path, eval_transform, train=False)
    if cfg.dist_eval and session.world_size > 1:
        val_sampler = DistributedSampler(val_set, num_replicas=session.world_size, rank=session.rank, shuffle=False)
    else:
        val_sampler = SequentialSampler(val_set)
    val = DataLoader(val_set, batch_size=cfg.batch_size, sampler=val_sampler, num_workers=cfg.num_workers,
                     pin_memory=cfg.pin_mem and session.device.type == "cuda", drop_last=False)
    num_classes = cfg.nb_classes if cfg.nb_classes is not None else len(train_set.classes)
    return ClassifyData(train_loader(cfg, session, train_set, allow_empty=cfg.eval), val, num_classes)


def build_classifier(cfg: ClassifyConfig, num_classes: int, **kwargs) -> nn.Module:
    """The ``--model`` classifier (``kwargs`` and ``--model_kwargs`` passed to its recipe), its encoder loaded
    from ``--finetune`` unless a checkpoint is resumed (which holds every weight)."""
    model = build_named_model(cfg.model, num_classes=num_classes, global_pool=cfg.global_pool,
                              img_size=cfg.input_size, **kwargs | parse_model_kwargs(cfg.model_kwargs)).model
    if cfg.finetune and not cfg.resume:
        load_encoder(model, cfg.finetune)
    return model


def load_encoder(model: nn.Module, path: str) -> None:
    """Pretrained weights into a classifier: every encoder weight must be found; decoder and other
    pretraining-only weights are ignored, position embeddings resized, the head kept fresh."""
    report = load_pretrained(model, path, allow_missing=["head.*", "fc_norm.*"])
    if dist_util.is_main_process():
        print(f"loaded {path}: {report}")
