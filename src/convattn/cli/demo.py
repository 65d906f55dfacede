"""``convattn demo``: the same small CNN trained plain, with CBAM and behind a spatial
transformer, and AACN (attention-pooling heads on that backbone) with its staged recipe,
started from a plain run within the same epochs, on the embedded cluttered-digits dataset (nothing to download), then a
table of test accuracy, parameters and time per epoch, a table of how well each
run's attention finds the digit (CBAM's spatial maps, AACN's heads, the transformer's
sampling window and Grad-CAM against the digit's box), attention-map figures per run and an
HTML report. ``make demo`` runs it; :mod:`convattn.experiments` does the work.

Re-running it reuses finished runs with the same settings and resumes unfinished ones;
``--force`` retrains from scratch.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ..experiments import demo as variants
from ..experiments import jobs_and_threads, train_runs
from ._options import add_command, add_device, add_num_images, add_out, add_progress, check_out_dir, show_progress

ORDER = 40

EXAMPLES = (
    "convattn demo                      # under 10 minutes on a 2-core CPU (two runs at a time)",
    "convattn demo --epochs 2 --train-size 1000 --variants plain,stn",
    "convattn demo --jobs 1 --threads 2 --out runs/demo2 --force  # one run at a time, retrained",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = ",".join(variants.VARIANTS)
    p = add_command(sub, "demo", help="train plain / CBAM / spatial-transformer / AACN CNNs on cluttered digits "
                    "and compare", description=__doc__, examples=EXAMPLES)
    add_out(p, "runs/demo", "parent of the run directories (default: runs/demo)")
    p.add_argument("--variants", default=names, help=f"comma-separated subset of {names}")
    p.add_argument("--epochs", type=int, default=variants.DEMO_EPOCHS,
                   help=f"epochs per variant, AACN's plain run included (default: {variants.DEMO_EPOCHS})")
    for split, default in (("train", variants.DEMO_TRAIN_SIZE), ("val", variants.DEMO_VAL_SIZE),
                           ("test", variants.DEMO_TEST_SIZE)):
        p.add_argument(f"--{split}-size", type=int, default=default, help=f"{split} images (default: {default})")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the models (default: 0)")
    add_device(p)
    p.add_argument("--jobs", type=int, default=0,
                   help="runs trained at once, each in its own process; 0 (default): one per CPU core, "
                        "up to the number of variants (1 on CUDA)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per run (torch.set_num_threads); 0 (default): the cores shared out among "
                        "the --jobs runs (one each on 2 cores)")
    p.add_argument("--no-viz", action="store_true", help="skip the attention figures and the HTML report")
    add_num_images(p, variants.DEMO_NUM_IMAGES, deprecated=["--loc-size"],
                       help="test images whose digit boxes the attention maps are scored against "
                            f"(default: {variants.DEMO_NUM_IMAGES})")
    p.add_argument("--no-localization", dest="localization", action="store_false",
                   help="skip scoring the attention maps against the digits' boxes")
    add_progress(p)
    p.add_argument("--force", action="store_true", help="retrain runs that already exist under --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the demo variants, print the comparison table, write figures and a report."""
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in variants.VARIANTS]
    if unknown or not chosen:
        raise ConfigError(f"--variants takes a comma-separated subset of {','.join(variants.VARIANTS)}, "
                          f"got {args.variants!r}")
    for name in ("epochs", "train_size", "val_size", "test_size", "num_images"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("jobs", "threads"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must be >= 0 (0: automatic), got {getattr(args, name)}")
    check_out_dir(args.out)
    return _run(args, chosen)


def _announce(v: str, chain: list) -> str | None:
    """Print what variant ``v`` trains; return the note under the table for a variant started from a plain run."""
    *before, cfg = chain
    name = cfg.model + (f" + {cfg.attention}" if cfg.attention else "")
    if not before:
        print(f"[demo] {v}: {name}, {cfg.epochs} epochs on {cfg.train_size} {cfg.dataset} images -> {cfg.out}",
              file=sys.stderr)
        return None
    plain = before[0]
    print(f"[demo] {v}: {plain.model} for {plain.epochs} epochs -> {plain.out}, then {name} from it for "
          f"{cfg.epochs}, on {cfg.train_size} {cfg.dataset} images -> {cfg.out}", file=sys.stderr)
    return (f"{v}: {plain.model} for the first {plain.epochs} of the {plain.epochs + cfg.epochs} epochs "
            f"({plain.out}), then {cfg.model} from it (s/epoch: the last {cfg.epochs})")


def _run(args: argparse.Namespace, chosen: list[str]) -> int:
    out, start = Path(args.out), time.perf_counter()
    jobs, threads = jobs_and_threads(args.jobs, args.threads, runs=len(chosen), device=args.device)
    progress = show_progress(args)
    configs = {v: variants.make_configs(
        v, out=out / v, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
        test_size=args.test_size, seed=args.seed, device=args.device, progress=progress and jobs == 1,
        tensorboard=False) for v in chosen}
    notes = [note for v in chosen if (note := _announce(v, configs[v]))]
    print(f"[demo] {jobs} run(s) at a time, {threads} thread(s) each", file=sys.stderr, flush=True)

    def done(v: str, res: dict[str, Any], how: str, secs: float) -> None:
        print(f"[demo] {v}: {how} in {secs:.0f} s, test accuracy {100 * res['test_acc']:.1f}%", file=sys.stderr, flush=True)

    order = variants.start_order(chosen)
    # each run's localisation scores and figures are made where it trained, beside the runs still training
    after = partial(variants.score_and_draw, loc_size=args.num_images if args.localization else None,
                    device=args.device, viz=not args.no_viz, progress=progress and jobs == 1)
    results = train_runs({v: configs[v] for v in order}, jobs=jobs, threads=threads, force=args.force, on_done=done,
                         prepare=variants.kernel_builds(order, jobs), after=after)
    rows = []
    for v in chosen:
        res, how, _ = results[v]
        rows.append({"variant": v, "run_dir": res.get("run_dir", configs[v][-1].out), "how": how, **res})
    print(variants.accuracy_table(rows))
    print(f"\ncluttered-digits ({args.train_size} training / {args.test_size} test images, {args.epochs} epochs, "
          f"seed {args.seed}, {jobs} run(s) at a time, {threads} thread(s) each); "
          f"training, localisation scores and figures {time.perf_counter() - start:.0f} s")
    for note in notes:
        print(note)
    reused = [r["variant"] for r in rows if set(r["how"].split("+")) == {"reused"}]
    if reused:
        print(f"reused finished runs: {', '.join(reused)} (--force retrains)")
    if args.localization:
        print()
        print(variants.localization_table(rows, images=args.num_images, device=args.device, progress=progress))
    if not args.no_viz:
        for r in rows:
            print(f"{r['variant']}: {r['figures']}")
        try:
            from ..viz import write_report
        except ImportError:
            pass
        else:
            print(f"report: {write_report([Path(r['run_dir']) for r in rows], out / 'report.html')}")
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0
