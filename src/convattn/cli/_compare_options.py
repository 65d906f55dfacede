"""The options of ``convattn compare`` beyond the train flags: the variants, seeds, where runs go, how many run at
once and on what (``--launcher local|ray``), and the dry run and collection modes; and the end of a comparison's
output, shared with ``convattn demo``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..exceptions import ConfigError

__all__ = ["add_compare_arguments", "launcher_options", "report_unfinished"]


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    """Add compare's own options to ``p`` (after the train flags: ``--attention`` and ``--out`` replace those)."""
    p.add_argument("--attention", dest="attentions", metavar="A,B,...",
                   help="one variant per attention layer, comma-separated (none: the plain model)")
    p.add_argument("--variant", dest="named", action="append", default=[], metavar='NAME:"FLAGS"',
                   help="a named variant: convattn train flags over the shared ones (repeatable)")
    p.add_argument("--variants", metavar="FILE.yaml",
                   help="YAML mapping variant names to TrainConfig fields or to a string of train flags")
    p.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a list such as 0,3,7 (default: 3)")
    p.add_argument("--baseline", help="the variant the others are compared with (default: the first)")
    p.add_argument("--out", dest="parent", default="runs/compare", metavar="DIR",
                   help="parent of <variant>/seed<k> run directories and of compare.md|csv|json|html "
                        "(default: runs/compare)")
    p.add_argument("--jobs", type=int, default=0,
                   help="runs trained at once, each in its own process; 0 (default): one per CPU core (1 on CUDA)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per run; 0 (default): the cores shared out")
    ray = p.add_argument_group("launching the runs on a Ray cluster (pip install 'convattn[ray]'; docs/compare.md)")
    ray.add_argument("--launcher", choices=("local", "ray"), default="local",
                     help="local (default): --jobs processes here; ray: each run a Ray task (--out on storage "
                          "every node sees)")
    ray.add_argument("--address", metavar="ADDR",
                     help="the Ray cluster (host:port, ray://host:port); default: RAY_ADDRESS, else the cluster "
                          "`ray start` started on this machine, else a local Ray instance for this command")
    ray.add_argument("--cpus-per-run", type=int, metavar="M", help="CPUs (and torch threads) per run on Ray (default: 1)")
    ray.add_argument("--gpus-per-run", type=float, metavar="N", help="GPUs per run on Ray, may be a fraction (default: 0)")
    p.add_argument("--html", action=argparse.BooleanOptionalAction, default=True,
                   help="write <out>/compare.html: table, curves, accuracy against cost (default: on)")
    p.add_argument("--force", action="store_true", help="retrain runs that already exist under --out")
    p.add_argument("--dry-run", action="store_true", help="train nothing: print each run's train command and state")
    p.add_argument("--collect", metavar="DIR", help="train nothing: build the table and its files from the runs under DIR")


def launcher_options(args: argparse.Namespace) -> dict[str, Any]:
    """``compare``'s launcher keywords from ``args``; ``--address`` / ``--*-per-run`` need ``--launcher ray``,
    ``--jobs`` / ``--threads`` the local launcher (Ray's free resources say how many runs go at once)."""
    given = {"--address": args.address, "--cpus-per-run": args.cpus_per_run, "--gpus-per-run": args.gpus_per_run}
    if args.launcher == "local" and (named := [f for f, v in given.items() if v is not None]):
        raise ConfigError(f"{', '.join(named)}: expected with --launcher ray, got the local launcher")
    if args.launcher == "ray" and (named := [f for f, v in (("--jobs", args.jobs), ("--threads", args.threads)) if v]):
        raise ConfigError(f"--launcher ray runs as many at once as the cluster's free CPUs and GPUs allow; expected "
                          f"--cpus-per-run / --gpus-per-run, got {', '.join(named)}")
    if args.launcher == "local":
        return {}
    return {"launcher": "ray", "address": args.address, "cpus_per_run": args.cpus_per_run,
            "gpus_per_run": args.gpus_per_run}


def report_unfinished(runs: list[dict[str, Any]], files: list[str]) -> int:
    """Print a line per run that did not finish and the files written; the exit status (1: some run did not finish)."""
    unfinished = [r for r in runs if r["status"] != "finished"]
    for r in unfinished:
        print(f"{r['variant']} seed {r['seed']}: {r['status']} ({r.get('reason', 'no reason recorded')}) in {r['run_dir']}")
    print("wrote " + ", ".join(files))
    sys.stdout.flush()
    return 1 if unfinished else 0
