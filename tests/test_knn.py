"""The kNN monitor of pretraining (util/knn.py, --knn_freq): DINO's weighted vote on hand-made features, one tiny
run per encoder family, the training RNG stream untouched, resume."""
import json
from pathlib import Path

import pytest
import torch

import main_pretrain
from base.errors import UsageError
from base.safe_load import load_file
from conftest import make_image_folder, tiny_cli_args
from util.knn import balanced_subset, knn_scores, preserved_rng, topk_accuracy


def labelled_folder(root: Path) -> Path:
    """train/ and val/ of 3 separable classes: 8 and 4 images each, 32 px."""
    make_image_folder(root, num_classes=3, per_class=8, size=32, separable=True)
    return make_image_folder(root, num_classes=3, per_class=4, size=32, seed=1, split="val", separable=True)


def run(model: str, data: Path, out: Path, *extra: str) -> list[dict]:
    """A tiny CPU run of ``model`` (its registered tiny configuration; 1 epoch unless ``extra`` gives --epochs):
    its log.txt records."""
    argv = ["--model", model, *tiny_cli_args(model, out.parent, flags=("--input_size",)), "--data_path", str(data),
            "--batch_size", "6", "--epochs", "1", "--warmup_epochs", "0", "--lr", "1e-3", "--num_workers", "0",
            "--device", "cpu", "--output_dir", str(out), "--vis_freq", "100", *extra]
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))
    return [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]


def test_weighted_vote_on_hand_made_features():
    """Bank: 3 class-0 vectors along x, 2 class-1 along y; k=3 takes both class-1 neighbours of a query near y and
    one class-0, whose weight exp(sim / 0.07) is far smaller: class 1 wins. Cosine: lengths do not matter."""
    bank = torch.tensor([[1.0, 0.0], [2.0, 0.1], [3.0, -0.1], [0.0, 1.0], [0.1, 5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    query = torch.tensor([[0.2, 1.0], [10.0, 0.5], [1.0, 1.1]])
    scores = knn_scores(query, bank, labels, num_classes=2, k=3)
    assert scores.argmax(1).tolist() == [1, 0, 1]
    sims = torch.nn.functional.normalize(query[:1]) @ torch.nn.functional.normalize(bank).T  # [1, 5]
    top = sims[0].topk(3)
    expected = torch.zeros(2).index_add_(0, labels[top.indices], (top.values / 0.07).exp())
    torch.testing.assert_close(scores[0], expected)
    top1, top5 = topk_accuracy(scores, torch.tensor([1, 0, 0]))
    assert top1 == pytest.approx(200 / 3) and top5 == 100.0


def test_balanced_subset_takes_the_classes_in_turn():
    labels = torch.tensor([0] * 10 + [1] * 2 + [2] * 6)
    chosen = balanced_subset(labels, 8, torch.Generator().manual_seed(0))
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [3, 2, 3]
    assert chosen.equal(balanced_subset(labels, 8, torch.Generator().manual_seed(0)))


def test_preserved_rng_puts_every_stream_back():
    import random

    import numpy as np
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = torch.rand(2), np.random.rand(), random.random()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with preserved_rng():
        torch.rand(5), np.random.rand(4), random.random()
    assert torch.equal(torch.rand(2), expected[0])  # the same seeded draw: bit-identical
    assert (np.random.rand(), random.random()) == expected[1:]


# one recipe per encoder family, and the multi-view (DMJD) and teacher (DeepMIM) recipes among them
@pytest.mark.parametrize("model", ["deepmim_vit_base_patch16", "dmjd_convvit_base_patch16_hog",
                                   "ummae_swin_tiny_256", "simmim_pvt_small_256"])
def test_knn_freq_logs_top1_for_every_encoder_family(model, tmp_path, capsys):
    data = labelled_folder(tmp_path / "data")
    (record,) = run(model, data, tmp_path / "out", "--knn_freq", "1")
    assert 0 <= record["knn_top1"] <= record["knn_top5"] == 100.0  # 3 classes: the top 5 holds them all
    assert record["knn_seconds"] > 0
    assert "knn top1" in capsys.readouterr().out


def test_monitor_leaves_training_unchanged_and_resumes(tmp_path, capsys):
    """With and without the monitor (checked every epoch, by default every --save_freq): bit-identical weights;
    a run resumed from the monitored one's checkpoint logs the kNN of its own epoch."""
    data = labelled_folder(tmp_path / "data")
    model, common = "mae_vit_tiny_patch16", ("--epochs", "2", "--save_freq", "1")
    on = run(model, data, tmp_path / "on", *common)  # the default: every --save_freq epochs with labelled data
    run(model, data, tmp_path / "off", *common, "--knn_freq", "0")
    assert [("knn_top1" in r) for r in on] == [True, True]
    weights = [load_file(str(tmp_path / run_dir / "checkpoint-1.pth"))["model"] for run_dir in ("on", "off")]
    # the same training computation twice (the monitor only reads): bit-identical, on any CPU
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    (tmp_path / "on" / "checkpoint-1.pth").unlink()
    resumed = run(model, data, tmp_path / "on", *common, "--auto_resume")
    assert [r["epoch"] for r in resumed] == [0, 1, 1] and "knn_top1" in resumed[-1]
    assert resumed[-1]["knn_top1"] == on[-1]["knn_top1"]


def test_knn_freq_without_labels_says_how_to_turn_it_off(tmp_path):
    data = make_image_folder(tmp_path / "data", size=32)  # train/ only
    with pytest.raises(UsageError, match="pass --knn_freq 0"):
        run("mae_vit_tiny_patch16", data, tmp_path / "out", "--knn_freq", "1")
