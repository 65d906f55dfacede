"""Rows of numbers -> terminal tables and CSV / JSON / Markdown files (written atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

from .._io import atomic_write_text

__all__ = ["format_table", "write_rows", "atomic_write_text", "human_count", "human_bytes", "columns_of"]


def human_count(n: float | None, unit: str = "") -> str:
    """``1234567 -> '1.23M'``; ``None -> ''``."""
    if n is None:
        return ""
    n = float(n)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}" if n != int(n) else f"{int(n)}{unit}"


def human_bytes(n: float | None) -> str:
    """Bytes as ``'12.3 MiB'``."""
    if n is None:
        return ""
    n = float(n)
    for div, suffix in ((2**50, "PiB"), (2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.3g} {suffix}"
    return f"{int(n)} B"


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Union of the rows' keys, in first-seen order."""
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key in ("params", "flops", "train_flops"):
        return human_count(value)
    if key.endswith("mem"):
        return human_bytes(value)
    if key.startswith("vs_"):
        return f"{value:.2f}x"
    if key.endswith("_ms") or key == "ms":
        return f"{value:.3g}"
    if key == "throughput":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"
    return str(value)


_SHOWN = ("layer", "model", "attention", "impl", "kind", "params", "flops", "fwd_ms", "fwdbwd_ms", "ms",
          "min_ms", "max_ms", "throughput", "fwd_mem", "train_mem", "mem", "vs_conv3x3", "vs_timm", "vs_plain", "note")


def format_table(rows: Sequence[dict[str, Any]], *, tablefmt: str = "simple", columns: Sequence[str] | None = None,
                 human: bool = True) -> str:
    """A table of ``rows`` (the usual columns only, unless ``columns`` is given), numbers made readable."""
    present = columns_of(rows)
    cols = list(columns) if columns is not None else [c for c in _SHOWN if c in present]
    body = [[(_cell(c, r.get(c)) if human else ("" if r.get(c) is None else r.get(c))) for c in cols] for r in rows]
    return tabulate(body, headers=cols, tablefmt=tablefmt, disable_numparse=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    return str(o)


def write_rows(rows: Sequence[dict[str, Any]], *, csv_path=None, json_path=None, markdown_path=None,
               meta: dict[str, Any] | None = None) -> list[Path]:
    """Write ``rows`` to any of CSV (all columns, raw numbers), JSON (``{"meta", "rows"}``) and Markdown."""
    written: list[Path] = []
    if csv_path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns_of(rows))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
        written.append(atomic_write_text(csv_path, buf.getvalue()))
    if json_path:
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]
        written.append(atomic_write_text(json_path, json.dumps({"meta": meta or {}, "rows": clean}, indent=2,
                                                               default=_json_default) + "\n"))
    if markdown_path:
        head = ""
        if meta:
            head = "<!-- " + ", ".join(f"{k}={v}" for k, v in meta.items()) + " -->\n\n"
        written.append(atomic_write_text(markdown_path, head + format_table(rows, tablefmt="github") + "\n"))
    return written
