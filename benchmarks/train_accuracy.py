"""Test accuracy of attention variants of one backbone, over several seeds.

1. cluttered-digits (embedded, 60×60): ``simple_cnn`` plain, with CBAM after each
   block (blended in from the identity), behind a spatial transformer (``stn_cnn``:
   scale + translation, 40×40 view, localisation net at 1/10 the lr), and as the
   multi-branch attention network (``aacn``, attention heads after the last block) with its
   staged recipe, its feature branch taken from a finished plain run within the same epoch
   budget: the plain backbone trained for ⌈2/3⌉ of the epochs (its own run,
   ``plain-e<N>-s<seed>``), then from it (``--init-from``) the attention + decision branches
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

Prints mean ± std test accuracy per variant (``--markdown`` for a Markdown table).
Runs go to ``--out/<dataset>/<variant>-s<seed>``; finished runs with the same
settings are reused, so an interrupted benchmark continues where it stopped.

Examples::

    python benchmarks/train_accuracy.py --jobs 2 --threads 1   # the full benchmark
    python benchmarks/train_accuracy.py --seeds 1 --epochs 3 --train-size 3000 --variants plain,stn
    python benchmarks/train_accuracy.py --markdown --skip-fashion
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from tabulate import tabulate

from convattn.experiments import DATASET, VARIANTS, train_or_reuse, train_runs, variant_configs
from convattn.engine.recipes import aacn_feature_epochs
from convattn.exceptions import DatasetNotFoundError

CLUTTERED_VARIANTS = {
    **VARIANTS,  # plain, cbam, stn and aacn (the staged recipe from a plain run), as in the demo
    "aacn-one-run": {"model": "aacn", "attention": None, "recipe": "staged"},
    "aacn-joint": {"model": "aacn", "attention": None, "recipe": "joint"},
    # aacn's schedule without the heads: the same plain run, then the same one-epoch cosine cycles
    # with the same patience, training the whole plain network (what the heads add beyond the restarts)
    "plain-staged": {"model": "simple_cnn", "attention": None, "from_plain": True, "stage_mode": "alternate",
                     "stages": [{"name": "first", "epochs": 1}, {"name": "second", "epochs": 1}]},
}


def _recipe_note() -> str:
    """The shared recipe, as the backbone's default recipe gives it."""
    from convattn.engine import resolve_config

    cfg, _ = resolve_config({"model": "simple_cnn"})
    return (f"{cfg.optimizer} lr {cfg.lr:g} {cfg.schedule}, batch {cfg.batch_size} "
            "(each model's default recipe; stn: localisation lr x0.1)")


def _stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def _row(name: str, desc: str, accs: list[float], params: int, epoch_time: float) -> dict:
    mean, std = _stats(accs)
    return {"variant": name, "model": desc, "accs": accs, "mean": mean, "std": std, "params": params,
            "epoch_time": epoch_time}


def run_cluttered(args: argparse.Namespace) -> list[dict]:
    jobs = [(v, seed) for seed in args.seed_list for v in args.variants]  # seed by seed: partial results cover every variant
    configs = {job: _configs(args, *job) for job in jobs}
    done: dict[tuple[str, int], dict] = {}

    def report(job, res, how, secs):
        done[job] = res
        print(f"[bench] cluttered-digits {job[0]} seed {job[1]}: test acc {100 * res['test_acc']:.2f} % "
              f"({how}, {secs:.0f} s)", file=sys.stderr, flush=True)

    train_runs(configs, jobs=args.jobs, threads=args.threads, force=args.force, on_done=report)
    rows = []
    for v in args.variants:
        results = [done[(v, seed)] for seed in args.seed_list]
        spec = CLUTTERED_VARIANTS[v]
        desc = spec["model"] + (f" + {spec['attention']}" if spec["attention"] else "")
        rows.append(_row(v, desc, [100 * r["test_acc"] for r in results], results[0]["params"],
                         statistics.fmean(r["epoch_time"] for r in results)))
    return rows


