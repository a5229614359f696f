"""Selective activation checkpointing (``set_grad_checkpointing``): the same loss and gradients as without it for
every encoder family, fewer bytes kept for backward, only while training, and no graph break or host sync."""
import pytest
import torch

import main_pretrain
from base.errors import UsageError
from base.safe_load import load_file
from models import create_model, tiny_kwargs
from models.encoders import common
from test_pretrain import pretrain_args
from test_step_hygiene import HostSyncCounter, build

# one pretraining recipe per encoder family (ConViT: test_dmjd_two_views_with_decoder_unchanged); Swin on the full
# grid with shifted windows, PVT on UM-MAE's compact grid
RECIPES = ["mae_vit_base_patch16", "simmim_swin_tiny_256", "ummae_pvt_small_256"]
# classifiers with stochastic depth on: the recomputed forward must draw the same DropPath masks
CLASSIFIERS = {name: tiny_kwargs(name) for name in ("vit_base_patch16", "convvit_base_patch16", "swin_tiny_256",
                                                    "pvt_small_256")}
MODES = ("none", "stage1", "all")


def loss_and_grads(model: torch.nn.Module, run, mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``run(model)`` -> loss, after seeding the global RNG (masks, DropPath), and every parameter's gradient."""
    model.set_grad_checkpointing(mode)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = run(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_training(model: torch.nn.Module, run) -> None:
    ref_loss, ref_grads = loss_and_grads(model, run, "none")
    assert len(ref_grads) == sum(p.requires_grad for p in model.parameters())  # every parameter gets a gradient
    for mode in ("stage1", "all"):
        loss, grads = loss_and_grads(model, run, mode)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-6, msg=f"{mode}: {name}")


@pytest.mark.parametrize("name", RECIPES)
def test_pretraining_loss_and_gradients_unchanged(name, tmp_path):
    model, imgs = build(name, tmp_path)
    assert_same_training(model, lambda m: m(imgs).loss)


def test_dmjd_two_views_with_decoder_unchanged(tmp_path):
    """DMJD's two disjoint views share ConViT's convolution stages (checkpointed per image) and both branches
    (MAE decoder, visible distillation) train: losses per branch and gradients as without checkpointing."""
    model, imgs = build("dmjd_convvit_base_patch16_hog", tmp_path)
    torch.manual_seed(1)
    masks = model.sample_masks(imgs)
    assert masks.num_views == 2 and masks.disjoint_views
    out = model(imgs, mask=masks)
    assert set(out.losses) == {"mim", "vis"}
    assert_same_training(model, lambda m: m(imgs, mask=masks).loss)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_with_drop_path_unchanged(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, drop_path_rate=0.3, **CLASSIFIERS[name]).train()
    size = CLASSIFIERS[name]["img_size"]
    imgs, labels = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    assert_same_training(model, lambda m: torch.nn.functional.cross_entropy(m(imgs), labels))


def kept_bytes(model: torch.nn.Module, imgs: torch.Tensor, monkeypatch) -> int:
    """Bytes of the unique storages a forward keeps for backward (parameters and buffers excluded): those saved
    through autograd's saved-tensor hooks, plus the inputs the checkpointed blocks hold for their recomputation
    (which checkpointing keeps outside those hooks)."""
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> None:
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in state:
            kept[ptr] = tensor.untyped_storage().nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor)
        return tensor

    def recording_checkpoint(fn, *args, **kwargs):
        for arg in torch.utils._pytree.tree_leaves(args):
            if isinstance(arg, torch.Tensor):
                keep(arg)
        return checkpoint(fn, *args, **kwargs)

    checkpoint = common.checkpoint
    monkeypatch.setattr(common, "checkpoint", recording_checkpoint)
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(imgs)
    monkeypatch.setattr(common, "checkpoint", checkpoint)
    return sum(kept.values())


