"""DeepMIM's ``teacher_path``: a pretraining checkpoint's encoder as the frozen target of a student of the same
architecture (models/encoder_teacher.py), the stand-in for CLIP in benchmarks/mini_table.py."""
from pathlib import Path

import pytest
import torch

from base.errors import UsageError
from conftest import adamw_losses, smooth_images
from models import create_model

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture
def mae_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    mae = create_model("mae_vit_base_patch16", **VIT, **DEC)
    torch.save({"model": mae.state_dict(), "epoch": 0}, tmp_path / "checkpoint-0.pth")
    return tmp_path / "checkpoint-0.pth", mae


def test_target_is_the_teachers_final_patch_tokens(mae_checkpoint):
    path, mae = mae_checkpoint
    torch.manual_seed(1)
    student = create_model("deepmim_vit_base_patch16", **VIT, **DEC, teacher_path=str(path))
    imgs = smooth_images(2, 32, seed=0)
    mae.eval()
    with torch.no_grad():
        expected = mae.encoder(imgs).patches  # all 16 patches, final norm, cls dropped
    assert expected.shape == (2, 16, 32)
    torch.testing.assert_close(student.target(imgs), expected, rtol=0, atol=0)  # the same computation
    assert all(out.shape == (2, 16, 32) for out in student(imgs).pred.values())
    assert not [k for k in student.state_dict() if "teacher" in k]
    losses = adamw_losses(student, imgs, steps=8, lr=2e-3)
    assert losses[-1] < 0.9 * losses[0], losses
    torch.testing.assert_close(student.target(imgs), expected, rtol=0, atol=0)  # still frozen


def test_bad_teachers_are_one_line(mae_checkpoint, tmp_path: Path):
    path, _ = mae_checkpoint
    with pytest.raises(UsageError, match="does not exist"):
        create_model("deepmim_vit_base_patch16", **VIT, **DEC, teacher_path=str(tmp_path / "nope.pth"))
    with pytest.raises(UsageError, match="not an encoder of the student's architecture"):
        create_model("deepmim_vit_base_patch16", **{**VIT, "embed_dim": 64}, **DEC, teacher_path=str(path))
    torch.save({"model": {"decoder.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="not an encoder.*missing"):
        create_model("deepmim_vit_base_patch16", **VIT, **DEC, teacher_path=str(tmp_path / "other.pth"))
    with pytest.raises(UsageError, match="one frozen teacher"):
        create_model("deepmim_vit_base_patch16", **VIT, **DEC, teacher_path=str(path), clip_path=str(path))
