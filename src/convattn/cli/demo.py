"""``convattn demo``: the same small CNN trained plain, with CBAM and behind a spatial
transformer, and AACN (attention-pooling heads on that backbone) with its staged recipe,
started from a plain run within the same epochs, on the embedded cluttered-digits dataset (nothing to download), then a
table of test accuracy, parameters and time per epoch, a table of how well each
run's attention finds the digit (CBAM's spatial maps, AACN's heads, the transformer's
sampling window and Grad-CAM against the digit's box), attention-map figures per run and an
HTML report. ``make demo`` runs it.

Re-running it reuses finished runs with the same settings and resumes unfinished ones;
``--force`` retrains from scratch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError

ORDER = 40

#: The demo's variants: one backbone (``simple_cnn``), four ways of attending. Each entry is
#: ``TrainConfig`` fields over the model's recipe; adding a run to the demo (and to
#: ``benchmarks/train_accuracy.py``) is adding one entry.
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"model": "simple_cnn", "attention": None},
    # CBAM refines a ResNet block's residual branch in the paper, so the identity path stays;
    # simple_cnn has no skip connection, so each CBAM is blended in as x + γ·(CBAM(x) − x), γ = 0 at init
    "cbam": {"model": "simple_cnn", "attention": "cbam", "model_kwargs": {"identity_init": True}},
    # the transformer (scale + translation, the STN paper's attention variant) samples a 40×40 view
    # (at first the whole canvas), the classifier reads it; the localisation net learns at 1/10 the lr
    "stn": {"model": "stn_cnn", "attention": None, "model_kwargs": {"out_size": [40, 40], "transform": "attention"},
            "lr_mult": {"localization": 0.1}},
    # AACN's staged recipe in the same epoch budget, its feature branch taken from a finished plain run:
    # simple_cnn for 2/3 of the epochs (a run of its own), then from it (init_from) attention + decision
    # with the features frozen and features + decision with the attention frozen, alternating. Trained
    # in one run instead (the recipe's own feature stage), AACN trailed plain (README).
    "aacn": {"model": "aacn", "attention": None, "recipe": "staged", "from_plain": True},
}

#: The demo's data; each variant trains with its model's default recipe
#: (:mod:`convattn.engine.recipes`: AdamW, lr 5e-3, 0.2 warm-up epochs then cosine, batch 32).
DATASET = "cluttered-digits"

DEMO_EPOCHS = 6
DEMO_TRAIN_SIZE = 6000
DEMO_VAL_SIZE = 1000
DEMO_TEST_SIZE = 2000
DEMO_LOC_SIZE = 500

# On 2 cores, two runs at a time with one thread each trained the demo in 434 s from a fresh clone,
# against 558 s for the same runs one after another with two threads; and one thread per run keeps
# steps fast when another process shares the machine (two threads of one step then wait on each
# other, 2.7-3x slower than one thread). docs/demo.md has the measurements.
#: The order the demo's runs start in. Two at a time, the longest (CBAM: its epochs and its kernels'
#: build) goes beside the others: STN (the shortest) and CBAM in one worker, plain and AACN in the
#: other, which builds CBAM's kernels before it trains plain, so that they are ready when CBAM starts.
START_ORDER = ("stn", "plain", "cbam", "aacn")

#: The C++ kernel libraries a variant's layers run (:mod:`convattn.layers._ext`); the run that starts
#: just before it builds them first, in its own worker.
KERNELS = {"cbam": ("convattn_cbam",)}


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Prefixed:
    """A text stream that starts every line written to ``stream`` with ``prefix``."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self.stream, self.prefix, self.at_start = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            self.stream.write((self.prefix if self.at_start else "") + piece)
            self.at_start = piece.endswith(("\n", "\r"))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def _train_chain(
    cfg_dicts: list[dict],
    force: bool,
    threads: int | None,
    prefix: str | None,
    prepare: Callable[[], Any] | None = None,
    after: Callable[[dict], dict] | None = None,
) -> tuple[dict, str, float]:
    """``prepare()``, then train ``cfg_dicts`` in order (each may start from the one before): ``(the last run's
    results passed through ``after``, how, seconds)``."""
    import torch

    from ..engine import TrainConfig

    stderr = sys.stderr
    if prefix is not None:
        sys.stderr = _Prefixed(stderr, prefix)
    if threads:
        torch.set_num_threads(threads)
    start, hows, res = time.perf_counter(), [], {}
    try:
        if prepare is not None:
            prepare()
        for cfg_dict in cfg_dicts:
            res, how = train_or_reuse(TrainConfig.from_dict(cfg_dict), force=force)
            hows.append(how)
        if after is not None:
            res = after(res)
    finally:  # a worker process trains the next chain with the next prefix
        sys.stderr = stderr
    return res, "+".join(hows), time.perf_counter() - start


