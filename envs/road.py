"""Procedural roads for the lane-keeping environment: a centre line built from curvature segments.

A road is the centre line of the lane the car must follow, described by a list of :class:`Segment` objects
whose curvature varies linearly along their length (straights, constant-curvature arcs and clothoid-like ramps
between them, so curvature and heading are continuous). The geometry is sampled every ``ds`` metres into
arrays that the environment, the imitation expert and the evaluation read directly:

>>> road = Road.from_segments([Segment.straight(20.0), Segment.arc(31.4, 0.05)])
>>> round(road.length, 1), road.points.shape[1]
(51.4, 2)
>>> proj = road.project([10.0, 0.5])
>>> round(proj.s, 3), round(proj.lateral, 3)
(10.0, 0.5)

Sign conventions (world frame x east, y north, z up; yaw counter-clockwise from +x): curvature > 0 turns left,
lateral offset > 0 is left of the centre line, heading is the direction of the tangent in radians.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["Projection", "Road", "RoadGenerationConfig", "Segment", "wrap_angle"]


def wrap_angle(angle: float) -> float:
    """Wrap an angle to ``[-pi, pi)``.

    Args:
        angle: Angle in radians.

    Returns:
        The equivalent angle in ``[-pi, pi)`` radians.
    """
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass(frozen=True)
class Segment:
    """One piece of road whose curvature changes linearly from ``curvature_start`` to ``curvature_end``.

    Attributes:
        length: Arc length of the segment in metres (> 0).
        curvature_start: Signed curvature (1/m, > 0 = left turn) at the start of the segment.
        curvature_end: Signed curvature (1/m) at the end of the segment; equal to ``curvature_start`` for a
            straight or an arc, different for a clothoid-like transition.
    """

    length: float
    curvature_start: float = 0.0
    curvature_end: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.length) and self.length > 0.0):
            raise ValueError(
                f"Segment.length must be a finite positive number of metres, got {self.length!r}."
            )
        for name in ("curvature_start", "curvature_end"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"Segment.{name} must be finite (1/m), got {value!r}.")

    @classmethod
    def straight(cls, length: float) -> Segment:
        """A straight of ``length`` metres."""
        return cls(float(length), 0.0, 0.0)

    @classmethod
    def arc(cls, length: float, curvature: float) -> Segment:
        """An arc of ``length`` metres with constant signed ``curvature`` (1/m; radius = 1/|curvature|)."""
        return cls(float(length), float(curvature), float(curvature))

    @classmethod
    def ramp(cls, length: float, curvature_start: float, curvature_end: float) -> Segment:
        """A clothoid-like transition: curvature goes linearly from start to end over ``length`` m."""
        return cls(float(length), float(curvature_start), float(curvature_end))

    @property
    def heading_change(self) -> float:
        """Total change of heading over the segment (radians)."""
        return 0.5 * (self.curvature_start + self.curvature_end) * self.length


class Projection(NamedTuple):
    """A point's position relative to the road centre line.

    Attributes:
        s: Arc length (m) of the closest centre-line point, measured from the start of the road.
        lateral: Signed distance (m) from the centre line, > 0 = left of the direction of travel.
        heading: Direction of the road tangent at ``s`` (rad); a car's heading error is
            ``wrap_angle(yaw - heading)``.
    """

    s: float
    lateral: float
    heading: float


@dataclass(frozen=True)
class RoadGenerationConfig:
    """Parameters of the procedural road generator (all lengths in metres, curvatures in 1/m).

    Attributes:
        length: Length of the generated centre line (m).
        curvature_range: ``(min, max)`` absolute curvature of the arcs (1/m); each arc's curvature is drawn
            uniformly from this range with a random sign.
        lead_in: Length of the initial straight (m) before the first curve.
        straight_probability: Probability that a straight (rather than another curve) follows a curve that
            returned to zero curvature.
        straight_length: ``(min, max)`` length of straights between curves (m).
        arc_length: ``(min, max)`` length of constant-curvature arcs (m).
        ramp_rate: Maximum curvature change per metre in transitions (1/m^2); sets the clothoid length.
        min_ramp_length: Shortest transition (m).
        max_turn: Largest heading change of one arc (rad), so curves do not close into loops.
        min_clearance: Smallest allowed distance (m) between two parts of the road more than
            ``3 * min_clearance`` apart along the centre line (roads that come closer are re-drawn).
    """

    length: float = 340.0
    curvature_range: tuple[float, float] = (0.015, 0.066)
    lead_in: float = 12.0
    straight_probability: float = 0.35
    straight_length: tuple[float, float] = (8.0, 25.0)
    arc_length: tuple[float, float] = (12.0, 35.0)
    ramp_rate: float = 0.012
    min_ramp_length: float = 4.0
    max_turn: float = 0.6 * math.pi
    min_clearance: float = 20.0

    def __post_init__(self) -> None:
        lo, hi = self.curvature_range
        if not (0.0 <= lo <= hi and math.isfinite(hi)):
            raise ValueError(
                "curvature_range must be (min, max) with 0 <= min <= max (1/m), "
                f"got {self.curvature_range!r}."
            )
        if hi <= 0.0:
            raise ValueError("curvature_range max must be > 0 so roads have curves, got 0.")
        if not (self.length > self.lead_in > 0.0):
            raise ValueError(
                f"need length > lead_in > 0 (m), got length={self.length}, lead_in={self.lead_in}."
            )
        for name in ("straight_length", "arc_length"):
            a, b = getattr(self, name)
            if not (0.0 < a <= b):
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max (m), got {(a, b)!r}.")
        if self.ramp_rate <= 0.0 or self.min_ramp_length <= 0.0 or self.max_turn <= 0.0:
            raise ValueError("ramp_rate, min_ramp_length and max_turn must all be > 0.")


class Road:
    """A sampled road centre line built from :class:`Segment` objects.

    Attributes:
        segments: The segments the road is built from, in order.
        seed: The generator seed, or ``None`` for a hand-built road.
        ds: Sampling step (m).
        s: ``(P,)`` arc length of each sample (m), ``s[0] = 0``, ``s[-1] = length``.
        points: ``(P, 2)`` centre-line positions (m).
        heading: ``(P,)`` tangent direction (rad, unwrapped: continuous along the road).
        curvature: ``(P,)`` signed curvature (1/m).
        length: Total length (m).
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        *,
        ds: float = 0.2,
        start: ArrayLike = (0.0, 0.0),
        start_heading: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Build and sample a road.

        Args:
            segments: Road pieces in driving order (at least one).
            ds: Sampling step (m); the projection error on an arc is about ``ds**2 * curvature / 8``.
            start: World ``(x, y)`` of the road's start (m).
            start_heading: Tangent direction at the start (rad).
            seed: Seed the road was generated from (``None`` for hand-built roads); stored for bookkeeping.

        Raises:
            ValueError: If ``segments`` is empty or contains something that is not a :class:`Segment`, or
                ``ds`` is not positive.
        """
        segs = tuple(segments)
        if not segs:
            raise ValueError("Road needs at least one Segment; got an empty list.")
        for i, seg in enumerate(segs):
            if not isinstance(seg, Segment):
                raise ValueError(
                    f"segments[{i}] is {type(seg).__name__}, expected Segment "
                    "(use Segment.straight / Segment.arc / Segment.ramp)."
                )
        if not (math.isfinite(ds) and ds > 0.0):
            raise ValueError(f"ds must be a positive number of metres, got {ds!r}.")
        start_xy = np.asarray(start, dtype=np.float64).reshape(-1)
        if start_xy.shape != (2,) or not np.all(np.isfinite(start_xy)):
            raise ValueError(f"start must be a finite (x, y) pair, got {start!r}.")
        self.segments: tuple[Segment, ...] = segs
        self.seed = seed
        self.ds = float(ds)

        lengths = np.array([seg.length for seg in segs])
        seg_start = np.concatenate([[0.0], np.cumsum(lengths)])
        self.length = float(seg_start[-1])
        n = max(2, int(math.ceil(self.length / self.ds - 1e-9)) + 1)
        s = np.linspace(0.0, self.length, n)
        # Sample boundaries of every segment exactly so that arcs are integrated without error.
        s = np.unique(np.concatenate([s, seg_start]))

        idx = np.clip(np.searchsorted(seg_start, s, side="right") - 1, 0, len(segs) - 1)
        k0 = np.array([seg.curvature_start for seg in segs])[idx]
        k1 = np.array([seg.curvature_end for seg in segs])[idx]
        seg_len = lengths[idx]
        u = s - seg_start[idx]
        heading0 = start_heading + np.concatenate([[0.0], np.cumsum([seg.heading_change for seg in segs])])
        heading = heading0[idx] + k0 * u + (k1 - k0) * u * u / (2.0 * seg_len)
        curvature = k0 + (k1 - k0) * u / seg_len

        # Chord between samples: exact for arcs (constant curvature), O(ds^3) accurate for ramps.
        dth = np.diff(heading)
        step = np.diff(s)
        chord = step * np.sinc(dth / (2.0 * np.pi))
        mid = heading[:-1] + 0.5 * dth
        xy = np.zeros((len(s), 2))
        xy[1:, 0] = np.cumsum(chord * np.cos(mid))
        xy[1:, 1] = np.cumsum(chord * np.sin(mid))
        xy += start_xy

        self.s: NDArray[np.float64] = s
        self.points: NDArray[np.float64] = xy
        self.heading: NDArray[np.float64] = heading
        self.curvature: NDArray[np.float64] = curvature
        for arr in (self.s, self.points, self.heading, self.curvature):
            arr.setflags(write=False)
        seg_vec = np.diff(xy, axis=0)
        self._seg_vec = seg_vec
        self._seg_len2 = np.maximum(np.einsum("ij,ij->i", seg_vec, seg_vec), 1e-18)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_segments(cls, segments: Iterable[Segment | Sequence[float]], **kwargs: object) -> Road:
        """Build a road from segments or ``(length, curvature_start, curvature_end)`` tuples.

        Args:
            segments: :class:`Segment` objects, or tuples ``(length,)``, ``(length, curvature)`` or
                ``(length, curvature_start, curvature_end)`` (m, 1/m).
            **kwargs: Forwarded to :class:`Road` (``ds``, ``start``, ``start_heading``, ``seed``).

        Returns:
            The sampled road.
        """
        segs: list[Segment] = []
        for i, item in enumerate(segments):
            if isinstance(item, Segment):
                segs.append(item)
                continue
            vals = tuple(float(v) for v in item)  # type: ignore[union-attr]
            if len(vals) == 1:
                segs.append(Segment.straight(vals[0]))
            elif len(vals) == 2:
                segs.append(Segment.arc(vals[0], vals[1]))
            elif len(vals) == 3:
                segs.append(Segment.ramp(*vals))
            else:
                raise ValueError(
                    f"segments[{i}] = {item!r}: expected (length,), (length, curvature) or "
                    "(length, curvature_start, curvature_end)."
                )
        return cls(segs, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def generate(cls, seed: int, config: RoadGenerationConfig | None = None, ds: float = 0.2) -> Road:
        """Draw a random road from ``seed`` (the same seed always gives the same road).

        The road starts with a straight lead-in, then alternates arcs of random curvature and direction,
        joined by linear curvature ramps, with straights in between; direction is biased back toward the start
        heading so roads meander instead of spiralling, and roads that come back close to themselves are
        re-drawn.

        Args:
            seed: Non-negative integer seed.
            config: Generator parameters (defaults: :class:`RoadGenerationConfig`).
            ds: Sampling step (m).

        Returns:
            The generated road, with ``road.seed == seed``.
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"road seed must be a non-negative int, got {seed!r}.")
        cfg = config or RoadGenerationConfig()
        rng = np.random.default_rng(int(seed))
        last: Road | None = None
        for _ in range(50):
            road = cls(_draw_segments(rng, cfg), ds=ds, seed=int(seed))
            if road._min_clearance_ok(cfg.min_clearance):
                return road
            last = road
        assert last is not None
        return last

    # ------------------------------------------------------------------ queries
    def _min_clearance_ok(self, clearance: float) -> bool:
        stride = max(1, int(round(2.0 / self.ds)))
        pts = self.points[::stride]
        ss = self.s[::stride]
        d2 = np.sum((pts[:, None, :] - pts[None, :, :]) ** 2, axis=-1)
        far_along = np.abs(ss[:, None] - ss[None, :]) > 3.0 * clearance
        return not bool(np.any(d2[far_along] < clearance**2))

    def _interp(self, values: NDArray[np.float64], s: ArrayLike) -> NDArray[np.float64]:
        return np.interp(np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length), self.s, values)

    def curvature_at(self, s: ArrayLike) -> NDArray[np.float64]:
        """Signed curvature (1/m) at arc length(s) ``s`` (m), clipped to the road's ends."""
        return self._interp(self.curvature, s)

    def heading_at(self, s: ArrayLike) -> NDArray[np.float64]:
        """Tangent direction (rad, unwrapped) at arc length(s) ``s`` (m), clipped to the road's ends."""
        return self._interp(self.heading, s)

    def point_at(self, s: ArrayLike) -> NDArray[np.float64]:
        """Centre-line position(s) ``(..., 2)`` (m) at arc length(s) ``s`` (m), clipped to the road's ends."""
        sa = np.asarray(s, dtype=np.float64)
        return np.stack([self._interp(self.points[:, 0], sa), self._interp(self.points[:, 1], sa)], axis=-1)

    def offset_points(self, lateral: float, s: ArrayLike | None = None) -> NDArray[np.float64]:
        """Points at a signed lateral offset (m, > 0 = left) from the centre line, ``(P, 2)`` or at ``s``."""
        if s is None:
            pts, hd = self.points, self.heading
        else:
            pts, hd = self.point_at(s), self.heading_at(s)
        normal = np.stack([-np.sin(hd), np.cos(hd)], axis=-1)
        return pts + lateral * normal

    def project(self, xy: ArrayLike, s_hint: float | None = None, window: float = 15.0) -> Projection:
        """Project a point onto the centre line.

        Args:
            xy: World position ``(x, y)`` (m).
            s_hint: Arc length (m) near which to search (e.g. the previous step's ``s``); ``None`` searches
                the whole road. A hint keeps the projection on the right branch where a road passes near
                itself.
            window: Half-width (m) of the search window around ``s_hint``.

        Returns:
            :class:`Projection` ``(s, lateral, heading)``.
        """
        p = np.asarray(xy, dtype=np.float64).reshape(-1)[:2]
        if p.shape != (2,) or not np.all(np.isfinite(p)):
            raise ValueError(f"project() needs a finite (x, y) position, got {xy!r}.")
        nseg = len(self._seg_len2)
        if s_hint is None:
            lo, hi = 0, nseg
        else:
            lo = max(0, int(np.searchsorted(self.s, s_hint - window)) - 1)
            hi = min(nseg, int(np.searchsorted(self.s, s_hint + window)) + 1)
        a = self.points[lo:hi]
        v = self._seg_vec[lo:hi]
        t = np.clip(np.einsum("ij,ij->i", p - a, v) / self._seg_len2[lo:hi], 0.0, 1.0)
        q = a + t[:, None] * v
        d2 = np.sum((p - q) ** 2, axis=1)
        j = int(np.argmin(d2))
        i = lo + j
        step = float(self.s[i + 1] - self.s[i])
        h0 = float(self.heading[i])
        rate = (
            float(self.heading[i + 1]) - h0
        ) / step  # local curvature: the segment is an arc between samples
        x0, y0 = float(self.points[i, 0]), float(self.points[i, 1])
        u = float(t[j]) * step
        # Newton steps on (p - c(u)) . T(u) = 0 along the local arc: the chord projection alone is off by up
        # to |lateral| * curvature * ds along the road.
        for _ in range(3):
            th = rate * u
            chord = u * _sinc_half(th)
            cx, cy = x0 + chord * math.cos(h0 + 0.5 * th), y0 + chord * math.sin(h0 + 0.5 * th)
            h = h0 + th
            dx, dy = float(p[0]) - cx, float(p[1]) - cy
            along = dx * math.cos(h) + dy * math.sin(h)
            lateral = -dx * math.sin(h) + dy * math.cos(h)
            u = min(max(u + along / max(1.0 - rate * lateral, 0.1), -step), 2.0 * step)
        th = rate * u
        chord = u * _sinc_half(th)
        cx, cy = x0 + chord * math.cos(h0 + 0.5 * th), y0 + chord * math.sin(h0 + 0.5 * th)
        h = h0 + th
        lateral = -(float(p[0]) - cx) * math.sin(h) + (float(p[1]) - cy) * math.cos(h)
        s = min(max(float(self.s[i]) + u, 0.0), self.length)
        return Projection(s, float(lateral), float(h))

    def bounds(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """Bounding box ``(xmin, ymin, xmax, ymax)`` of the centre line, grown by ``margin`` (m)."""
        lo = self.points.min(axis=0) - margin
        hi = self.points.max(axis=0) + margin
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_road,
            (self.segments, self.ds, tuple(self.points[0]), float(self.heading[0]), self.seed),
        )

    def __repr__(self) -> str:
        return f"Road(length={self.length:.1f} m, segments={len(self.segments)}, seed={self.seed})"


