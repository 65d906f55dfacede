"""Many runs: chains of configs trained in parallel workers, finished runs reused, the demo's variants,
and comparisons of variants over seeds (``compare``; ``collect`` for runs made elsewhere) with their table.

Example:
    >>> from convattn.experiments import make_configs
    >>> [(c.model, c.epochs, c.out) for c in make_configs("aacn", out="runs/demo", epochs=6)]
    [('simple_cnn', 4, 'runs/demo/_plain/e4-seed0'), ('aacn', 2, 'runs/demo/aacn/seed0')]
"""

from __future__ import annotations

from .compare import (
    LOCALIZE_IMAGES,
    collect,
    compare,
    compare_configs,
    parse_seeds,
    read_variants,
    run_localization,
    train_argv,
    variant_specs,
)
from .demo import (
    DATASET,
    KERNELS,
    SHARED,
    START_ORDER,
    VARIANTS,
    build_kernels,
    chain_notes,
    draw_figures,
    kernel_builds,
    localization_table,
    make_configs,
    run_demo,
    start_order,
)
from .runs import jobs_and_threads, run_state, train_or_reuse, train_runs, usable_cores
from .stats import mean_std, paired_interval, t_quantile
from .table import (
    PLAIN_RUNS,
    comparison_table,
    records_from_dir,
    records_from_runs,
    run_flops,
    run_record,
    table_cells,
    table_csv,
    table_markdown,
    table_note,
    write_table,
)

__all__ = [
    "train_runs",
    "train_or_reuse",
    "usable_cores",
    "jobs_and_threads",
    "VARIANTS",
    "DATASET",
    "SHARED",
    "START_ORDER",
    "KERNELS",
    "run_demo",
    "make_configs",
    "start_order",
    "kernel_builds",
    "build_kernels",
    "draw_figures",
    "chain_notes",
    "localization_table",
    "compare",
    "LOCALIZE_IMAGES",
    "run_localization",
    "PLAIN_RUNS",
    "compare_configs",
    "collect",
    "train_argv",
    "run_state",
    "variant_specs",
    "read_variants",
    "parse_seeds",
    "comparison_table",
    "records_from_runs",
    "records_from_dir",
    "run_record",
    "run_flops",
    "table_cells",
    "table_note",
    "table_markdown",
    "table_csv",
    "write_table",
    "mean_std",
    "paired_interval",
    "t_quantile",
]
