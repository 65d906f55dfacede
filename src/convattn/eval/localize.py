"""The localisation loop: every attention map of a model (and Grad-CAM) scored against object boxes.

:func:`localization` runs a model over a loader of ``(image, label, box)`` batches, records
each batch once (:func:`convattn.maps.record_maps`), carries each map into the image's
frame (:mod:`convattn.eval.geometry`) and scores it (:mod:`convattn.eval.metrics`);
:func:`localize_run` does it for a trained run and stores the numbers in its ``results.json``;
:func:`format_localization` prints them.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import torch
from torch import nn

from ..exceptions import ConfigError
from ..maps import find_cam_layer, grad_cam, interpret_maps, record_maps
from .geometry import box_share, check_boxes, to_image_frame, upsample_to
from .metrics import DEFAULT_TOLERANCE, energy_in_box, pointing_game, window_scores

__all__ = ["format_localization", "localization", "localize_run"]


class _Tally:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, name: str, kind: str, scores: dict[str, torch.Tensor], **meta: Any) -> None:
        row = self.rows.setdefault(name, {"kind": kind, "images": 0, "sums": {}, **meta})
        n = 0
        for k, v in scores.items():
            row["sums"][k] = row["sums"].get(k, 0.0) + float(v.sum())
            n = int(v.numel())
        row["images"] += n

    def result(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, row in self.rows.items():
            r = {k: v for k, v in row.items() if k != "sums"}
            r.update({k: s / max(row["images"], 1) for k, s in row["sums"].items()})
            out[name] = r
        return out


def localization(
    model: nn.Module,
    loader: Iterable,
    *,
    cam: bool = True,
    cam_layer: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score every attention map of ``model`` (and Grad-CAM) against object boxes.

    Scored: every recorded spatial map (CBAM's spatial gate, attention-pooling heads such as
    AACN's, averaged over heads), self-attention / non-local maps averaged over queries (the
    attention each key position receives), every spatial transformer's sampling window, and
    Grad-CAM for the true class at the automatically found layer (or ``cam_layer``). Channel
    weights and channel-affinity matrices have no position and are skipped. Maps drawn after a
    transformer that reads the image are carried back into the image frame; a transformer
    deeper in the network is not undone and its window is not scored. See
    :mod:`convattn.eval.metrics` for the metrics.

    Args:
        model: the model (put in eval mode for the duration).
        loader: an iterable of ``(images (B, C, H, W), labels (B,), boxes (B, 4))`` batches,
            e.g. a ``DataLoader`` over ``build_dataset("cluttered-digits", ...).with_boxes()``.
        cam: also score Grad-CAM (needs ``pytorch-grad-cam``).
        cam_layer: Grad-CAM target module path (default: found automatically).
        tolerance: pointing-game tolerance as a share of the image's shorter side (15/224).
        device: where to run (default: where the model's parameters are).
        progress: show a progress bar.

    Returns:
        ``{"images", "image_size", "tolerance_px", "box_share", "pointing_chance", "maps"}``;
        ``box_share`` is the mean share of the image inside the box (a uniform map's energy in
        box), ``pointing_chance`` a constant map's pointing score; ``maps`` maps each map's name
        (its ``record_attention`` key, or ``"Grad-CAM"``) to ``{"kind", "images", "pointing",
        "energy"}`` plus ``"iou"`` for windows, ``"frame"`` (the transformer whose output frame
        the map was drawn in, if any) and ``"layer"`` for Grad-CAM.

    Raises:
        ConfigError: batches without boxes.

    Example:
        >>> import torch, convattn
        >>> from torch.utils.data import DataLoader
        >>> from convattn.data import build_dataset
        >>> ds = build_dataset("cluttered-digits", "val", val_size=4).with_boxes()
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), convattn.create_attn("cbam", 8),
        ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
        >>> r = localization(net, DataLoader(ds, batch_size=2), cam=False)
        >>> r["images"], sorted(r["maps"]), 0.0 <= r["maps"]["1:spatial"]["pointing"] <= 1.0
        (4, ['1:spatial'], True)
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    tally = _Tally()
    count = 0
    hw: tuple[int, int] | None = None
    box_sum = chance_sum = 0.0
    was_training = model.training
    model.eval()
    batches = loader
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="localisation", unit="batch", leave=False)
    try:
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) != 3:
                raise ConfigError("localization expects batches of (images, labels, boxes); "
                                  "use dataset.with_boxes() (cluttered-digits has boxes)")
            x, y, boxes = batch
            x = x.to(device).float()
            hw = tuple(x.shape[-2:])
            b = x.shape[0]
            boxes = check_boxes(boxes, b, "localization")
            if cam and cam_layer is None:
                cam_layer = find_cam_layer(model, x)
            rec = record_maps(model, x, watch=[cam_layer] if cam else [])

            def in_image(maps: torch.Tensor, layer: str) -> tuple[torch.Tensor, str | None]:
                frame = rec.frame_of(layer)
                maps = upsample_to(maps, hw)
                if frame is not None:
                    maps = to_image_frame(maps, rec.transformers[frame].theta)
                return maps.cpu(), frame

            entries = interpret_maps(rec.maps, rec.shapes, image_hw=hw, query="mean")
            for m in entries:
                if m.kind not in ("spatial", "query"):
                    continue
                maps, frame = in_image(torch.from_numpy(m.data), m.key.split(":")[0])
                tally.add(m.key, m.kind, {"pointing": pointing_game(maps, boxes, tolerance=tolerance),
                                          "energy": energy_in_box(maps, boxes)}, frame=frame)
            for path, t in rec.transformers.items():
                if t.on_image:
                    tally.add(f"{path}:window", "window", window_scores(t.theta.cpu(), boxes, hw, tolerance=tolerance))
            if cam:
                cams, cam_layer = grad_cam(model, x, target_layer=cam_layer, targets=[int(t) for t in y])
                maps, frame = in_image(torch.from_numpy(cams).to(device), cam_layer)
                tally.add("Grad-CAM", "grad-cam", {"pointing": pointing_game(maps, boxes, tolerance=tolerance),
                                                   "energy": energy_in_box(maps, boxes)},
                          frame=frame, layer=cam_layer)
            box_sum += float(box_share(boxes, hw).sum())
            chance_sum += float(pointing_game(torch.zeros(b, *hw), boxes, tolerance=tolerance).sum())
            count += b
    finally:
        model.train(was_training)
    if count == 0:
        raise ConfigError("localization: the loader yielded no images")
    return {
        "images": count,
        "image_size": list(hw),
        "tolerance_px": float(tolerance) * min(hw),
        "box_share": box_sum / count,
        "pointing_chance": chance_sum / count,
        "maps": tally.result(),
    }


def format_localization(result: dict[str, Any]) -> str:
    """:func:`localization`'s result as a text table, one row per map."""
    from tabulate import tabulate

    rows = []
    for name, m in result["maps"].items():
        iou = m.get("iou")
        rows.append([f"{name} @ {m['layer']}" if m.get("layer") else name, m["kind"], f"{100 * m['pointing']:.1f}",
                     f"{100 * m['energy']:.1f}", "-" if iou is None else f"{100 * iou:.1f}"])
    return tabulate(rows, headers=["map", "kind", "pointing %", "energy in box %", "window IoU %"],
                    disable_numparse=True, colalign=("left", "left", "right", "right", "right"))


