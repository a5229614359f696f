"""Fine-tuning and linear probing: classifier keys, weight loading, layer decay, LP surgery, CLIs."""
import copy
from functools import partial
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT
from timm.optim import param_groups_layer_decay

import main_finetune
import main_linprobe
from base.errors import UsageError
from base.safe_load import load_file
from conftest import TINY_MAE, make_image_folder
from models import create_model
from models.classifier import to_linear_probe
from util.checkpoint import load_pretrained
from util.config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def block_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{name}.{kind}" for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            for kind in ("weight", "bias")]


def official_finetune_keys(depth: int, global_pool: bool) -> set[str]:
    """The official models_vit.VisionTransformer keys: timm ViT, with `norm` replaced by `fc_norm`
    under global pooling (docs/methods.md §1.7)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"}
    keys |= {k for i in range(depth) for k in block_keys(f"blocks.{i}")}
    keys |= {"fc_norm.weight", "fc_norm.bias"} if global_pool else {"norm.weight", "norm.bias"}
    return keys


@pytest.mark.parametrize("global_pool", [True, False])
def test_classifier_keys_are_official(global_pool):
    model = create_model("vit_tiny_patch16", num_classes=10, global_pool=global_pool, **TINY_VIT)
    assert set(model.state_dict()) == official_finetune_keys(2, global_pool)
    assert model.encoder.pos_embed.requires_grad  # learnable at fine-tune, as officially


@pytest.mark.parametrize("global_pool", [True, False])
def test_timm_vit_state_dict_loads_strictly_and_agrees(global_pool):
    """A timm VisionTransformer (the official fine-tune model's class) and ours exchange weights strictly
    and give the same logits: official fine-tuned checkpoints load and evaluate."""
    torch.manual_seed(0)
    ref = TimmViT(num_classes=10, global_pool="avg" if global_pool else "token", fc_norm=global_pool,
                  qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **TINY_VIT).eval()
    ours = create_model("vit_tiny_patch16", num_classes=10, global_pool=global_pool, **TINY_VIT).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(imgs), ref(imgs), rtol=1e-5, atol=1e-5)


def test_all_sizes_registered():
    import models
    assert {"vit_tiny_patch16", "vit_small_patch16", "vit_base_patch16", "vit_large_patch16",
            "vit_huge_patch14"} <= set(models.list_models("vit_*"))
    with torch.device("meta"):
        model = create_model("vit_base_patch16", num_classes=1000, global_pool=True, drop_path_rate=0.1)
    assert model.head.out_features == 1000 and len(model.encoder.blocks) == 12


@pytest.mark.parametrize("depth,global_pool", [(2, True), (5, False)])
def test_layer_decay_groups_follow_official_formula(depth, global_pool):
    """Every trainable parameter is in exactly one group; scale = decay^(depth + 1 - layer_id) with
    stem -> 0, blocks.k -> k + 1, everything else -> depth + 1; no decay on 1-D, pos_embed, cls_token."""
    model = create_model("vit_tiny_patch16", num_classes=10, global_pool=global_pool, **(TINY_VIT | {"depth": depth}))
    decay = 0.65
    groups = param_groups_layer_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay(), layer_decay=decay)
    seen = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in seen
            seen[id(param)] = group
    names = dict(model.named_parameters())
    assert set(seen) == {id(p) for p in names.values()}
    for name, param in names.items():
        flat = model.flat_key(name)
        if flat.split(".")[0] in {"cls_token", "pos_embed", "patch_embed"}:
            layer = 0
        elif flat.startswith("blocks."):
            layer = int(flat.split(".")[1]) + 1
        else:
            layer = depth + 1
        group = seen[id(param)]
        assert group["lr_scale"] == pytest.approx(decay ** (depth + 1 - layer)), name
        no_wd = param.ndim == 1 or flat in {"pos_embed", "cls_token"}
        assert group["weight_decay"] == (0.0 if no_wd else 0.05), name


def test_load_pretrain_checkpoint_into_classifier(tmp_path):
    """A saved pretraining checkpoint fills every encoder weight; decoder keys are reported as unexpected
    and ignored; position embeddings are resized to a new input size; a missing encoder key fails."""
    torch.manual_seed(0)
    pretrain = create_model("mae_vit_tiny_patch16", **TINY_MAE)
    path = tmp_path / "pre.pth"
    torch.save({"model": pretrain.state_dict(), "epoch": 3}, path)
    clf = create_model("vit_tiny_patch16", num_classes=5, **TINY_VIT)
    head_before = clf.head.weight.clone()
    report = load_pretrained(clf, str(path), allow_missing=["head.*", "fc_norm.*"])
    assert set(report.missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert {"decoder_embed.weight", "mask_token", "norm.weight"} <= set(report.unexpected)
    torch.testing.assert_close(clf.encoder.blocks[1].mlp.fc2.weight, pretrain.encoder.blocks[1].mlp.fc2.weight)
    assert torch.equal(clf.head.weight, head_before)
    assert clf.head.weight.std() < 1e-4  # the official trunc_normal(std=2e-5) head

    bigger = create_model("vit_tiny_patch16", num_classes=5, **(TINY_VIT | {"img_size": 48}))
    report = load_pretrained(bigger, str(path), allow_missing=["head.*", "fc_norm.*"])
    assert report.resized == ["pos_embed"] and bigger.encoder.pos_embed.shape == (1, 37, 32)

    broken = {k: v for k, v in pretrain.state_dict().items() if k != "blocks.0.attn.qkv.weight"}
    with pytest.raises(UsageError, match="blocks.0.attn.qkv.weight"):
        load_pretrained(create_model("vit_tiny_patch16", num_classes=5, **TINY_VIT), broken,
                        allow_missing=["head.*", "fc_norm.*"])


def test_linear_probe_surgery():
    """BatchNorm1d(affine=False, eps=1e-6) before a std-0.01 head; only the head trains."""
    torch.manual_seed(0)
    model = to_linear_probe(create_model("vit_tiny_patch16", num_classes=10, global_pool=False, **TINY_VIT))
    bn, linear = model.head
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert 0.003 < linear.weight.std() < 0.02
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.1.weight", "head.1.bias"}


def test_mixup_targets_and_criterion():
    """Mixup/CutMix on -> soft targets (rows sum to 1, smoothing inside) with soft-target CE; off -> LS-CE."""
    def config(*argv: str) -> FinetuneConfig:
        return FinetuneConfig.from_args(main_finetune.get_args_parser().parse_args(argv))

    mixup_fn, criterion = main_finetune.build_mixup_and_criterion(config("--mixup", "0.8", "--cutmix", "1.0"), 10)
    imgs, targets = mixup_fn(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert targets.shape == (4, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert targets.min() >= 0.1 / 10 - 1e-6  # label smoothing spreads 0.1 over the classes
    assert type(criterion).__name__ == "SoftTargetCrossEntropy"
    _, criterion = main_finetune.build_mixup_and_criterion(config(), 10)
    assert type(criterion).__name__ == "LabelSmoothingCrossEntropy"


@pytest.fixture
def separable_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root, num_classes=3, per_class=24, size=32, split="train", separable=True)
    make_image_folder(root, num_classes=3, per_class=8, size=32, split="val", separable=True, seed=1)
    return root


def tiny_cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "vit_tiny_patch16", "--model_kwargs", "embed_dim=32", "depth=2", "num_heads=2",
            "patch_size=8", "--data_path", str(data), "--input_size", "32", "--num_workers", "0", "--device", "cpu",
            "--output_dir", str(out), "--print_freq", "5", *extra]


def test_finetune_separable_data_reaches_high_accuracy(separable_data, tmp_path):
    """Fine-tuning from scratch on colour-separable classes reaches high top-1; best checkpoint kept;
    --eval --resume re-evaluates it to the same accuracy."""
    out = tmp_path / "ft"
    argv = tiny_cli_args(separable_data, out, "--batch_size", "8", "--epochs", "6", "--warmup_epochs", "1",
                         "--lr", "2e-3", "--aa", "", "--reprob", "0", "--smoothing", "0", "--layer_decay", "1.0",
                         "--model_ema", "--model_ema_decay", "0.9")
    args = main_finetune.get_args_parser().parse_args(argv)
    best = main_finetune.main(args)
    assert best["acc1"] >= 90.0, best
    ckpt = load_file(str(out / "checkpoint-best.pth"))
    assert ckpt["best"]["acc1"] == best["acc1"] and "model_ema" in ckpt
    again = main_finetune.get_args_parser().parse_args(
        tiny_cli_args(separable_data, tmp_path / "eval", "--batch_size", "8", "--eval",
                      "--resume", str(out / "checkpoint-best.pth")))
    assert main_finetune.main(again)["acc1"] == pytest.approx(best["acc1"])


@pytest.mark.parametrize("cli", [main_finetune, main_linprobe], ids=["finetune", "linprobe"])
def test_same_command_gives_same_weights(separable_data, tmp_path, cli):
    """The same command run twice gives bit-identical weights (classifier initialisation, augmentation,
    data order), whatever the RNGs held before; the parsed flags are left as they were."""
    states = []
    for name, noise in (("a", 0), ("b", 1)):
        torch.manual_seed(noise)
        args = cli.get_args_parser().parse_args(tiny_cli_args(
            separable_data, tmp_path / name, "--batch_size", "8", "--epochs", "1", "--warmup_epochs", "0"))
        before = copy.deepcopy(vars(args))
        cli.main(args)
        assert vars(args) == before
        states.append(load_file(str(tmp_path / name / "checkpoint-0.pth"))["model"])
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_linear_probe_keeps_encoder_frozen(separable_data, tmp_path):
    """After linear probing a (random) encoder, every encoder weight is bit-identical to the start;
    the probe still separates the colour classes."""
    torch.manual_seed(0)
    pretrain = create_model("mae_vit_tiny_patch16", **TINY_MAE)
    path = tmp_path / "pre.pth"
    torch.save({"model": pretrain.state_dict()}, path)
    out = tmp_path / "lp"
    args = main_linprobe.get_args_parser().parse_args(tiny_cli_args(
        separable_data, out, "--finetune", str(path), "--batch_size", "8", "--epochs", "8",
        "--warmup_epochs", "1", "--lr", "50"))  # LARS steps are lr x 1e-3 x |w|: few steps need a large lr
    best = main_linprobe.main(args)
    state = load_file(str(out / "checkpoint-7.pth"))["model"]
    for key, value in pretrain.state_dict().items():
        if key in state and not key.startswith(("head", "norm", "fc_norm")):
            assert torch.equal(state[key], value), key
    assert torch.equal(state["norm.weight"], pretrain.state_dict()["norm.weight"])
    assert best["acc1"] >= 80.0, best


@pytest.mark.parametrize("script", ["main_finetune.py", "main_linprobe.py"])
def test_cli_missing_checkpoint_is_one_line(separable_data, script):
    result = subprocess.run([sys.executable, script, *tiny_cli_args(separable_data, Path("/tmp/unused"),
                             "--batch_size", "8", "--finetune", "/no/such.pth")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "/no/such.pth" in lines[0], result.stderr


def test_probe_report_side_by_side(tmp_path):
    """The demo's comparison table: best top-1 of each run and the gain over the baseline."""
    from tools.probe_report import report
    for name, accs in {"pre": [50.0, 70.5], "rand": [40.0, 60.0]}.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "log.txt").write_text("".join(
            f'{{"epoch": {i}, "test_acc1": {a}, "test_acc5": 90.0}}\n' for i, a in enumerate(accs)))
    table = report([("pretrained", str(tmp_path / "pre")), ("random", str(tmp_path / "rand"))])
    assert "70.50%" in table and "+10.50" in table and "60.00%" in table
    with pytest.raises(UsageError, match="no .*log.txt"):
        report([("missing", str(tmp_path / "nothing"))])
