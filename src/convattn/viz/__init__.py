"""Pictures of attention: overlays of every layer's maps, spatial-transformer grids, Grad-CAM,
training curves, and a self-contained HTML report comparing runs.

Every plotting function returns ``matplotlib.figure.Figure`` objects drawn on the
Agg canvas (no pyplot state; they display in notebooks and save headless); the
file-writing functions (:func:`visualize_run`, :func:`write_report`) are thin
layers on top. Recording the maps, reading their kinds and Grad-CAM live in
:mod:`convattn.maps`; those names are re-exported here.
"""

from __future__ import annotations

from ..maps import (
    AttentionMap,
    LogitsOnly,
    collect_attention,
    find_cam_layer,
    find_transformers,
    grad_cam,
    interpret_maps,
    query_map,
)
from ._images import heat_overlay, load_images, save_figure, to_display, upsample
from .curves import plot_curves, read_metrics, read_results
from .maps import attention_figure, plot_attention
from .compare import write_compare_page
from .report import write_report
from .run import load_model, sample_images, visualize_run
from .stn import plot_transformer, plot_transformers, transformer_outputs

__all__ = [
    "AttentionMap",
    "LogitsOnly",
    "attention_figure",
    "collect_attention",
    "find_cam_layer",
    "find_transformers",
    "grad_cam",
    "heat_overlay",
    "interpret_maps",
    "load_images",
    "load_model",
    "plot_attention",
    "plot_curves",
    "plot_transformer",
    "plot_transformers",
    "query_map",
    "read_metrics",
    "read_results",
    "sample_images",
    "save_figure",
    "to_display",
    "transformer_outputs",
    "upsample",
    "visualize_run",
    "write_compare_page",
    "write_report",
]
