"""Draw what a pretrained masked-image model predicts for your own images.

    python tools/visualize.py CHECKPOINT IMAGE... [--out DIR] [--mask_ratio R] [--seed S]

CHECKPOINT is a pretraining checkpoint of ours (``main_pretrain.py``) or an official MAE-family one that
records its run's arguments; the recipe is rebuilt from those recorded settings (``--model``,
``--model_kwargs``, ``--input_size``, ``--norm_pix_loss`` and the method flags) and the weights are read with
``weights_only`` (``util.checkpoint``). A file that records no settings (a bare released state dict) needs
``--model`` (and ``--model_kwargs``, ``--input_size`` where they differ from the recipe's). Each image is
resized (shorter side) and centre-cropped to the model's input size, masked with masks drawn from ``--seed``
(the same masks for every image), and drawn as in training (``util.visualize``): one PNG per image in
``--out``, ``<image name>-reconstruction.png``. The pictures are checked before anything is read: none may
be an input file, an existing one is replaced only with ``--force``, and each is written atomically.
"""
import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script

import torch  # noqa: E402
from torchvision import transforms  # noqa: E402

import main_pretrain  # noqa: E402
from base.errors import UsageError  # noqa: E402
from base.images import IMAGENET_MEAN, IMAGENET_STD, UnreadableImage, read_image  # noqa: E402
from base.safe_load import load_file  # noqa: E402
from models.mim import MaskedImageModel  # noqa: E402
from util.checkpoint import load_pretrained  # noqa: E402
from util.config import PretrainConfig  # noqa: E402
from util.flags import OPEN_FRACTION, SEED  # noqa: E402
from util.output_files import check_output_file, check_output_folder  # noqa: E402
from util.runtime import run_tool  # noqa: E402
from util.visualize import model_picture, no_picture_reason, save_png  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a pretraining checkpoint (.pth) of ours or an official MAE-family one")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    parser.add_argument("--out", default="visualize_output", help="folder for the PNGs (created if missing)")
    parser.add_argument("--force", action="store_true", help="replace pictures of the same names in --out")
    parser.add_argument("--mask_ratio", default=None, type=OPEN_FRACTION,
                        help="fraction of patches masked (default: the checkpoint's run's)")
    parser.add_argument("--seed", default=0, type=SEED, help="seed of the masks")
    parser.add_argument("--model", default=None,
                        help="the pretraining recipe, for a checkpoint that records none (a released state dict)")
    parser.add_argument("--model_kwargs", nargs="*", default=None, metavar="KEY=VALUE",
                        help="recipe overrides with --model, as for main_pretrain.py")
    parser.add_argument("--input_size", default=None, type=int, help="image side with --model (default: 224)")
    return parser


def recorded_flags(ckpt: Any, path: str, args: argparse.Namespace) -> dict[str, Any]:
    """The pretraining flags the checkpoint's run was given (ours: ``args['flags']``; the official MAE family:
    its ``args`` Namespace), or {} for a checkpoint without any when ``--model`` says what it is."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model", ckpt), dict):
        raise UsageError(f"{path} holds no model weights: pass a checkpoint written by main_pretrain.py")
    recorded = ckpt.get("args")
    recorded = vars(recorded) if isinstance(recorded, argparse.Namespace) else recorded
    if not isinstance(recorded, dict):
        if args.model is None:
            raise UsageError(f"{path} records no run settings ('args'): pass --model (and --model_kwargs) to say "
                             "which pretraining recipe its weights belong to")
        return {}
    flags = recorded.get("flags", recorded)
    # ours record main_pretrain's flags and the official MAE-family runs their Namespace: both have mask_ratio
    if "mask_ratio" not in flags:
        raise UsageError(f"{path} is not a pretraining checkpoint (saved by --model {flags.get('model', '?')} "
                         "without --mask_ratio: fine-tuning or linear probing); pass one written by "
                         "main_pretrain.py")
    return flags


def pretrain_config(flags: dict[str, Any], args: argparse.Namespace) -> PretrainConfig:
    """main_pretrain's config for the recorded ``flags`` (main_pretrain's defaults for the rest), with this
    command's ``--model``, ``--model_kwargs``, ``--input_size`` and ``--mask_ratio`` over them."""
    parsed = vars(main_pretrain.get_args_parser().parse_args([]))
    values = parsed | {k: v for k, v in flags.items() if k in parsed}
    given = {"model": args.model, "model_kwargs": args.model_kwargs, "input_size": args.input_size,
             "mask_ratio": args.mask_ratio}
    values |= {k: v for k, v in given.items() if v is not None}
    values |= {"resume": "", "auto_resume": False, "output_dir": args.out, "log_dir": None}
    return PretrainConfig.from_args(argparse.Namespace(**values))


