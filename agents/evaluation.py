"""Closed-loop evaluation of driving agents, with image-noise robustness (DESIGN.md section 5).

The pieces, from small to large:

- :class:`Agent` is the protocol every closed-loop controller implements (``reset()``,
  ``act(obs, info)``); :class:`PolicyAgent` adapts an ``ltc_control.policy.Policy`` and
  :class:`ConstantAgent` always sends one action.
- :class:`Perturbation` describes what is done to each camera image before the agent sees it: zero-mean
  Gaussian noise of a given *variance* on the image scaled to [0, 1] (the protocol of Lechner et al. 2020),
  plus optional brightness, blur and occlusion patches. The random numbers come from a generator seeded with
  ``(noise seed, road seed, step)``, so every model sees exactly the same noise on the same road.
- :func:`run_episode` drives one episode and returns an :class:`EpisodeResult` (per-step arrays).
- :func:`episode_metrics` / :func:`summarize` turn episodes into the metrics of the evaluation protocol;
  :func:`evaluate` runs many (road seed, noise level) episodes in parallel worker processes and returns an
  :class:`EvalReport` that writes JSON, CSV and a plot.

Example:
    >>> from ltc_control.agents.evaluation import ConstantAgent, evaluate
    >>> report = evaluate(ConstantAgent([0.0]), "LTC/LaneKeeping-v0", seeds=range(1000, 1004), workers=0)
    ... # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ltc_control.runs import atomic_write_bytes

__all__ = [
    "Agent",
    "AgentSpec",
    "ConstantAgent",
    "EpisodeMetrics",
    "EvalConfig",
    "EpisodeResult",
    "EvalReport",
    "LevelSummary",
    "Perturbation",
    "PolicyAgent",
    "Stat",
    "StepRecord",
    "episode_metrics",
    "evaluate",
    "evaluate_main",
    "agent_label",
    "make_agent",
    "prepare_run_dir",
    "make_env",
    "plot_crashes_per_km",
    "parse_seeds",
    "run_episode",
    "summarize",
    "torch_threads",
]


# ----------------------------------------------------------------------------------------------------------
# Agents
# ----------------------------------------------------------------------------------------------------------


@runtime_checkable
class Agent(Protocol):
    """A closed-loop controller.

    ``reset()`` is called at the start of every episode (recurrent agents clear their state there);
    ``act(obs, info)`` receives the observation the agent is allowed to see (possibly perturbed) and the env's
    ``info`` dict of the *previous* step (privileged experts read it; learned policies must ignore it) and
    returns the action, a float array of shape ``(A,)`` in the env's action space.
    """

    def reset(self) -> None:
        """Start a new episode."""
        ...

    def act(self, obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
        """Return the action ``(A,)`` for observation ``obs``."""
        ...


class ConstantAgent:
    """An agent that always sends the same action (e.g. zero steering: the "do nothing" baseline).

    Args:
        action: the action, shape ``(A,)`` (a scalar is treated as ``(1,)``).
    """

    def __init__(self, action: Sequence[float] | np.ndarray | float) -> None:
        arr = np.atleast_1d(np.asarray(action, dtype=np.float32))
        if arr.ndim != 1:
            raise ValueError(f"ConstantAgent: action must have shape (A,), got {arr.shape}; pass a flat list")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"ConstantAgent: action must be finite, got {arr.tolist()}")
        self.action = arr

    def reset(self) -> None:
        """Nothing to reset: the agent has no state."""

    def act(self, obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
        """Return a copy of the constant action ``(A,)``."""
        return self.action.copy()

    def __repr__(self) -> str:
        return f"ConstantAgent({self.action.tolist()})"


class PolicyAgent:
    """Adapts an ``ltc_control.policy.Policy`` to the :class:`Agent` protocol.

    The agent carries the policy's recurrent state across steps and resets it at every episode start. After
    each ``act`` the state is available as :attr:`last_state` and the per-neuron activity (what the video
    panel and the inspection tools show) as :meth:`neuron_activity`.

    Args:
        policy: the policy; ``policy.act(obs, state) -> (action, state)`` and ``policy.reset(batch)``.
        device: torch device the policy runs on (``"cpu"``, ``"cuda"``...).
    """

    def __init__(self, policy: Any, device: str = "cpu") -> None:
        import torch

        self.policy = policy
        self.device = torch.device(device)
        if hasattr(policy, "to"):
            policy.to(self.device)
        if hasattr(policy, "eval"):
            policy.eval()
        self.state: Any = None
        self.last_state: np.ndarray | None = None
        self.last_action: np.ndarray | None = None

    @property
    def cell(self) -> Any:
        """The controller's recurrent cell (``policy.controller.cell``), or None if the policy has none."""
        controller = getattr(self.policy, "controller", None)
        return getattr(controller, "cell", None)

    @property
    def num_neurons(self) -> int:
        """Number of neurons shown to inspection (0 when the policy exposes no cell)."""
        cell = self.cell
        return int(getattr(cell, "num_neurons", 0)) if cell is not None else 0

    @property
    def neuron_names(self) -> list[str]:
        """Names of the neurons, length :attr:`num_neurons`."""
        cell = self.cell
        return list(getattr(cell, "neuron_names", [])) if cell is not None else []

    @property
    def neuron_roles(self) -> list[str]:
        """Roles of the neurons (``inter``, ``command``, ``motor``, ``hidden``...), one per neuron."""
        cell = self.cell
        return list(getattr(cell, "neuron_roles", [])) if cell is not None else []

    def reset(self) -> None:
        """Reset the recurrent state to the policy's initial state (batch 1)."""
        self.state = self.policy.reset(1)
        self.last_state = _state_to_numpy(self.state)
        self.last_action = None

    def act(self, obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
        """One control step: ``obs`` uint8 ``(H, W, 3)`` (or a float vector ``(D,)``) -> action ``(A,)``."""
        import torch

        if self.state is None:
            self.reset()
        with torch.no_grad():
            action, self.state = self.policy.act(obs, self.state)
        if isinstance(action, torch.Tensor):
            action = action.detach().cpu().numpy()
        out = np.asarray(action, dtype=np.float32).reshape(-1)
        self.last_state = _state_to_numpy(self.state)
        self.last_action = out
        return out

    def neuron_activity(self) -> np.ndarray:
        """Activity of every inspected neuron after the last step, float ``(num_neurons,)``.

        For cells whose state is wider than their neurons (LSTM: ``[h, c]``) the first ``num_neurons`` entries
        (the hidden state ``h``) are returned, as the cell contract orders them.
        """
        if self.last_state is None:
            return np.zeros(self.num_neurons, dtype=np.float32)
        flat = self.last_state.reshape(-1)
        n = self.num_neurons or flat.shape[0]
        return flat[:n].astype(np.float32)


def _state_to_numpy(state: Any) -> np.ndarray | None:
    """Flatten a policy state (tensor, tuple of tensors or None) into a float array for display."""
    if state is None:
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(state, torch.Tensor):
        return state.detach().float().cpu().numpy().reshape(-1)
    if isinstance(state, tuple | list):
        parts = [_state_to_numpy(s) for s in state]
        arrays = [p for p in parts if p is not None]
        return np.concatenate(arrays) if arrays else None
    if isinstance(state, Mapping):
        parts = [_state_to_numpy(v) for v in state.values()]
        arrays = [p for p in parts if p is not None]
        return np.concatenate(arrays) if arrays else None
    return np.asarray(state, dtype=np.float32).reshape(-1)


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads inside the block, then restore the previous setting.

    Closed loops run batch-1 inference of small networks, where thread hand-offs cost more than they save:
    on a busy 2-core machine one LTC policy step took 3.4 ms with one thread and 173 ms with two.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# An agent is given to `evaluate` as a picklable zero-argument factory, a ready agent (pickled into each
# worker), a checkpoint directory, or the string "expert" (ltc_control.agents.experts' expert).
AgentSpec = Callable[[], Agent] | Agent | str | os.PathLike[str]


def make_agent(spec: AgentSpec, device: str = "cpu") -> Agent:
    """Build an :class:`Agent` from an agent spec.

    Args:
        spec: a checkpoint directory (loaded with ``ltc_control.checkpoint.load_checkpoint`` and wrapped in a
            :class:`PolicyAgent`), a ``Policy`` (wrapped likewise), the string ``"expert"`` (or
            ``"expert:<kind>"``) for the privileged expert, an object implementing :class:`Agent`, or a
            zero-argument callable returning one.
        device: torch device for checkpoint policies.

    Returns:
        The agent.

    Raises:
        FileNotFoundError: the checkpoint directory does not exist.
        TypeError: the spec is none of the above.
    """
    if isinstance(spec, str) and (spec == "expert" or spec.startswith("expert:")):
        return _make_expert(spec.partition(":")[2] or None)
    if isinstance(spec, str | os.PathLike):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {str(path)!r} does not exist; pass a checkpoint directory written by "
                "ltc_control.checkpoint.save_checkpoint (model.json + model.safetensors) or 'expert'"
            )
        from ltc_control.checkpoint import load_checkpoint

        policy, _ = load_checkpoint(path)
        return PolicyAgent(policy, device=device)
    if _is_policy(spec):
        # a Policy has reset()/act() too, but act(obs, state): it must be wrapped, never used as an Agent
        return PolicyAgent(spec, device=device)
    if isinstance(spec, Agent) and not isinstance(spec, type):
        return spec
    if callable(spec):
        agent = spec()
        if not isinstance(agent, Agent):
            raise TypeError(
                f"agent factory {spec!r} returned {type(agent).__name__}, which lacks reset()/act()"
            )
        return agent
    raise TypeError(
        f"cannot build an agent from {type(spec).__name__}; pass a checkpoint directory, 'expert', an object "
        "with reset() and act(obs, info), or a zero-argument factory returning one"
    )


