"""``visualize_run``: every picture of a trained run (or any model) written to a folder."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..maps import CAM_METHODS, LogitsOnly, cam_title, grad_cam, interpret_maps, record_maps
from ._images import save_figure, to_display
from .curves import plot_curves, read_metrics
from .inputs import image_inputs, output_stems, parse_layers, parse_target_class, select_layers
from .maps import attention_figure
from .stn import transformer_figures

__all__ = ["load_model", "sample_images", "visualize_run"]

_CHUNK = 16  # images recorded and drawn at a time (a folder of thousands stays within memory)


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


def _resolve_images(images, dataset, count, data_dir, info, config) -> tuple[Callable, list, list[str], list[str]]:
    """``(batch(start, stop) -> images, true labels or None, output stems, display names)`` of what
    ``visualize_run`` was asked to draw (image files are read a batch at a time)."""
    if images is not None:
        if isinstance(images, torch.Tensor):
            x = images if images.dim() == 4 else images.unsqueeze(0)
            x = x[:count] if count else x
            names = [f"image {i}" for i in range(x.shape[0])]
            return x.__getitem__, [None] * x.shape[0], [f"image_{i:03d}" for i in range(x.shape[0])], names
        paths = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not info:
            raise ConfigError("viz: image files need the model's input description (in_chans, image_size, mean, std); "
                              "give a run directory or checkpoint, or pass normalised tensors")
        inputs = image_inputs(paths, info.get("class_names"))
        files = [i.path for i in inputs]

        def read(window: slice) -> torch.Tensor:  # as predict and the run's evaluation read a file
            from ..engine.inference import load_image

            if not files[window]:
                raise ConfigError("viz: --images was given no files")
            return torch.stack([load_image(f, info) for f in files[window]])

        names = [f"{i.path.parent.name}/{i.path.name}" if i.label is not None else i.path.name for i in inputs]
        return read, [i.label for i in inputs], output_stems(files), names
    name = dataset or getattr(config, "dataset", None) or info.get("name")
    if not name:
        raise ConfigError("viz: give --images or --dataset (the model carries no dataset name)")
    x, labels = sample_images(name, count, data_dir=data_dir, config=config)
    n = x.shape[0]
    return x.__getitem__, list(labels), [f"test_{i:03d}" for i in range(n)], [f"test image {i}" for i in range(n)]


def _cam_method(cam: bool | str | None) -> str | None:
    if cam is None or cam is False:
        return None
    method = "gradcam" if cam is True else str(cam).lower()
    if method not in CAM_METHODS:
        raise ConfigError(f"viz: unknown CAM method {cam!r}; expected one of {', '.join(CAM_METHODS)}")
    return method


def _probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """``(B, K)`` class probabilities, or ``None`` when the model gives no class scores."""
    try:
        with torch.no_grad():
            return LogitsOnly(model)(x).float().softmax(1).cpu()
    except Exception:  # a model without class scores (a feature extractor) is still drawn
        return None


def _cams(model, x, method, cam_layer, target, class_names, num_classes):
    """``(maps, layer, target index)`` or ``None`` (a model with no convolution, when no layer was named)."""
    index = None if target is None else parse_target_class(target, class_names, num_classes)
    try:
        maps, layer = grad_cam(model, x, target_layer=cam_layer, method=method,
                               targets=None if index is None else [index] * x.shape[0])
    except ConfigError as exc:
        if cam_layer is not None or "runs no Conv2d" not in str(exc):
            raise
        warnings.warn(f"viz: no CAM for this model: {exc}", stacklevel=3)
        return None
    return maps, layer, index


def visualize_run(
    run: str | os.PathLike | nn.Module,
    *,
    images: Sequence[str | os.PathLike] | torch.Tensor | None = None,
    dataset: str | None = None,
    count: int = 16,
    out_dir: str | os.PathLike,
    cam: bool | str = True,
    cam_layer: str | None = None,
    target_class: int | str | None = None,
    layers: Sequence[str] | str | None = None,
    query: tuple[float, float] | None = None,
    data_dir: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
) -> list[Path]:
    """Write attention overlays, class activation maps, spatial-transformer grids and training curves of a run.

    Args:
        run: a run directory, a checkpoint (``.pt``), or an ``nn.Module``.
        images: image files and folders (read, resized and normalised as the run's data; a folder of
            class sub-folders gives each image its true label, see :mod:`convattn.viz.inputs`),
            or a normalised ``(B, C, H, W)`` tensor.
        dataset: dataset name to draw ``count`` test images from (default: the run's).
        count: number of dataset images (or of a tensor's images).
        out_dir: output folder (created).
        cam: a CAM method (:data:`convattn.maps.CAM_METHODS`), ``True`` for Grad-CAM, ``False`` for none.
        cam_layer: CAM target module path (default: found automatically).
        target_class: the class the CAM explains, an index or a class name (default: the predicted one).
        layers: globs (or one comma-separated string) choosing the maps and spatial transformers
            drawn, matched against the map key (``"layer1.0.attn:spatial"``) or its module path.
        query: self-attention query ``(y, x)`` in input pixels (default: the centre).
        data_dir: dataset root.
        mean, std: normalisation to undo for display (default: the run's dataset's).
        device: where to run the model.

    Returns:
        Paths written, named after the inputs (``cat_attention.png``, ``cat_cam.png``; dataset
        images ``test_000_...``, tensors ``image_000_...``): per image the input and each chosen
        map, and the input and its CAM; ``stn_<path>.png`` per spatial transformer; ``curves.png``
        when the run has ``metrics.jsonl`` rows.

    Example:
        >>> import torch, tempfile, convattn
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), convattn.create_attn("cbam", 16),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> paths = visualize_run(net, images=torch.randn(2, 1, 16, 16), out_dir=tempfile.mkdtemp(), cam=False)
        >>> [p.name for p in paths]
        ['image_000_attention.png', 'image_001_attention.png']
    """
    if count is not None and count < 1:
        raise ConfigError(f"viz: --num-images must be >= 1, got {count}")
    method, globs = _cam_method(cam), parse_layers(layers)
    model, info, config, run_dir = load_model(run)
    dev = torch.device(device)
    model = model.to(dev)
    batch, labels, stems, names = _resolve_images(images, dataset, count, data_dir, info, config)
    mean = mean if mean is not None else info.get("mean")
    std = std if std is not None else info.get("std")
    class_names = info.get("class_names")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def label(i: int | None) -> str:
        return str(class_names[i]) if class_names and 0 <= i < len(class_names) else str(i)

    written: list[Path] = []
    for start in range(0, len(names), _CHUNK):
        xb = batch(slice(start, start + _CHUNK)).to(dev).float()
        rec = record_maps(model, xb)
        entries = interpret_maps(rec.maps, rec.shapes, image_hw=tuple(xb.shape[-2:]), query=query)
        chosen = set(select_layers([m.key for m in entries], globs))
        stn = [(p, f) for p, f in transformer_figures(model, xb, mean=mean, std=std, recording=rec)
               if select_layers([p], globs)] if start == 0 else []
        if globs is not None and not chosen and not stn:
            keys = [m.key for m in entries] + list(rec.transformers)
            raise ConfigError(f"viz: --layers {','.join(globs)} matches none of the recorded maps "
                              f"({', '.join(keys[:12]) or 'none: the model has no convattn layers'})")
        entries = [m for m in entries if m.key in chosen and m.kind != "theta"]
        probs = _probabilities(model, xb)
        cams = None if method is None or probs is None else _cams(
            model, xb, method, cam_layer, target_class, class_names, probs.shape[1])
        disp = to_display(xb.cpu(), mean, std)
        for b in range(xb.shape[0]):
            i = start + b
            parts = [names[i]]
            if labels[i] is not None:
                parts.append(f"true {label(labels[i])}")
            if probs is not None:
                parts.append(f"predicted {label(int(probs[b].argmax()))} ({float(probs[b].max()):.0%})")
            title = " · ".join(parts)
            if entries:
                fig = attention_figure(disp[b], [(m, b) for m in entries], title=title)
                written.append(save_figure(fig, out / f"{stems[i]}_attention.png"))
            if cams is not None:
                maps, layer, target = cams
                what = f"class {label(int(probs[b].argmax()) if target is None else target)}"
                fig = attention_figure(disp[b], [], cam=maps[b], cam_label=cam_title(method),
                                       title=f"{title}\n{cam_title(method)} of {what} at {layer}")
                written.append(save_figure(fig, out / f"{stems[i]}_cam.png"))
        for path, fig in stn:
            written.append(save_figure(fig, out / f"stn_{_safe(path)}.png"))
    if run_dir is not None:
        rows = read_metrics(run_dir)
        if rows:
            written.append(save_figure(plot_curves(rows, title=run_dir.name), out / "curves.png"))
    return written

