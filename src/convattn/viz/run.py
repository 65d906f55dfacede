"""``visualize_run``: every picture of a trained run (or any model) written to a folder."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..maps import LogitsOnly, grad_cam, interpret_maps, record_maps
from ._images import load_images, save_figure, to_display
from .curves import plot_curves, read_metrics
from .maps import attention_figure
from .stn import transformer_figures

__all__ = ["load_model", "sample_images", "visualize_run"]


def load_model(run: str | os.PathLike | nn.Module) -> tuple[nn.Module, dict[str, Any], Any, Path | None]:
    """``(model, data_info, config, run_dir)`` of a run directory, a checkpoint, or a module.

    Runs and checkpoints go through :func:`convattn.engine.load_run`; a module gets
    ``data_info`` from its ``data_info`` attribute if set (else ``{}``) and no config.
    """
    if isinstance(run, nn.Module):
        return run.eval(), dict(getattr(run, "data_info", {}) or {}), None, None
    from ..engine import load_run

    path = Path(run)
    model, config = load_run(path)
    run_dir = path if path.is_dir() else path.parent
    return model.eval(), dict(getattr(model, "data_info", {}) or {}), config, run_dir


def sample_images(
    dataset: str,
    count: int,
    *,
    data_dir: str | os.PathLike | None = None,
    config: Any = None,
    split: str = "test",
) -> tuple[torch.Tensor, list[int]]:
    """The first ``count`` images (and labels) of a dataset split, without augmentation.

    Settings that change what the images look like (``distort``, ``image_size``,
    ``seed``) are taken from the run's ``config`` when it trained on that dataset.
    """
    from ..data import build_dataset

    kwargs: dict[str, Any] = {"data_dir": data_dir, "augment": False}
    if config is not None and getattr(config, "dataset", None) == dataset:
        kwargs["distort"] = getattr(config, "distort", None)
        kwargs["image_size"] = getattr(config, "image_size", None)
        kwargs["seed"] = getattr(config, "seed", 0)
        if data_dir is None:
            kwargs["data_dir"] = getattr(config, "data_dir", None)
    if dataset.split(":")[0] == "cluttered-digits" or dataset == "cluttered-digits":
        kwargs[f"{split}_size"] = max(count, 1)
    ds = build_dataset(dataset, split, **kwargs)
    n = min(count, len(ds))
    if n == 0:
        raise ConfigError(f"viz: the {split} split of {dataset!r} is empty")
    xs, ys = zip(*(ds[i] for i in range(n)))
    return torch.stack([torch.as_tensor(x) for x in xs]), [int(y) for y in ys]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def _resolve_images(images, dataset, count, data_dir, info, config) -> tuple[torch.Tensor, list[int] | None]:
    if images is not None:
        if isinstance(images, torch.Tensor):
            x = images if images.dim() == 4 else images.unsqueeze(0)
            return x[:count] if count else x, None
        paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not info:
            raise ConfigError("viz: image files need the model's input description (in_chans, image_size, mean, std); "
                              "give a run directory or checkpoint, or pass normalised tensors")
        x = load_images(paths, in_chans=int(info["in_chans"]), image_size=info.get("image_size"),
                        mean=info.get("mean"), std=info.get("std"))
        return x, None
    name = dataset or getattr(config, "dataset", None) or info.get("name")
    if not name:
        raise ConfigError("viz: give --images or --dataset (the model carries no dataset name)")
    return sample_images(name, count, data_dir=data_dir, config=config)


def visualize_run(
    run: str | os.PathLike | nn.Module,
    *,
    images: Sequence[str | os.PathLike] | torch.Tensor | None = None,
    dataset: str | None = None,
    count: int = 16,
    out_dir: str | os.PathLike,
    cam: bool = True,
    cam_layer: str | None = None,
    query: tuple[float, float] | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Write attention overlays, Grad-CAM, spatial-transformer grids and training curves of a run.

    Args:
        run: a run directory, a checkpoint (``.pt``), or an ``nn.Module``.
        images: image files (read, resized and normalised as the run's dataset),
            or a normalised ``(B, C, H, W)`` tensor.
        dataset: dataset name to draw ``count`` test images from (default: the run's).
        count: number of images.
        out_dir: output folder (created).
        cam: add Grad-CAM beside the attention maps.
        cam_layer: Grad-CAM target module path (default: found automatically).
        query: self-attention query ``(y, x)`` in input pixels (default: the centre).
        data_dir: dataset root.
        mean, std: normalisation to undo for display (default: the run's dataset's).
        device: where to run the model.

    Returns:
        Paths written: ``attention_000.png`` ... (one per image: input, Grad-CAM,
        each attention map), ``stn_<path>.png`` (one per spatial transformer),
        ``curves.png`` (when the run has ``metrics.jsonl`` rows).

    Example:
        >>> import torch, tempfile, convattn
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), convattn.create_attn("cbam", 16),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> paths = visualize_run(net, images=torch.randn(2, 1, 16, 16), out_dir=tempfile.mkdtemp())
        >>> [p.name for p in paths]
        ['attention_000.png', 'attention_001.png']
    """
    if count is not None and count < 1:
        raise ConfigError(f"viz: --count must be >= 1, got {count}")
    model, info, config, run_dir = load_model(run)
    dev = torch.device(device)
    model = model.to(dev)
    x, labels = _resolve_images(images, dataset, count, data_dir, info, config)
    x = x.to(dev).float()
    mean = mean if mean is not None else info.get("mean")
    std = std if std is not None else info.get("std")
    class_names = info.get("class_names")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    rec = record_maps(model, x)
    entries = interpret_maps(rec.maps, rec.shapes, image_hw=tuple(x.shape[-2:]), query=query)
    try:
        with torch.no_grad():
            preds = LogitsOnly(model)(x).argmax(1).tolist() if rec.output is not None else None
    except Exception:
        preds = None
    cams = None
    if cam:
        try:
            cams, cam_layer = grad_cam(model, x, target_layer=cam_layer)
        except ConfigError as exc:
            if cam_layer is not None or "runs no Conv2d" not in str(exc):
                raise
            warnings.warn(f"viz: no Grad-CAM for this model: {exc}", stacklevel=2)
    disp = to_display(x.cpu(), mean, std)
    written: list[Path] = []

    def label(i: int | None) -> str:
        if i is None:
            return "?"
        return str(class_names[i]) if class_names and 0 <= i < len(class_names) else str(i)

    for b in range(x.shape[0]):
        parts = [f"image {b}"]
        if labels is not None:
            parts.append(f"label {label(labels[b])}")
        if preds is not None:
            parts.append(f"predicted {label(preds[b])}")
        if cams is not None:
            parts.append(f"Grad-CAM at {cam_layer}")
        fig = attention_figure(disp[b], [(m, b) for m in entries], cam=None if cams is None else cams[b],
                               title=", ".join(parts))
        written.append(save_figure(fig, out / f"attention_{b:03d}.png"))
    for path, fig in transformer_figures(model, x, mean=mean, std=std, recording=rec):
        written.append(save_figure(fig, out / f"stn_{_safe(path)}.png"))
    if run_dir is not None:
        rows = read_metrics(run_dir)
        if rows:
            written.append(save_figure(plot_curves(rows, title=run_dir.name), out / "curves.png"))
    return written