def _train_keyed(item: tuple) -> tuple[Any, tuple[dict, str, float]]:
    key, *args = item
    return key, _train_chain(*args)


def _label(key: Any) -> str:
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def train_runs(
    chains: dict[Any, list],
    *,
    jobs: int = 1,
    threads: int | None = None,
    force: bool = False,
    on_done: Callable[[Any, dict, str, float], None] | None = None,
    prepare: dict[Any, Callable[[], Any]] | None = None,
    after: Callable[[dict], dict] | None = None,
) -> dict[Any, tuple[dict[str, Any], str, float]]:
    """Train each chain of ``TrainConfig`` s (in order, in one process), ``jobs`` chains at a time.

    ``jobs > 1`` trains in that many spawned worker processes, each with ``threads`` torch
    threads (default: the usable cores shared out) and its log lines prefixed by its key; a
    failing run stops the others; ``jobs == 1`` trains here (``threads``, when
    given, is set for the runs and restored). Chains start in the order given. Finished
    identical runs are reused and unfinished ones resumed (:func:`train_or_reuse`).
    ``prepare[key]()`` runs before that chain's first run, and ``after(results)`` after its last
    run, in the process that trains the chain, its return value taking the results' place (with
    ``jobs > 1`` both must pickle: module-level functions, or ``functools.partial`` of one).

    Returns ``{key: (results of the chain's last run, "trained" / "reused" / "resumed" per run joined
    by "+", seconds)}``; ``on_done(key, results, how, seconds)`` is called as each chain ends.
    A script calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard that
    spawned processes require.
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    dicts = {key: [c.to_dict() for c in cfgs] for key, cfgs in chains.items()}
    prepare = prepare or {}
    done: dict[Any, tuple[dict[str, Any], str, float]] = {}

    def finish(key: Any, out: tuple[dict[str, Any], str, float]) -> None:
        done[key] = out
        if on_done is not None:
            on_done(key, *out)

    if jobs == 1 or len(dicts) <= 1:
        import torch

        before = torch.get_num_threads()
        try:
            for key, cfgs in dicts.items():
                finish(key, _train_chain(cfgs, force, threads, None, prepare.get(key), after))
        finally:
            torch.set_num_threads(before)
        return done
    import multiprocessing as mp

    jobs = min(jobs, len(dicts))
    if threads is None:
        threads = max(1, usable_cores() // jobs)
    work = [(key, cfgs, force, threads, f"[{_label(key)}] ", prepare.get(key), after) for key, cfgs in dicts.items()]
    # leaving the block terminates the workers: a failed run or Ctrl-C starts nothing more
    # (runs cut short keep their last.pt and resume)
    with mp.get_context("spawn").Pool(jobs) as pool:
        for key, out in pool.imap_unordered(_train_keyed, work, chunksize=1):
            finish(key, out)
    return done


_EPILOG = """\
examples:
  convattn demo                      # under 10 minutes on a 2-core CPU (two runs at a time)
  convattn demo --jobs 1 --threads 2  # one run at a time
  convattn demo --epochs 2 --train-size 1000 --variants plain,stn
  convattn demo --out runs/demo2 --force
