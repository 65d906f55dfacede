"""The comparison table: runs grouped by variant, mean ± std over seeds, paired differences to a baseline.

A *record* is one run: ``{"variant", "seed", "status", "test_acc", "best_val_acc", "params",
"flops", "epoch_time", "images_per_s", "localization", "figures", "run_dir", "how", "reason"}`` (missing keys
read as unknown). :func:`comparison_table` groups records into one row per variant;
:func:`table_markdown`, :func:`table_csv` and :func:`write_table` show and store it;
:func:`records_from_runs` makes records from run directories (``convattn report``), grouped by what
each run is (model, attention, placement, weights, dataset); :func:`records_from_dir` from every run under a
folder (``convattn compare --collect``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .stats import mean_std, paired_interval

__all__ = [
    "GROUP_FIELDS", "PLAIN_RUNS", "comparison_table", "table_cells", "table_note", "table_markdown", "table_csv", "write_table", "run_record",
    "records_from_runs", "records_from_dir", "run_flops",
]

#: What makes two runs the same variant (seeds apart).
GROUP_FIELDS = ("model", "attention", "placement", "weights", "dataset")
#: The folder of a comparison holding the plain runs that ``from_plain`` variants start from: part of those
#: variants' chains, no variant itself (a variant's name cannot start with ``_``).
PLAIN_RUNS = "_plain"

_NUMBERS = ("test_acc", "best_val_acc", "epoch_time", "images_per_s")
_CSV_COLUMNS = (
    "variant", "baseline", "finished", "runs", "test_acc_mean", "test_acc_std", "test_acc_per_seed",
    "best_val_acc_mean", "best_val_acc_std", "diff_mean", "diff_low", "diff_high", "diff_pairs", "verdict",
    "params", "flops", "epoch_time", "images_per_s", "pointing", "energy",
)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _mean(values: list[Any]) -> float | None:
    values = [v for v in map(_number, values) if v is not None]
    return sum(values) / len(values) if values else None


def _loc_scores(loc: Any) -> tuple[str, float, float] | None:
    """``(map, pointing, energy)`` of a run's localisation entry: its first attention map, else Grad-CAM."""
    maps = loc.get("maps") if isinstance(loc, dict) else None
    if not maps:
        return None
    name = next((k for k, m in maps.items() if m.get("kind") != "grad-cam"), next(iter(maps)))
    return name, maps[name].get("pointing"), maps[name].get("energy")


def comparison_table(records: Sequence[dict[str, Any]], *, baseline: str | None = None) -> dict[str, Any]:
    """One row per variant (in the records' order) of ``records``.

    Each row: ``{"variant", "baseline", "runs" (the records by seed), "finished", "test_acc" and
    "best_val_acc" ({"mean", "std"} over finished runs), "diff" (:func:`~convattn.experiments.stats.paired_interval`
    of test accuracy against the baseline over the seeds both finished; ``None`` on the baseline),
    "params", "flops", "epoch_time", "images_per_s" (means over finished runs), "localization"
    ({"map", "pointing", "energy"} or ``None``)}``. A run that did not finish counts in ``runs`` only.
    """
    order: list[str] = []
    for r in records:
        if r["variant"] not in order:
            order.append(r["variant"])
    if not order:
        raise ConfigError("comparison_table: no runs to compare")
    baseline = order[0] if baseline is None else baseline
    if baseline not in order:
        raise ConfigError(f"the baseline must be one of the variants ({', '.join(order)}), got {baseline!r}")
    by = {v: sorted((r for r in records if r["variant"] == v), key=lambda r: r.get("seed") or 0) for v in order}
    done = {v: {r.get("seed"): r for r in rs if r.get("status", "finished") == "finished" and _number(r.get("test_acc")) is not None}
            for v, rs in by.items()}
    rows = []
    for v in order:
        ok = list(done[v].values())
        row: dict[str, Any] = {"variant": v, "baseline": v == baseline, "runs": by[v], "finished": len(ok)}
        for key in ("test_acc", "best_val_acc"):
            mean, std = mean_std([x for x in (_number(r.get(key)) for r in ok) if x is not None])
            row[key] = {"mean": mean, "std": std}
        seeds = [s for s in done[v] if s in done[baseline]]
        row["diff"] = None if v == baseline else paired_interval(
            [done[v][s]["test_acc"] for s in seeds], [done[baseline][s]["test_acc"] for s in seeds])
        for key in ("params", "flops"):
            row[key] = next((r[key] for r in by[v] if r.get(key) is not None), None)
        for key in ("epoch_time", "images_per_s"):
            row[key] = _mean([r.get(key) for r in ok])
        scores = [s for s in (_loc_scores(r.get("localization")) for r in ok) if s is not None]
        row["localization"] = {"map": scores[0][0], "pointing": _mean([s[1] for s in scores]),
                               "energy": _mean([s[2] for s in scores])} if scores else None
        rows.append(row)
    return {"baseline": baseline, "rows": rows}


