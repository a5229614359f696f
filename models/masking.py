"""Masking strategies: who is hidden from the encoder.

Every strategy returns a :class:`Masks` drawn on the device of the batch, batched, from the global RNG
or an explicit ``torch.Generator`` (no per-sample Python). Convention: ``mask`` is bool, True = masked,
in raster order; ``ids_keep`` lists the visible patches in the order the encoder sees them.
"""
import torch

from base.errors import UsageError

from .interfaces import Masks, UnitMasking

__all__ = ["Masks", "RandomMasking", "BlockMasking", "DisjointMasking", "UniformMasking", "compact_order"]


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}{'es' if unit.endswith('ch') else 's'}"


def check_keeps_some(masking: str, ratio: str, value: float, kept: int, units: int, unit: str,
                     grid: tuple[int, int]) -> None:
    """The one check of every masking on a model's patch grid: at least one of its ``units`` (patches, 2x2
    blocks) stays visible. With none the encoder sees nothing, and the losses on visible tokens divide by zero;
    ``kept`` is what the masking keeps at ``ratio`` = ``value``."""
    if kept >= 1:
        return
    fix = f"a {ratio} below {1 - 1 / units:g} or a larger --input_size" if units > 1 else "a larger --input_size"
    raise UsageError(f"{masking} at {ratio} {value:g} keeps none of the {_plural(units, unit)} of a "
                     f"{grid[0]}x{grid[1]} patch grid visible (int({units} x {1 - value:g}) = 0): pass {fix}")


def check_even_grid(masking: str, grid: tuple[int, int]) -> None:
    """Maskings of 2x2 groups of patches need a patch grid of even sides."""
    if grid[0] % 2 or grid[1] % 2:
        raise UsageError(f"{masking} needs an even patch grid, got {grid[0]}x{grid[1]}: pass an --input_size of an "
                         "even number of patches")


def _patches(grid_size: tuple[int, int]) -> int:
    return grid_size[0] * grid_size[1]


