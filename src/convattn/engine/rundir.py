"""Run directories: the default path, one writer at a time, what ``--out`` and ``resume`` accept, and a
finished run's saved results.

A run directory belongs to one run: its marker (``run.json``) says so, and an exclusive ``flock`` on
its ``run.lock`` (naming the holder's PID and host) is held while the run writes. docs/training.md,
"What a run directory guarantees", is the user's view.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

import yaml

from .._io import atomic_write_text, os_reason, remove_stale_temps
from ..exceptions import CheckpointError, ConfigError, ConvattnError, RunDirectoryError
from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import TrainConfig

try:
    import fcntl
except ImportError:  # Windows: no flock, so no lock
    fcntl = None

__all__ = [
    "MARKER", "RUN_FORMAT", "RunLock", "claim_run_dir", "default_run_dir", "new_run_dir", "resume_file",
    "check_resume_out", "check_resume_config", "config_file_edits", "resume_config", "finished_results",
]

#: The file that makes a directory a convattn run, written first; ``{"format": RUN_FORMAT, ...}``.
MARKER = "run.json"
RUN_FORMAT = "convattn.run/1"
_LOCK = "run.lock"


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<model>-<attention>-<dataset>-<YYYYmmdd-HHMMSS>``."""
    def slug(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.]+", "_", s).strip("_") or "x"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{slug(config.model)}-{slug(config.attention or 'none')}-{slug(config.dataset)}-{stamp}"


def new_run_dir(config: TrainConfig, *, check: bool = True) -> Path:
    """The directory a new run of ``config`` writes (``config.out`` or :func:`default_run_dir`); with
    ``check``, one that is not empty raises ConfigError saying what it holds (:func:`claim_run_dir`)."""
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if check:
        _check_new(run_dir)
    return run_dir


def _check_new(run_dir: Path, *, locked: bool = True) -> None:
    """Refuse a new run in ``run_dir`` unless it is missing or empty: name what is there. Before the
    lock is taken (``locked=False``) only a directory that is no convattn run is refused, so that a
    run in progress is reported by its lock, naming its holder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"run directory {str(run_dir)!r} is a file, not a directory; choose another --out")
    names = sorted(p.name for p in run_dir.iterdir() if p.name != _LOCK) if run_dir.is_dir() else []
    if names in ([], [MARKER]):  # a marker alone: a run that stopped before writing anything (a bad option)
        return
    found = ", ".join(names[:5]) + (f", ... ({len(names)} entries)" if len(names) > 5 else "")
    is_run = bool({MARKER, "last.pt", "best.pt"} & set(names))  # runs from before the marker hold a checkpoint
    if not is_run:
        raise ConfigError(f"--out {str(run_dir)!r} is not empty and is not a convattn run (found {found}); "
                          "choose a new or empty directory")
    if not locked:
        return
    if (run_dir / "last.pt").is_file():
        raise ConfigError(f"run directory {str(run_dir)!r} already holds a run ({found}); resume it with "
                          f"--resume {run_dir} or choose another --out")
    raise ConfigError(f"run directory {str(run_dir)!r} holds another run that has no last.pt to resume from "
                      f"({found}); remove it or choose another --out")


class RunLock:
    """The exclusive ``flock`` on a run directory's ``run.lock``; the OS drops it when the process dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / _LOCK
        self._file: IO[str] | None = open(self.path, "a+")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self.release()
            raise RunDirectoryError(
                f"run directory {str(run_dir)!r} is in use by {holder} (lock {self.path.name}); one run writes "
                "a directory at a time: wait for it to end or choose another --out"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        """Give the lock up (closing the file releases the ``flock``)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def claim_run_dir(run_dir: str | os.PathLike, *, resume: bool) -> RunLock:
    """Take ``run_dir`` for one run: refuse a new run in a directory that holds anything, lock it (a
    second writer is refused, naming the holder), write the marker, remove temporary files that
    interrupted writes left. The caller releases the returned lock when the run ends.

    Raises:
        ConfigError: a new run in a non-empty directory (what was found is named).
        RunDirectoryError: the directory is in use by another run, or cannot be created or
            written (a file, under a file, read-only, permission, full disk).
    """
    run_dir = Path(run_dir)
    try:
        if not resume:
            _check_new(run_dir, locked=False)  # before anything is created in someone else's directory
        file_above = next((p for p in run_dir.parents if p.exists() and not p.is_dir()), None)
        if file_above is not None:
            raise RunDirectoryError(f"cannot create run directory {str(run_dir)!r}: {str(file_above)!r} is a file")
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir)
        try:
            if not resume:
                _check_new(run_dir)  # again under the lock: another run may have started meanwhile
            if not (run_dir / MARKER).is_file():
                marker = {"format": RUN_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                atomic_write_text(run_dir / MARKER, json.dumps(marker) + "\n")
            remove_stale_temps(run_dir)
        except BaseException:
            lock.release()
            raise
    except OSError as exc:
        if isinstance(exc, ConvattnError):
            raise
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(run_dir) else ""
        raise RunDirectoryError(f"cannot write run directory {str(run_dir)!r}{where}: {os_reason(exc)}") from None
    return lock


def resume_file(path: str | os.PathLike) -> Path:
    """The checkpoint ``resume=path`` continues from: a run directory's ``last.pt``, or the file given."""
    p = Path(path)
    if p.is_dir():
        if (p / "last.pt").is_file():
            return p / "last.pt"
        raise CheckpointError(f"cannot resume: {str(p)!r} holds no last.pt")
    return resolve_checkpoint(p)


def check_resume_out(config: TrainConfig, resume: str | os.PathLike) -> None:
    """Refuse ``config.out`` naming another directory than the run being resumed: a resumed run
    continues in its own directory (to branch a run, copy its directory and resume the copy)."""
    run_dir = resume_file(resume).parent
    if config.out and Path(config.out).resolve() != run_dir.resolve():
        raise ConfigError(
            f"--resume continues the run in {str(run_dir)!r} and cannot write --out {config.out!r}; "
            f"to branch a run, copy its directory (cp -r {run_dir} {config.out}) and resume the copy"
        )


def check_resume_config(config: TrainConfig, saved: dict[str, Any]) -> None:
    """Refuse to resume a run saved with ``saved`` (its config dict) under a ``config`` that changes its
    result: only :attr:`TrainConfig.RESULT_FREE_FIELDS` may differ."""
    changed = config.result_changes(saved)
    if changed:
        raise ConfigError(
            f"cannot resume with a different configuration ({_changes(changed)}); only "
            f"{', '.join(sorted(TrainConfig.RESULT_FREE_FIELDS))} may change when resuming"
        )


def _changes(changed: dict[str, tuple[Any, Any]]) -> str:
    """``lr: 0.005 -> 0.9, ...``: the first six changed fields, for an error message."""
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items())[:6])


