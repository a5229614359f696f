"""The kNN monitor of pretraining: weighted k-nearest-neighbour top-1/top-5 (DINO's evaluation: k = 20, cosine
similarity, votes ``exp(sim / 0.07)``) of the encoder's global-pool features, a labelled bank against a labelled
query set. An image folder gives fixed class-balanced subsets of ``train/`` (bank) and ``val/`` (query);
Fashion-MNIST its train and test splits.

Each process embeds its share of both sets (bf16 autocast on a GPU, fp32 on the CPU), then one all-gather. The
evaluation draws nothing from the training RNG streams: it saves and restores them (``preserved_rng``), and its
subsets come from their own ``torch.Generator``."""
import contextlib
import os
import random
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.data import DataLoader, Dataset, Subset

from base.images import normalize
from util import distributed as dist_util
from util.data import build_dataset, build_eval_transform, class_folders
from util.session import autocast

K, TEMPERATURE = 20, 0.07


def knn_scores(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
               k: int = K, temperature: float = TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """Class votes [Q, C] of query features [Q, D] from their ``k`` most cosine-similar bank features [N, D]
    (labels [N]), each vote weighted ``exp(similarity / temperature)``. Queries go ``chunk`` at a time: the
    similarity matrix is never Q x N whole."""
    query, bank = F.normalize(query.float(), dim=1), F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for rows in query.split(chunk):
        sims, nearest = (rows @ bank.T).topk(k, dim=1)  # [q, k]
        votes = torch.zeros(rows.shape[0], num_classes, device=rows.device)
        out.append(votes.scatter_add_(1, bank_labels[nearest], (sims / temperature).exp()))
    return torch.cat(out)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent of scores [Q, C] against labels [Q] (top-5: top-C when C < 5)."""
    hits = scores.topk(min(5, scores.shape[1]), dim=1).indices == labels[:, None]  # [Q, min(5, C)]
    return (hits[:, 0].float().mean() * 100).item(), (hits.any(dim=1).float().mean() * 100).item()


def balanced_subset(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``size`` items of labels [N] (all when N <= size) taking the classes in turn, each class's items
    in a random order from ``generator``: as many of each class as it has, up to an equal share."""
    if size >= labels.numel():
        return torch.arange(labels.numel())
    order = torch.randperm(labels.numel(), generator=generator)
    by_class = order[torch.sort(labels[order], stable=True).indices]  # random within each class
    sorted_labels = labels[by_class]
    first = torch.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = torch.arange(labels.numel()) - first  # position within its class
    return by_class[torch.sort(rank, stable=True).indices[:size]].sort().values


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Labels [N] of an ``ImageFiles`` or ``FashionMNIST`` split, read without opening an image."""
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets)
    return torch.tensor([label for _, label in dataset.samples])


def has_labels(data_set: str, data_path: str | None) -> bool:
    """Whether the data have a labelled train and validation split: Fashion-MNIST, or ``train/<class>/`` and
    ``val/<class>/`` folders."""
    if data_set == "fashion_mnist":
        return True
    splits = [os.path.join(data_path or "", split) for split in ("train", "val")]
    return all(os.path.isdir(s) and class_folders(s) for s in splits)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block and put the torch (CPU and CUDA), numpy and Python RNG states back as they were."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Under --fsdp, the root unit's own weights (the patch embedding, the norms) gathered while the block runs:
    the encoder is called without the model's forward, which would gather them; the blocks gather their own."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


@dataclass(frozen=True)
class KnnResult:
    top1: float
    top5: float
    seconds: float


class KnnMonitor:
    """The fixed bank and query subsets of a run's data, and their evaluation with an encoder."""

    def __init__(self, data_set: str, data_path: str | None, input_size: int, bank_size: int, query_size: int,
                 seed: int, batch_size: int, num_workers: int):
        transform = build_eval_transform(input_size)
        train = build_dataset(data_set, data_path, transform, train=True)
        val = build_dataset(data_set, data_path, transform, train=False, classes=getattr(train, "classes", None))
        self.num_classes = len(train.classes)
        gen = torch.Generator().manual_seed(seed)
        self.bank, self.query = (self._subset(split, size, gen) for split, size in
                                 ((train, bank_size), (val, query_size)))
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    @staticmethod
    def _subset(split: Dataset, size: int, gen: torch.Generator) -> tuple[Subset, torch.Tensor]:
        """This process's share of a class-balanced subset, padded to the same length on every process (an
        FSDP forward is a collective: each runs as many batches), and the labels of the whole subset [S]."""
        labels = dataset_labels(split)
        chosen = balanced_subset(labels, size, gen)
        world, rank = dist_util.get_world_size(), dist_util.get_rank()
        per_rank = -(-len(chosen) // world)
        padded = torch.cat([chosen, chosen[:1].repeat(per_rank * world - len(chosen))])
        return Subset(split, padded[rank * per_rank:(rank + 1) * per_rank].tolist()), labels[chosen]

    @torch.no_grad()
    def embed(self, encoder: nn.Module, part: tuple[Subset, torch.Tensor], device: torch.device,
              amp_dtype: torch.dtype | None) -> torch.Tensor:
        """Global-pool features [S, D] (fp32) of a subset: every process's share, gathered once."""
        subset, labels = part
        loader = DataLoader(subset, batch_size=self.batch_size, num_workers=self.num_workers,
                            generator=torch.Generator().manual_seed(self.seed))
        feats = []
        for imgs, _ in loader:
            with autocast(device, amp_dtype):
                out = encoder(normalize(imgs.to(device, non_blocking=True)))  # no ids_keep: every patch, unmasked
            feats.append(out.patches.float().mean(dim=1))  # [B, D]
        return dist_util.all_gather_cat(torch.cat(feats))[:len(labels)]

    def evaluate(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> KnnResult:
        """Top-1/top-5 of ``model.encoder`` (put in eval mode meanwhile) and the seconds it took; the RNG
        streams end as they began."""
        start, encoder = time.time(), model.encoder
        was_training = encoder.training
        encoder.eval()
        try:
            with preserved_rng(), gathered(model):
                bank = self.embed(encoder, self.bank, device, amp_dtype)
                query = self.embed(encoder, self.query, device, amp_dtype)
        finally:
            encoder.train(was_training)
        scores = knn_scores(query, bank, self.bank[1].to(device), self.num_classes)
        top1, top5 = topk_accuracy(scores, self.query[1].to(device))
        return KnnResult(top1, top5, time.time() - start)
