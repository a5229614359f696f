"""Classification scores that would be wrong without a word: a checkpoint evaluated on data with other class names,
and a validation set sharded over processes that does not divide by their number (RELIABILITY.md, "Checkpoints
given or found" and "Flags and data")."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import main_finetune
import main_linprobe
from base.errors import UsageError
from base.safe_load import load_file
from conftest import make_image_folder
from test_finetune import tiny_cli_args
from test_pretrain import _free_port
from util import distributed as dist_util
from util.checkpoint import save_checkpoint
from util.classify import EvalShard, check_classes

TRAIN = ("--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--aa", "", "--reprob", "0")


def named_classes(root: Path, names: list[str], val_per_class: int = 2) -> Path:
    """train/ and val/ with one folder per name (4 and ``val_per_class`` images each)."""
    for split, count, seed in (("train", 4, 0), ("val", val_per_class, 1)):
        make_image_folder(root, num_classes=len(names), per_class=count, size=32, split=split, seed=seed)
        for i, name in enumerate(names):
            (root / split / f"class{i}").rename(root / split / name)
    return root


@pytest.fixture(scope="module")
def trained_on_a_b(tmp_path_factory) -> Path:
    """checkpoint-0.pth of one fine-tuning epoch on classes (a, b)."""
    root = tmp_path_factory.mktemp("ab")
    data = named_classes(root / "data", ["a", "b"])
    main_finetune.main(main_finetune.get_args_parser().parse_args(tiny_cli_args(data, root / "run", *TRAIN)))
    return root / "run" / "checkpoint-0.pth"


def test_checkpoints_record_their_class_names(trained_on_a_b, tmp_path):
    """Fine-tuning and linear probing checkpoints keep the class names, in label order."""
    assert load_file(str(trained_on_a_b))["args"]["classes"] == ["a", "b"]
    data = named_classes(tmp_path / "data", ["b", "c", "a"])
    main_linprobe.main(main_linprobe.get_args_parser().parse_args(tiny_cli_args(data, tmp_path / "lp", *TRAIN[:6])))
    assert load_file(str(tmp_path / "lp" / "checkpoint-0.pth"))["args"]["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("mode", [("--eval",), ()], ids=["eval", "resume"])
def test_other_class_names_are_refused(trained_on_a_b, tmp_path, mode):
    """(a, b) weights on (dog, zebra) folders: one line naming both, no accuracy, nothing trained."""
    data = named_classes(tmp_path / "data", ["dog", "zebra"])
    args = main_finetune.get_args_parser().parse_args(tiny_cli_args(
        data, tmp_path / "run", *TRAIN, "--epochs", "2", "--resume", str(trained_on_a_b), *mode))
    with pytest.raises(UsageError, match=r"trained on classes a, b .* class folders are dog, zebra") as info:
        main_finetune.main(args)
    assert "\n" not in str(info.value) and not (tmp_path / "run" / "checkpoint-1.pth").exists()


def test_checkpoint_without_names_warns_once(trained_on_a_b, tmp_path, capsys):
    """An official fine-tuned checkpoint holds only 'model': evaluated with one warning line."""
    bare = tmp_path / "official.pth"
    save_checkpoint(str(bare), {"model": load_file(str(trained_on_a_b))["model"]})
    data = named_classes(tmp_path / "data", ["dog", "zebra"])
    main_finetune.main(main_finetune.get_args_parser().parse_args(tiny_cli_args(
        data, tmp_path / "run", "--batch_size", "4", "--eval", "--resume", str(bare))))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "records no class names" in line]
    assert len(warnings) == 1 and "dog, zebra" in warnings[0]


def test_numbered_folders_are_said_to_sort_as_text():
    """ImageNet-V2's folders 0..999 sort as text (0, 1, 10, 100, ...): the warning and the refusal say so."""
    numbered = sorted(str(i) for i in range(12))
    assert "sort as text" in check_classes("x.pth", {"model": {}}, numbered)
    with pytest.raises(UsageError, match="sort as text"):
        check_classes("x.pth", {"args": {"classes": [f"n{i:08d}" for i in range(12)]}}, numbered)
    assert check_classes("x.pth", {"args": {"classes": numbered}}, numbered) is None


@pytest.mark.parametrize("size,world", [(3, 2), (10, 3), (50000, 7), (2, 4)])
def test_eval_shards_cover_every_item_once(size, world):
    """Every item on exactly one process; every process the same number of items (the repeats past ``real``)."""
    shards = [EvalShard(size, world, rank) for rank in range(world)]
    real = [i for shard in shards for i in list(shard)[:shard.real]]
    assert sorted(real) == list(range(size))
    assert len({len(shard) for shard in shards}) == 1


def _dist_eval(rank: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist_util.init_distributed("cpu")
    stats = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
    if rank == 0:
        Path(out).write_text(json.dumps(stats))
    dist_util.cleanup()


@pytest.mark.slow
def test_dist_eval_counts_each_image_once(trained_on_a_b, tmp_path):
    """3 validation images over 2 processes (the sampler pads one): the metrics are those of one process over the
    3 images, the padded duplicate left out."""
    data = named_classes(tmp_path / "data", ["a", "b"], val_per_class=1)
    (data / "val" / "b" / "1.png").write_bytes((data / "train" / "b" / "1.png").read_bytes())
    argv = tiny_cli_args(data, tmp_path / "run", "--batch_size", "2", "--eval", "--resume", str(trained_on_a_b))
    alone = main_finetune.main(main_finetune.get_args_parser().parse_args(argv))
    mp.spawn(_dist_eval, args=(_free_port(), [*argv, "--dist_eval"], str(tmp_path / "stats.json")), nprocs=2,
             join=True)
    sharded = json.loads((tmp_path / "stats.json").read_text())
    assert sharded == pytest.approx(alone, rel=1e-5)
    assert round(sharded["acc1"] * 3 / 100, 6).is_integer()
