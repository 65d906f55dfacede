"""Evaluating and using trained runs: ``evaluate_run``, ``plot_confusion``, ``predict_images``."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..exceptions import ConfigError, DatasetNotFoundError
from .._io import atomic_write_bytes, atomic_write_text
from .build import model_from_checkpoint
from .checkpoint import load_checkpoint, resolve_checkpoint
from .data import build_datasets, make_eval_loader
from .distributed import resolve_device
from .evaluate import eval_sums, eval_summary, logits_of

__all__ = [
    "load_run_split", "dataset_tag", "evaluate_run", "plot_confusion", "load_image", "image_files", "predict_images",
]


def plot_confusion(confusion: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike, *, title: str = "") -> Path:
    """Save a row-normalised confusion matrix (rows: true class) as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = confusion.double()
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    k = cm.shape[0]
    side = min(max(4.0, 0.45 * k + 2), 24.0)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 30:
        ax.set_xticks(range(k), labels=list(class_names), rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), labels=list(class_names))
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


class RunSplit(NamedTuple):
    """What :func:`load_run_split` returns."""

    checkpoint: Path
    model: nn.Module  # in eval mode, with the checkpoint's ``data_info``
    config: Any  # the run's TrainConfig with the evaluation's overrides
    dataset: Dataset
    class_names: list[str]  # the evaluated dataset's


def load_run_split(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    size: int | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    boxes: bool = False,
) -> "RunSplit":
    """A trained run's model and a split of its dataset (or of ``dataset``), for evaluation.

    The split is built as the run built it (the images its test accuracy was measured on) and
    ``size`` keeps a fixed random subset of it: the same images on every call, those for a
    smaller ``size`` among a larger one's. ``boxes`` yields ``(image, label, box)``.

    Returns:
        a :class:`RunSplit`; its ``config`` carries the ``dataset`` / ``data_dir`` /
        ``batch_size`` / ``workers`` overrides.

    Raises:
        ConfigError: bad ``split`` or ``size``; the dataset's classes differ from the model's;
            ``boxes`` on a dataset without object boxes.
    """
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    if size is not None and size < 1:
        raise ConfigError(f"size must be a positive number of images, got {size}")
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    model, config = model_from_checkpoint(ckpt)
    model.data_info = info = dict(ckpt["data_info"])
    changes: dict[str, Any] = {"workers": workers}
    if dataset is not None:
        changes["dataset"] = dataset
    if data_dir is not None:
        changes["data_dir"] = str(data_dir)
    if batch_size is not None:
        changes["batch_size"] = batch_size
    config = config.replace(**changes)
    datasets, data_info = build_datasets(config, splits=(split,))
    if data_info["num_classes"] != info["num_classes"]:
        raise ConfigError(
            f"dataset {config.dataset!r} has {data_info['num_classes']} classes but the model was trained "
            f"for {info['num_classes']}"
        )
    ds = datasets[split]
    if boxes:
        if not callable(getattr(ds, "with_boxes", None)) or getattr(ds, "boxes", None) is None:
            raise ConfigError(f"localization needs object boxes; dataset {config.dataset!r} has none "
                              "(cluttered-digits has them)")
        ds = ds.with_boxes()
    if size is not None and size < len(ds):
        # one fixed shuffle of the split: the images for a smaller size are among a larger one's,
        # and a split stored class by class (image folders) still gives every class
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
        ds = Subset(ds, order[:size].sort().values.tolist())
    names = list(data_info.get("class_names") or info["class_names"])
    return RunSplit(ckpt_path, model, config, ds, names)


def dataset_tag(dataset: str) -> str:
    """``dataset`` as a file-name part: ``"folder:/data/pets"`` -> ``"folder-data-pets"``."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", dataset).strip("-") or "dataset"


def evaluate_run(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int = 0,
    out_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate a run directory or checkpoint on a dataset split; write the confusion PNG and a JSON.

    Args:
        path: run directory (``best.pt``, else ``last.pt``) or ``.pt`` file.
        dataset: dataset name (default: the one the run was trained on).
        data_dir: where its files are (default: the run's).
        split: ``train``, ``val`` or ``test``.
        size: evaluate on a fixed random subset of ``size`` images of the split
            (:func:`load_run_split`).
        batch_size: default the run's.
        device: ``auto``, ``cpu`` or ``cuda``.
        workers: DataLoader workers.
        out_dir: where to write ``confusion_<split>.png`` and ``eval_<split>.json``
            (default: next to the checkpoint). On a dataset other than the run's own the names
            carry it (``eval_test_digits.json``), so the run's own evaluation is never overwritten.

    Returns:
        ``evaluate``'s dict plus ``"class_names"``, ``"confusion_png"``, ``"json"``.
    """
    ckpt_path, model, config, ds, names = load_run_split(
        path, dataset=dataset, data_dir=data_dir, split=split, size=size, batch_size=batch_size, workers=workers
    )
    info = model.data_info
    dev = resolve_device(device)
    model.to(dev)
    loader = make_eval_loader(ds, config, pin_memory=dev.type == "cuda")
    loss_sum, confusion = eval_sums(model, loader, dev, num_classes=info["num_classes"])
    result = eval_summary(loss_sum, confusion)
    out = Path(out_dir) if out_dir is not None else ckpt_path.parent
    tag = split if dataset is None or dataset == info.get("name") else f"{split}_{dataset_tag(dataset)}"
    png = plot_confusion(
        confusion, names, out / f"confusion_{tag}.png",
        title=f"{config.model} + {config.attention or 'none'} on {config.dataset} ({split}): {result['accuracy']:.2%}",
    )
    record = {
        "checkpoint": str(ckpt_path), "dataset": config.dataset, "split": split,
        "loss": result["loss"], "accuracy": result["accuracy"], "count": result["count"],
        "per_class_accuracy": dict(zip(names, result["per_class_accuracy"])),
        "confusion_matrix": confusion.tolist(),
    }
    js = atomic_write_text(out / f"eval_{tag}.json", json.dumps(record, indent=2) + "\n")
    result.update(class_names=list(names), confusion_png=str(png), json=str(js))
    return result


