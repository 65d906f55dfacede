"""Datasets: an embedded default that needs no download, torchvision sets, and image folders.

* ``cluttered-digits`` (default): 60×60 cluttered, rotated handwritten digits, embedded.
* ``digits``: the 1,797 plain 8×8 scikit-learn scans, embedded.
* ``mnist``, ``fashion-mnist``, ``kmnist``, ``cifar10``, ``cifar100``, ``svhn``: torchvision's
  files under ``data_dir`` (``download=True`` fetches them).
* ``folder:PATH``: an ImageFolder tree of your own images.

``build_dataset`` returns a ``torch.utils.data.Dataset`` of ``(normalised float
tensor (C, H, W), int label)`` with an ``.info`` attribute (:class:`DatasetInfo`).

Example:
    >>> from convattn.data import build_dataset, get_dataset_info
    >>> info = get_dataset_info("cluttered-digits")
    >>> info.num_classes, info.in_chans, info.image_size
    (10, 1, (60, 60))
    >>> ds = build_dataset("cluttered-digits", "val", val_size=8)
    >>> x, y = ds[0]
    >>> x.shape, isinstance(y, int)
    (torch.Size([1, 60, 60]), True)
"""

from __future__ import annotations

import difflib
import fnmatch
from pathlib import Path

from torch.utils.data import Dataset

from ..exceptions import ConfigError
from ._base import DatasetInfo, check_split, default_data_dir
from .cluttered import build_cluttered_digits, build_digits, cluttered_info, digits_info
from .distort import DISTORTIONS, Distortion
from .folder import build_folder_dataset, folder_info
from .torchvision_sets import TV_SETS, build_tv_dataset, tv_info

__all__ = [
    "DatasetInfo",
    "Distortion",
    "DISTORTIONS",
    "DEFAULT_DATASET",
    "build_dataset",
    "get_dataset_info",
    "list_datasets",
]

DEFAULT_DATASET = "cluttered-digits"
_EMBEDDED = ("cluttered-digits", "digits")
_NAMES = (*_EMBEDDED, *TV_SETS)


def list_datasets(pattern: str = "*") -> list[str]:
    """Names of the built-in datasets matching the shell-style ``pattern`` (sorted).

    ``folder:PATH`` (any ImageFolder tree) is always available and not listed.

    Example:
        >>> list_datasets("*mnist")
        ['fashion-mnist', 'kmnist', 'mnist']
    """
    return sorted(n for n in _NAMES if fnmatch.fnmatchcase(n, pattern))


def _check_name(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {name!r}")
    if name.startswith("folder:"):
        if not name[len("folder:") :]:
            raise ConfigError("folder: needs a path, e.g. folder:/data/pets")
        return name
    if name not in _NAMES:
        close = difflib.get_close_matches(name, _NAMES, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown dataset {name!r}{hint} (known: {', '.join(_NAMES)}, folder:PATH)")
    return name


def _check_distort(distort: str | None) -> str | None:
    if distort in (None, "", "none"):
        return None
    if distort not in DISTORTIONS:
        raise ConfigError(f"distort must be one of {', '.join(DISTORTIONS)} or None, got {distort!r}")
    return distort


def get_dataset_info(
    name: str,
    data_dir: str | Path | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    distort: str | None = None,
) -> DatasetInfo:
    """What ``build_dataset(name, ...)`` will yield, without loading any images.

    Args:
        name: a name from :func:`list_datasets` or ``"folder:PATH"``.
        data_dir: where torchvision files live (default ``$CONVATTN_DATA_DIR`` or ``./data``);
            only CIFAR-100's class names are read from it.
        image_size: the same value you pass to ``build_dataset`` (changes ``info.image_size``).
        distort: the same value you pass to ``build_dataset`` (``"rts"`` enlarges the image by 1.5).

    Raises:
        ConfigError: unknown name or option.
        DatasetNotFoundError: ``folder:PATH`` that does not exist.
    """
    name = _check_name(name)
    distort = _check_distort(distort)
    if name == "cluttered-digits":
        return cluttered_info(image_size=image_size, distort=distort)
    if name == "digits":
        return digits_info(image_size=image_size, distort=distort)
    if name.startswith("folder:"):
        return folder_info(name[len("folder:") :], image_size=image_size, distort=distort)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return tv_info(name, data_dir=root, image_size=image_size, distort=distort)


def build_dataset(
    name: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    train_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    distort: str | None = None,
    augment: bool | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> Dataset:
    """Build one split of a dataset.

    Args:
        name: a name from :func:`list_datasets` or ``"folder:PATH"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        data_dir: root of the torchvision files (default ``$CONVATTN_DATA_DIR`` or ``./data``).
        download: fetch missing torchvision files (needs network).
        train_size: number of training images; for ``cluttered-digits`` how many to
            generate (default 12,000), elsewhere a seeded random subset (default: all).
        val_size: the same for the validation split (``cluttered-digits`` default 2,000).
        test_size: the same for the test split (``cluttered-digits`` default 2,000).
        seed: generation / subset / distortion seed.
        distort: ``"rotate"``, ``"rts"``, ``"projective"`` or ``"elastic"`` (grayscale sets only),
            the spatial-transformer paper's distortions, deterministic per image and seed.
        augment: ``None``: the dataset's usual augmentation on ``train`` only;
            ``True`` / ``False``: force it on / off.
        image_size: resize to this size (``int`` or ``(H, W)``); for ``cluttered-digits`` the
            canvas size (default 60); for ``folder:`` the crop size (default 224).

    Returns:
        a ``Dataset`` of ``(float tensor (C, H, W), int label)`` with an ``info`` attribute.

    Raises:
        ConfigError: unknown name, split or option.
        DatasetNotFoundError: files missing (the message says which and where).
    """
    name = _check_name(name)
    check_split(split)
    distort = _check_distort(distort)
    size = {"train": train_size, "val": val_size, "test": test_size}[split]
    common = dict(size=size, seed=seed, image_size=image_size, distort=distort, augment=augment)
    if name == "cluttered-digits":
        return build_cluttered_digits(split, **common)
    if name == "digits":
        return build_digits(split, **common)
    if name.startswith("folder:"):
        return build_folder_dataset(name[len("folder:") :], split, **common)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return build_tv_dataset(name, split, data_dir=root, download=download, **common)
