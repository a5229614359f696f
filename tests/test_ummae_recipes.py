"""UM-MAE and SimMIM recipes: the official commands, learning, and UM-MAE's activation saving over SimMIM on the
same encoder (their official golden cases, through the registered names: test_golden.py)."""
import json

import pytest
import torch

import main_pretrain
from conftest import adamw_losses, smooth_images
from models import create_model
from util.checkpoint import load_pretrained

TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), posmlp_dim=8)
TINY_PVT = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 4), mlp_ratios=(8, 8, 4, 4))
TINY_DECODER = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _activation_elements(model, imgs: torch.Tensor) -> int:
    """Elements of every leaf module's output in one forward pass (a proxy for activation memory)."""
    total = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: total.append(out.numel()))
             for m in model.encoder.modules() if not list(m.children())]
    with torch.no_grad():
        model(imgs)
    for h in hooks:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("encoder,names", [(TINY_SWIN, ("ummae_swin_tiny_256", "simmim_swin_tiny_256")),
                                           (TINY_PVT, ("ummae_pvt_small_256", "simmim_pvt_small_256"))])
def test_ummae_encodes_a_quarter_of_what_simmim_does(encoder, names):
    """Same encoder, same 256-px batch: UM-MAE's encoder activations are well under half of SimMIM's (it
    sees 25% of the image as a compact grid; SimMIM encodes every patch)."""
    imgs = torch.randn(2, 3, 256, 256)
    um = _activation_elements(create_model(names[0], **encoder, **TINY_DECODER), imgs)
    simmim = _activation_elements(create_model(names[1], **encoder), imgs)
    assert um < 0.4 * simmim, (um, simmim)


@pytest.mark.parametrize("name,encoder", [("ummae_swin_tiny_256", TINY_SWIN), ("ummae_pvt_small_256", TINY_PVT),
                                          ("simmim_swin_tiny_256", TINY_SWIN), ("simmim_pvt_small_256", TINY_PVT)])
def test_short_pretrain_of_each_learns(name, encoder):
    torch.manual_seed(0)
    extra = TINY_DECODER if name.startswith("ummae") else {}
    model = create_model(name, img_size=128, norm_pix_loss=name.startswith("ummae"), **encoder, **extra)
    losses = adamw_losses(model, smooth_images(4, 128), steps=40, lr=3e-3, mask_seeds=2)
    assert sum(losses[-2:]) < 0.93 * sum(losses[:2]), losses


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mae_swin_tiny_256", "mae_pvt_small_256"])
def test_official_ummae_command_runs(image_folder, tmp_path, model):
    """The UM-MAE Makefile command (official model names and flags), full size, one tiny epoch."""
    out = tmp_path / "run"
    argv = ["--batch_size", "2", "--accum_iter", "1", "--model", model, "--mask_regular", "--vis_mask_ratio", "0.25",
            "--input_size", "256", "--token_size", "16", "--norm_pix_loss", "--mask_ratio", "0.75",
            "--epochs", "1", "--warmup_epochs", "10", "--blr", "1.5e-4", "--weight_decay", "0.05",
            "--data_path", str(image_folder), "--data_limit", "4", "--log_dir", str(out), "--output_dir", str(out),
            "--num_workers", "0", "--device", "cpu"]
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(records) == 1 and records[0]["train_loss"] > 0
    assert (out / "reconstruction-0000.png").is_file()


def test_fine_tune_classifiers_load_pretraining():
    """swin_tiny_256 / pvt_small_256 take a UM-MAE pretraining state dict: encoder found, decoder ignored."""
    for pre, clf_name, encoder in [("ummae_swin_tiny_256", "swin_tiny_256", TINY_SWIN),
                                   ("ummae_pvt_small_256", "pvt_small_256", TINY_PVT)]:
        pretrain = create_model(pre, **encoder, **TINY_DECODER)
        clf = create_model(clf_name, num_classes=4, **encoder)
        report = load_pretrained(clf, pretrain.state_dict(), allow_missing=["head.*", "fc_norm.*"])
        assert "decoder_embed.weight" in report.unexpected and "blocks.0.norm1.weight" not in report.missing
        assert clf(torch.randn(2, 3, 256, 256)).shape == (2, 4)