"""


def variant_configs(spec: dict[str, Any], *, out: str | Path, plain_out: str | Path | None = None,
                    **overrides: Any) -> list:
    """The runs of a variant in training order, its own run last.

    ``spec`` is ``TrainConfig`` fields over the model's recipe (:func:`convattn.engine.resolve_config`),
    ``overrides`` go over both. With ``from_plain: true`` in ``spec``, the runs are the plain
    backbone (``VARIANTS["plain"]``) for AACN's feature share of the ``epochs``
    (:func:`convattn.engine.recipes.aacn_feature_epochs`) into ``plain_out``
    (default ``<out>-plain``), then the variant from it (``init_from``) for the remaining epochs.
    """
    from ..engine import TrainConfig, resolve_config
    from ..engine.recipes import aacn_feature_epochs

    spec = dict(spec)
    if not spec.pop("from_plain", False):
        return [resolve_config({"dataset": DATASET, **spec, **overrides, "out": str(out)})[0]]
    epochs = int(overrides.get("epochs", TrainConfig().epochs))
    if epochs < 2:
        raise ConfigError(f"{spec['model']} starts from a plain run: it needs epochs >= 2 "
                          f"(the plain run, then its own), got {epochs}")
    first = aacn_feature_epochs(epochs)
    plain_out = Path(plain_out) if plain_out is not None else Path(f"{out}-plain")
    plain, _ = resolve_config({"dataset": DATASET, **VARIANTS["plain"], **overrides, "epochs": first,
                               "out": str(plain_out)})
    own, _ = resolve_config({"dataset": DATASET, **spec, **overrides, "epochs": epochs - first,
                             "init_from": str(plain_out), "out": str(out)})
    return [plain, own]


def make_configs(variant: str, *, out: str | Path, **overrides: Any) -> list:
    """The runs of one demo variant (:func:`variant_configs` of ``VARIANTS[variant]``), its own run last."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown demo variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return variant_configs(VARIANTS[variant], out=out, **overrides)


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's result; fields added since a run was saved take their defaults."""
    from ..engine import TrainConfig

    ignore = {"out", "progress", "tensorboard", "workers", "device", "save_every"}
    return {k: v for k, v in {**TrainConfig().to_dict(), **cfg}.items() if k not in ignore}


