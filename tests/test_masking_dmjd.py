"""DMJD masking: 2x2 block masking and disjoint multi-view masking (docs/methods.md §2.3)."""
import pytest
import torch

from base.errors import UsageError
from golden_rules import load_case
from models.masking import BlockMasking, DisjointMasking, Masks, RandomMasking

CPU = torch.device("cpu")


def draw(masking, n: int = 6, grid_size: tuple[int, int] = (14, 14), seed: int = 0):
    return masking(n, grid_size, CPU, torch.Generator().manual_seed(seed))


def assert_whole_blocks(mask: torch.Tensor, side: int = 14) -> None:
    """Every 2x2 group of patches is entirely masked or entirely visible."""
    grid = mask.reshape(-1, side // 2, 2, side // 2, 2)
    assert (grid.all(dim=(2, 4)) | (~grid).all(dim=(2, 4))).all()


def test_block_masking_counts_and_whole_blocks():
    """int(49 * 0.4) = 19 blocks stay visible: 76 patches, a realised ratio of 61.2% (the floor)."""
    masks = draw(BlockMasking(0.6))
    assert ((~masks.mask).sum(1) == 76).all()
    assert masks.mask.float().mean().item() == pytest.approx(120 / 196)
    assert_whole_blocks(masks.mask)
    assert (~torch.gather(masks.mask, 1, masks.ids_keep)).all()


def test_block_order_is_corner_grouped():
    """ids_keep lists the top-left patches of the kept blocks, then top-right, bottom-left, bottom-right."""
    masks = draw(BlockMasking(0.6), n=2)
    keep = masks.ids_keep.reshape(2, 4, 19)
    row, col = keep // 14, keep % 14
    assert ((row[:, 0] % 2 == 0) & (col[:, 0] % 2 == 0)).all()
    assert torch.equal(keep[:, 1], keep[:, 0] + 1) and torch.equal(keep[:, 2], keep[:, 0] + 14)
    assert torch.equal(keep[:, 3], keep[:, 0] + 15)


@pytest.mark.parametrize("base,visible,overlap", [
    (RandomMasking(0.75), 49, 0), (RandomMasking(0.6), 78, 0), (BlockMasking(0.6), 76, 0),
    (RandomMasking(0.4), 117, 39), (BlockMasking(0.4), 116, 40)])
def test_two_views_official_counts(base, visible, overlap):
    """The verified properties at pred_ratio 1: each view keeps the base count; the two visible sets
    have exactly `overlap` patches in common; the views together predict every patch not visible in both."""
    masks = draw(DisjointMasking(base, pred_ratio=1.0))
    views = masks.view_mask
    assert views.shape == (2, 6, 196) and masks.ids_keep.shape == (12, visible)
    assert ((~views).sum(2) == visible).all()
    assert ((~views[0] & ~views[1]).sum(1) == overlap).all()
    assert ((views[0] | views[1]).sum(1) == 196 - overlap).all()
    if isinstance(base, BlockMasking):
        assert_whole_blocks(masks.mask)


def test_pred_ratio_controls_the_swap():
    """pred_ratio = mask_ratio swaps nothing (both views equal); in between, the overlap shrinks
    by exactly the swapped count int((p - m) * L)."""
    same = draw(DisjointMasking(RandomMasking(0.75), pred_ratio=0.75)).view_mask
    assert torch.equal(same[0], same[1])
    partial = DisjointMasking(RandomMasking(0.75), pred_ratio=0.9)
    views = draw(partial).view_mask
    assert ((~views[0] & ~views[1]).sum(1) == 49 - int((0.9 - 0.75) * 196)).all()
    with pytest.raises(UsageError, match="pred_ratio"):
        DisjointMasking(RandomMasking(0.75), pred_ratio=0.5)


def test_more_views_and_one_view():
    """V = 3: each view masks exactly the ratio, consecutive views are disjoint at m = 0.75; V = 1 is
    the base masking."""
    masks = draw(DisjointMasking(RandomMasking(0.75), num_views=3))
    views = masks.view_mask
    assert views.shape == (3, 6, 196) and ((~views).sum(2) == 49).all()
    assert not (~views[0] & ~views[1]).any() and not (~views[1] & ~views[2]).any()
    single = draw(DisjointMasking(RandomMasking(0.75), num_views=1))
    assert torch.equal(single.mask, draw(RandomMasking(0.75)).mask)


def test_views_follow_the_generator():
    a, b = draw(DisjointMasking(BlockMasking(0.6)), seed=3), draw(DisjointMasking(BlockMasking(0.6)), seed=3)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.ids_keep, b.ids_keep)


@pytest.mark.parametrize("kind,ratio", [("block", 0.6), ("rand", 0.75)])
def test_official_masks_have_the_same_structure(kind, ratio):
    """The official code's masks (golden cases) obey the invariants ours do: counts, whole blocks,
    disjoint views, and (block) the corner-grouped kept-token order."""
    case = load_case(f"dmjd_tiny_{kind}_official")
    views, ids_keep = case["masks"], case["ids_keep"]
    ours = draw(DisjointMasking(BlockMasking(ratio) if kind == "block" else RandomMasking(ratio)), n=2)
    assert views.shape == ours.view_mask.shape and ids_keep.shape == ours.ids_keep.shape
    assert torch.equal((~views).sum(2), (~ours.view_mask).sum(2))
    assert not (~views[0] & ~views[1]).any()
    if kind == "block":
        assert_whole_blocks(views.reshape(-1, 196))
        keep = ids_keep.reshape(ids_keep.shape[0], 4, -1)
        assert torch.equal(keep[:, 1], keep[:, 0] + 1) and torch.equal(keep[:, 3], keep[:, 0] + 15)


def test_disjoint_views_flag():
    """DisjointMasking says its views are disjoint exactly when it can guarantee it (two views, every visible
    unit swapped); masks built from given views are checked."""
    for base in (RandomMasking(0.75), BlockMasking(0.6)):
        masks = draw(DisjointMasking(base))
        assert masks.disjoint_views and not (~masks.view_mask[0] & ~masks.view_mask[1]).any()
    assert not draw(DisjointMasking(RandomMasking(0.75), pred_ratio=0.9)).disjoint_views
    three = draw(DisjointMasking(RandomMasking(0.75), num_views=3))
    assert not three.disjoint_views and (~three.view_mask[0] & ~three.view_mask[2]).any()
    assert not draw(RandomMasking(0.75)).disjoint_views
    two = draw(DisjointMasking(BlockMasking(0.6)))
    assert Masks.from_mask(two.view_mask).disjoint_views
    assert Masks.from_ids_keep(two.ids_keep, 196, num_views=2).disjoint_views
    assert not Masks.from_mask(three.view_mask).disjoint_views
    assert not Masks.from_ids_keep(three.ids_keep, 196, num_views=3).disjoint_views
