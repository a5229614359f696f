"""What every encoder does the same way: which patches a mask leaves visible, running blocks while keeping
the outputs of some of them, and choosing feature levels for ``forward_features``."""
from typing import Any, Callable, Iterable, Sequence

import torch


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
               read: Callable[[Any], Any] = lambda state: state) -> tuple[Any, dict[int, Any]]:
    """Run ``blocks`` in order, ``state = step(block, state)``; return the last state and
    ``{i: read(state after block i)}`` for every block number i (from 1) in ``return_layers``."""
    layers = {}
    for i, block in enumerate(blocks, start=1):
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
