"""``convattn list layers|models|datasets``."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from ._options import add_command

ORDER = 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "list", help="list layers, models or datasets", description=run.__doc__, examples=(
        "convattn list layers", "convattn list layers '*cbam*' --kind gate", "convattn list models 'resnet*'"))
    p.add_argument("what", choices=["layers", "models", "datasets"], help="what to list")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard on the name (default: *)")
    p.add_argument("--kind", choices=["gate", "conv", "pool"], help="layers only: filter by kind")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List registered attention layers (name, kind, paper), models or datasets."""
    from .. import registry

    if args.what == "layers":
        rows = []
        for name in registry.list_attn(args.pattern, kind=args.kind):
            info = registry.get_attn_info(name)
            rows.append((name, info.kind, info.paper))
        print(tabulate(rows, headers=["layer", "kind", "paper"]))
    elif args.what == "models":
        from ..models import list_models

        for name in list_models(args.pattern):
            print(name)
    else:
        from ..data import list_datasets

        for name in list_datasets(args.pattern):
            print(name)
    return 0