@pytest.mark.parametrize("name", [*RECIPES, "dmjd_convvit_base_patch16_hog"])
def test_checkpointing_keeps_fewer_bytes(name, tmp_path, monkeypatch):
    """Kept bytes fall from none to stage1 to all."""
    model, imgs = build(name, tmp_path)
    kept = {}
    for mode in MODES:
        model.set_grad_checkpointing(mode)
        kept[mode] = kept_bytes(model, imgs, monkeypatch)
    assert kept["none"] > kept["stage1"] > kept["all"] > 0, kept


def test_only_while_training_with_gradients(tmp_path, monkeypatch):
    """Evaluation and no-grad passes run the blocks plainly, whatever the mode."""
    model, imgs = build("simmim_swin_tiny_256", tmp_path)
    calls = []
    monkeypatch.setattr(common, "checkpoint", lambda fn, *args, **kwargs: calls.append(1) or fn(*args))
    model.set_grad_checkpointing("all")
    with torch.no_grad():
        model(imgs)
    model.eval()
    model(imgs)
    assert calls == []
    model.train()
    model(imgs)
    assert len(calls) == model.encoder.depth


def test_modes_and_their_blocks():
    encoder = create_model("mae_vit_base_patch16", **tiny_kwargs("mae_vit_base_patch16")).encoder
    assert encoder.checkpointed_blocks(encoder.stage1_depth, 12) == range(0)  # off by default
    encoder.set_grad_checkpointing("stage1")
    assert list(encoder.checkpointed_blocks(3, 12)) == [1, 2, 3]
    encoder.set_grad_checkpointing(True)  # timm's switch
    assert list(encoder.checkpointed_blocks(3, 12)) == list(range(1, 13))
    encoder.set_grad_checkpointing(False)
    assert encoder.grad_ckpt == "none"
    with pytest.raises(ValueError, match="stage1"):
        encoder.set_grad_checkpointing("some")
    assert create_model("vit_base_patch16", **tiny_kwargs("vit_base_patch16")).encoder.stage1_depth == 1  # ceil(2 / 4)
    assert create_model("vit_base_patch16", img_size=32).encoder.stage1_depth == 3  # ViT-B: 3 of 12


@pytest.mark.parametrize("name", [*RECIPES, "dmjd_convvit_base_patch16_hog"])
def test_no_host_sync(name, tmp_path):
    """Checkpointed blocks, and their recomputation in backward, read nothing back to the host."""
    model, imgs = build(name, tmp_path)
    model.set_grad_checkpointing("all")
    with HostSyncCounter() as counter:
        model(imgs).loss.backward()
    assert counter.seen == [], f"{name}: {counter.seen}"


@pytest.mark.slow
@pytest.mark.parametrize("name", [*RECIPES, "dmjd_convvit_base_patch16_hog"])
def test_no_graph_break(name, tmp_path):
    """Checkpointed blocks trace into one graph under torch.compile."""
    model, imgs = build(name, tmp_path)
    model.set_grad_checkpointing("all")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(imgs)
    assert explained.graph_break_count == 0, explained.break_reasons

def test_pretrain_cli_flag_trains_the_same(image_folder, tmp_path):
    """``main_pretrain.py --grad_ckpt all`` trains to the same weights as without, and records the mode."""
    weights = {}
    for mode in MODES[::2]:
        out = tmp_path / mode
        main_pretrain.main(pretrain_args(image_folder, out, "--epochs", "1", "--vis_freq", "100", "--grad_ckpt", mode))
        ckpt = load_file(out / "checkpoint-0.pth")
        assert ckpt["args"]["grad_ckpt"] == mode
        weights[mode] = ckpt["model"]
    for key, value in weights["none"].items():
        torch.testing.assert_close(weights["all"][key], value, rtol=1e-6, atol=1e-6, msg=key)
    with pytest.raises(UsageError, match="grad_ckpt"):
        main_pretrain.get_args_parser().parse_args(["--grad_ckpt", "half"])
