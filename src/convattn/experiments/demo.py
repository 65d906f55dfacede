"""The demo (``convattn demo``): a preset of :func:`~convattn.experiments.compare`, and its localisation table.

One backbone (``simple_cnn``) on the embedded cluttered-digits dataset, four ways of attending:
plain, CBAM, a spatial transformer, and AACN (attention-pooling heads) started from a plain run
within the same epochs (compare's ``from_plain``). After each run, in the process that trained it,
compare scores its attention maps against the digits' boxes and the demo draws its figures
(:func:`draw_figures`). ``benchmarks/train_accuracy.py`` runs the same variants over more seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .compare import compare, compare_configs, parse_seeds
from .runs import jobs_and_threads

__all__ = [
    "VARIANTS", "DATASET", "SHARED", "DEMO_EPOCHS", "DEMO_TRAIN_SIZE", "DEMO_VAL_SIZE", "DEMO_TEST_SIZE",
    "DEMO_NUM_IMAGES", "START_ORDER", "KERNELS", "run_demo", "make_configs", "start_order", "kernel_builds",
    "build_kernels", "draw_figures", "chain_notes", "localization_table",
]

#: The demo's variants: one backbone (``simple_cnn``), four ways of attending. Each entry is
#: ``TrainConfig`` fields over :data:`SHARED` and the model's recipe; adding a run to the demo (and to
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
    # simple_cnn (SHARED) for 2/3 of the epochs (a run of its own), then from it (init_from) attention + decision
    # with the features frozen and features + decision with the attention frozen, alternating. Trained
    # in one run instead (the recipe's own feature stage), AACN trailed plain (docs/benchmarks.md).
    "aacn": {"model": "aacn", "attention": None, "recipe": "staged", "from_plain": True},
}

#: The demo's data; each variant trains with its model's default recipe
#: (:mod:`convattn.engine.recipes`: AdamW, lr 5e-3, 0.2 warm-up epochs then cosine, batch 32).
DATASET = "cluttered-digits"
#: The fields every demo run shares: the plain run a ``from_plain`` variant starts from is ``simple_cnn``.
SHARED: dict[str, Any] = {"model": "simple_cnn", "dataset": DATASET}

DEMO_EPOCHS = 6
DEMO_TRAIN_SIZE = 6000
DEMO_VAL_SIZE = 1000
DEMO_TEST_SIZE = 2000
#: Test images whose digit boxes the attention maps are scored against.
DEMO_NUM_IMAGES = 500

#: The order the demo's runs start in. Two at a time, the longest (CBAM: its epochs and its kernels'
#: build) goes beside the others: STN (the shortest) and CBAM in one worker, plain and AACN in the
#: other, which builds CBAM's kernels before it trains plain, so that they are ready when CBAM starts.
START_ORDER = ("stn", "plain", "cbam", "aacn")

#: The C++ kernel libraries a variant's layers run (:mod:`convattn.layers.kernels`); the run that starts
#: just before it builds them first, in its own worker.
KERNELS = {"cbam": ("convattn_cbam",)}


def run_demo(
    variants: Sequence[str] = tuple(VARIANTS),
    *,
    seeds: int | Sequence[int] = (0,),
    out: str | Path = "runs/demo",
    jobs: int = 0,
    threads: int = 0,
    localize: int = DEMO_NUM_IMAGES,
    viz: bool = True,
    force: bool = False,
    on_done: Callable[[str, int, dict[str, Any], str, float], None] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """:func:`~convattn.experiments.compare` of the demo's ``variants`` on :data:`SHARED` (default sizes and epochs:
    the ``DEMO_*`` constants; ``fields`` over them), runs started in :data:`START_ORDER` with CBAM's kernels built
    beside the run before it, each run's maps scored on ``localize`` test images and drawn (``viz``). Returns
    compare's table."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"demo variants: expected a subset of {', '.join(VARIANTS)}, got {', '.join(variants) or 'none'}")
    fields = {**SHARED, "epochs": DEMO_EPOCHS, "train_size": DEMO_TRAIN_SIZE, "val_size": DEMO_VAL_SIZE,
              "test_size": DEMO_TEST_SIZE, **fields}
    seeds = parse_seeds(seeds)
    jobs, threads = jobs_and_threads(jobs, threads, runs=len(variants) * len(seeds), device=fields.get("device", "auto"))
    order = start_order(list(variants))
    return compare({v: VARIANTS[v] for v in variants}, seeds=seeds, out=out, baseline=variants[0], jobs=jobs,
                   threads=threads, force=force, on_done=on_done, start=order, prepare=kernel_builds(order, jobs),
                   after=partial(draw_figures, count=8) if viz else None, localize=localize, **fields)


