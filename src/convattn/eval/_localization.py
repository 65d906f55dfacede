"""Attention localisation against object boxes: pointing game, energy in box, window IoU.

Conventions:

- A box is ``(x0, y0, x1, y1)`` in pixel edges of the image (pixel ``(i, j)`` covers
  ``[j, j + 1] × [i, i + 1]``); a pixel is inside when its centre ``(j + ½, i + ½)`` is.
- A map over a layer's ``h × w`` positions is upsampled to the image (bilinear,
  ``align_corners=False``, as the figures draw it). A map computed after a spatial
  transformer lives in the transformer's output frame; it is carried back into the
  image frame through the inverse of θ (zero outside the sampling window) first.
- **Pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016): a hit when the map's maximum lies within ``tolerance`` of the box, the
  tolerance being 15 px of a 224 px image scaled to this image's shorter side. When
  several pixels share the maximum, the score is the share of them that hit, so a
  constant map scores the chance level (the share of pixels within the tolerance).
- **Energy in box**: the share of the map's (non-negative) mass inside the box;
  a uniform map scores the box's share of the image (``box_share``); a map with no
  mass scores like a uniform one.
- **Sampling window** of a spatial transformer: the image region its output grid
  covers, the parallelogram θ maps the output frame ``[-1, 1]²`` onto. Its IoU with
  the box is exact (convex polygon clipping); its energy in box is the share of the
  window inside the box (the window read as a uniform map); it points at its centre.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError

__all__ = [
    "DEFAULT_TOLERANCE",
    "box_mask",
    "box_share",
    "energy_in_box",
    "format_localization",
    "localization",
    "localize_run",
    "pointing_game",
    "to_image_frame",
    "window_corners",
    "window_scores",
]

#: The pointing game's tolerance: 15 px on a 224 px image, as a share of the image's shorter side.
DEFAULT_TOLERANCE = 15 / 224


def _check_boxes(boxes: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    boxes = torch.as_tensor(boxes)
    if boxes.shape != (batch, 4):
        raise ConfigError(f"{what}: expected boxes of shape ({batch}, 4), got {tuple(boxes.shape)}")
    return boxes.to(torch.float64)


def _check_maps(maps: torch.Tensor, what: str) -> torch.Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() != 3:
        raise ConfigError(f"{what}: expected maps of shape (B, H, W), got {tuple(maps.shape)}")
    return maps.to(torch.float64)


def _centres(hw: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = hw
    cy = torch.arange(h, device=device, dtype=torch.float64).add_(0.5).view(1, h, 1)
    cx = torch.arange(w, device=device, dtype=torch.float64).add_(0.5).view(1, 1, w)
    return cy, cx


def _box_distance(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` Euclidean distance of each pixel centre to each box (0 inside)."""
    cy, cx = _centres(hw, boxes.device)
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    dx = (x0 - cx).clamp_min(0) + (cx - x1).clamp_min(0)
    dy = (y0 - cy).clamp_min(0) + (cy - y1).clamp_min(0)
    return torch.hypot(dx, dy)


def box_mask(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, H, W)`` bool: the pixels whose centre lies inside each ``(x0, y0, x1, y1)`` box."""
    boxes = torch.as_tensor(boxes).to(torch.float64)
    return _box_distance(boxes, hw) == 0


def box_share(boxes: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B,)`` share of the image's pixels inside each box: what a uniform map scores on energy in box."""
    return box_mask(boxes, hw).flatten(1).double().mean(1)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, *, tolerance: float = DEFAULT_TOLERANCE) -> torch.Tensor:
    """``(B,)`` pointing-game hits of image-sized ``maps`` ``(B, H, W)`` against ``boxes`` ``(B, 4)``.

    Args:
        maps: maps at the image's resolution (NaN counts as 0).
        boxes: ``(x0, y0, x1, y1)`` pixel edges.
        tolerance: how far from the box the maximum may lie, as a share of the shorter image side
            (default 15/224).

    Returns:
        float64 ``(B,)``: 1 for a hit, 0 for a miss; the share of hits among tied maxima.
    """
    maps = _check_maps(maps, "pointing_game").nan_to_num(0.0)
    boxes = _check_boxes(boxes, maps.shape[0], "pointing_game")
    hw = tuple(maps.shape[-2:])
    near = _box_distance(boxes, hw) <= float(tolerance) * min(hw) + 1e-9
    top = maps == maps.flatten(1).amax(1).view(-1, 1, 1)
    return (top & near).flatten(1).sum(1).double() / top.flatten(1).sum(1).double()


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of each image-sized map's mass inside its box (negative values count as 0).

    A map without mass scores the box's share of the image, as a uniform map does.
    """
    maps = _check_maps(maps, "energy_in_box").nan_to_num(0.0).clamp_min(0)
    boxes = _check_boxes(boxes, maps.shape[0], "energy_in_box")
    mask = box_mask(boxes, tuple(maps.shape[-2:]))
    total = maps.flatten(1).sum(1)
    inside = (maps * mask).flatten(1).sum(1)
    uniform = mask.flatten(1).double().mean(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), uniform)


def upsample_to(maps: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, H, W)``, bilinear with ``align_corners=False``."""
    maps = torch.as_tensor(maps).float()
    if tuple(maps.shape[-2:]) == tuple(hw):
        return maps
    return F.interpolate(maps[:, None], size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]


