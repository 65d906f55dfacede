"""Test accuracy of models trained with their default recipe, over several seeds.

Each run is exactly what ``convattn train --model MODEL --dataset DATASET --seed S``
trains with no optimiser flags (``convattn.engine.recipes.resolve_config``): the
model's recipe, the dataset's default sizes, 10 epochs. ``--image-size``,
``--epochs`` and the split sizes apply to every run when given. Prints mean ± std
test accuracy per model and the difference to the first model.

A preset of ``convattn.experiments.compare`` (one variant per model, the first the baseline): prints each
model's recipe and compare's table (``--markdown`` for GitHub Markdown), written to
``--out/<dataset>/compare.md|csv|json``. Runs go to ``--out/<dataset>/<model>/seed<k>``; finished runs with
the same settings are reused, so an interrupted benchmark continues where it stopped.

Examples::

    python benchmarks/recipe_defaults.py --dataset digits --image-size 28
    python benchmarks/recipe_defaults.py --dataset cluttered-digits --train-size 6000 --epochs 6 --jobs 2 --threads 1
    python benchmarks/recipe_defaults.py --models simple_cnn,gated_cnn --seeds 1 --markdown
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from tabulate import tabulate

from convattn.exceptions import ConfigError
from convattn.experiments import compare, compare_configs, parse_seeds, table_cells, table_note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="simple_cnn,gated_cnn,gated_mlp",
                   help="comma-separated models; the first is the reference (default: simple_cnn,gated_cnn,gated_mlp)")
    p.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    p.add_argument("--image-size", type=int, default=None, help="resize the images (default: the dataset's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's / TrainConfig's)")
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--val-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--seeds", default="3", help="number of seeds (3 -> 0,1,2) or a comma list (default: 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench_recipes", help="run directories (default: runs/bench_recipes)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process (default: 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (default 0: the cores shared out among the runs)")
    p.add_argument("--markdown", action="store_true", help="print a GitHub Markdown table")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    args = p.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        p.error("--models must name at least one model")
    fields = {"dataset": args.dataset, "device": args.device, "progress": not args.no_progress,
              **{k: getattr(args, k) for k in ("image_size", "epochs", "train_size", "val_size", "test_size")
                 if getattr(args, k) is not None}}
    variants = {m: {"model": m} for m in models}
    start = time.perf_counter()
    try:
        seeds = parse_seeds(args.seeds)
        out = Path(args.out) / args.dataset
        chains = compare_configs(variants, seeds[:1], out=out, **fields)
        table = compare(variants, seeds=seeds, out=out, jobs=args.jobs, threads=args.threads, force=args.force,
                        localize=0, **fields)
    except ConfigError as exc:
        print(f"recipe_defaults.py: error: {exc}", file=sys.stderr)
        return 2
    size = f", {args.image_size}x{args.image_size}" if args.image_size else ""
    print(f"\n{args.dataset}{size}, default recipes, seeds {','.join(map(str, seeds))}")
    for (model, _), (cfg,) in chains.items():
        print(f"{model}: {cfg.recipe or 'none'}: {cfg.optimizer} lr {cfg.lr:g} batch {cfg.batch_size} {cfg.epochs} ep")
    headers, body = table_cells(table)
    print(tabulate(body, headers=headers, tablefmt="github" if args.markdown else "simple", disable_numparse=True))
    print(table_note(table))
    print(f"\ntotal {math.ceil(time.perf_counter() - start)} s")
    return 0 if all(r["status"] == "finished" for row in table["rows"] for r in row["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
