"""Test accuracy of models trained with their default recipe, over several seeds.

Each run is exactly what ``convattn train --model MODEL --dataset DATASET --seed S``
trains with no optimiser flags (``convattn.engine.recipes.resolve_config``): the
model's recipe, the dataset's default sizes, 10 epochs. ``--image-size``,
``--epochs`` and the split sizes apply to every run when given. Prints mean ± std
test accuracy per model and the difference to the first model.

Runs go to ``--out/<dataset>/<model>-s<seed>``; finished runs with the same settings
are reused, so an interrupted benchmark continues where it stopped.

Examples::

    python benchmarks/recipe_defaults.py --dataset digits --image-size 28
    python benchmarks/recipe_defaults.py --dataset cluttered-digits --train-size 6000 --epochs 6 --jobs 2 --threads 1
    python benchmarks/recipe_defaults.py --models simple_cnn,gated_cnn --seeds 1 --markdown
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from tabulate import tabulate

from convattn.experiments import train_runs


def _config(args: argparse.Namespace, model: str, seed: int):
    from convattn.engine.recipes import resolve_config

    flags = {"model": model, "dataset": args.dataset, "seed": seed, "device": args.device,
             "progress": not args.no_progress and args.jobs == 1, "tensorboard": False,
             "out": str(Path(args.out) / args.dataset / f"{model}-s{seed}")}
    for name in ("image_size", "epochs", "train_size", "val_size", "test_size"):
        if getattr(args, name) is not None:
            flags[name] = getattr(args, name)
    return resolve_config(flags)[0]


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
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's choice with --jobs 1, the cores shared out among the runs otherwise)")
    p.add_argument("--markdown", action="store_true", help="print a GitHub Markdown table")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    args = p.parse_args(argv)
    seeds = list(range(int(args.seeds))) if args.seeds.isdigit() else [int(s) for s in args.seeds.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models or not seeds:
        p.error("--models and --seeds must name at least one model and seed")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        p.error("--jobs and --threads take integers >= 1")

    start = time.perf_counter()
    configs = {(model, seed): [_config(args, model, seed)] for model in models for seed in seeds}

    def report(job, res, how, secs):
        print(f"[bench] {args.dataset} {job[0]} seed {job[1]}: test acc {100 * res['test_acc']:.2f} % "
              f"val acc {100 * res['val_acc']:.2f} % train acc {100 * res['train_acc']:.2f} % ({how}, {secs:.0f} s)",
              file=sys.stderr, flush=True)

    done = train_runs(configs, jobs=args.jobs, threads=args.threads, force=args.force, on_done=report)
    rows, base, first = [], None, None
    for model in models:
        results = [done[(model, seed)][0] for seed in seeds]
        cfg = configs[(model, seeds[-1])][0]
        accs = [100 * r["test_acc"] for r in results]
        params, times = results[0]["params"], [r["epoch_time"] for r in results]
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        if base is None:
            base, first = mean, model
        recipe = f"{cfg.recipe or 'none'}: {cfg.optimizer} lr {cfg.lr:g} batch {cfg.batch_size} {cfg.epochs} ep"
        rows.append((model, recipe, f"{mean:.2f} ± {std:.2f}", f"{mean - base:+.2f}",
                     " ".join(f"{a:.1f}" for a in accs), f"{params:,}", f"{statistics.fmean(times):.1f}"))
    size = f", {args.image_size}x{args.image_size}" if args.image_size else ""
    print(f"\n{args.dataset}{size}, default recipes, seeds {','.join(map(str, seeds))}")
    print(tabulate(rows, headers=["model", "recipe", "test acc % (mean ± std)", f"vs {first}", "per seed", "params",
                                  "s/epoch"], tablefmt="github" if args.markdown else "simple", disable_numparse=True))
    print(f"\ntotal {math.ceil(time.perf_counter() - start)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
