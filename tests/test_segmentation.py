"""ADE20K segmentation on mmseg (segmentation/): every backbone trains, validates and slide-infers on a tiny
ADE20K-layout tree; checkpoints (ours, official formats, mmengine's own) load safely; layer decay is the
official one. Needs the segmentation extra (``make seg``); CI always installs it."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg", reason="the segmentation extra is not installed: run `make seg`")

from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

import segmentation  # noqa: E402,F401  (registrations)
from base.errors import UsageError  # noqa: E402
from base.safe_load import load_file  # noqa: E402
from models import create_model  # noqa: E402
from segmentation.backbones import MIMBackbone  # noqa: E402

from conftest import TinyFashionMNIST  # noqa: E402
from seg_tiny import CONFIGS, ROOT, TINY, make_ade_tree, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def ade_tree(tmp_path_factory) -> Path:
    return make_ade_tree(tmp_path_factory.mktemp("ade"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_each_backbone_trains_validates_and_slide_infers(name, ade_tree, tmp_path):
    """4 training iterations, IoUMetric validation, the test loop with slide inference; then the run resumes
    from its own mmengine checkpoint through the weights_only loader."""
    cfg = tiny_config(name, ade_tree, tmp_path)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    assert {"mIoU", "aAcc", "mAcc"} <= set(metrics) and 0 <= metrics["mIoU"] <= 100
    assert (tmp_path / "iter_4.pth").is_file()
    cfg = tiny_config(name, ade_tree, tmp_path)
    cfg.resume = True
    cfg.train_cfg.max_iters = 5
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    assert resumed.iter == 5


@pytest.mark.parametrize("name", sorted(TINY))
def test_feature_maps_and_strides(name):
    """The backbone gives UperNet 4 maps at strides 4, 8, 16, 32 with the channels the config announces."""
    backbone, channels = TINY[name]
    cfg = Config.fromfile(str(CONFIGS / name)).model
    spec = {**cfg.backbone, "img_size": 64, **backbone}
    spec.pop("type")
    model = MIMBackbone(**spec).eval()
    with torch.no_grad():
        maps = model(torch.randn(2, 3, 64, 64))
        if "neck" in cfg:  # ViT: four stride-16 maps, made a pyramid by the neck
            assert all(m.shape[-1] == 64 // 16 for m in maps)
            maps = MODELS.build({**cfg.neck, "embed_dim": channels[0], "norm_cfg": dict(type="BN")}).eval()(maps)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 64 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    assert model.out_channels == (channels if "neck" not in cfg else [channels[0]] * 4)


def test_official_mae_checkpoint_loads_with_a_key_report(tmp_path):
    """An official-format MAE pretraining checkpoint ({'model': flat keys, 'args': Namespace}) at 32 px loads
    into the 64-px DeepMIM-style backbone: blocks equal, the position table resized, the decoder reported as
    unexpected, the new relative-position tables and layer scales as missing (and not fatal)."""
    mae = create_model("mae_vit_base_patch16", img_size=32, embed_dim=32, depth=2, num_heads=2,
                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": mae.state_dict(), "args": argparse.Namespace(model="mae_vit_base_patch16")}, path)
    backbone = MIMBackbone("vit_base_patch16", img_size=64, embed_dim=32, depth=2, num_heads=2,
                           out_indices=(0, 1), pretrained=str(path), rel_pos_bias=True, init_values=1.0)
    backbone.init_weights()
    torch.testing.assert_close(backbone.encoder.blocks[1].attn.qkv.weight, mae.encoder.blocks[1].attn.qkv.weight)
    assert backbone.encoder.pos_embed.shape == (1, 17, 32)
    torch.testing.assert_close(backbone.encoder.cls_token, mae.encoder.cls_token)
    report = backbone.load_report
    assert report.resized == ["pos_embed"] and "decoder_embed.weight" in report.unexpected
    assert len(report.missing) == 6  # per block: the relative position table and two layer scales
    assert all(k.endswith(("relative_position_bias_table", "ls1.gamma", "ls2.gamma")) for k in report.missing)


def test_ummae_swin_checkpoint_loads_into_the_full_grid_backbone(tmp_path):
    """A UM-MAE Swin pretraining checkpoint (compact-grid model, vis_mask_token) loads every block."""
    kwargs = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4)
    pretrain = create_model("mae_swin_tiny_256", img_size=128, decoder_embed_dim=16, decoder_depth=1,
                            decoder_num_heads=2, **kwargs)
    path = tmp_path / "ummae.pth"
    torch.save({"model": pretrain.state_dict()}, path)
    backbone = MIMBackbone("swin_tiny_256", img_size=64, out_indices=(0, 1, 2, 3), pretrained=str(path), **kwargs)
    backbone.init_weights()
    torch.testing.assert_close(backbone.encoder.blocks[3].attn.posmlp[0].weight,
                               pretrain.encoder.blocks[3].attn.posmlp[0].weight)


CONVVIT = dict(embed_dims=(8, 16, 32), depths=(1, 1, 2), num_heads=2)
PVT = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), mlp_ratios=(2, 2, 2, 2))
DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
SOURCES = {  # checkpoint -> (the recipe that wrote it and its options, the backbone's model, its options)
    "dmjd_pretrain": ("dmjd_convit_base_patch16_dec8_hog", {**CONVVIT, **DECODER}, "convvit_base_patch16", CONVVIT),
    "convvit_finetuned": ("convit_base_patch16", {**CONVVIT, "num_classes": 5}, "convvit_base_patch16", CONVVIT),
    "ummae_pvt_pretrain": ("mae_pvt_small_256", {**PVT, **DECODER, "img_size": 128}, "pvt_small_256", PVT),
    "pvt_finetuned": ("pvt_small_256", {**PVT, "num_classes": 5, "img_size": 128}, "pvt_small_256", PVT),
    "deepmim_pretrain": ("deepmim_vit_base_patch16", dict(embed_dim=32, depth=4, num_heads=2, img_size=32, **DECODER),
                         "vit_base_patch16", dict(embed_dim=32, depth=4, num_heads=2)),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_pretraining_and_fine_tuning_checkpoints_load(source, tmp_path):
    """Official-format pretraining checkpoints (DMJD, UM-MAE, DeepMIM) and fine-tuned classifiers load every
    encoder weight into the backbone (position tables resized to its grid); the rest is reported."""
    recipe, options, model, backbone_options = SOURCES[source]
    written = create_model(recipe, **options)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": written.state_dict(), "args": argparse.Namespace(model=recipe)}, path)
    backbone = MIMBackbone(model, img_size=64, out_indices=(0, 1), pretrained=str(path), **backbone_options)
    backbone.init_weights()
    report = backbone.load_report
    assert not report.missing and not report.mismatched
    own = backbone.encoder.state_dict()
    source_keys = written.state_dict()
    for key in own:
        if "pos_embed" not in key:
            torch.testing.assert_close(own[key], source_keys[key], msg=key)
    assert report.resized == (["pos_embed"] if "pos_embed" in own else [])


def test_layer_decay_scales_are_the_official_ones(ade_tree, tmp_path):
    """lr scale rate^(L + 1 - id): stem id 0, block i id i + 1, neck/heads id L + 1; no decay for 1-D and
    biases, the cls token and position table decayed (docs/methods.md §5.1)."""
    cfg = tiny_config("upernet_vit_base_512_160k_ade20k.py", ade_tree, tmp_path)
    cfg.optim_wrapper.paramwise_cfg = dict(num_layers=4, layer_decay_rate=0.5)
    runner = Runner.from_cfg(cfg)
    optimizer = runner.build_optim_wrapper(cfg.optim_wrapper).optimizer
    lr = cfg.optim_wrapper.optimizer.lr
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = dict(runner.model.named_parameters())

    def group(name):
        return by_param[id(named[name])]

    assert group("backbone.encoder.cls_token")["lr"] == pytest.approx(lr * 0.5 ** 5)
    assert group("backbone.encoder.pos_embed")["weight_decay"] == 0.05
    assert group("backbone.encoder.patch_embed.proj.weight")["lr"] == pytest.approx(lr * 0.5 ** 5)
    for i in range(4):
        block = group(f"backbone.encoder.blocks.{i}.attn.qkv.weight")
        assert block["lr"] == pytest.approx(lr * 0.5 ** (4 - i)) and block["weight_decay"] == 0.05
        assert group(f"backbone.encoder.blocks.{i}.norm1.weight")["weight_decay"] == 0.0
    assert group("backbone.encoder.blocks.0.attn.qkv.bias")["weight_decay"] == 0.0
    head = [n for n in named if n.startswith("decode_head.") and n.endswith(".weight")][0]
    assert group(head)["lr"] == pytest.approx(lr)


class _Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pretrained_is_refused(ade_tree, tmp_path):
    """A pickle that would run code, given as --pretrained, is refused in one line; nothing runs. The same
    file given to mmengine's own loader (load_from / resume) is refused too."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload(marker)}, path)
    result = subprocess.run([sys.executable, "segmentation/train.py", str(CONFIGS / TINY_NAMES[0]),
                             "--pretrained", str(path), "--work-dir", str(tmp_path / "w"),
                             "--data-root", str(ade_tree)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and not marker.exists()
    assert "not loaded for safety" in result.stderr and "Traceback" not in result.stderr
    from mmengine.runner.checkpoint import _load_checkpoint
    with pytest.raises(UsageError, match="not loaded for safety"):
        _load_checkpoint(str(path), map_location="cpu")
    assert not marker.exists()


TINY_NAMES = sorted(TINY)


def test_demo_set_and_config_train(tmp_path):
    """make seg-demo's pieces: canvases in ADE20K layout with labels 1 (background) and 2 + class, read by
    the demo's dataset; the demo config trains 2 iterations and evaluates 11 classes."""
    from segmentation.demo_data import CLASSES, make_canvas, write_split
    image, label = make_canvas(TinyFashionMNIST(), np.random.default_rng(0), 64)
    assert image.shape == (64, 64, 3) and label.min() >= 1 and label.max() <= 11 and (label > 1).any()
    for split, count in (("training", 4), ("validation", 2)):
        write_split(TinyFashionMNIST(), tmp_path / "data", split, count, 64, seed=0)
    cfg = Config.fromfile(str(CONFIGS / "demo_fmnist_upernet_vit_tiny.py"))
    cfg.model.backbone.update(img_size=64, embed_dim=32, depth=4, num_heads=2, out_indices=(0, 1, 2, 3))
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.neck.embed_dim = 32
    cfg.model.decode_head.update(in_channels=[32] * 4, channels=16)
    cfg.model.auxiliary_head.update(in_channels=32, channels=8)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].update(num_workers=0, persistent_workers=False, batch_size=2)
        cfg[loader].dataset.data_root = str(tmp_path / "data")
    cfg.train_cfg.update(max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=2)]
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.val_evaluator.dataset_meta["classes"] == CLASSES and len(CLASSES) == 11
    assert 0 <= runner.test()["mIoU"] <= 100


