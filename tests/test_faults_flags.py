"""Flags that contradict each other or the model, refused in one line before any data work (RELIABILITY.md,
"Flags and data"): --model_kwargs against the flag that sets the same option, a classifier given to pretraining
(and the reverse), Mixup with an odd batch, auto-augment, CutMix and random-erasing settings timm would assert on."""
from pathlib import Path

import pytest

import main_finetune
import main_linprobe
import main_pretrain
from base.errors import UsageError
from util.config import FinetuneConfig

TINY_VIT = ["embed_dim=32", "depth=1", "num_heads=2"]
TINY_DECODER = ["decoder_embed_dim=32", "decoder_depth=1", "decoder_num_heads=2"]


def refusal(cli, tmp_path: Path, *argv: str) -> str:
    """The UsageError of ``cli.main`` on ``argv`` with a data folder that does not exist: a refusal that comes
    before the data is read (Fashion-MNIST's classes are known without it)."""
    args = cli.get_args_parser().parse_args([
        *argv, "--device", "cpu", "--output_dir", str(tmp_path / "out"), "--num_workers", "0",
        "--data_set", "fashion_mnist", "--data_path", str(tmp_path / "no_data")])
    with pytest.raises(UsageError) as info:
        cli.main(args)
    return str(info.value)


def finetune_config(*argv: str) -> FinetuneConfig:
    return FinetuneConfig.from_args(main_finetune.get_args_parser().parse_args(list(argv)))


# --- --model_kwargs against the flags (issue 19, case 9) ---------------------------------------------------

def test_model_kwargs_contradicting_a_flag_is_refused_before_the_data(tmp_path):
    """img_size=64 with --input_size 32 used to fail at the first batch, after the data was built."""
    message = refusal(main_pretrain, tmp_path, "--model", "mae_vit_tiny_patch16", "--input_size", "32",
                      "--model_kwargs", *TINY_VIT, *TINY_DECODER, "img_size=64")
    assert message == "--model_kwargs img_size=64 contradicts --input_size 32: set it with --input_size only"
    message = refusal(main_pretrain, tmp_path, "--model", "mae_vit_tiny_patch16", "--input_size", "32",
                      "--mask_ratio", "0.75", "--model_kwargs", *TINY_VIT, *TINY_DECODER, "mask_ratio=0.5")
    assert message == "--model_kwargs mask_ratio=0.5 contradicts --mask_ratio 0.75: set it with --mask_ratio only"


@pytest.mark.parametrize("cli", [main_finetune, main_linprobe], ids=["finetune", "linprobe"])
def test_classifier_model_kwargs_contradicting_a_flag(tmp_path, cli):
    message = refusal(cli, tmp_path, "--model", "vit_tiny_patch16", "--input_size", "32",
                      "--model_kwargs", *TINY_VIT, "num_classes=3")
    assert message == "--model_kwargs num_classes=3 contradicts --nb_classes 10: set it with --nb_classes only"


def test_model_kwargs_repeating_a_flag_is_accepted(tmp_path):
    """The same value twice is no contradiction; an option no flag sets is the recipe's to take."""
    args = main_pretrain.get_args_parser().parse_args([
        "--model", "mae_vit_tiny_patch16", "--input_size", "32", "--output_dir", str(tmp_path),
        "--model_kwargs", *TINY_VIT, *TINY_DECODER, "img_size=32", "mask_ratio=0.5"])
    model = main_pretrain.build_model(main_pretrain.PretrainConfig.from_args(args)).model
    assert model.encoder.grid_size == (2, 2) and model.masking.mask_ratio == 0.5


# --- a model of the other kind (case 10) -----------------------------------------------------------------

