"""The ``convattn`` command line: argument parsing only; the work happens in the packages.

Each sub-command lives in a module of this package that defines ``ORDER`` (its
place in ``--help``), ``add_parser(subparsers)`` (which sets ``func``) and the
function it calls; options shared by several commands come from ``_options`` so that
one thing has one name everywhere. Errors in user input (convattn's own exceptions,
``UnknownOptionError`` included, ``ValueError``), every OS error (naming the path: not found,
not a directory, read-only, permission denied, disk full) and running out of memory print
one line and exit with status 2 (or the error's own ``exit_status``: 3 for a diverged run);
``CONVATTN_DEBUG=1`` shows the traceback instead. ``convattn --import MODULE COMMAND`` (and
``CONVATTN_IMPORT``) imports a module of your own first (``convattn.engine.plugins``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from .._io import os_reason
from ..exceptions import ConvattnError

__all__ = ["main", "build_parser", "import_user_modules"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convattn",
        description="Attention for convolutional networks: layers, models, training, cost and attention maps.",
    )
    parser.add_argument("--version", action="version", version=f"convattn {__version__}")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE before the command, so the models and layers it registers "
                             "(@convattn.register_model / register_attn) work everywhere; repeatable; also "
                             "CONVATTN_IMPORT=MODULE[,MODULE]; a run records the modules it needs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
               if not m.name.startswith("_")]
    for module in sorted(modules, key=lambda m: m.ORDER):
        module.add_parser(sub)
    return parser


def os_error_line(exc: OSError) -> str:
    """One line for an OS error: the path(s) it names and what went wrong (``disk full``, ``read-only``, ...)."""
    if exc.errno is None or exc.strerror is None:
        return str(exc)
    reason = os_reason(exc)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    return f"{' -> '.join(map(str, paths))}: {reason}" if paths else reason


def first_line(text: str) -> str:
    """The line that says what went wrong: the first, or for an error re-raised from a DataLoader worker
    (``Caught ... in DataLoader worker process 0.`` + a traceback) the original error's message."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else ""


def memory_error_line(exc: BaseException) -> str | None:
    """One line for running out of memory (``MemoryError``, torch's CPU / CUDA allocators); None otherwise."""
    text = first_line(str(exc)).split("DefaultCPUAllocator: ", 1)[-1]  # torch's prefix: its source location
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in text:
        return f"not enough memory for this run ({text or type(exc).__name__}); use smaller sizes or batches"
    return None


def import_user_modules(names: list[str]) -> None:
    """Import the ``--import`` and ``CONVATTN_IMPORT`` modules (the current directory is searched last, also
    for the modules a run records)."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    if names or os.environ.get("CONVATTN_IMPORT"):
        from ..engine.plugins import IMPORT_ENV, env_modules, import_modules

        import_modules(env_modules(), source=IMPORT_ENV)
        import_modules(names, source="--import")


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors, OS errors and running out of memory print one line.

    Exit status: 0 done; 2 a usage, OS or memory error (and convattn errors, unless they carry
    their own ``exit_status``: 3 a diverged run); 130 interrupted; a command may return 1
    (``predict``: some images could not be read).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import_user_modules(args.imports)
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"convattn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, OSError):
            line = os_error_line(exc)
        elif isinstance(exc, (ConvattnError, ValueError)):
            line = str(exc)
        else:
            line = memory_error_line(exc)
        status = getattr(exc, "exit_status", 2)
        if line is None or os.environ.get("CONVATTN_DEBUG"):
            raise
        print(f"convattn {args.command}: error: {first_line(line) or type(exc).__name__}", file=sys.stderr)
        return status
    return int(result or 0)