def test_demo_pretrains_on_its_own_canvases(tmp_path, capsys):
    """make demo-seg-pretrain's input: the demo's training canvases (images/training) are a flat folder of
    unlabelled images that main_pretrain reads as such (the annotations beside it unread, no kNN monitor without
    labels), and the checkpoint, at the canvases' size, fills every weight of the demo's backbone with no
    position table resized."""
    import main_pretrain
    from segmentation.demo_data import write_split
    for split, count in (("training", 4), ("validation", 2)):
        write_split(TinyFashionMNIST(), tmp_path / "data", split, count, 64, seed=0)
    out = tmp_path / "pretrain"
    argv = ["--model", "mae_vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=4", "num_heads=2",
            "decoder_embed_dim=16", "decoder_depth=1", "decoder_num_heads=2", "--data_set", "imagefolder",
            "--data_path", str(tmp_path / "data" / "images" / "training"), "--input_size", "64", "--norm_pix_loss",
            "--batch_size", "2", "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0", "--device", "cpu",
            "--save_freq", "1", "--print_freq", "1", "--output_dir", str(out)]
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))
    assert "; 4 images;" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(records) == 1 and records[0]["train_loss"] > 0 and "knn_top1" not in records[0]
    backbone = MIMBackbone("vit_tiny_patch16", img_size=64, out_indices=(0, 1, 2, 3),
                           pretrained=str(out / "checkpoint-0.pth"), embed_dim=32, depth=4, num_heads=2)
    backbone.init_weights()
    report = backbone.load_report
    assert not (report.missing or report.mismatched or report.resized), report
    written = load_file(str(out / "checkpoint-0.pth"))["model"]
    torch.testing.assert_close(backbone.encoder.state_dict()["pos_embed"], written["pos_embed"])


def test_demo_report_gives_the_gain_over_random():
    """The demos' table: each run's metrics and its gain in the first column over the last run (random init);
    a negative metric (COCO's "no object of that size") prints as '-', in the gain too."""
    from segmentation.demo_report import COLUMNS, table
    lines = table([("pretrained", {"mIoU": 31.5, "mAcc": 40.0, "aAcc": 85.0}),
                   ("random", {"mIoU": 26.25, "mAcc": 37.5, "aAcc": 83.75})], COLUMNS).splitlines()
    assert lines[0].split()[-4:] == ["mIoU", "gain", "vs", "random"]
    assert lines[1].split() == ["pretrained", "31.50", "40.00", "85.00", "+5.25"]
    assert lines[2].split() == ["random", "26.25", "37.50", "83.75", "+0.00"]
    boxes = table([("a", {"AP": 0.5, "APs": -1.0}), ("b", {"AP": -1.0, "APs": 0.25})], {"AP": "AP", "APs": "APs"}, 100)
    assert [line.split()[1:] for line in boxes.splitlines()[1:]] == [["50.00", "-", "-"], ["-", "25.00", "-"]]