def config_file_edits(run_dir: str | os.PathLike, saved: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``run_dir``'s config.yaml edited since the run saved ``saved`` (its checkpoint's config):
    result-free ones are returned to apply (``out`` excepted: the run stays where it is); an edit of any
    other field raises ConfigError naming the fields."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot resume: {str(path)!r} is not readable YAML ({str(exc).splitlines()[0]})") from None
    edited = TrainConfig.from_dict(data, source=f"cannot resume: {path}")
    changed = edited.result_changes(saved)
    if changed:
        raise ConfigError(
            f"cannot resume: {str(path)!r} was edited after the run started ({_changes(changed)}); a run resumes with the "
            f"settings it started with: undo the edit or start a new run (only "
            f"{', '.join(sorted(TrainConfig.RESULT_FREE_FIELDS))} may change)"
        )
    fresh = edited.to_dict()
    return {k: fresh[k] for k in sorted(TrainConfig.RESULT_FREE_FIELDS - {"out"})
            if k in data and fresh[k] != saved.get(k, fresh[k])}


def resume_config(resume: str | os.PathLike) -> dict[str, Any]:
    """The config a resumed run continues with: its checkpoint's, with the result-free fields edited in
    its config.yaml applied (:func:`config_file_edits`), ``out`` its directory."""
    path = resume_file(resume)
    saved = dict(load_checkpoint(path, map_location="cpu")["config"])
    return {**saved, **config_file_edits(path.parent, saved), "out": str(path.parent)}


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
    if not isinstance(res, dict) or res.get("status", "finished") != "finished":
        return None  # e.g. interrupted during the test evaluation: it runs again
    print(f"run {str(path.parent)!r} is already finished ({ckpt.get('epoch')} epochs); nothing to do, "
          "its files are unchanged", file=sys.stderr, flush=True)
    return res
