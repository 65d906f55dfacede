"""Test accuracy of attention variants of one backbone, over several seeds.

1. cluttered-digits (embedded, 60×60): ``simple_cnn`` plain, with CBAM after each
   block (blended in from the identity), behind a spatial transformer (``stn_cnn``:
   scale + translation, 40×40 view, localisation net at 1/10 the lr), and as the
   multi-branch attention network (``aacn``, attention heads after the last block) with its
   staged recipe, its feature branch taken from a finished plain run within the same epoch
   budget: the plain backbone trained for ⌈2/3⌉ of the epochs (its own run, compare's
   ``from_plain``), then from it (``--init-from``) the attention + decision branches
   with the features frozen and α·L_attn, and the feature + decision branches with the
   attention frozen, alternating, for the rest - the demo's variants
   (``convattn.experiments.VARIANTS`` with each model's default recipe: AdamW, lr 5e-3, cosine,
   batch 32, channels_last) on 6,000 training images for 6 epochs. Also ``aacn-one-run``,
   the staged recipe in one run (``convattn train --model aacn``: its own feature stage
   first); ``aacn-joint``, every branch trained together from scratch (``--recipe joint``);
   and ``plain-staged``, the control for ``aacn``: the same plain run and the same one-epoch
   cycles, without heads.
   Default: 3 seeds × 7 variants; ``--jobs 2 --threads 1`` trains two runs at once
   (the faster way on a 2-core CPU).
2. Fashion-MNIST: ``resnet18`` (small-input stem) plain and with CBAM, 15 epochs,
   when the files are under ``--data-dir`` (skipped with a message otherwise).

A preset of ``convattn.experiments.compare``: prints compare's table per dataset (mean ± std and per-seed
test accuracy, the paired difference to the first variant (``plain`` / ``resnet18``) with its 95% interval and verdict,
parameters, FLOPs, s/epoch; ``--markdown`` for GitHub Markdown) and writes it to
``--out/<dataset>/compare.md|csv|json``. Runs go to ``--out/<dataset>/<variant>/seed<k>`` (the plain runs
``aacn`` and ``plain-staged`` start from: ``--out/cluttered-digits/_plain/e<N>-seed<k>``, shared by them);
finished runs with the same settings are reused, so an interrupted benchmark continues where it stopped.

Examples::

    python benchmarks/train_accuracy.py --jobs 2 --threads 1   # the full benchmark
    python benchmarks/train_accuracy.py --seeds 1 --epochs 3 --train-size 3000 --variants plain,stn
    python benchmarks/train_accuracy.py --markdown --skip-fashion
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from tabulate import tabulate

from convattn.exceptions import ConfigError, DatasetNotFoundError
from convattn.experiments import SHARED, VARIANTS, compare, parse_seeds, table_cells, table_note

CLUTTERED_VARIANTS = {
    **VARIANTS,  # plain, cbam, stn and aacn (the staged recipe from a plain run), as in the demo
    "aacn-one-run": {"model": "aacn", "attention": None, "recipe": "staged"},
    "aacn-joint": {"model": "aacn", "attention": None, "recipe": "joint"},
    # aacn's schedule without the heads: the same plain run, then the same one-epoch cosine cycles
    # with the same patience, training the whole plain network (what the heads add beyond the restarts)
    "plain-staged": {"model": "simple_cnn", "attention": None, "from_plain": True, "stage_mode": "alternate",
                     "stages": [{"name": "first", "epochs": 1}, {"name": "second", "epochs": 1}]},
}


#: Fashion-MNIST: resnet18 (small-input stem) plain and with CBAM, SGD.
FASHION_VARIANTS = {"resnet18": {"attention": None}, "resnet18-cbam": {"attention": "cbam"}}
FASHION_FIELDS = {"model": "resnet18", "model_kwargs": {"small_input": True}, "dataset": "fashion-mnist",
                  "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                  "warmup_epochs": 1, "schedule": "cosine"}


def _recipe_note() -> str:
    """The shared recipe, as the backbone's default recipe gives it."""
    from convattn.engine import resolve_config

    cfg, _ = resolve_config({"model": "simple_cnn"})
    return (f"{cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, batch {cfg.batch_size} "
            "(each model's default recipe; stn: localisation lr x0.1)")


