"""What detection's ``train.py`` and ``test.py`` add to the segmentation extra's runner (``segmentation/runner.py``,
whose flags, config loading and Runner they reuse): the COCO evaluator reads the annotation file of the data
root in use, and a missing COCO layout is one line before anything is built."""
import argparse
import os

from mmengine.config import Config

from base.errors import UsageError
from segmentation.commands import DenseTask
from segmentation.runner import check_data_paths, load_config

LOADERS = {"train_dataloader": None, "val_dataloader": "val_evaluator", "test_dataloader": "test_evaluator"}


def load_detection_config(args: argparse.Namespace, loaders: tuple[str, ...]) -> Config:
    """The config with the command line applied; each evaluator of ``loaders`` pointed at its dataset's
    annotation file, and those files checked (COCO: ``annotations/instances_{train,val}2017.json``)."""
    cfg = load_config(args, ())  # COCO's annotation files first: their message names COCO's layout
    for loader in loaders:
        dataset = cfg[loader].dataset
        ann_file = os.path.join(dataset.data_root, dataset.ann_file)
        if not os.path.isfile(ann_file):
            raise UsageError(f"{ann_file!r} does not exist: pass --data-root with COCO's layout "
                             "(annotations/instances_{train,val}2017.json, train2017/, val2017/)")
        if LOADERS[loader]:
            cfg[LOADERS[loader]].ann_file = ann_file
    check_data_paths(cfg, loaders)
    return cfg


DETECTION = DenseTask("GFL detection", "detection/train.py", load_detection_config, digits=3, fp16_loss_scale=512.0)