def _is_policy(obj: Any) -> bool:
    """True for an ``ltc_control.policy.Policy`` (or any torch module with a ``controller``)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module) and hasattr(obj, "controller")


def _make_expert(kind: str | None) -> Agent:
    """The privileged lane-keeping expert of ``ltc_control.agents.experts`` (imported lazily).

    Args:
        kind: the expert kind (``ExpertConfig.kind``: ``"stanley"``, ``"pure_pursuit"``); None = default.
    """
    try:
        from ltc_control.agents import experts
    except ImportError as exc:
        raise ImportError(
            "the 'expert' agent needs ltc_control.agents.experts, which failed to import: " + str(exc)
        ) from exc
    config = experts.ExpertConfig(kind=kind) if kind else None
    return experts.make_expert(config)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# Perturbations (noise robustness)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perturbation:
    """What is done to each observation before the agent sees it.

    Images (uint8 ``(H, W, C)``) are scaled to [0, 1]; then, in this order: ``brightness`` is added, the image
    is blurred with a Gaussian of ``blur_sigma`` pixels, ``occlusion_patches`` black squares of side
    ``occlusion_size * min(H, W)`` are drawn at random places, zero-mean Gaussian noise of variance
    ``noise_variance`` is added; the result is clipped to [0, 1] and rounded back to uint8. Float vector
    observations get only the Gaussian noise, in their own units.

    All random numbers of step ``t`` on road ``r`` come from ``numpy.random.default_rng([seed, r, t])``: two
    models evaluated on the same roads see identical noise, and a different ``seed`` gives different noise.

    Args:
        noise_variance: variance of the additive Gaussian noise on the [0, 1] image scale (0.1 -> std 0.316).
        seed: the noise seed.
        brightness: additive brightness offset on the [0, 1] scale (e.g. -0.2 darkens).
        blur_sigma: standard deviation of the Gaussian blur, in pixels (0 = none).
        occlusion_patches: number of black square patches per image.
        occlusion_size: patch side as a fraction of ``min(H, W)``.
        camera_offset: lateral dash-camera offset in metres (+ = left), applied by the env, not to the image:
            the ``LTC/`` envs get ``visuals={"camera_pos_offset": (0, offset, 0)}``, other envs a
            ``camera_offset`` keyword (an error if they have no such option). Used by :func:`evaluate`.
    """

    noise_variance: float = 0.0
    seed: int = 0
    brightness: float = 0.0
    blur_sigma: float = 0.0
    occlusion_patches: int = 0
    occlusion_size: float = 0.15
    camera_offset: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "noise_variance": self.noise_variance >= 0,
            "blur_sigma": self.blur_sigma >= 0,
            "occlusion_patches": self.occlusion_patches >= 0,
            "occlusion_size": 0 < self.occlusion_size <= 1,
            "seed": self.seed >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(float(value)):
                raise ValueError(
                    f"Perturbation.{name}={value!r} is invalid: variances, sigmas, counts and seeds must be "
                    "finite and >= 0 and occlusion_size in (0, 1]"
                )
        for name in ("brightness", "camera_offset"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"Perturbation.{name} must be finite, got {getattr(self, name)!r}")

    @property
    def is_identity(self) -> bool:
        """True when the perturbation leaves observations unchanged."""
        return (
            self.noise_variance == 0
            and self.brightness == 0
            and self.blur_sigma == 0
            and self.occlusion_patches == 0
        )

    def rng(self, road_seed: int, step: int, entry: int | None = None) -> np.random.Generator:
        """The generator for step ``step`` of road ``road_seed`` (identical for every model).

        Args:
            road_seed: the episode's road seed (>= 0).
            step: the step index (>= 0).
            entry: index of the entry in a Dict observation (None for plain observations).
        """
        if road_seed < 0 or step < 0:
            raise ValueError(f"road seed and step must be >= 0 for noise seeding, got {road_seed}, {step}")
        key = [int(self.seed), int(road_seed), int(step)] + ([] if entry is None else [int(entry)])
        return np.random.default_rng(key)

    def apply(self, obs: Any, road_seed: int, step: int) -> Any:
        """Perturb one observation.

        Args:
            obs: uint8 image ``(H, W, C)``, float vector ``(D,)``, or a dict of those (Dict observation
                spaces: only the uint8 images in it are perturbed, other entries are passed through).
            road_seed: the episode's road seed (the seed passed to ``env.reset``).
            step: the step index within the episode (0 = the observation returned by ``reset``).

        Returns:
            The perturbed observation, same shape and dtype as ``obs`` (``obs`` itself when nothing changes).
        """
        if self.is_identity:
            return obs
        if isinstance(obs, Mapping):
            # one generator per entry, derived from the entry's position, so entries get independent noise
            out = {}
            for k, (key, value) in enumerate(obs.items()):
                arr = np.asarray(value)
                out[key] = self._apply_array(arr, road_seed, step, k) if arr.dtype == np.uint8 else value
            return out
        return self._apply_array(np.asarray(obs), road_seed, step, None)

    def _apply_array(self, obs: np.ndarray, road_seed: int, step: int, entry: int | None) -> np.ndarray:
        rng = self.rng(road_seed, step) if entry is None else self.rng(road_seed, step, entry)
        if obs.dtype == np.uint8:
            if obs.ndim != 3:
                raise ValueError(f"image perturbations need a uint8 (H, W, C) image, got shape {obs.shape}")
            img = obs.astype(np.float32) * (1.0 / 255.0)
            if self.brightness:
                img += np.float32(self.brightness)
            if self.blur_sigma > 0:
                import cv2

                img = np.asarray(
                    cv2.GaussianBlur(img, (0, 0), sigmaX=float(self.blur_sigma)), dtype=np.float32
                )
                if img.ndim == 2:  # cv2 drops a trailing channel axis of size 1
                    img = img[:, :, None]
            if self.occlusion_patches:
                h, w = img.shape[:2]
                side = max(1, round(self.occlusion_size * min(h, w)))
                ys = rng.integers(0, max(1, h - side + 1), self.occlusion_patches)
                xs = rng.integers(0, max(1, w - side + 1), self.occlusion_patches)
                for y, x in zip(ys, xs):
                    img[y : y + side, x : x + side] = 0.0
            if self.noise_variance > 0:
                std = np.float32(math.sqrt(self.noise_variance))
                img += rng.standard_normal(img.shape, dtype=np.float32) * std
            np.clip(img, 0.0, 1.0, out=img)
            return np.rint(img * 255.0).astype(np.uint8)
        if self.noise_variance == 0:
            return obs
        noise = rng.standard_normal(obs.shape) * math.sqrt(self.noise_variance)
        return (obs + noise).astype(obs.dtype, copy=False)


def _as_perturbation(noise: float | Perturbation | None, seed: int = 0) -> Perturbation:
    if noise is None:
        return Perturbation(seed=seed)
    if isinstance(noise, Perturbation):
        return noise
    return Perturbation(noise_variance=float(noise), seed=seed)


# ----------------------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    """What :func:`run_episode` passes to its ``on_step`` callback after every env step.

    Attributes:
        step: step index (0-based).
        obs: the observation the agent acted on (after perturbation).
        action: the action sent to the env ``(A,)`` (after clipping to the action space).
        reward: the env's reward.
        info: the env's ``info`` after the step.
        prev_info: the ``info`` the agent saw when acting (before the step).
        terminated: the env's ``terminated`` flag.
        truncated: the env's ``truncated`` flag (or the ``max_steps`` cap).
        agent: the agent (e.g. to read a :class:`PolicyAgent`'s neuron activity).
    """

    step: int
    obs: np.ndarray
    action: np.ndarray
    reward: float
    info: Mapping[str, Any]
    prev_info: Mapping[str, Any]
    terminated: bool
    truncated: bool
    agent: Agent


@dataclass
class EpisodeResult:
    """Per-step record of one closed-loop episode (``T`` steps).

    Attributes:
        seed: road seed passed to ``env.reset``.
        lateral_error: signed lateral offset from the lane centre after each step, metres ``(T,)`` (NaN when
            the env reports none).
        steering: steering command (first action component) ``(T,)``, normalised to [-1, 1].
        actions: every action sent ``(T, A)``.
        speed: car speed after each step, m/s ``(T,)`` (NaN when unknown).
        distance: distance along the road after each step, metres ``(T,)`` (NaN when unknown).
        positions: car position after each step, metres ``(T, 2)`` (NaN when unknown).
        rewards: rewards ``(T,)``.
        lane_departure: the env's ``lane_departure`` flag after each step ``(T,)``.
        start_distance: distance along the road at reset, metres.
        road_length: road length in metres (NaN when unknown).
        terminated: the episode ended by the env's termination.
        truncated: the episode ended by a time limit (the env's or ``max_steps``).
        frames: the observations the agent acted on ``(T, H, W, C)`` when recorded (for Dict observations
            their image entry), else None.
        noise_variance: the Gaussian noise variance applied to the observations.
    """

    seed: int
    lateral_error: np.ndarray
    steering: np.ndarray
    actions: np.ndarray
    speed: np.ndarray
    distance: np.ndarray
    positions: np.ndarray
    rewards: np.ndarray
    lane_departure: np.ndarray
    start_distance: float = 0.0
    road_length: float = float("nan")
    terminated: bool = False
    truncated: bool = False
    frames: np.ndarray | None = None
    noise_variance: float = 0.0

    @property
    def steps(self) -> int:
        """Number of steps ``T``."""
        return int(self.steering.shape[0])

    @property
    def departed(self) -> bool:
        """Whether the car left the lane at any step."""
        return bool(np.any(self.lane_departure))

    @property
    def departure_step(self) -> int | None:
        """Index of the first step with a lane departure, or None."""
        hits = np.flatnonzero(self.lane_departure)
        return int(hits[0]) if hits.size else None

    def metrics(self, completion_tolerance: float = 1.0) -> EpisodeMetrics:
        """The evaluation metrics of this episode (see :func:`episode_metrics`)."""
        return episode_metrics(self, completion_tolerance=completion_tolerance)


def _image_of(obs: Any) -> Any:
    """The observation itself, or for a Dict observation its first uint8 image (else its first entry)."""
    if isinstance(obs, Mapping):
        values = list(obs.values())
        images = [v for v in values if np.asarray(v).dtype == np.uint8]
        return (images or values)[0]
    return obs


def _info_float(info: Mapping[str, Any], key: str) -> float:
    value = info.get(key)
    if value is None:
        return float("nan")
    try:
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return float("nan")


def _info_xy(info: Mapping[str, Any]) -> tuple[float, float]:
    value = info.get("position")
    if value is None:
        return float("nan"), float("nan")
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size < 2:
        return float("nan"), float("nan")
    return float(arr[0]), float(arr[1])


def run_episode(
    env: Any,
    agent: Agent,
    seed: int,
    noise: float | Perturbation | None = None,
    max_steps: int | None = None,
    record: bool = False,
    on_step: Callable[[StepRecord], None] | None = None,
    reset_options: Mapping[str, Any] | None = None,
) -> EpisodeResult:
    """Drive one closed-loop episode.

    Args:
        env: a Gymnasium env (any observation type; lane-keeping ``info`` keys are read when present).
        agent: the controller (:class:`Agent`).
        seed: road seed for ``env.reset(seed=seed)``; also seeds the observation noise.
        noise: Gaussian noise variance on the [0, 1] image scale, or a :class:`Perturbation` (None = clean).
        max_steps: stop (as truncated) after this many steps; None = until the env ends the episode.
        record: keep the observations the agent acted on in ``EpisodeResult.frames``.
        on_step: called with a :class:`StepRecord` after every step (video writers, progress bars).
        reset_options: ``options`` passed to ``env.reset``.

    Returns:
        The :class:`EpisodeResult`.

    Raises:
        ValueError: the agent returned an action of the wrong shape or a non-finite action.
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    perturbation = _as_perturbation(noise)
    space = env.action_space
    shape = tuple(space.shape) if getattr(space, "shape", None) is not None else None
    low = np.asarray(space.low, dtype=np.float32) if hasattr(space, "low") else None
    high = np.asarray(space.high, dtype=np.float32) if hasattr(space, "high") else None

    obs, info = env.reset(seed=int(seed), options=dict(reset_options) if reset_options else None)
    agent.reset()
    start_distance = _info_float(info, "distance")
    road_length = _info_float(info, "road_length")

    lateral: list[float] = []
    steering: list[float] = []
    actions: list[np.ndarray] = []
    speed: list[float] = []
    distance: list[float] = []
    positions: list[tuple[float, float]] = []
    rewards: list[float] = []
    departures: list[bool] = []
    frames: list[np.ndarray] = []
    terminated = truncated = False
    step = 0
    while True:
        seen = perturbation.apply(obs, seed, step)
        if record:
            frames.append(np.array(_image_of(seen), copy=True))
        raw = agent.act(seen, info)
        action = np.asarray(raw, dtype=np.float32).reshape(-1)
        if shape is not None and action.shape != (int(np.prod(shape)),):
            raise ValueError(
                f"agent {type(agent).__name__} returned an action of shape {np.shape(raw)}, but the env's "
                f"action space has shape {shape}; make the policy's output size match the env"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(
                f"agent {type(agent).__name__} returned a non-finite action {action.tolist()} at "
                f"step {step} of seed {seed}"
            )
        if low is not None and high is not None:
            action = np.clip(action, low.reshape(-1), high.reshape(-1))
        env_action = action.reshape(shape) if shape is not None else action
        prev_info = info
        obs, reward, terminated, truncated, info = env.step(env_action)
        terminated, truncated = bool(terminated), bool(truncated)
        if max_steps is not None and step + 1 >= max_steps and not terminated:
            truncated = True
        lateral.append(_info_float(info, "lateral_offset"))
        steering.append(float(action[0]))
        actions.append(action)
        speed.append(_info_float(info, "speed"))
        distance.append(_info_float(info, "distance"))
        positions.append(_info_xy(info))
        rewards.append(float(reward))
        departures.append(bool(info.get("lane_departure", False)))
        if on_step is not None:
            on_step(
                StepRecord(step, seen, action, float(reward), info, prev_info, terminated, truncated, agent)
            )
        step += 1
        if terminated or truncated:
            break
    if math.isnan(road_length):
        road_length = _info_float(info, "road_length")
    return EpisodeResult(
        seed=int(seed),
        lateral_error=np.asarray(lateral, dtype=np.float64),
        steering=np.asarray(steering, dtype=np.float64),
        actions=np.stack(actions).astype(np.float32),
        speed=np.asarray(speed, dtype=np.float64),
        distance=np.asarray(distance, dtype=np.float64),
        positions=np.asarray(positions, dtype=np.float64).reshape(-1, 2),
        rewards=np.asarray(rewards, dtype=np.float64),
        lane_departure=np.asarray(departures, dtype=bool),
        start_distance=0.0 if math.isnan(start_distance) else start_distance,
        road_length=road_length,
        terminated=terminated,
        truncated=truncated,
        frames=np.stack(frames) if record and frames else None,
        noise_variance=perturbation.noise_variance,
    )


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


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
        return {k: _json_float(v) for k, v in dataclasses.asdict(self).items()}


def _json_float(value: Any) -> Any:
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
        return {"value": _json_float(self.value), "lo": _json_float(self.lo), "hi": _json_float(self.hi)}

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
            out[f.name] = value.to_dict() if isinstance(value, Stat) else _json_float(value)
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


def _bootstrap_mean(values: np.ndarray, idx: np.ndarray) -> Stat:
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


def _bootstrap_ratio(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> Stat:
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


def summarize(
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
        raise ValueError("summarize() needs at least one episode")
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
        crashes_per_km=_bootstrap_ratio(departures, km, idx),
        distance_before_departure_m=_bootstrap_mean(col("distance_m"), idx),
        completion_rate=_bootstrap_mean(col("completed"), idx),
        mean_abs_lateral_m=_bootstrap_mean(col("mean_abs_lateral_m"), idx),
        max_abs_lateral_m=_bootstrap_mean(lat_max, idx),
        worst_abs_lateral_m=float(np.nanmax(lat_max)) if np.isfinite(lat_max).any() else float("nan"),
        steering_smoothness=_bootstrap_mean(col("steering_smoothness"), idx),
    )


# ----------------------------------------------------------------------------------------------------------
# Parallel evaluation
# ----------------------------------------------------------------------------------------------------------


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, render_mode: str | None = None) -> Any:
    """Create a Gymnasium env, registering the ``LTC/`` envs first when needed.

    Args:
        env_id: a registered id (``LTC/LaneKeeping-v0``, ``CarRacing-v3``...).
        env_kwargs: keyword arguments for the env's constructor.
        render_mode: ``"rgb_array"`` to enable ``env.render()``.

    Returns:
        The env.
    """
    import gymnasium as gym

    if env_id.startswith("LTC/"):
        import ltc_control.envs  # noqa: F401  (registers the LTC/ ids)
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"cannot create env {env_id!r} with {kwargs}: {exc}") from exc
    except TypeError as exc:
        raise ValueError(
            f"env {env_id!r} rejected the keyword arguments {sorted(kwargs)}: {exc}; check --env-kwarg names"
        ) from exc


_WORKER: dict[str, Any] = {}


def _worker_init(spec: AgentSpec, env_id: str, env_kwargs: dict[str, Any], device: str, threads: int) -> None:
    """Remember what to build; the env and the agent are built by the first episode of the worker.

    Building them there (not in the initializer) lets a failure (a corrupt checkpoint, a bad env option)
    reach the caller as the original exception through ``future.result()`` instead of a ``BrokenProcessPool``.
    Everything is built in the worker, never in a parent that forks: MuJoCo renderers must not cross a fork.
    """
    _WORKER.clear()
    _WORKER["setup"] = (spec, env_id, env_kwargs, device, threads)


def _worker_objects() -> tuple[Any, Agent]:
    if "env" not in _WORKER:
        spec, env_id, env_kwargs, device, threads = _WORKER["setup"]
        _WORKER["env"] = make_env(env_id, env_kwargs)
        _WORKER["agent"] = make_agent(spec, device=device)
        # After the agent is built: only then is torch imported (ltc_control.envs does not import it), and a
        # worker left at torch's default threads oversubscribes the cores (about 7x slower episodes).
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(max(1, threads))  # see torch_threads: batch-1 inference, shared cores
    return _WORKER["env"], _WORKER["agent"]


def _worker_episode(
    seed: int, perturbation: Perturbation, max_steps: int | None, completion_tolerance: float
) -> EpisodeMetrics:
    env, agent = _worker_objects()
    result = run_episode(env, agent, seed, noise=perturbation, max_steps=max_steps)
    return result.metrics(completion_tolerance)


@dataclass
class EvalReport:
    """The result of :func:`evaluate`.

    Attributes:
        agent: a description of the evaluated agent.
        env_id: the env id.
        env_kwargs: keyword arguments of the env.
        seeds: road seeds.
        levels: one :class:`LevelSummary` per noise level, in the order asked.
        episodes: every episode's :class:`EpisodeMetrics`, sorted by (noise, seed).
        perturbation: the perturbation settings (without the per-level noise variance).
        elapsed_s: wall time of the evaluation, seconds.
    """

    agent: str
    env_id: str
    env_kwargs: dict[str, Any]
    seeds: list[int]
    levels: list[LevelSummary]
    episodes: list[EpisodeMetrics]
    perturbation: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def level(self, noise_variance: float) -> LevelSummary:
        """The summary of one noise level."""
        for lvl in self.levels:
            if math.isclose(lvl.noise_variance, noise_variance, abs_tol=1e-12):
                return lvl
        raise KeyError(
            f"no noise level {noise_variance}; levels: {[lv.noise_variance for lv in self.levels]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "agent": self.agent,
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "seeds": self.seeds,
            "perturbation": self.perturbation,
            "confidence_interval": "95% percentile bootstrap over episodes (2000 resamples, seed 0)",
            "elapsed_s": self.elapsed_s,
            "levels": [lv.to_dict() for lv in self.levels],
            "episodes": [ep.to_dict() for ep in self.episodes],
        }

    def table(self) -> str:
        """A plain-text table of the per-level metrics (value [95% CI])."""
        headers = [
            "noise var",
            "episodes",
            "crashes/km",
            "dist before dep (m)",
            "completion",
            "mean |lat| (m)",
            "max |lat| (m)",
            "mean |d steer|",
        ]
        rows = [
            [
                f"{lv.noise_variance:g}",
                str(lv.episodes),
                lv.crashes_per_km.fmt(2),
                lv.distance_before_departure_m.fmt(1),
                lv.completion_rate.fmt(2),
                lv.mean_abs_lateral_m.fmt(3),
                lv.max_abs_lateral_m.fmt(3),
                lv.steering_smoothness.fmt(4),
            ]
            for lv in self.levels
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike[str], plot: bool = True) -> dict[str, Path]:
        """Write ``evaluation.json``, ``summary.csv``, ``episodes.csv`` and ``crashes_per_km.png`` atomically.

        Args:
            out_dir: the run folder (created if missing).
            plot: also write the PNG plot.

        Returns:
            Name -> path of every file written.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": out / "evaluation.json",
            "summary_csv": out / "summary.csv",
            "episodes_csv": out / "episodes.csv",
        }
        atomic_write_bytes(paths["json"], json.dumps(self.to_dict(), indent=2, default=str).encode())
        atomic_write_bytes(paths["summary_csv"], _csv_bytes([lv.flat() for lv in self.levels]))
        atomic_write_bytes(paths["episodes_csv"], _csv_bytes([dataclasses.asdict(e) for e in self.episodes]))
        if plot:
            paths["plot"] = out / "crashes_per_km.png"
            self.plot(paths["plot"])
        return paths

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Plot crashes per km (with 95% CI) against the noise variance into a PNG file."""
        return plot_crashes_per_km([self], path)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. to compare saved evaluations)."""
        try:
            levels = []
            for lv in doc["levels"]:
                fields: dict[str, Any] = {}
                for f in dataclasses.fields(LevelSummary):
                    v = lv[f.name]
                    fields[f.name] = (
                        Stat(_nan(v["value"]), _nan(v["lo"]), _nan(v["hi"]))
                        if isinstance(v, Mapping)
                        else _nan(v)
                    )
                fields["episodes"], fields["departures"] = int(fields["episodes"]), int(fields["departures"])
                levels.append(LevelSummary(**fields))
            episodes = [
                EpisodeMetrics(**{f.name: _nan(ep[f.name]) for f in dataclasses.fields(EpisodeMetrics)})
                for ep in doc["episodes"]
            ]
            return cls(
                agent=str(doc["agent"]),
                env_id=str(doc["env_id"]),
                env_kwargs=dict(doc.get("env_kwargs") or {}),
                seeds=[int(x) for x in doc["seeds"]],
                levels=levels,
                episodes=episodes,
                perturbation=dict(doc.get("perturbation") or {}),
                elapsed_s=float(doc.get("elapsed_s") or 0.0),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"not an evaluation report ({exc!r} missing or malformed); pass the contents of an "
                "evaluation.json written by ltc-control evaluate"
            ) from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalReport:
        """Read an ``evaluation.json`` written by :meth:`save`."""
        p = Path(path)
        if p.is_dir():
            p = p / "evaluation.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"evaluation report {str(p)!r} does not exist; run ltc-control evaluate first"
            )
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"evaluation report {str(p)!r} is not valid JSON ({exc}); re-run the evaluation"
            ) from exc
        return cls.from_dict(doc)


def _nan(value: Any) -> Any:
    """JSON null -> NaN for float fields (``to_dict`` writes NaN as null)."""
    return float("nan") if value is None else value


def plot_crashes_per_km(reports: Sequence[EvalReport], path: str | os.PathLike[str]) -> Path:
    """Plot crashes per km (95% CI error bars) against the noise variance for one or more models.

    Args:
        reports: evaluation reports, one line each (labelled by ``report.agent``).
        path: the PNG file to write (atomically).

    Returns:
        The path written.
    """
    # A bare Figure + Agg canvas: no pyplot global state, no backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("plot_crashes_per_km() needs at least one report")
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for rep in reports:
        x = np.asarray([lv.noise_variance for lv in rep.levels])
        y = np.asarray([lv.crashes_per_km.value for lv in rep.levels])
        lo = np.asarray([lv.crashes_per_km.lo for lv in rep.levels])
        hi = np.asarray([lv.crashes_per_km.hi for lv in rep.levels])
        yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=4, label=rep.agent)
    ax.set_xlabel("Gaussian noise variance (image in [0, 1])")
    ax.set_ylabel("lane departures per km")
    first = reports[0]
    ax.set_title(f"{first.env_id}: {len(first.seeds)} roads per level")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    target = Path(path)
    atomic_write_bytes(target, buf.getvalue())
    return target


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            )
    return buf.getvalue().encode()


def _with_camera_offset(env_id: str, kwargs: dict[str, Any], offset: float) -> dict[str, Any]:
    """Add a lateral dash-camera offset (m, + = left) to the env kwargs.

    The ``LTC/`` envs take it as ``visuals={"camera_pos_offset": (0, offset, 0)}`` (car frame); other envs get
    a ``camera_offset`` keyword, which :func:`make_env` reports clearly if the env has no such option.
    """
    if not offset:
        return kwargs
    if env_id.startswith("LTC/"):
        visuals = dict(kwargs.get("visuals") or {})
        dx, dy, dz = visuals.get("camera_pos_offset", (0.0, 0.0, 0.0))
        visuals["camera_pos_offset"] = (float(dx), float(dy) + float(offset), float(dz))
        kwargs["visuals"] = visuals
    else:
        kwargs["camera_offset"] = float(offset)
    return kwargs


def _describe(spec: AgentSpec) -> str:
    if isinstance(spec, str | os.PathLike):
        return str(spec)
    if isinstance(spec, ConstantAgent):
        return repr(spec)
    name = getattr(spec, "__qualname__", None)
    return str(name) if name else type(spec).__name__


def evaluate(
    agent: AgentSpec,
    env_id: str,
    seeds: Iterable[int],
    noise_levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3),
    workers: int = 2,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    noise_seed: int = 0,
    perturbation: Perturbation | None = None,
    device: str = "cpu",
    completion_tolerance: float = 1.0,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    threads: int = 1,
) -> EvalReport:
    """Evaluate an agent in closed loop on held-out roads at several image-noise levels.

    Every (road seed, noise level) pair is one episode. With ``workers >= 1`` episodes run in that many worker
    processes (spawn context; each worker creates its own env and loads the agent itself, so checkpoints
    are loaded in the workers and no renderer crosses a fork). Results do not depend on the number of workers:
    each episode starts from ``env.reset(seed)`` and ``agent.reset()`` and its noise is seeded by (noise
    seed, road seed, step). ``workers=0`` runs everything in this process (any agent, picklable or not).

    Args:
        agent: checkpoint directory, ``"expert"``, an :class:`Agent` or a zero-argument factory (see
            :func:`make_agent`); with workers it must be picklable (a module-level class or function).
        env_id: Gymnasium env id.
        seeds: road seeds (held out from training).
        noise_levels: Gaussian noise variances on the [0, 1] image scale.
        workers: number of worker processes (0 = in-process).
        env_kwargs: env constructor arguments (e.g. a short road for tests).
        max_steps: per-episode step cap (None = the env's own limit).
        noise_seed: the noise seed shared by every model.
        perturbation: extra perturbations (brightness, blur, occlusion, camera offset) applied at every level;
            its ``noise_variance`` and ``seed`` are replaced by each level's variance and ``noise_seed``.
        device: torch device for checkpoint policies.
        completion_tolerance: metres from the road's end that count as completed.
        out_dir: when given, the report is saved there (JSON, CSV, PNG).
        progress: show a tqdm progress bar.
        threads: torch intra-op threads per episode loop (per worker); 1 is fastest for batch-1 inference.

    Returns:
        The :class:`EvalReport`.
    """
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("evaluate() needs at least one road seed, e.g. seeds=range(1000, 1020)")
    if any(s < 0 for s in seed_list):
        raise ValueError(f"road seeds must be >= 0, got {[s for s in seed_list if s < 0]}")
    levels = [float(v) for v in noise_levels]
    if not levels:
        raise ValueError("evaluate() needs at least one noise level, e.g. noise_levels=(0, 0.1, 0.2, 0.3)")
    if len(set(levels)) != len(levels):
        raise ValueError(f"noise levels must be distinct, got {levels}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if (
        isinstance(agent, str | os.PathLike)
        and not str(agent).startswith("expert")
        and not Path(agent).is_dir()
    ):
        raise FileNotFoundError(
            f"checkpoint {str(agent)!r} is not a directory; pass a checkpoint folder (model.json + "
            "model.safetensors) or 'expert'"
        )
    base = perturbation or Perturbation()
    kwargs = _with_camera_offset(env_id, dict(env_kwargs or {}), base.camera_offset)
    jobs = [(lvl, s) for lvl in levels for s in seed_list]
    perts = {lvl: dataclasses.replace(base, noise_variance=lvl, seed=noise_seed) for lvl in levels}

    from tqdm import tqdm

    start = time.perf_counter()
    results: dict[tuple[float, int], EpisodeMetrics] = {}
    bar = tqdm(total=len(jobs), desc="evaluate", unit="ep", disable=not progress, file=sys.stderr)
    if workers == 0:
        env = make_env(env_id, kwargs)
        try:
            agent_obj = make_agent(agent, device=device)
            with torch_threads(threads):
                for lvl, s in jobs:
                    res = run_episode(env, agent_obj, s, noise=perts[lvl], max_steps=max_steps)
                    results[(lvl, s)] = res.metrics(completion_tolerance)
                    bar.update(1)
        finally:
            env.close()
    else:
        try:
            pickle.dumps(agent)
        except Exception as exc:
            raise TypeError(
                f"the agent {_describe(agent)} cannot be sent to worker processes ({exc}); pass a checkpoint "
                "directory, 'expert', a module-level class or factory, or use workers=0"
            ) from exc
        n_workers = min(workers, len(jobs))
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(agent, env_id, kwargs, device, threads),
        ) as pool:
            futures = {
                pool.submit(_worker_episode, s, perts[lvl], max_steps, completion_tolerance): (lvl, s)
                for lvl, s in jobs
            }
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update(1)
    bar.close()
    episodes = [results[(lvl, s)] for lvl in levels for s in seed_list]
    summaries = [summarize([results[(lvl, s)] for s in seed_list], noise_variance=lvl) for lvl in levels]
    pert_dict = dataclasses.asdict(base)
    pert_dict.pop("noise_variance")
    pert_dict["seed"] = noise_seed
    report = EvalReport(
        agent=_describe(agent),
        env_id=env_id,
        env_kwargs=kwargs,
        seeds=seed_list,
        levels=summaries,
        episodes=episodes,
        perturbation=pert_dict,
        elapsed_s=time.perf_counter() - start,
    )
    if out_dir is not None:
        report.save(out_dir)
    return report


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """Parse a seed list: ``"1000-1019"``, ``"1,2,5"`` or a mix (``"1-3,10"``); ranges are inclusive."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(
                f"bad seed list entry {part!r} in {text!r}; use e.g. '1000-1019' or '1,2,3' (inclusive)"
            ) from None
    if not seeds:
        raise ValueError(f"empty seed list {text!r}; use e.g. '1000-1019'")
    return seeds


def parse_floats(text: str, what: str = "noise levels") -> list[float]:
    """Parse ``"0,0.1,0.2"`` into floats (a clear error names the bad entry)."""
    values: list[float] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"bad entry {part!r} in {what} {text!r}; use comma-separated numbers") from None
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {part!r}")
        values.append(value)
    if not values:
        raise ValueError(f"empty {what} {text!r}")
    return values


