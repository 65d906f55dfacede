"""Many runs: train chains of configs in parallel worker processes (or as Ray tasks), reusing finished runs.

On 2 cores, two runs at a time with one thread each trained the demo in 434 s from a fresh
clone, against 558 s for the same runs one after another with two threads; and one thread per
run keeps steps fast when another process shares the machine (two threads of one step then
wait on each other, 2.7-3x slower than one thread). docs/demo.md has the measurements.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError, RunDivergedError

__all__ = ["usable_cores", "jobs_and_threads", "run_state", "train_or_reuse", "check_launcher", "train_runs"]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def jobs_and_threads(jobs: int, threads: int, *, runs: int, device: str = "cpu") -> tuple[int, int]:
    """Runs at a time and torch threads per run: ``0`` for either means automatic, one run per usable
    core up to ``runs`` (one on CUDA) and the cores shared out among them."""
    from ..engine.distributed import resolve_device

    if jobs < 0 or threads < 0:
        raise ConfigError(f"jobs and threads must be >= 0 (0: automatic), got jobs={jobs}, threads={threads}")
    cores = usable_cores()
    jobs = jobs or (1 if resolve_device(device).type == "cuda" else max(1, min(cores, runs)))
    return jobs, threads or max(1, cores // jobs)


def _results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_state(config: Any, *, force: bool = False) -> str:
    """What :func:`train_or_reuse` does with ``config.out``: ``"new"`` (train), ``"finished"`` (reuse),
    ``"interrupted"`` (resume from last.pt), ``"restart"`` (a run of the same settings stopped before its
    first checkpoint: nothing to resume and nothing to lose, so it trains again), or why it refuses:
    ``"diverged"``, ``"other settings"``, ``"no last.pt"`` (a best.pt without last.pt). A folder holding only
    a run's marker and lock (a run that failed before writing anything, e.g. on a bad option) takes a new run."""
    import yaml

    from ..engine.rundir import MARKER

    run_dir = Path(config.out)
    if force or not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} - {MARKER, "run.lock"}:
        return "new"
    saved = run_dir / "config.yaml"
    old = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    if not isinstance(old, dict) or config.result_changes(old):
        return "other settings"
    res = _results(run_dir)
    if res.get("status") == "diverged":
        return "diverged"
    if res.get("status", "finished") == "finished" and "test_acc" in res:
        return "finished"
    if (run_dir / "last.pt").is_file():
        return "interrupted"
    return "no last.pt" if (run_dir / "best.pt").is_file() else "restart"


def train_or_reuse(config, *, force: bool = False) -> tuple[dict[str, Any], str]:
    """Train ``config`` into ``config.out``; reuse a finished run of the same result settings
    (:meth:`~convattn.engine.TrainConfig.result_changes`), resume an unfinished one (:func:`run_state`).

    Returns the result dict of :func:`convattn.engine.train` and what happened
    (``"trained"``, ``"reused"``, ``"resumed"``). ``force`` deletes the run directory first; so does a run
    stopped before its first checkpoint. Only a
    run whose results.json says ``finished`` is reused; an interrupted one is resumed.

    Raises:
        ConfigError: ``config.out`` holds a run with other result settings, or a ``best.pt`` without ``last.pt``.
        RunDivergedError: the run diverged, now or before (its results.json says ``diverged``).
    """
    from ..engine import train

    run_dir = Path(config.out)
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    state = run_state(config)
    if state == "new":
        return train(config), "trained"
    if state == "finished":
        res = _results(run_dir)
        res.setdefault("run_dir", str(run_dir))
        return res, "reused"
    if state == "interrupted":
        return train(config, resume=run_dir), "resumed"
    if state == "restart":
        _clear_run(run_dir)
        return train(config), "trained"
    if state == "diverged":
        raise RunDivergedError(f"{run_dir} diverged ({_results(run_dir).get('reason', 'no reason recorded')}); "
                               "pass --force to retrain it")
    if state == "other settings":
        raise ConfigError(f"{run_dir} holds a run with other settings; pass --force to retrain it or --out to write elsewhere")
    raise ConfigError(f"{run_dir} holds an unfinished run with best.pt but no last.pt; pass --force to retrain it")


def _clear_run(run_dir: Path) -> None:
    """Empty a run directory under its lock (a run still writing it is refused, naming its holder)."""
    from ..engine.rundir import RunLock

    lock = RunLock(run_dir)
    try:
        for entry in run_dir.iterdir():
            if entry != lock.path:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    finally:
        lock.release()


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


#: Errors a second try would meet again (bad settings, a run that diverged): they are not retried.
_FINAL = (ValueError, TypeError, RunDivergedError)


