"""Input pipeline throughput: images per second each pipeline (pretrain, finetune, probe, eval) and backend
(pil; dali on the CPU's operators or the GPU's decoder, after --device) delivers as model-ready batches (uint8
``[B, 3, S, S]`` on the device, normalized there, fine-tuning's random erasing applied), PIL with N DataLoader
workers and DALI with N threads, on a folder of JPEGs. Nothing trains: it measures the data path alone.

Per setting: img/s (wall clock), img/s per core (images per CPU-second that this process and its workers
used: the figure that holds on a loaded machine and says how many cores a GPU's appetite needs), and the bytes
per image a worker hands over (PIL: the uint8 crop; DALI: the encoded file and its plan).

    python benchmarks/dataload.py --make_folder /tmp/fake_imagenet --images 2000 --classes 10
    python benchmarks/dataload.py --data_path /tmp/fake_imagenet --workers 1 2 --device cpu
    python benchmarks/dataload.py --data_path /tmp/fake_imagenet --pipelines pretrain finetune --backends pil dali

Prints a Markdown table, then one JSON object (device, date, torch version, command, one row per setting).
"""
import datetime
import json
import os
import platform
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from base.images import normalize  # noqa: E402
from util.classify import (build_finetune_transform, build_linprobe_transform, build_random_erasing,  # noqa: E402
                           finetune_plan, linprobe_plan)
from util.dali_loader import collate_encoded, dali_import_error, dali_train_loader, pretrain_crops  # noqa: E402
from util.dali_plans import CenterCrops  # noqa: E402
from util.data import ImageFiles, build_eval_transform, build_pretrain_transform  # noqa: E402
from util.flags import POSITIVE_FRACTION, POSITIVE_INT, ArgumentParser, device_name  # noqa: E402
from util.session import Session, begin_epoch, train_loader  # noqa: E402

PIPELINES = ("pretrain", "finetune", "probe", "eval")
FINETUNE_AUGMENT = dict(aa="rand-m9-mstd0.5-inc1", color_jitter=None, reprob=0.25, remode="pixel", recount=1)


