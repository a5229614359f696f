"""The input pipelines on NVIDIA DALI: JPEG decoding (the GPU's hardware decoder, or the CPU), crop, bicubic
resize, flip and fine-tuning's RandAugment in DALI, with the data order, crops and draws of the PIL path, for
pretraining, fine-tuning, linear probing and evaluation.

Worker processes of an ordinary ``util.session.train_loader`` (the same ``ResumableSampler``, per-item
seeding, ``begin_epoch`` and resume) read each file's bytes and draw its plan (``util.dali_plans``: crop window,
flip, RandAugment operations) exactly as the PIL path's transform would (the image size from the file's
header); DALI decodes only that window (``fn.decoders.image_slice``, a fused decode + crop) and carries out the
rest on the batch. So a seed gives the PIL path's windows, flips and RandAugment choices, an epoch is resumable
part-way, and DALI's thread count changes no result. A batch DALI cannot decode (a corrupt file) is decoded with
PIL and handed to DALI again, its unreadable files skipped and counted as ``ImageFiles`` does.
"""
import functools
import io
import os
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler
from torchvision import transforms

from base.errors import UsageError
from base.images import is_deep, read_image
from util.config import RunConfig
from util.dali_plans import CenterCrops, RandomCrops
from util.data import ImageFiles, UNREADABLE
from util.session import Session, ignore_stop_signals, train_loader

Plan = RandomCrops | CenterCrops

_ORPHANS: list = []  # a forked child's copies of the parent's native DALI pipelines (_forget_pipelines_in_child)
DALI_PACKAGE = "nvidia-dali-cuda130"


@functools.cache
def dali_import_error() -> str:
    """Why ``nvidia.dali`` cannot be used here ("" when it imports)."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except (ImportError, OSError) as err:
        return str(err)
    return ""


def _forget_pipelines_in_child(pipeline_class: type) -> None:
    """In a forked child the parent's DALI pipelines are copies whose threads did not come along: collecting one
    there (``Pipeline.__del__`` shuts its native pipeline down, joining those threads) would hang the child, e.g.
    a DataLoader worker forked after a DALI run. Their native handles move to ``_ORPHANS`` instead, never freed:
    such children leave by ``os._exit`` (multiprocessing's fork start), without finalizing them."""
    for ref in list(pipeline_class._pipes):
        pipe = ref()
        if pipe is not None and pipe._pipe is not None:
            _ORPHANS.append(pipe._pipe)
            pipe._pipe = None


@functools.cache
def _guard_forks() -> None:
    """Register ``_forget_pipelines_in_child`` once, when this process builds its first pipeline (nothing is
    imported in the child, where another thread may have held the import lock at the fork)."""
    from nvidia.dali import Pipeline

    os.register_at_fork(after_in_child=functools.partial(_forget_pipelines_in_child, Pipeline))


def choose_backend(requested: str | None, device: torch.device, data_set: str) -> str:
    """The pretraining input pipeline: ``requested``, or (None) DALI for an image folder on a GPU when DALI
    imports, else PIL. Raises ``UsageError`` when DALI is asked for but cannot serve."""
    if requested is None:
        use_dali = device.type == "cuda" and data_set == "imagefolder" and not dali_import_error()
        return "dali" if use_dali else "pil"
    if requested == "dali":
        if data_set != "imagefolder":
            raise UsageError(f"--data_backend dali reads image files; --data_set {data_set} is decoded in memory: "
                             "pass --data_backend pil")
        if dali_import_error():
            raise UsageError(f"--data_backend dali needs NVIDIA DALI, which does not import here "
                             f"({dali_import_error()}): pip install {DALI_PACKAGE}, or pass --data_backend pil")
    return requested


def _load_encoded(path: str) -> tuple[bytes, Image.Image]:
    """The file's bytes, and PIL's reading of its header alone (the size; a file that is no image fails here).
    A JPEG must also end its last scan with the end-of-image marker: DALI decodes only the crop's rows, so a
    truncated file would pass or fail by where the crop falls, while PIL's full decode always refuses it. An
    image deeper than 8 bits (``util.data.is_deep``) is handed over as the PNG of the PIL path's 8-bit image:
    DALI would scale its pixels otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    header = read_image(data, header_only=True)
    # FF D9 cannot occur inside entropy-coded data (FF is stuffed there), and an EXIF thumbnail's EOI comes
    # before the main image's scans (FF DA)
    if header.format == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise OSError("JPEG data end before the end-of-image marker (a truncated file)")
    if is_deep(header.mode):
        encoded = io.BytesIO()
        read_image(data).save(encoded, format="PNG")
        data = encoded.getvalue()
    return data, header


class EncodedItems(torch.utils.data.Dataset):
    """``files``' item ``i`` as its encoded bytes, its plan (``plan.draw`` of its header: under ``SeededItems``
    the window, flip and augmentation draws of the PIL transform ``plan`` stands for), its label, ``i`` and the
    file read. An unreadable file gives the next readable one's, as in ``ImageFiles``."""

    def __init__(self, files: ImageFiles, plan: Plan):
        self.files, self.plan = files, plan

    def __len__(self) -> int:
        return len(self.files)

    def skipped_flags(self) -> torch.Tensor:
        """``ImageFiles.skipped_flags``: what the trainer counts and logs."""
        return self.files.skipped_flags()

    def __getitem__(self, index: int) -> tuple[bytes, list[float], int, int, int]:
        file, (data, header), label = self.files.read(index, _load_encoded)
        return data, self.plan.draw(header), label, index, file


