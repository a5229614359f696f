"""The pretraining input pipeline on NVIDIA DALI: JPEG decoding (the GPU's hardware decoder, or the CPU),
crop, bicubic resize and flip in DALI, with the data order and the crops of the PIL path.

Worker processes of an ordinary ``util.session.train_loader`` (the same ``ResumableSampler``, per-item
seeding, ``begin_epoch`` and resume) read each file's bytes and draw its crop window and flip exactly as the
PIL path's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` would (the image size from the file's header);
DALI decodes only that window (``fn.decoders.image_slice``, a fused decode + crop) and finishes the batch.
So a seed gives the PIL path's windows and flips, an epoch is resumable part-way, and DALI's thread count
changes no result. A batch DALI cannot decode (a corrupt file) is decoded with PIL instead, its unreadable
files skipped and counted as ``ImageFiles`` does. Fine-tuning and linear probing keep the PIL path.
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
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import functional as TF

from base.errors import UsageError
from base.images import is_deep, read_image
from util.config import RunConfig
from util.data import ImageFiles, UNREADABLE
from util.session import Session, train_loader

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


class EncodedCrops(torch.utils.data.Dataset):
    """``files``' item ``i`` as its encoded bytes, its crop window (top, left, height, width) and flip, drawn
    as ``util.data.build_pretrain_transform(input_size, min_scale)`` draws them from the same RNG state
    (under ``SeededItems``: the PIL path's windows and flips), and its label. An unreadable file gives the next
    readable one's, as in ``ImageFiles``."""

    def __init__(self, files: ImageFiles, input_size: int, min_scale: float):
        self.files = files
        self.crop = transforms.RandomResizedCrop(input_size, scale=(min_scale, 1.0),
                                                 interpolation=transforms.InterpolationMode.BICUBIC)

    def __len__(self) -> int:
        return len(self.files)

    def skipped_flags(self) -> torch.Tensor:
        """``ImageFiles.skipped_flags``: what the trainer counts and logs."""
        return self.files.skipped_flags()

    def __getitem__(self, index: int) -> tuple[bytes, tuple[int, int, int, int], bool, int, int, int]:
        file, (data, header), label = self.files.read(index, _load_encoded)
        window = self.crop.get_params(header, self.crop.scale, self.crop.ratio)
        flip = bool(torch.rand(1) < 0.5)  # RandomHorizontalFlip's draw, after the crop's
        return data, window, flip, label, index, file


@dataclass
class EncodedBatch:
    """A batch of ``EncodedCrops`` items, packed so that a worker hands it over in a few shared buffers."""

    data: torch.Tensor  # [total bytes] uint8, the files one after another
    offsets: torch.Tensor  # [B + 1] int64: file k is data[offsets[k]:offsets[k + 1]]
    windows: torch.Tensor  # [B, 4] int64: top, left, height, width
    flips: torch.Tensor  # [B] bool
    labels: torch.Tensor  # [B] int64
    indices: torch.Tensor  # [B] int64: the sampler's indices
    files: torch.Tensor  # [B] int64: the files read (another where the sampler's was unreadable)

    def encoded(self, k: int) -> np.ndarray:
        return self.data[self.offsets[k]:self.offsets[k + 1]].numpy()


def collate_encoded(items: list) -> EncodedBatch:
    datas, windows, flips, labels, indices, files = zip(*items)
    offsets = np.cumsum([0] + [len(d) for d in datas])
    return EncodedBatch(torch.frombuffer(bytearray(b"".join(datas)), dtype=torch.uint8),
                        torch.from_numpy(offsets), torch.tensor(windows), torch.tensor(flips),
                        torch.tensor(labels), torch.tensor(indices), torch.tensor(files))


def pil_finish(image: Image.Image, window: torch.Tensor, flip: bool, size: int) -> torch.Tensor:
    """The PIL path's transform with the window and flip given: RGB image -> uint8 [3, size, size]."""
    top, left, height, width = window.tolist()
    image = TF.resized_crop(image, top, left, height, width, [size, size], TF.InterpolationMode.BICUBIC)
    if flip:
        image = TF.hflip(image)
    return TF.pil_to_tensor(image)


class DaliLoader:
    """Iterated like the PIL path's DataLoader: ``len`` batches of (images ``[B, 3, S, S]`` uint8 on
    ``device``, labels ``[B]`` int64) per epoch. ``sampler``, ``batch_size`` and ``dataset`` are those of
    ``host``, the DataLoader of ``EncodedBatch``es, so that ``util.session.begin_epoch`` and the trainer's
    skipped-file count treat both paths alike.

    ``host``: a ``train_loader`` over ``EncodedCrops``; ``device``: a GPU (hardware/hybrid "mixed" decoding,
    resize and flip on it) or the CPU; ``num_threads``: DALI's CPU threads."""

    def __init__(self, host: DataLoader, input_size: int, device: torch.device, num_threads: int):
        self.host, self.input_size, self.device, self.num_threads = host, input_size, device, num_threads
        self.sampler, self.batch_size, self.dataset = host.sampler, host.batch_size, host.dataset
        self._pipe = None
        self._source: Iterator[EncodedBatch] = iter(())
        self._refeed: deque[EncodedBatch] = deque()  # fetched batches a rebuilt pipeline has to decode
        self._fed: deque[EncodedBatch] = deque()  # batches handed to DALI, oldest first

    def __len__(self) -> int:
        return len(self.host)

    @property
    def files(self) -> ImageFiles:
        return self.dataset.dataset.files

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._pipe is None:
            self._pipe = self._build()
        self._source, finished = iter(self.host), False
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            for _ in range(len(self)):
                try:
                    (out,) = self._pipe.run(stream)
                except RuntimeError as err:  # DALI could not decode a file: the pipeline has to be rebuilt
                    batch = self._fed.popleft()
                    self._refeed.extend(self._fed)
                    self._fed.clear()
                    self._pipe = None
                    images = self._decode_on_host(batch, err)
                    self._pipe = self._build()
                else:
                    batch = self._fed.popleft()
                    images = torch.from_dlpack(out.as_tensor())
                yield images, batch.labels
            finished = True
        finally:
            if finished:
                self._pipe.reset()  # DALI asked past the last batch: the epoch's end
            else:  # left part-way (a stop): its prefetched batches are no use to the next epoch
                self._pipe = None
            self._fed.clear()
            self._refeed.clear()
            self._source = iter(())

    def _next_batch(self) -> tuple[list, list, list, list]:
        """DALI's source: the next batch's encoded files, window anchors (x, y), window shapes (w, h) and
        flips; StopIteration at the end of the epoch."""
        batch = self._refeed.popleft() if self._refeed else next(self._source)
        self._fed.append(batch)
        windows = batch.windows.numpy()
        anchors = np.ascontiguousarray(windows[:, [1, 0]], dtype=np.float32)
        shapes = np.ascontiguousarray(windows[:, [3, 2]], dtype=np.float32)
        flips = batch.flips.numpy().astype(np.int32)
        return [batch.encoded(k) for k in range(len(flips))], list(anchors), list(shapes), list(flips)

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import Pipeline

        _guard_forks()
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        pipe = Pipeline(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                        prefetch_queue_depth=2)
        with pipe:
            encoded, anchors, shapes, flips = fn.external_source(self._next_batch, num_outputs=4, batch=True,
                                                                 dtype=[types.UINT8, types.FLOAT, types.FLOAT,
                                                                        types.INT32])
            # only the window is decoded; EXIF orientation is ignored, as PIL's convert("RGB") ignores it
            images = fn.decoders.image_slice(encoded, anchors, shapes, device="mixed" if gpu else "cpu",
                                             output_type=types.RGB, normalized_anchor=False,
                                             normalized_shape=False, adjust_orientation=False)
            # uint8, as PIL's: the trainer normalizes on the device (base.images.normalize)
            images = fn.resize(images, size=(self.input_size, self.input_size), interp_type=types.INTERP_CUBIC,
                               antialias=True)
            images = fn.crop_mirror_normalize(images, mirror=flips, dtype=types.UINT8, output_layout="CHW")
            pipe.set_outputs(images)
        pipe.build()
        return pipe

    def _decode_on_host(self, batch: EncodedBatch, err: RuntimeError) -> torch.Tensor:
        """The batch DALI failed on, made by the PIL path's transform with the same windows and flips; a file
        PIL cannot read either is flagged unreadable and replaced by the next readable one (its own crop)."""
        images, before = [], self.files.skipped
        for k, index in enumerate(batch.indices.tolist()):
            item = (batch.encoded(k).tobytes(), batch.windows[k], bool(batch.flips[k]), batch.files[k])
            while True:
                try:
                    image = read_image(item[0])
                    break
                except UNREADABLE as pil_err:
                    self.files.mark_unreadable(int(item[3]), pil_err)
                    data, window, flip, _, _, file = self.dataset[index]
                    item = (data, torch.tensor(window), flip, file)
            images.append(pil_finish(image, item[1], item[2], self.input_size))
        reason = str(err).strip().splitlines()[0]
        warnings.warn(f"DALI could not decode a batch ({reason}): decoded it with PIL instead, "
                      f"{self.files.skipped - before} more unreadable file(s) skipped")
        return torch.stack(images).to(self.device)


def dali_train_loader(cfg: RunConfig, session: Session, dataset: ImageFiles, min_scale: float,
                      num_threads: int | None = None) -> DaliLoader:
    """``DaliLoader`` over this process's shard of ``dataset`` (``train_loader``'s sampler and batches), crops
    as ``build_pretrain_transform(cfg.input_size, min_scale)``; DALI's CPU threads: ``num_threads``, default
    ``--num_workers`` (at least 1)."""
    if not isinstance(dataset, ImageFiles):
        raise UsageError("--data_backend dali reads image files only: pass --data_backend pil")
    # the workers restart every epoch, while DALI's threads run: forking then can copy a lock another thread
    # holds and hang the worker (seen: the main process waiting forever for a batch's shared memory), so they
    # start from the forkserver's clean process instead
    host = train_loader(cfg, session, EncodedCrops(dataset, cfg.input_size, min_scale), collate_fn=collate_encoded,
                        start_method="forkserver")
    threads = num_threads if num_threads is not None else max(1, cfg.num_workers)
    return DaliLoader(host, cfg.input_size, session.device, threads)
