"""torch.compile that falls back to eager: a model the compiler cannot handle (a missing C compiler, an unsupported
op, an inductor bug) trains uncompiled, with one warning, instead of ending the run."""
import warnings
from typing import Any, Callable

import torch
from torch import nn


class CompiledOrEager(nn.Module):
    """Calls ``torch.compile(module, backend=backend)``; when a call raises, runs ``module`` eagerly on the same
    inputs: if that succeeds the failure was the compiler's, so it warns once and stays eager from then on; if
    it fails too, the error is the model's and is raised as such.

    Compilation is lazy (at the first call, and again when a guard fails: train/eval, a new shape), so this is
    where its failures surface. One compiled by inductor whose backward graph fails to compile fails in
    ``backward()``, outside this wrapper. ``module`` is a registered submodule (``parameters()``, ``train()``,
    ``state_dict()`` in its order) and its other attributes (DDP's ``no_sync``) are reachable as this one's.
    """

    def __init__(self, module: nn.Module, backend: str | Callable = "inductor"):
        super().__init__()
        self.module = module
        # not a submodule: the compiled wrapper shares module's parameters and must not list them twice
        object.__setattr__(self, "compiled", torch.compile(module, backend=backend))

    @property
    def is_compiled(self) -> bool:
        """False once a compile failure switched this wrapper to eager."""
        return self.compiled is not None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (compiler errors have no common base class)
            failure = err
        out = self.module(*args, **kwargs)  # the model's own error, if any, is raised here
        object.__setattr__(self, "compiled", None)
        message = " ".join(str(failure).split())  # dynamo's messages span lines: the cause comes second
        warnings.warn(f"torch.compile failed ({type(failure).__name__}: {message[:300]}); training continues "
                      "without it (pass --no_compile to skip the attempt)", RuntimeWarning, stacklevel=2)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)
