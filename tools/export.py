"""Export the encoder of a checkpoint (ours or an official one, pretraining or fine-tuning) for use elsewhere.

    python tools/export.py CHECKPOINT --model vit_base_patch16 --to timm --out vit_b.safetensors

The checkpoint is read with ``weights_only`` and loaded by ``util.checkpoint.load_pretrained`` into the
registered classifier recipe ``--model`` built without a head (``num_classes=0``): the feature extractor,
i.e. the encoder plus ``fc_norm`` under global pooling. Decoder and other pretraining-only weights are left
out (the load report lists them); a pretraining checkpoint has no ``fc_norm``, which keeps its identity
initialization, as at the start of fine-tuning.

``--out`` is checked before anything is read: never the checkpoint itself (whatever the spelling or
symlink), a folder, or an existing file unless ``--force``; it is written atomically (temp file, rename).

Targets:

- ``safetensors``: that state dict under our flat (official) key names; ``safetensors.torch.load_file`` then
  ``load_state_dict(strict=True)`` into the same recipe built with ``num_classes=0`` restores it.
- ``timm``: a ViT as timm's ``VisionTransformer`` state dict, for ``timm.create_model(...,
  pretrained=True, pretrained_cfg_overlay=dict(file=OUT))`` (the call is printed). Only the ViT has a timm
  counterpart: timm's Swin uses a relative-position table where UM-MAE's uses a posMLP, timm has no
  ConvMAE ConViT and no PVT v1; those are refused (use ``--to safetensors``).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script

import torch  # noqa: E402
from safetensors.torch import save as safetensors_bytes  # noqa: E402
from timm.models.vision_transformer import VisionTransformer as TimmViT  # noqa: E402

from base.errors import UsageError  # noqa: E402
from base.safe_load import load_file  # noqa: E402
from models.classifier import Classifier  # noqa: E402
from models.encoders.vit import VisionTransformer  # noqa: E402
from util.checkpoint import load_pretrained  # noqa: E402
from util.output_files import atomic_write, check_output_file  # noqa: E402
from util.runtime import build_named_model, parse_model_kwargs, run_tool  # noqa: E402

TARGETS = ("timm", "safetensors")
# why each encoder without a timm counterpart has none, by class name
NO_TIMM = {
    "SwinMIM": "timm's Swin has a relative-position bias table, UM-MAE's Swin a posMLP of the token offsets",
    "PyramidVisionTransformer": "timm has PVT v2 only, not UM-MAE's PVT (v1)",
    "ConvViT": "timm has no ConvMAE ConViT (convolutional stages before the transformer)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pth checkpoint of ours or an official one")
    parser.add_argument("--model", required=True, help="classifier recipe, e.g. vit_base_patch16, swin_tiny_256")
    parser.add_argument("--to", required=True, choices=TARGETS)
    parser.add_argument("--out", required=True, help="output file (.safetensors; for timm also .pth)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (never the checkpoint)")
    parser.add_argument("--img_size", type=int, default=None, help="input size (default: the recipe's)")
    parser.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides, as for the training CLIs (e.g. global_pool=False)")
    return parser


def build_feature_extractor(name: str, img_size: int | None, overrides: dict) -> Classifier:
    """The classifier recipe ``name`` without a head (``num_classes=0``)."""
    kwargs = {**overrides, "num_classes": 0} | ({"img_size": img_size} if img_size is not None else {})
    try:
        model = build_named_model(name, **kwargs).model
    except UsageError as err:
        # pretraining recipes take no num_classes: name the fix rather than the rejected keyword
        if "num_classes" not in str(err):
            raise
        model = None
    if not isinstance(model, Classifier):
        raise UsageError(f"--model {name} is not a classifier recipe: pass the fine-tuning name of its encoder, "
                         "e.g. vit_base_patch16, convvit_base_patch16, swin_tiny_256, pvt_small_256")
    return model


def load_weights(model: Classifier, checkpoint: dict, path: str) -> None:
    """The checkpoint's encoder (and ``fc_norm`` if it has one) into ``model``; prints the load report."""
    report = load_pretrained(model, checkpoint, allow_missing=["fc_norm.*"])
    print(f"loaded {path}: {report}")
    model.eval()