def train_or_reuse(config, *, force: bool = False) -> tuple[dict[str, Any], str]:
    """Train ``config`` into ``config.out``; reuse a finished identical run, resume an unfinished one.

    Returns the result dict of :func:`convattn.engine.train` and what happened
    (``"trained"``, ``"reused"``, ``"resumed"``).
    """
    import json

    import yaml

    from ..engine import train

    run_dir = Path(config.out)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        saved = run_dir / "config.yaml"
        old = yaml.safe_load(saved.read_text()) if saved.is_file() else None
        if not isinstance(old, dict) or _comparable(old) != _comparable(config.to_dict()):
            raise ConfigError(
                f"{run_dir} holds a run with other settings; pass --force to retrain it or --out to write elsewhere"
            )
        results = run_dir / "results.json"
        if results.is_file():
            res = json.loads(results.read_text())
            res.setdefault("run_dir", str(run_dir))
            return res, "reused"
        if (run_dir / "last.pt").is_file():
            return train(config, resume=run_dir), "resumed"
        raise ConfigError(f"{run_dir} holds an unfinished run without last.pt; pass --force to retrain it")
    return train(config), "trained"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train plain / CBAM / spatial-transformer / AACN CNNs on cluttered digits and compare",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="parent of the run directories (default: runs/demo)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help=f"epochs per variant, AACN's plain run included (default: {DEMO_EPOCHS})")
    p.add_argument("--train-size", type=int, default=DEMO_TRAIN_SIZE,
                   help=f"training images (default: {DEMO_TRAIN_SIZE})")
    p.add_argument("--val-size", type=int, default=DEMO_VAL_SIZE, help=f"validation images (default: {DEMO_VAL_SIZE})")
    p.add_argument("--test-size", type=int, default=DEMO_TEST_SIZE, help=f"test images (default: {DEMO_TEST_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the models (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--jobs", type=int, default=0,
                   help="runs trained at once, each in its own process; 0 (default): one per CPU core, "
                        "up to the number of variants (1 on CUDA)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per run (torch.set_num_threads); 0 (default): the cores shared out among "
                        "the --jobs runs (one each on 2 cores)")
    p.add_argument("--no-viz", action="store_true", help="skip the attention figures and the HTML report")
    p.add_argument("--loc-size", type=int, default=DEMO_LOC_SIZE,
                   help=f"test images whose digit boxes the attention maps are scored against (default: {DEMO_LOC_SIZE})")
    p.add_argument("--no-localization", dest="localization", action="store_false",
                   help="skip scoring the attention maps against the digits' boxes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="retrain runs that already exist under --out")
    p.set_defaults(func=run)


def _build_kernels(libraries: tuple[str, ...]) -> None:
    """Build (or find built) the C++ kernel ``libraries``; a failed build is left to the runs that need them
    (they warn and use the PyTorch-op paths)."""
    from ..layers import _ext

    if _ext.extensions_enabled():
        try:
            _ext.build(libraries)
        except Exception:  # reported by the layer that loads them, with the fallback it takes
            pass


def _score_and_draw(
    res: dict[str, Any], *, loc_size: int | None, device: str, viz: bool, progress: bool = False
) -> dict[str, Any]:
    """After a run, in the process that trained it: score its maps against the test digits' boxes
    (``loc_size`` images, unless results.json holds those scores; ``None``: no scoring) and draw its
    attention figures (``viz``)."""
    run_dir = Path(res["run_dir"])
    if loc_size is not None:
        res["localization"] = _localization(res, images=loc_size, device=device, progress=progress)
    if viz:
        try:
            from ..viz import visualize_run
        except ImportError as exc:
            res["figures"] = f"figures skipped: convattn.viz is not available ({exc})"
        else:
            fig_dir = run_dir / "figures"
            res["figures"] = f"{len(visualize_run(run_dir, count=8, out_dir=fig_dir))} figures in {fig_dir}"
    return res


def _localization(res: dict[str, Any], *, images: int, device: str = "auto", progress: bool = False) -> dict[str, Any]:
    """The run's localisation scores on ``images`` test images: those in results.json, else scored now
    (:func:`convattn.eval.localize_run`, which stores them there)."""
    from ..eval import localize_run

    loc = res.get("localization")
    if isinstance(loc, dict) and loc.get("split") == "test" and loc.get("images") == images:
        return loc
    return localize_run(res["run_dir"], split="test", size=images, device=device, progress=progress)


def localization_table(rows: list[dict[str, Any]], *, images: int, device: str = "auto", progress: bool = False) -> str:
    """Tabulate how well every run's spatial attention maps, transformer window and Grad-CAM find the
    test digits' boxes (scored here for runs whose results do not hold scores on ``images`` test images)."""
    from tabulate import tabulate

    table, loc = [], None
    for r in rows:
        loc = r["localization"] = _localization(r, images=images, device=device, progress=progress)
        for name, m in loc["maps"].items():
            shown = f"Grad-CAM ({m['layer']})" if m["kind"] == "grad-cam" else name
            table.append((r["variant"], shown, m["kind"], f"{100 * m['pointing']:.1f}", f"{100 * m['energy']:.1f}",
                          "-" if m.get("iou") is None else f"{100 * m['iou']:.1f}"))
    text = tabulate(table, headers=["variant", "map", "kind", "pointing %", "energy in box %", "window IoU %"],
                    disable_numparse=True,
                    colalign=("left", "left", "left", "right", "right", "right"))
    if loc is not None:
        text += (f"\n{loc['images']} test images; the digit's box covers {100 * loc['box_share']:.1f}% of the image "
                 f"(a uniform map's energy in box) and a constant map points at it {100 * loc['pointing_chance']:.1f}% "
                 f"of the time (tolerance {loc['tolerance_px']:.1f} px = 15/224 of the side)")
    return text


def run(args: argparse.Namespace) -> int:
    """Train the demo variants, print the comparison table, write figures and a report."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"--variants takes a comma-separated subset of {','.join(VARIANTS)}, got {args.variants!r}")
    for name in ("epochs", "train_size", "val_size", "test_size", "loc_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("jobs", "threads"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} must be >= 0 (0: automatic), got {getattr(args, name)}")
    return _run(args, variants)


def _jobs_and_threads(args: argparse.Namespace, runs: int) -> tuple[int, int]:
    """``--jobs`` / ``--threads``, with 0 replaced by one run per core (one on CUDA) and the cores shared out."""
    from ..engine.distributed import resolve_device

    cores = usable_cores()
    jobs = args.jobs or (1 if resolve_device(args.device).type == "cuda" else max(1, min(cores, runs)))
    return jobs, args.threads or max(1, cores // jobs)


def _run(args: argparse.Namespace, variants: list[str]) -> int:
    from tabulate import tabulate

    out = Path(args.out)
    rows = []
    start = time.perf_counter()
    jobs, threads = _jobs_and_threads(args, len(variants))
    configs, notes = {}, []
    for v in variants:
        configs[v] = make_configs(
            v, out=out / v, epochs=args.epochs, train_size=args.train_size, val_size=args.val_size,
            test_size=args.test_size, seed=args.seed, device=args.device,
            progress=not args.no_progress and jobs == 1, tensorboard=False,
        )
        *before, cfg = configs[v]
        name = cfg.model + (f" + {cfg.attention}" if cfg.attention else "")
        if before:  # a from_plain variant: its plain run, then the variant from it
            plain = before[0]
            print(f"[demo] {v}: {plain.model} for {plain.epochs} epochs -> {plain.out}, then {name} from it for "
                  f"{cfg.epochs}, on {cfg.train_size} {cfg.dataset} images -> {cfg.out}", file=sys.stderr)
            notes.append(f"{v}: {plain.model} for the first {plain.epochs} of the {plain.epochs + cfg.epochs} epochs "
                         f"({plain.out}), then {cfg.model} from it (s/epoch: the last {cfg.epochs})")
        else:
            print(f"[demo] {v}: {name}, {cfg.epochs} epochs on {cfg.train_size} {cfg.dataset} images -> {cfg.out}",
                  file=sys.stderr)
    print(f"[demo] {jobs} run(s) at a time, {threads} thread(s) each", file=sys.stderr, flush=True)

    def done(v: str, res: dict[str, Any], how: str, secs: float) -> None:
        print(f"[demo] {v}: {how} in {secs:.0f} s, test accuracy {100 * res['test_acc']:.1f}%", file=sys.stderr, flush=True)

    order = sorted(variants, key=lambda v: START_ORDER.index(v) if v in START_ORDER else len(START_ORDER))
    builds: dict[str, tuple[str, ...]] = {}
    if jobs > 1:  # the run started just before one that needs kernels builds them first (START_ORDER)
        for before, v in zip(order, order[1:]):
            builds[before] = builds.get(before, ()) + KERNELS.get(v, ())
    prepare = {v: partial(_build_kernels, libraries) for v, libraries in builds.items() if libraries}
    # each run's localisation scores and figures are made where it trained, beside the runs still training
    after = partial(_score_and_draw, loc_size=args.loc_size if args.localization else None, device=args.device,
                    viz=not args.no_viz, progress=not args.no_progress and jobs == 1)
    results = train_runs({v: configs[v] for v in order}, jobs=jobs, threads=threads, force=args.force, on_done=done,
                         prepare=prepare, after=after)
    for v in variants:
        res, how, _ = results[v]
        rows.append({"variant": v, "run_dir": res.get("run_dir", configs[v][-1].out), "how": how, **res})
    table = [
        (r["variant"], VARIANTS[r["variant"]]["model"], VARIANTS[r["variant"]].get("attention") or "-",
         f"{100 * r['test_acc']:.1f}", f"{r['params']:,}", f"{r['epoch_time']:.1f}", r["run_dir"])
        for r in rows
    ]
    print(tabulate(table, headers=["variant", "model", "attention", "test acc %", "params", "s/epoch", "run dir"],
                   disable_numparse=True, colalign=("left", "left", "left", "right", "right", "right", "left")))
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
        print(localization_table(rows, images=args.loc_size, device=args.device, progress=not args.no_progress))
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