@dataclass
class EncodedBatch:
    """A batch of ``EncodedItems``, packed so that a worker hands it over in a few shared buffers."""

    data: torch.Tensor  # [total bytes] uint8, the files one after another
    offsets: torch.Tensor  # [B + 1] int64: file k is data[offsets[k]:offsets[k + 1]]
    plans: torch.Tensor  # [B, P] float64: each image's plan (util.dali_plans)
    labels: torch.Tensor  # [B] int64
    indices: torch.Tensor  # [B] int64: the sampler's indices
    files: torch.Tensor  # [B] int64: the files read (another where the sampler's was unreadable)

    def encoded(self, k: int) -> np.ndarray:
        return self.data[self.offsets[k]:self.offsets[k + 1]].numpy()

    @property
    def nbytes(self) -> int:
        """The bytes a worker hands over for this batch."""
        return sum(t.nbytes for t in (self.data, self.offsets, self.plans, self.labels, self.indices, self.files))


def collate_encoded(items: list) -> EncodedBatch:
    datas, plans, labels, indices, files = zip(*items)
    offsets = np.cumsum([0] + [len(d) for d in datas])
    return EncodedBatch(torch.frombuffer(bytearray(b"".join(datas)), dtype=torch.uint8),
                        torch.from_numpy(offsets), torch.tensor(plans, dtype=torch.float64),
                        torch.tensor(labels), torch.tensor(indices), torch.tensor(files))


def _png(image: Image.Image) -> bytes:
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return encoded.getvalue()


