"""What every encoder does the same way: which patches a mask leaves visible, running blocks while keeping
the outputs of some of them (optionally under activation checkpointing), and choosing feature levels for
``forward_features``."""
from typing import Any, Callable, Container, Iterable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

GRAD_CKPT_MODES = ("none", "stage1", "all")


def patch_visibility(ids_keep: torch.Tensor, grid_size: tuple[int, int], cells_per_patch: int = 1) -> torch.Tensor:
    """ids_keep [N, K] visible patches of the (gh, gw) grid -> [N, gh * k, gw * k] bool (True = visible), each
    patch spread over its k x k cells (k = ``cells_per_patch``; 1 gives the patch grid itself)."""
    gh, gw = grid_size
    k = cells_per_patch
    visible = torch.zeros(ids_keep.shape[0], gh * gw, dtype=torch.bool, device=ids_keep.device)
    visible = visible.scatter_(1, ids_keep, True).reshape(-1, gh, 1, gw, 1)
    return visible.expand(-1, -1, k, -1, k).reshape(-1, gh * k, gw * k)


def run_blocks(blocks: Iterable[Callable], state: Any, return_layers: Sequence[int] = (),
               step: Callable[[Callable, Any], Any] = lambda block, state: block(state),
               read: Callable[[Any], Any] = lambda state: state,
               checkpointed: Container[int] = ()) -> tuple[Any, dict[int, Any]]:
    """Run ``blocks`` in order, ``state = step(block, state)``; return the last state and
    ``{i: read(state after block i)}`` for every block number i (from 1) in ``return_layers``.

    The blocks numbered in ``checkpointed`` keep only their input for backward and run again during it
    (non-reentrant ``torch.utils.checkpoint``, which replays the RNG: DropPath draws the same)."""
    layers = {}
    for i, block in enumerate(blocks, start=1):
        if i in checkpointed:
            state = checkpoint(step, block, state, use_reentrant=False)
        else:
            state = step(block, state)
        if i in return_layers:
            layers[i] = read(state)
    return state, layers


def feature_indices(indices: Sequence[int] | None, count: int) -> list[int]:
    """Feature levels from 0 (negative counts from the end; None = all ``count``), checked and sorted."""
    if indices is None:
        return list(range(count))
    chosen = sorted({i % count if -count <= i < count else count for i in indices})
    if not chosen or chosen[-1] >= count:
        raise ValueError(f"feature indices must lie in [-{count}, {count - 1}], got {list(indices)}")
    return chosen


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[N, h * w, C] tokens in raster order -> [N, C, h, w]."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class GradCheckpointing:
    """Selective activation checkpointing for an encoder (mixed into its ``nn.Module``), set by
    :meth:`set_grad_checkpointing`: ``"none"``, ``"stage1"`` (the blocks of the first, highest-resolution stage,
    which hold most of a pyramid encoder's activations; a plain ViT counts its first quarter of blocks as
    stage 1) or ``"all"`` blocks. It applies only while training with gradients enabled; the numerics are
    unchanged, backward recomputes the checkpointed blocks' forward."""

    grad_ckpt: str = "none"

    def set_grad_checkpointing(self, mode: str | bool = "all") -> None:
        """``mode``: one of ``GRAD_CKPT_MODES``; ``True``/``False`` mean ``"all"``/``"none"`` (timm's switch)."""
        if isinstance(mode, bool):
            mode = "all" if mode else "none"
        if mode not in GRAD_CKPT_MODES:
            raise ValueError(f"grad checkpointing mode must be one of {', '.join(GRAD_CKPT_MODES)}, got {mode!r}")
        self.grad_ckpt = mode

    def checkpointed_blocks(self, stage1: int, count: int) -> range:
        """The block numbers (from 1) of a run of ``count`` blocks, the first ``stage1`` of them in stage 1, that
        run under checkpointing now (for ``run_blocks``)."""
        if self.grad_ckpt == "none" or not (self.training and torch.is_grad_enabled()):
            return range(0)
        return range(1, (min(stage1, count) if self.grad_ckpt == "stage1" else count) + 1)
