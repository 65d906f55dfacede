"""The ``convattn`` command line: argument parsing only; the work happens in the packages.

Each sub-command lives in a module of this package that defines ``ORDER`` (its
place in ``--help``), ``add_parser(subparsers)`` (which sets ``func``) and the
function it calls; options shared by several commands come from ``_options`` so that
one thing has one name everywhere. Errors in user input (convattn's own exceptions,
``UnknownOptionError`` included, ``ValueError``, ``FileNotFoundError``) print one line
and exit with status 2; ``CONVATTN_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from ..exceptions import ConvattnError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convattn",
        description="Attention for convolutional networks: layers, models, training, cost and attention maps.",
    )
    parser.add_argument("--version", action="version", version=f"convattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
               if not m.name.startswith("_")]
    for module in sorted(modules, key=lambda m: m.ORDER):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ConvattnError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("CONVATTN_DEBUG"):
            raise
        print(f"convattn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convattn {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