@dataclass(frozen=True)
class EvalConfig:
    """Closed-loop evaluation on held-out roads with Gaussian image noise: ltc-control evaluate.

    Attributes:
        env: Gymnasium env id.
        seeds: road seeds, inclusive ranges and/or a comma-separated list, e.g. "1000-1019" or "1,2,5".
        noise: Gaussian noise variances on images scaled to [0, 1], comma-separated, e.g. "0,0.1,0.2,0.3".
        workers: worker processes (0 = run in this process).
        out: output folder; None = a new run folder runs/<env>__evaluate-<agent>__<first seed>__<time>.
        max_steps: step cap per episode (None = the env's own limit).
        noise_seed: noise seed shared by every evaluated model.
        brightness: additive brightness offset on the [0, 1] image scale.
        blur: Gaussian blur sigma in pixels (0 = none).
        occlusion: number of black occlusion patches per image.
        occlusion_size: occlusion patch side as a fraction of min(height, width).
        camera_offset: lateral camera offset in metres (passed to envs that have a camera_offset option).
        completion_tolerance: metres from the road's end that count as completing it.
        device: torch device for checkpoint policies.
        env_kwargs: env constructor arguments, e.g. {road_length: 80}.
        progress: show a progress bar.
    """

    env: str = "LTC/LaneKeeping-v0"
    seeds: str = "1000-1019"
    noise: str = "0,0.1,0.2,0.3"
    workers: int = 2
    out: str | None = None
    max_steps: int | None = None
    noise_seed: int = 0
    brightness: float = 0.0
    blur: float = 0.0
    occlusion: int = 0
    occlusion_size: float = 0.15
    camera_offset: float = 0.0
    completion_tolerance: float = 1.0
    device: str = "cpu"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        parse_seeds(self.seeds)
        parse_floats(self.noise)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        self.perturbation()

    def perturbation(self) -> Perturbation:
        """The extra perturbations (noise variance filled in per level by :func:`evaluate`)."""
        return Perturbation(
            seed=self.noise_seed,
            brightness=self.brightness,
            blur_sigma=self.blur,
            occlusion_patches=self.occlusion,
            occlusion_size=self.occlusion_size,
            camera_offset=self.camera_offset,
        )


