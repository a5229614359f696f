"""COCO detection on mmdet (detection/): every backbone of the shipped configs (Swin-T, PVT-S, ViT, ConViT
through the one dense adapter) trains, evaluates with COCO's box AP at a non-square test size and resumes from
its own checkpoint on a generated COCO-layout tree; our and the official UM-MAE fine-tuned checkpoints load
into the backbone. Needs the segmentation extra (``make seg``, which installs mmdet too); CI always has it."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet", reason="the segmentation extra (with mmdet) is not installed: run `make seg`")

from mmengine.runner import Runner  # noqa: E402
from mmdet.registry import MODELS  # noqa: E402

import detection  # noqa: E402,F401  (registrations)
from detection_helpers import (CONFIGS, NAMES, ROOT, mmdet_scope, tiny_config,  # noqa: E402,F401 (autouse)
                               write_coco_tree)
from models import create_model  # noqa: E402
from util.checkpoint import save_training_state  # noqa: E402

SIZES = {"train2017": [(64, 96), (96, 64), (80, 80), (64, 128)], "val2017": [(64, 96), (96, 128)]}


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory) -> Path:
    return write_coco_tree(tmp_path_factory.mktemp("coco"), SIZES)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_backbone_trains_evaluates_and_resumes(name, coco_tree, tmp_path):
    """2 epochs of 2 iterations on 96-px crops, COCO box-AP evaluation of 64x96 and 96x128 images resized to
    80x120 and 80x107 (padded to 96x128 and 96x128: non-square), then a resume from epoch_2.pth to epoch 3."""
    runner = Runner.from_cfg(tiny_config(name, coco_tree, tmp_path))
    runner.train()
    assert (tmp_path / "epoch_2.pth").is_file()
    metrics = runner.test()
    assert {"coco/bbox_mAP", "coco/bbox_mAP_50"} <= set(metrics) and -1 <= metrics["coco/bbox_mAP"] <= 1
    cfg = tiny_config(name, coco_tree, tmp_path, epochs=3)
    cfg.resume = True
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    assert resumed.epoch == 3


@pytest.mark.parametrize("name", NAMES)
def test_non_square_and_odd_inputs_give_whole_pyramids(name):
    """The detector's backbone + neck on inputs of several shapes, none a multiple of 32 (the adapter pads to
    its stride, tables are resized): 5 FPN levels at strides 8..128 of the padded input."""
    cfg = tiny_config(name, Path("."), Path("."))
    model = MODELS.build(cfg.model).eval()
    for h, w in ((80, 120), (100, 60), (64, 64)):
        with torch.no_grad():
            levels = model.extract_feat(torch.randn(1, 3, h, w))
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        assert [tuple(x.shape[-2:]) for x in levels] == [(-(-ph // s), -(-pw // s)) for s in (8, 16, 32, 64, 128)]


def _classifier(name: str) -> torch.nn.Module:
    """The tiny fine-tuned classifier of a config's encoder (5 classes), at the backbone's built size."""
    spec = dict(tiny_config(name, Path("."), Path(".")).model.backbone)
    for key in ("type", "out_indices", "out_channels", "projection", "add_pool", "drop_path_rate"):
        spec.pop(key, None)
    return create_model(spec.pop("model"), num_classes=5, **spec)


@pytest.mark.parametrize("name", ["gfl_swin_tiny_fpn_25ep_1024_coco.py", "gfl_pvt_small_fpn_25ep_1024_coco.py"])
@pytest.mark.parametrize("layout", ["official", "ours"])
def test_fine_tuned_checkpoints_load_into_the_backbone(name, layout, tmp_path):
    """UM-MAE's fine-tuned checkpoint-99.pth ({'model', 'optimizer', 'epoch', 'scaler', 'args': Namespace}) and
    ours (main_finetune.py's save_training_state) give the backbone every encoder weight; the classifier's
    head is reported as unexpected, the 768-wide projections are new."""
    classifier = _classifier(name)
    if layout == "official":
        path = tmp_path / "checkpoint-99.pth"
        torch.save({"model": classifier.state_dict(), "optimizer": {}, "epoch": 99, "scaler": {},
                    "args": argparse.Namespace(model="swin_tiny_256")}, path)
    else:
        optimizer = torch.optim.AdamW(classifier.parameters())
        save_training_state(str(tmp_path), classifier, optimizer, None, 99, 0, {"model": "x"})
        path = tmp_path / "checkpoint-99.pth"
    cfg = tiny_config(name, Path("."), Path("."))
    cfg.model.backbone.pretrained = str(path)
    backbone = MODELS.build(cfg.model).backbone
    backbone.init_weights()
    report = backbone.load_report
    assert not report.missing and not report.mismatched and not report.resized
    assert {"head.weight", "head.bias"} <= set(report.unexpected)
    source = classifier.state_dict()
    for key, value in backbone.encoder.state_dict().items():
        torch.testing.assert_close(value, source[key], msg=key)


def test_pvt_keeps_its_pretraining_table_and_resizes_it_per_input():
    """PVT-S is built at 256 px as UM-MAE's PVTDet (a 64x64-cell table, the fine-tuned checkpoint's) and its
    table is resized bicubically to each input's cells: a 1024-px input uses the table at 256x256 cells."""
    from models.pos_embed import resize_pos_embed
    cfg = tiny_config("gfl_pvt_small_fpn_25ep_1024_coco.py", Path("."), Path("."))
    cfg.model.backbone.img_size = 256
    encoder = MODELS.build(cfg.model.backbone).encoder
    assert encoder.pos_embed.shape[1] == 64 * 64
    seen = {}
    encoder.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    imgs = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        encoder.forward_features(imgs, [0])
        cells = encoder.patch_embed(imgs).flatten(2).transpose(1, 2)
    expected = cells + resize_pos_embed(encoder.pos_embed, (24, 40), 0, (64, 64))
    torch.testing.assert_close(seen["x"], expected)


