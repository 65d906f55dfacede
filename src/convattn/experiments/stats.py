"""Statistics over seeds: mean ± standard deviation, and a paired 95% interval for a difference.

Two variants trained with the same seeds share their data order and initial weights where they
can, so the per-seed differences vary less than either variant's accuracy: the interval is
Student's t over those differences (n − 1 degrees of freedom), its quantile from :data:`T975` up to 29
degrees of freedom and the Cornish-Fisher expansion past them (Abramowitz & Stegun 26.7.5; within 1e-5
of the exact value there), so that tabulating needs no scipy (whose import alone takes 1-2 s).

Example:
    >>> d = paired_interval([0.80, 0.82, 0.81], [0.78, 0.79, 0.80])
    >>> round(d["mean"], 4), round(d["low"], 4), round(d["high"], 4), d["verdict"]
    (0.02, -0.0048, 0.0448, 'within noise')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["T975", "t_quantile", "mean_std", "paired_interval", "VERDICTS"]

#: The 0.975 quantile of Student's t with ``dof`` degrees of freedom, ``T975[dof - 1]``, for 1..29.
T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452,
)

#: What a paired interval says: above zero, below zero, or containing it.
VERDICTS = ("better", "worse", "within noise")


def t_quantile(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom: :data:`T975` (4 decimals) up to 29, the
    Cornish-Fisher expansion around the normal's 1.959964 past that."""
    if dof < 1:
        raise ValueError(f"t_quantile expects dof >= 1, got {dof}")
    if dof <= len(T975):
        return T975[dof - 1]
    z = 1.959964
    g = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(gi / dof ** (i + 1) for i, gi in enumerate(g))


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1); ``None`` where there are too few values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def paired_interval(variant: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """The mean of ``variant[i] - baseline[i]`` (the same seed ``i``) with its 95% t interval and verdict.

    Returns:
        ``{"n", "mean", "low", "high", "verdict"}``: ``verdict`` is ``better`` when the interval lies
        above zero, ``worse`` below, ``within noise`` when it holds zero; with fewer than two pairs the
        bounds are ``None`` and the verdict ``one seed`` (or ``no pairs``).
    """
    if len(variant) != len(baseline):
        raise ValueError(f"paired_interval expects as many values as baseline values, got {len(variant)} "
                         f"and {len(baseline)}")
    diffs = [a - b for a, b in zip(variant, baseline)]
    n = len(diffs)
    mean, std = mean_std(diffs)
    if n < 2:
        return {"n": n, "mean": mean, "low": None, "high": None, "verdict": "one seed" if n else "no pairs"}
    half = t_quantile(n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = VERDICTS[0] if low > 0 else VERDICTS[1] if high < 0 else VERDICTS[2]
    return {"n": n, "mean": mean, "low": low, "high": high, "verdict": verdict}
