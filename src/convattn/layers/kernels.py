"""convattn's C++ CPU kernels: build, versioned cache, lock, load and status.

The sources live in ``layers/csrc``. ``convattn kernels build`` compiles them ahead of time
(for instance in a Dockerfile); otherwise the first forward that can use them compiles them,
announced with one log line (one to two minutes per library on a busy 2-core machine). Building
needs a C++ compiler (``$CXX``, else ``c++``) and ninja (a dependency of convattn).

Each build lives in its own folder under ``$CONVATTN_KERNELS_DIR`` (default
``~/.cache/convattn/kernels``), named by a hash of the sources, the torch version, the
compiler's version, the Python version and this CPU's model and instruction sets (the code is
built with ``-march=native``), so two environments never share a build. Builds run in a
separate process under an exclusive file lock on that folder; a process waiting for another's
build gives up after ``$CONVATTN_BUILD_TIMEOUT`` seconds (default 900) with a message naming the
lock. The lock is released by the operating system when its holder exits, so an interrupted
build never leaves a lock behind. Loading is thread-safe.

A build is compiled in a temporary folder, renamed into place and then described by a manifest
(size and sha256), written last; a library is loaded only when it matches its manifest
(:mod:`convattn.layers._kernel_cache`). One that does not (an interrupted build, a full disk, a
build by an older convattn without a manifest) is rebuilt, or, in a read-only cache, skipped with
one warning; it is never loaded, and ``status`` reports it as ``corrupt``.

Where the build fails, the layers warn once and use their PyTorch-op paths, which compute the
same result; ``CONVATTN_EXTENSIONS=0`` skips the kernels altogether. ``convattn kernels
status`` (:func:`status`) says what is built, where, for which torch / compiler / CPU, and why
not.

Importing this module builds nothing: :func:`load` builds on first use, :func:`build` ahead of time.
When the layers may take the kernels is decided in :mod:`convattn.layers.modes`
(``kernels_may_run``); the ops' fake and autograd formulas are registered by
:mod:`convattn.layers._ops`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ._kernel_cache import BuildLock, KernelBuildError, KernelCacheError, cache_error, check, install

__all__ = [
    "KernelBuildError",
    "KernelCacheError",
    "LIBRARIES",
    "build",
    "build_dir",
    "extensions_enabled",
    "load",
    "status",
    "verify",
]

_LOG = logging.getLogger(__name__)
_SRC = Path(__file__).with_name("csrc")
LIBRARIES = {"convattn_se": "se_cpu.cpp", "convattn_cbam": "cbam_cpu.cpp"}
_CFLAGS = ["-O3", "-march=native", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]
_LOCK = threading.RLock()
_LOADED: dict[str, Any] = {}  # library -> torch.ops namespace, or None where it could not be built
_ERRORS: dict[str, str] = {}  # library -> why it is not loaded in this process
_REGISTERED: set[str] = set()  # libraries whose fake / autograd formulas are registered

# Run in a fresh interpreter, so the build's logging and warnings stay out of the caller's process.
_BUILD_SCRIPT = """
import sys
from torch.utils.cpp_extension import load
name, source, folder = sys.argv[1:4]
load(name=name, sources=[source], build_directory=folder, extra_cflags=sys.argv[4].split(),
     extra_ldflags=sys.argv[5].split(), is_python_module=False, verbose=True)
"""


def extensions_enabled() -> bool:
    """False when ``CONVATTN_EXTENSIONS`` is ``0``/``false``/``no``/``off`` in the environment."""
    return os.environ.get("CONVATTN_EXTENSIONS", "1").strip().lower() not in ("0", "false", "no", "off")


def _cache_root() -> Path:
    if os.environ.get("CONVATTN_KERNELS_DIR"):
        return Path(os.environ["CONVATTN_KERNELS_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convattn" / "kernels"


def _build_timeout() -> float:
    return float(os.environ.get("CONVATTN_BUILD_TIMEOUT", "900"))


def _compiler() -> tuple[str, str | None]:
    """The C++ compiler torch's build uses and the first line of its ``--version`` (``None`` if absent)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return cxx, None
    return cxx, (out.splitlines() or ["unknown"])[0].strip()


def _cpu() -> tuple[str, str]:
    """This CPU's model name and its instruction-set flags (``-march=native`` depends on them)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model, flags


def _ninja_path() -> str | None:
    """A folder holding ``ninja`` to put on the build's PATH, or ``None`` where it is not installed."""
    if shutil.which("ninja"):
        return os.path.dirname(shutil.which("ninja"))
    scripts = sysconfig.get_path("scripts")  # a virtual environment that is not activated
    if scripts and shutil.which("ninja", path=scripts):
        return scripts
    try:
        import ninja  # the PyPI package ships the binary

        return ninja.BIN_DIR
    except (ImportError, AttributeError):
        return None


