"""--fsdp (FSDP2 over 2 gloo processes on the CPU): the same losses and weights as DDP, pretraining and
fine-tuning (accumulation and clipping on); DCP checkpoint folders resumed exactly, converted to the plain
format and fine-tuned from; frozen teachers left whole; the refusals; the safe reading of a folder."""
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

import main_finetune
import main_pretrain
from base.errors import UsageError
from base.images import IMAGENET_MEAN, IMAGENET_STD
from base.safe_load import load_file
from conftest import make_image_folder
from models.encoders.vit import VisionTransformer
from models.heads import MAEDecoder
from models.losses import PatchLoss
from models.masking import RandomMasking
from models.mim import Branch, MaskedImageModel
from models.targets import FrozenTeacherTarget
from util import distributed as dist_util
from util.checkpoint import save_checkpoint
from util.fsdp import _tidy, check_usable, read_sharded, resume_sharded, shard_model, sharded_to_plain

ROOT = Path(__file__).resolve().parents[1]
TINY_MAE = ["embed_dim=32", "depth=2", "num_heads=2", "patch_size=8", "decoder_embed_dim=32", "decoder_depth=1",
            "decoder_num_heads=2"]
# accumulation (no_sync / set_requires_gradient_sync) and clipping (DTensor gradients) both exercised
COMMON = ["--input_size", "32", "--batch_size", "4", "--accum_iter", "2", "--clip_grad", "0.5", "--epochs", "2",
          "--warmup_epochs", "1", "--num_workers", "0", "--device", "cpu", "--print_freq", "100", "--seed", "3"]


def pretrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "mae_vit_tiny_patch16", "--model_kwargs", *TINY_MAE, "--data_path", str(data),
            "--lr", "1e-3", "--vis_freq", "1", "--save_freq", "1", "--output_dir", str(out), *COMMON, *extra]


def finetune_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "vit_tiny_patch16", "--model_kwargs", *TINY_MAE[:4], "--data_path", str(data),
            "--lr", "1e-3", "--save_freq", "1", "--output_dir", str(out), *COMMON, *extra]


def _runs(rank: int, port: int, data: Path, out: Path) -> None:
    """Every run the tests read, in one pair of processes: pretraining under DDP and --fsdp, --fsdp resumed
    from the first epoch's folder, fine-tuning under DDP and --fsdp from that folder converted to a .pth."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist_util.init_distributed("cpu")
    parse = main_pretrain.get_args_parser().parse_args
    main_pretrain.main(parse(pretrain_argv(data, out / "ddp")))
    main_pretrain.main(parse(pretrain_argv(data, out / "fsdp", "--fsdp")))
    if rank == 0:  # the run killed after its first epoch
        (out / "resumed").mkdir()
        shutil.copytree(out / "fsdp" / "checkpoint-0.dcp", out / "resumed" / "checkpoint-0.dcp")
        save_checkpoint(str(out / "pretrained.pth"), sharded_to_plain(str(out / "fsdp" / "checkpoint-1.dcp")))
    dist_util.barrier()
    main_pretrain.main(parse(pretrain_argv(data, out / "resumed", "--fsdp", "--auto_resume")))
    parse = main_finetune.get_args_parser().parse_args
    for name, extra in (("ft_ddp", ()), ("ft_fsdp", ("--fsdp",))):
        main_finetune.main(parse(finetune_argv(data, out / name, "--finetune", str(out / "pretrained.pth"), *extra)))
    teacher_report = _train_with_frozen_teacher()
    if rank == 0:
        (out / "teacher.json").write_text(json.dumps(teacher_report))
    dist_util.cleanup()


def _train_with_frozen_teacher() -> dict:
    """One sharded step of a MIM model whose target is a frozen teacher (DMJD's, DeepMIM's kind): what became
    of the teacher's weights."""
    torch.manual_seed(0)
    teacher = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=1,
                                                               num_heads=2, num_classes=0, global_pool="")
    target = FrozenTeacherTarget(teacher, IMAGENET_MEAN, IMAGENET_STD, out_dim=24)
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    decoder = MAEDecoder(encoder.grid_size, encoder.embed_dim, 24, 16, 1, 2)
    model = MaskedImageModel(encoder, RandomMasking(0.75), target, {"mim": Branch(decoder, PatchLoss("cosine"))})
    before = [p.clone() for p in teacher.parameters()]
    shard_model(model, torch.device("cpu"), None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 3, 32, 32)).loss.backward()
    optimizer.step()
    return {"sharded_student": all(isinstance(p, DTensor) for p in model.parameters()),
            "plain_teacher": not any(isinstance(p, DTensor) for p in teacher.parameters()),
            "teacher_grads": [p.grad is not None or p.requires_grad for p in teacher.parameters()].count(True),
            "teacher_unchanged": all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    data = make_image_folder(root / "data", num_classes=3, per_class=16, size=32)
    make_image_folder(root / "data", num_classes=3, per_class=4, size=32, split="val", seed=1)
    mp.spawn(_runs, args=(_free_port(), data, root), nprocs=2, join=True)
    return root


def losses(out: Path) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (out / "log.txt").read_text().splitlines()]


