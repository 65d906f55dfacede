"""Checkpoints: atomic writes, safe loading, and the random-number-generator states.

A checkpoint is a plain dict (tensors, dicts, lists, str / int / float / bool /
None) so that ``torch.load(weights_only=True)`` reads it: a file that carries
pickled code is refused before anything in it runs. Writes go to a temporary file
in the same directory, are flushed and fsync-ed, then ``os.replace``-d over the
old file, so a crash mid-write never leaves a truncated ``last.pt``. Each checkpoint's sha256 is
recorded in a sidecar (``last.pt.sha256``) and checked at load, so a corrupt file is refused
by name instead of loading silently (torch does not check the zip's CRCs).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_open, atomic_write_text, os_reason
from ..exceptions import CheckpointError, RunDirectoryError

__all__ = [
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "checksum_path",
    "get_rng_state",
    "set_rng_state",
]

FORMAT = "convattn.checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same dir, fsync, ``os.replace``) and
    record its sha256 in :func:`checksum_path`.

    ``state`` must be plain data (checked before anything is written, so a bad value
    never replaces a good file): tensors, dicts, lists, tuples, str / int / float /
    bool / None. The checksum file is rewritten before the rename and lists the new file's
    sum and the sums before it, so a crash at any point leaves a file that matches.

    Raises:
        RunDirectoryError: the file cannot be written (full disk, read-only, ...); the
            checkpoint already at ``path`` is intact.
    """
    _check_plain(state, "state")
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    digest = hashlib.sha256(buf.getbuffer()).hexdigest()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            fh.write(buf.getbuffer())
            sums = [digest, *(s for s in _recorded_sums(path) or [] if s != digest)][:3]
            atomic_write_text(checksum_path(path), "".join(f"{s}  {path.name}\n" for s in sums))
    except OSError as exc:
        raise RunDirectoryError(
            f"cannot write checkpoint {str(path)!r}: {os_reason(exc)}; the checkpoints already in "
            f"{str(path.parent)!r} are intact"
        ) from None
    return path


def checksum_path(path: str | os.PathLike) -> Path:
    """The file recording a checkpoint's sha256 (``last.pt`` -> ``last.pt.sha256``, ``sha256sum`` format)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def _matches(path: Path, data: bytes) -> bool:
    """Whether ``data`` (the bytes of ``path``) has a sha256 recorded for ``path``, or none was recorded."""
    sums = _recorded_sums(path)
    return sums is None or hashlib.sha256(data).hexdigest() in sums


def _recorded_sums(path: Path) -> list[str] | None:
    """The sha256 sums recorded for ``path`` (newest first), ``None`` when none were recorded."""
    try:
        lines = checksum_path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return []
    words = (line.split()[0].lower() for line in lines if line.split())
    return [w for w in words if len(w) == 64 and all(c in "0123456789abcdef" for c in w)]


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"save_checkpoint: {where} has a key of type {type(k).__name__}; only str/int keys load with weights_only")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif type(obj) not in _PLAIN and not isinstance(obj, torch.Tensor):
        raise CheckpointError(
            f"save_checkpoint: {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
            "checkpoints hold only tensors and plain data so that weights_only=True loads them"
        )


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.pt`` file as given, or a run directory's ``best.pt`` (else ``last.pt``; a ``best.pt`` that does
    not match its recorded sha256 falls back to ``last.pt`` with a warning)."""
    p = Path(path)
    if p.is_dir():
        best, last = p / "best.pt", p / "last.pt"
        if best.is_file() and last.is_file() and not _matches(best, best.read_bytes()):
            warnings.warn(f"checkpoint {str(best)!r} is corrupt (its sha256 does not match {checksum_path(best).name}); "
                          f"using {str(last)!r}", stacklevel=2)
            return last
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run directory {str(p)!r} holds no best.pt or last.pt")
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a convattn checkpoint with ``torch.load(weights_only=True)``, checking its recorded sha256.

    Args:
        path: a ``.pt`` file, or a run directory (:func:`resolve_checkpoint`: its ``best.pt``, else
            ``last.pt``; a corrupt ``best.pt`` falls back to ``last.pt`` with a warning).
        map_location: passed to ``torch.load``.

    Returns:
        The checkpoint dict: ``model`` (state dict), ``config`` (plain dict),
        ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``epoch``, ``step``, ...

    Raises:
        CheckpointError: missing, truncated or corrupt file (one whose bytes do not match
            its recorded sha256); a file whose pickle holds code or objects other than plain
            data (refused, nothing runs); a file that is not a convattn checkpoint.
            Checkpoints saved before checksums were recorded load unchecked.
    """
    return _load(resolve_checkpoint(path), map_location)


def _load(p: Path, map_location: Any) -> dict[str, Any]:
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read: {os_reason(exc)}") from None
    if not _matches(p, data):
        raise CheckpointError(
            f"checkpoint {str(p)!r} is truncated or corrupt: its sha256 does not match the one recorded in "
            f"{checksum_path(p).name} when it was saved"
        )
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg or "GLOBAL" in msg or "not an allowed global" in msg:
            first = next((ln.strip() for ln in msg.splitlines() if "Unsupported global" in ln), "")
            raise CheckpointError(
                f"checkpoint {str(p)!r} was refused: it carries pickled code or objects, not just "
                f"tensors and plain data, and convattn only loads with weights_only=True"
                + (f" ({first})" if first else "")
            ) from None
        detail = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln), "unreadable pickle")
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated or corrupt ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, AttributeError,
            IndexError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, (KeyError, IndexError)):  # the unpickler reading text or other bytes
            first = "not a PyTorch file"
        raise CheckpointError(f"checkpoint {str(p)!r} is truncated or corrupt ({first})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(
            f"{str(p)!r} is not a convattn checkpoint (expected a dict with 'model' and 'config', "
            f"got {type(ckpt).__name__}{' with keys ' + str(sorted(ckpt)[:8]) if isinstance(ckpt, dict) else ''})"
        )
    return ckpt


# --------------------------------------------------------------------------- RNG
def get_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy and Python ``random`` states as plain data."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "key": str(np_state[0]),
            "state": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [s.to(torch.uint8).cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    n = state["numpy"]
    np.random.set_state(
        (n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
