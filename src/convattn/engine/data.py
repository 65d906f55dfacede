"""Data loading for the engine: datasets from ``convattn.data``, restorable sample order.

With ``weights`` set, grayscale sets are repeated into three channels for the pretrained
network, and ``preprocessing`` (the weights' resize, crop, mean, std and interpolation) is
the input pipeline of folder datasets.

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

from ..exceptions import ConfigError
from .config import TrainConfig

__all__ = [
    "ResumableSampler",
    "ThreeChannels",
    "folder_transform",
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


class ThreeChannels(Dataset):
    """A grayscale dataset's images repeated into three channels (a 3-channel pretrained network's input)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[index]
        return x.expand(3, *x.shape[1:]), y

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def folder_transform(pre: dict[str, Any], size: tuple[int, int], mean: Any, std: Any, *, train: bool):
    """A folder dataset's transform with ``pre``'s interpolation: random resized crop to ``size`` and flip
    for training; resize the short side to ``pre["resize"]`` then centre-crop ``size`` for evaluation."""
    from torchvision.transforms import v2

    mode = v2.InterpolationMode(pre.get("interpolation", "bilinear"))
    if train:
        geom = [v2.RandomResizedCrop(size, interpolation=mode, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geom = [v2.Resize(int(pre["resize"]), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([v2.ToImage(), *geom, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def build_datasets(config: TrainConfig, splits: tuple[str, ...] = ("train", "val", "test")) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """The datasets of ``config`` for each split, and their info as plain data."""
    from ..data import build_dataset, get_dataset_info

    pre = dict(config.preprocessing) if config.dataset.startswith("folder:") else {}
    image_size = config.image_size or pre.get("crop")
    info = data_info_dict(
        get_dataset_info(config.dataset, data_dir=config.data_dir, image_size=image_size, distort=config.distort),
        config,
    )
    info["mean"], info["std"] = pre.get("mean", info["mean"]), pre.get("std", info["std"])
    if len(info["mean"]) != info["in_chans"] or len(info["std"]) != info["in_chans"]:
        raise ConfigError(f"preprocessing mean and std need {info['in_chans']} values (one per channel), got {info['mean']} and {info['std']}")
    from .build import weights_in_chans  # a grayscale run's own stem takes 1 channel: no repeat then

    gray = bool(config.weights) and info["in_chans"] == 1 and weights_in_chans(config.weights) == 3
    if gray:
        info.update(in_chans=3, mean=info["mean"] * 3, std=info["std"] * 3)
    if pre:  # as applied: the crop is the run's image size, the resize keeps the weights' ratio
        side = min(info["image_size"])
        ratio = pre["resize"] / pre["crop"] if "resize" in pre and "crop" in pre else 1 / 0.875
        pre = {**pre, "crop": side, "resize": int(round(side * ratio))}
        info["preprocessing"] = pre
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
            image_size=image_size,
        )
        if pre:  # the folder dataset's own pipeline, with the weights' interpolation, ratio, mean and std
            train = split == "train" and config.augment is not False
            datasets[split].transform = folder_transform(
                pre, tuple(info["image_size"]), info["mean"], info["std"], train=train)
        if gray:
            datasets[split] = ThreeChannels(datasets[split])
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
