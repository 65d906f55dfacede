"""The metrics log of a run: one row per epoch in ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard),
and its ``results.json``. Both are strict JSON: a non-finite number is written as ``null``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_text

__all__ = [
    "EpochLog", "METRIC_COLUMNS", "RUN_STATUSES", "DESCRIBING_FIELDS", "MetricsWriter", "read_metrics", "epoch_line", "run_results", "stopped_results",
    "write_results", "json_safe", "strict_json", "progress_bar",
]

#: ``results.json``'s ``status``: trained to the end and tested; stopped at a non-finite loss (no
#: accuracy is reported); stopped by Ctrl-C (resume it).
RUN_STATUSES = ("finished", "diverged", "interrupted")

#: The columns of ``metrics.csv`` (``metrics.jsonl`` rows also hold the stage's trained / frozen groups).
METRIC_COLUMNS = [
    "epoch", "stage", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time", "images_per_s",
]


def json_safe(value: Any) -> Any:
    """NaN / inf as ``null``, so results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` with non-finite floats as ``null`` (never the bare ``NaN`` JSON forbids)."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (none when it is missing; unreadable lines skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


class EpochLog:
    """An epoch's running loss and accuracy, and its first step whose loss (or another ``watched`` value:
    the gradient norm) is not finite, with no host sync per step: each step's values stay on the device
    (three small ops count its correct predictions) until :meth:`read` fetches all those pending in one
    read back and sums them on the host, in float64. ``start`` (``[loss sum, correct, count]``) carries
    the sums of an epoch resumed in its middle."""

    def __init__(self, watched: tuple[str, ...] = ("the loss",), start: list[float] | None = None):
        self.watched = watched  # the names of the loss and of the other values checked
        self.sums = [float(v) for v in start or (0.0, 0.0, 0.0)]
        self.pending: list[tuple[int, float, int]] = []  # (step, lr, batch size) of each step not read yet
        self.tensors: list[torch.Tensor] = []  # their correct counts and watched values, in that order
        self.first: tuple[int, float, dict[str, float]] | None = None

    def add(self, step: int, lr: float, logits: torch.Tensor, y: torch.Tensor, watched: list[torch.Tensor]) -> None:
        """Record ``step`` (at learning rate ``lr``): its ``logits``' correct predictions of ``y`` and the
        ``watched`` 0-d tensors, the batch's mean loss first."""
        with torch.no_grad():
            self.tensors += [(logits.detach().argmax(1) == y).sum(), *(t.detach() for t in watched)]
        self.pending.append((step, lr, y.shape[0]))

    def read(self) -> tuple[list[float], tuple[int, float, dict[str, float]] | None]:
        """``[loss sum, correct, count]`` and the first step whose watched values are not finite, as
        ``(step, lr, {what: value})`` (``None`` while every one is finite). One read back from the device."""
        if self.pending:
            k = 1 + len(self.watched)
            values = torch.stack(self.tensors).tolist()  # 0-d tensors; the counts' int64 becomes float32, exactly
            for i, (step, lr, n) in enumerate(self.pending):
                correct, loss, *_ = row = values[i * k: (i + 1) * k]
                self.sums = [self.sums[0] + loss * n, self.sums[1] + correct, self.sums[2] + n]
                if self.first is None and not all(math.isfinite(v) for v in row[1:]):
                    self.first = (step, lr, dict(zip(self.watched, row[1:])))
            self.pending, self.tensors = [], []
        return list(self.sums), self.first


def progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar over an epoch's steps where ``enabled`` and stderr is a terminal (never under CI), else ``None``."""
    try:
        shown = enabled and not os.environ.get("CI") and sys.stderr.isatty()
    except (AttributeError, ValueError):
        shown = False
    if not shown:
        return None
    from tqdm.auto import tqdm

    return tqdm(leave=False, dynamic_ncols=True, **kwargs)


def epoch_line(row: dict[str, Any]) -> str:
    """The log line of one epoch's row."""
    return (f"epoch {row['epoch']} [{row['stage']}] train_loss {row['train_loss']:.4f} "
            f"train_acc {row['train_acc']:.4f} val_loss {row['val_loss']:.4f} "
            f"val_acc {row['val_acc']:.4f} lr {row['lr']:.3g} {row['epoch_time']:.1f}s "
            f"{row['images_per_s']:.0f} img/s")


#: What a run is, copied from its config.yaml into results.json, so a folder of runs groups by variant and seed.
DESCRIBING_FIELDS = ("model", "attention", "placement", "weights", "dataset", "seed")


def _described(run_dir: str | os.PathLike) -> dict[str, Any]:
    """:data:`DESCRIBING_FIELDS` from the run's config.yaml (``weights`` is ``None`` in configs without it)."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return {k: cfg.get(k) for k in DESCRIBING_FIELDS} if isinstance(cfg, dict) else {}


def run_results(rows: list[dict[str, Any]], *, run_dir: str | os.PathLike, params: int, epochs: int, steps: int,
                best_val_acc: float, test: dict[str, Any]) -> dict[str, Any]:
    """A finished run's results (``results.json``) from its metrics ``rows`` and the test evaluation:
    what the run is (:data:`DESCRIBING_FIELDS`), the last epoch's losses and accuracies, the mean seconds per epoch."""
    nan = float("nan")
    last = rows[-1] if rows else {}
    times = [float(r.get("epoch_time", nan)) for r in rows]
    return {
        "status": "finished", "run_dir": str(run_dir), **_described(run_dir), "params": int(params), "epochs": epochs,
        "steps": steps,
        "epoch_time": sum(times) / len(times) if times else nan,
        **{k: last.get(k, nan) for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "best_val_acc": best_val_acc, "test_loss": test["loss"], "test_acc": test["accuracy"],
        "images_per_s": last.get("images_per_s", nan),
    }


def stopped_results(status: str, *, run_dir: str | os.PathLike, epochs: int, steps: int, reason: str) -> dict[str, Any]:
    """``results.json`` of a run that stopped before its end (``diverged`` / ``interrupted``): what the run is,
    no accuracy."""
    if status not in RUN_STATUSES[1:]:
        raise ValueError(f"stopped_results expects status diverged or interrupted, got {status!r}")
    return {"status": status, "run_dir": str(run_dir), **_described(run_dir), "epochs": epochs, "steps": steps,
            "reason": reason}


def write_results(run_dir: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write ``result`` as the run's ``results.json`` (strict JSON, atomically)."""
    atomic_write_text(Path(run_dir) / "results.json", strict_json(result, indent=2) + "\n")


class MetricsWriter:
    """Per-epoch rows appended to metrics.jsonl and metrics.csv (and TensorBoard when installed).

    ``keep_before_epoch``: resuming, keep the rows up to that epoch and drop those of the
    epochs that will run again; ``None`` starts empty files.
    """

    def __init__(self, run_dir: Path, *, keep_before_epoch: int | None, tensorboard: bool):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if keep_before_epoch is not None:
            rows = [r for r in read_metrics(run_dir) if int(r.get("epoch", 0)) <= keep_before_epoch]
            atomic_write_text(self.jsonl, "".join(strict_json(r) + "\n" for r in rows))
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(self.csv, buf.getvalue())
        else:
            atomic_write_text(self.jsonl, "")
            atomic_write_text(self.csv, ",".join(METRIC_COLUMNS) + "\n")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as fh:
            fh.write(strict_json(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.csv, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore").writerow(json_safe(row))
            fh.flush()
            os.fsync(fh.fileno())
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