def to_image_frame(maps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Carry ``(B, H, W)`` maps drawn in a spatial transformer's output frame back onto its input image.

    The output frame's normalised point ``t`` was read from the input at ``θ (t, 1)ᵀ``, so
    the input pixel at ``s`` takes the map's value at ``A⁻¹ (s − b)`` (``θ = [A | b]``),
    bilinearly, and 0 outside the sampling window.
    """
    maps = torch.as_tensor(maps).float()
    theta = torch.as_tensor(theta).to(maps.device, torch.float32)
    a_inv = torch.linalg.pinv(theta[:, :, :2])
    inv = torch.cat([a_inv, -(a_inv @ theta[:, :, 2:])], dim=2)
    grid = F.affine_grid(inv, [maps.shape[0], 1, *maps.shape[-2:]], align_corners=False)
    return F.grid_sample(maps[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def window_corners(theta: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """``(B, 4, 2)`` image-pixel ``(x, y)`` corners of the sampling window of ``θ`` ``(B, 2, 3)``,
    in order around the parallelogram (the output frame's corners ``(-1, -1), (1, -1), (1, 1), (-1, 1)``)."""
    theta = torch.as_tensor(theta).to(torch.float64)
    h, w = hw
    t = theta.new_tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    s = t @ theta.transpose(1, 2)  # (B, 4, 2) normalised source coordinates
    return torch.stack([(s[..., 0] + 1) * w / 2, (s[..., 1] + 1) * h / 2], dim=-1)


def _polygon_area(pts: Sequence[tuple[float, float]]) -> float:
    n = len(pts)
    return abs(sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))) / 2


def _clip(poly: list[tuple[float, float]], box: Sequence[float]) -> list[tuple[float, float]]:
    """Sutherland-Hodgman: a convex polygon clipped to an axis-aligned box."""
    x0, y0, x1, y1 = box
    edges = ((0, x0, 1.0), (0, x1, -1.0), (1, y0, 1.0), (1, y1, -1.0))  # keep sign * (p[axis] - limit) >= 0
    for axis, limit, sign in edges:
        if not poly:
            break
        out: list[tuple[float, float]] = []
        for i, cur in enumerate(poly):
            prev = poly[i - 1]
            dc, dp = sign * (cur[axis] - limit), sign * (prev[axis] - limit)
            if (dc >= 0) != (dp >= 0):
                f = dp / (dp - dc)
                out.append((prev[0] + f * (cur[0] - prev[0]), prev[1] + f * (cur[1] - prev[1])))
            if dc >= 0:
                out.append(cur)
        poly = out
    return poly


def window_scores(
    theta: torch.Tensor, boxes: torch.Tensor, hw: tuple[int, int], *, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, torch.Tensor]:
    """Sampling windows of ``θ`` ``(B, 2, 3)`` against ``boxes`` on an ``hw`` image.

    Returns:
        float64 ``(B,)`` tensors: ``"iou"`` (window ∩ box over window ∪ box, exact),
        ``"energy"`` (share of the window's area inside the box) and ``"pointing"``
        (the window's centre within the tolerance of the box).
    """
    corners = window_corners(theta, hw)
    boxes = _check_boxes(boxes, corners.shape[0], "window_scores").cpu()
    iou, energy, point = [], [], []
    tol = float(tolerance) * min(hw) + 1e-9
    for quad, box in zip(corners.cpu().tolist(), boxes.tolist()):
        pts = [tuple(p) for p in quad]
        area_w = _polygon_area(pts)
        area_b = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
        inter = _polygon_area(_clip(pts, box)) if area_w > 0 else 0.0
        union = area_w + area_b - inter
        iou.append(inter / union if union > 0 else 0.0)
        energy.append(inter / area_w if area_w > 0 else 0.0)
        cx, cy = sum(p[0] for p in pts) / 4, sum(p[1] for p in pts) / 4
        dx = max(box[0] - cx, 0.0, cx - box[2])
        dy = max(box[1] - cy, 0.0, cy - box[3])
        point.append(1.0 if math.hypot(dx, dy) <= tol else 0.0)
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in (("iou", iou), ("energy", energy), ("pointing", point))}


