"""Cost of attention layers and models: parameters, FLOPs, latency, throughput, peak memory.

See :mod:`convattn.bench.measure` for what each number counts and what it leaves out.
"""

from __future__ import annotations

from .measure import count_flops, count_params, measure_module, peak_memory, time_fn
from .suites import bench_layers, bench_models
from .tables import format_table, write_rows

__all__ = [
    "bench_layers",
    "bench_models",
    "count_flops",
    "count_params",
    "format_table",
    "measure_module",
    "peak_memory",
    "time_fn",
    "write_rows",
]