def make_folder(root: str, images: int, classes: int, seed: int = 0, size: tuple[int, int] = (500, 375),
                quality: int = 90) -> list[str]:
    """An ImageNet-like ``root/train/<class>/*.JPEG`` tree: ``images`` JPEGs of ``size`` (ImageNet's most
    common, 500x375) at ``quality``, spread over ``classes`` folders, each smooth random content (three octaves
    of upsampled noise) with a little grain, so that files compress to tens of kB as photographs do."""
    rng = np.random.default_rng(seed)
    width, height = size

    def octave(cells: int, amplitude: float) -> np.ndarray:
        low = rng.random((max(1, cells * height // width), cells, 3)).astype(np.float32)
        return amplitude * np.stack([np.asarray(Image.fromarray(low[..., c]).resize(size, Image.BICUBIC))
                                     for c in range(3)], axis=-1)

    paths = []
    for i in range(images):
        folder = os.path.join(root, "train", f"n{i % classes:08d}")
        os.makedirs(folder, exist_ok=True)
        pixels = octave(8, 160) + octave(32, 60) + octave(125, 30) + rng.normal(0, 3, (height, width, 3))
        path = os.path.join(folder, f"img_{i:06d}.JPEG")
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
        paths.append(path)
    return paths


def measure(backend: str, data_path: str, workers: int, device: torch.device, batch_size: int = 64,
            batches: int = 20, warmup: int = 2, input_size: int = 224, min_scale: float = 0.2,
            pipeline: str = "pretrain") -> dict:
    """{img_per_s, img_per_s_per_core, bytes_per_image} of ``pipeline`` on ``backend`` (pil: ``workers``
    DataLoader workers; dali: ``workers`` DALI threads and file-reading workers) over ``batches`` batches after
    ``warmup`` untimed ones (worker start-up, DALI's build), the batches on ``device``, normalized there (and
    for fine-tuning randomly erased); the epoch is the folder, repeated when it is shorter than the run."""
    root = os.path.join(data_path, "train") if os.path.isdir(os.path.join(data_path, "train")) else data_path
    cfg = SimpleNamespace(seed=0, batch_size=batch_size, accum_iter=1, num_workers=workers, pin_mem=True,
                          input_size=input_size, **FINETUNE_AUGMENT)
    session = Session(0, 1, device, "fp32", None)
    if backend == "dali":
        plan = {"pretrain": lambda: pretrain_crops(input_size, min_scale), "finetune": lambda: finetune_plan(cfg),
                "probe": lambda: linprobe_plan(input_size), "eval": lambda: CenterCrops(input_size)}[pipeline]()
        loader = dali_train_loader(cfg, session, ImageFiles(root), plan, num_threads=max(1, workers))
        sample = collate_encoded([loader.dataset[i] for i in range(batch_size)]).nbytes
    else:
        transform = {"pretrain": lambda: build_pretrain_transform(input_size, min_scale),
                     "finetune": lambda: build_finetune_transform(cfg),
                     "probe": lambda: build_linprobe_transform(input_size),
                     "eval": lambda: build_eval_transform(input_size)}[pipeline]()
        loader = train_loader(cfg, session, ImageFiles(root, transform))
        sample = sum(t.nbytes for t in default_collate([loader.dataset[i] for i in range(batch_size)]))
    erase = build_random_erasing(cfg, device) if pipeline == "finetune" else None
    done, start, cpu_start, epoch = -warmup, 0.0, 0.0, 0
    while done < batches:
        begin_epoch(loader, epoch)
        for images, _ in loader:
            images = normalize(images.to(device, non_blocking=True))
            if erase is not None:
                erase(images)
            done += 1
            if done == 0:
                _sync(device)
                start, cpu_start = time.perf_counter(), _tree_cpu_seconds()
            if done == batches:  # measured before the loop is left, which may end its workers (and their counts)
                _sync(device)
                seconds, cpu_seconds = time.perf_counter() - start, _tree_cpu_seconds() - cpu_start
                break
        epoch += 1
    return {"img_per_s": round(batches * batch_size / seconds, 1),
            "img_per_s_per_core": round(batches * batch_size / max(cpu_seconds, 1e-9), 1),
            "bytes_per_image": round(sample / batch_size)}


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and every live process below it (DataLoader
    workers, the forkserver's), from /proc; this process's own on systems without it."""
    if not os.path.isdir("/proc"):
        return time.process_time()
    parents, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser("input pipeline throughput", add_help=True)
    p.add_argument("--data_path", default=None, help="an image folder (train/<class>/* or a folder of images)")
    p.add_argument("--make_folder", default=None, metavar="ROOT",
                   help="write a synthetic ImageNet-like folder of JPEGs at ROOT and exit")
    p.add_argument("--images", default=2000, type=POSITIVE_INT, help="--make_folder: number of JPEGs")
    p.add_argument("--classes", default=10, type=POSITIVE_INT, help="--make_folder: number of class folders")
    p.add_argument("--backends", nargs="+", default=["pil", "dali"], choices=["pil", "dali"],
                   help="dali runs on --device: its CPU operators (dali-cpu) or the GPU's decoder (dali-gpu)")
    p.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES,
                   help="pretrain: RandomResizedCrop + flip; finetune: timm's crop, flip, RandAugment "
                        "rand-m9-mstd0.5-inc1, random erasing 0.25; probe: single-draw crop + flip; eval: resize + "
                        "center crop")
    p.add_argument("--workers", nargs="+", default=[1, 2], type=POSITIVE_INT,
                   help="the sweep: PIL DataLoader workers / DALI threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_name,
                   help="where the batches go; DALI decodes there (cuda: the hardware decoder, 'mixed')")
    p.add_argument("--batch_size", default=64, type=POSITIVE_INT)
    p.add_argument("--batches", default=20, type=POSITIVE_INT, help="timed batches per setting")
    p.add_argument("--warmup", default=2, type=POSITIVE_INT, help="untimed batches first")
    p.add_argument("--input_size", default=224, type=POSITIVE_INT)
    p.add_argument("--min_crop_scale", default=0.2, type=POSITIVE_FRACTION)
    return p


def main(argv: list[str] | None = None) -> dict | None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.make_folder:
        paths = make_folder(args.make_folder, args.images, args.classes)
        mean_kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e3
        print(f"wrote {len(paths)} JPEGs ({mean_kb:.0f} kB on average) under {args.make_folder}/train")
        return None
    if args.data_path is None:
        parser.error("pass --data_path, or --make_folder ROOT to write a synthetic folder first")
    device = torch.device(args.device)
    backends = [b for b in args.backends if b == "pil" or not dali_import_error()]
    rows = []
    for pipeline in args.pipelines:
        for backend in backends:
            for workers in args.workers:
                row = measure(backend, args.data_path, workers, device, args.batch_size, args.batches, args.warmup,
                              args.input_size, args.min_crop_scale, pipeline)
                label = backend if backend == "pil" else f"dali-{'gpu' if device.type == 'cuda' else 'cpu'}"
                rows.append({"pipeline": pipeline, "backend": label, "workers": workers, **row})
    print("| pipeline | backend | workers / threads | img/s | img/s per core | bytes/image |\n"
          "|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['pipeline']} | {row['backend']} | {row['workers']} | {row['img_per_s']:.1f} | "
              f"{row['img_per_s_per_core']:.1f} | {row['bytes_per_image']} |")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    result = {"rows": rows, "device": f"{device.type} ({name}), {os.cpu_count()} CPU cores",
              "batch_size": args.batch_size, "input_size": args.input_size,
              "date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "command": " ".join(["python", "benchmarks/dataload.py", *(sys.argv[1:] if argv is None else argv)])}
    if "dali" in args.backends and "dali" not in backends:
        result["dali_missing"] = dali_import_error()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
