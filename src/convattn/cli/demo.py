"""``convattn demo``: a preset of ``convattn compare``. The same small CNN trained plain, with CBAM and behind a
spatial transformer, and AACN (attention-pooling heads on that backbone) with its staged recipe, started from a
plain run within the same epochs, on the embedded cluttered-digits dataset (nothing to download), one seed by
default. It prints compare's table (test accuracy, parameters, FLOPs, time per epoch, how well each run's
attention finds the digit) and a table of every map's localisation scores (CBAM's spatial maps, AACN's heads,
the transformer's sampling window and Grad-CAM against the digit's box), and writes compare.md|csv|json,
compare.html (with a gallery of test images under each variant's attention) and attention-map figures per
run. ``make demo`` runs it; :mod:`convattn.experiments` does the work.

Runs go to ``<out>/<variant>/seed<k>`` as compare's do; re-running it reuses finished runs with the same
settings and resumes unfinished ones; ``--force`` retrains from scratch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..exceptions import ConfigError
from ..experiments import demo as variants
from ._compare_options import report_unfinished
from ._options import add_command, add_device, add_num_images, add_out, add_progress, check_out_dir, show_progress

ORDER = 40

EXAMPLES = (
    "convattn demo                      # under 10 minutes on a 2-core CPU (two runs at a time)",
    "convattn demo --epochs 2 --train-size 1000 --variants plain,stn",
    "convattn demo --seeds 3 --out runs/demo3   # the demo's variants over seeds 0, 1, 2",
    "convattn demo --jobs 1 --threads 2 --out runs/demo2 --force  # one run at a time, retrained",
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = ",".join(variants.VARIANTS)
    p = add_command(sub, "demo", help="train plain / CBAM / spatial-transformer / AACN CNNs on cluttered digits "
                    "and compare", description=__doc__, examples=EXAMPLES)
    add_out(p, "runs/demo", "parent of the run directories and of compare.md|csv|json|html (default: runs/demo)")
    p.add_argument("--variants", default=names, help=f"comma-separated subset of {names} (the first is the baseline)")
    p.add_argument("--epochs", type=int, default=variants.DEMO_EPOCHS,
                   help=f"epochs per variant, AACN's plain run included (default: {variants.DEMO_EPOCHS})")
    for split, default in (("train", variants.DEMO_TRAIN_SIZE), ("val", variants.DEMO_VAL_SIZE),
                           ("test", variants.DEMO_TEST_SIZE)):
        p.add_argument(f"--{split}-size", type=int, default=default, help=f"{split} images (default: {default})")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="the one seed of the data and the models (default: 0)")
    seeds.add_argument("--seeds", help="several seeds, as compare takes them: a count N (0..N-1) or a list 0,3,7")
    add_device(p)
    p.add_argument("--jobs", type=int, default=0,
                   help="runs trained at once, each in its own process; 0 (default): one per CPU core, "
                        "up to the number of runs (1 on CUDA)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per run (torch.set_num_threads); 0 (default): the cores shared out among "
                        "the --jobs runs (one each on 2 cores)")
    p.add_argument("--no-viz", action="store_true", help="skip the attention figures and compare.html")
    add_num_images(p, variants.DEMO_NUM_IMAGES, deprecated=["--loc-size"],
                   help="test images whose digit boxes the attention maps are scored against "
                        f"(default: {variants.DEMO_NUM_IMAGES})")
    p.add_argument("--no-localization", dest="localization", action="store_false",
                   help="skip scoring the attention maps against the digits' boxes")
    add_progress(p)
    p.add_argument("--force", action="store_true", help="retrain runs that already exist under --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train the demo variants through compare, print its table and the localisation table, write the page."""
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
    start = time.perf_counter()
    table = variants.run_demo(
        chosen, seeds=args.seeds or [args.seed], out=args.out, jobs=args.jobs, threads=args.threads,
        localize=args.num_images if args.localization else 0, viz=not args.no_viz, force=args.force,
        epochs=args.epochs, train_size=args.train_size, val_size=args.val_size, test_size=args.test_size,
        device=args.device, progress=show_progress(args))
    return _show(table, args, time.perf_counter() - start)


def _show(table: dict, args: argparse.Namespace, seconds: float) -> int:
    from ..experiments import table_cells, table_markdown, table_note

    print(table_markdown(table))
    seeds = ",".join(map(str, table["seeds"]))
    print(f"{variants.DATASET} ({args.train_size} training / {args.test_size} test images, {args.epochs} epochs, "
          f"seed(s) {seeds}, {table['jobs']} run(s) at a time, {table['threads']} thread(s) each); "
          f"training, localisation scores and figures {seconds:.0f} s")
    for note in variants.chain_notes(table):
        print(note)
    runs = [r for row in table["rows"] for r in row["runs"]]
    reused = [f"{r['variant']} seed {r['seed']}" for r in runs if set(r.get("how", "").split("+")) == {"reused"}]
    if reused:
        print(f"reused finished runs: {', '.join(reused)} (--force retrains)")
    loc = variants.localization_table(runs) if args.localization else ""
    if loc:
        print(f"\n{loc}")
    files = table["files"]
    if not args.no_viz:
        from ..viz.compare import write_compare_page

        for r in runs:
            if r.get("figures"):
                print(f"{r['variant']} seed {r['seed']}: {r['figures']}")
        files.append(str(write_compare_page(table, Path(args.out) / "compare.html", cells=table_cells(table),
                                            note=table_note(table), title="convattn demo")))
    return report_unfinished(runs, files)