def localize_run(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    split: str = "test",
    size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int = 0,
    cam: bool = True,
    cam_layer: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    save: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`localization` of a trained run on a split of its own dataset (which must have boxes).

    With ``save``, the result (and ``"split"``) is stored under ``"localization"`` in the
    run's ``results.json`` (when the run has one and it finished; written atomically, other keys
    kept); on another dataset than the run's, under ``"localization_<dataset>"``. A diverged or
    interrupted run's results stay as they are: its maps are scored, not stored.
    ``dataset`` / ``data_dir`` evaluate on another dataset than the run's; ``size`` on a fixed
    random subset of the split (:func:`convattn.engine.inference.load_run_split`); the other
    arguments are :func:`localization`'s.

    Raises:
        ConfigError: the run's dataset has no boxes (only ``cluttered-digits`` has them).
    """
    from torch.utils.data import DataLoader

    from .._io import atomic_write_text
    from ..engine.distributed import resolve_device
    from ..engine.inference import dataset_tag, load_run_split
    from ..engine.metrics import strict_json

    ckpt, model, config, ds, _ = load_run_split(
        path, dataset=dataset, data_dir=data_dir, split=split, size=size, batch_size=batch_size,
        workers=workers, boxes=True,
    )
    dev = resolve_device(device)
    model.to(dev)
    loader = DataLoader(ds, batch_size=config.batch_size, shuffle=False, num_workers=workers)
    result = {"dataset": config.dataset, "split": split, **localization(model, loader, cam=cam, cam_layer=cam_layer, tolerance=tolerance,
                                             device=dev, progress=progress)}
    results_path = ckpt.parent / "results.json"
    record = json.loads(results_path.read_text()) if save and results_path.is_file() else None
    if record is not None and record.get("status", "finished") != "finished":
        record = None
    if record is not None:
        own = dataset is None or dataset == model.data_info.get("name")
        record["localization" if own else f"localization_{dataset_tag(dataset)}"] = result
        atomic_write_text(results_path, strict_json(record, indent=2) + "\n")
    result["results_json"] = str(results_path) if record is not None else None
    return result

