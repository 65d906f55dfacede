"""Runs as Ray tasks (https://docs.ray.io): each call a task with its own CPUs and GPUs, results taken as they end.

Ray is an optional dependency (``pip install 'convattn[ray]'``), imported when a launch begins. With no
``address``, :func:`run_tasks` connects as ``ray.init()`` does: to the cluster ``RAY_ADDRESS`` names, else to
the one ``ray start`` last started on this machine, else it starts a local Ray instance. The connection stays
for later launches of the process (a local instance ends with the process, or ``ray.shutdown()``); where one
exists already (``ray.is_initialized()``), ``address`` is not used. A task is retried once, by Ray, after an
exception or after its worker process or node dies, with the same arguments; outstanding tasks are cancelled
when the caller stops reading (Ctrl-C, an error).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..exceptions import ConfigError

__all__ = ["import_ray", "run_tasks"]

#: Seconds to wait for cancelled tasks to stop (a training run then writes that it was interrupted).
_CANCEL_WAIT = 10.0


def import_ray() -> Any:
    """The ``ray`` module.

    Raises:
        ConfigError: ray is not installed (the message says how to install it).
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("the Ray launcher needs the ray package, which is not installed here: "
                          "pip install 'convattn[ray]'") from None
    return ray


def _say(text: str) -> None:
    print(f"[ray] {text}", file=sys.stderr, flush=True)


def _check_resources(ray: Any, num_cpus: float, num_gpus: float) -> None:
    """Say what the cluster holds, and warn when no task fits it yet (it waits for nodes that have them)."""
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    _say(f"cluster: {cpus:g} CPU(s), {gpus:g} GPU(s); each run takes {num_cpus:g} CPU(s), {num_gpus:g} GPU(s)")
    if num_cpus > cpus or num_gpus > gpus:
        _say(f"warning: no run fits this cluster now ({num_cpus:g} CPU(s) and {num_gpus:g} GPU(s) per run, "
             f"{cpus:g} and {gpus:g} in all); runs wait for nodes with them to join")


def _unwrap(ray: Any, exc: BaseException) -> BaseException:
    """A task's own exception (RayTaskError's cause), or Ray's error (a worker or node that died ...)."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return exc.cause
    return exc


def run_tasks(
    fn: Callable[..., Any],
    calls: Mapping[Any, tuple],
    *,
    address: str | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    name: str | None = None,
) -> Iterator[tuple[Any, Any, float]]:
    """``fn(*calls[key])`` for every key as a Ray task with ``num_cpus`` CPUs and ``num_gpus`` GPUs, submitted
    in the order given; yields ``(key, the return value or the exception that ended it, seconds since
    submission)`` as each ends. ``name`` names the tasks in Ray's logs and dashboard (default: ``fn``'s name).

    ``fn`` and the arguments travel to the workers by pickle (``fn`` by reference when it is a module's:
    its package must be installed on every node). A task whose call raises, or whose worker or node dies,
    runs again once with the same arguments; the second failure is yielded: the call's own exception
    (not Ray's wrapper), or Ray's error (``WorkerCrashedError``, ``NodeDiedError`` ...). Closing the
    iterator early cancels the tasks not ended yet (a running call gets ``KeyboardInterrupt``) and waits
    up to ten seconds for them to stop.

    Raises:
        ConfigError: ray is not installed, or ``num_cpus`` / ``num_gpus`` out of range.
    """
    if not num_cpus > 0 or not num_gpus >= 0:
        raise ConfigError(f"a Ray task needs > 0 CPUs and >= 0 GPUs, got num_cpus={num_cpus}, num_gpus={num_gpus}")
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address)
    _check_resources(ray, num_cpus, num_gpus)
    remote = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1, retry_exceptions=True,
                                    name=name or fn.__name__)
    begun = time.perf_counter()
    keys = {remote.remote(*args): key for key, args in calls.items()}
    pending = list(keys)
    try:
        while pending:
            (ref,), pending = ray.wait(pending, num_returns=1)
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                value = _unwrap(ray, exc)
            yield keys[ref], value, time.perf_counter() - begun
    finally:
        if pending:  # stopped early: the runs not ended yet keep their last.pt
            _say(f"cancelling {len(pending)} unfinished task(s)")
            for ref in pending:
                ray.cancel(ref)
            ray.wait(pending, num_returns=len(pending), timeout=_CANCEL_WAIT)