def plain(path: Path) -> dict:
    return sharded_to_plain(str(path)) if path.is_dir() else load_file(str(path))


def assert_close_states(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if exact:
            assert torch.equal(x, y), key
            continue
        if key.endswith("attn.qkv.bias") or key == "attn.qkv.bias":
            # the key bias's gradient is zero up to rounding (softmax ignores a shift shared by all keys) and
            # Adam scales that noise into steps: the two runs agree only that it stays at noise level
            third = len(x) // 3
            assert x[third:2 * third].abs().max() < 1e-4 and y[third:2 * third].abs().max() < 1e-4, key
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_pretraining_matches_ddp(runs):
    """Two epochs of a tiny MAE under --fsdp: the losses and the weights of DDP's run, after each epoch; the
    folder converts to DDP's plain format (same keys, optimizer numbering and shapes, training state)."""
    assert losses(runs / "fsdp") == pytest.approx(losses(runs / "ddp"), abs=1e-6)
    for epoch in (0, 1):
        ddp, fsdp = plain(runs / "ddp" / f"checkpoint-{epoch}.pth"), plain(runs / "fsdp" / f"checkpoint-{epoch}.dcp")
        assert_close_states(ddp["model"], fsdp["model"])
        assert ddp["optimizer"]["param_groups"] == fsdp["optimizer"]["param_groups"]
        for index, state in ddp["optimizer"]["state"].items():
            assert_close_states(state, fsdp["optimizer"]["state"][index])
        assert (fsdp["epoch"], fsdp["step"], fsdp["world_size"]) == (ddp["epoch"], ddp["step"], 2)
        assert fsdp["args"]["fsdp"] and not ddp["args"]["fsdp"]
    assert (runs / "fsdp" / "reconstruction-0001.png").is_file()
    assert not [p for p in (runs / "fsdp").iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.slow
def test_resume_is_exact(runs):
    """--auto_resume from the first epoch's folder ends with the uninterrupted run's loss and weights."""
    assert [r["epoch"] for r in map(json.loads, (runs / "resumed" / "log.txt").read_text().splitlines())] == [1]
    assert losses(runs / "resumed") == losses(runs / "fsdp")[1:]
    assert_close_states(plain(runs / "resumed" / "checkpoint-1.dcp")["model"],
                        plain(runs / "fsdp" / "checkpoint-1.dcp")["model"], exact=True)


@pytest.mark.slow
def test_finetuning_from_converted_checkpoint_matches_ddp(runs):
    """--finetune reads the converted .pth (its encoder weights, loaded before sharding); the fine-tuning under
    --fsdp matches DDP's, evaluation included, and keeps its best checkpoint as a folder."""
    assert losses(runs / "ft_fsdp") == pytest.approx(losses(runs / "ft_ddp"), abs=1e-6)
    records = [[json.loads(line) for line in (runs / name / "log.txt").read_text().splitlines()]
               for name in ("ft_ddp", "ft_fsdp")]
    assert [r["test_loss"] for r in records[1]] == pytest.approx([r["test_loss"] for r in records[0]], abs=1e-6)
    assert_close_states(plain(runs / "ft_ddp" / "checkpoint-1.pth")["model"],
                        plain(runs / "ft_fsdp" / "checkpoint-1.dcp")["model"])
    assert (runs / "ft_fsdp" / "checkpoint-best.dcp").is_dir()
    pretrained = load_file(str(runs / "pretrained.pth"))["model"]
    assert "blocks.0.attn.qkv.weight" in pretrained and "decoder_embed.weight" in pretrained


@pytest.mark.slow
def test_frozen_teacher_stays_a_whole_replica(runs):
    """A frozen teacher is no registered submodule: the student is sharded, the teacher stays whole on every
    process, without gradients, unchanged by the step."""
    assert json.loads((runs / "teacher.json").read_text()) == {
        "sharded_student": True, "plain_teacher": True, "teacher_grads": 0, "teacher_unchanged": True}


@pytest.mark.slow
def test_conversion_tool_writes_a_resumable_plain_checkpoint(runs, tmp_path):
    """tools/dcp_to_plain.py writes the plain checkpoint a run without --fsdp resumes from."""
    out = tmp_path / "converted.pth"
    result = subprocess.run([sys.executable, "tools/dcp_to_plain.py", str(runs / "fsdp" / "checkpoint-0.dcp"),
                             str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "50 weights, epoch 0" in result.stdout
    assert_close_states(load_file(str(out))["model"], plain(runs / "fsdp" / "checkpoint-0.dcp")["model"], exact=True)
    assert_close_states(load_file(str(out))["model"], plain(runs / "ddp" / "checkpoint-0.pth")["model"])
    # one process without --fsdp goes on from it (the world size changed: the RNG states stay as seeded)
    again = tmp_path / "again"
    main_pretrain.main(main_pretrain.get_args_parser().parse_args(
        pretrain_argv(runs / "data", again, "--resume", str(out), "--accum_iter", "1", "--batch_size", "8")))
    assert [json.loads(line)["epoch"] for line in (again / "log.txt").read_text().splitlines()] == [1]
    assert load_file(str(again / "checkpoint-1.pth"))["step"] == 3 + 6  # 3 steps of 2 x 4 x 2, then 6 of 8


@pytest.mark.slow
def test_folder_given_where_a_file_is_expected_is_one_line(runs):
    with pytest.raises(UsageError, match="folder --fsdp wrote: resume it with --fsdp, or convert it"):
        load_file(str(runs / "fsdp" / "checkpoint-1.dcp"))


@pytest.mark.slow
def test_crafted_metadata_is_not_unpickled(runs, tmp_path):
    """DCP's .metadata is a pickle: one naming anything but DCP's metadata classes is refused, not run."""
    folder = tmp_path / "crafted.dcp"
    shutil.copytree(runs / "fsdp" / "checkpoint-1.dcp", folder)
    marker = tmp_path / "ran"
    (folder / ".metadata").write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(UsageError, match="not DCP.s.*system is not DCP metadata"):
        read_sharded(str(folder))
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("world_size,amp,ema,expected", [
    (1, "fp32", False, "this run has one: launch it with torchrun"),
    (2, "fp16", False, "does not take --amp fp16"),
    (2, "bf16", True, "--model_ema keeps a whole copy"),
])
def test_refusals(world_size, amp, ema, expected):
    with pytest.raises(UsageError, match=expected):
        check_usable(world_size, amp, ema)
    check_usable(2, "bf16")


def test_single_process_fsdp_is_one_line(tmp_path):
    """A plain ``python main_pretrain.py --fsdp`` is refused before any model or data exists."""
    args = main_pretrain.get_args_parser().parse_args(pretrain_argv(tmp_path / "none", tmp_path / "out", "--fsdp"))
    with pytest.raises(UsageError, match="--fsdp shards the model over the processes"):
        main_pretrain.main(args)


def test_a_killed_save_is_tidied_at_the_next(tmp_path):
    """The next save removes a killed save's temp folder and puts back a folder moved aside for a swap that never
    ended (or drops it when the swap did)."""
    for name in (".tmp-checkpoint-1.dcp", ".old-checkpoint-2.dcp", ".old-checkpoint-3.dcp", "checkpoint-3.dcp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "marker").write_text(name)
    _tidy(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2.dcp", "checkpoint-3.dcp"]
    assert (tmp_path / "checkpoint-2.dcp" / "marker").read_text() == ".old-checkpoint-2.dcp"
    assert (tmp_path / "checkpoint-3.dcp" / "marker").read_text() == "checkpoint-3.dcp"


def test_plain_file_given_to_fsdp_resume_is_one_line(tmp_path):
    path = tmp_path / "checkpoint-3.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(UsageError, match="plain checkpoint and --fsdp resumes checkpoint-<epoch>.dcp folders"):
        resume_sharded(str(path), [], torch.nn.Linear(2, 2), None)
