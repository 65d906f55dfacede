"""What stops a run early: the first non-finite loss, gradient norm or weight (``RunDivergedError``),
and a stop request (Ctrl-C, or SIGTERM from a scheduler or ``kill``, both as ``KeyboardInterrupt``).

The trainer records each step's loss (and gradient norm, when clipping) on the device
(:class:`~convattn.engine.metrics.EpochLog`, no host sync per step) and looks for the first non-finite
one whenever it reads its running sums back (the progress bar, checkpoints, the end of an epoch); it
checks the weights before every checkpoint, so no checkpoint is ever written from non-finite weights.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator

import torch
from torch import nn

from ..exceptions import RunDivergedError
from . import distributed as D

__all__ = ["largest_weight", "first_non_finite", "diverged", "sigterm_as_interrupt"]


def largest_weight(model: nn.Module) -> float:
    """The largest absolute value of ``model``'s floating-point parameters and buffers (NaN if any is NaN)."""
    with torch.no_grad():
        worst = [t.abs().amax().float() for t in model.state_dict().values() if t.is_floating_point() and t.numel()]
        return float(torch.stack(worst).amax()) if worst else 0.0


def first_non_finite(ctx: D.DistContext, values: dict[str, float]) -> tuple[str, str] | None:
    """The first of ``values`` (what -> number) that is not finite, as ``(what, value)``; ``None`` when every
    one is finite on every rank. Under DDP one collective per call, so that all ranks stop at the same step."""
    bad = [(what, str(v)) for what, v in values.items() if not math.isfinite(v)]
    if ctx.enabled and not D.all_reduce_sum(ctx, [float(len(bad))], ctx.device)[0]:
        return None
    return bad[0] if bad else (("a value", "not finite on another rank") if ctx.enabled else None)


def diverged(what: str, value: str, *, where: str, saved: bool) -> RunDivergedError:
    """The error that stops a run at ``where`` (step, epoch, lr) because ``what`` is ``value``; ``saved``
    says whether a checkpoint was written before it (it is kept)."""
    kept = "the checkpoints written before it are kept" if saved else "no checkpoint was written"
    return RunDivergedError(f"training diverged at {where}: {what} is {value}; {kept}; lower --lr or set --clip-grad")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("terminated (SIGTERM)")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a run trains, SIGTERM (a scheduler's stop, ``kill``) stops it as Ctrl-C does: the
    checkpoints stay, results.json says ``interrupted``, and ``--resume`` continues exactly. Only in
    the main thread and where SIGTERM still has its default action (a handler the caller installed is
    left alone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
