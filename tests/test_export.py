"""tools/export.py: a checkpoint's encoder to timm's VisionTransformer and to safetensors, and its refusals."""
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer as TimmViT

import models
from models.classifier import Classifier
from tools.export import main
from util.checkpoint import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
VIT = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
VIT_ARGS = ["--model", "vit_base_patch16", "--img_size", "32", "--model_kwargs"] + [f"{k}={v}" for k, v in VIT.items()]
SWIN = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), posmlp_dim=4)
SWIN_ARGS = ["--model", "swin_tiny_256", "--img_size", "128", "--model_kwargs"] + [
    f"{k}={v!r}".replace(" ", "") for k, v in SWIN.items()]


def vit_checkpoint(tmp_path: Path, kind: str, global_pool: bool) -> Path:
    """A tiny ViT checkpoint as MAE pretraining or fine-tuning writes it (fine-tuned: a non-trivial fc_norm)."""
    torch.manual_seed(0)
    if kind == "pretrain":
        model = models.create_model("mae_vit_base_patch16", img_size=32, decoder_embed_dim=16, decoder_depth=1,
                                    decoder_num_heads=2, **VIT)
    else:
        model = models.create_model("vit_base_patch16", img_size=32, num_classes=10, global_pool=global_pool, **VIT)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn_like(param))  # every weight away from its initialization
    path = tmp_path / f"{kind}.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    return path


def ours(checkpoint: Path, name: str, **kwargs) -> Classifier:
    """Our head-less classifier loaded from the source checkpoint as fine-tuning would load it."""
    model = models.create_model(name, num_classes=0, **kwargs)
    load_pretrained(model, str(checkpoint), allow_missing=["fc_norm.*"])
    return model.eval()


@pytest.mark.parametrize("kind,global_pool", [("pretrain", True), ("finetune", True), ("finetune", False)])
def test_vit_to_timm(tmp_path, kind, global_pool):
    """The export loads strictly into the matching timm VisionTransformer, and timm's tokens and pooled
    features equal ours; timm.create_model with the exported file as pretrained weights gives the same."""
    checkpoint, out = vit_checkpoint(tmp_path, kind, global_pool), tmp_path / "vit.safetensors"
    assert main([str(checkpoint), *VIT_ARGS, f"global_pool={global_pool}", "--to", "timm", "--out", str(out)]) == 0
    pool = "avg" if global_pool else "token"
    direct = TimmViT(img_size=32, class_token=True, num_classes=0, global_pool=pool, **VIT)
    direct.load_state_dict(load_file(out), strict=True)
    created = timm.create_model("vit_base_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(out)),
                                img_size=32, num_classes=0, global_pool=pool, **VIT)
    model = ours(checkpoint, "vit_base_patch16", img_size=32, global_pool=global_pool, **VIT)
    imgs = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out_ours = model.encoder(imgs)
        tokens = torch.cat([out_ours.prefix, out_ours.patches], dim=1)
        pooled = model.forward_features(imgs)
        for timm_model in (direct, created.eval()):
            timm_tokens = timm_model.forward_features(imgs)
            torch.testing.assert_close(timm_tokens, tokens, rtol=0, atol=1e-5)
            torch.testing.assert_close(timm_model.forward_head(timm_tokens, pre_logits=True), pooled,
                                       rtol=0, atol=1e-5)
            torch.testing.assert_close(timm_model(imgs), pooled, rtol=0, atol=1e-5)


def test_swin_to_safetensors(tmp_path):
    """A UM-MAE Swin pretraining checkpoint exported to safetensors strict-loads into a fresh swin_tiny_256
    encoder, which then computes exactly what the checkpoint loaded directly computes."""
    torch.manual_seed(0)
    pretrain = models.create_model("ummae_swin_tiny_256", img_size=128, decoder_embed_dim=16, decoder_depth=1,
                                   decoder_num_heads=2, **SWIN)
    checkpoint, out = tmp_path / "swin.pth", tmp_path / "swin.safetensors"
    torch.save({"model": pretrain.state_dict()}, checkpoint)
    assert main([str(checkpoint), *SWIN_ARGS, "--to", "safetensors", "--out", str(out)]) == 0
    fresh = models.create_model("swin_tiny_256", img_size=128, num_classes=0, **SWIN).eval()
    fresh.load_state_dict(load_file(out), strict=True)
    reference = ours(checkpoint, "swin_tiny_256", img_size=128, **SWIN)
    imgs = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(fresh.forward_features(imgs), reference.forward_features(imgs))
        for got, want in zip(fresh.encoder.forward_features(imgs), reference.encoder.forward_features(imgs)):
            assert torch.equal(got, want)


def test_swin_to_timm_is_refused(tmp_path):
    """timm has no UM-MAE Swin: the script says so in one line, points to safetensors and exits 2."""
    torch.manual_seed(0)
    checkpoint = tmp_path / "swin.pth"
    model = models.create_model("swin_tiny_256", img_size=128, num_classes=0, **SWIN)
    torch.save({"model": model.state_dict()}, checkpoint)
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), str(checkpoint), *SWIN_ARGS,
                          "--to", "timm", "--out", str(tmp_path / "x.safetensors")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: --to timm:")
    assert "posMLP" in run.stderr and "--to safetensors" in run.stderr
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("args,message", [
    (["--model", "vit_bse_patch16"], "unknown model 'vit_bse_patch16'"),
    (["--model", "mae_vit_base_patch16"], "is not a classifier recipe"),
    (["--model", "vit_base_patch16", "--missing"], "does not exist"),
])
def test_one_line_errors(tmp_path, capsys, args, message):
    """Unknown or non-classifier model and a missing checkpoint: one line, status 2."""
    checkpoint = tmp_path / "some.pth"
    torch.save({"model": {}}, checkpoint)
    if "--missing" in args:
        args, checkpoint = args[:-1], tmp_path / "absent.pth"
    assert main([str(checkpoint), *args, "--to", "timm", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
