"""The files of the kernel cache: its build lock, and the manifest that vouches for a built library.

A build is compiled into a temporary folder, renamed into place, and only then described by a
manifest (size and sha256 of the library), written last and atomically. :func:`check` compares
the file with its manifest before anything loads it: a library that an interrupted build, a full
disk or a crash left short has no manifest or does not match it, and is never handed to
``dlopen`` (a truncated shared library mapped into the process ends it with ``SIGBUS``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

from .._io import atomic_write_text, os_reason
from ..exceptions import ConvattnError

__all__ = ["BuildLock", "KernelBuildError", "KernelCacheError", "cache_error", "check", "install", "manifest_of"]


class KernelBuildError(ConvattnError, RuntimeError):
    """The C++ kernels could not be built or loaded (no compiler, a compile error, a lock timeout)."""


class KernelCacheError(KernelBuildError):
    """The kernel cache cannot be written (read-only, permission, not a folder, disk full), or holds a
    library that fails its check where it cannot be rebuilt."""


def cache_error(folder: Path, exc: OSError) -> KernelCacheError:
    """One line for an OS error met while writing the cache folder ``folder``."""
    reason = os_reason(exc)
    return KernelCacheError(
        f"cannot write the kernel cache {folder}: {reason} (set CONVATTN_KERNELS_DIR to a writable "
        "folder, or CONVATTN_EXTENSIONS=0 to skip the kernels)"
    )


def manifest_of(library_file: Path) -> Path:
    """The manifest beside ``library_file`` (``convattn_se.so.manifest.json``)."""
    return library_file.with_name(library_file.name + ".manifest.json")


def _digest(path: Path) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:  # read, never mapped: a short file is just short
        while block := fh.read(1 << 20):
            sha.update(block)
            size += len(block)
    return size, sha.hexdigest()


def check(library_file: Path) -> str | None:
    """Why ``library_file`` must not be loaded, or ``None`` where its manifest vouches for it."""
    manifest = manifest_of(library_file)
    try:
        record = json.loads(manifest.read_text())
        expected = (int(record["size"]), str(record["sha256"]))
    except FileNotFoundError:
        return "it has no manifest (an interrupted build, or one made by an older convattn)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its manifest {manifest} is unreadable ({type(e).__name__}: {e})"
    try:
        size, sha = _digest(library_file)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if size != expected[0]:
        return f"it is {size} bytes, its manifest says {expected[0]} (truncated or overwritten)"
    if sha != expected[1]:
        return "its sha256 differs from its manifest's (the file was changed after the build)"
    return None


def install(built: Path, target: Path) -> None:
    """Move a finished build ``built`` to ``target`` (a rename: never a partly written file there),
    then write its manifest, last and atomically."""
    manifest = manifest_of(target)
    manifest.unlink(missing_ok=True)
    with open(built, "rb") as fh:
        os.fsync(fh.fileno())
    size, sha = _digest(built)
    os.replace(built, target)
    record = dict(file=target.name, size=size, sha256=sha, built=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_text(manifest, json.dumps(record, indent=2) + "\n")  # fsyncs the folder: both renames


class BuildLock:
    """An exclusive lock on a build folder (``flock``), waited for at most ``timeout`` seconds.

    The operating system releases it when the holding process exits, however it exits, so an
    interrupted build cannot leave a stale lock. Where ``fcntl`` is missing (Windows) builds are
    not serialised across processes (torch's own lock file then applies).
    """

    def __init__(self, folder: Path, timeout: float) -> None:
        self.path = folder / "convattn-build.lock"
        self.timeout = timeout
        self._file = None

    def __enter__(self) -> BuildLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._file.seek(0)
                    holder = self._file.read().strip() or "another process"
                    self._file.close()
                    self._file = None
                    raise KernelBuildError(
                        f"timed out after {self.timeout:.0f} s waiting for the kernel build lock {self.path} "
                        f"(held by {holder}). Wait for that build to finish, or stop it; "
                        "CONVATTN_BUILD_TIMEOUT sets the wait, CONVATTN_EXTENSIONS=0 skips the kernels."
                    ) from None
                time.sleep(0.2)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {platform.node()}")
        self._file.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
