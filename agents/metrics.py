"""Episode metrics of the evaluation protocol (DESIGN.md section 5) and their bootstrap summaries.

:func:`episode_metrics` turns one :class:`~ltc_control.agents.episode.EpisodeResult` into
:class:`EpisodeMetrics`; :func:`summarize_levels` aggregates the episodes of one noise level into a
:class:`LevelSummary` with 95% percentile-bootstrap confidence intervals (:class:`Stat`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ltc_control.agents.episode import EpisodeResult

__all__ = [
    "EpisodeMetrics",
    "LevelSummary",
    "Stat",
    "bootstrap_mean",
    "bootstrap_ratio",
    "episode_metrics",
    "json_float",
    "summarize_levels",
]


@dataclass(frozen=True)
class EpisodeMetrics:
    """The evaluation metrics of one episode.

    Attributes:
        seed: road seed.
        noise_variance: Gaussian noise variance on the observations.
        steps: number of control steps.
        distance_m: distance driven along the road before the first lane departure (the whole episode when
            there was none), metres.
        total_distance_m: distance driven in the whole episode, metres (equal to ``distance_m`` when the env
            ends episodes at a departure).
        departures: number of lane departures (rising edges of ``lane_departure``).
        departed: whether there was at least one departure.
        completed: the car reached the end of the road (within ``completion_tolerance``) without a departure.
        mean_abs_lateral_m: mean absolute lateral error over the steps, metres.
        max_abs_lateral_m: maximum absolute lateral error, metres.
        steering_smoothness: mean absolute change of the steering command per step (normalised units).
    """

    seed: int
    noise_variance: float
    steps: int
    distance_m: float
    total_distance_m: float
    departures: int
    departed: bool
    completed: bool
    mean_abs_lateral_m: float
    max_abs_lateral_m: float
    steering_smoothness: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: json_float(v) for k, v in dataclasses.asdict(self).items()}


def json_float(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def episode_metrics(result: EpisodeResult, completion_tolerance: float = 1.0) -> EpisodeMetrics:
    """Compute the metrics of DESIGN.md section 5 for one episode.

    Args:
        result: the episode.
        completion_tolerance: the episode counts as completed when, without a departure, the car got within
            this many metres of the road's end (envs without ``road_length`` count an episode that ended
            without a departure and without a time-limit truncation as completed).

    Returns:
        The :class:`EpisodeMetrics`.
    """
    dep = result.lane_departure.astype(bool)
    rising = int(np.count_nonzero(dep & ~np.concatenate([[False], dep[:-1]])))
    first = result.departure_step
    driven = result.distance - result.start_distance
    total = float(driven[-1]) if driven.size else 0.0
    before = float(driven[first]) if first is not None else total
    if not math.isfinite(total):
        total = before = float("nan")
    if first is not None:
        completed = False
    elif math.isfinite(result.road_length) and result.distance.size and math.isfinite(result.distance[-1]):
        completed = bool(result.distance[-1] >= result.road_length - completion_tolerance)
    else:
        completed = bool(result.terminated and not result.truncated)
    lat = np.abs(result.lateral_error)
    has_lat = lat.size > 0 and bool(np.any(np.isfinite(lat)))
    mean_lat = float(np.nanmean(lat)) if has_lat else float("nan")
    max_lat = float(np.nanmax(lat)) if has_lat else float("nan")
    smooth = float(np.mean(np.abs(np.diff(result.steering)))) if result.steps >= 2 else float("nan")
    return EpisodeMetrics(
        seed=result.seed,
        noise_variance=float(result.noise_variance),
        steps=result.steps,
        distance_m=before,
        total_distance_m=total,
        departures=rising,
        departed=first is not None,
        completed=completed,
        mean_abs_lateral_m=mean_lat,
        max_abs_lateral_m=max_lat,
        steering_smoothness=smooth,
    )


@dataclass(frozen=True)
class Stat:
    """A point estimate with its 95% confidence interval ``[lo, hi]`` (NaN when undefined)."""

    value: float
    lo: float
    hi: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN -> null)."""
        return {"value": json_float(self.value), "lo": json_float(self.lo), "hi": json_float(self.hi)}

    def fmt(self, digits: int = 3) -> str:
        """``value [lo, hi]`` as text."""
        if not math.isfinite(self.value):
            return "n/a"
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class LevelSummary:
    """Aggregated metrics over the episodes of one noise level.

    Confidence intervals are 95% percentile bootstrap intervals over episodes (``n_boot`` resamples of the
    episodes with replacement, fixed generator seed, so a report is reproducible). Crashes per km is a ratio
    estimator (total departures / total km), bootstrapped by resampling whole episodes.

    Attributes:
        noise_variance: Gaussian noise variance.
        episodes: number of episodes.
        departures: total number of lane departures.
        total_km: total distance driven, km.
        crashes_per_km: departures per km driven.
        distance_before_departure_m: mean distance driven before the first departure (or the whole episode).
        completion_rate: fraction of episodes completed.
        mean_abs_lateral_m: mean over episodes of the mean absolute lateral error.
        max_abs_lateral_m: mean over episodes of the maximum absolute lateral error.
        worst_abs_lateral_m: the largest absolute lateral error of any episode.
        steering_smoothness: mean over episodes of the mean |delta steering| per step.
    """

    noise_variance: float
    episodes: int
    departures: int
    total_km: float
    crashes_per_km: Stat
    distance_before_departure_m: Stat
    completion_rate: Stat
    mean_abs_lateral_m: Stat
    max_abs_lateral_m: Stat
    worst_abs_lateral_m: float
    steering_smoothness: Stat

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Stat) else json_float(value)
        return out

    def flat(self) -> dict[str, Any]:
        """One flat row (``<metric>``, ``<metric>_lo``, ``<metric>_hi``) for CSV."""
        row: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Stat):
                row[f.name] = value.value
                row[f.name + "_lo"] = value.lo
                row[f.name + "_hi"] = value.hi
            else:
                row[f.name] = value
        return row


