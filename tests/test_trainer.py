"""The one training loop (``util.trainer.Trainer.fit``) and the engine contract: which hooks it calls, when, and with
what. A tiny linear model on random tensors: the loop's order, not the learning, is under test."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

import main_pretrain
from util.config import PretrainConfig
from util.session import Session, train_loader
from util.trainer import Engine, EpochEnd, Trainer


class RecordingEngine(Engine):
    """Mean-squared output as the loss; every hook call appended to ``calls``."""

    def __init__(self, calls: list):
        self.calls = calls

    def loss(self, model, batch, device):
        self.calls.append("loss")
        return model(batch[0].to(device)).square().mean(), {}

    def after_step(self, model):
        self.calls.append("after_step")

    def end_epoch(self, trainer, epoch, stats):
        self.calls.append(("end_epoch", epoch, sorted(stats)))
        return EpochEnd({"metric": float(epoch)}, f"metric {epoch}", best=epoch == 0)

    def state_dict(self):
        return {"engine_state": 1}

    def after_save(self, trainer, epoch):
        self.calls.append(("after_save", epoch))

    def end_run(self):
        self.calls.append("end_run")
        return "result"


def make_trainer(tmp_path, *flags: str) -> tuple[Trainer, torch.utils.data.DataLoader]:
    args = main_pretrain.get_args_parser().parse_args(
        ["--device", "cpu", "--num_workers", "0", "--output_dir", str(tmp_path), "--lr", "0.1", *flags])
    cfg = PretrainConfig.from_args(args)
    session = Session(0, 1, torch.device("cpu"), "fp32", None)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    return Trainer(cfg, session, model, torch.optim.SGD(model.parameters(), lr=0.1), 0.1), \
        train_loader(cfg, session, data)


def test_fit_calls_the_engine_hooks_in_their_declared_order(tmp_path, monkeypatch):
    """Per epoch: each batch's loss, ``after_step`` after each optimizer step (accumulating 2 batches), then
    ``end_epoch``, the best and periodic checkpoints with the engine's state, ``after_save`` and the log line;
    ``end_run`` once, whose value ``fit`` returns."""
    trainer, loader = make_trainer(tmp_path, "--batch_size", "2", "--accum_iter", "2", "--epochs", "2",
                                   "--save_freq", "1")
    calls: list = []
    monkeypatch.setattr(trainer, "save", lambda epoch, name=None, **extra: calls.append(("save", epoch, name, extra)))
    monkeypatch.setattr(trainer, "log_epoch", lambda epoch, record, summary: calls.append(("log", epoch, record)))
    assert trainer.fit(RecordingEngine(calls), loader) == "result"
    steps = ["loss", "loss", "after_step"] * 2
    assert calls == [
        *steps, ("end_epoch", 0, ["loss", "lr"]), ("save", 0, "checkpoint-best.pth", {"engine_state": 1}),
        ("save", 0, None, {"engine_state": 1}), ("after_save", 0), ("log", 0, {"metric": 0.0}),
        *steps, ("end_epoch", 1, ["loss", "lr"]), ("save", 1, None, {"engine_state": 1}), ("after_save", 1),
        ("log", 1, {"metric": 1.0}), "end_run"]
    assert trainer.step == 4  # two optimizer steps an epoch


def test_finished_run_calls_only_end_run(tmp_path):
    """A run with no epoch left trains nothing and asks the engine for its result alone."""
    trainer, loader = make_trainer(tmp_path, "--batch_size", "2", "--epochs", "1", "--start_epoch", "1")
    calls: list = []
    assert trainer.fit(RecordingEngine(calls), loader) == "result"
    assert calls == ["end_run"]
