"""Flat state-dict keys for composed modules.

Composed models hold their parts as children (``encoder``, ``heads.<name>``), but official checkpoints
name every weight without such prefixes. A module using :class:`FlatKeys` drops the listed prefixes on
save and puts them back on load, so it reads and writes official checkpoints with ``strict=True``.
Components must use distinct parameter names (the official ones already do); a clash is refused.
A rule may also append a suffix to the first name component, for official checkpoints that number
repeated components (DeepMIM: ``heads.ds6.decoder_embed.weight`` <-> ``decoder_embed1.weight``).
"""
from torch import nn


class FlatKeys:
    """Mixin for an ``nn.Module``: call ``self.flatten_keys(prefixes)`` at the end of ``__init__``."""

    def flatten_keys(self, prefixes: list[str | tuple[str, str]]) -> None:
        """prefixes: module-path prefixes to drop, each a string or a (prefix, suffix) pair."""
        self._flat_rules = [(p, "") if isinstance(p, str) else tuple(p) for p in prefixes]
        self._to_full: dict[str, str] = {}
        for key in nn.Module.state_dict(self):
            flat = self.flat_key(key)
            if flat in self._to_full:
                raise ValueError(f"two components define the state-dict key {flat!r}: "
                                 f"{self._to_full[flat]} and {key}")
            self._to_full[flat] = key
        self.register_state_dict_post_hook(_flatten)
        self.register_load_state_dict_pre_hook(_unflatten)

    def flat_key(self, key: str) -> str:
        """The saved name of the module path ``key`` (e.g. ``encoder.blocks.0.x`` -> ``blocks.0.x``)."""
        for prefix, suffix in self._flat_rules:
            if key.startswith(prefix):
                first, dot, rest = key[len(prefix):].partition(".")
                return first + suffix + dot + rest
        return key


def _flatten(module: FlatKeys, state_dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        flat = prefix + module.flat_key(key[len(prefix):])
        if flat != key:
            state_dict[flat] = state_dict.pop(key)


def _unflatten(module: FlatKeys, state_dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        full = module._to_full.get(key[len(prefix):])
        if full is not None and prefix + full != key:
            state_dict[prefix + full] = state_dict.pop(key)