def _failure(exc: BaseException, run_dir: str | None, prefix: str | None, seconds: float) -> tuple[dict, str, float]:
    """A chain ended by ``exc``: ``({"status", "reason", "run_dir"}, "failed", seconds)``, said on stderr."""
    status = ("diverged" if isinstance(exc, RunDivergedError) else
              "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
    lines = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    print(f"{prefix or ''}run {status}: {reason}", file=sys.stderr, flush=True)
    return {"status": status, "reason": reason, "run_dir": run_dir}, "failed", seconds


def _chain_or_failure(cfg_dicts: list[dict], force: bool, threads: int | None, prefix: str | None,
                      prepare: Callable[[], Any] | None, after: Callable[[dict], dict] | None,
                      catch: tuple[type[BaseException], ...]) -> tuple[dict, str, float]:
    """:func:`_train_chain`; an error of a type in ``catch`` ends the chain with its last run's
    :func:`_failure` instead of raising."""
    start = time.perf_counter()
    try:
        return _train_chain(cfg_dicts, force, threads, prefix, prepare, after)
    except catch as exc:
        return _failure(exc, cfg_dicts[-1].get("out"), prefix, time.perf_counter() - start)


def _import_then(modules: list[str], then: Callable[[], Any] | None) -> None:
    """Import ``modules`` (those registering the runs' own models and layers), then ``then()``: a worker's prepare."""
    from ..engine.plugins import import_modules

    import_modules(modules, source="the process that started these runs")
    if then is not None:
        then()


def _user_modules(dicts: dict[Any, list[dict]]) -> list[str]:
    """The modules outside convattn defining these runs' models and layers (imported here: ``--import``), which
    worker processes must import too."""
    import warnings

    from ..engine import TrainConfig
    from ..engine.plugins import use_modules

    names: list[str] = []
    for cfg in (c for cfgs in dicts.values() for c in cfgs):
        info: dict[str, Any] = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a model defined in __main__: its run says so itself
                use_modules(TrainConfig.from_dict(cfg), info)
        except ConfigError:  # an unknown model: its run fails and says why
            continue
        names += info.get("modules", [])
    return list(dict.fromkeys(names))


def _train_keyed(item: tuple) -> tuple[Any, tuple[dict, str, float]]:
    key, *args = item
    return key, _chain_or_failure(*args)


def _label(key: Any) -> str:
    return " ".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _train_on_ray(dicts: dict[Any, list[dict]], finish: Callable[[Any, tuple], None], *, force: bool,
                  prepare: dict[Any, Callable[[], Any]], after: Callable[[dict], dict] | None, keep_going: bool,
                  address: str | None, cpus: int, gpus: float) -> None:
    """Each chain as a Ray task (:func:`~convattn.experiments.ray_launcher.run_tasks`), ``finish`` called as each ends."""
    from contextlib import closing

    from .ray_launcher import run_tasks

    if force:  # here, not in the task: Ray retries a task with its arguments, and a retry must resume
        for cfg in (c for cfgs in dicts.values() for c in cfgs):
            if Path(cfg["out"]).exists():
                shutil.rmtree(cfg["out"])
    # Ray leaves a task that asks for no GPU all of its node's GPUs: such a run trains on the CPU
    if not gpus and (cuda := sorted({c["device"] for cfgs in dicts.values() for c in cfgs} - {"auto", "cpu"})):
        raise ConfigError(f"a run on Ray uses the GPUs it asks for: device {cuda[0]!r} needs gpus_per_run > 0, got 0")
    # no progress bars (Ray forwards a worker's output line by line); errors that would recur end the task
    calls = {key: ([{**c, "progress": False, "device": c["device"] if gpus else "cpu"} for c in cfgs], False, cpus,
                   f"[{_label(key)}] ", prepare.get(key), after, _FINAL if keep_going else ())
             for key, cfgs in dicts.items()}
    with closing(run_tasks(_chain_or_failure, calls, address=address, num_cpus=cpus, num_gpus=gpus,
                           name="convattn train")) as ended:
        for key, out, seconds in ended:
            if isinstance(out, BaseException):  # raised twice, or its worker or node died twice
                if not keep_going:
                    raise out
                out = _failure(out, dicts[key][-1].get("out"), f"[{_label(key)}] ", seconds)
            finish(key, out)


def check_launcher(launcher: str, address: str | None, cpus_per_run: Any, gpus_per_run: Any) -> None:
    """Refuse launcher settings :func:`train_runs` cannot use, naming what it expected and what it got."""
    if launcher not in ("local", "ray"):
        raise ConfigError(f"launcher must be 'local' or 'ray', got {launcher!r}")
    if launcher == "local" and (address, cpus_per_run, gpus_per_run) != (None, None, None):
        raise ConfigError(f"address, cpus_per_run and gpus_per_run are for launcher='ray', got launcher='local' with "
                          f"address={address!r}, cpus_per_run={cpus_per_run!r}, gpus_per_run={gpus_per_run!r}")
    cpus, gpus = 1 if cpus_per_run is None else cpus_per_run, gpus_per_run or 0
    if not (isinstance(cpus, int) and cpus >= 1) or not (isinstance(gpus, (int, float)) and gpus >= 0):
        raise ConfigError(f"a run on Ray takes a whole number >= 1 of CPUs and >= 0 GPUs, "
                          f"got cpus_per_run={cpus_per_run!r}, gpus_per_run={gpus_per_run!r}")


def train_runs(
    chains: dict[Any, list],
    *,
    jobs: int = 1,
    threads: int | None = None,
    force: bool = False,
    on_done: Callable[[Any, dict, str, float], None] | None = None,
    prepare: dict[Any, Callable[[], Any]] | None = None,
    after: Callable[[dict], dict] | None = None,
    keep_going: bool = False,
    launcher: str = "local",
    address: str | None = None,
    cpus_per_run: int | None = None,
    gpus_per_run: float | None = None,
) -> dict[Any, tuple[dict[str, Any], str, float]]:
    """Train each chain of ``TrainConfig`` s (in order, in one process), ``jobs`` chains at a time.

    ``jobs > 1`` trains in that many spawned worker processes, each with ``threads`` torch
    threads (default: the usable cores shared out) and its log lines prefixed by its key; a
    failing run stops the others, unless ``keep_going``: then a chain whose run raises ends with
    ``{"status": "failed" / "diverged" / "interrupted" (a worker's), "reason", "run_dir"}`` as its results
    and ``"failed"`` as how, and the others go on; ``jobs == 1`` trains here (``threads``, when
    given, is set for the runs and restored). Chains start in the order given. Finished
    identical runs are reused and unfinished ones resumed (:func:`train_or_reuse`).
    ``prepare[key]()`` runs before that chain's first run, and ``after(results)`` after its last
    run, in the process that trains the chain, its return value taking the results' place (with
    ``jobs > 1`` both must pickle: module-level functions, or ``functools.partial`` of one).

    ``launcher="ray"`` submits each chain as a Ray task instead (:mod:`~convattn.experiments.ray_launcher`)
    to the cluster at ``address`` (None: as ``ray.init()``: ``RAY_ADDRESS``, else the cluster ``ray start``
    started on this machine, else a local instance), each task with ``cpus_per_run`` CPUs (default 1; also
    its torch threads) and ``gpus_per_run`` GPUs (default 0: device ``auto`` then means the CPU, ``cuda`` is
    refused); ``jobs`` and ``threads`` are then unused, the cluster's free resources say how many run at
    once. The configs' ``out`` must be paths every node and this process see (absolute, on shared storage).
    A chain whose task raises (other than bad settings, ``ValueError`` / ``TypeError``, and divergence), or
    whose worker or node dies, runs once more (resuming from its last.pt), and then fails as above.
    ``force`` deletes the run directories before submitting.

    Worker processes and Ray tasks first import the modules outside convattn that define the runs' models
    and layers here (``convattn --import MODULE``), so runs of your own models train there too.

    Returns ``{key: (results of the chain's last run, "trained" / "reused" / "resumed" per run joined
    by "+", seconds)}``; ``on_done(key, results, how, seconds)`` is called as each chain ends.
    A script calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard that
    spawned processes require.
    """
    check_launcher(launcher, address, cpus_per_run, gpus_per_run)
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    dicts = {key: [c.to_dict() for c in cfgs] for key, cfgs in chains.items()}
    prepare = prepare or {}
    done: dict[Any, tuple[dict[str, Any], str, float]] = {}

    def finish(key: Any, out: tuple[dict[str, Any], str, float]) -> None:
        done[key] = out
        if on_done is not None:
            on_done(key, *out)

    if launcher == "ray" or (jobs > 1 and len(dicts) > 1):  # other processes: they import what defines the models
        if modules := _user_modules(dicts):
            prepare = {key: partial(_import_then, modules, prepare.get(key)) for key in dicts}
    if launcher == "ray":
        _train_on_ray(dicts, finish, force=force, prepare=prepare, after=after, keep_going=keep_going, address=address,
                      cpus=1 if cpus_per_run is None else cpus_per_run, gpus=0 if gpus_per_run is None else gpus_per_run)
        return done
    if jobs == 1 or len(dicts) <= 1:
        import torch

        before = torch.get_num_threads()
        catch = (Exception,) if keep_going else ()
        try:
            for key, cfgs in dicts.items():
                finish(key, _chain_or_failure(cfgs, force, threads, None, prepare.get(key), after, catch))
        finally:
            torch.set_num_threads(before)
        return done
    import multiprocessing as mp

    jobs = min(jobs, len(dicts))
    if threads is None:
        threads = max(1, usable_cores() // jobs)
    catch = (Exception, KeyboardInterrupt) if keep_going else ()  # a worker's interrupt ends its run only
    work = [(key, cfgs, force, threads, f"[{_label(key)}] ", prepare.get(key), after, catch)
            for key, cfgs in dicts.items()]
    # leaving the block terminates the workers: a failed run or Ctrl-C starts nothing more
    # (runs cut short keep their last.pt and resume)
    with mp.get_context("spawn").Pool(jobs) as pool:
        for key, out in pool.imap_unordered(_train_keyed, work, chunksize=1):
            finish(key, out)
    return done