def _is_transformer(module: nn.Module) -> bool:
    return callable(getattr(module, "sampling_grid", None)) and callable(getattr(module, "theta", None))


def _record(model: nn.Module, x: torch.Tensor, extra: Iterable[str] = ()) -> dict[str, Any]:
    """One recorded forward pass: the maps, each recording layer's input shape and when it ran,
    and when each spatial transformer finished (to tell which maps live in its output frame)."""
    from ..layers import record_attention
    from ..layers._recording import RecordsAttention

    clock = [0]
    started: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    finished: dict[str, tuple[int, bool]] = {}
    hooks = []
    watch = set(extra)
    for path, module in model.named_modules():
        name = path or type(module).__name__
        if isinstance(module, RecordsAttention) or path in watch:
            def pre(mod, args, _name=name):
                clock[0] += 1
                started.setdefault(_name, clock[0])
                if args and isinstance(args[0], torch.Tensor):
                    shapes.setdefault(_name, tuple(args[0].shape))

            hooks.append(module.register_forward_pre_hook(pre))
        if _is_transformer(module):
            def post(mod, args, out, _name=name):
                clock[0] += 1
                on_image = bool(args) and isinstance(args[0], torch.Tensor) and args[0].shape == x.shape \
                    and torch.equal(args[0], x)
                finished.setdefault(_name, (clock[0], on_image))

            hooks.append(module.register_forward_hook(post))
    try:
        with torch.no_grad(), record_attention(model) as maps:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {"maps": dict(maps), "shapes": shapes, "started": started, "transformers": finished}


def _frame_of(name: str, rec: dict[str, Any]) -> str | None:
    """The image-input transformer whose output frame the layer ``name`` sees (``None``: the image's own)."""
    start = rec["started"].get(name)
    if start is None:
        return None
    after = [(t, path) for path, (t, on_image) in rec["transformers"].items() if on_image and t < start]
    return max(after)[1] if after else None


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
    deeper in the network is not undone and its window is not scored. See the module
    docstring for the metrics.

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
    from ..viz.maps import interpret_maps

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
            boxes = _check_boxes(boxes, b, "localization")
            if cam and cam_layer is None:
                from ..viz.cam import find_cam_layer

                cam_layer = find_cam_layer(model, x)
            rec = _record(model, x, extra=[cam_layer] if cam else [])
            thetas = {k.rsplit(":", 1)[0]: v for k, v in rec["maps"].items() if k.endswith(":theta") and v.dim() == 3}

            def in_image(maps: torch.Tensor, layer: str) -> tuple[torch.Tensor, str | None]:
                frame = _frame_of(layer, rec)
                maps = upsample_to(maps, hw)
                if frame is not None and frame in thetas:
                    maps = to_image_frame(maps, thetas[frame])
                return maps.cpu(), frame

            entries = interpret_maps(rec["maps"], rec["shapes"], image_hw=hw, query="mean")
            for m in entries:
                if m.kind not in ("spatial", "query"):
                    continue
                maps, frame = in_image(torch.from_numpy(m.data), m.key.split(":")[0])
                tally.add(m.key, m.kind, {"pointing": pointing_game(maps, boxes, tolerance=tolerance),
                                          "energy": energy_in_box(maps, boxes)}, frame=frame)
            for path, theta in thetas.items():
                if rec["transformers"].get(path, (0, False))[1]:
                    tally.add(f"{path}:window", "window", window_scores(theta.cpu(), boxes, hw, tolerance=tolerance))
            if cam:
                from ..viz.cam import grad_cam

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
    run's ``results.json`` (when the run has one; written atomically, other keys kept).
    ``dataset`` / ``data_dir`` evaluate on another dataset than the run's; ``size`` on a fixed
    random subset of the split (:func:`convattn.engine.inference.load_run_split`); the other
    arguments are :func:`localization`'s.

    Raises:
        ConfigError: the run's dataset has no boxes (only ``cluttered-digits`` has them).
    """
    from torch.utils.data import DataLoader

    from .._io import atomic_write_text
    from ..engine.distributed import resolve_device
    from ..engine.inference import load_run_split

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
    if save and results_path.is_file():
        record = json.loads(results_path.read_text())
        record["localization"] = result
        atomic_write_text(results_path, json.dumps(record, indent=2) + "\n")
    result["results_json"] = str(results_path) if save and results_path.is_file() else None
    return result

