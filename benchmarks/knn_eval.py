"""kNN top-1/top-5 of a classifier's encoder, pretrained (``--finetune``, loaded as main_finetune loads it) or
from random initialization: the kNN monitor of pretraining (``util.knn``: k = 20, cosine, temperature 0.07,
global-pool features) applied to one encoder, for benchmarks/mini_table.py.

    python benchmarks/knn_eval.py --model vit_base_patch16 --data_set fashion_mnist --input_size 64 \\
        --finetune output_dir/checkpoint-4.pth --out knn.json
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script

import torch  # noqa: E402

from util.classify import load_encoder  # noqa: E402
from util.knn import KnnMonitor  # noqa: E402
from util.runtime import build_named_model, parse_model_kwargs, run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a classifier from models.list_models(task='classify')")
    parser.add_argument("--model_kwargs", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--finetune", default=None, help="pretraining checkpoint (default: random initialization)")
    parser.add_argument("--data_set", default="fashion_mnist", choices=["fashion_mnist", "imagefolder"])
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--knn_bank_size", type=int, default=10000)
    parser.add_argument("--knn_query_size", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="write the result as JSON here too")
    return parser


def run(args: argparse.Namespace) -> dict:
    """{"top1", "top5", "seconds"} of the encoder of ``args.model`` on the data's labelled splits."""
    start = time.time()
    monitor = KnnMonitor(args.data_set, args.data_path, args.input_size, args.knn_bank_size, args.knn_query_size,
                         args.seed, args.batch_size, args.num_workers)
    torch.manual_seed(args.seed)  # the random initialization is the seed's
    kwargs = {"img_size": args.input_size, "num_classes": monitor.num_classes, "global_pool": True,
              **parse_model_kwargs(args.model_kwargs)}
    model = build_named_model(args.model, "classify", **kwargs).model
    if args.finetune:
        load_encoder(model, args.finetune)
    device = torch.device(args.device)
    model.to(device)
    amp = torch.bfloat16 if device.type == "cuda" else None
    result = monitor.evaluate(model, device, amp)
    out = {"top1": result.top1, "top5": result.top5, "seconds": time.time() - start}
    print(json.dumps(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    run_cli(run, build_parser)
