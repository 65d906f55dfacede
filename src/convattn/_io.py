"""Atomic file writes: a crash, a full disk or a kill never leaves a half-written file.

Every file convattn writes (checkpoints, configs, metrics, tables, figures, reports) goes
through :func:`atomic_open`: a temporary file in the target's folder, flushed and
fsync-ed, then ``os.replace``-d over the target, and the folder fsync-ed so the rename
itself survives a power cut. A write killed before the rename leaves only its temporary
file (``.NAME.XXXXXXXX.tmp``), which :func:`remove_stale_temps` clears. The file gets the permissions a plain ``open`` would give
it: an existing target's mode is kept, a new file gets ``0o666`` less the umask.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_open", "atomic_write_text", "atomic_write_bytes", "remove_stale_temps", "TEMP_NAME", "os_reason"]

#: The names of :func:`atomic_open`'s temporary files: ``mkstemp(prefix=".NAME.", suffix=".tmp")``.
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _target_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave ``path`` with (``mkstemp`` itself creates 0600)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    If the block raises, the temporary file is removed and ``path`` is untouched.
    Folders are created. ``mode`` is ``"w"`` or ``"wb"``; ``kwargs`` go to ``open``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open expects mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _target_mode(path))
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted atomic writes left in ``folder`` (not in sub-folders).

    Only names of :data:`TEMP_NAME`'s pattern are touched; call it only where no other process
    writes (a run directory under its lock). Returns the removed paths.
    """
    removed = []
    for entry in os.scandir(folder):
        if TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return sorted(removed)


_REASONS = {
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.ENOTDIR: "not a directory (a file is in the way)", errno.EISDIR: "is a directory, expected a file",
    errno.ENOENT: "not found", errno.EEXIST: "already exists", errno.ENAMETOOLONG: "name too long",
}


def os_reason(exc: OSError) -> str:
    """An OS error's reason in words, a full disk said plainly: ``disk full (No space left on device)``,
    ``read-only file system``, ``permission denied``, ``not a directory (a file is in the way)`` ..."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({reason})"
    return _REASONS.get(exc.errno, reason)
