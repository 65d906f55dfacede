"""Data loading for the engine: datasets from ``convattn.data``, restorable sample order.

Each epoch's order is a permutation derived from ``(seed, epoch)`` only
(:class:`ResumableSampler`, a ``DistributedSampler``), so a run resumed in the
middle of an epoch rebuilds the same order and skips the batches it had consumed.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .config import TrainConfig

__all__ = [
    "ResumableSampler",
    "ShardSampler",
    "worker_init_fn",
    "seed_everything",
    "epoch_seed",
    "build_datasets",
    "data_info_dict",
    "make_train_loader",
    "make_eval_loader",
]


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of the DataLoader generator for one epoch of one rank (worker seeds derive from it)."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63 - 1)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and ``random`` inside a DataLoader worker from its torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose per-epoch permutation depends on ``(seed, epoch)`` only,
    and which can start part-way through an epoch.

    Args:
        dataset: the dataset.
        num_replicas: number of processes (1 without DDP).
        rank: this process's rank.
        seed: base seed; the permutation of epoch ``e`` is ``randperm(n, seed + e)``.
        shuffle: permute (training) or keep the dataset order.

    Example:
        >>> s = ResumableSampler(range(10), num_replicas=1, rank=0, seed=0)
        >>> s.set_epoch(3); full = list(s)
        >>> s.set_start(4); list(s) == full[4:]
        True
    """

    def __init__(self, dataset: Any, *, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the current epoch."""
        self.start = max(int(start), 0)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` takes indices ``r, r + world, ...`` (no padding, no repeats)."""

    def __init__(self, dataset: Any, *, num_replicas: int = 1, rank: int = 0):
        self.n = len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


def data_info_dict(info: Any, config: TrainConfig) -> dict[str, Any]:
    """A ``DatasetInfo`` as plain data (stored in checkpoints, used by ``predict``)."""
    size = info.image_size
    if isinstance(size, int):
        size = (size, size)
    return {
        "name": str(info.name),
        "num_classes": int(info.num_classes),
        "in_chans": int(info.in_chans),
        "image_size": [int(s) for s in size],
        "mean": [float(m) for m in info.mean],
        "std": [float(s) for s in info.std],
        "class_names": [str(c) for c in (info.class_names or [str(i) for i in range(info.num_classes)])],
    }


def build_datasets(config: TrainConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """The datasets of ``config`` for each split, and their info as plain data."""
    from ..data import build_dataset, get_dataset_info

    info = data_info_dict(
        get_dataset_info(config.dataset, data_dir=config.data_dir, image_size=config.image_size, distort=config.distort),
        config,
    )
    datasets = {}
    for split in splits:
        datasets[split] = build_dataset(
            config.dataset,
            split,
            data_dir=config.data_dir,
            download=config.download,
            train_size=config.train_size,
            val_size=config.val_size,
            test_size=config.test_size,
            seed=config.seed,
            distort=config.distort,
            augment=config.augment if split == "train" else False,
            image_size=config.image_size,
        )
    return datasets, info


def make_train_loader(
    dataset: Dataset, config: TrainConfig, *, rank: int, world_size: int, pin_memory: bool
) -> tuple[DataLoader, ResumableSampler, torch.Generator]:
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, seed=config.seed, shuffle=True)
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(config.seed, 0, rank))
    drop_last = sampler.num_samples > config.batch_size
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=config.workers,
        worker_init_fn=worker_init_fn,
        generator=generator,
        pin_memory=pin_memory,
    )
    return loader, sampler, generator


def make_eval_loader(dataset: Dataset, config: TrainConfig, *, rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=ShardSampler(dataset, num_replicas=world_size, rank=rank),
        num_workers=config.workers,
        worker_init_fn=worker_init_fn,
        pin_memory=pin_memory,
    )