def build_model(ckpt: dict, path: str, cfg: PretrainConfig) -> MaskedImageModel:
    """The recipe of ``cfg`` with the checkpoint's weights, every one of them found (eval mode)."""
    if cfg.clip_path or "clip" in cfg.model:
        raise UsageError(f"{path} is a {cfg.model} checkpoint: its target is CLIP features, which have no picture")
    model = main_pretrain.build_model(cfg).model
    if not isinstance(model, MaskedImageModel):
        raise UsageError(f"{path}: --model {cfg.model} is not a pretraining recipe; pass a checkpoint written by "
                         "main_pretrain.py (or --model one of models.list_models('*_patch*') that pretrains)")
    reason = no_picture_reason(model)
    if reason is not None:
        raise UsageError(f"{path} is a {cfg.model} checkpoint: {reason}")
    load_pretrained(model, ckpt)
    return model.eval()


def input_image(path: str, size: int) -> torch.Tensor:
    """An image file (``util.data.read_image``) as the model's input: [3, size, size] ImageNet-normalized, shorter
    side resized (bicubic) to ``size``, then centre-cropped."""
    to_input = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    if not os.path.exists(path):
        raise UsageError(f"image {path!r} does not exist")
    try:
        return to_input(read_image(path))
    except UnreadableImage as err:
        raise UsageError(f"cannot read image {path!r}: {err}") from err


def output_names(images: Sequence[str]) -> list[str]:
    """``<name>-reconstruction.png`` per image; a name met again gets its position (``-2``, ...) too."""
    names: list[str] = []
    for i, image in enumerate(images):
        name = f"{Path(image).stem}-reconstruction"
        names.append(f"{name}-{i + 1}.png" if f"{name}.png" in names else f"{name}.png")
    return names


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse in one line, before anything is read, an ``--out`` that cannot hold the pictures or a picture
    that is an input or exists (without ``--force``)."""
    check_output_folder(args.out)
    for name in output_names(args.images):
        check_output_file(Path(args.out) / name, inputs=[args.checkpoint, *args.images], force=args.force)


def visualize(args: argparse.Namespace) -> list[Path]:
    """Write one picture per image; returns their paths."""
    check_outputs(args)
    ckpt = load_file(args.checkpoint)  # one line for a missing or unsafe file
    cfg = pretrain_config(recorded_flags(ckpt, args.checkpoint, args), args)
    model = build_model(ckpt, args.checkpoint, cfg)
    images = [input_image(path, cfg.input_size) for path in args.images]  # every image readable before any output
    written = []
    for image, name in zip(images, output_names(args.images)):
        imgs = image[None]
        masks = model.sample_masks(imgs, torch.Generator().manual_seed(args.seed))
        grid = model_picture(model, imgs, masks)
        if grid is None:
            raise UsageError(f"{cfg.model}'s first head predicts only some patches: nothing to draw")
        path = Path(args.out) / name
        save_png(grid, path)
        written.append(path)
    return written


def write_pictures(args: argparse.Namespace) -> None:
    """Render ``args.images`` through ``args.checkpoint`` and say where each picture went."""
    for path in visualize(args):
        print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run on ``argv`` (default: the command line); a ``UsageError`` is one line on stderr and status 2."""
    return run_tool(write_pictures, build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
