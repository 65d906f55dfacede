"""The demo's variants (``convattn demo``, ``benchmarks/train_accuracy.py``) and its tables.

One backbone (``simple_cnn``) on the embedded cluttered-digits dataset, four ways of attending:
plain, CBAM, a spatial transformer, and AACN (attention-pooling heads) started from a plain run
within the same epochs. After each run, in the process that trained it, its attention maps are
scored against the digits' boxes and drawn (:func:`score_and_draw`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "VARIANTS", "DATASET", "DEMO_EPOCHS", "DEMO_TRAIN_SIZE", "DEMO_VAL_SIZE", "DEMO_TEST_SIZE", "DEMO_NUM_IMAGES",
    "START_ORDER", "KERNELS", "variant_configs", "make_configs", "start_order", "kernel_builds", "build_kernels",
    "score_and_draw", "localization", "localization_table", "accuracy_table",
]

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
    # in one run instead (the recipe's own feature stage), AACN trailed plain (docs/benchmarks.md).
    "aacn": {"model": "aacn", "attention": None, "recipe": "staged", "from_plain": True},
}

#: The demo's data; each variant trains with its model's default recipe
#: (:mod:`convattn.engine.recipes`: AdamW, lr 5e-3, 0.2 warm-up epochs then cosine, batch 32).
DATASET = "cluttered-digits"

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


def score_and_draw(
    res: dict[str, Any], *, loc_size: int | None, device: str, viz: bool, progress: bool = False
) -> dict[str, Any]:
    """After a run, in the process that trained it: score its maps against the test digits' boxes
    (``loc_size`` images, unless results.json holds those scores; ``None``: no scoring) and draw its
    attention figures (``viz``)."""
    run_dir = Path(res["run_dir"])
    if loc_size is not None:
        res["localization"] = localization(res, images=loc_size, device=device, progress=progress)
    if viz:
        try:
            from ..viz import visualize_run
        except ImportError as exc:
            res["figures"] = f"figures skipped: convattn.viz is not available ({exc})"
        else:
            fig_dir = run_dir / "figures"
            res["figures"] = f"{len(visualize_run(run_dir, count=8, out_dir=fig_dir))} figures in {fig_dir}"
    return res


def localization(res: dict[str, Any], *, images: int, device: str = "auto", progress: bool = False) -> dict[str, Any]:
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
        loc = r["localization"] = localization(r, images=images, device=device, progress=progress)
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


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """Test accuracy, parameters, seconds per epoch and run directory of each variant's run."""
    from tabulate import tabulate

    table = [
        (r["variant"], VARIANTS[r["variant"]]["model"], VARIANTS[r["variant"]].get("attention") or "-",
         f"{100 * r['test_acc']:.1f}", f"{r['params']:,}", f"{r['epoch_time']:.1f}", r["run_dir"])
        for r in rows
    ]
    return tabulate(table, headers=["variant", "model", "attention", "test acc %", "params", "s/epoch", "run dir"],
                    disable_numparse=True, colalign=("left", "left", "left", "right", "right", "right", "left"))