class DaliLoader:
    """Iterated like the PIL path's DataLoader: ``len`` batches of (images ``[B, 3, S, S]`` uint8 on
    ``device``, labels ``[B]`` int64) per epoch. ``sampler``, ``batch_size`` and ``dataset`` are those of
    ``host``, the DataLoader of ``EncodedBatch``es, so that ``util.session.begin_epoch``, the trainer's
    skipped-file count and evaluation's ``EvalShard`` treat both paths alike.

    ``host``: a DataLoader over ``EncodedItems`` (``train_loader``'s for training); ``plan``: what DALI does to
    each image (``util.dali_plans``); ``device``: a GPU (hardware/hybrid "mixed" decoding, the rest on it) or the
    CPU; ``num_threads``: DALI's CPU threads."""

    def __init__(self, host: DataLoader, plan: Plan, device: torch.device, num_threads: int):
        self.host, self.plan, self.device, self.num_threads = host, plan, device, num_threads
        self.sampler, self.batch_size, self.dataset = host.sampler, host.batch_size, host.dataset
        self._pipe = None
        self._source: Iterator[EncodedBatch] = iter(())
        self._refeed: deque[EncodedBatch] = deque()  # fetched batches a rebuilt pipeline has to decode
        self._fed: deque[EncodedBatch] = deque()  # batches handed to DALI, oldest first

    def __len__(self) -> int:
        return len(self.host)

    @property
    def files(self) -> ImageFiles:
        return getattr(self.dataset, "dataset", self.dataset).files  # under SeededItems when training

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._pipe is None:
            self._pipe = self._build()
        self._source, finished, done = iter(self.host), False, 0
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            while done < len(self):
                try:
                    (out,) = self._pipe.run(stream)
                except RuntimeError as err:  # DALI could not decode a file: the pipeline has to be rebuilt
                    batch = self._fed.popleft()
                    self._refeed.extend(self._fed)
                    self._fed.clear()
                    self._refeed.appendleft(self._decoded_on_host(batch, err))
                    self._pipe = None
                    self._pipe = self._build()
                    continue
                batch = self._fed.popleft()
                done += 1
                yield torch.from_dlpack(out.as_tensor()), batch.labels
            finished = True
        finally:
            if finished:
                self._pipe.reset()  # DALI asked past the last batch: the epoch's end
            else:  # left part-way (a stop): its prefetched batches are no use to the next epoch
                self._pipe = None
            self._fed.clear()
            self._refeed.clear()
            self._source = iter(())

    def _next_batch(self) -> list:
        """DALI's source: the next batch's encoded files and its plans' inputs (``plan.feed``); StopIteration at
        the end of the epoch."""
        batch = self._refeed.popleft() if self._refeed else next(self._source)
        self._fed.append(batch)
        return [[batch.encoded(k) for k in range(len(batch.labels))], *self.plan.feed(batch.plans.numpy())]

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        _guard_forks()
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        kinds = [types.UINT8, *self.plan.types()]

        # conditionals: RandAugment applies each image's own operation (nvidia.dali.auto_aug.core.select)
        @pipeline_def(enable_conditionals=self.plan.layers > 0)
        def definition():
            encoded, *inputs = fn.external_source(self._next_batch, num_outputs=len(kinds), batch=True, dtype=kinds)
            return self.plan.graph(encoded, inputs, gpu)

        pipe = definition(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                          prefetch_queue_depth=2)
        pipe.build()
        return pipe

    def _decoded_on_host(self, batch: EncodedBatch, err: RuntimeError) -> EncodedBatch:
        """The batch DALI failed on, each file decoded by PIL and handed to DALI again as a PNG with its plan; a
        file PIL cannot read either is flagged unreadable and replaced by the next readable one (its own plan)."""
        items, before = [], self.files.skipped
        for k, index in enumerate(batch.indices.tolist()):
            data, plan, label, file = batch.encoded(k).tobytes(), batch.plans[k].tolist(), batch.labels[k], \
                int(batch.files[k])
            while True:
                try:
                    image = read_image(data)
                    break
                except UNREADABLE as pil_err:
                    self.files.mark_unreadable(file, pil_err)
                    data, plan, label, _, file = self.dataset[index]
            items.append((_png(image), plan, int(label), index, file))
        reason = str(err).strip().splitlines()[0]
        warnings.warn(f"DALI could not decode a batch ({reason}): decoded it with PIL instead, "
                      f"{self.files.skipped - before} more unreadable file(s) skipped")
        return collate_encoded(items)


def _threads(cfg: RunConfig, num_threads: int | None) -> int:
    return num_threads if num_threads is not None else max(1, cfg.num_workers)


def dali_train_loader(cfg: RunConfig, session: Session, dataset: ImageFiles, plan: Plan,
                      num_threads: int | None = None, allow_empty: bool = False) -> DaliLoader:
    """``DaliLoader`` over this process's shard of ``dataset`` (``train_loader``'s sampler and batches, and its
    ``allow_empty``), each image as ``plan`` says; DALI's CPU threads: ``num_threads``, default
    ``--num_workers`` (at least 1)."""
    if not isinstance(dataset, ImageFiles):
        raise UsageError("--data_backend dali reads image files only: pass --data_backend pil")
    # while DALI's threads run, forking can copy a lock another thread holds and hang the worker (seen: the main
    # process waiting forever for a batch's shared memory), so the workers start from the forkserver's clean
    # process instead
    host = train_loader(cfg, session, EncodedItems(dataset, plan), allow_empty, collate_encoded,
                        start_method="forkserver")
    return DaliLoader(host, plan, session.device, _threads(cfg, num_threads))


def dali_eval_loader(cfg: RunConfig, session: Session, dataset: ImageFiles, sampler: Sampler,
                     num_threads: int | None = None) -> DaliLoader:
    """Evaluation's ``DaliLoader``: ``dataset`` in ``sampler``'s order, the last batch partial, each image
    resized and center-cropped as ``util.data.build_eval_transform``."""
    host = DataLoader(EncodedItems(dataset, CenterCrops(cfg.input_size)), batch_size=cfg.batch_size,
                      sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_encoded, drop_last=False,
                      multiprocessing_context="forkserver" if cfg.num_workers else None,
                      worker_init_fn=ignore_stop_signals)  # the epoch's evaluation must finish at a stop signal
    return DaliLoader(host, CenterCrops(cfg.input_size), session.device, _threads(cfg, num_threads))


def pretrain_crops(input_size: int, min_scale: float) -> RandomCrops:
    """``util.data.build_pretrain_transform(input_size, min_scale)``'s plan: torchvision's RandomResizedCrop."""
    return RandomCrops(input_size, transforms.RandomResizedCrop.get_params, (min_scale, 1.0))
