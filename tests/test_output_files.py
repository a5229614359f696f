"""util.output_files: every output (checkpoint, picture, export) is written atomically with the permissions a
plain ``open()`` would give it under the process's umask."""
import os
import stat

import pytest
import torch

from test_export import VIT_ARGS, vit_checkpoint
from tools.export import main as export
from util.checkpoint import save_checkpoint
from util.output_files import atomic_write, new_file_mode
from util.visualize import save_png


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["022", "002", "077"])
def umask(request) -> int:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_follow_the_umask(umask, tmp_path):
    """Pictures were 0600 (mkstemp's) and checkpoints always 0644: now both, and exports, are 0666 less the
    umask, as open() makes them."""
    checkpoint = vit_checkpoint(tmp_path, "pretrain", True)  # torch.save: open()'s mode, the reference
    save_checkpoint(str(tmp_path / "checkpoint-0.pth"), {"w": torch.ones(2)})
    save_png(torch.zeros(3, 8, 8, dtype=torch.uint8), tmp_path / "reconstruction-0000.png")
    assert export([str(checkpoint), *VIT_ARGS, "--to", "timm", "--out", str(tmp_path / "vit.safetensors")]) == 0
    assert new_file_mode() == 0o666 & ~umask == mode(checkpoint)
    for name in ("checkpoint-0.pth", "reconstruction-0000.png", "vit.safetensors"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    """An error while writing leaves the previous file and no temp file; success replaces it whole."""
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(path) as f:
            f.write(b"new, half")
            raise RuntimeError("midway")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    with atomic_write(path) as f:
        f.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]
