"""DeepMIM: deep-supervision heads on any encoder, the CLIP teacher target, CLI (golden case: test_golden.py)."""
import json
from pathlib import Path

import pytest
import torch

import main_pretrain
from base.errors import UsageError
from base.safe_load import load_file
from models import create_model
from models.clip_teacher import openai_visual_shapes
from models.encoders.convvit import ConvViT
from models.heads import MAEDecoder, TappedHead, VisibleDistillHead, deep_supervision_heads, default_ds_layers
from models.hog import HogTarget
from models.interfaces import EncoderOutput
from models.losses import PatchLoss
from models.masking import BlockMasking, DisjointMasking
from models.mim import Branch, MaskedImageModel
from util.checkpoint import load_pretrained
from util.optim import weight_decay_groups

TINY = dict(embed_dim=32, depth=12, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def save_tiny_clip(path: Path, seed: int = 1, resolution: int = 224) -> None:
    """A tiny random CLIP image tower (width 64, 2 layers, output 24) saved as an OpenAI-layout state dict."""
    gen = torch.Generator().manual_seed(seed)
    shapes = openai_visual_shapes(width=64, layers=2, patch_size=16, grid_size=resolution // 16, output_dim=24)
    torch.save({f"visual.{k}": 0.1 * torch.randn(shape, generator=gen) for k, shape in shapes.items()}, path)


@pytest.fixture
def clip_file(tmp_path: Path) -> Path:
    save_tiny_clip(tmp_path / "clip.pt", resolution=64)
    return tmp_path / "clip.pt"


def test_default_taps_scale_with_depth():
    assert default_ds_layers(12) == (6, 8, 10, 12)
    assert default_ds_layers(24) == (12, 16, 20, 24)
    assert default_ds_layers(2) == (1, 2)
    with pytest.raises(UsageError, match="ds_layers"):
        deep_supervision_heads(lambda: torch.nn.Identity(), [0, 3], 12)


def test_heads_read_the_right_layers(clip_file):
    """Each tapped head decodes exactly the un-normed output of its block (blocks run by hand), the final
    head the normed output; the encoder runs once for all of them."""
    torch.manual_seed(0)
    model = create_model("deepmim_vit_base_patch16_clip", clip_path=str(clip_file), img_size=64,
                         ds_layers=[2, 3, 4], **(TINY | {"depth": 4})).eval()
    imgs = torch.randn(2, 3, 64, 64)
    masks = model.sample_masks(imgs, torch.Generator().manual_seed(0))
    enc = model.encoder
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model(imgs, mask=masks)
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
        x = torch.gather(x, 1, masks.ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([(enc.cls_token + enc.pos_embed[:, :1]).expand(2, -1, -1), x], dim=1)
        outputs = {}
        for i, block in enumerate(enc.blocks, start=1):
            x = block(x)
            outputs[i] = x
        expected = {"ds2": outputs[2], "ds3": outputs[3], "ds4": enc.norm(outputs[4])}
        for name, tokens in expected.items():
            head = model.heads[name].head
            features = EncoderOutput(prefix=tokens[:, :1], patches=tokens[:, 1:])
            torch.testing.assert_close(out.pred[name], head(features, masks))
    assert len(calls) == 1
    assert [model.heads[n].layer for n in ("ds2", "ds3", "ds4")] == [2, 3, None]


def test_losses_only_on_masked_tokens(clip_file):
    """Changing the target of visible patches changes no head's loss; changing a masked one does."""
    model = create_model("deepmim_vit_base_patch16_clip", clip_path=str(clip_file), img_size=64, **TINY)
    masks = model.sample_masks(torch.zeros(2, 3, 64, 64), torch.Generator().manual_seed(0))
    pred = torch.randn(2, 16, 24)
    target = torch.randn(2, 16, 24)
    for loss in model.losses.values():
        base = loss(pred, target, masks)
        visible_changed = torch.where(masks.mask[..., None], target, torch.randn_like(target))
        masked_changed = torch.where(masks.mask[..., None], torch.randn_like(target), target)
        assert torch.equal(loss(pred, visible_changed, masks), base)
        assert not torch.equal(loss(pred, masked_changed, masks), base)
    unit = torch.nn.functional.normalize(pred, dim=-1)
    per_patch = 2 - 2 * (unit * torch.nn.functional.normalize(target, dim=-1)).sum(-1)
    expected = (per_patch * masks.mask).sum() / masks.mask.sum()
    torch.testing.assert_close(model.losses["ds6"](pred, target, masks), expected)


def test_teacher_frozen_not_optimized_not_saved(clip_file, tmp_path):
    """The teacher gets no gradients, is not in parameters()/the optimizer/state_dict, stays in eval mode
    under model.train(), is unchanged after steps, and stays fp32 on the CPU under model.to(float64)."""
    model = create_model("deepmim_vit_base_patch16_clip", clip_path=str(clip_file), img_size=64, **TINY)
    teacher = model.target.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in model.parameters()}
    opt = torch.optim.AdamW(weight_decay_groups(model, 0.05), lr=1e-2)
    assert not teacher_params & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not [k for k in model.state_dict() if "teacher" in k or "norm_pre" in k]  # norm_pre: CLIP's ln_pre
    model.train()
    assert not teacher.training
    for _ in range(2):
        out = model(torch.randn(2, 3, 64, 64))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.to(torch.float64)  # the teacher's precision follows its device, not the model's dtype
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    assert model.target(torch.randn(2, 3, 64, 64)).dtype == torch.float32


def test_pixel_variant_and_official_keys():
    """DeepMIM-MAE: the same taps with the MAE pixel target; checkpoint keys are the official numbered ones."""
    model = create_model("deepmim_vit_base_patch16", img_size=64, norm_pix_loss=True, **TINY)
    keys = set(model.state_dict())
    for i in range(1, 5):
        assert {f"decoder_embed{i}.weight", f"mask_token{i}", f"decoder_blocks{i}.0.attn.qkv.weight",
                f"decoder_norm{i}.weight", f"decoder_pred{i}.weight", f"decoder_pos_embed{i}"} <= keys
    assert model.heads["ds6"].head.decoder_pred.out_features == 16 * 16 * 3
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out.losses) == {"ds6", "ds8", "ds10", "ds12"} and torch.isfinite(out.loss)


def test_dmjd_with_deep_supervision_composes():
    """DMJD's encoder, views, HOG and distillation with deep-supervision decoders on ConViT's blocks3."""
    torch.manual_seed(0)
    encoder = ConvViT(img_size=64, embed_dims=(16, 24, 32), depths=(1, 1, 3), num_heads=2)
    target = HogTarget(16)

    def make_decoder():
        return MAEDecoder(encoder.grid_size, 32, target.out_dim(), 16, 1, 2, 8.0, num_prefix_tokens=0)

    branches = {name: Branch(head, PatchLoss("l2")) for name, head in
                deep_supervision_heads(make_decoder, [2, 3], encoder.depth).items()}
    branches["vis"] = Branch(VisibleDistillHead(32, target.out_dim(), 16), PatchLoss("smooth_l1", 2.0, on="visible"))
    model = MaskedImageModel(encoder, DisjointMasking(BlockMasking(0.5)), target, branches)
    out = model(torch.randn(2, 3, 64, 64))
    assert set(out.losses) == {"ds2", "ds3", "vis"} and out.pred["ds2"].shape == (4, 16, 108)
    assert isinstance(model.heads["ds2"], TappedHead) and model.tapped_layers == [2]
    out.loss.backward()
    assert encoder.blocks3[0].attn.qkv.weight.grad is not None
    assert "decoder_embed1.weight" in model.state_dict() and "proj_embed.0.weight" in model.state_dict()


def test_clip_path_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="--clip_path"):
        create_model("deepmim_vit_base_patch16_clip", img_size=64, **TINY)
    with pytest.raises(UsageError, match="does not exist"):
        create_model("deepmim_vit_base_patch16_clip", clip_path=str(tmp_path / "nope.pt"), img_size=64, **TINY)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(UsageError, match="notes.txt"):
        create_model("deepmim_vit_base_patch16_clip", clip_path=str(tmp_path / "notes.txt"), img_size=64, **TINY)