def check_agent_argument(parser: argparse.ArgumentParser, agent: str) -> None:
    """Exit through ``parser.error`` unless ``agent`` is ``expert[:kind]`` or a checkpoint folder."""
    if not (agent == "expert" or agent.startswith("expert:")) and not Path(agent).is_dir():
        parser.error(f"checkpoint {agent!r} is not a directory; pass a checkpoint folder or 'expert'")


def agent_label(spec: str) -> str:
    """A short name for an agent spec (checkpoint folder name or ``expert``), for run-folder names."""
    if spec == "expert" or spec.startswith("expert:"):
        return spec.replace(":", "-")
    return Path(spec).resolve().name or "policy"


def prepare_run_dir(
    out: str | os.PathLike[str] | None,
    env_id: str,
    preset: str,
    seed: int,
    config: Mapping[str, Any],
    argv: Sequence[str],
    root: str | os.PathLike[str] = "runs",
) -> Path:
    """Create the output folder of a command and write its records (config, command line, git, versions).

    Args:
        out: an explicit folder (created if needed), or None for a new ``ltc_control.runs`` run folder.
        env_id: env id (part of the run-folder name).
        preset: the command and agent, e.g. ``"evaluate-expert"``.
        seed: first seed (part of the run-folder name).
        config: the resolved configuration.
        argv: the command line.
        root: parent of new run folders.

    Returns:
        The folder.
    """
    from ltc_control import runs
    from ltc_control.config import to_yaml

    if out is None:
        return runs.create_run_dir(Path(root), env_id, preset, seed, config=dict(config), argv=list(argv))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(folder / "config.yaml", to_yaml(dict(config)))
    runs.atomic_write_text(folder / "command.txt", " ".join(argv) + "\n")
    info = runs.git_info()
    runs.atomic_write_text(folder / "git.txt", "".join(f"{k}: {v}\n" for k, v in info.items()))
    runs.atomic_write_json(folder / "versions.json", runs.versions())
    return folder


