"""``write_report``: one self-contained HTML page comparing trained runs.

The page holds a table (accuracy, parameters, FLOPs, time per epoch, inference
latency), the localisation scores of runs that have them (``convattn eval
--localization``), accuracy against FLOPs as a scatter plot, the training curves
of all runs, and a gallery of every run's attention maps on the same images. Images are
embedded as base64 PNG, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..maps import grad_cam, interpret_maps, record_maps
from ._images import figure_png, new_figure, to_display
from .curves import plot_curves, read_metrics, read_results
from .maps import gallery_figure
from .run import load_model, sample_images

__all__ = ["write_report", "run_summary"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem}th,td{padding:.3rem .7rem;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;height:auto}
.muted{color:#777;font-size:.85rem}figure{margin:1rem 0}figcaption{font-size:.9rem;color:#444}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _has_weights(run: str | os.PathLike | nn.Module) -> bool:
    """A model, a checkpoint file, or a run directory holding ``best.pt`` or ``last.pt``."""
    if isinstance(run, nn.Module) or Path(run).is_file():
        return True
    return any((Path(run) / name).is_file() for name in ("best.pt", "last.pt"))


def _fmt(v: Any, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if kind == "pct":
        return f"{100 * v:.2f}%" if v <= 1.0 else f"{v:.2f}%"
    if kind == "count":
        from ..bench.tables import human_count

        return human_count(v)
    if kind == "s":
        return f"{v:.2f}"
    if kind == "ms":
        return f"{v:.3g}"
    return html.escape(str(v))


def run_summary(
    run: str | os.PathLike | nn.Module,
    *,
    label: str | None = None,
    latency: bool = True,
    example: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Load one run and measure what the report shows.

    Returns:
        ``{"label", "model", "attention", "dataset", "status", "test_acc", "val_acc",
        "params", "flops", "epoch_time", "latency_ms", "localization", "metrics",
        "module", "info", "config", "run_dir"}``; ``localization`` is the entry
        :func:`convattn.eval.localize_run` stored in ``results.json`` (or ``None``); ``flops`` is per image (batch 1, forward),
        ``latency_ms`` the median batch-1 forward on this machine, both on
        ``example[:1]`` if given, else a zero image of the run's input size. A run whose
        ``results.json`` says it did not finish (``diverged``, ``interrupted``) has no accuracy.
    """
    from ..bench.measure import count_flops, count_params, measure_module

    model, info, config, run_dir = load_model(run)
    results = read_results(run_dir) if run_dir is not None else {}
    metrics = read_metrics(run_dir) if run_dir is not None else []
    last = metrics[-1] if metrics else {}
    if example is not None:
        x = example[:1]
    else:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        in_chans = int(info.get("in_chans", first_conv.in_channels if first_conv is not None else 3))
        hw = info.get("image_size") or (32, 32)
        x = torch.zeros(1, in_chans, int(hw[0]), int(hw[1]))
    flops = count_flops(model, x)
    lat = measure_module(model, x, repeats=5, warmup=1, memory=False, flops=False)["latency_ms"] if latency else None
    name = label or (run_dir.name if run_dir is not None else type(model).__name__)
    status = results.get("status", "finished") if results else ("finished" if run_dir is None else "unknown")
    finished = status == "finished"
    return {
        "label": name,
        "model": getattr(config, "model", type(model).__name__),
        "attention": getattr(config, "attention", None) or "none",
        "dataset": getattr(config, "dataset", None) or info.get("name"),
        "status": status,
        "test_acc": results.get("test_acc") if finished else None,
        "val_acc": results.get("best_val_acc", last.get("val_acc")) if finished else None,
        "params": count_params(model),
        "flops": flops,
        "epoch_time": results.get("epoch_time", last.get("epoch_time")),
        "latency_ms": lat,
        "localization": results.get("localization"),
        "metrics": metrics,
        "module": model,
        "info": info,
        "config": config,
        "run_dir": run_dir,
    }