def make_configs(variant: str, *, out: str | Path, seed: int = 0, **fields: Any) -> list:
    """The runs of one demo variant as :func:`run_demo` trains them under ``out`` (its own run last)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown demo variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return compare_configs({variant: VARIANTS[variant]}, [seed], out=out, **{**SHARED, **fields})[(variant, seed)]


def start_order(variants: list[str]) -> list[str]:
    """``variants`` in the order their runs start (:data:`START_ORDER`; others after)."""
    return sorted(variants, key=lambda v: START_ORDER.index(v) if v in START_ORDER else len(START_ORDER))


def kernel_builds(order: list[str], jobs: int) -> dict[str, partial]:
    """``train_runs``' ``prepare``: with ``jobs > 1``, the run started just before one whose layers run
    C++ kernels (:data:`KERNELS`) builds them first; one at a time, each run builds its own."""
    builds: dict[str, tuple[str, ...]] = {}
    if jobs > 1:
        for before, v in zip(order, order[1:]):
            builds[before] = builds.get(before, ()) + KERNELS.get(v, ())
    return {v: partial(build_kernels, libraries) for v, libraries in builds.items() if libraries}


def build_kernels(libraries: tuple[str, ...]) -> None:
    """Build (or find built) the C++ kernel ``libraries``; a failed build is left to the runs that need them
    (they warn and use the PyTorch-op paths)."""
    from ..layers import kernels

    if kernels.extensions_enabled():
        try:
            kernels.build(libraries)
        except Exception:  # reported by the layer that loads them, with the fallback it takes
            pass


def draw_figures(res: dict[str, Any], *, count: int = 8) -> dict[str, Any]:
    """After a run, in the process that trained it: draw its attention figures on ``count`` test images into
    ``<run>/figures`` (:func:`convattn.viz.visualize_run`); ``res["figures"]`` says what was written."""
    try:
        from ..viz import visualize_run
    except ImportError as exc:
        res["figures"] = f"figures skipped: convattn.viz is not available ({exc})"
    else:
        fig_dir = Path(res["run_dir"]) / "figures"
        res["figures"] = f"{len(visualize_run(res['run_dir'], count=count, out_dir=fig_dir))} figures in {fig_dir}"
    return res


def chain_notes(table: dict[str, Any]) -> list[str]:
    """A line per variant of ``table`` (:func:`run_demo`'s) that started from a plain run: which, for how long."""
    notes = []
    for row in table["rows"]:
        if not VARIANTS.get(row["variant"], {}).get("from_plain"):
            continue
        for r in row["runs"]:
            if r.get("run_dir") is None:
                continue
            *before, own = make_configs(row["variant"], out=Path(r["run_dir"]).parent.parent, seed=r["seed"],
                                        **{k: v for k, v in table["fields"].items() if k not in SHARED})
            plain = before[0]
            notes.append(f"{row['variant']} seed {r['seed']}: {plain.model} for the first {plain.epochs} of the "
                         f"{plain.epochs + own.epochs} epochs ({plain.out}), then {own.model} from it "
                         f"(s/epoch: the last {own.epochs})")
    return notes


def localization_table(records: list[dict[str, Any]]) -> str:
    """How well every scored run's spatial attention maps, transformer window and Grad-CAM find the test digits'
    boxes (``records``: compare's, with the ``localization`` it scored); empty when none was scored."""
    from tabulate import tabulate

    table, loc = [], None
    for r in records:
        if not isinstance(r.get("localization"), dict):
            continue
        loc = r["localization"]
        for name, m in loc["maps"].items():
            shown = f"Grad-CAM ({m['layer']})" if m["kind"] == "grad-cam" else name
            table.append((r["variant"], r["seed"], shown, m["kind"], f"{100 * m['pointing']:.1f}",
                          f"{100 * m['energy']:.1f}", "-" if m.get("iou") is None else f"{100 * m['iou']:.1f}"))
    if loc is None:
        return ""
    text = tabulate(table, headers=["variant", "seed", "map", "kind", "pointing %", "energy in box %", "window IoU %"],
                    disable_numparse=True, colalign=("left", "right", "left", "left", "right", "right", "right"))
    return text + (f"\n{loc['images']} test images; the digit's box covers {100 * loc['box_share']:.1f}% of the image "
                   f"(a uniform map's energy in box) and a constant map points at it {100 * loc['pointing_chance']:.1f}% "
                   f"of the time (tolerance {loc['tolerance_px']:.1f} px = 15/224 of the side)")
