"""``compare``: train variants × seeds and tabulate them against a baseline.

Each variant is a set of ``TrainConfig`` fields over the fields every run shares (and the model's
recipe); each runs once per seed into ``<out>/<variant>/seed<k>``. Runs go through
:func:`~convattn.experiments.train_runs`, so they train in parallel (one thread each), finished runs
whose settings match are reused and interrupted ones resumed: stopping a comparison and running it
again continues it. A run that fails is a row entry (``failed``, ``diverged``), not the end of the others.

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
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from .runs import jobs_and_threads, run_state, train_runs
from .table import comparison_table, records_from_dir, run_flops, run_record, write_table

__all__ = ["compare", "compare_configs", "collect", "train_argv", "variant_specs", "read_variants",
           "parse_seeds"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: Fields ``compare`` sets on every run itself.
_OWN_FIELDS = ("seed", "out")


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
                    **fields: Any) -> dict[tuple[str, int], Any]:
    """``{(variant, seed): TrainConfig}`` in start order (every variant's first seed, then the next ...): each
    the model's recipe < ``fields`` < the variant's fields, in ``<out>/<variant>/seed<k>``."""
    from ..engine import resolve_config
    from ..engine.config import check_names

    check_names(fields, "compare")
    for where, given in (("compare", fields), *((f"variant {v}", s) for v, s in variants.items())):
        check_names(dict(given), where)
        taken = [k for k in _OWN_FIELDS if k in given]
        if taken:
            raise ConfigError(f"{where}: compare sets {' and '.join(taken)} itself (--seeds, --out), "
                              f"got {', '.join(f'{k}={given[k]!r}' for k in taken)}")
    return {key: resolve_config(given)[0] for key, given in _given_fields(variants, seeds, out, fields).items()}


def _given_fields(variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int], out: str | os.PathLike,
                  fields: Mapping[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(variant, seed): the fields given for that run}`` in start order: what the recipe is resolved under."""
    return {(name, seed): {**fields, **spec, "seed": seed, "out": str(Path(out) / name / f"seed{seed}")}
            for seed in seeds for name, spec in variants.items()}


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
    launcher: str = "local",
    address: str | None = None,
    cpus_per_run: int | None = None,
    gpus_per_run: float | None = None,
    **fields: Any,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Train every variant with every seed and compare them with the baseline (the first unless named).

    Args:
        variants: ``{name: TrainConfig fields}`` (over ``fields``), or attention names (``["none", "se"]``).
        seeds: a count ``N`` (seeds 0..N-1) or the seeds.
        out: parent of the run directories ``<out>/<variant>/seed<k>`` and of ``compare.md|csv|json``.
        baseline: the variant the others are compared with.
        jobs, threads: runs at a time and torch threads per run (0: automatic, one run per core).
        force: retrain runs that exist.
        on_done: called as each run ends with ``(variant, seed, results, how, seconds)``.
        dry_run: train nothing; return the runs instead.
        launcher, address, cpus_per_run, gpus_per_run: ``"local"`` (the default: ``jobs`` worker processes here)
            or ``"ray"``: each run a Ray task with ``cpus_per_run`` CPUs (default 1) and ``gpus_per_run`` GPUs
            (default 0) on the cluster at ``address`` (:func:`~convattn.experiments.train_runs`; ``out`` on
            storage every node sees).
        fields: ``TrainConfig`` fields every run shares (``model``, ``dataset``, ``epochs`` ...).

    Returns:
        the table of :func:`~convattn.experiments.table.comparison_table` plus ``"seeds"``, ``"jobs"``,
        ``"threads"`` and ``"files"`` (the tables written). With ``dry_run``, one ``{"variant", "seed", "out",
        "argv", "state"}`` per run in start order: ``argv`` the ``convattn train`` command that makes the run
        elsewhere (with ``--resume`` where the run exists and is ``"finished"`` or ``"interrupted"``), ``state``
        what compare would do with it (:func:`run_state`).

    A script calling this with ``jobs != 1`` on a machine of several cores needs the
    ``if __name__ == "__main__":`` guard that spawned processes require.
    """
    specs = variant_specs(variants)
    seeds = parse_seeds(seeds)
    if baseline is not None and baseline not in specs:
        raise ConfigError(f"--baseline must name a variant ({', '.join(specs)}), got {baseline!r}")
    fields.setdefault("tensorboard", False)
    jobs, threads = jobs_and_threads(jobs, threads, runs=len(specs) * len(seeds), device=fields.get("device", "auto"))
    if jobs > 1:
        fields["progress"] = False
    configs = compare_configs(specs, seeds, out=out, **fields)
    if dry_run:
        planned = []
        for key, given in _given_fields(specs, seeds, out, fields).items():
            state = run_state(configs[key], force=force)
            argv = train_argv(given) + (["--resume", given["out"]] if state in ("finished", "interrupted") else [])
            planned.append({"variant": key[0], "seed": key[1], "out": given["out"], "argv": argv, "state": state})
        return planned
    print(f"[compare] {len(specs)} variant(s) x {len(seeds)} seed(s) = {len(configs)} runs under {out}; "
          f"{jobs} at a time, {threads} thread(s) each", file=sys.stderr, flush=True)

    def done(key: tuple[str, int], res: dict[str, Any], how: str, secs: float) -> None:
        acc = res.get("test_acc") if res.get("status", "finished") == "finished" else None
        shown = f"test accuracy {100 * acc:.2f}%" if acc is not None else f"{res.get('status')}: {res.get('reason', '')}"
        print(f"[compare] {key[0]} seed {key[1]}: {how} in {secs:.0f} s, {shown}", file=sys.stderr, flush=True)
        if on_done is not None:
            on_done(key[0], key[1], res, how, secs)

    results = train_runs({k: [c] for k, c in configs.items()}, jobs=jobs, threads=threads, force=force,
                         on_done=done, keep_going=True, launcher=launcher, address=address,
                         cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)
    flops: dict[str, int | None] = {}
    records = []
    for (name, seed), cfg in configs.items():
        res, how, secs = results[(name, seed)]
        if name not in flops and res.get("status", "finished") == "finished":
            flops[name] = run_flops(cfg.out)
        records.append(run_record({"run_dir": cfg.out, **res}, variant=name, seed=seed, how=how, seconds=secs))
    for r in records:
        r["flops"] = flops.get(r["variant"])
    order = {name: i for i, name in enumerate(specs)}
    records.sort(key=lambda r: (order[r["variant"]], seeds.index(r["seed"])))
    table = comparison_table(records, baseline=baseline)
    table.update(seeds=seeds, jobs=jobs, threads=threads,
                 variants={name: spec for name, spec in specs.items()}, fields=dict(fields))
    table["files"] = [str(p) for p in write_table(table, out)]
    return table


def collect(root: str | os.PathLike, *, baseline: str | None = None, flops: bool = True) -> dict[str, Any]:
    """The comparison table of the run directories under ``root`` (made by ``compare``, a ``--dry-run``'s commands
    or anything else; :func:`~convattn.experiments.table.records_from_dir`), written to ``<root>/compare.md|csv|json``.
    Trains nothing. Returns the table plus ``"files"``."""
    table = comparison_table(records_from_dir(root, flops=flops), baseline=baseline)
    table["files"] = [str(p) for p in write_table(table, root)]
    return table
