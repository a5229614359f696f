"""The official golden cases (tests/golden/, format compact-golden/1), rebuilt through the public API only
(golden_rules.rebuild): ``create_model`` with the case's tiny configuration, ``load_pretrained`` of the rule-2
weights under the official key names, the official masks as ``Masks``, ``official_quirks`` where the case is
the official behaviour. Every stored loss term and every stored fingerprint is compared at the tolerances of
tests/golden/README.md."""
import pytest
import torch

from golden_rules import (CASES, FAMILIES, assert_fingerprint, assert_loss, family, fingerprint_deviation,
                          load_case, rebuild, run_case)


@pytest.mark.parametrize("name", CASES)
def test_case_reproduces_the_official_run(name, tmp_path):
    """Every loss term within 1e-5 relative and every fingerprint within its tolerance of the official run."""
    case, model, imgs, masks = rebuild(name, tmp_path)
    losses, tensors = run_case(case, model, imgs, masks)
    assert set(losses) == set(case["losses"]) and set(tensors) == set(case["fingerprints"])
    for key, ref in case["losses"].items():
        assert_loss(losses[key], ref, f"{name} {key}")
    for key, ref in case["fingerprints"].items():
        assert_fingerprint(tensors[key], ref, f"{name} {key}")


def test_all_ten_cases_are_present():
    """The ten official cases travel with the tests."""
    assert len(CASES) == 10 and {family(load_case(n)) for n in CASES} == set(FAMILIES)


@pytest.mark.parametrize("name,key", [("ummae_swin_tiny", "patch_embed.proj.weight"),
                                      ("mae_tiny_normpix1", "patch_embed.proj.weight"),
                                      ("dmjd_tiny_rand_fixed", "patch_embed1.proj.weight")])
def test_fingerprints_see_a_one_percent_weight_change(name, key, tmp_path):
    """Scaling one early encoder weight by 1.01 breaks the fingerprint check: the tolerance is meaningful."""
    case, model, imgs, masks = rebuild(name, tmp_path)
    with torch.no_grad():
        model.state_dict()[key].mul_(1.01)
    _, tensors = run_case(case, model, imgs, masks)
    with pytest.raises(AssertionError, match="fingerprint off"):
        assert_fingerprint(tensors["pred"], case["fingerprints"]["pred"])


@pytest.mark.parametrize("name", ["dmjd_tiny_block_official", "dmjd_tiny_rand_official"])
def test_dmjd_official_cases_need_the_quirk(name, tmp_path):
    """Without official_quirks the visible-branch loss leaves the official one; the masked branch does not."""
    case, model, imgs, masks = rebuild(name, tmp_path, official_quirks=False)
    losses, _ = run_case(case, model, imgs, masks)
    assert_loss(losses["loss_mim"], case["losses"]["loss_mim"])
    with pytest.raises(AssertionError, match="loss_vis"):
        assert_loss(losses["loss_vis"], case["losses"]["loss_vis"], "loss_vis")


@pytest.mark.parametrize("name", ["ummae_swin_tiny", "ummae_pvt_tiny"])
def test_ummae_cases_need_the_quirk(name, tmp_path):
    """Without official_quirks (each visible token at its own patch's position) the predictions leave the
    official ones."""
    case, model, imgs, masks = rebuild(name, tmp_path, official_quirks=False)
    _, tensors = run_case(case, model, imgs, masks)
    assert fingerprint_deviation(tensors["pred"], case["fingerprints"]["pred"]) > 1.0
