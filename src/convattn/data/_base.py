"""Pieces shared by every dataset: the info record, the in-memory image dataset, split helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..exceptions import ConfigError

__all__ = [
    "BoxedDataset",
    "DatasetInfo",
    "ImageTensorDataset",
    "SPLITS",
    "check_split",
    "default_data_dir",
    "resolve_size",
    "split_seed",
    "subsample",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing it.

    Attributes:
        name: registry name (``"cluttered-digits"``, ``"cifar10"``, ``"folder:/data/pets"``).
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        in_chans: image channels (1 for grayscale, 3 for colour).
        image_size: ``(H, W)`` of the tensors the dataset yields (after distortion and resizing).
        mean: per-channel mean used for normalisation.
        std: per-channel standard deviation used for normalisation.
        class_names: human-readable class names, ``num_classes`` of them.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = field(default=())


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def default_data_dir() -> Path:
    """``$CONVATTN_DATA_DIR`` if set, else ``./data``."""
    return Path(os.environ.get("CONVATTN_DATA_DIR", "data"))


def resolve_size(image_size: int | Sequence[int] | None, what: str = "image_size") -> tuple[int, int] | None:
    """``None`` | ``int`` | ``(H, W)`` -> ``None`` or ``(H, W)``, validated."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ConfigError(f"{what} must be an int or (H, W), got {image_size!r}")
    if min(size) < 1:
        raise ConfigError(f"{what} must be positive, got {image_size!r}")
    return size


_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def split_seed(seed: int, split: str, salt: int = 0) -> int:
    """A 63-bit seed that differs per (seed, split, salt), so every split has its own generator."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLIT_IDS[split], int(salt)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def subsample(n_total: int, size: int | None, seed: int, what: str) -> torch.Tensor | None:
    """Indices of a seeded random subset of ``size`` out of ``n_total`` (``None``: keep all)."""
    if size is None or size >= n_total:
        if size is not None and size < 1:
            raise ConfigError(f"{what} must be positive, got {size}")
        return None
    if size < 1:
        raise ConfigError(f"{what} must be positive, got {size}")
    g = torch.Generator().manual_seed(int(seed) + 7919)
    return torch.randperm(n_total, generator=g)[:size].sort().values


class ImageTensorDataset(Dataset):
    """Images held in memory as ``uint8`` ``(N, C, H, W)``, yielding normalised float tensors.

    The item pipeline is: ``uint8 -> float in [0, 1] -> distort(x, index) -> resize -> augment -> normalise``.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)``.
        labels: ``int64`` tensor ``(N,)``.
        info: the :class:`DatasetInfo` describing the yielded tensors.
        distort: optional ``callable(x, index) -> x`` (deterministic per index).
        resize: optional ``(H, W)`` to resize to (bilinear, antialiased).
        augment: optional ``callable(x) -> x`` applied to the float image in ``[0, 1]``.
        boxes: optional ``(N, 4)`` object boxes ``(x0, y0, x1, y1)`` in pixel edges of ``images``
            (kept as ``boxes``; items stay ``(image, label)``, :meth:`with_boxes` adds them).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        *,
        distort: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        resize: tuple[int, int] | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ConfigError(f"images must be uint8 (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ConfigError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if boxes is not None and tuple(boxes.shape) != (images.shape[0], 4):
            raise ConfigError(f"boxes must have shape ({images.shape[0]}, 4), got {tuple(boxes.shape)}")
        self.boxes = boxes
        self.images = images
        self.labels = labels.long()
        self.targets = self.labels  # torchvision's name, for samplers that look for it
        self.info = info
        self.distort = distort
        self.resize = resize
        self.augment = augment
        self._mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        x = self.images[index].float().div_(255.0)
        if self.distort is not None:
            x = self.distort(x, index)
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            x = torch.nn.functional.interpolate(
                x[None], size=self.resize, mode="bilinear", align_corners=False, antialias=True
            )[0].clamp_(0, 1)
        if self.augment is not None:
            x = self.augment(x)
        x = (x - self._mean) / self._std
        return x, int(self.labels[index])

    def with_boxes(self) -> "BoxedDataset":
        """This dataset yielding ``(image, label, box)``, ``box`` a float ``(4,)`` ``(x0, y0, x1, y1)``
        in pixel edges of the yielded image.

        Raises:
            ConfigError: the dataset has no boxes, or a distortion or augmentation moves its objects.
        """
        return BoxedDataset(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.info.name!r}, size={len(self)}, image_size={self.info.image_size})"


class BoxedDataset(Dataset):
    """An :class:`ImageTensorDataset` whose items are ``(image, label, box)``.

    ``box`` is float ``(4,)`` ``(x0, y0, x1, y1)`` in pixel edges of the yielded image
    (scaled with the dataset's ``resize``); a default-collated batch holds ``(B, 4)`` boxes.
    """

    def __init__(self, dataset: ImageTensorDataset) -> None:
        if getattr(dataset, "boxes", None) is None:
            raise ConfigError(f"dataset {dataset.info.name!r} has no object boxes (cluttered-digits has them)")
        if dataset.distort is not None or dataset.augment is not None:
            raise ConfigError(f"dataset {dataset.info.name!r}: a distortion or augmentation moves the objects; "
                              "its boxes do not follow")
        self.dataset = dataset
        self.info = dataset.info
        self.labels = self.targets = dataset.labels
        boxes = dataset.boxes.float()
        if dataset.resize is not None:
            h, w = dataset.images.shape[-2:]
            sy, sx = dataset.resize[0] / h, dataset.resize[1] / w
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        x, y = self.dataset[index]
        return x, y, self.boxes[index]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dataset!r})"