def bootstrap_mean(values: np.ndarray, idx: np.ndarray) -> Stat:
    """Mean of the finite ``values`` with a 95% percentile-bootstrap interval.

    Args:
        values: one value per episode ``(n,)`` (non-finite entries are ignored).
        idx: bootstrap resamples of episode indices ``(n_boot, n)``.
    """
    finite = np.isfinite(values)
    if not finite.any():
        return Stat(float("nan"), float("nan"), float("nan"))
    point = float(np.mean(values[finite]))
    if values.size == 1:
        return Stat(point, point, point)
    with np.errstate(invalid="ignore"):
        samples = values[idx]
        boot = (
            np.nanmean(np.where(np.isfinite(samples), samples, np.nan), axis=1)
            if not finite.all()
            else (samples.mean(axis=1))
        )
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return Stat(point, float(lo), float(hi))


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> Stat:
    """Ratio estimator ``sum(num) / sum(den)`` with a 95% bootstrap interval over whole episodes.

    Args:
        num: numerator per episode ``(n,)`` (e.g. departures).
        den: denominator per episode ``(n,)`` (e.g. km driven).
        idx: bootstrap resamples of episode indices ``(n_boot, n)``.
    """
    ok = np.isfinite(num) & np.isfinite(den)
    if not ok.any() or den[ok].sum() <= 0:
        return Stat(float("nan"), float("nan"), float("nan"))
    point = float(num[ok].sum() / den[ok].sum())
    if num.size == 1:
        return Stat(point, point, point)
    n_s = np.where(ok, num, 0.0)[idx].sum(axis=1)
    d_s = np.where(ok, den, 0.0)[idx].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(d_s > 0, n_s / np.where(d_s > 0, d_s, 1.0), np.nan)
    if not np.isfinite(ratio).any():
        return Stat(point, float("nan"), float("nan"))
    lo, hi = np.nanpercentile(ratio, [2.5, 97.5])
    return Stat(point, float(lo), float(hi))


def summarize_levels(
    metrics: Sequence[EpisodeMetrics],
    noise_variance: float | None = None,
    n_boot: int = 2000,
    boot_seed: int = 0,
) -> LevelSummary:
    """Aggregate episode metrics (of one noise level) with 95% bootstrap confidence intervals.

    Args:
        metrics: the episodes (at least one).
        noise_variance: the level's noise variance (defaults to that of the first episode).
        n_boot: bootstrap resamples.
        boot_seed: seed of the bootstrap generator.

    Returns:
        The :class:`LevelSummary`.
    """
    if not metrics:
        raise ValueError("summarize_levels() needs at least one episode")
    n = len(metrics)
    idx = np.random.default_rng(boot_seed).integers(0, n, size=(n_boot, n))

    def col(name: str) -> np.ndarray:
        return np.asarray([float(getattr(m, name)) for m in metrics], dtype=np.float64)

    km = col("total_distance_m") / 1000.0
    departures = col("departures")
    ok_km = km[np.isfinite(km)]
    lat_max = col("max_abs_lateral_m")
    return LevelSummary(
        noise_variance=float(metrics[0].noise_variance if noise_variance is None else noise_variance),
        episodes=n,
        departures=int(departures.sum()),
        total_km=float(ok_km.sum()) if ok_km.size else float("nan"),
        crashes_per_km=bootstrap_ratio(departures, km, idx),
        distance_before_departure_m=bootstrap_mean(col("distance_m"), idx),
        completion_rate=bootstrap_mean(col("completed"), idx),
        mean_abs_lateral_m=bootstrap_mean(col("mean_abs_lateral_m"), idx),
        max_abs_lateral_m=bootstrap_mean(lat_max, idx),
        worst_abs_lateral_m=float(np.nanmax(lat_max)) if np.isfinite(lat_max).any() else float("nan"),
        steering_smoothness=bootstrap_mean(col("steering_smoothness"), idx),
    )