class RandomMasking:
    """MAE random masking (docs/methods.md §1.2): keep ``int(L * (1 - ratio))`` patches of lowest noise."""

    def __init__(self, mask_ratio: float = 0.75):
        if not 0.0 <= mask_ratio < 1.0:
            raise UsageError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio

    def num_visible(self, num_patches: int) -> int:
        return int(num_patches * (1 - self.mask_ratio))

    def num_units(self, grid_size: tuple[int, int]) -> int:
        """The masking unit is one patch."""
        return _patches(grid_size)

    def check(self, grid_size: tuple[int, int]) -> None:
        """Refuse (``UsageError``) a ratio that keeps no patch of the model's grid (checked when it is built)."""
        patches = _patches(grid_size)
        check_keeps_some("random masking", "mask_ratio", self.mask_ratio, self.num_visible(patches), patches,
                         "patch", grid_size)

    def units_to_patches(self, order: torch.Tensor, len_keep: int,
                         grid_size: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """An order of units [N, S] (first ``len_keep`` visible) -> the order of patches and their count kept."""
        return order, len_keep

    def __call__(self, batch_size: int, grid_size: tuple[int, int], device: torch.device,
                 generator: torch.Generator | None = None) -> Masks:
        num_patches = _patches(grid_size)
        noise = torch.rand(batch_size, num_patches, device=device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        return Masks.from_shuffle(ids_shuffle, self.num_visible(num_patches))

    def __repr__(self) -> str:
        return f"RandomMasking(mask_ratio={self.mask_ratio})"


def _block_to_patch_order(block_order: torch.Tensor, len_keep: int, grid: tuple[int, int]) -> torch.Tensor:
    """Expand a per-sample order of 2x2 blocks [N, S] into an order of patches [N, 4S]: the top-left
    patches of the kept blocks, then their top-right, bottom-left, bottom-right, then the same four
    groups for the masked blocks (the official DMJD order, docs/methods.md §2.3)."""
    h, w = grid
    row = torch.div(block_order, w // 2, rounding_mode="floor") * 2
    col = (block_order % (w // 2)) * 2
    top_left = row * w + col
    corners = [top_left, top_left + 1, top_left + w, top_left + w + 1]
    kept = [c[:, :len_keep] for c in corners]
    masked = [c[:, len_keep:] for c in corners]
    return torch.cat(kept + masked, dim=1)


class BlockMasking:
    """Random masking of whole 2x2 groups of patches (32x32 pixels at patch 16), as DMJD/ConvMAE:
    ``int(S * (1 - ratio))`` of the S = L/4 blocks stay visible, so the realised ratio can be a little
    above ``mask_ratio`` (61.2% at 0.6 on 14x14 patches)."""

    def __init__(self, mask_ratio: float = 0.6):
        if not 0.0 <= mask_ratio < 1.0:
            raise UsageError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio

    def num_visible(self, num_patches: int) -> int:
        return 4 * int(num_patches // 4 * (1 - self.mask_ratio))

    def num_units(self, grid_size: tuple[int, int]) -> int:
        """The masking unit is a 2x2 block of patches."""
        return _patches(grid_size) // 4

    def check(self, grid_size: tuple[int, int]) -> None:
        """Refuse an odd grid, and a ratio that keeps no 2x2 block of it."""
        check_even_grid("block masking", grid_size)
        patches = _patches(grid_size)
        check_keeps_some("block masking", "mask_ratio", self.mask_ratio, self.num_visible(patches) // 4,
                         patches // 4, "2x2 block", grid_size)

    def units_to_patches(self, order: torch.Tensor, len_keep: int,
                         grid_size: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """An order of blocks [N, S] (first ``len_keep`` visible) -> the official order of patches [N, 4S]
        and the number of patches kept."""
        if grid_size[0] % 2 or grid_size[1] % 2:
            raise ValueError(f"block masking needs an even patch grid, got {grid_size}")
        return _block_to_patch_order(order, len_keep, grid_size), 4 * len_keep

    def __call__(self, batch_size: int, grid_size: tuple[int, int], device: torch.device,
                 generator: torch.Generator | None = None) -> Masks:
        noise = torch.rand(batch_size, self.num_units(grid_size), device=device, generator=generator)
        order, len_keep = self.units_to_patches(torch.argsort(noise, dim=1),
                                                self.num_visible(_patches(grid_size)) // 4, grid_size)
        return Masks.from_shuffle(order, len_keep)

    def __repr__(self) -> str:
        return f"BlockMasking(mask_ratio={self.mask_ratio})"


class DisjointMasking:
    """DMJD's disjoint multi-view masking (docs/methods.md §2.3) over any masking of units
    (:class:`~models.interfaces.UnitMasking`: a patch for random, a 2x2 block for block masking).

    View 1 is the base masking. Each later view keeps the same number of visible units (patches, or
    blocks) but swaps ``int(min(pred_ratio - mask_ratio, mask_ratio) * S)`` of them with the previous
    view: that many of its visible units become masked and as many of its masked units become visible.
    With pred_ratio 1 and mask_ratio >= 0.5 the visible sets of two views are disjoint (``disjoint_views``)
    and together the views predict every patch. The two random permutations of a step are shared across the batch, as
    officially (the id lists are already in random order per sample). For V > 2 each view is derived
    from the one before by the same rule.
    """

    def __init__(self, base: UnitMasking, pred_ratio: float = 1.0, num_views: int = 2):
        if num_views < 1:
            raise UsageError(f"num_views must be >= 1, got {num_views}")
        if not base.mask_ratio <= pred_ratio <= 1.0:
            raise UsageError(f"pred_ratio must be in [mask_ratio, 1] = [{base.mask_ratio}, 1], got {pred_ratio}")
        self.base, self.pred_ratio, self.num_views = base, pred_ratio, num_views
        self.mask_ratio = base.mask_ratio

    def num_swapped(self, units: int) -> int:
        return int(min(self.pred_ratio - self.mask_ratio, self.mask_ratio) * units)

    def check(self, grid_size: tuple[int, int]) -> None:
        """The base masking's check, and views that differ when ``pred_ratio`` asks for more than one view's
        masked units: a grid too small to swap a unit would give V copies of one view."""
        self.base.check(grid_size)
        units = self.base.num_units(grid_size)
        if self.num_views > 1 and self.pred_ratio > self.mask_ratio and self.num_swapped(units) == 0:
            unit = "2x2 block" if isinstance(self.base, BlockMasking) else "patch"
            share = min(self.pred_ratio - self.mask_ratio, self.mask_ratio)
            raise UsageError(f"{self.num_views} views at mask_ratio {self.mask_ratio:g} and pred_ratio "
                             f"{self.pred_ratio:g} swap int({units} x {share:g}) = 0 of the {_plural(units, unit)} "
                             "between views, so every view is the same: pass a larger pred_ratio or --input_size")

    def __call__(self, batch_size: int, grid_size: tuple[int, int], device: torch.device,
                 generator: torch.Generator | None = None) -> Masks:
        units = self.base.num_units(grid_size)
        len_keep = int(units * (1 - self.mask_ratio))
        swapped = self.num_swapped(units)
        order = torch.argsort(torch.rand(batch_size, units, device=device, generator=generator), dim=1)
        orders = [order]
        for _ in range(self.num_views - 1):
            order = self._next_view(order, len_keep, swapped, generator)
            orders.append(order)
        # two views are disjoint when every visible unit of the first is swapped; a third view may take
        # back units the first one saw
        disjoint = self.num_views == 2 and swapped == len_keep
        order, len_keep = self.base.units_to_patches(torch.cat(orders, dim=0), len_keep, grid_size)
        return Masks.from_shuffle(order, len_keep, self.num_views, disjoint_views=disjoint)

    @staticmethod
    def _next_view(order: torch.Tensor, len_keep: int, swapped: int,
                   generator: torch.Generator | None) -> torch.Tensor:
        """order: [N, S] (first len_keep visible) -> the next view's order [N, S]."""
        visible, masked = order[:, :len_keep], order[:, len_keep:]
        perm_vis = torch.randperm(len_keep, device=order.device, generator=generator)
        perm_mask = torch.randperm(masked.shape[1], device=order.device, generator=generator)
        stay_masked = masked.shape[1] - swapped
        return torch.cat([visible[:, perm_vis[swapped:]], masked[:, perm_mask[stay_masked:]],
                          visible[:, perm_vis[:swapped]], masked[:, perm_mask[:stay_masked]]], dim=1)

    def __repr__(self) -> str:
        return f"DisjointMasking({self.base!r}, pred_ratio={self.pred_ratio}, num_views={self.num_views})"


def compact_order(ids_keep: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """The raster order of UM-MAE's compact grid: ids_keep [N, L/4] (one visible patch per 2x2 group, any
    order) -> the same ids sorted by group, groups in raster order. The one-per-group rule is checked on the
    device, without a host sync (on a GPU a violation fails at the next synchronization)."""
    gh, gw = grid_size
    if gh % 2 or gw % 2 or ids_keep.shape[1] * 4 != gh * gw:
        raise ValueError(f"the compact grid needs one visible patch per 2x2 group of an even {gh}x{gw} grid "
                         f"({gh * gw // 4} per sample), got {ids_keep.shape[1]}")
    group = torch.div(ids_keep, 2 * gw, rounding_mode="floor") * (gw // 2) + (ids_keep % gw) // 2
    group, order = torch.sort(group, dim=1)
    torch._assert_async((group == torch.arange(group.shape[1], device=group.device)).all(),
                        "the compact grid needs exactly one visible patch in every 2x2 group (uniform masking)")
    return torch.gather(ids_keep, 1, order)


class UniformMasking:
    """UM-MAE's uniform sampling (docs/methods.md §4.1) + secondary masking (§4.2), batched on the device.

    Exactly one visible patch per 2x2 group (mask ratio 0.75). As officially, the kept corner of each group
    is drawn without replacement from a balanced pool holding each of the 4 corners equally often, L/2
    entries in all (so the corners are not i.i.d. per group). ``ids_keep`` lists the visible patches group
    by group in raster order of the groups: the raster order of the compact grid of pyramid encoders.
    With ``vis_mask_ratio`` r, all but ``int(K * (1 - r))`` of the K visible patches of every sample are
    drawn at random as ``secondary`` (16 of 64 at 256 px and r = 0.25).
    """

    mask_ratio = 0.75

    def __init__(self, vis_mask_ratio: float = 0.0):
        if not 0.0 <= vis_mask_ratio < 1.0:
            raise UsageError(f"vis_mask_ratio must be in [0, 1), got {vis_mask_ratio}")
        self.vis_mask_ratio = vis_mask_ratio

    def check(self, grid_size: tuple[int, int]) -> None:
        """Refuse an odd grid, and a secondary ratio that hides every visible patch of it."""
        check_even_grid("uniform masking", grid_size)
        groups = grid_size[0] * grid_size[1] // 4
        check_keeps_some("secondary masking", "vis_mask_ratio", self.vis_mask_ratio,
                         int(groups * (1 - self.vis_mask_ratio)), groups, "visible patch", grid_size)

    def __call__(self, batch_size: int, grid_size: tuple[int, int], device: torch.device,
                 generator: torch.Generator | None = None) -> Masks:
        h, w = grid_size
        if h % 2 or w % 2:
            raise ValueError(f"uniform masking needs an even patch grid, got {(h, w)}")
        num_patches = h * w
        groups = num_patches // 4
        # the pool [0, 1, 2, 3, 0, 1, ...] of >= L/2 entries, shuffled per sample; its first `groups`
        # entries give the groups their kept corners
        pool = torch.arange(4 * -(-num_patches // 8), device=device) % 4
        perm = torch.argsort(torch.rand(batch_size, pool.numel(), device=device, generator=generator), dim=1)
        corner = pool[perm[:, :groups]]
        g = torch.arange(groups, device=device)
        row = torch.div(g, w // 2, rounding_mode="floor") * 2 + torch.div(corner, 2, rounding_mode="floor")
        col = (g % (w // 2)) * 2 + corner % 2
        ids_keep = row * w + col
        masks = Masks.from_ids_keep(ids_keep, num_patches)
        if self.vis_mask_ratio > 0:
            keep = int(groups * (1 - self.vis_mask_ratio))
            order = torch.argsort(torch.rand(batch_size, groups, device=device, generator=generator), dim=1)
            hidden = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=device)
            hidden.scatter_(1, torch.gather(ids_keep, 1, order[:, keep:]), True)
            masks.secondary = hidden
        return masks

    def __repr__(self) -> str:
        return f"UniformMasking(vis_mask_ratio={self.vis_mask_ratio})"