def _compare(args: argparse.Namespace, variants: dict, out: Path, **fields) -> dict:
    return compare(variants, seeds=args.seeds, out=out, jobs=args.jobs, threads=args.threads, force=args.force,
                   localize=0, device=args.device, progress=not args.no_progress, **fields)


def run_cluttered(args: argparse.Namespace) -> dict:
    return _compare(args, {v: CLUTTERED_VARIANTS[v] for v in args.variants}, Path(args.out) / "cluttered-digits",
                    **SHARED, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
                    test_size=args.test_size)


def run_fashion(args: argparse.Namespace) -> dict | None:
    from convattn.data import build_dataset

    try:
        build_dataset("fashion-mnist", "test", data_dir=args.data_dir, test_size=1)
    except DatasetNotFoundError as exc:
        print(f"[bench] skipping Fashion-MNIST: {exc}", file=sys.stderr)
        return None
    return _compare(args, FASHION_VARIANTS, Path(args.out) / "fashion-mnist", **FASHION_FIELDS,
                    data_dir=args.data_dir, epochs=args.fashion_epochs)


def print_table(title: str, table: dict | None, markdown: bool) -> None:
    if table is None:
        return
    headers, body = table_cells(table)
    print(f"\n{title}")
    print(tabulate(body, headers=headers, tablefmt="github" if markdown else "simple", disable_numparse=True))
    print(table_note(table))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="3", help="number of seeds (3 -> 0,1,2) or a comma list (default: 3)")
    p.add_argument("--epochs", type=int, default=6, help="cluttered-digits epochs per run (default: 6)")
    p.add_argument("--variants", default=",".join(CLUTTERED_VARIANTS),
                   help=f"comma-separated subset of {','.join(CLUTTERED_VARIANTS)}")
    p.add_argument("--train-size", type=int, default=6000, help="cluttered-digits training images (default: 6000)")
    p.add_argument("--val-size", type=int, default=1000, help="validation images (default: 1000)")
    p.add_argument("--test-size", type=int, default=2000, help="test images (default: 2000)")
    p.add_argument("--fashion-epochs", type=int, default=15, help="Fashion-MNIST epochs (default: 15)")
    p.add_argument("--skip-fashion", action="store_true", help="skip the Fashion-MNIST comparison")
    p.add_argument("--data-dir", default=None, help="where FashionMNIST/raw/ lives (default: $CONVATTN_DATA_DIR or ./data)")
    p.add_argument("--out", default="runs/bench_accuracy", help="run directories (default: runs/bench_accuracy)")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, in worker processes (default: 1; 0: one per core)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (default 0: the cores shared out among the runs)")
    p.add_argument("--markdown", action="store_true", help="print GitHub Markdown tables")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in CLUTTERED_VARIANTS]
    if unknown or not args.variants:
        p.error(f"unknown variants {unknown}; choose from {','.join(CLUTTERED_VARIANTS)}")
    try:
        args.seeds = parse_seeds(args.seeds)
    except ConfigError as exc:
        p.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        cluttered = run_cluttered(args)
        fashion = None if args.skip_fashion else run_fashion(args)
    except ConfigError as exc:
        print(f"train_accuracy.py: error: {exc}", file=sys.stderr)
        return 2
    print_table(
        f"cluttered-digits 60x60, {args.train_size} training / {args.test_size} test images, {args.epochs} epochs, "
        f"seeds {','.join(map(str, args.seeds))}, {_recipe_note()}", cluttered, args.markdown)
    print_table(f"Fashion-MNIST, {args.fashion_epochs} epochs", fashion, args.markdown)
    print(f"\ntotal {math.ceil(time.perf_counter() - start)} s")
    return 0 if all(r["status"] == "finished" for t in (cluttered, fashion) if t for row in t["rows"]
                    for r in row["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
