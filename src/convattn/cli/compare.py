"""``convattn compare``: train variants × seeds and compare them with a baseline (mean ± std, paired 95%
interval, verdict, cost), written to ``<out>/compare.md|csv|json`` and an HTML page.

Variants: ``--attention none,se,cbam`` (one per layer), ``--variant NAME:"TRAIN FLAGS"`` (repeatable) or
``--variants FILE.yaml`` (names mapped to TrainConfig fields or to train flags); every other train flag
applies to every run. Runs live in ``<out>/<variant>/seed<k>``; running the same command again reuses
finished runs and resumes interrupted ones (``--force`` retrains). A run that fails or diverges is shown as such
in the table, the others go on, and the command exits with status 1. ``--launcher ray`` runs each run as a Ray
task (``--address``, ``--cpus-per-run``, ``--gpus-per-run``; ``--out`` on storage every node sees).

``--dry-run`` trains nothing: it prints one ``convattn train`` command per run (for a job array, Slurm ...),
each followed by what compare would do with it; ``--collect DIR`` builds the table from the runs under DIR.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from ..exceptions import ConfigError
from ._compare_options import add_compare_arguments, launcher_options, report_unfinished
from ._options import check_out_dir, examples_epilog
from ._train_options import add_config_arguments, explicit_overrides

ORDER = 45

EXAMPLES = (
    "convattn compare --model resnet18 --attention none,se,cbam,eca --seeds 3 --dataset folder:data/flowers --epochs 10",
    "convattn compare --attention none,cbam --variant cbam-id:'--attention cbam --model-kwargs identity_init=true' "
    "--seeds 0,3,7 --baseline none",
    "convattn compare --variants variants.yaml --dataset digits --epochs 2 --jobs 2 --out runs/cmp",
    "convattn compare --attention none,se --seeds 3 --dataset digits --out /shared/cmp --launcher ray --cpus-per-run 2",
    "convattn compare --attention none,se --seeds 3 --dataset digits --out runs/cmp --dry-run > runs.txt",
    "convattn compare --collect runs/cmp --baseline none",
)

_STATES = {"new": "to train", "finished": "finished, reused (nothing to do)", "interrupted": "interrupted, resumes",
           "restart": "stopped before its first checkpoint: compare empties it and trains again "
                      "(to run this line by hand, remove that folder first)"}


class _FlagError(argparse.ArgumentParser):
    """The train flags of one variant: a parse error raises instead of exiting."""

    def error(self, message: str):
        raise ConfigError(message)


def variant_fields(name: str, flags: str) -> dict[str, Any]:
    """The TrainConfig fields that ``flags`` (``convattn train`` flags) set, for variant ``name``."""
    parser = _FlagError(prog=f"variant {name}", add_help=False)
    add_config_arguments(parser)
    try:
        return explicit_overrides(parser.parse_args(shlex.split(flags)))
    except ConfigError as exc:
        raise ConfigError(f"--variant {name}: {exc}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    # conflict_handler: --attention and --out below replace the train flags of those names
    p = sub.add_parser("compare", help="train attention variants over seeds and compare them with a baseline",
                       description=__doc__, epilog=examples_epilog(*EXAMPLES), conflict_handler="resolve",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p)
    for action in p._actions:  # the shared dialect's names for these values (_options)
        action.metavar = {"batch_size": "N", "image_size": "PX"}.get(action.dest, action.metavar)
    add_compare_arguments(p)
    p.set_defaults(func=run)


def _variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from ..experiments import read_variants, variant_specs

    specs: dict[str, Any] = {}
    if args.attentions:
        specs.update(variant_specs([a.strip() for a in args.attentions.split(",") if a.strip()]))
    if args.variants:
        specs.update(read_variants(args.variants))
    for text in args.named:
        name, sep, flags = text.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f'--variant expects NAME:"TRAIN FLAGS", got {text!r}')
        specs[name.strip()] = flags
    if not specs:
        raise ConfigError("compare: expected variants (--attention A,B, --variant NAME:FLAGS or --variants FILE), got none")
    return {name: variant_fields(name, spec) if isinstance(spec, str) else spec for name, spec in specs.items()}


def run(args: argparse.Namespace) -> int:
    """Train every variant with every seed (or, with --collect, read the runs), print the comparison table, write
    it and its HTML page; exit 1 when some run did not finish."""
    from ..experiments import collect, compare

    launch = launcher_options(args)
    if args.collect:
        flags = {"--attention": args.attentions, "--variant": args.named, "--variants": args.variants,
                 "--dry-run": args.dry_run, "--launcher": launch,
                 **{f"--{k.replace('_', '-')}": 1 for k in explicit_overrides(args)}}
        if given := [f for f, on in flags.items() if on]:
            raise ConfigError(f"--collect reads the runs under {args.collect}; expected no variants or train flags, "
                              f"got {', '.join(given)}")
        return _show(collect(args.collect, baseline=args.baseline), args.collect, args.html)
    specs = _variants(args)
    check_out_dir(args.parent)
    kw = dict(seeds=args.seeds, out=args.parent, baseline=args.baseline, jobs=args.jobs, threads=args.threads,
              force=args.force, **launch, **explicit_overrides(args))
    if args.dry_run:
        planned = compare(specs, dry_run=True, **kw)
        imports = [w for m in getattr(args, "imports", []) for w in ("--import", m)]
        for r in planned:
            what = f"{r['variant']}'s plain run" if r.get("stage") == "plain run" else r["variant"]
            print(f"{shlex.join(r['argv'][:1] + imports + r['argv'][1:])}  # {what} seed {r['seed']}: "
                  f"{_STATES.get(r['state'], r['state'] + ', refused (--force retrains)')}")
        todo = sum(r["state"] in ("new", "interrupted", "restart") for r in planned)
        print(f"[compare] dry run: {len(planned)} runs, {todo} to train or resume; nothing trained", file=sys.stderr)
        return 0
    return _show(compare(specs, **kw), args.parent, args.html)


def _show(table: dict[str, Any], out: str, html: bool) -> int:
    from ..experiments import table_cells, table_markdown, table_note

    print(table_markdown(table))
    files = table["files"]
    if html:
        from ..viz.compare import write_compare_page

        files.append(str(write_compare_page(table, f"{out}/compare.html", cells=table_cells(table), note=table_note(table))))
    runs = [r for row in table["rows"] for r in row["runs"]]
    if any(r.get("how") == "reused" for r in runs):
        print(f"reused {sum(r.get('how') == 'reused' for r in runs)} finished run(s) (--force retrains)")
    return report_unfinished(runs, files)
