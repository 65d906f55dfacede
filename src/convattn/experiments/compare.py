"""``compare``: train variants × seeds and tabulate them against a baseline.

Each variant is a set of ``TrainConfig`` fields over the fields every run shares (and the model's
recipe); each runs once per seed into ``<out>/<variant>/seed<k>``. Runs go through
:func:`~convattn.experiments.train_runs`, so they train in parallel (one thread each), finished runs
whose settings match are reused and interrupted ones resumed: stopping a comparison and running it
again continues it. A run that fails is a row entry (``failed``, ``diverged``), not the end of the others.

A variant whose fields say ``from_plain: true`` starts from a plain run (the shared fields, no attention) in the
same epochs (AACN's staged recipe in the demo): the plain run for :func:`~convattn.engine.recipes.aacn_feature_epochs`
of them into ``<out>/_plain/e<N>-seed<k>``, then the variant from it (``init_from``) for the rest. Variants of
one seed share that plain run (trained first when several need it). When the data has object boxes, each
finished run's maps are scored against them after it trains (``localize`` test images, in the worker that
trained it), and the table gets pointing-game and energy-in-box columns.

``compare(..., dry_run=True)`` trains nothing and lists each run with the ``convattn train`` command that
makes it elsewhere (a job array, Slurm); :func:`collect` tabulates run directories made anywhere.

Example:
    >>> train_argv({"attention": "se", "model_kwargs": {"identity_init": True}, "tensorboard": False})
    ['convattn', 'train', '--attention', 'se', '--model-kwargs', 'identity_init=true', '--no-tensorboard']
    >>> variant_specs(["none", "se"]) == {"none": {"attention": None}, "se": {"attention": "se"}}
    True
    >>> parse_seeds("3"), parse_seeds("0,3,7")
    ([0, 1, 2], [0, 3, 7])
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .runs import check_launcher, jobs_and_threads, run_state, train_runs
from .table import PLAIN_RUNS, comparison_table, records_from_dir, run_flops, run_record, write_table

__all__ = ["compare", "compare_configs", "collect", "train_argv", "variant_specs", "read_variants",
           "parse_seeds", "run_localization", "LOCALIZE_IMAGES"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: Fields ``compare`` sets on every run itself.
_OWN_FIELDS = ("seed", "out")
#: Test images whose object boxes each run's maps are scored against, by default (data with boxes only).
LOCALIZE_IMAGES = 500


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``N`` (seeds 0..N-1) or a comma-separated list (``0,3,7``; one seed alone: ``5,``)."""
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        seeds = list(text)
    else:
        parts = [p.strip() for p in text.split(",")]
        try:
            seeds = [int(p) for p in parts if p] if "," in text else list(range(int(text)))
        except ValueError:
            raise ConfigError(f"--seeds expects a count N or a list like 0,3,7, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"--seeds expects at least one seed, distinct and >= 0, got {text!r}")
    return seeds


def variant_specs(variants: Mapping[str, Mapping[str, Any] | None] | Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{name: TrainConfig fields}``; a list of attention names gives one variant per name (``none``: no layer)."""
    if isinstance(variants, str):
        raise ConfigError(f"variants: expected a list of attention names or a mapping of named variants, got {variants!r}")
    if not isinstance(variants, Mapping):
        variants = {str(a): {"attention": None if str(a).lower() == "none" else str(a)} for a in variants}
    specs = {}
    for name, spec in variants.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"a variant name must be letters, digits, '_', '.', '+' or '-' (a folder name), got {name!r}")
        if spec is not None and not isinstance(spec, Mapping):
            raise ConfigError(f"variant {name}: expected a mapping of TrainConfig fields, got {type(spec).__name__}")
        specs[name] = dict(spec or {})
    if not specs:
        raise ConfigError("compare: expected at least one variant, got none")
    return specs


def read_variants(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file's variants: a mapping of names to TrainConfig fields (a mapping) or train flags (a string;
    ``convattn compare`` parses those)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"variants file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"variants file {str(path)!r} must map variant names to fields or flags, "
                          f"got {type(data).__name__}")
    for name, spec in data.items():
        if spec is not None and not isinstance(spec, (dict, str)):
            raise ConfigError(f"variants file {str(path)!r}: variant {name} must be a mapping of fields or a string "
                              f"of train flags, got {type(spec).__name__}")
    return data


def compare_configs(variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], *, out: str | os.PathLike,
                    **fields: Any) -> dict[tuple[str, int], list]:
    """``{(variant, seed): [TrainConfig, ...]}`` in start order (every variant's first seed, then the next ...): the
    runs of each, in training order, its own run last: the model's recipe < ``fields`` < the variant's fields, in
    ``<out>/<variant>/seed<k>``; a ``from_plain`` variant's plain run first (see the module's docstring)."""
    from ..engine import resolve_config
    from ..engine.config import check_names

    check_names(fields, "compare")
    for where, given in (("compare", fields), *((f"variant {v}", s) for v, s in variants.items())):
        given = dict(given)
        from_plain = given.pop("from_plain", False)
        if not isinstance(from_plain, bool):
            raise ConfigError(f"{where}: from_plain expects true or false, got {from_plain!r}")
        check_names(given, where)
        taken = [k for k in _OWN_FIELDS if k in given]
        if taken:
            raise ConfigError(f"{where}: compare sets {' and '.join(taken)} itself (--seeds, --out), "
                              f"got {', '.join(f'{k}={given[k]!r}' for k in taken)}")
    return {key: [resolve_config(g)[0] for g in chain] for key, chain in _given_chains(variants, seeds, out, fields).items()}


def _given_chains(variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], out: str | os.PathLike,
                  fields: Mapping[str, Any]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """``{(variant, seed): the fields given for each run of its chain}`` in start order: what each recipe is
    resolved under."""
    from ..engine import resolve_config
    from ..engine.recipes import aacn_feature_epochs

    chains = {}
    for seed in seeds:
        for name, spec in variants.items():
            own = {**fields, **spec, "seed": seed, "out": str(Path(out) / name / f"seed{seed}")}
            if not own.pop("from_plain", False):
                chains[(name, seed)] = [own]
                continue
            total = resolve_config(own)[0].epochs
            if total < 2:
                raise ConfigError(f"variant {name} starts from a plain run: it needs epochs >= 2 "
                                  f"(the plain run, then its own), got {total}")
            first = aacn_feature_epochs(total)
            plain = {**fields, "attention": None, "epochs": first, "seed": seed,
                     "out": str(Path(out) / PLAIN_RUNS / f"e{first}-seed{seed}")}
            chains[(name, seed)] = [plain, {**own, "epochs": total - first, "init_from": plain["out"]}]
    return chains


def _flag_value(value: Any) -> str:
    """A dict option's value as ``convattn train`` reads it back (YAML): plain text where that is exact, else JSON."""
    import yaml

    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def train_argv(fields: Mapping[str, Any]) -> list[str]:
    """``["convattn", "train", flags...]`` whose flags give exactly ``fields`` (TrainConfig fields), so that the
    command resolves the same config as ``resolve_config(fields)``; an empty ``freeze`` is left out (the default)."""
    from ..engine import TrainConfig

    kinds = {f.name: f for f in dataclasses.fields(TrainConfig)}
    argv = ["convattn", "train"]
    for name, value in fields.items():
        flag, kind = "--" + name.replace("_", "-"), str(kinds[name].type).replace(" ", "")
        if kind.split("|")[0] == "bool" and isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif kind.startswith("dict"):
            argv += [flag, *(f"{k}={_flag_value(v)}" for k, v in value.items())] if value else [flag, "none"]
        elif kind.startswith("list") and kinds[name].metadata.get("words"):
            argv += [flag, *map(str, value)] if value else []
        elif kind.startswith("list"):
            argv += [flag, json.dumps(value)]
        else:
            argv += [flag, "none" if value is None else str(value)]
    return argv


def compare(
    variants: Mapping[str, Mapping[str, Any]] | Sequence[str],
    *,
    seeds: int | Sequence[int] = 3,
    out: str | os.PathLike = "runs/compare",
    baseline: str | None = None,
    jobs: int = 0,
    threads: int = 0,
    force: bool = False,
    on_done: Callable[[str, int, dict[str, Any], str, float], None] | None = None,
    dry_run: bool = False,
    start: Sequence[str] | None = None,
    prepare: Mapping[str, Callable[[], Any]] | None = None,
    after: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    localize: int = LOCALIZE_IMAGES,
    launcher: str = "local",
    address: str | None = None,
    cpus_per_run: int | None = None,
    gpus_per_run: float | None = None,
    **fields: Any,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Train every variant with every seed and compare them with the baseline (the first unless named).

    Args:
        variants: ``{name: TrainConfig fields}`` (over ``fields``; ``from_plain: true`` starts the variant from a
            plain run), or attention names (``["none", "se"]``).
        seeds: a count ``N`` (seeds 0..N-1) or the seeds.
        out: parent of the run directories ``<out>/<variant>/seed<k>`` and of ``compare.md|csv|json``.
        baseline: the variant the others are compared with.
        jobs, threads: runs at a time and torch threads per run (0: automatic, one run per core).
        force: retrain runs that exist.
        on_done: called as each run ends with ``(variant, seed, results, how, seconds)``.
        dry_run: train nothing; return the runs instead.
        start: the variants in the order their runs start within a seed (default: as given; others after).
        prepare: ``{variant: prepare()}`` run before each of that variant's runs, in the process that trains it
            (:func:`~convattn.experiments.train_runs`' ``prepare``: e.g. building C++ kernels for the next run).
        after: ``after(results) -> results`` after each variant's run, in the process that trained it (figures).
        localize: test images whose object boxes each finished run's maps are scored against, when its data has
            boxes (:func:`run_localization`); 0: none.
        launcher, address, cpus_per_run, gpus_per_run: ``"local"`` (the default: ``jobs`` worker processes here)
            or ``"ray"``: each run a Ray task with ``cpus_per_run`` CPUs (default 1) and ``gpus_per_run`` GPUs
            (default 0) on the cluster at ``address`` (:func:`~convattn.experiments.train_runs`; ``out`` on
            storage every node sees).
        fields: ``TrainConfig`` fields every run shares (``model``, ``dataset``, ``epochs`` ...).

    Returns:
        the table of :func:`~convattn.experiments.table.comparison_table` plus ``"seeds"``, ``"jobs"``,
        ``"threads"`` and ``"files"`` (the tables written). With ``dry_run``, one ``{"variant", "seed", "out",
        "argv", "state", "stage"}`` per run in start order (a plain run shared by several variants once, its
        ``stage`` ``"plain run"``, else ``"variant"``): ``argv`` the ``convattn train`` command that makes the run
        elsewhere (with ``--resume`` where the run exists and is ``"finished"`` or ``"interrupted"``), ``state``
        what compare would do with it (:func:`run_state`).

    With ``jobs != 1`` ``prepare`` and ``after`` must pickle (module-level functions, or ``functools.partial`` of
    one), and a script calling this on a machine of several cores needs the ``if __name__ == "__main__":``
    guard that spawned processes require.
    """
    specs = variant_specs(variants)
    check_launcher(launcher, address, cpus_per_run, gpus_per_run)
    seeds = parse_seeds(seeds)
    if baseline is not None and baseline not in specs:
        raise ConfigError(f"--baseline must name a variant ({', '.join(specs)}), got {baseline!r}")
    unknown = [v for v in [*(start or ()), *(prepare or {})] if v not in specs]
    if unknown:
        raise ConfigError(f"compare: start and prepare must name variants ({', '.join(specs)}), got {unknown[0]!r}")
    if localize < 0:
        raise ConfigError(f"compare: localize expects a number of test images >= 0, got {localize}")
    starting = {name: specs[name] for name in sorted(specs, key=lambda v: list(start or specs).index(v)
                                                      if v in (start or specs) else len(specs))}
    fields.setdefault("tensorboard", False)
    jobs, threads = jobs_and_threads(jobs, threads, runs=len(specs) * len(seeds), device=fields.get("device", "auto"))
    if jobs > 1:
        fields["progress"] = False
    chains = compare_configs(starting, seeds, out=out, **fields)
    if dry_run:
        return _planned(_given_chains(starting, seeds, out, fields), chains, force)
    print(f"[compare] {len(specs)} variant(s) x {len(seeds)} seed(s) = {len(chains)} runs under {out}; "
          f"{jobs} at a time, {threads} thread(s) each", file=sys.stderr, flush=True)

    def done(key: tuple[str, int], res: dict[str, Any], how: str, secs: float) -> None:
        acc = res.get("test_acc") if res.get("status", "finished") == "finished" else None
        shown = f"test accuracy {100 * acc:.2f}%" if acc is not None else f"{res.get('status')}: {res.get('reason', '')}"
        print(f"[compare] {key[0]} seed {key[1]}: {how} in {secs:.0f} s, {shown}", file=sys.stderr, flush=True)
        if on_done is not None and key[0] in specs:
            on_done(key[0], key[1], res, how, secs)

    boxed = _boxed_runs([c[-1] for c in chains.values()]) if localize else frozenset()
    finish = partial(_finish_run, localize=localize, boxed=boxed, device=fields.get("device", "auto"), then=after)
    launch = {"launcher": launcher, "address": address, "cpus_per_run": cpus_per_run, "gpus_per_run": gpus_per_run}
    results = _shared_plain_runs(chains, jobs=jobs, threads=threads, force=force, on_done=done, **launch)
    todo = {k: c for k, c in chains.items() if k not in results}
    results.update(train_runs(todo, jobs=jobs, threads=threads, force=force, on_done=done, keep_going=True, **launch,
                              prepare={k: prepare[k[0]] for k in todo if k[0] in (prepare or {})}, after=finish))
    flops: dict[str, int | None] = {}
    records = []
    for (name, seed), chain in chains.items():
        res, how, secs = results[(name, seed)]
        if flops.get(name) is None and res.get("status", "finished") == "finished":
            flops[name] = res["flops"] if "flops" in res else run_flops(chain[-1].out)
        records.append(run_record({"run_dir": chain[-1].out, **res}, variant=name, seed=seed, how=how, seconds=secs))
    for r in records:
        r["flops"] = flops.get(r["variant"])
    order = {name: i for i, name in enumerate(specs)}
    records.sort(key=lambda r: (order[r["variant"]], seeds.index(r["seed"])))
    table = comparison_table(records, baseline=baseline)
    table.update(seeds=seeds, jobs=jobs, threads=threads,
                 variants={name: spec for name, spec in specs.items()}, fields=dict(fields))
    table["files"] = [str(p) for p in write_table(table, out)]
    return table


def _planned(given: dict[tuple[str, int], list[dict[str, Any]]], chains: dict[tuple[str, int], list],
             force: bool) -> list[dict[str, Any]]:
    """The dry run's list: every run of every chain in start order, a shared plain run once."""
    planned, seen = [], set()
    for key, runs in given.items():
        for i, (g, cfg) in enumerate(zip(runs, chains[key])):
            if g["out"] in seen:
                continue
            seen.add(g["out"])
            state = run_state(cfg, force=force)
            argv = train_argv(g) + (["--resume", g["out"]] if state in ("finished", "interrupted") else [])
            planned.append({"variant": key[0], "seed": key[1], "out": g["out"], "argv": argv, "state": state,
                            "stage": "variant" if i == len(runs) - 1 else "plain run"})
    return planned


def _shared_plain_runs(chains: dict[tuple[str, int], list], **kw: Any) -> dict[tuple[str, int], tuple[dict, str, float]]:
    """Train the plain runs that several chains start from (two chains must not train one run at once); return
    the failed chains' results: those whose plain run failed, which are not trained."""
    users: dict[str, list[tuple[str, int]]] = {}
    for key, chain in chains.items():
        if len(chain) > 1:
            users.setdefault(chain[0].out, []).append(key)
    shared = {keys[0]: chains[keys[0]][:1] for keys in users.values() if len(keys) > 1}
    if not shared:
        return {}
    on_done = kw.pop("on_done")
    ran = train_runs(shared, keep_going=True, on_done=lambda k, res, how, secs: on_done(
        (f"plain run of {', '.join(v for v, _ in users[chains[k][0].out])}", k[1]), res, how, secs), **kw)
    failed = {}
    for key, (res, how, secs) in ran.items():
        if how == "failed":
            for user in users[chains[key][0].out]:
                failed[user] = ({**res, "reason": f"its plain run failed: {res.get('reason')}",
                                 "run_dir": chains[user][-1].out}, how, secs)
    return failed


def _boxed_runs(configs: list) -> frozenset[str]:
    """The run directories (resolved) of ``configs`` whose test data has object boxes (checked once per dataset)."""
    from ..data import build_dataset

    seen: dict[tuple, bool] = {}
    for cfg in configs:
        key = (cfg.dataset, cfg.data_dir, cfg.distort, json.dumps(cfg.image_size))
        if key not in seen:
            try:
                ds = build_dataset(cfg.dataset, "test", data_dir=cfg.data_dir, test_size=1, distort=cfg.distort,
                                   augment=False, image_size=cfg.image_size)
                seen[key] = callable(getattr(ds, "with_boxes", None)) and ds.with_boxes() is not None
            except (ConfigError, OSError):  # no boxes, boxes a distortion moves, or data a run will report missing
                seen[key] = False
    return frozenset(str(Path(c.out).resolve()) for c in configs
                     if seen[(c.dataset, c.data_dir, c.distort, json.dumps(c.image_size))])


def _finish_run(res: dict[str, Any], *, localize: int, boxed: frozenset[str], device: str,
                then: Callable[[dict[str, Any]], dict[str, Any]] | None) -> dict[str, Any]:
    """``train_runs``' ``after``, in the worker that trained the run (its modules loaded, beside the other runs):
    count the model's FLOPs, score its maps against its data's boxes, then ``then(results)``. Scores that cannot
    be made are left out (with one line saying why): the run itself finished."""
    res["flops"] = run_flops(res["run_dir"])
    if localize and str(Path(res["run_dir"]).resolve()) in boxed:
        try:
            res["localization"] = run_localization(res, images=localize, device=device)
        except Exception as exc:  # a missing score is a gap in the table, not a failed run
            lines = str(exc).strip().splitlines()
            print(f"localisation not scored: {type(exc).__name__}: {lines[0] if lines else ''}", file=sys.stderr)
    return res if then is None else then(res)


def run_localization(res: dict[str, Any], *, images: int, device: str = "auto", progress: bool = False) -> dict[str, Any]:
    """A finished run's localisation scores on ``images`` test images: those in its results, else scored now
    (:func:`convattn.eval.localize_run`, which stores them in results.json)."""
    from ..eval import localize_run

    loc = res.get("localization")
    if isinstance(loc, dict) and loc.get("split") == "test" and loc.get("images") == images:
        return loc
    return localize_run(res["run_dir"], split="test", size=images, device=device, progress=progress)


def collect(root: str | os.PathLike, *, baseline: str | None = None, flops: bool = True) -> dict[str, Any]:
    """The comparison table of the run directories under ``root`` (made by ``compare``, a ``--dry-run``'s commands
    or anything else; :func:`~convattn.experiments.table.records_from_dir`), written to ``<root>/compare.md|csv|json``.
    Trains nothing. Returns the table plus ``"files"``."""
    table = comparison_table(records_from_dir(root, flops=flops), baseline=baseline)
    table["files"] = [str(p) for p in write_table(table, root)]
    return table