def test_official_command_runs_and_learns(image_folder, clip_file, tmp_path):
    """The DeepMIM README command (`--model mae_vit_base_patch16 --norm_pix_loss --clip_path ...`) trains
    DeepMIM-CLIP; at a tiny size the loss goes down and the checkpoint holds no teacher weight."""
    out = tmp_path / "run"
    argv = ["--batch_size", "8", "--model", "mae_vit_base_patch16", "--norm_pix_loss", "--clip_path", str(clip_file),
            "--mask_ratio", "0.75", "--epochs", "6", "--warmup_epochs", "1", "--blr", "1.5e-4", "--lr", "2e-3",
            "--weight_decay", "0.05", "--data_path", str(image_folder), "--input_size", "64",
            "--model_kwargs", "embed_dim=32", "depth=4", "num_heads=2", "decoder_embed_dim=16", "decoder_depth=1",
            "decoder_num_heads=2", "--output_dir", str(out), "--num_workers", "0", "--device", "cpu"]
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))
    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert records[-1]["train_loss"] < 0.9 * records[0]["train_loss"], records
    assert {"train_loss_ds2", "train_loss_ds3", "train_loss_ds4"} <= set(records[0])
    state = load_file(str(out / "checkpoint-5.pth"))["model"]
    assert "decoder_embed1.weight" in state and not [k for k in state if "teacher" in k or "norm_pre" in k]


def test_fine_tuning_loads_only_the_encoder():
    """A DeepMIM checkpoint fine-tunes as a plain ViT: the numbered decoders are unexpected and ignored."""
    pretrain = create_model("deepmim_vit_base_patch16", img_size=64, **TINY)
    clf = create_model("vit_base_patch16", img_size=64, num_classes=3, embed_dim=32, depth=12, num_heads=2)
    report = load_pretrained(clf, pretrain.state_dict(), allow_missing=["head.*", "fc_norm.*"])
    assert {"decoder_embed1.weight", "mask_token4", "decoder_pred2.bias"} <= set(report.unexpected)
    assert not [k for k in report.unexpected if not k.startswith(("decoder", "mask_token", "norm."))]
    torch.testing.assert_close(clf.encoder.blocks[7].attn.qkv.weight, pretrain.encoder.blocks[7].attn.qkv.weight)