def timm_vit_kwargs(model: Classifier) -> dict:
    """The ``timm VisionTransformer`` arguments that give ``model``'s encoder and pooling (its keys are ours)."""
    encoder = model.encoder
    if not isinstance(encoder, VisionTransformer):
        why = NO_TIMM.get(type(encoder).__name__, "timm has no such architecture")
        raise UsageError(f"--to timm: {why}; export it with --to safetensors")
    if hasattr(encoder.blocks[0].attn, "rel_pos"):
        raise UsageError("--to timm: timm's VisionTransformer has no per-block relative position bias; "
                         "export it with --to safetensors")
    block = encoder.blocks[0]
    layer_scale = getattr(block.ls1, "gamma", None)
    return dict(img_size=tuple(s * encoder.patch_size for s in encoder.grid_size), patch_size=encoder.patch_size,
                embed_dim=encoder.embed_dim, depth=encoder.depth, num_heads=block.attn.num_heads,
                mlp_ratio=block.mlp.fc1.out_features / encoder.embed_dim,
                init_values=None if layer_scale is None else float(layer_scale.flatten()[0]),
                global_pool="avg" if model.global_pool else "token", class_token=True, num_classes=0)


def to_timm(model: Classifier) -> tuple[dict[str, torch.Tensor], dict]:
    """(timm state dict, timm kwargs). Our ViT classifier already uses timm's names and layout, so no key is
    renamed: with the cls token, ``norm`` after the blocks (timm's ``global_pool="token"``); under average
    pooling no ``norm`` and ``fc_norm`` after the mean (timm's ``global_pool="avg"``). The keys and shapes are
    checked against a timm model built on the meta device (no memory), so a difference fails here, not in
    timm's non-strict ``pretrained=True`` load."""
    kwargs = timm_vit_kwargs(model)
    state_dict = model.state_dict()
    with torch.device("meta"):
        expected = {k: v.shape for k, v in TimmViT(**kwargs).state_dict().items()}
    ours = {k: v.shape for k, v in state_dict.items()}
    if ours != expected:
        differ = sorted(set(ours.items()) ^ set(expected.items()))
        raise UsageError(f"--to timm: the encoder's weights differ from timm's VisionTransformer's "
                         f"({', '.join(f'{k} {tuple(s)}' for k, s in differ[:6])}); use --to safetensors")
    return state_dict, kwargs


def write(state_dict: dict[str, torch.Tensor], out: str, metadata: dict[str, str]) -> None:
    """safetensors unless ``out`` asks for a torch file (.pth / .pt / .bin, which timm also reads); written
    atomically, so a stopped export leaves no half-written file."""
    # safetensors refuses views into a larger storage and shared tensors: store each as its own copy
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_write(out) as f:
        if Path(out).suffix in (".pth", ".pt", ".bin"):
            torch.save(tensors, f)
        else:
            f.write(safetensors_bytes(tensors, metadata=metadata))


def timm_call(kwargs: dict, out: str) -> str:
    """The ``timm.create_model`` call that loads the exported file (arguments differing from ViT-B/16-224's)."""
    base = dict(img_size=(224, 224), patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                init_values=None, class_token=True)
    args = {k: v for k, v in kwargs.items() if base.get(k, object()) != v}
    args = {k: (v[0] if k == "img_size" and v[0] == v[1] else v) for k, v in args.items()}
    shown = "".join(f", {k}={v!r}" for k, v in args.items())
    return (f'timm.create_model("vit_base_patch16_224", pretrained=True, '
            f'pretrained_cfg_overlay=dict(file={out!r}){shown})')


def export(args: argparse.Namespace) -> None:
    overrides = parse_model_kwargs(args.model_kwargs)
    check_output_file(args.out, inputs=[args.checkpoint], force=args.force)
    checkpoint = load_file(args.checkpoint)  # a missing or unsafe file is reported before any model is built
    model = build_feature_extractor(args.model, args.img_size, overrides)
    if args.to == "timm":
        timm_vit_kwargs(model)  # refuse an architecture timm lacks before loading anything into it
    load_weights(model, checkpoint, args.checkpoint)
    metadata = {"format": "pt", "model": args.model, "source": str(args.checkpoint),
                "model_kwargs": json.dumps({**overrides, "img_size": args.img_size}, default=str)}
    if args.to == "timm":
        state_dict, kwargs = to_timm(model)
        write(state_dict, args.out, metadata)
        print(f"wrote {args.out} ({len(state_dict)} tensors); load it with\n  {timm_call(kwargs, args.out)}")
    else:
        state_dict = model.state_dict()
        write(state_dict, args.out, metadata)
        print(f"wrote {args.out} ({len(state_dict)} tensors): load_file, then load_state_dict(strict=True) into "
              f"models.create_model({args.model!r}, num_classes=0, ...)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter on ``argv`` (default: the command line); a ``UsageError`` is one line and status 2."""
    return run_tool(export, build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