def _localization_table(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """The localisation section: one row per scored map of every run that has scores."""
    scored = [s for s in summaries if isinstance(s.get("localization"), dict) and s["localization"].get("maps")]
    if not scored:
        return []
    first = scored[0]["localization"]
    out = ["<h2>Localisation</h2>",
           f"<p class='muted'>Against each digit's box on the {_fmt(first.get('split', 'test'))} split: pointing game "
           f"(the map's maximum within {_fmt(first.get('tolerance_px'), 's')} px, 15/224 of the image side, of the box), "
           "energy in box (share of the map's mass inside the box) beside the box's share of the image (what a "
           "uniform map scores), and for spatial-transformer windows their IoU with the box. Maps drawn after a "
           "transformer are carried back into the image frame.</p>",
           "<table id='localization'><thead><tr><th>run</th><th>map</th><th>kind</th><th>images</th>"
           "<th>pointing</th><th>chance</th><th>energy in box</th><th>box share</th><th>window IoU</th>"
           "</tr></thead><tbody>"]
    for s in scored:
        loc = s["localization"]
        for name, m in loc["maps"].items():
            shown = f"{name} @ {m['layer']}" if m.get("layer") else name
            out.append(
                f"<tr class='loc'><td>{_fmt(s['label'])}</td><td>{_fmt(shown)}</td><td>{_fmt(m.get('kind'))}</td>"
                f"<td>{_fmt(m.get('images'))}</td><td>{_fmt(m.get('pointing'), 'pct')}</td>"
                f"<td>{_fmt(loc.get('pointing_chance'), 'pct')}</td><td>{_fmt(m.get('energy'), 'pct')}</td>"
                f"<td>{_fmt(loc.get('box_share'), 'pct')}</td><td>{_fmt(m.get('iou'), 'pct')}</td></tr>")
    out.append("</tbody></table>")
    return out


def _scatter(summaries: Sequence[dict[str, Any]]) -> bytes | None:
    pts = [(s["flops"], s["test_acc"] if s["test_acc"] is not None else s["val_acc"], s) for s in summaries]
    pts = [p for p in pts if p[1] is not None and isinstance(p[1], (int, float)) and math.isfinite(p[1])]
    if not pts:
        return None
    fig = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    sizes = [max(20.0, 200.0 * s["params"] / max(p[2]["params"] for p in pts)) for _, _, s in pts]
    ax.scatter([max(p[0], 1) for p in pts], [p[1] for p in pts], s=sizes, alpha=0.7)
    for f, a, s in pts:
        ax.annotate(s["label"], (max(f, 1), a), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs per image (log)")
    ax.set_ylabel("test accuracy" if all(s["test_acc"] is not None for _, _, s in pts) else "accuracy")
    ax.set_title("accuracy against cost (marker area ∝ parameters)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def write_report(
    run_dirs: Sequence[str | os.PathLike | nn.Module],
    out_path: str | os.PathLike,
    *,
    count: int = 8,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    images: torch.Tensor | None = None,
    cam: bool = True,
    title: str = "convattn report",
) -> Path:
    """Write one self-contained HTML page comparing ``run_dirs``.

    Args:
        run_dirs: run directories or checkpoints (or ``nn.Module`` objects).
        out_path: the HTML file (written atomically; folders created).
        count: gallery images per run.
        dataset: dataset for the gallery (default: each run's own; runs on the
            same dataset are shown on the same images).
        data_dir: dataset root.
        images: normalised ``(B, C, H, W)`` gallery images for every run instead.
        cam: add a Grad-CAM column to the galleries.
        title: page title.

    Returns:
        the path written.
    """
    from .._io import atomic_write_text

    if not run_dirs:
        raise ConfigError("report: give at least one run directory")
    if count < 1:
        raise ConfigError(f"report: --count must be >= 1, got {count}")
    for r in run_dirs:
        if not isinstance(r, nn.Module) and not Path(r).exists():
            raise ConfigError(f"report: {str(r)!r} does not exist")
    loadable = [r for r in run_dirs if _has_weights(r)]
    if not loadable:
        raise ConfigError("report: none of the runs has weights to show (no best.pt or last.pt in "
                          f"{', '.join(repr(str(r)) for r in run_dirs[:4])})")
    summaries = [run_summary(r, example=images) for r in loadable]
    labels = [s["label"] for s in summaries]
    for i, s in enumerate(summaries):  # make labels unique
        if labels.count(s["label"]) > 1:
            s["label"] = f"{s['label']} ({i + 1})"

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='muted'>{len(summaries)} run(s); written {_dt.datetime.now().isoformat(timespec='seconds')}; "
             f"torch {html.escape(torch.__version__)}. FLOPs per image: matrix products and convolutions only "
             "(torch.utils.flop_counter); latency: batch-1 forward on the machine that wrote this page.</p>"]

    parts.append("<h2>Runs</h2><table id='runs'><thead><tr><th>run</th><th>model</th><th>attention</th>"
                 "<th>dataset</th><th>status</th><th>test acc</th><th>best val acc</th><th>params</th><th>FLOPs / image</th>"
                 "<th>s / epoch</th><th>latency ms</th></tr></thead><tbody>")
    for s in summaries:
        parts.append(
            f"<tr class='run'><td>{_fmt(s['label'])}</td><td>{_fmt(s['model'])}</td><td>{_fmt(s['attention'])}</td>"
            f"<td>{_fmt(s['dataset'])}</td><td>{_fmt(s['status'])}</td><td>{_fmt(s['test_acc'], 'pct')}</td><td>{_fmt(s['val_acc'], 'pct')}</td>"
            f"<td>{_fmt(s['params'], 'count')}</td><td>{_fmt(s['flops'], 'count')}</td>"
            f"<td>{_fmt(s['epoch_time'], 's')}</td><td>{_fmt(s['latency_ms'], 'ms')}</td></tr>")
    for r in run_dirs:  # runs that left no weights (failed before their first checkpoint): their status only
        if not _has_weights(r):
            status = read_results(r).get("status", "failed") if (Path(r) / "results.json").is_file() else "no checkpoint"
            parts.append(f"<tr class='run'><td>{_fmt(Path(r).name)}</td><td colspan='3'></td><td>{_fmt(status)}</td>"
                         "<td colspan='6'>–</td></tr>")
    parts.append("</tbody></table>")

    parts.extend(_localization_table(summaries))

    scatter = _scatter(summaries)
    parts.append("<h2>Accuracy against cost</h2>")
    parts.append(_img(scatter, "accuracy against FLOPs") if scatter else "<p class='muted'>no accuracy recorded yet</p>")

    curves = {s["label"]: s["metrics"] for s in summaries if s["metrics"]}
    parts.append("<h2>Training curves</h2>")
    if curves:
        parts.append(_img(figure_png(plot_curves(curves)), "training curves"))
    else:
        parts.append("<p class='muted'>no metrics.jsonl rows in these runs</p>")

    parts.append("<h2>Attention maps</h2><p class='muted'>Same images for runs on the same dataset; spatial maps "
                 "upsampled onto the input, channel weights as bars, self-attention as the map of the centre query.</p>")
    cache: dict[str, tuple[torch.Tensor, list[int] | None]] = {}
    for s in summaries:
        model, info = s["module"], s["info"]
        try:
            if images is not None:
                x, y = images[:count], None
            else:
                name = dataset or s["dataset"]
                if not name:
                    raise ConfigError("the run names no dataset")
                if name not in cache:
                    cache[name] = sample_images(name, count, data_dir=data_dir, config=s["config"])
                x, y = cache[name]
            rec = record_maps(model, x)
            entries = interpret_maps(rec.maps, rec.shapes, image_hw=tuple(x.shape[-2:]))
            cams = None
            if cam:
                try:
                    cams, _ = grad_cam(model, x)
                except ConfigError:
                    cams = None
            disp = to_display(x, info.get("mean"), info.get("std"))
            fig = gallery_figure(disp, entries, cams=cams, title=s["label"])
            note = "" if entries else " (no attention layers recorded)"
            parts.append(f"<figure>{_img(figure_png(fig, dpi=80), 'attention maps of ' + s['label'])}"
                         f"<figcaption>{_fmt(s['label'])}{note}</figcaption></figure>")
        except (ConfigError, FileNotFoundError) as exc:
            parts.append(f"<p class='muted'>{_fmt(s['label'])}: no gallery: {html.escape(str(exc))}</p>")
    parts.append("</body></html>\n")
    return atomic_write_text(out_path, "\n".join(parts))
