"""``convattn kernels build|status``: the C++ CPU kernels of SE and CBAM, built ahead of time and inspected."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ._options import add_command

ORDER = 90


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "kernels", help="build the C++ CPU kernels ahead of time, or show their status",
                    description=run.__doc__, examples=(
                        "convattn kernels build", "convattn kernels build --force",
                        "CONVATTN_KERNELS_DIR=/opt/kernels convattn kernels status --json"))
    p.add_argument(
        "action",
        choices=["build", "status"],
        help="build: compile now (e.g. in a Dockerfile); status: what is built, where, and why not",
    )
    p.add_argument("--force", action="store_true", help="build: rebuild even where a build exists")
    p.add_argument("--json", action="store_true", help="status: print the records as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build convattn's C++ CPU kernels (SE, CBAM) for this environment, or report their status.

    Builds are cached per torch version, compiler version, Python and CPU under
    ``$CONVATTN_KERNELS_DIR`` (default ``~/.cache/convattn/kernels``). ``build`` exits 1 when a
    kernel does not compile and 2 when the cache folder cannot be written (read-only, a file in
    the way, disk full); ``status`` exits 0 and says why a kernel is not built or is corrupt.
    """
    from tabulate import tabulate

    from ..layers import kernels

    if args.action == "build":
        if not kernels.extensions_enabled():
            print("convattn kernels: CONVATTN_EXTENSIONS is off; building anyway (the layers will not use them)")
        started = time.monotonic()
        present = {lib for lib in kernels.LIBRARIES if kernels.verify(lib) is None}
        try:
            built = kernels.build(force=args.force)
        except kernels.KernelCacheError as exc:  # the cache folder, not the code: a usage error
            print(f"convattn kernels build: error: {exc}", file=sys.stderr)
            return 2
        except kernels.KernelBuildError as exc:
            print(f"convattn kernels build: error: {exc}")
            return 1
        for library, path in built.items():
            print(f"{library}: {path}" + (" (already built)" if library in present and not args.force else ""))
        print(f"done in {time.monotonic() - started:.0f} s")
        return 0
    rows = kernels.status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    first = rows[0]
    print(f"torch {first['torch']}, {first['python']}, compiler: {first['compiler']}, CPU: {first['cpu']}")
    table = [(r["library"], r["state"], r["path"], r["reason"]) for r in rows]
    print(tabulate(table, headers=["library", "state", "path", "why not"]))
    return 0
