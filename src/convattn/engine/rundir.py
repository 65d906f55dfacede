"""Run directories: the default path, what ``resume`` accepts, and a finished run's saved results."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..exceptions import CheckpointError, ConfigError
from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import TrainConfig

__all__ = ["default_run_dir", "new_run_dir", "resume_file", "check_resume_config", "finished_results"]


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<model>-<attention>-<dataset>-<YYYYmmdd-HHMMSS>``."""
    def slug(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.]+", "_", s).strip("_") or "x"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{slug(config.model)}-{slug(config.attention or 'none')}-{slug(config.dataset)}-{stamp}"


def new_run_dir(config: TrainConfig, *, check: bool = True) -> Path:
    """The directory a new run of ``config`` writes (``config.out`` or :func:`default_run_dir`); with
    ``check``, one that already holds a run raises ConfigError (resume it or choose another)."""
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if check and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"run directory {str(run_dir)!r} already holds a run; resume it with "
            f"--resume {run_dir} or choose another --out"
        )
    return run_dir


def resume_file(path: str | os.PathLike) -> Path:
    """The checkpoint ``resume=path`` continues from: a run directory's ``last.pt``, or the file given."""
    p = Path(path)
    if p.is_dir():
        if (p / "last.pt").is_file():
            return p / "last.pt"
        raise CheckpointError(f"cannot resume: {str(p)!r} holds no last.pt")
    return resolve_checkpoint(p)


def check_resume_config(config: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuse to resume a run saved with ``saved`` (its config dict) under a ``config`` that changes its
    result: only :attr:`TrainConfig.RESULT_FREE_FIELDS` may differ."""
    changed = config.result_changes(saved)
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items())[:6])
        raise ConfigError(
            f"cannot resume with a different configuration ({detail}); only "
            f"{', '.join(sorted(TrainConfig.RESULT_FREE_FIELDS))} may change when resuming"
        )


def finished_results(config: TrainConfig, resume: str | os.PathLike) -> dict[str, Any] | None:
    """The saved results of a finished run (left untouched), or ``None`` when the run has epochs to go.

    A finished run cannot be extended with other settings (more epochs change its
    schedule); the error points to ``init_from``, which starts a new run from its weights.
    """
    path = resume_file(resume)
    ckpt = load_checkpoint(path, map_location="cpu")
    if not (ckpt.get("plan") or {}).get("done"):
        return None
    try:
        check_resume_config(config, ckpt.get("config") or {})
    except ConfigError as exc:
        raise ConfigError(
            f"run {str(path.parent)!r} is finished ({ckpt.get('epoch')} epochs) and {exc}; to train on from its "
            f"weights, start a new run with --init-from {path.parent}"
        ) from None
    try:
        res = json.loads((path.parent / "results.json").read_text())
    except (OSError, ValueError):
        return None  # finished training but no valid results.json: the test evaluation runs again
    print(f"run {str(path.parent)!r} is already finished ({ckpt.get('epoch')} epochs); nothing to do, "
          "its files are unchanged", file=sys.stderr, flush=True)
    return res
