"""Every registered pretraining recipe's step is free of host syncs and, under torch.compile, of recompiles
after the first step (tiny sizes, CPU)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models import create_model, list_models, tiny_kwargs
from models.mim import MaskedImageModel

PRETRAIN_RECIPES = list_models(task="pretrain")


def build(name: str, tmp_path) -> tuple[MaskedImageModel, torch.Tensor]:
    """The recipe at its registered tiny configuration, and a batch of two images of its size."""
    torch.manual_seed(0)
    kwargs = tiny_kwargs(name, tmp_path)
    model = create_model(name, **kwargs)
    assert isinstance(model, MaskedImageModel)
    size = kwargs["img_size"]
    return model, torch.randn(2, 3, size, size)


class HostSyncCounter(TorchDispatchMode):
    """Counts the ops that make the host wait for the device: reading a scalar (``.item()``, ``bool(t)``,
    ``.tolist()``), data-dependent shapes (``nonzero``, boolean indexing, ``masked_select``)."""

    SYNCING = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
               "aten.is_nonzero.default", "aten.equal.default"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        bool_index = name.startswith("aten.index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else []) or [])
        if name in self.SYNCING or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", PRETRAIN_RECIPES)
def test_training_step_has_no_host_sync(name, tmp_path):
    """Forward (masks drawn on the device, target, heads, losses) and backward read nothing back to the host.
    (The optimizer is not part of this: fused AdamW on a GPU reads nothing either.)"""
    model, imgs = build(name, tmp_path)
    with HostSyncCounter() as counter:
        model(imgs).loss.backward()
    assert counter.seen == [], f"{name}: {counter.seen}"


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAIN_RECIPES)
def test_compiled_steps_do_not_recompile(name, tmp_path):
    """Three compiled training steps (fresh masks each): the graph traced at the first is reused."""
    torch._dynamo.reset()
    model, imgs = build(name, tmp_path)
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for step in range(3):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            loss = compiled(imgs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss)