def eval_preprocessing(data_info: dict[str, Any]) -> dict[str, Any] | None:
    """The resize-and-crop a run's evaluation applied to image files: the weights' ``preprocessing``
    for folder datasets, else a folder dataset's own (short side to size / 0.875, centre crop);
    ``None`` for datasets of fixed-size images (read files are resized to the image size)."""
    if data_info.get("preprocessing"):
        return dict(data_info["preprocessing"])
    if str(data_info.get("name", "")).startswith("folder:"):
        return {"resize": int(round(min(int(s) for s in data_info["image_size"]) / 0.875))}
    return None


def load_image(path: str | os.PathLike, data_info: dict[str, Any]) -> torch.Tensor:
    """Read an image file as the model's input: channels, size and normalisation of the training data,
    resized and cropped as the run's evaluation did (:func:`eval_preprocessing`).

    8-bit images are scaled by 255, 16-bit ones by 65535, float ones taken as 0–1 values
    (:mod:`convattn.data.images`).
    """
    from ..data.images import image_tensor, open_image, read_image, unit_image
    from .data import folder_transform

    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(f"image {str(p)!r} does not exist")
    in_chans = int(data_info["in_chans"])
    size = tuple(int(s) for s in data_info["image_size"])
    pre = eval_preprocessing(data_info)
    if pre is None:
        x = read_image(p, in_chans, size)
    else:  # as the run's evaluation saw its folder: short side resized, centre crop, the weights' interpolation
        geometry = folder_transform(pre, size, [0.0] * in_chans, [1.0] * in_chans, train=False)
        with open_image(p) as opened:
            img = unit_image(opened, in_chans)  # 8-bit images as the folder dataset reads them; deeper ones as floats
            x = geometry(img if img.mode in ("L", "RGB") else image_tensor(img, in_chans))
    if x.shape[0] != in_chans:  # e.g. a 2-channel model: repeat / trim the RGB planes
        x = x.repeat((in_chans + x.shape[0] - 1) // x.shape[0], 1, 1)[:in_chans]
    mean = torch.tensor(data_info["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data_info["std"], dtype=torch.float32).view(-1, 1, 1)
    return (x - mean) / std


def image_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """``paths`` with every directory replaced by the image files directly inside it (sorted by name).

    An image file is one whose extension PIL knows (``.png``, ``.jpg``, ...); files are
    kept as given (an unreadable one fails later with a clear error).

    Raises:
        DatasetNotFoundError: a path does not exist, or a directory holds no image file.
    """
    from PIL import Image

    known = {ext.lower() for ext in Image.registered_extensions()}
    out: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in known)
            if not found:
                raise DatasetNotFoundError(f"directory {str(p)!r} holds no image files "
                                           "(PNG, JPEG, ... any format PIL reads, by extension)")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetNotFoundError(f"image {str(p)!r} does not exist")
    return out


@torch.no_grad()
def predict_images(
    model: nn.Module, data_info: dict[str, Any], paths: Sequence[str | os.PathLike], *, topk: int = 5,
    device: str | torch.device = "cpu", skip_unreadable: bool = False,
) -> list[dict[str, Any]]:
    """Top-k classes and probabilities for each image file (a directory stands for the images in it).

    Args:
        skip_unreadable: an image that cannot be read (corrupt, not an image, over PIL's
            decompression-bomb limit) gets ``{"image", "error"}`` instead of raising, and the
            rest are predicted.

    Returns:
        One ``{"image", "top": [(class_name, probability), ...]}`` per image file
        (directories expanded by :func:`image_files`), in order.
    """
    if topk < 1:
        raise ConfigError(f"topk must be >= 1, got {topk}")
    paths = image_files(paths)
    device = torch.device(device)
    model.eval().to(device)
    names = data_info["class_names"]
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), 64):
        batch: list[tuple[dict[str, Any], torch.Tensor]] = []
        for p in paths[start:start + 64]:
            entry: dict[str, Any] = {"image": str(p)}
            results.append(entry)
            try:
                batch.append((entry, load_image(p, data_info)))
            except ConfigError as exc:
                if not skip_unreadable:
                    raise
                entry["error"] = str(exc)
        if not batch:
            continue
        probs = logits_of(model(torch.stack([x for _, x in batch]).to(device))).float().softmax(1).cpu()
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        for n, (entry, _) in enumerate(batch):
            entry["top"] = [(names[int(i)], float(v)) for v, i in zip(values[n], indices[n])]
    return results
