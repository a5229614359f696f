"""The rows, architectures and presets of benchmarks/mini_table.py.

Every row of an architecture shares its encoder (so its random-init baseline); every row gets the same data,
input size, epochs, batch, LR rule (``--blr`` x batch / 256, DMJD's own pred/mask factor included, as its recipe
sets) and evaluation. At 64 px the miniature's encoders all mask on an 8x8 grid of 8-px patches: ViT patch 8,
ConViT stages at 4, 8 and 8 px, Swin 4-px cells with 8-px mask patches over three stages (final stride 16, twice
the mask patch, as Swin-T's 32 over 16 px at 256). The recipes' 16-px patches would leave a 4x4 grid, on which
2x2-block masks (DMJD, MaskFeat) and UM-MAE's 2x2 groups leave almost no choice of mask."""
from dataclasses import dataclass, field, replace

FMNIST = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class Preset:
    """The shared budget. ``probe``/``finetune``: main_linprobe / main_finetune flags beyond the data, model and
    checkpoint; ``size``: which encoder widths (``Arch``)."""

    size: str
    data_set: str
    data_path: str | None
    input_size: int
    data_limit: int | None
    epochs: int
    warmup_epochs: float
    batch_size: int
    blr: float
    knn_bank: int
    knn_query: int
    probe: tuple[str, ...]
    finetune: tuple[str, ...]
    decoder: dict = field(default_factory=dict)
    num_workers: int = 0
    timing_batch: int = 64
    timing_steps: int = 5

    def with_overrides(self, **overrides) -> "Preset":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def describe(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Arch:
    """An encoder family: its classifier for kNN/probe/fine-tune, its encoder options per preset size, and the
    classifier's own options (e.g. Swin's fine-tuning window)."""

    label: str
    classifier: str
    sizes: dict[str, dict]
    classify_kwargs: dict = field(default_factory=dict)

    def encoder(self, preset: Preset) -> dict:
        return dict(self.sizes[preset.size])


@dataclass(frozen=True)
class Row:
    """A method: its pretraining recipe, main_pretrain flags, extra model options, and a teacher row whose final
    checkpoint becomes ``teacher_path``."""

    label: str
    arch: str
    recipe: str
    flags: tuple[str, ...] = ()
    model_kwargs: dict = field(default_factory=dict)
    teacher: str | None = None
    decoder: bool = True  # takes the preset's MAE-style decoder options (SimMIM's and MaskFeat's heads are linear)
    cost: float = 1.0  # pretraining step time relative to MAE's (one thread, cpu preset; the teacher row's a guess)


ARCHS = {
    "vit": Arch("ViT", "vit_base_patch16", {
        "mini": dict(patch_size=8, embed_dim=128, depth=6, num_heads=4),
        "tiny": dict(patch_size=16, embed_dim=32, depth=2, num_heads=2),
        "full": {}}),
    "convvit": Arch("ConViT", "convvit_base_patch16", {
        "mini": dict(patch_sizes=(4, 2, 1), embed_dims=(32, 64, 128), depths=(1, 1, 4), num_heads=4,
                     mlp_ratios=(4, 4, 4)),
        "tiny": dict(patch_sizes=(4, 2, 2), embed_dims=(16, 24, 32), depths=(1, 1, 2), num_heads=2,
                     mlp_ratios=(4, 4, 4)),
        "full": dict(mlp_ratios=(4, 4, 4))}),
    # window 8 on the full grid as SimMIM and fine-tuning take 16 on Swin-T's (4 windows a side in stage 1)
    "swin": Arch("Swin", "swin_tiny_256", {
        "mini": dict(patch_size=4, stride=8, embed_dim=32, depths=(2, 2, 2), num_heads=(1, 2, 4), posmlp_dim=16),
        "tiny": dict(patch_size=4, stride=8, embed_dim=8, depths=(1, 1, 1), num_heads=(1, 1, 2), posmlp_dim=4),
        "full": {}}, classify_kwargs={"window_size": 8}),
}

ROWS = {
    "mae": Row("MAE", "vit", "mae_vit_base_patch16", ("--norm_pix_loss",)),
    "maskfeat": Row("MaskFeat (HOG)", "vit", "maskfeat_vit_base_patch16", decoder=False, cost=2.5),
    "convmae": Row("ConvMAE", "convvit", "convmae_convvit_base_patch16", ("--norm_pix_loss",), cost=0.9),
    "dmjd": Row("DMJD (2 views, HOG, visible distillation)", "convvit", "dmjd_convvit_base_patch16_hog", cost=2.4),
    "deepmim_pixel": Row("DeepMIM (pixel target)", "vit", "deepmim_vit_base_patch16", ("--norm_pix_loss",),
                         cost=1.2),
    "deepmim_teacher": Row("DeepMIM (frozen MAE-row teacher)", "vit", "deepmim_vit_base_patch16", teacher="mae",
                           cost=1.5),
    # UM-MAE's window 8 on Swin-T's compact 32x32 cells is 4 windows a side: 4 on the mini's compact 8x8
    "ummae": Row("UM-MAE (uniform + secondary masking)", "swin", "ummae_swin_tiny_256",
                 ("--norm_pix_loss", "--mask_regular", "--vis_mask_ratio", "0.25"), {"window_size": 4}, cost=0.5),
    "simmim": Row("SimMIM", "swin", "simmim_swin_tiny_256", (), {"window_size": 8}, decoder=False,
                  cost=0.9),
}

# the same short probe and fine-tune for every encoder: LARS probe on BN + linear (a large LR for few steps, as
# the demo's), fine-tuning all layers with layer decay, no mixup/cutmix/auto-augment (too strong for 1 epoch); one
# epoch each, since each epoch also evaluates on the 10,000 test images
_PROBE = ("--batch_size", "64", "--epochs", "1", "--warmup_epochs", "0.2", "--blr", "16")
_FINETUNE = ("--batch_size", "64", "--epochs", "1", "--warmup_epochs", "0.2", "--blr", "1e-3", "--layer_decay", "0.75",
             "--drop_path", "0.1", "--aa", "none", "--reprob", "0", "--smoothing", "0.1")

PRESETS = {
    "cpu": Preset("mini", "fashion_mnist", FMNIST, 64, 5000, 3, 1, 64, 1.5e-3, 3000, 1000, _PROBE, _FINETUNE,
                  dict(decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)),
    "tiny": Preset("tiny", "fashion_mnist", FMNIST, 64, 200, 1, 0, 32, 1.5e-3, 100, 50,
                   ("--batch_size", "50", "--epochs", "1", "--warmup_epochs", "0", "--blr", "16"),
                   ("--batch_size", "50", "--epochs", "1", "--warmup_epochs", "0", "--blr", "1e-3", "--aa", "none",
                    "--reprob", "0"),
                   dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2), timing_batch=4, timing_steps=1),
    # full size on GPUs: each recipe's own encoder, 256 px (Swin's size; ViT-B/16 and ConViT-B take it as 16x16
    # patches), a short schedule (not run on this project's machines)
    "imagenet": Preset("full", "imagefolder", None, 256, None, 100, 10, 128, 1.5e-4, 10000, 10000,
                       ("--batch_size", "512", "--epochs", "90", "--warmup_epochs", "10", "--blr", "0.1",
                        "--weight_decay", "0"),
                       ("--batch_size", "128", "--epochs", "50", "--warmup_epochs", "5", "--blr", "5e-4",
                        "--layer_decay", "0.65", "--drop_path", "0.1", "--mixup", "0.8", "--cutmix", "1.0"),
                       num_workers=10, timing_batch=32),
}


def kwargs_args(kwargs: dict) -> list[str]:
    """{"a": (1, 2), "b": "x"} -> ["--model_kwargs", "a=(1, 2)", "b='x'"] (Python literals, as main_* parse them)."""
    return ["--model_kwargs", *(f"{k}={v!r}" for k, v in kwargs.items())] if kwargs else []