def test_classifier_given_to_pretraining_names_the_pretraining_recipes(tmp_path):
    message = refusal(main_pretrain, tmp_path, "--model", "vit_tiny_patch16", "--input_size", "32",
                      "--model_kwargs", *TINY_VIT)
    assert message == ("--model vit_tiny_patch16 is a fine-tuning model (a classifier): main_pretrain.py trains a "
                       "pretraining recipe, e.g. mae_vit_tiny_patch16")
    message = refusal(main_pretrain, tmp_path, "--model", "swin_tiny_256", "--mask_ratio", "0.75")
    assert message.startswith("--model swin_tiny_256 is a fine-tuning model (a classifier): ")
    assert message.endswith("e.g. mae_swin_tiny_256, simmim_swin_tiny_256, ummae_swin_tiny_256")


@pytest.mark.parametrize("cli", [main_finetune, main_linprobe], ids=["finetune", "linprobe"])
def test_pretraining_recipe_given_to_classification_names_the_classifier(tmp_path, cli):
    message = refusal(cli, tmp_path, "--model", "dmjd_convvit_base_patch16_hog", "--input_size", "32")
    assert message == ("--model dmjd_convvit_base_patch16_hog is a pretraining recipe: fine-tuning and linear "
                       "probing train a classifier, e.g. convvit_base_patch16 (with --finetune <the pretraining "
                       "checkpoint>)")


# --- Mixup / CutMix, auto-augment, random erasing (cases 11-13) ------------------------------------------

def test_mixup_with_an_odd_batch_is_refused_while_parsing():
    with pytest.raises(UsageError) as info:
        finetune_config("--mixup", "0.8", "--batch_size", "3")
    assert str(info.value) == ("--mixup/--cutmix mix the images of a batch in pairs: --batch_size 3 must be even; "
                               "pass 2 or 4")
    with pytest.raises(UsageError, match="--batch_size 5 must be even; pass 4 or 6"):
        finetune_config("--cutmix", "1.0", "--batch_size", "5")
    with pytest.raises(UsageError, match="--batch_size 1 must be even; pass 2$"):
        finetune_config("--mixup", "0.8", "--batch_size", "1")
    assert finetune_config("--mixup", "0.8", "--batch_size", "4").mixes
    assert not finetune_config("--batch_size", "3").mixes  # no mixing: any batch
    assert finetune_config("--mixup", "0.8", "--batch_size", "3", "--eval").mixes  # evaluation mixes nothing


def test_aa_none_turns_auto_augment_off_and_unknown_policies_are_refused():
    parser = main_finetune.get_args_parser()
    assert parser.parse_args(["--aa", "none"]).aa is None
    assert parser.parse_args(["--aa", "None"]).aa is None
    for policy in ("rand-m9-mstd0.5-inc1", "rand-m7-n2", "augmix-m5-w4-d2", "original", "v0", "3a"):
        assert parser.parse_args(["--aa", policy]).aa == policy
    for policy in ("bogus", "rand-m9-foo3", "rand-m9x"):
        with pytest.raises(UsageError) as info:
            parser.parse_args(["--aa", policy])
        assert str(info.value).startswith("argument --aa: expected a timm auto-augment policy")
        assert str(info.value).endswith(f"or none (off), got '{policy}'")


def test_cutmix_minmax_and_remode_are_checked_while_parsing():
    with pytest.raises(UsageError, match="^argument --cutmix_minmax: expected 2 arguments$"):
        finetune_config("--cutmix_minmax", "0.2")
    with pytest.raises(UsageError) as info:
        finetune_config("--cutmix_minmax", "0.8", "0.2")
    assert str(info.value) == "--cutmix_minmax 0.8 0.2: the first (smallest box side) must be below the second"
    with pytest.raises(UsageError) as info:
        finetune_config("--cutmix_minmax", "0.2", "0.21", "--input_size", "32")
    assert str(info.value) == ("--cutmix_minmax 0.2 0.21 gives boxes of 6 to 6 pixels at --input_size 32: "
                               "widen the range")
    assert finetune_config("--cutmix_minmax", "0.2", "0.8").cutmix_minmax == (0.2, 0.8)
    with pytest.raises(UsageError, match="^argument --remode: invalid choice: 'foo'"):
        finetune_config("--remode", "foo")
