"""What ``convattn compare`` costs over the runs it makes, on this machine.

(a) Four runs (two variants x two seeds: ``simple_cnn`` plain and with SE on the embedded digits, sizes that
    take about 20-40 s a run on one thread) through ``convattn.compare`` with ``jobs=2, threads=1``, against
    the same four runs one after another in one process with one thread (``convattn.train``). Each side runs
    in a fresh Python process, timed from its start (importing torch included) to its end.
    Target: compare takes at most 0.6x the sequential time.
(b) compare's own overhead: the wall time of the ``compare(...)`` call minus the runs' own time, over the
    runs' own time. A run's own time is the time its worker spent on it (``seconds`` in compare.json: building
    the data and model, training, testing, writing the run; in a worker's first run also the modules it loads
    on first use); the runs' own time is the fewest seconds two workers need for those runs taken in compare's
    start order, each to the first free worker (what compare's pool does). What is left is compare's: spawning
    the workers (importing torch there), resolving the configs, FLOPs, the table and its files.
    Target: under 5%.

The C++ kernels the variants use are built before anything is timed. Each repeat runs compare, then the
sequential runs; the ratios use the fastest repeat of each. Numbers taken while other work shares the
machine are noisy: measure on a quiet machine.

Examples::

    python benchmarks/compare_overhead.py                 # the measurement (about 4 minutes on 2 cores)
    python benchmarks/compare_overhead.py --quick         # a check that it works (about a minute)
    python benchmarks/compare_overhead.py --repeats 3 --out /tmp/cmp-overhead
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

#: The C++ kernel library each variant's layer runs (built before timing).
KERNELS = {"se": ("convattn_se",), "cbam": ("convattn_cbam",)}
SEEDS = [0, 1]


def makespan(seconds: list[float], workers: int) -> float:
    """The wall time of ``seconds``-long jobs taken in order, each by the first free of ``workers``."""
    free = [0.0] * workers
    for s in seconds:
        i = free.index(min(free))
        free[i] += s
    return max(free)


def child_compare(variants: list[str], out: Path, fields: dict) -> dict:
    """In a fresh process: the ``compare(...)`` call's wall time and each run's own time (start order)."""
    from convattn.experiments import compare

    start = time.perf_counter()
    table = compare(variants, seeds=SEEDS, out=out, jobs=2, threads=1, force=True, localize=0, **fields)
    call = time.perf_counter() - start
    runs = {(r["variant"], r["seed"]): r for row in table["rows"] for r in row["runs"]}
    failed = [f"{v} seed {s}" for (v, s), r in runs.items() if r["status"] != "finished"]
    if failed:
        raise SystemExit(f"compare_overhead.py: runs did not finish: {', '.join(failed)}")
    return {"call": call, "runs": [runs[(v, s)]["seconds"] for s in SEEDS for v in variants]}


def child_sequential(variants: list[str], out: Path, fields: dict) -> dict:
    """In a fresh process: the same runs one after another, one thread; each run's wall time."""
    import shutil

    import torch

    from convattn.engine import train
    from convattn.experiments import compare_configs, variant_specs

    torch.set_num_threads(1)
    runs = []
    for (cfg,) in compare_configs(variant_specs(variants), SEEDS, out=out, **fields).values():
        shutil.rmtree(cfg.out, ignore_errors=True)
        start = time.perf_counter()
        train(cfg)
        runs.append(time.perf_counter() - start)
    return {"runs": runs}


def timed_child(kind: str, argv: list[str]) -> tuple[float, dict]:
    """Run this script as ``--child kind`` in a fresh process: its wall time and what it reported."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", kind], stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"compare_overhead.py: the {kind} process exited with status {proc.returncode}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="none,se", help="two attention names (default: none,se)")
    p.add_argument("--epochs", type=int, default=16, help="epochs per run (default: 16)")
    p.add_argument("--image-size", type=int, default=32, help="digits upscaled to this size (default: 32)")
    p.add_argument("--train-size", type=int, default=None, help="training images (default: all 1,257)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of compare then sequential (default: 1)")
    p.add_argument("--quick", action="store_true", help="1 epoch of 256 images at 16x16: checks that it works")
    p.add_argument("--out", default="runs/bench_compare_overhead", help="run directories (replaced)")
    p.add_argument("--child", choices=("compare", "sequential"), help=argparse.SUPPRESS)
    given = sys.argv[1:] if argv is None else argv
    args = p.parse_args(given)
    if args.quick:
        args.epochs, args.image_size, args.train_size = 1, 16, 256
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if len(variants) != 2 or args.repeats < 1:
        p.error("--variants takes two attention names and --repeats an integer >= 1")
    fields = {"model": "simple_cnn", "dataset": "digits", "epochs": args.epochs, "image_size": args.image_size,
              "progress": False, "tensorboard": False, "device": "cpu",
              **({"train_size": args.train_size} if args.train_size else {})}
    out = Path(args.out)
    if args.child:
        run = child_compare if args.child == "compare" else child_sequential
        print(json.dumps(run(variants, out / args.child, fields)))
        return 0

    from convattn.experiments import build_kernels

    build_kernels(tuple(lib for v in variants for lib in KERNELS.get(v, ())))
    best: dict[str, tuple[float, dict]] = {}
    for i in range(args.repeats):
        for kind in ("compare", "sequential"):
            wall, got = timed_child(kind, given)
            print(f"[bench] round {i + 1}: {kind} process {wall:.1f} s (runs {', '.join(f'{s:.1f}' for s in got['runs'])} s)",
                  file=sys.stderr, flush=True)
            if kind not in best or wall < best[kind][0]:
                best[kind] = (wall, got)
    (wall, got), (seq, seq_got) = best["compare"], best["sequential"]
    ideal = makespan(got["runs"], 2)
    print(f"4 runs ({', '.join(variants)} x seeds 0,1; simple_cnn on digits {args.image_size}x{args.image_size}, "
          f"{args.epochs} epoch(s)); fastest of {args.repeats} round(s); each side a fresh process")
    print(f"sequential, one process, 1 thread: {seq:.1f} s (runs {', '.join(f'{s:.1f}' for s in seq_got['runs'])} s)")
    print(f"compare jobs=2 threads=1:          {wall:.1f} s, of which the compare(...) call {got['call']:.1f} s "
          f"(runs' own time {', '.join(f'{s:.1f}' for s in got['runs'])} s: on 2 workers at best {ideal:.1f} s)")
    print(f"(a) compare / sequential: {wall / seq:.2f}x (target <= 0.6x)")
    print(f"(b) compare's overhead over its runs: {got['call'] - ideal:.1f} s = {100 * (got['call'] - ideal) / ideal:.1f}% "
          "(target < 5%)")
    print(f"command: {shlex.join(['python', 'benchmarks/compare_overhead.py', *given])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
