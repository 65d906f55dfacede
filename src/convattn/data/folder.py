"""``folder:PATH``: your own images, one sub-folder per class (torchvision's ImageFolder layout).

Splits:

* If ``PATH/train`` exists it is the training split; ``PATH/val`` is the validation
  split (if absent, the last 10 % of each class of ``PATH/train``, after a fixed
  shuffle, is held out as ``val``); ``PATH/test`` is the test split (if absent, the
  validation split is used for testing too). Class names come from ``PATH/train``.
* Otherwise ``PATH`` itself holds the class folders and each class is split
  80 / 10 / 10 % into train / val / test after a fixed shuffle (the same for every
  ``seed``; classes with at least 3 images get at least one val and one test image).

Images are read as RGB (16-bit images scaled by 65535, float ones taken as 0–1 values, grey ones
repeated into three channels; see :mod:`convattn.data.images`); a file that cannot be read raises
an error naming it. Training: ``RandomResizedCrop(image_size)`` + horizontal flip;
evaluation: resize the short side to ``image_size / 0.875`` then centre-crop
``image_size`` (default 224). Normalised with the ImageNet mean and std.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..exceptions import ConfigError, DatasetNotFoundError
from ._base import DatasetInfo, check_split, resolve_size, subsample
from .images import image_tensor, open_image, unit_image

__all__ = ["FolderDataset", "folder_info", "build_folder_dataset", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LAYOUT = "expected PATH/<class>/<image> or PATH/train/<class>/<image> (+ optional PATH/val, PATH/test)"


def _classes(path: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        classes, _ = find_classes(str(path))
    except FileNotFoundError:
        raise DatasetNotFoundError(f"folder:{path}: no class sub-folders; {_LAYOUT}") from None
    return classes


def _samples(path: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        return make_dataset(str(path), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"folder:{path}: {exc}") from None


def _root_and_classes(path: Path) -> tuple[Path, list[str]]:
    if not path.is_dir():
        raise DatasetNotFoundError(f"folder:{path}: no such directory; {_LAYOUT}")
    root = path / "train" if (path / "train").is_dir() else path
    return root, _classes(root)


def _split_per_class(samples: list[tuple[str, int]], fractions: tuple[float, ...]) -> list[list[tuple[str, int]]]:
    """Split each class's (sorted) samples by a fixed shuffle into len(fractions) parts; the last part gets the rest."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    parts: list[list[tuple[str, int]]] = [[] for _ in fractions]
    g = torch.Generator().manual_seed(0)
    for c in sorted(by_class):
        items = sorted(by_class[c])
        order = torch.randperm(len(items), generator=g).tolist()
        n = len(items)
        counts = []
        for f in fractions[1:]:
            k = int(round(n * f))
            counts.append(max(k, 1) if n >= len(fractions) else k)
        first = n - sum(counts)
        bounds = [0, first]
        for k in counts:
            bounds.append(bounds[-1] + k)
        for i in range(len(fractions)):
            parts[i].extend(items[j] for j in order[bounds[i] : bounds[i + 1]])
    return [sorted(p) for p in parts]


def folder_samples(path: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """``(file, label)`` pairs of ``split`` and the class names (see the module docstring)."""
    root, classes = _root_and_classes(path)
    c2i = {c: i for i, c in enumerate(classes)}
    if root == path:
        parts = _split_per_class(_samples(root, c2i), (0.8, 0.1, 0.1))
        chosen = parts[("train", "val", "test").index(split)]
    else:
        val_dir, test_dir = path / "val", path / "test"
        if val_dir.is_dir():
            train, val = _samples(root, c2i), _samples(val_dir, c2i)
        else:
            train, val = _split_per_class(_samples(root, c2i), (0.9, 0.1))
        if split == "train":
            chosen = train
        elif split == "val":
            chosen = val
        else:
            chosen = _samples(test_dir, c2i) if test_dir.is_dir() else val
    if not chosen:
        raise DatasetNotFoundError(f"folder:{path}: no images for split {split!r}; {_LAYOUT}")
    return chosen, classes


def folder_info(path: str | Path, *, image_size=None, distort=None) -> DatasetInfo:
    if distort is not None:
        raise ConfigError("distort= applies to grayscale datasets; folder datasets are read as RGB")
    path = Path(path).expanduser()
    _, classes = _root_and_classes(path)
    size = resolve_size(image_size) or (224, 224)
    return DatasetInfo(f"folder:{path}", len(classes), 3, size, IMAGENET_MEAN, IMAGENET_STD, tuple(classes))


class FolderDataset(Dataset):
    """Images read lazily from files, yielding normalised ``(3, H, W)`` float tensors and labels.

    Args:
        samples: ``(file, label)`` pairs.
        info: the :class:`DatasetInfo`.
        train_transform: use the training augmentation (random resized crop + flip) instead of resize + centre crop.
    """

    def __init__(self, samples: list[tuple[str, int]], info: DatasetInfo, *, train_transform: bool) -> None:
        from torchvision.transforms import v2

        self.samples = list(samples)
        self.targets = [s[1] for s in self.samples]
        self.info = info
        h, w = info.image_size
        if train_transform:
            geom = [v2.RandomResizedCrop((h, w), antialias=True), v2.RandomHorizontalFlip()]
        else:
            geom = [v2.Resize(int(round(min(h, w) / 0.875)), antialias=True), v2.CenterCrop((h, w))]
        self.transform = v2.Compose(
            [v2.ToImage(), *geom, v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with open_image(path) as opened:
                img = unit_image(opened, 3)
        except ConfigError as exc:
            raise ConfigError(f"{self.info.name}: {exc}") from None
        except OSError as exc:
            raise DatasetNotFoundError(f"{self.info.name}: cannot read {path} ({exc.strerror or exc})") from None
        return self.transform(img if img.mode == "RGB" else image_tensor(img, 3)), int(label)

    def __repr__(self) -> str:
        return f"FolderDataset(name={self.info.name!r}, size={len(self)}, image_size={self.info.image_size})"


def build_folder_dataset(
    path: str | Path,
    split: str,
    *,
    size: int | None = None,
    seed: int = 0,
    image_size=None,
    distort=None,
    augment=None,
) -> FolderDataset:
    """One split of ``folder:PATH`` (see the module docstring)."""
    check_split(split)
    info = folder_info(path, image_size=image_size, distort=distort)
    samples, _ = folder_samples(Path(path).expanduser(), split)
    keep = subsample(len(samples), size, seed, f"{split}_size")
    if keep is not None:
        samples = [samples[i] for i in keep.tolist()]
    use_aug = (split == "train") if augment is None else bool(augment)
    return FolderDataset(samples, info, train_transform=use_aug)
