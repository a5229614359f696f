"""The flags every CLI shares, with each CLI's defaults and the official names."""
import argparse

from util.runtime import AMP_DTYPES


def add_training_args(p: argparse.ArgumentParser, *, model: str, model_help: str, batch_size: int, epochs: int,
                      blr: float, min_lr: float, warmup_epochs: float, weight_decay: float, save_freq: int) -> None:
    """Length, batch and optimizer-schedule flags of every CLI, with that CLI's defaults (official names)."""
    p.add_argument("--batch_size", default=batch_size, type=int,
                   help="images per GPU (effective: x accum_iter x GPUs)")
    p.add_argument("--epochs", default=epochs, type=int)
    p.add_argument("--accum_iter", default=1, type=int, help="accumulate gradients over this many batches")
    p.add_argument("--model", default=model, type=str, help=model_help)
    p.add_argument("--input_size", default=224, type=int)
    p.add_argument("--weight_decay", default=weight_decay, type=float)
    p.add_argument("--lr", default=None, type=float, help="absolute LR (default: blr x eff_batch / 256)")
    p.add_argument("--blr", default=blr, type=float, help="base LR: lr = blr x eff_batch / 256")
    p.add_argument("--min_lr", default=min_lr, type=float)
    p.add_argument("--warmup_epochs", default=warmup_epochs, type=float)
    p.add_argument("--clip_grad", default=None, type=float, help="max gradient norm (off by default)")
    p.add_argument("--save_freq", default=save_freq, type=int,
                   help="save a checkpoint every N epochs (and the last)")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Device, precision, seed, folders, resume and data flags shared by every CLI."""
    p.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override recipe defaults, e.g. decoder_depth=2 decoder_embed_dim=128")
    p.add_argument("--amp", default=None, choices=sorted(AMP_DTYPES),
                   help="precision: bf16 on GPU by default, fp32 on CPU; fp16 uses a GradScaler")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", default=0, type=int)
    p.add_argument("--output_dir", default="./output_dir")
    p.add_argument("--log_dir", default=None, help="TensorBoard folder (default: output_dir)")
    p.add_argument("--resume", default="", help="checkpoint to continue from")
    p.add_argument("--auto_resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    p.add_argument("--start_epoch", default=0, type=int)
    p.add_argument("--num_workers", default=10, type=int)
    p.add_argument("--pin_mem", action="store_true", default=True)
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.add_argument("--print_freq", default=20, type=int)
    p.add_argument("--data_set", default="imagefolder", choices=["imagefolder", "fashion_mnist"])
    p.add_argument("--data_path", default=None, type=str,
                   help="ImageNet-style root (train/<class>/*, val/<class>/*) or a folder of images; "
                        "fashion_mnist: /usr/share/datasets/fashion-mnist")
    p.add_argument("--data_limit", default=None, type=int, help="use only the first N training images (demos)")
    p.add_argument("--local-rank", "--local_rank", dest="local_rank", default=None, type=int,
                   help="set by python -m torch.distributed.launch")


def add_classify_args(p: argparse.ArgumentParser, global_pool_default: bool) -> None:
    """Flags fine-tuning and linear probing share (official names)."""
    p.add_argument("--finetune", default="", help="pretrained checkpoint to start from (ours or official)")
    p.add_argument("--global_pool", action="store_true", default=global_pool_default,
                   help="average patch tokens (+ fc_norm) instead of the cls token")
    p.add_argument("--cls_token", action="store_false", dest="global_pool", help="use the cls token")
    p.add_argument("--nb_classes", default=None, type=int, help="default: the number of classes in the data")
    p.add_argument("--eval", action="store_true", help="only evaluate (--resume or --finetune weights)")
    p.add_argument("--dist_eval", action="store_true", help="shard evaluation over processes")
