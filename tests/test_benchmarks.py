"""The benchmark scripts run end to end (on the CPU, tiny) and report what they claim: strict JSON, the FLOPs the
flop counter counts, null figures with their reasons, the official comparison. They measure; the tests never
time."""
import importlib
import json
import sys

import numpy as np
import pytest
import timm.models.vision_transformer as timm_vit
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import models
from base.errors import UsageError
from benchmarks import cpu_proxies, official, pretrain_throughput
from benchmarks.measure import Step, count_flops, saved_bytes
from models.clip_teacher import load_clip_teacher, save_random_clip
from models.mim import MaskedImageModel
from tests.official_standins import write_checkout

ONE_STEP = ["--batch_size", "2", "--steps", "1", "--warmup", "0", "--device", "cpu"]  # models: --tiny


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def run_throughput(capsys, *argv: str) -> tuple[dict, list[str]]:
    """Run the script; return its JSON (parsed refusing NaN/Infinity) and the table lines before it."""
    pretrain_throughput.main(list(argv))
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1], parse_constant=_refuse_constant), lines[:-1]


def direct_flops(model: nn.Module, imgs: torch.Tensor) -> int:
    """FlopCounterMode around one forward + backward, attention as its matmuls."""
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        model(imgs).loss.backward()
    return counter.get_total_flops()


def test_rows_table_and_strict_json(capsys):
    """Two --model values: two table rows and two JSON rows; what a CPU cannot give is null with a reason."""
    result, table = run_throughput(capsys, "--model", "mae_vit_base_patch16", "deepmim_vit_base_patch16", "--tiny",
                                   *ONE_STEP)
    assert table[0].startswith("| recipe | batch | dtype | compile | grad ckpt | img/s") and len(table) == 4
    assert [row["recipe"] for row in result["rows"]] == ["mae_vit_base_patch16", "deepmim_vit_base_patch16"]
    assert {"device", "date", "torch", "command"} <= set(result) and result["device"] == "cpu"
    assert result["command"].startswith("python benchmarks/pretrain_throughput.py --model mae_vit_base_patch16")
    for row in result["rows"]:
        assert (row["batch"], row["dtype"], row["compile"], row["grad_ckpt"]) == (2, "fp32", False, "none")
        assert row["img_per_s"] > 0 and row["step_ms"] > 0 and row["saved_mib_per_img"] > 0
        assert row["peak_mem_gib"] is None and "no CUDA device" in row["null_reasons"]["peak_mem_gib"]
        assert row["mfu"] is None and "--peak_tflops" in row["null_reasons"]["mfu"]
        assert row["tflops"] > 0 and row["target_gflop_per_img"] == 0  # the pixel target has no matmuls


def test_reported_flops_are_the_flop_counters_and_mfu_uses_the_given_peak(capsys):
    """flops_per_step is FlopCounterMode's count of one forward + backward of the same model and batch;
    --peak_tflops gives the MFU a denominator on any device: achieved TFLOP/s over it."""
    result, _ = run_throughput(capsys, "--model", "mae_vit_base_patch16", "--tiny", *ONE_STEP, "--peak_tflops", "0.5")
    tiny = models.tiny_kwargs("mae_vit_base_patch16")
    model = models.create_model("mae_vit_base_patch16", **tiny)
    (row,) = result["rows"]
    assert row["flops_per_step"] == direct_flops(model, torch.randn(2, 3, tiny["img_size"], tiny["img_size"]))
    assert row["tflops"] == pytest.approx(row["flops_per_step"] / (row["step_ms"] / 1e3) / 1e12, rel=1e-3)
    assert row["peak_tflops"] == 0.5 and "mfu" not in row["null_reasons"]
    assert row["mfu"] == pytest.approx(row["tflops"] / 0.5, rel=1e-3)


def test_count_flops_by_hand():
    """A linear layer y = x W^T on x [5, 8] -> [5, 4]: forward 2*5*8*4 FLOPs (a multiply-add is two), backward
    twice that (the gradients of x and of W)."""
    layer = nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8, requires_grad=True)
    flops, target_flops = count_flops(Step(layer, lambda imgs: layer(imgs).sum()), x, None)
    assert (flops, target_flops) == (3 * 2 * 5 * 8 * 4, 0) and layer.weight.grad is None


