"""The recipes' options (models/recipe_options.py): each method option is declared once and reaches the recipe
by --model_kwargs' path; an option a recipe does not take is refused in one line naming it and those it takes;
a recipe's refusal of a value is a UsageError; any other exception while building is a bug and stays one
(issue 22, items 1 and 5)."""
import dataclasses
from pathlib import Path

import pytest

import main_pretrain
import models
from base.errors import UsageError
from base.settings import flag_of
from models.masking import DisjointMasking, RandomMasking
from models.pyramid_heads import UMDecoder
from models.recipe_options import MethodOptions, UnknownOptions
from util.config import PretrainConfig
from util.runtime import build_named_model

VIT = dict(img_size=32, embed_dim=32, depth=4, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
           decoder_num_heads=2)
CONVVIT = dict(embed_dims=(16, 24, 32), depths=(1, 1, 1), num_heads=2, decoder_embed_dim=16, decoder_depth=1,
               decoder_num_heads=2)
TINY_ARGV = ["--input_size", "32", "--model_kwargs", "embed_dim=32", "depth=4", "num_heads=2",
             "decoder_embed_dim=16", "decoder_depth=1", "decoder_num_heads=2"]


def sample_argv(field: dataclasses.Field) -> list[str]:
    """The flag of a method option with a value it takes."""
    flag = flag_of(field)
    if flag.switch:
        return [f"--{field.name}"]
    if flag.choices:
        value = [flag.choices[-1]]
    elif flag.type is None:
        value = ["clip.pt"]
    else:
        value = ["2", "3"] if flag.nargs == "+" else ["2" if flag.type.kind is int else "0.7"]
    return [f"--{field.name}", *value]


class Captured(Exception):
    """What main_pretrain.build_model hands to build_named_model (the test's stand-in raises it)."""


def capture(name: str, task: str, **kwargs) -> None:
    raise Captured(kwargs)


@pytest.mark.parametrize("field", dataclasses.fields(MethodOptions), ids=lambda f: f.name)
def test_every_method_option_is_a_flag_that_reaches_the_recipe(field, monkeypatch):
    """Declared once (a MethodOptions field): main_pretrain.py has its flag, and its value reaches the recipe as
    --model_kwargs' options do, only when given (each recipe keeps its own default)."""
    monkeypatch.setattr(main_pretrain, "build_named_model", capture)
    parse = main_pretrain.get_args_parser().parse_args
    built = []
    for argv in ([], sample_argv(field)):
        with pytest.raises(Captured) as info:
            main_pretrain.build_model(PretrainConfig.from_args(parse(["--model", "deepmim_vit_base_patch16", *argv])))
        built.append(info.value.args[0])
    value = vars(parse(sample_argv(field)))[field.name]
    assert built == [{"img_size": 224}, {"img_size": 224, field.name: tuple(value) if isinstance(value, list)
                                         else value}]


def test_an_option_a_recipe_does_not_take_is_named_with_those_it_takes():
    """Before: "does not accept these options: VisionTransformer.__init__() got an unexpected keyword argument"
    (Python's TypeError, whichever callee it came from)."""
    with pytest.raises(UsageError) as info:
        build_named_model("mae_vit_tiny_patch16", "pretrain", theta=0.5, **VIT)
    message = str(info.value)
    assert message.startswith("mae_vit_tiny_patch16 does not take theta: its options are ")
    assert {"mask_ratio", "decoder_depth", "embed_dim", "img_size"} <= set(message.split(": its options are ")[1]
                                                                          .split(", "))
    with pytest.raises(UsageError, match="^vit_tiny_patch16 does not take decoder_dpeth, final_norm: its options "
                                         "are depth, drop_path_rate, embed_dim, global_pool, img_size, "):
        build_named_model("vit_tiny_patch16", "classify", decoder_dpeth=2, final_norm=False)  # a typo; set by it


def test_the_cli_names_an_option_its_model_does_not_take(tmp_path, capsys):
    """--theta is DMJD's: given to MAE it is one line on stderr, exit 2, before any data."""
    argv = ["--model", "mae_vit_tiny_patch16", "--theta", "0.5", *TINY_ARGV, "--device", "cpu", "--output_dir",
            str(tmp_path / "out"), "--data_path", str(tmp_path / "no_data")]
    with pytest.raises(UsageError, match="^mae_vit_tiny_patch16 does not take theta: its options are "):
        main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_model_refuses_an_unknown_option(name):
    """Checked against the signatures before anything is built, so a new recipe is covered as soon as it is
    registered (a recipe whose builder is not ``models.recipe_options.builder``-checked fails here). DeepMIM-CLIP
    needs a clip_path before its builder runs; the classifiers take none."""
    with pytest.raises(UsageError, match=rf"^{name} does not take (clip_path, )?no_such_option: its options are "
                                         r".*img_size"):
        models.create_model(name, clip_path="clip.pt", no_such_option=1)


