"""torch.compile by default on CUDA (``--compile`` / ``--no_compile``), and its fallback to eager: a compiler failure
warns once and training goes on uncompiled; a genuine model error is still raised."""
import warnings

import pytest
import torch
from torch import nn

import main_finetune
import main_linprobe
import main_pretrain
from util.config import PretrainConfig
from util.session import Session
from util.trainer import CompiledOrEager, Trainer


def failing_backend(graph_module, example_inputs):
    """A torch.compile backend that fails at compile time, as a compiler lacking something would."""
    raise RuntimeError("this backend cannot compile anything")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).relu() * self.scale


def test_compiler_failure_falls_back_to_eager_with_one_warning():
    torch._dynamo.reset()
    torch.manual_seed(0)
    net, x = Net(), torch.randn(5, 4)
    expected = net(x)
    model = CompiledOrEager(net, backend=failing_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*cannot compile anything.*--no_compile") as seen:
        out = model(x)
    assert len(seen) == 1 and not model.is_compiled
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()  # the eager output trains the module's own parameters
    assert net.fc.weight.grad is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(model(2 * x), net(2 * x), rtol=0, atol=0)


def test_genuine_model_error_is_raised_not_hidden():
    """An input the model itself rejects fails compiled and eager alike: the model's error, no warning."""
    torch._dynamo.reset()
    model = CompiledOrEager(Net(), backend=failing_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            model(torch.randn(5, 7))
    assert model.is_compiled  # not the compiler's fault: it is tried again


def test_working_compile_is_used_and_wraps_transparently():
    torch._dynamo.reset()
    calls = []

    def counting_backend(graph_module, example_inputs):
        calls.append(1)
        return graph_module.forward

    net, x = Net(), torch.randn(5, 4)
    model = CompiledOrEager(net, backend=counting_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)
    assert calls == [1] and model.is_compiled
    assert list(model.parameters()) == list(net.parameters())  # once each: the optimizer's, clipping's view
    assert list(model.state_dict().values())[0] is not None and len(model.state_dict()) == len(net.state_dict())
    assert model.scale == 2.0  # the module's attributes (DDP's no_sync) are reachable
    model.eval()
    assert not net.training


def config(*flags: str) -> PretrainConfig:
    return PretrainConfig.from_args(main_pretrain.get_args_parser().parse_args(list(flags)))


@pytest.mark.parametrize("cli", [main_pretrain, main_finetune, main_linprobe])
def test_compile_defaults_to_the_device(cli, monkeypatch):
    """On by default on CUDA (asked for, or found), off on the CPU; --compile and --no_compile decide."""
    assert cli.get_args_parser().parse_args([]).compile is None
    assert config("--device", "cuda").compile is True
    assert config("--device", "cpu").compile is False
    assert config("--device", "cuda", "--no_compile").compile is False
    assert config("--device", "cpu", "--compile").compile is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config().compile is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config().compile is False


def test_trainer_wraps_in_the_fallback_only_when_compiling(tmp_path):
    session = Session(0, 1, torch.device("cpu"), "fp32", None)
    net = Net()
    for flags, wrapped in ((["--compile"], True), ([], False)):
        cfg = config("--device", "cpu", "--output_dir", str(tmp_path), *flags)
        trainer = Trainer(cfg, session, net, torch.optim.SGD(net.parameters(), lr=0.1), 0.1)
        model = trainer.wrapped()
        assert isinstance(model, CompiledOrEager) is wrapped and (model.module if wrapped else model) is net