def test_saved_bytes_by_hand():
    """x [8, 64] @ W^T [64, 32], x and W requiring grad: the matmul keeps x and W for backward. W is there whatever
    the batch, so only x counts: 8*64 fp32 values, or under bf16 autocast their bf16 copy (W's bf16 copy is a
    parameter's cast, not counted)."""
    layer = nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    step = Step(layer, lambda imgs: layer(imgs).sum())
    assert saved_bytes(step, x, None) == 8 * 64 * 4
    assert saved_bytes(step, x, torch.bfloat16) == 8 * 64 * 2


def test_dmjd_counts_unique_images(capsys):
    """A DMJD step encodes two views of each image; img/s counts each image once."""
    result, _ = run_throughput(capsys, "--model", "dmjd_convvit_base_patch16_hog", "--tiny", *ONE_STEP)
    (row,) = result["rows"]
    assert row["views"] == 2
    assert row["img_per_s"] * row["step_ms"] / 1e3 == pytest.approx(2, rel=2e-3)


def test_clip_teacher_flops_reported_apart(capsys):
    """The frozen teacher's forward is part of a DeepMIM-CLIP step and its FLOPs are reported apart: at the tiny
    configuration a 2-layer, 64-wide CLIP tower on 64 px (4x4 patches + cls = 17 tokens), whose qkv, proj and 4x
    MLP matmuls alone are 2 * 12 * 64^2 FLOPs per token and layer."""
    result, _ = run_throughput(capsys, "--model", "deepmim_vit_base_patch16_clip", "--tiny", *ONE_STEP)
    (row,) = result["rows"]
    assert row["target_gflop_per_img"] * 1e9 >= 2 * 12 * 64 ** 2 * 17 * 2
    assert row["gflop_per_img"] > row["target_gflop_per_img"]


def test_clip_recipe_without_a_checkpoint_gets_a_random_vit_b16(tmp_path):
    """A CLIP-target recipe given no clip_path is timed with a random CLIP ViT-B/16 (the DeepMIM teacher's shape,
    which is all the timing depends on)."""
    args = pretrain_throughput.build_parser().parse_args(["--input_size", "32"])
    _, kwargs = pretrain_throughput.recipe_kwargs("deepmim_vit_base_patch16_clip", args, str(tmp_path))
    teacher = load_clip_teacher(kwargs["clip_path"])
    assert (teacher.width, teacher.layers, teacher.patch_size, teacher.output_dim) == (768, 12, 16, 512)


def test_grad_ckpt_is_switched_on_for_timing(capsys, monkeypatch):
    """--grad_ckpt calls the model's set_grad_checkpointing(mode) after the FLOPs are counted."""
    calls = []
    monkeypatch.setattr(MaskedImageModel, "set_grad_checkpointing", lambda self, mode: calls.append(mode),
                        raising=False)
    result, _ = run_throughput(capsys, "--model", "mae_vit_base_patch16", "--tiny", *ONE_STEP, "--grad_ckpt", "stage1")
    assert calls == ["stage1"] and result["rows"][0]["grad_ckpt"] == "stage1"


def test_grad_ckpt_unavailable_is_a_usage_error(monkeypatch):
    monkeypatch.delattr(MaskedImageModel, "set_grad_checkpointing", raising=False)
    with pytest.raises(UsageError, match="gradient checkpointing is unavailable for mae_vit_base_patch16"):
        pretrain_throughput.main(["--model", "mae_vit_base_patch16", "--tiny", *ONE_STEP, "--grad_ckpt", "all"])


@pytest.fixture
def fake_mae_checkout(tmp_path):
    return write_checkout("mae", tmp_path)