_ENV_CACHE: dict[str, Any] = {}


def _environment() -> dict[str, Any]:
    """What a build depends on (computed once per process): sources, torch, compiler, Python, CPU."""
    with _LOCK:
        if not _ENV_CACHE:
            cxx, version = _compiler()
            model, flags = _cpu()
            _ENV_CACHE.update(
                cxx=cxx,
                compiler=version,
                cpu=model,
                cpu_flags=flags,
                torch=torch.__version__,
                python=f"{sys.implementation.cache_tag}-{platform.machine()}",
            )
        return _ENV_CACHE


def _build_tag(library: str) -> str:
    """Hash of everything a build of ``library`` depends on: its source and the shared header, the
    torch version, the compiler's version, the Python ABI and this CPU's model and flags."""
    env = _environment()
    text = "\0".join(
        [
            (_SRC / LIBRARIES[library]).read_text(),
            *(f.read_text() for f in sorted(_SRC.glob("*.h"))),
            env["torch"],
            str(env["compiler"]),
            env["python"],
            env["cpu"],
            env["cpu_flags"],
            " ".join(_CFLAGS + _LDFLAGS),
        ]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def build_dir(library: str) -> Path:
    """The folder that holds (or will hold) this environment's build of ``library``."""
    return _cache_root() / f"{library}-{_build_tag(library)}"


def _library_file(library: str) -> Path:
    return build_dir(library) / f"{library}{'.pyd' if sys.platform == 'win32' else '.so'}"


def verify(library: str) -> str | None:
    """Why this environment's build of ``library`` may not be loaded (not built, or it does not match
    its manifest), or ``None`` where it may."""
    target = _library_file(library)
    return check(target) if target.exists() else "not built"


def _compile(library: str, force: bool = False) -> Path:
    """Build ``library`` into its folder unless a verified build is there; returns the library's path.

    Raises:
        KernelCacheError: the cache cannot be written, or its build fails the check in a read-only cache.
        KernelBuildError: the build itself failed.
    """
    target = _library_file(library)
    folder = target.parent
    problem = "a rebuild was asked for" if force else verify(library)
    if problem is None:
        return target  # verified: no lock to take (a read-only cache is fine)
    if target.exists() and not os.access(folder, os.W_OK):
        raise KernelCacheError(f"not loading {target}: {problem}, and its folder is read-only, so it cannot be rebuilt")
    try:
        with BuildLock(folder, _build_timeout()):
            return _build_locked(library, target, force)
    except OSError as e:
        raise cache_error(folder, e) from None


def _build_locked(library: str, target: Path, force: bool) -> Path:
    """The build itself, under the folder's lock: into a temporary folder, then installed."""
    folder = target.parent
    problem = "a rebuild was asked for" if force else verify(library)
    if problem is None:  # built by another process while this one waited
        return target
    env = _environment()
    if env["compiler"] is None:
        raise KernelBuildError(f"no C++ compiler: `{env['cxx']} --version` failed (install one or set CXX)")
    ninja_dir = _ninja_path()
    if ninja_dir is None:
        raise KernelBuildError("ninja is not installed (pip install ninja)")
    (folder / "lock").unlink(missing_ok=True)  # torch's own lock file, left by an older interrupted build
    for stale in folder.glob(".build-*"):  # interrupted builds' folders: we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    replacing = f"; replacing the cached build: {problem}" if target.exists() else ""
    if target.exists() and not force:  # never loaded: a short library mapped into a process ends it
        target.unlink()
    _LOG.warning(
        "convattn: compiling its C++ CPU kernels %s for torch %s with %s into %s "
        "(once per environment, one to two minutes; `convattn kernels build` does it ahead of time)%s",
        library,
        env["torch"],
        env["compiler"],
        folder,
        replacing,
    )
    started = time.monotonic()
    child_env = dict(os.environ, PATH=ninja_dir + os.pathsep + os.environ.get("PATH", ""))
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        cmd = [sys.executable, "-c", _BUILD_SCRIPT, library, str(_SRC / LIBRARIES[library]), str(scratch)]
        cmd += [" ".join(_CFLAGS), " ".join(_LDFLAGS)]
        proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        built = scratch / target.name
        if proc.returncode != 0 or not built.exists():
            (folder / "build-error.log").write_text(log)
            errors = [line for line in log.splitlines() if "error" in line.lower()]
            detail = (errors or log.strip().splitlines() or ["no output"])[0].strip()
            raise KernelBuildError(f"building {library} failed: {detail} (full log: {folder / 'build-error.log'})")
        install(built, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    (folder / "build-error.log").unlink(missing_ok=True)
    _LOG.info("convattn: built %s in %.0f s", library, time.monotonic() - started)
    return target


def _load_library(library: str, register: Callable[[Any], None] | None) -> Any:
    """Build (if needed) and load ``library`` into this process, then register its Python formulas."""
    path = _compile(library)
    if not hasattr(torch.ops, library) or not hasattr(getattr(torch.ops, library), "forward"):
        torch.ops.load_library(str(path))
    ops = getattr(torch.ops, library)
    if register is not None and library not in _REGISTERED:
        register(ops)
        _REGISTERED.add(library)
    return ops


def load(library: str, register: Callable[[Any], None] | None = None) -> Any:
    """The ``torch.ops`` namespace of ``library``, built and loaded on first use; ``None`` where the
    kernels are disabled or could not be built (with one ``RuntimeWarning`` saying why).

    ``register(ops)`` runs once, after the first load: it registers the ops' fake and autograd
    formulas (:func:`convattn.layers._ops.layer_op_registrar` builds it from the layer's formula).
    """
    if not extensions_enabled():
        return None
    if library in _LOADED:
        return _LOADED[library]
    with _LOCK:
        if library in _LOADED:
            return _LOADED[library]
        try:
            ops = _load_library(library, register)
        except Exception as e:  # no compiler, a compile error, a lock timeout: fall back to PyTorch ops
            ops = None
            _ERRORS[library] = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"convattn could not build or load its C++ kernels ({_ERRORS[library]}); using the PyTorch-op paths "
                "(same results, slower on CPU). `convattn kernels status` says more; "
                "CONVATTN_EXTENSIONS=0 skips the build.",
                RuntimeWarning,
                stacklevel=3,
            )
        _LOADED[library] = ops
        return ops


def build(libraries: Iterable[str] | None = None, *, force: bool = False) -> dict[str, Path]:
    """Build the kernels ahead of time (``convattn kernels build``); returns each library's file.

    Raises:
        KernelCacheError: the cache folder cannot be written (its message names it and says why).
        KernelBuildError: a library could not be built (its message says why).
    """
    built = {}
    for library in libraries or LIBRARIES:
        if library not in LIBRARIES:
            raise KernelBuildError(f"unknown kernel library {library!r}; expected one of {sorted(LIBRARIES)}")
        built[library] = _compile(library, force=force)
    return built


def status() -> list[dict[str, Any]]:
    """One record per kernel library: whether it is built (and matches its manifest) and loaded,
    where, for which torch, compiler, Python and CPU, and why not (``reason``). ``state`` is one of
    ``loaded``, ``built``, ``corrupt``, ``failed``, ``not built``, ``disabled``."""
    env = _environment()
    rows = []
    for library in LIBRARIES:
        path = _library_file(library)
        error_log = path.parent / "build-error.log"
        problem = check(path) if path.exists() else None
        if not extensions_enabled():
            state, reason = "disabled", "CONVATTN_EXTENSIONS is set to off"
        elif problem is not None:
            fix = ("rebuilt on next use or by `convattn kernels build`" if os.access(path.parent, os.W_OK)
                   else "its folder is read-only: run `convattn kernels build` where it is writable")
            state, reason = "corrupt", f"{problem}; never loaded, {fix}"
        elif library in _ERRORS:
            state, reason = "failed", _ERRORS[library]
        elif path.exists():
            state, reason = ("loaded" if _LOADED.get(library) is not None else "built"), ""
        elif env["compiler"] is None:
            state, reason = "not built", f"no C++ compiler (`{env['cxx']} --version` failed; set CXX)"
        elif _ninja_path() is None:
            state, reason = "not built", "ninja is not installed (pip install ninja)"
        elif error_log.exists():
            lines = [line for line in error_log.read_text().splitlines() if "error" in line.lower()]
            state, reason = "failed", f"the last build failed: {(lines or ['see the log'])[0].strip()} ({error_log})"
        else:
            state, reason = "not built", "builds on first use, or run `convattn kernels build`"
        rows.append(
            dict(
                library=library,
                state=state,
                path=str(path),
                torch=env["torch"],
                compiler=env["compiler"] or f"{env['cxx']} (not found)",
                python=env["python"],
                cpu=env["cpu"],
                reason=reason,
            )
        )
    return rows
