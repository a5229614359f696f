"""benchmarks/mini_table.py end to end at its tiny preset: two ViT rows (the second taking the first's encoder as
its frozen teacher) and their shared random-init baseline, on a small Fashion-MNIST-format set, through the real
entry points as subprocesses. The figures' sanity is checked, not their values (the full run is the benchmark)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from base.errors import UsageError
from benchmarks import mini_table
from benchmarks.mini_presets import ROWS, kwargs_args


def write_idx(path: Path, array: np.ndarray) -> None:
    """A gzipped idx file (Fashion-MNIST's format) of a uint8 array: [N] labels or [N, 28, 28] images."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(root: Path, train: int, test: int) -> Path:
    """Ten classes of a bright bar whose place and angle follow the label, with noise."""
    rng = np.random.default_rng(0)
    root.mkdir()
    for split, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            row = 3 + 2 * label
            images[i, row:row + 4, 4:24] = 220
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.mark.slow  # 11 processes (about 65 CPU-seconds, most of it their start-up): ~35 s on 2 idle cores
def test_tiny_table(tmp_path: Path):
    data = fake_fashion_mnist(tmp_path / "fmnist", train=200, test=100)
    out = tmp_path / "table"
    report = mini_table.run(mini_table.build_parser().parse_args([
        "--preset", "tiny", "--rows", "mae", "deepmim_teacher", "--jobs", "2", "--threads", "1",
        "--data_path", str(data), "--output_dir", str(out)]))
    saved = json.loads((out / "table.json").read_text())
    assert saved["rows"] == report["rows"] and set(saved["rows"]) == {"mae", "deepmim_teacher"}
    assert set(saved["random"]) == {"vit"}
    for name, res in [*saved["rows"].items(), ("random", saved["random"]["vit"])]:
        assert "error" not in res, (name, res)
        for key in ("knn_top1", "probe_top1", "finetune_top1"):
            assert 0 <= res[key] <= 100, (name, key, res[key])
    for res in saved["rows"].values():
        assert res["pretrain_s"] > 0 and res["img_per_s"] > 0 and res["peak_rss_mib"] > 50
        assert np.isfinite(res["final_loss"])
    # the student's teacher is the MAE row's final checkpoint
    assert f"teacher_path='{out / 'mae' / 'pretrain' / 'checkpoint-0.pth'}'" in \
        (out / "deepmim_teacher" / "pretrain.log").read_text().splitlines()[0]
    table = (out / "table.md").read_text()
    assert table.count("\n| ") == 2 and "MAE" in table and "frozen MAE-row teacher" in table


def test_a_student_needs_its_teachers_row(tmp_path: Path):
    args = mini_table.build_parser().parse_args(["--preset", "tiny", "--rows", "deepmim_teacher",
                                                 "--output_dir", str(tmp_path)])
    with pytest.raises(UsageError, match="add it to --rows"):
        mini_table.run(args)
    assert ROWS["deepmim_teacher"].teacher == "mae"


def test_model_kwargs_are_python_literals():
    assert kwargs_args({"a": (1, 2), "b": "x/y"}) == ["--model_kwargs", "a=(1, 2)", "b='x/y'"]
    assert kwargs_args({}) == []
