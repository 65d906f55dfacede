"""The torchvision image-classification sets, read from their usual on-disk formats.

Files live under ``data_dir`` exactly where torchvision puts them, so a directory
already filled by torchvision works as is:

============== ====================================================================
name           files
============== ====================================================================
mnist          ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
fashion-mnist  ``FashionMNIST/raw/...`` (same four names)
kmnist         ``KMNIST/raw/...`` (same four names)
cifar10        ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``
cifar100       ``cifar-100-python/{train,test,meta}``
svhn           ``svhn/{train,test}_32x32.mat``
============== ====================================================================

With ``download=True`` the files are fetched through torchvision when they are
missing; without it (or when the download fails) a :class:`DatasetNotFoundError`
names the missing files. The validation split is the **last 5,000 images of the
training files** (the last 10 % if they hold fewer than 50,000), the rest is
``train``; ``test`` is the official test set.

Default training augmentation: CIFAR-10/100 random crop with 4 px padding and
horizontal flip; SVHN random crop with 4 px padding (no flip: digits);
Fashion-MNIST random crop with 2 px padding and horizontal flip; MNIST and KMNIST
none. Evaluation splits are never augmented unless ``augment=True``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..exceptions import ConfigError, DatasetNotFoundError
from ._base import DatasetInfo, ImageTensorDataset, check_split, resolve_size, subsample
from .distort import Distortion, distorted_size

__all__ = ["TV_SETS", "TVSpec", "tv_info", "build_tv_dataset", "VAL_HOLDOUT"]

VAL_HOLDOUT = 5_000

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class TVSpec:
    name: str
    fmt: str  # "idx" | "cifar10" | "cifar100" | "svhn"
    folder: str  # under data_dir
    tv_class: str  # torchvision.datasets class used for downloading
    in_chans: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    crop_pad: int  # default train augmentation: random crop with this padding (0: none)
    flip: bool
    url: str

    def files(self, train: bool) -> list[str]:
        if self.fmt == "idx":
            return list(_MNIST_FILES["train" if train else "test"])
        if self.fmt == "cifar10":
            return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        if self.fmt == "cifar100":
            return ["train"] if train else ["test"]
        return ["train_32x32.mat" if train else "test_32x32.mat"]

    def meta_files(self) -> list[str]:
        return {"cifar10": ["batches.meta"], "cifar100": ["meta"]}.get(self.fmt, [])


_DIGITS = tuple(str(i) for i in range(10))
TV_SETS: dict[str, TVSpec] = {
    s.name: s
    for s in [
        TVSpec("mnist", "idx", "MNIST/raw", "MNIST", 1, (28, 28), (0.1307,), (0.3081,), _DIGITS, 0, False,
               "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        TVSpec("fashion-mnist", "idx", "FashionMNIST/raw", "FashionMNIST", 1, (28, 28), (0.2860,), (0.3530,),
               ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"), 2, True, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
        TVSpec("kmnist", "idx", "KMNIST/raw", "KMNIST", 1, (28, 28), (0.1918,), (0.3483,),
               ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), 0, False,
               "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
        TVSpec("cifar10", "cifar10", "cifar-10-batches-py", "CIFAR10", 3, (32, 32),
               (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
               ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), 4, True,
               "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        TVSpec("cifar100", "cifar100", "cifar-100-python", "CIFAR100", 3, (32, 32),
               (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (), 4, True,
               "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
        TVSpec("svhn", "svhn", "svhn", "SVHN", 3, (32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
               _DIGITS, 4, False, "http://ufldl.stanford.edu/housenumbers/"),
    ]
}


def _missing(spec: TVSpec, root: Path) -> list[Path]:
    names = spec.files(True) + spec.files(False) + spec.meta_files()
    return [root / spec.folder / n for n in names if not (root / spec.folder / n).is_file()]


def _download(spec: TVSpec, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = getattr(tvd, spec.tv_class)
    try:
        if spec.fmt == "svhn":
            for split in ("train", "test"):
                cls(root=str(root / spec.folder), split=split, download=True)
        else:
            cls(root=str(root), train=True, download=True)
            cls(root=str(root), train=False, download=True)
    except Exception as exc:  # network errors, checksum errors, missing scipy...
        raise DatasetNotFoundError(
            f"{spec.name}: download into {root} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"fetch {spec.url} by hand and put the files under {root / spec.folder}"
        ) from None


def ensure_files(spec: TVSpec, root: Path, download: bool) -> None:
    missing = _missing(spec, root)
    if missing and download:
        _download(spec, root)
        missing = _missing(spec, root)
    if missing:
        names = ", ".join(p.name for p in missing[:6]) + (" ..." if len(missing) > 6 else "")
        how = "uncompressed (gunzip) " if spec.fmt == "idx" else ""
        raise DatasetNotFoundError(
            f"{spec.name}: missing {names} in {root / spec.folder}; put the {how}files from {spec.url} there, "
            f"or pass download=True (--download) when online"
        )


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array refers to, under numpy 1's and numpy 2's module names."""
    import codecs

    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): codecs.encode}  # bytes, pickled by protocol 2
    for protocol, name, module in ((2, "_reconstruct", "multiarray"), (5, "_frombuffer", "numeric")):
        fn = np.zeros(1).__reduce_ex__(protocol)[0]
        for package in ("numpy.core", "numpy._core"):
            allowed[(f"{package}.{module}", name)] = fn
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits what CIFAR's python files hold: dicts, lists, strings, numbers, numpy arrays.

    Any other global (a function or class a crafted file names to run code) is refused.
    """

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR files hold only dicts, lists, "
                                         "strings, numbers and numpy arrays") from None


def _unpickle(path: Path) -> dict:
    """Read one CIFAR python file through :class:`_CifarUnpickler`; anything else raises DatasetNotFoundError."""
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, pickle.UnpicklingError) as exc:
        raise DatasetNotFoundError(f"{path}: not a CIFAR python file ({type(exc).__name__}: {exc}); delete it and "
                                   "fetch the dataset again") from None
    if not isinstance(entry, dict):
        raise DatasetNotFoundError(f"{path}: not a CIFAR python file (holds a {type(entry).__name__}, expected a dict)")
    return entry


@lru_cache(maxsize=4)
def _load(name: str, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """``uint8 (N, C, H, W)`` images, ``int64`` labels and class names of one file set."""
    spec = TV_SETS[name]
    folder = Path(root) / spec.folder
    files = [folder / f for f in spec.files(train)]
    classes = spec.classes
    try:
        if spec.fmt == "idx":
            from torchvision.datasets.mnist import read_image_file, read_label_file

            images = read_image_file(str(files[0])).unsqueeze(1).contiguous()
            labels = read_label_file(str(files[1]))
        elif spec.fmt in ("cifar10", "cifar100"):
            key = "labels" if spec.fmt == "cifar10" else "fine_labels"
            data, targets = [], []
            for f in files:
                entry = _unpickle(f)
                data.append(np.asarray(entry["data"], dtype=np.uint8))
                targets.extend(entry[key])
            images = torch.from_numpy(np.concatenate(data).reshape(-1, 3, 32, 32))
            labels = torch.tensor(targets, dtype=torch.int64)
            meta = _unpickle(folder / spec.meta_files()[0])
            classes = tuple(meta["label_names" if spec.fmt == "cifar10" else "fine_label_names"])
        else:
            import scipy.io

            mat = scipy.io.loadmat(str(files[0]))
            images = torch.from_numpy(np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))))
            labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1))
            labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10
    except DatasetNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, pickle.UnpicklingError) as exc:
        raise DatasetNotFoundError(
            f"{name}: could not read {folder} ({type(exc).__name__}: {exc}); delete the files and fetch them again"
        ) from None
    if images.shape[0] != labels.shape[0]:
        raise DatasetNotFoundError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels in {folder}")
    return images.to(torch.uint8), labels, classes


def _num_classes(spec: TVSpec) -> int:
    return 100 if spec.fmt == "cifar100" else 10


def tv_info(name: str, *, data_dir: Path, image_size=None, distort=None) -> DatasetInfo:
    spec = TV_SETS[name]
    if distort is not None and spec.in_chans != 1:
        raise ConfigError(f"distort= applies to grayscale datasets; {name} has {spec.in_chans} channels")
    size = resolve_size(image_size) or distorted_size(distort, spec.size)
    classes = spec.classes
    if not classes and spec.fmt == "cifar100":
        meta = Path(data_dir) / spec.folder / "meta"
        if meta.is_file():
            try:
                classes = tuple(_unpickle(meta)["fine_label_names"])
            except (DatasetNotFoundError, KeyError, TypeError):  # reading the dataset names the file
                classes = ()
        classes = classes or tuple(f"class_{i}" for i in range(100))
    return DatasetInfo(name, _num_classes(spec), spec.in_chans, size, spec.mean, spec.std, classes)


def default_augment(spec: TVSpec, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    from torchvision.transforms import v2

    ops = []
    if spec.crop_pad:
        ops.append(v2.RandomCrop(size, padding=spec.crop_pad))
    if spec.flip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops) if ops else None


def build_tv_dataset(
    name: str,
    split: str,
    *,
    data_dir: Path,
    download: bool = False,
    size: int | None = None,
    seed: int = 0,
    image_size=None,
    distort=None,
    augment=None,
) -> ImageTensorDataset:
    """One split of a torchvision dataset (see the module docstring for files and splits)."""
    check_split(split)
    spec = TV_SETS[name]
    root = Path(data_dir)
    ensure_files(spec, root, download)
    images, labels, classes = _load(name, str(root.resolve()), split != "test")
    if split != "test":
        holdout = min(VAL_HOLDOUT, images.shape[0] // 10)
        if holdout < 1:
            raise DatasetNotFoundError(f"{name}: the training files hold only {images.shape[0]} images")
        cut = images.shape[0] - holdout
        sl = slice(0, cut) if split == "train" else slice(cut, None)
        images, labels = images[sl], labels[sl]
    keep = subsample(images.shape[0], size, seed, f"{split}_size")
    if keep is not None:
        images, labels = images[keep], labels[keep]
    info = tv_info(name, data_dir=root, image_size=image_size, distort=distort)
    if classes and len(classes) == info.num_classes:
        info = DatasetInfo(info.name, info.num_classes, info.in_chans, info.image_size, info.mean, info.std,
                           tuple(classes))
    dist = Distortion(distort, spec.size, seed=seed, split=split) if distort else None
    use_aug = (split == "train") if augment is None else bool(augment)
    aug = default_augment(spec, info.image_size) if use_aug else None
    resize = resolve_size(image_size)
    return ImageTensorDataset(images, labels, info, distort=dist, resize=resize, augment=aug)
