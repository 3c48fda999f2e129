"""Privileged expert controllers for lane keeping, and the steering noise used to collect recoveries.

The experts read only the env's privileged ``info`` (never the image): lateral offset, heading error,
curvature at the car and ahead of it, and speed. They implement the Agent protocol of
``ltc_control.agents.episode`` (``reset()`` / ``act(obs, info) -> np.ndarray (1,)``) and expose
``label(info) -> float``, the clean action at a state: that is the label stored in datasets and the one
DAgger asks for at the states a learner visits.

Sign conventions (``docs/architecture.md``): ``lateral_offset`` > 0 means the car is left of the centre line,
``heading_error`` > 0 means it points left of the road tangent, ``curvature`` > 0 is a left turn,
and a positive normalised steering command turns left.

Example:
    >>> expert = StanleyExpert()
    >>> info = {"lateral_offset": 0.0, "heading_error": 0.0, "curvature": 0.0, "speed": 10.0}
    >>> float(expert.label(info))
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ExpertConfig",
    "NoiseConfig",
    "StanleyExpert",
    "PurePursuitExpert",
    "SteeringNoise",
    "NoisyAgent",
    "make_expert",
    "EXPERT_KINDS",
]

EXPERT_KINDS = ("stanley", "pure_pursuit")


@dataclass(frozen=True)
class ExpertConfig:
    """Configuration of the privileged lane-keeping expert.

    Attributes:
        kind: ``"stanley"`` (front-axle cross-track + heading law) or ``"pure_pursuit"`` (arc to a look-ahead
            point on the centre line).
        wheelbase: car wheelbase in metres (the env car: 2.6), used for the curvature feed-forward
            ``atan(L * kappa)``.
        max_steer: steering angle in radians that the normalised command 1.0 maps to.
        gain_lateral: Stanley cross-track gain ``k`` in ``atan(k * e / (v + v_soft))`` (1/s).
        gain_heading: multiplier on the heading error (dimensionless).
        softening_speed: ``v_soft`` in m/s; keeps the cross-track term finite at low speed.
        feedforward: add the curvature feed-forward ``atan(L * kappa)``.
        feedforward_preview: which entry of ``info["curvature_ahead"]`` the feed-forward uses (-1: the
            curvature at the car, ``info["curvature"]``). A short preview compensates for the steering lag.
        lookahead_time: pure pursuit look-ahead distance per unit speed (s).
        min_lookahead: pure pursuit minimum look-ahead distance (m).
        car_from_info: take ``wheelbase`` and ``max_steer`` from ``info`` when the env reports them (the
            lane-keeping env does), instead of the two fields above.
        front_axle: Stanley measures the cross-track error at the front axle (``info["front_lateral_offset"]``
            when present, else ``lateral_offset + front_axle_distance * sin(heading_error)``).
        front_axle_distance: car reference point to front axle (m), used when the env does not report it.
    """

    kind: str = "stanley"
    wheelbase: float = 2.6
    max_steer: float = 0.5
    gain_lateral: float = 3.0
    gain_heading: float = 1.0
    softening_speed: float = 1.0
    feedforward: bool = True
    feedforward_preview: int = -1
    lookahead_time: float = 0.6
    min_lookahead: float = 4.0
    car_from_info: bool = True
    front_axle: bool = True
    front_axle_distance: float = 1.3

    def __post_init__(self) -> None:
        if self.kind not in EXPERT_KINDS:
            raise ValueError(
                f"ExpertConfig.kind={self.kind!r} is unknown; valid kinds: {', '.join(EXPERT_KINDS)}"
            )
        for name in ("wheelbase", "max_steer", "softening_speed", "min_lookahead", "front_axle_distance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ExpertConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("gain_lateral", "gain_heading", "lookahead_time"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ExpertConfig.{name} must be a finite number >= 0, got {value!r}")


def _scalar(info: Mapping[str, Any], key: str) -> float:
    """Read one finite float from ``info`` or raise a clear error."""
    if key not in info:
        raise KeyError(
            f"expert needs info[{key!r}] from the lane-keeping env; got keys {sorted(info)}. "
            "Pass the info dict returned by LTC/LaneKeeping-v0's reset()/step()."
        )
    value = float(np.asarray(info[key], dtype=np.float64).reshape(-1)[0])
    if not math.isfinite(value):
        raise ValueError(f"expert got a non-finite info[{key!r}] = {value}")
    return value


class _ExpertBase:
    """Shared plumbing: the Agent protocol on top of ``label``."""

    def __init__(self, config: ExpertConfig | None = None) -> None:
        self.config = config if config is not None else ExpertConfig()

    def reset(self) -> None:
        """Start a new episode (the experts are stateless)."""

    def _feedforward_curvature(self, info: Mapping[str, Any]) -> float:
        idx = self.config.feedforward_preview
        if idx >= 0 and "curvature_ahead" in info:
            ahead = np.asarray(info["curvature_ahead"], dtype=np.float64).reshape(-1)
            if idx >= ahead.size:
                raise ValueError(
                    f"ExpertConfig.feedforward_preview={idx} but info['curvature_ahead'] has only "
                    f"{ahead.size} "
                    f"entries; use an index in [0, {ahead.size}) or -1 for the curvature at the car"
                )
            return float(ahead[idx])
        return _scalar(info, "curvature")

    def steering_angle(self, info: Mapping[str, Any]) -> float:
        """The commanded front-wheel angle in radians (unclipped)."""
        raise NotImplementedError

    def _car(self, info: Mapping[str, Any]) -> tuple[float, float]:
        """(wheelbase m, max_steer rad): from ``info`` when allowed and present, else from the config."""
        c = self.config
        if c.car_from_info and "wheelbase" in info and "max_steer" in info:
            return _scalar(info, "wheelbase"), _scalar(info, "max_steer")
        return c.wheelbase, c.max_steer

    def label(self, info: Mapping[str, Any]) -> float:
        """The clean normalised steering command in [-1, 1] at the state described by ``info``.

        Args:
            info: the env's info dict (needs ``lateral_offset`` (m), ``heading_error`` (rad),
                ``curvature`` (1/m), ``speed`` (m/s); ``curvature_ahead`` for a preview).

        Returns:
            Steering in [-1, 1]; positive turns left.
        """
        return float(np.clip(self.steering_angle(info) / self._car(info)[1], -1.0, 1.0))

    def act(self, obs: Any, info: Mapping[str, Any]) -> np.ndarray:
        """Agent protocol: the clean action as a float32 array of shape (1,). ``obs`` is ignored."""
        del obs
        return np.array([self.label(info)], dtype=np.float32)


class StanleyExpert(_ExpertBase):
    """Stanley controller with curvature feed-forward.

    ``delta = atan(L kappa) - g_h * heading_error - atan(k * lateral_offset / (v + v_soft))``.
    """

    def steering_angle(self, info: Mapping[str, Any]) -> float:
        """The commanded front-wheel angle in radians (unclipped)."""
        c = self.config
        lateral = _scalar(info, "lateral_offset")
        heading = _scalar(info, "heading_error")
        speed = abs(_scalar(info, "speed"))
        wheelbase, _ = self._car(info)
        if c.front_axle:
            if "front_lateral_offset" in info:
                lateral = _scalar(info, "front_lateral_offset")
            else:
                lateral = lateral + c.front_axle_distance * math.sin(heading)
        delta = -c.gain_heading * heading - math.atan2(c.gain_lateral * lateral, speed + c.softening_speed)
        if c.feedforward:
            delta += math.atan(wheelbase * self._feedforward_curvature(info))
        return delta


class PurePursuitExpert(_ExpertBase):
    """Pure pursuit toward a look-ahead point on the centre line, with curvature feed-forward.

    In the car frame the target point at look-ahead distance ``ld`` lies at lateral offset
    ``y = -e - ld * sin(psi) + 0.5 * kappa * ld^2`` (small-angle road geometry), which gives the arc curvature
    ``2 y / ld^2``; the feed-forward part is already inside that expression, so ``feedforward`` only selects
    whether the road-curvature term is used.
    """

    def steering_angle(self, info: Mapping[str, Any]) -> float:
        """The commanded front-wheel angle in radians (unclipped)."""
        c = self.config
        lateral = _scalar(info, "lateral_offset")
        heading = _scalar(info, "heading_error")
        speed = abs(_scalar(info, "speed"))
        ld = max(c.min_lookahead, c.lookahead_time * speed)
        target_y = -lateral - ld * math.sin(c.gain_heading * heading)
        if c.feedforward:
            target_y += 0.5 * self._feedforward_curvature(info) * ld * ld
        arc_curvature = 2.0 * target_y / (ld * ld)
        return math.atan(self._car(info)[0] * arc_curvature)


def make_expert(config: ExpertConfig | None = None) -> StanleyExpert | PurePursuitExpert:
    """Build the expert named by ``config.kind``."""
    config = config if config is not None else ExpertConfig()
    if config.kind == "stanley":
        return StanleyExpert(config)
    return PurePursuitExpert(config)


@dataclass(frozen=True)
class NoiseConfig:
    """Steering noise injected into the executed action during collection (the label stays clean).

    Attributes:
        ou_sigma: stationary standard deviation of the Ornstein-Uhlenbeck noise (normalised steering units).
        ou_theta: mean-reversion rate of the OU process (1/s).
        burst_probability: chance per second that a perturbation burst starts.
        burst_magnitude: maximum absolute offset of a burst (normalised steering); the sign and size are drawn
            uniformly from ``[-m, -m/2] U [m/2, m]``.
        burst_min_duration: shortest burst in seconds.
        burst_max_duration: longest burst in seconds.
        warmup_steps: clean steps at the start of each episode (lets the car settle before perturbing it).
    """

    ou_sigma: float = 0.1
    ou_theta: float = 1.0
    burst_probability: float = 0.15
    burst_magnitude: float = 0.5
    burst_min_duration: float = 0.3
    burst_max_duration: float = 0.8
    warmup_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("ou_sigma", "ou_theta", "burst_probability", "burst_magnitude"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"NoiseConfig.{name} must be a finite number >= 0, got {value!r}")
        lo, hi = self.burst_min_duration, self.burst_max_duration
        if not (0 < lo <= hi):
            raise ValueError(
                f"NoiseConfig needs 0 < burst_min_duration <= burst_max_duration, got {lo} and {hi}"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"NoiseConfig.warmup_steps must be >= 0, got {self.warmup_steps}")


class SteeringNoise:
    """Seeded Ornstein-Uhlenbeck noise plus random perturbation bursts, sampled once per control step.

    Args:
        config: noise parameters.
        dt: control period in seconds.
        seed: RNG seed; the same seed gives the same noise sequence.
    """

    def __init__(self, config: NoiseConfig, dt: float, seed: int) -> None:
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"SteeringNoise dt must be > 0 seconds, got {dt!r}")
        self.config = config
        self.dt = dt
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        """Zero the OU state and end any burst (call at each episode start)."""
        self._ou = 0.0
        self._burst_left = 0
        self._burst_value = 0.0
        self._step = 0

    def sample(self) -> float:
        """The additive steering noise for the next step."""
        c = self.config
        self._step += 1
        if self._step <= c.warmup_steps:
            return 0.0
        # Exact discretisation of dx = -theta x dt + sigma sqrt(2 theta) dW: stationary std stays ou_sigma.
        if c.ou_theta > 0:
            decay = math.exp(-c.ou_theta * self.dt)
            self._ou = (
                self._ou * decay + c.ou_sigma * math.sqrt(1.0 - decay * decay) * self.rng.standard_normal()
            )
        else:
            self._ou = c.ou_sigma * self.rng.standard_normal()
        if self._burst_left > 0:
            self._burst_left -= 1
        elif c.burst_magnitude > 0 and self.rng.random() < c.burst_probability * self.dt:
            lo, hi = c.burst_min_duration, c.burst_max_duration
            self._burst_left = max(1, round(self.rng.uniform(lo, hi) / self.dt))
            size = self.rng.uniform(0.5 * c.burst_magnitude, c.burst_magnitude)
            self._burst_value = size if self.rng.random() < 0.5 else -size
        burst = self._burst_value if self._burst_left > 0 else 0.0
        return self._ou + burst


class NoisyAgent:
    """Wraps an expert: executes ``clip(clean + noise)`` and remembers the clean label of the last step.

    Args:
        expert: the privileged expert.
        noise: the steering noise (``None``: no noise).
    """

    def __init__(self, expert: StanleyExpert | PurePursuitExpert, noise: SteeringNoise | None) -> None:
        self.expert = expert
        self.noise = noise
        self.last_label = 0.0

    def reset(self) -> None:
        """Start a new episode."""
        self.expert.reset()
        if self.noise is not None:
            self.noise.reset()

    def act(self, obs: Any, info: Mapping[str, Any]) -> np.ndarray:
        """The executed (noisy) action, float32 shape (1,); the clean one is in ``last_label``."""
        del obs
        self.last_label = self.expert.label(info)
        executed = self.last_label + (self.noise.sample() if self.noise is not None else 0.0)
        return np.array([np.clip(executed, -1.0, 1.0)], dtype=np.float32)