def test_compare_official_times_the_checkouts_model(capsys, fake_mae_checkout):
    """--compare-official imports models_mae from the checkout (its own util/ found, ours put back), builds
    mae_vit_base_patch16 and measures its step like ours: FLOPs as counted directly, a ratio ours/official."""
    import util
    result, table = run_throughput(capsys, "--model", "mae_vit_base_patch16", "--tiny", *ONE_STEP, "--compare-official",
                                   str(fake_mae_checkout))
    (row,) = result["rows"]
    theirs = row["official"]
    assert theirs["img_per_s"] > 0 and row["step_time_ratio"] > 0 and theirs["null_reasons"]["mfu"]
    assert table[0].endswith("| official img/s | step time ours/official |")
    # the stand-in's step (embed 192->32 on 2x4 visible tokens, timm Blocks, pred 32->192), counted directly
    fake = official.official_builder("mae_vit_base_patch16", str(fake_mae_checkout))(nn.Identity())
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        fake(torch.randn(2, 3, 32, 32))[0].backward()
    assert theirs["flops_per_step"] == counter.get_total_flops()
    # what the import bent for the checkout is as it was
    assert sys.modules["util"] is util and "models_mae" not in sys.modules
    assert timm_vit.Block.__module__ == "timm.models.vision_transformer" and "float" not in np.__dict__


def test_compare_official_without_the_builder_is_one_line(tmp_path):
    (tmp_path / "models_mae.py").write_text("def some_other_model():\n    pass\n")
    with pytest.raises(UsageError, match=r"has no mae_vit_base_patch16\(\): expected the model builder of "
                                         r"facebookresearch/mae"):
        pretrain_throughput.main(["--model", "mae_vit_base_patch16", "--tiny", *ONE_STEP, "--compare-official",
                                  str(tmp_path)])


def test_compare_official_import_failure_is_one_line(tmp_path):
    """A checkout whose file cannot be imported here (a missing requirement) names the file and the cause."""
    (tmp_path / "models_mae.py").write_text("import a_requirement_not_installed\n")
    with pytest.raises(UsageError, match="importing models_mae from .* failed .*a_requirement_not_installed"):
        official.official_builder("mae_vit_base_patch16", str(tmp_path))


def test_compare_official_needs_a_known_recipe(tmp_path):
    with pytest.raises(UsageError, match="no official counterpart for --model mae_vit_tiny_patch16"):
        pretrain_throughput.main(["--model", "mae_vit_tiny_patch16", "--compare-official", str(tmp_path)])


def test_cpu_proxies_json(capsys):
    """--json prints one strict JSON object: a row per recipe with its views, GFLOPs (the HOG target has no
    matmuls) and MiB saved for backward per image, in bf16 by default."""
    cpu_proxies.main(["--recipes", "dmjd_convvit_base_patch16_hog", "--tiny", "--json"])
    result = json.loads(capsys.readouterr().out, parse_constant=_refuse_constant)
    assert {"rows", "batch_size", "dtype", "torch", "date", "command"} <= set(result) and result["dtype"] == "bf16"
    (row,) = result["rows"]
    assert row["recipe"] == "dmjd_convvit_base_patch16_hog" and row["views"] == 2
    assert row["gflop"] > 0 and row["target_gflop"] == 0 and row["saved_mib"] > 0


def test_cpu_proxies_compare_official(capsys, fake_mae_checkout):
    """--compare-official adds the official model's GFLOPs (as counted directly) and saved MiB per image and the
    CPU step-time ratio ours/official."""
    cpu_proxies.main(["--recipes", "mae_vit_base_patch16", "--tiny",
                      "--compare-official", str(fake_mae_checkout), "--steps", "1", "--warmup", "0", "--json"])
    (row,) = json.loads(capsys.readouterr().out, parse_constant=_refuse_constant)["rows"]
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):
        official.official_builder("mae_vit_base_patch16", str(fake_mae_checkout))(nn.Identity())(
            torch.randn(2, 3, 32, 32))[0].backward()
    assert row["official_gflop"] == pretrain_throughput.significant(counter.get_total_flops() / 2 / 1e9)
    assert row["official_saved_mib"] > 0 and row["step_time_ratio"] > 0