def test_vit_with_relative_position_bias_is_refused_at_another_size():
    """DeepMIM's ViT (relative position bias per block) is tied to its grid: another input size is one line."""
    from base.errors import UsageError
    cfg = tiny_config("gfl_vit_base_fpn_25ep_1024_coco.py", Path("."), Path("."))
    cfg.model.backbone.update(rel_pos_bias=True, init_values=1.0)
    backbone = MODELS.build(cfg.model.backbone)
    with pytest.raises(UsageError, match="rel_pos_bias"):
        backbone(torch.randn(1, 3, 64, 96))


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_cli_trains_tests_and_refuses_in_one_line(coco_tree, tmp_path):
    """detection/train.py (with --pretrained) and test.py run as documented; a data root without COCO's
    annotation files and a --pretrained pickle that would run code are each one line, exit 2."""
    name = "gfl_swin_tiny_fpn_25ep_1024_coco.py"
    cfg = tiny_config(name, coco_tree, tmp_path / "work", epochs=1)
    config = tmp_path / "tiny.py"
    cfg.dump(str(config))
    checkpoint = tmp_path / "ft" / "checkpoint-99.pth"
    checkpoint.parent.mkdir()
    torch.save({"model": _classifier(name).state_dict()}, checkpoint)
    common = ["--work-dir", str(tmp_path / "work"), "--data-root", str(coco_tree)]
    train = subprocess.run([sys.executable, "detection/train.py", str(config), "--pretrained", str(checkpoint),
                            *common], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "backbone weights from" in train.stdout + train.stderr
    test = subprocess.run([sys.executable, "detection/test.py", str(config), str(tmp_path / "work" / "epoch_1.pth"),
                           *common, "--out-json", str(tmp_path / "m.json")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert test.returncode == 0, test.stderr[-2000:]
    assert "coco/bbox_mAP" in (tmp_path / "m.json").read_text()
    empty = tmp_path / "not_coco"
    empty.mkdir()
    refused = subprocess.run([sys.executable, "detection/train.py", str(CONFIGS / name), "--data-root", str(empty),
                              "--work-dir", str(tmp_path / "w2")], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: ") and "instances_train2017.json" in refused.stderr
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker)}, evil)
    refused = subprocess.run([sys.executable, "detection/train.py", str(config), "--pretrained", str(evil),
                              *common], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and not marker.exists()
    assert "not loaded for safety" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("amp, dtype, loss_scale", [("bf16", "bfloat16", None), ("fp16", "float16", 512.0)])
def test_amp_flag_sets_the_optim_wrapper(amp, dtype, loss_scale, coco_tree):
    """--amp is bf16 through AmpOptimWrapper, --amp fp16 the official fp16 with initial loss scale 512 (the
    wrapper itself needs a GPU: only the config it gets is checked here)."""
    import detection.train as det_train
    from detection.runner import DETECTION
    from segmentation.commands import training_config

    argv = [str(CONFIGS / "gfl_swin_tiny_fpn_25ep_1024_coco.py"), "--data-root", str(coco_tree), "--amp", amp]
    if amp == "bf16":
        argv = argv[:-1]  # the flag alone means bf16
    wrapper = training_config(DETECTION, det_train.get_args_parser().parse_args(argv)).optim_wrapper
    assert wrapper.type == "AmpOptimWrapper" and wrapper.dtype == dtype
    assert wrapper.get("loss_scale") == (dict(init_scale=loss_scale) if loss_scale else None)