def _sinc_half(angle: float) -> float:
    """Chord length / arc length for an arc turning ``angle`` radians: ``sin(angle / 2) / (angle / 2)``."""
    half = 0.5 * angle
    return 1.0 - half * half / 6.0 if abs(half) < 1e-4 else math.sin(half) / half


def _rebuild_road(
    segments: tuple[Segment, ...], ds: float, start: tuple[float, float], heading: float, seed: int | None
) -> Road:
    return Road(segments, ds=ds, start=start, start_heading=heading, seed=seed)


def _draw_segments(rng: np.random.Generator, cfg: RoadGenerationConfig) -> list[Segment]:
    segs = [Segment.straight(cfg.lead_in)]
    total = cfg.lead_in
    k = 0.0
    heading = 0.0
    kmin, kmax = cfg.curvature_range
    force_curve = True
    while total < cfg.length:
        if k == 0.0 and not force_curve and rng.random() < cfg.straight_probability:
            seg = Segment.straight(rng.uniform(*cfg.straight_length))
            segs.append(seg)
            total += seg.length
            force_curve = True
            continue
        force_curve = False
        # Bias the turn direction back toward the initial heading so the road meanders.
        p_left = 0.5 - 0.35 * math.tanh(heading / 1.2)
        sign = 1.0 if rng.random() < p_left else -1.0
        k_new = sign * rng.uniform(kmin, kmax)
        if abs(k_new - k) > 1e-12:
            ramp_len = max(cfg.min_ramp_length, abs(k_new - k) / cfg.ramp_rate)
            seg = Segment.ramp(ramp_len, k, k_new)
            segs.append(seg)
            total += seg.length
            heading += seg.heading_change
        arc_len = rng.uniform(*cfg.arc_length)
        if abs(k_new) > 0.0:
            arc_len = min(arc_len, cfg.max_turn / abs(k_new))
        seg = Segment.arc(arc_len, k_new)
        segs.append(seg)
        total += seg.length
        heading += seg.heading_change
        k = k_new
        if rng.random() < 0.5:
            ramp_len = max(cfg.min_ramp_length, abs(k) / cfg.ramp_rate)
            seg = Segment.ramp(ramp_len, k, 0.0)
            segs.append(seg)
            total += seg.length
            heading += seg.heading_change
            k = 0.0
    if k != 0.0:
        segs.append(Segment.ramp(max(cfg.min_ramp_length, abs(k) / cfg.ramp_rate), k, 0.0))
    segs.append(Segment.straight(10.0))
    return segs