def test_cpu_proxies_table(capsys):
    """Without --json: a Markdown table, a header, a rule and one line per recipe."""
    cpu_proxies.main(["--recipes", "ummae_swin_tiny_256", "simmim_swin_tiny_256", "--tiny", "--amp", "fp32",
                      "--batch_size", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| recipe | views | GFLOP") and len(lines) == 4
    assert lines[2].startswith("| ummae_swin_tiny_256 | 1 |") and lines[3].startswith("| simmim_swin_tiny_256 | 1 |")


# recipe -> the stand-in clone holding its official counterpart
STANDIN_CLONES = {"mae_vit_base_patch16": "mae", "deepmim_vit_base_patch16_clip": "DeepMIM",
                  "dmjd_convvit_base_patch16_hog": "DMJD", "ummae_swin_tiny_256": "UM-MAE",
                  "simmim_swin_tiny_256": "UM-MAE", "ummae_pvt_small_256": "UM-MAE", "simmim_pvt_small_256": "UM-MAE"}


def test_every_official_counterpart_has_a_standin():
    assert set(STANDIN_CLONES) == set(official.OFFICIAL)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(STANDIN_CLONES))
def test_compare_official_runs_every_recipe_against_its_standin(capsys, tmp_path, recipe):
    """Each recipe's official counterpart is built as the official pretraining command builds it and fed our
    target, teacher or masks: DMJD's heads get the HOG target's width, UM-MAE's encoder a uniform mask whose
    visible quarter is a compact grid, DeepMIM's 512-wide heads a 512-wide CLIP teacher (here a tiny random one)."""
    checkout = write_checkout(STANDIN_CLONES[recipe], tmp_path / "clone")
    extra = []
    if recipe == "deepmim_vit_base_patch16_clip":
        clip = save_random_clip(tmp_path / "clip512.pt", width=64, layers=1, patch_size=16, grid_size=4,
                                output_dim=512)
        extra = ["--model_kwargs", f"clip_path={clip}"]
    cpu_proxies.main(["--recipes", recipe, "--tiny", "--amp", "fp32", "--compare-official", str(checkout),
                      "--steps", "1", "--warmup", "0", "--json", *extra])
    (row,) = json.loads(capsys.readouterr().out, parse_constant=_refuse_constant)["rows"]
    assert row["official_gflop"] > 0 and row["official_saved_mib"] > 0 and row["step_time_ratio"] > 0


def test_dmjd_standin_fails_on_the_builders_default_width_as_the_official_one(tmp_path):
    """The official DMJD builder's default decoder_pred_dim (768) does not fit the HOG target (108 wide): built
    without it, its forward_loss fails as the real clone's does; built as the official command builds it, it runs."""
    checkout = write_checkout("DMJD", tmp_path)
    ours = models.create_model("dmjd_convvit_base_patch16_hog", **models.tiny_kwargs("dmjd_convvit_base_patch16_hog"))
    imgs = torch.randn(2, 3, 64, 64)
    target = ours.target(imgs)
    assert target.shape[-1] == 108
    with official._official_imports(str(checkout)):
        default = importlib.import_module("models_dmjd").dmjd_convit_base_patch16_dec8_hog()
    with pytest.raises(RuntimeError, match=r"size of tensor a \(768\) must match the size of tensor b \(108\)"):
        default(imgs, target, mask_ratio=0.6, mask_type="block")
    built = official.official_builder("dmjd_convvit_base_patch16_hog", str(checkout))(ours)
    assert built.decoder_pred.out_features == 108
    assert torch.isfinite(built(imgs, target, mask_ratio=0.6, mask_type="block")[0])


def test_simmim_standin_refuses_the_ummae_only_keyword(tmp_path, monkeypatch):
    """The SimMIM constructors take no vis_mask_ratio (UM-MAE's): the stand-in refuses it as the official one does,
    so a spec passing it would fail the test as it would fail the real clone."""
    checkout = write_checkout("UM-MAE", tmp_path)
    spec = official.OFFICIAL["simmim_swin_tiny_256"]
    wrong = official.OfficialModel(spec.repo, spec.module, spec.builder, spec.loss, {"vis_mask_ratio": 0.25})
    monkeypatch.setitem(official.OFFICIAL, "simmim_swin_tiny_256", wrong)
    with pytest.raises(UsageError, match="building simmim_swin_tiny_256 .* failed .*vis_mask_ratio"):
        official.official_builder("simmim_swin_tiny_256", str(checkout))(nn.Identity())