def build_eval_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ltc-control evaluate`` (generated from :class:`EvalConfig`)."""
    from ltc_control.config import make_parser

    parser = make_parser(EvalConfig, prog="ltc-control evaluate")
    parser.add_argument("agent", help="checkpoint directory (model.json + model.safetensors) or 'expert'")
    return parser


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ltc-control evaluate AGENT [--seeds 1000-1019] [--noise 0,0.1,0.2,0.3] ...``.

    Options come from :class:`EvalConfig` (``--config preset.yaml`` and ``--set key=value`` work too). Writes
    ``evaluation.json``, ``summary.csv``, ``episodes.csv``, ``crashes_per_km.png`` and the run records into
    the output folder and prints the table.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The process exit code (0 on success; argparse exits with 2 on bad arguments).
    """
    from ltc_control.config import parse_args_and_config, to_dict

    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_eval_parser()
    cfg, ns = parse_args_and_config(EvalConfig, args, parser)
    agent = str(ns.agent)
    check_agent_argument(parser, agent)
    seeds = parse_seeds(cfg.seeds)
    record = {"agent": agent, **to_dict(cfg)}
    folder = prepare_run_dir(
        cfg.out,
        cfg.env,
        f"evaluate-{agent_label(agent)}",
        seeds[0],
        record,
        ["ltc-control", "evaluate", *args],
    )
    report = evaluate(
        agent,
        cfg.env,
        seeds,
        noise_levels=parse_floats(cfg.noise),
        workers=cfg.workers,
        env_kwargs=cfg.env_kwargs,
        max_steps=cfg.max_steps,
        noise_seed=cfg.noise_seed,
        perturbation=cfg.perturbation(),
        device=cfg.device,
        completion_tolerance=cfg.completion_tolerance,
        progress=cfg.progress,
    )
    paths = report.save(folder)
    print(report.table())
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0