def test_every_method_option_is_taken_by_some_recipe():
    """The declaration cannot drift from the recipes: each MethodOptions field is a parameter of a registered
    pretraining recipe (read from the refusal of an unknown option, which lists what the recipe takes)."""
    taken = set()
    for name in models.list_models(task="pretrain"):
        with pytest.raises(UnknownOptions) as info:
            models.create_model(name, clip_path="clip.pt", no_such_option=1)
        taken |= set(info.value.accepted)
    assert {f.name for f in dataclasses.fields(MethodOptions)} <= taken


@pytest.mark.parametrize("error", [TypeError("a bug"), ValueError("a bug"), KeyError("a bug")])
def test_an_exception_of_a_recipe_that_is_no_usage_error_keeps_its_traceback(error, monkeypatch):
    """Before: any TypeError or ValueError became "--model ...: does not accept these options" or "--model ...:
    <message>", hiding the bug."""
    def broken(name, **kwargs):
        raise error
    monkeypatch.setattr(models, "create_recipe", broken)
    with pytest.raises(type(error), match="a bug"):
        build_named_model("mae_vit_tiny_patch16", "pretrain", img_size=32)


@pytest.mark.parametrize("build,expected", [
    (lambda: models.create_model("mae_vit_tiny_patch16", **VIT | dict(mask_ratio=1.5)),
     "mask_ratio must be in [0, 1), got 1.5"),
    (lambda: models.create_model("dmjd_vit_base_patch16_hog", **VIT | dict(pred_ratio=0.5)),
     "pred_ratio must be in [mask_ratio, 1] = [0.6, 1], got 0.5"),
    (lambda: DisjointMasking(RandomMasking(0.6), num_views=0), "num_views must be >= 1, got 0"),
    (lambda: models.create_model("dmjd_vit_base_patch16_hog", **VIT | dict(mim_loss_type="l3")),
     "unknown loss type 'l3'; choose one of l2, l1, smooth_l1, cosine"),
    (lambda: models.create_model("mae_vit_tiny_patch16", **VIT | dict(mask_regular=True, vis_mask_ratio=1.0)),
     "vis_mask_ratio must be in [0, 1), got 1.0"),
    (lambda: models.create_model("deepmim_vit_base_patch16", **VIT | dict(ds_layers=(2, 5))),
     "ds_layers must lie in 1..4 (the encoder's depth), got [2, 5]"),
    (lambda: models.create_model("dmjd_convvit_base_patch16_hog", img_size=72, **CONVVIT),
     "img_size (72, 72) is not divisible by the total patch size 16: pass an --input_size that is a multiple of 16"),
    (lambda: UMDecoder((6, 6), 32, 48, 16, 1, 2),
     "the UM decoder needs a patch grid divisible by 4, got (6, 6): pass an --input_size of a multiple of 4 patches"),
    (lambda: models.create_model("mae_vit_tiny_patch16", **VIT | dict(vis_mask_ratio=0.5)),
     "vis_mask_ratio (secondary masking) needs mask_regular (uniform masking)"),
], ids=["mask_ratio", "pred_ratio", "num_views", "loss", "vis_mask_ratio", "ds_layers", "convvit_size", "um_grid",
        "secondary_masking"])
def test_a_value_a_model_cannot_take_is_a_usage_error(build, expected):
    """These were ValueErrors, one line only because build_named_model turned every ValueError into one."""
    with pytest.raises(UsageError) as info:
        build()
    assert str(info.value) == expected


def test_pred_ratio_below_the_mask_ratio_is_one_line_from_the_cli(tmp_path):
    argv = ["--model", "dmjd_vit_base_patch16_hog", "--pred_ratio", "0.5", *TINY_ARGV, "--device", "cpu",
            "--output_dir", str(tmp_path / "out"), "--data_path", str(Path(tmp_path) / "no_data")]
    with pytest.raises(UsageError, match=r"^pred_ratio must be in \[mask_ratio, 1\] = \[0.6, 1\], got 0.5$"):
        main_pretrain.main(main_pretrain.get_args_parser().parse_args(argv))