def _pct(v: float | None, sign: bool = False) -> str:
    return "–" if v is None else f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"


def _seed_cell(r: dict[str, Any]) -> str:
    status = r.get("status", "finished")
    shown = _pct(_number(r.get("test_acc"))) if status == "finished" else status
    return f"s{r.get('seed')}: {shown}"


def _diff_cell(row: dict[str, Any]) -> tuple[str, str]:
    d = row["diff"]
    if d is None:
        return "baseline", ""
    if d["low"] is None:
        return _pct(d["mean"], sign=True), d["verdict"]
    return f"{_pct(d['mean'], True)} [{_pct(d['low'], True)}, {_pct(d['high'], True)}]", d["verdict"]


def table_cells(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of the table as text: accuracies in %, differences in percentage points; the
    localisation columns only where some variant has scores."""
    from ..bench.tables import human_count

    def spread(m: dict[str, Any]) -> str:
        return "–" if m["mean"] is None else _pct(m["mean"]) + ("" if m["std"] is None else f" ± {_pct(m['std'])}")

    loc = any(row["localization"] for row in table["rows"])
    headers = ["variant", "runs", "test acc %", "per seed", "best val %", "Δ test vs baseline [95% CI]", "verdict",
               "params", "FLOPs", "s/epoch", "img/s"] + (["pointing %", "energy in box %"] if loc else [])
    body = []
    for row in table["rows"]:
        cells = [row["variant"], f"{row['finished']}/{len(row['runs'])}", spread(row["test_acc"]),
                 ", ".join(_seed_cell(r) for r in row["runs"]), spread(row["best_val_acc"]),
                 *_diff_cell(row), human_count(row["params"]) or "–", human_count(row["flops"]) or "–",
                 "–" if row["epoch_time"] is None else f"{row['epoch_time']:.2f}",
                 "–" if row["images_per_s"] is None else f"{row['images_per_s']:.0f}"]
        if loc:
            lz = row["localization"] or {}
            cells += [_pct(lz.get("pointing")), _pct(lz.get("energy"))]
        body.append(cells)
    return headers, body


def table_note(table: dict[str, Any]) -> str:
    """How to read the table, in one sentence."""
    return (f"mean ± std over finished seeds; Δ: paired difference to {table['baseline']} over the seeds both "
            "finished, 95% t interval (n − 1 dof); within noise: the interval holds 0.")


def table_markdown(table: dict[str, Any]) -> str:
    """The table as GitHub markdown, with :func:`table_note` under it."""
    from tabulate import tabulate

    headers, body = table_cells(table)
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + f"\n\n{table_note(table)}\n"


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    d = row["diff"] or {}
    lz = row["localization"] or {}
    per_seed = ";".join(f"{r.get('seed')}:{r.get('test_acc') if r.get('status', 'finished') == 'finished' else r.get('status')}"
                        for r in row["runs"])
    return {"variant": row["variant"], "baseline": row["baseline"], "finished": row["finished"], "runs": len(row["runs"]),
            "test_acc_mean": row["test_acc"]["mean"], "test_acc_std": row["test_acc"]["std"], "test_acc_per_seed": per_seed,
            "best_val_acc_mean": row["best_val_acc"]["mean"], "best_val_acc_std": row["best_val_acc"]["std"],
            "diff_mean": d.get("mean"), "diff_low": d.get("low"), "diff_high": d.get("high"), "diff_pairs": d.get("n"),
            "verdict": d.get("verdict", "baseline"), "params": row["params"], "flops": row["flops"],
            "epoch_time": row["epoch_time"], "images_per_s": row["images_per_s"], "pointing": lz.get("pointing"),
            "energy": lz.get("energy")}


def table_csv(table: dict[str, Any]) -> str:
    """One CSV line per variant: fractions and seconds as numbers, empty where unknown."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_COLUMNS)
    w.writeheader()
    w.writerows({k: "" if v is None else v for k, v in _csv_row(row).items()} for row in table["rows"])
    return buf.getvalue()


def write_table(table: dict[str, Any], out_dir: str | os.PathLike, *, name: str = "compare") -> list[Path]:
    """Write ``<out_dir>/<name>.md``, ``.csv`` and ``.json`` (atomically); return their paths."""
    from .._io import atomic_write_text
    from ..engine.metrics import strict_json

    out = Path(out_dir)
    return [atomic_write_text(out / f"{name}.md", table_markdown(table)),
            atomic_write_text(out / f"{name}.csv", table_csv(table)),
            atomic_write_text(out / f"{name}.json", strict_json(table, indent=2) + "\n")]


def run_record(results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A record from a run's results (results.json or what training returned) and ``extra`` fields."""
    keep = ("status", "params", "localization", "figures", "run_dir", "reason", "seed", *_NUMBERS)
    return {**{k: results[k] for k in keep if k in results}, "status": results.get("status", "finished"), **extra}


def run_flops(run_dir: str | os.PathLike) -> int | None:
    """FLOPs of one forward pass of a finished run's model on one image of its input size (``None`` without
    a checkpoint)."""
    import torch

    from ..bench import count_flops
    from ..engine import load_run
    from ..exceptions import CheckpointError

    try:
        model, _ = load_run(run_dir)
    except (CheckpointError, OSError):
        return None
    info = model.data_info
    hw = info.get("image_size") or (32, 32)
    return count_flops(model, torch.zeros(1, int(info["in_chans"]), int(hw[0]), int(hw[1])))


def _describe(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """results.json, with what the run is taken from config.yaml where results.json lacks it, and the run's other
    result settings (config.yaml's fields but the seed, :data:`GROUP_FIELDS` and ``RESULT_FREE_FIELDS``)."""
    import yaml

    from ..engine import TrainConfig

    res: dict[str, Any] = {}
    if (run_dir / "results.json").is_file():
        res = json.loads((run_dir / "results.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    cfg = cfg if isinstance(cfg, dict) else {}
    if not res and not cfg:
        raise ConfigError(f"{run_dir} holds no results.json or config.yaml; expected a run directory")
    for key in (*GROUP_FIELDS, "seed"):
        if res.get(key) is None:
            res[key] = cfg.get(key)
    res.setdefault("status", "unknown" if "test_acc" not in res else "finished")
    res["run_dir"] = str(run_dir)
    skip = {*GROUP_FIELDS, "seed", *TrainConfig.RESULT_FREE_FIELDS}
    return res, {k: v for k, v in cfg.items() if k not in skip}


def records_from_runs(run_dirs: Sequence[str | os.PathLike], *, flops: bool = True) -> list[dict[str, Any]]:
    """Records of run directories (or checkpoints in them), one variant per (model, attention, placement, weights,
    dataset) and other result settings (``lr``, ``model_kwargs`` ...), named by the fields that differ between
    variants (by attention when none does); ``flops`` measures each variant once."""
    described = [_describe(Path(d).parent if Path(d).is_file() else Path(d)) for d in run_dirs]
    fields = [{**{k: d.get(k) if k != "attention" else d.get(k) or "none" for k in GROUP_FIELDS}, **other}
              for d, other in described]
    names_of = [*GROUP_FIELDS, *sorted({k for f in fields for k in f} - set(GROUP_FIELDS))]
    varying = [k for k in names_of if len({json.dumps(f.get(k), sort_keys=True) for f in fields}) > 1] or ["attention"]
    names = [" ".join(str(f.get(k)) if k in GROUP_FIELDS else f"{k}={json.dumps(f.get(k))}" for k in varying
                      if f.get(k) is not None) for f in fields]
    measured: dict[str, int | None] = {}
    records = []
    for (d, _), name in zip(described, names):
        if flops and name not in measured and d["status"] == "finished":
            measured[name] = run_flops(d["run_dir"])
        records.append(run_record(d, variant=name, flops=measured.get(name)))
    return records


_RUN_FILES = ("results.json", "config.yaml", "run.json")


def records_from_dir(root: str | os.PathLike, *, flops: bool = True) -> list[dict[str, Any]]:
    """Records of every run directory under ``root`` (a folder holding results.json, config.yaml or a run.json marker).

    In ``compare``'s layout (``<root>/<variant>/seed<k>``) the folders name the variant and seed, variants in
    ``<root>/compare.json``'s order when there (then by name); a run that stopped before writing config.yaml is
    ``failed``, with the reason compare.json recorded. Any other layout: :func:`records_from_runs` of the folders
    holding results.json or config.yaml. The plain runs under ``<root>/_plain`` (:data:`PLAIN_RUNS`) are left out.
    """
    import re

    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--collect expects a folder of run directories, got {str(root)!r}")
    dirs = sorted({p.parent for name in _RUN_FILES for p in root.rglob(name)
                   if p.relative_to(root).parts[0] != PLAIN_RUNS})
    keyed = {d: re.fullmatch(r"seed(\d+)", d.name) and d.parent.parent == root for d in dirs}
    if dirs and all(keyed.values()):
        return _records_in_layout(root, dirs, flops)
    described = [d for d in dirs if (d / "results.json").is_file() or (d / "config.yaml").is_file()]
    if not described:
        raise ConfigError(f"--collect expects run directories (results.json or config.yaml) under {str(root)!r}, found none")
    return records_from_runs(described, flops=flops)


def _records_in_layout(root: Path, dirs: list[Path], flops: bool) -> list[dict[str, Any]]:
    saved = root / "compare.json"
    rows = json.loads(saved.read_text()).get("rows", []) if saved.is_file() else []
    order = [row["variant"] for row in rows]
    known = {(r.get("variant"), r.get("seed")): r for row in rows for r in row.get("runs", [])}
    measured: dict[str, int | None] = {}
    records = []
    for d in sorted(dirs, key=lambda d: (order.index(d.parent.name) if d.parent.name in order else len(order),
                                         d.parent.name, int(d.name[4:]))):
        variant, seed = d.parent.name, int(d.name[4:])
        if (d / "results.json").is_file() or (d / "config.yaml").is_file():
            res = _describe(d)[0]
        else:
            res = {"status": "failed", "reason": known.get((variant, seed), {}).get(
                "reason", "stopped before writing config.yaml"), "run_dir": str(d)}
        if flops and variant not in measured and res["status"] == "finished":
            measured[variant] = run_flops(d)
        records.append(run_record(res, variant=variant, seed=seed))
    for r in records:
        r["flops"] = measured.get(r["variant"])
    return records