def _configs(args: argparse.Namespace, variant: str, seed: int) -> list:
    """The runs of one variant and seed, in training order (the last one is scored); the plain run a
    ``from_plain`` variant starts from is ``plain-e<N>-s<seed>``, shared by those variants."""
    root = Path(args.out) / "cluttered-digits"
    return variant_configs(
        CLUTTERED_VARIANTS[variant], out=root / f"{variant}-s{seed}",
        plain_out=root / f"plain-e{aacn_feature_epochs(args.epochs)}-s{seed}", epochs=args.epochs,
        train_size=args.train_size, val_size=args.val_size, test_size=args.test_size,
        seed=seed, device=args.device, progress=not args.no_progress and args.jobs == 1, tensorboard=False,
    )


def run_fashion(args: argparse.Namespace) -> list[dict]:
    from convattn.data import build_dataset
    from convattn.engine import TrainConfig

    try:
        build_dataset("fashion-mnist", "test", data_dir=args.data_dir, test_size=1)
    except DatasetNotFoundError as exc:
        print(f"[bench] skipping Fashion-MNIST: {exc}", file=sys.stderr)
        return []
    rows = []
    for name, attention in (("resnet18", None), ("resnet18 + cbam", "cbam")):
        accs, params, times = [], 0, []
        for seed in args.seed_list:
            cfg = TrainConfig(
                model="resnet18", attention=attention, model_kwargs={"small_input": True},
                dataset="fashion-mnist", data_dir=args.data_dir, epochs=args.fashion_epochs,
                batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=1,
                schedule="cosine", seed=seed, device=args.device, progress=not args.no_progress, tensorboard=False,
                out=str(Path(args.out) / "fashion-mnist" / f"{name.replace(' + ', '-')}-s{seed}"),
            )
            res, how = train_or_reuse(cfg, force=args.force)
            print(f"[bench] fashion-mnist {name} seed {seed}: test acc {100 * res['test_acc']:.2f} % ({how})",
                  file=sys.stderr, flush=True)
            accs.append(100 * res["test_acc"])
            params = res["params"]
            times.append(res["epoch_time"])
        rows.append(_row(name, name, accs, params, statistics.fmean(times)))
    return rows


def print_table(title: str, rows: list[dict], markdown: bool, baseline: str) -> None:
    if not rows:
        return
    base = next((r["mean"] for r in rows if r["variant"] == baseline), None)
    table = [
        (r["variant"], r["model"], f"{r['mean']:.2f} ± {r['std']:.2f}",
         "-" if base is None else f"{r['mean'] - base:+.2f}",
         " ".join(f"{a:.1f}" for a in r["accs"]), f"{r['params']:,}", f"{r['epoch_time']:.1f}")
        for r in rows
    ]
    headers = ["variant", "model", "test acc % (mean ± std)", f"vs {baseline}", "per seed", "params", "s/epoch"]
    print(f"\n{title}")
    print(tabulate(table, headers=headers, tablefmt="github" if markdown else "simple", disable_numparse=True))


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
                   help="cluttered-digits runs trained at once, in worker processes (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's choice with --jobs 1, the cores shared out among the runs otherwise)")
    p.add_argument("--markdown", action="store_true", help="print GitHub Markdown tables")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true", help="retrain runs that exist")
    args = p.parse_args(argv)
    args.seed_list = list(range(int(args.seeds))) if args.seeds.isdigit() else [int(s) for s in args.seeds.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        p.error("--jobs and --threads take integers >= 1")
    if args.epochs < 1 or (any(CLUTTERED_VARIANTS.get(v, {}).get("from_plain") for v in args.variants) and args.epochs < 2):
        p.error("--epochs takes an integer >= 1 (>= 2 with aacn / plain-staged: the plain run, then their own)")
    unknown = [v for v in args.variants if v not in CLUTTERED_VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {','.join(CLUTTERED_VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    rows = run_cluttered(args)
    print_table(
        f"cluttered-digits 60x60, {args.train_size} training / {args.test_size} test images, {args.epochs} epochs, "
        f"seeds {','.join(map(str, args.seed_list))}, {_recipe_note()}",
        rows, args.markdown, "plain",
    )
    if not args.skip_fashion:
        fashion = run_fashion(args)
        print_table(f"Fashion-MNIST, {args.fashion_epochs} epochs", fashion, args.markdown, "resnet18")
    print(f"\ntotal {math.ceil(time.perf_counter() - start)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
