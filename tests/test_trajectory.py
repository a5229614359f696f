"""The trajectory of seeded tiny runs through the CLIs: the loss of every step and a fingerprint of the final
weights, against tests/trajectories.json. It guards refactors of everything around the model core
(config, session, trainer and loop, engines): a change there that alters what is trained shows here.

The figures were written by this test itself (``TRAJECTORY_REBUILD=1``) before the architecture step; rebuild
them only for a change that is meant to alter training, and say so in its commit. Tolerance: 1e-5 relative, as
a few steps of fp32 on another CPU's kernels (Intel, AMD) stay far below it while a changed LR, step order,
accumulation, clipping or augmentation draw moves the losses by orders of magnitude more."""
import json
import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main_finetune
import main_linprobe
import main_pretrain
from base.safe_load import load_file
from conftest import make_image_folder

GOLDEN = Path(__file__).parent / "trajectories.json"  # not in golden/: those are the official cases
REL = 1e-5
COMMON = ["--num_workers", "0", "--device", "cpu", "--print_freq", "1", "--seed", "3"]
VIT = ["embed_dim=32", "depth=2", "num_heads=2"]
DECODER = ["decoder_embed_dim=16", "decoder_depth=1", "decoder_num_heads=2"]
RUNS = {
    "mae_vit": (main_pretrain, [
        "--model", "mae_vit_tiny_patch16", "--model_kwargs", *VIT, "patch_size=8", *DECODER, "--input_size", "32",
        "--batch_size", "8", "--epochs", "2", "--accum_iter", "2", "--clip_grad", "0.5", "--warmup_epochs", "1",
        "--blr", "1e-2", "--norm_pix_loss"]),
    "dmjd_convvit": (main_pretrain, [
        "--model", "dmjd_convvit_base_patch16_hog", "--model_kwargs", "embed_dims=(16,24,32)", "depths=(1,1,2)",
        "num_heads=2", *DECODER, "--input_size", "64", "--batch_size", "4", "--epochs", "1", "--blr", "1e-2"]),
    "ummae_swin": (main_pretrain, [
        "--model", "ummae_swin_tiny_256", "--model_kwargs", "embed_dim=8", "depths=(1,1,1,1)",
        "num_heads=(1,1,2,2)", "posmlp_dim=4", *DECODER, "--input_size", "64", "--token_size", "4",
        "--mask_regular", "--vis_mask_ratio", "0.25", "--batch_size", "4", "--epochs", "1", "--blr", "1e-2"]),
    "finetune_vit": (main_finetune, [
        "--model", "vit_tiny_patch16", "--model_kwargs", *VIT, "patch_size=8", "--input_size", "32",
        "--batch_size", "8", "--epochs", "2", "--warmup_epochs", "1", "--blr", "0.2", "--drop_path", "0.1",
        "--mixup", "0.8", "--cutmix", "1.0", "--reprob", "0.25", "--layer_decay", "0.75", "--nb_classes", "2"]),
    "linprobe_vit": (main_linprobe, [
        "--model", "vit_tiny_patch16", "--model_kwargs", *VIT, "patch_size=8", "--input_size", "32",
        "--batch_size", "8", "--epochs", "2", "--warmup_epochs", "1", "--blr", "0.5", "--nb_classes", "2"]),
}


def step_losses(out: Path) -> list[float]:
    """The ``train/loss`` scalar of every step (``--print_freq 1``), from the run's TensorBoard file."""
    events = EventAccumulator(str(out))
    events.Reload()
    return [event.value for event in events.Scalars("train/loss")]


def fingerprint(out: Path) -> dict[str, float]:
    """The final checkpoint's weights in two numbers: their sum and their sum of squares (float64)."""
    final = max((p for p in out.glob("checkpoint-*.pth") if p.stem.split("-")[1].isdigit()),
                key=lambda p: int(p.stem.split("-")[1]))
    weights = [v.double() for v in load_file(str(final))["model"].values() if v.is_floating_point()]
    return {"sum": sum(float(w.sum()) for w in weights), "sumsq": sum(float(w.square().sum()) for w in weights)}


def run(name: str, tmp_path: Path) -> dict:
    cli, argv = RUNS[name]
    data = make_image_folder(tmp_path / "data", per_class=16, size=72, separable=True)
    make_image_folder(tmp_path / "data", per_class=4, size=72, separable=True, seed=1, split="val")
    out = tmp_path / "out"
    cli.main(cli.get_args_parser().parse_args([*argv, *COMMON, "--data_path", str(data), "--output_dir", str(out)]))
    return {"losses": step_losses(out), "weights": fingerprint(out)}


def close(got: float, want: float) -> bool:
    return abs(got - want) <= REL * max(abs(want), 1e-3)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_seeded_run_follows_its_trajectory(name, tmp_path):
    torch.set_num_threads(1)  # the figures do not depend on it; one thread keeps the runs' kernels alike
    got = run(name, tmp_path)
    if os.environ.get("TRAJECTORY_REBUILD"):
        stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**stored, name: got}, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(GOLDEN.read_text())[name]
    assert len(got["losses"]) == len(want["losses"]), (got["losses"], want["losses"])
    bad = [(i, g, w) for i, (g, w) in enumerate(zip(got["losses"], want["losses"])) if not close(g, w)]
    assert not bad, f"{name}: steps whose loss moved (step, now, stored): {bad}"
    for key, value in want["weights"].items():
        assert close(got["weights"][key], value), (name, key, got["weights"][key], value)
