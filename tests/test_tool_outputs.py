"""What the tools write (tools/export.py, tools/dcp_to_plain.py, tools/visualize.py): never over what they read,
never over an existing file unless --force, never half-written; every refusal one line before anything is read."""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as load_safetensors

import tools.export
from conftest import TINY_MAE
from models import create_model
from test_export import VIT_ARGS, vit_checkpoint
from test_tools_visualize import SIDE, read_png, write_image
from tools.dcp_to_plain import main as dcp_to_plain
from tools.export import main as export
from tools.visualize import main as visualize


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def export_argv(checkpoint: Path | str, out: Path | str, *extra: str) -> list[str]:
    return [str(checkpoint), *VIT_ARGS, "--to", "safetensors", "--out", str(out), *extra]


def test_export_never_replaces_its_checkpoint(tmp_path, capsys, monkeypatch):
    """--out naming the checkpoint itself (as given, relative, through a symlink or a hard link) is refused, with
    --force too; the checkpoint stays byte for byte."""
    checkpoint = vit_checkpoint(tmp_path, "pretrain", True)
    before = checkpoint.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pth").symlink_to(checkpoint)
    os.link(checkpoint, tmp_path / "hard.pth")
    monkeypatch.chdir(tmp_path / "sub")
    for out in (checkpoint, "../pretrain.pth", tmp_path / "sub" / ".." / "pretrain.pth", tmp_path / "link.pth",
                tmp_path / "hard.pth"):
        for force in ([], ["--force"]):
            assert export(export_argv(checkpoint, out, *force)) == 2
            assert "is the input" in one_line(capsys)
    assert checkpoint.read_bytes() == before


def test_export_replaces_an_existing_file_only_with_force(tmp_path, capsys):
    """An existing --out is refused without --force and replaced with it; an existing folder (or a path below a
    file) is one line."""
    checkpoint = vit_checkpoint(tmp_path, "pretrain", True)
    out = tmp_path / "encoder.safetensors"
    out.write_text("colleague's file")
    assert export(export_argv(checkpoint, out)) == 2
    assert "exists: pass --force" in one_line(capsys)
    assert out.read_text() == "colleague's file"
    assert export(export_argv(checkpoint, out, "--force")) == 0
    assert "pos_embed" in load_safetensors(str(out))
    (tmp_path / "folder").mkdir()
    assert export(export_argv(checkpoint, tmp_path / "folder")) == 2
    assert "is a folder: pass the name of the file" in one_line(capsys)
    assert export(export_argv(checkpoint, out / "x.safetensors")) == 2
    assert f"{out} is a file, not a folder" in one_line(capsys)


def test_export_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails midway leaves the previous --out whole and no temp file."""
    checkpoint = vit_checkpoint(tmp_path, "pretrain", True)
    out = tmp_path / "encoder.safetensors"
    assert export(export_argv(checkpoint, out)) == 0
    before = out.read_bytes()

    def fails(tensors, metadata=None):
        raise OSError("disk gone")

    monkeypatch.setattr(tools.export, "safetensors_bytes", fails)
    with pytest.raises(OSError, match="disk gone"):
        export(export_argv(checkpoint, out, "--force"))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.safetensors", "pretrain.pth"]


def test_dcp_to_plain_output_checks(tmp_path, capsys):
    """OUT that exists (without --force), is the folder read, or lies in it (also through a symlink): one line
    each, before the folder is read."""
    folder = tmp_path / "checkpoint-0.dcp"
    folder.mkdir()
    (folder / ".metadata").write_bytes(b"not read")
    (tmp_path / "link.dcp").symlink_to(folder)
    existing = tmp_path / "plain.pth"
    existing.write_text("keep")
    cases = {existing: "exists: pass --force", folder: "is a folder", folder / "plain.pth": "inside the folder",
             tmp_path / "link.dcp" / "plain.pth": "inside the folder"}
    for out, message in cases.items():
        assert dcp_to_plain([str(folder), str(out)]) == 2
        assert message in one_line(capsys)
    assert existing.read_text() == "keep" and sorted(p.name for p in folder.iterdir()) == [".metadata"]


@pytest.fixture
def weights(tmp_path) -> Path:
    """A bare MAE state dict (tools/visualize.py then needs --model)."""
    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save({"model": create_model("mae_vit_tiny_patch16", **TINY_MAE).state_dict()}, path)
    return path


def visualize_argv(weights: Path, images: Path | list[Path], out: Path, *extra: str) -> list[str]:
    kwargs = [f"{k}={v}" for k, v in TINY_MAE.items() if k != "img_size"]
    images = images if isinstance(images, list) else [images]
    return [str(weights), *map(str, images), "--out", str(out), *extra, "--model", "mae_vit_tiny_patch16",
            "--input_size", "32", "--model_kwargs", *kwargs]


def test_visualize_output_checks(weights, tmp_path, capsys):
    """--out that is a file is one line; a picture of the same name is replaced only with --force; an input
    image where a picture would go is refused even then."""
    image = write_image(tmp_path / "a.png", (40, 40))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert visualize(visualize_argv(weights, image, a_file)) == 2
    assert f"{a_file} is a file, not a folder" in one_line(capsys)
    assert a_file.read_text() == "mine"
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "a-reconstruction.png").write_text("an older picture")
    assert visualize(visualize_argv(weights, image, out)) == 2
    assert "exists: pass --force" in one_line(capsys)
    assert visualize(visualize_argv(weights, image, out, "--force")) == 0
    assert read_png(out / "a-reconstruction.png").shape[1] == 4 * SIDE + 2
    # a.png's picture would replace the other image given, an old picture drawn again
    again = out / "a-reconstruction.png"
    before = again.read_bytes()
    assert visualize(visualize_argv(weights, [image, again], out, "--force")) == 2
    assert f"{again} is the input {again} itself" in one_line(capsys)
    assert again.read_bytes() == before
