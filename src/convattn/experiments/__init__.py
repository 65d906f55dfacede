"""Many runs: chains of configs trained in parallel workers, finished runs reused, the demo's variants.

Example:
    >>> from convattn.experiments import make_configs
    >>> [(c.model, c.epochs) for c in make_configs("aacn", out="runs/demo/aacn", epochs=6)]
    [('simple_cnn', 4), ('aacn', 2)]
"""

from __future__ import annotations

from .demo import (
    DATASET,
    KERNELS,
    START_ORDER,
    VARIANTS,
    accuracy_table,
    build_kernels,
    kernel_builds,
    localization,
    localization_table,
    make_configs,
    score_and_draw,
    start_order,
    variant_configs,
)
from .runs import jobs_and_threads, train_or_reuse, train_runs, usable_cores

__all__ = [
    "train_runs",
    "train_or_reuse",
    "usable_cores",
    "jobs_and_threads",
    "VARIANTS",
    "DATASET",
    "START_ORDER",
    "KERNELS",
    "variant_configs",
    "make_configs",
    "start_order",
    "kernel_builds",
    "build_kernels",
    "score_and_draw",
    "localization",
    "localization_table",
    "accuracy_table",
]
