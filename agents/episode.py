"""One closed-loop episode: the agent protocol, agent construction, the env factory and the episode loop.

- :class:`Agent` is the protocol every closed-loop controller implements (``reset()``,
  ``act(obs, info)``); :class:`PolicyAgent` adapts an ``ltc_control.policy.Policy`` and
  :class:`ConstantAgent` always sends one action; :func:`make_agent` builds one from an :data:`AgentSpec`.
- :func:`make_env` is the one env factory of the closed-loop code (it registers the ``LTC/`` ids).
- :func:`run_episode` drives one episode and returns an :class:`EpisodeResult` (per-step arrays).

Example:
    >>> from ltc_control.agents.episode import ConstantAgent, make_env, run_episode
    >>> env = make_env("LTC/LaneKeepingState-v0", {"road_length": 20.0})  # doctest: +SKIP
    >>> result = run_episode(env, ConstantAgent([0.0]), seed=1000)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from ltc_control.agents import experts
from ltc_control.agents.metrics import EpisodeMetrics, episode_metrics
from ltc_control.agents.perturbations import Perturbation, as_perturbation
from ltc_control.errors import InputError

__all__ = [
    "Agent",
    "AgentSpec",
    "ConstantAgent",
    "EpisodeResult",
    "PolicyAgent",
    "StepRecord",
    "check_agent_env",
    "check_env",
    "checkpoint_env",
    "info_float",
    "info_xy",
    "make_agent",
    "make_env",
    "resolve_env",
    "run_episode",
    "torch_threads",
]


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
        # torch comes in with the checkpoint loader, only when a checkpoint is loaded: evaluation workers set
        # their torch thread count right after building the agent
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
    """The privileged lane-keeping expert of ``ltc_control.agents.experts``.

    Args:
        kind: the expert kind (``ExpertConfig.kind``: ``"stanley"``, ``"pure_pursuit"``); None = default.
    """
    config = experts.ExpertConfig(kind=kind) if kind else None
    return experts.make_expert(config)  # type: ignore[return-value]


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, render_mode: str | None = None) -> Any:
    """Create a Gymnasium env, registering the ``LTC/`` envs first when needed.

    Args:
        env_id: a registered id (``LTC/LaneKeeping-v0``, ``CarRacing-v3``...).
        env_kwargs: keyword arguments for the env's constructor.
        render_mode: ``"rgb_array"`` to enable ``env.render()``.

    Returns:
        The env.
    """
    if env_id.startswith("LTC/"):
        import ltc_control.envs  # noqa: F401  (registers the LTC/ ids)
    kwargs = dict(env_kwargs or {})
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise InputError(
            f"cannot create env {env_id!r} with {kwargs}: {exc}; check the env id (e.g. LTC/LaneKeeping-v0)"
        ) from exc
    except TypeError as exc:
        raise InputError(
            f"env {env_id!r} rejected the keyword arguments {sorted(kwargs)}: {exc}; "
            "check the env_kwargs names"
        ) from exc
    except ValueError as exc:
        raise InputError(f"env {env_id!r} rejected its options {kwargs}: {exc}") from exc


def checkpoint_env(spec: Any) -> tuple[str | None, dict[str, Any]]:
    """The env id and kwargs a checkpoint was trained with (``metadata.train_config.env``, or the top-level
    ``env_id`` / ``env_kwargs`` of older RL fine-tuned checkpoints), if recorded.

    Args:
        spec: an agent spec; only a checkpoint folder has a training env (anything else gives ``(None, {})``).

    Raises:
        CheckpointError: the folder's ``model.json`` cannot be read.
    """
    if not isinstance(spec, str | os.PathLike) or str(spec).startswith("expert"):
        return None, {}
    if not Path(spec).exists():
        return None, {}
    from ltc_control.checkpoint import checkpoint_info
    from ltc_control.export import env_of_metadata

    meta = checkpoint_info(Path(spec)).get("metadata") or {}
    env = env_of_metadata(meta) if isinstance(meta, Mapping) else None
    return (None, {}) if env is None else (env["id"], env["kwargs"])


def resolve_env(
    spec: Any,
    env_id: str | None,
    env_kwargs: Mapping[str, Any] | None,
    default_id: str = "LTC/LaneKeeping-v0",
) -> tuple[str, dict[str, Any]]:
    """The env a command runs an agent in: the checkpoint's training env, overridden by the user's options.

    Args:
        spec: the agent spec (a checkpoint folder carries its training env id and kwargs).
        env_id: the env id asked for (None: the checkpoint's, else ``default_id``).
        env_kwargs: kwargs asked for; they override the checkpoint's key by key.
        default_id: the env id when neither the user nor the checkpoint names one.

    Returns:
        ``(env id, env kwargs)``.
    """
    trained_id, trained_kwargs = checkpoint_env(spec)
    chosen = env_id or trained_id or default_id
    kwargs = dict(trained_kwargs) if chosen == trained_id else {}
    kwargs.update(env_kwargs or {})
    return chosen, kwargs


def check_env(
    env_id: str,
    env_kwargs: Mapping[str, Any] | None = None,
    *,
    observation_shape: Sequence[int] | None = None,
    action_size: int | None = None,
    what: str = "env",
) -> None:
    """Build the env once and check it against a policy's shapes, before any long work starts.

    Args:
        env_id: Gymnasium env id.
        env_kwargs: its keyword arguments.
        observation_shape: the observation shape the policy takes (None: not checked).
        action_size: the policy's action size (None: not checked).
        what: how the caller names the env in messages (e.g. ``"env (env.id / env.kwargs)"``).

    Raises:
        InputError: unknown id, rejected kwargs, or shapes that differ (the message names both).
    """
    env = make_env(env_id, env_kwargs)
    try:
        obs_shape = tuple(getattr(env.observation_space, "shape", None) or ())
        act_shape = tuple(getattr(env.action_space, "shape", None) or ())
    finally:
        env.close()
    if observation_shape is not None and obs_shape != tuple(observation_shape):
        raise InputError(
            f"{what} {env_id!r} with {dict(env_kwargs or {})} gives observations {obs_shape} but the "
            "policy takes "
            f"{tuple(observation_shape)}; set the env's image_height/image_width to the policy's"
        )
    if action_size is not None and act_shape != (action_size,):
        raise InputError(
            f"{what} {env_id!r} takes actions {act_shape} but the policy gives ({action_size},); "
            "use a matching env"
        )


def check_agent_env(spec: Any, env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> None:
    """Load a checkpoint agent once and build its env once, so that a bad file, env id, env option or shape
    mismatch is reported before a command creates its output folder or starts workers.

    Args:
        spec: the agent spec (a checkpoint folder is loaded and its shapes checked; others: the env only).
        env_id: the env id.
        env_kwargs: the env kwargs.

    Raises:
        CheckpointError / InputError: the message names the file or option and the fix.
    """
    obs_shape: tuple[int, ...] | None = None
    action_size: int | None = None
    if isinstance(spec, str | os.PathLike) and not str(spec).startswith("expert"):
        from ltc_control.checkpoint import load_checkpoint

        policy, _ = load_checkpoint(Path(spec))
        cfg = policy.resolved_config()
        obs_shape = tuple(cfg.image_shape) if cfg.observation == "image" else (cfg.vector_size,)
        action_size = cfg.action_size
    check_env(
        env_id,
        env_kwargs,
        observation_shape=obs_shape,
        action_size=action_size,
        what="env (--env / --env_kwargs, default: the checkpoint's training env)",
    )


_WORKER: dict[str, Any] = {}


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


def info_float(info: Mapping[str, Any], key: str) -> float:
    """``info[key]`` as a float (its first element for arrays); NaN when missing or not numeric."""
    value = info.get(key)
    if value is None:
        return float("nan")
    try:
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return float("nan")


def info_xy(info: Mapping[str, Any]) -> tuple[float, float]:
    """``info["position"]`` as ``(x, y)``; NaNs when missing or too short."""
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
    perturbation = as_perturbation(noise)
    space = env.action_space
    shape = tuple(space.shape) if getattr(space, "shape", None) is not None else None
    low = np.asarray(space.low, dtype=np.float32) if hasattr(space, "low") else None
    high = np.asarray(space.high, dtype=np.float32) if hasattr(space, "high") else None

    obs, info = env.reset(seed=int(seed), options=dict(reset_options) if reset_options else None)
    agent.reset()
    start_distance = info_float(info, "distance")
    road_length = info_float(info, "road_length")

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
        lateral.append(info_float(info, "lateral_offset"))
        steering.append(float(action[0]))
        actions.append(action)
        speed.append(info_float(info, "speed"))
        distance.append(info_float(info, "distance"))
        positions.append(info_xy(info))
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
        road_length = info_float(info, "road_length")
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
