"""Statistics of the study: per-seed summaries, 95% intervals over seeds, paired differences.

- :func:`seed_interval`: the mean over seeds with a 95% Student-t interval (seeds are the independent
  replicates of a training procedure).
- :func:`paired_difference`: a model minus the reference, paired by seed and road (the same training seed
  index and the same test road, the same noise draws), with a 95% percentile interval from a crossed
  bootstrap that resamples seeds and roads independently (both are random factors). Ratio metrics
  (departures per km) are recomputed as ratios of sums on every resample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Interval", "T975", "condition_summary", "paired_difference", "seed_interval"]

#: Two-sided 95% Student-t quantiles by degrees of freedom (1..30); larger df use 1.96.
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95% interval and the number of units it rests on."""

    value: float
    lo: float
    hi: float
    n: int

    def fmt(self, digits: int = 3, pct: bool = False) -> str:
        """``value [lo, hi]`` (``n/a`` when undefined); ``pct`` prints percentages."""
        if not math.isfinite(self.value):
            return "n/a"
        if pct:
            lo, hi = max(0.0, self.lo), min(1.0, self.hi)
            if self.n <= 1:
                return f"{100 * self.value:.0f}%"
            return f"{100 * self.value:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
        if self.n <= 1 or not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return fmt_number(self.value, digits)
        return (
            f"{fmt_number(self.value, digits)} [{fmt_number(self.lo, digits)}, {fmt_number(self.hi, digits)}]"
        )


def fmt_number(x: float, digits: int = 3) -> str:
    """Plain notation: whole numbers from 10 up, ``digits`` significant digits below (no exponents "
    "above 1e-3)."""
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 10:
        return f"{x:.0f}"
    if abs(x) >= 1e-3:
        text = f"{x:.{digits}g}"
        return text if "e" not in text else f"{x:.{digits}f}"
    return f"{x:.{digits}g}"


def seed_interval(values: Sequence[float]) -> Interval:
    """Mean over seeds with a 95% t interval (NaNs dropped; n = 1 gives an interval of zero width)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean, 1)
    t = T975[x.size - 2] if x.size - 1 <= len(T975) else 1.96
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size))


def condition_summary(rows: Sequence[dict]) -> dict[str, float]:
    """One seed's numbers for one condition from its episode rows (one row per test road)."""
    dep = np.array([float(r["departures"]) for r in rows])
    km = np.array([float(r.get("km") or 0.0) for r in rows])

    def mean(key: str) -> float:
        vals = [float(r[key]) for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else math.nan

    return {
        "completion": mean("completed"),
        "departures_per_km": float(dep.sum() / km.sum()) if km.sum() > 0 else math.nan,
        "distance_m": mean("distance_m"),
        "mean_abs_lateral_m": mean("mean_abs_lateral_m"),
        "max_abs_lateral_m": mean("max_abs_lateral_m"),
        "steering_smoothness": mean("steering_smoothness"),
    }


def paired_difference(
    model: np.ndarray,
    reference: np.ndarray,
    model_den: np.ndarray | None = None,
    reference_den: np.ndarray | None = None,
    n_boot: int = 4000,
    seed: int = 0,
) -> Interval:
    """Model minus reference, paired by seed (axis 0) and road (axis 1), crossed-bootstrap 95% interval.

    Args:
        model: ``(S, R)`` per-episode values of the model (e.g. completed 0/1, departures).
        reference: ``(S, R)`` the reference's values on the same seeds and roads.
        model_den: for ratio metrics, ``(S, R)`` denominators (km driven): the statistic is then
            ``sum(num) / sum(den)`` per model.
        reference_den: the reference's denominators.
        n_boot: bootstrap resamples.
        seed: bootstrap generator seed (fixed: the report is reproducible).

    Returns:
        The :class:`Interval` of the difference (``n`` = number of seed x road pairs).
    """
    a = np.asarray(model, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"paired_difference needs two (seeds, roads) arrays of one shape, got {a.shape}, {b.shape}"
        )
    ratio = model_den is not None and reference_den is not None
    da = np.asarray(model_den, dtype=np.float64) if ratio else None
    db = np.asarray(reference_den, dtype=np.float64) if ratio else None

    def stat(si: Any, ri: Any) -> float:
        sa, sb = a[np.ix_(si, ri)], b[np.ix_(si, ri)]
        if ratio:
            assert da is not None and db is not None
            ka, kb = da[np.ix_(si, ri)].sum(), db[np.ix_(si, ri)].sum()
            if ka <= 0 or kb <= 0:
                return math.nan
            return float(sa.sum() / ka - sb.sum() / kb)
        return float(np.nanmean(sa) - np.nanmean(sb))

    s, r = a.shape
    point = stat(np.arange(s), np.arange(r))
    if s * r <= 1:
        return Interval(point, point, point, s * r)
    rng = np.random.default_rng(seed)
    boots = np.array([stat(rng.integers(0, s, s), rng.integers(0, r, r)) for _ in range(n_boot)])
    boots = boots[np.isfinite(boots)]
    if boots.size == 0:
        return Interval(point, math.nan, math.nan, s * r)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Interval(point, float(lo), float(hi), s * r)
