"""Closed-loop glue for Rerun: capture a rollout as a Trace (+ chase frames) and write the ``.rrd``.

``ltc-control rollout ... --rerun out.rrd`` and ``ltc-control inspect ... --rerun`` use this module; the
recording itself is written by the core's :func:`ltc_control.inspection.rerun_log.record_rerun`.

- :class:`RerunCapture` follows a rollout step by step (``on_step(step_record, chase_frame)``): for a policy
  agent it runs the inspection recorder (every neuron's state and, for LTC cells, the liquid time constant);
  for other agents (the expert, a constant agent) it keeps the observations, actions and env info only.
- :func:`expert_steering` labels every recorded step with the privileged expert. The experts are stateless
  functions of the env ``info``, so the label computed from the recorded info is exactly the steering the
  expert would have commanded at that state.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.inspection.recorder import info_to_arrays, record
from ltc_control.inspection.rerun_log import record_rerun
from ltc_control.inspection.trace import Trace

__all__ = ["RerunCapture", "expert_steering", "road_points"]


def expert_steering(trace: Trace, config: Any = None) -> np.ndarray | None:
    """``(T,)`` the expert's clean steering at every recorded step, or None when the info lacks its inputs.

    Args:
        trace: a trace whose ``info`` holds the lane-keeping keys (``lateral_offset``, ``heading_error``,
            ``curvature``, ``speed``...).
        config: an ``ExpertConfig`` (default: the default expert, as ``ltc-control rollout`` draws it).
    """
    from ltc_control.agents.experts import make_expert

    needed = ("lateral_offset", "heading_error", "speed")
    if any(trace.info_array(k) is None for k in needed):
        return None
    expert = make_expert(config)
    out = np.full(trace.num_steps, np.nan)
    for t in range(trace.num_steps):
        info = {k: v[t] for k, v in trace.info.items()}
        if not all(math.isfinite(float(np.asarray(info[k]).reshape(-1)[0])) for k in needed):
            continue
        try:
            out[t] = expert.label(info)
        except (ValueError, KeyError):
            continue
    return out


def road_points(env: Any) -> np.ndarray | None:
    """The road centre line ``(P, 2)`` of the env's current road in metres, or None."""
    road = getattr(getattr(env, "unwrapped", env), "road", None)
    points = getattr(road, "points", None)
    return None if points is None else np.asarray(points, dtype=np.float64)[:, :2]


class RerunCapture:
    """Records a rollout for :func:`record_rerun`: use as a context manager around the episodes.

    Args:
        agent: the agent that drives (a ``PolicyAgent`` is recorded neuron by neuron).
        metadata: JSON metadata stored with the trace (env id, seeds...).
    """

    def __init__(self, agent: Any, metadata: Mapping[str, Any] | None = None) -> None:
        self.agent = agent
        self.metadata = dict(metadata or {})
        self.chase: list[np.ndarray] = []
        self._chase_missing = False
        self._stack = contextlib.ExitStack()
        self._recording: Any = None
        self._episode = -1
        self._rows: list[tuple[int, Any, np.ndarray, Mapping[str, Any]]] = []
        self._road: np.ndarray | None = None

    def __enter__(self) -> RerunCapture:
        policy = getattr(self.agent, "policy", None)
        if policy is not None:
            try:
                self._recording = self._stack.enter_context(
                    record(self.agent, keep_observations=True, metadata=self.metadata)
                )
            except TypeError:  # no recurrent cell to record (e.g. an MLP controller)
                self._recording = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start_episode(self, episode: int) -> None:
        """Mark the start of episode ``episode`` (only needed for agents without a recorded cell)."""
        self._episode = int(episode)

    def on_step(self, step: Any, chase: np.ndarray | None = None, env: Any = None) -> None:
        """One control step: a ``StepRecord`` and the chase view of the state the agent acted on."""
        if self._recording is not None:
            self._recording.on_step(step)
        else:
            action = np.asarray(step.action, dtype=np.float64).reshape(-1)
            self._rows.append((max(self._episode, 0), step.obs, action, dict(step.prev_info)))
        if chase is None:
            self._chase_missing = True
        elif not self._chase_missing:
            self.chase.append(np.asarray(chase))
        if env is not None and int(getattr(step, "step", 0)) == 0:  # a new road after each reset
            points = road_points(env)
            if points is not None:
                self._road = points
                if self._recording is not None:
                    self._recording.set_road(points)

    def trace(self) -> Trace:
        """The :class:`Trace` of what was captured (final once the ``with`` block has exited)."""
        if self._recording is not None:
            return self._recording.trace
        if not self._rows:
            raise ValueError("nothing was captured: no control step ran inside the RerunCapture block")
        steps = len(self._rows)
        observations = [np.asarray(obs) for _, obs, _, _ in self._rows]
        images = observations[0].dtype == np.uint8 and observations[0].ndim == 3
        width = max(a.shape[0] for _, _, a, _ in self._rows)
        action = np.full((steps, width), np.nan)
        for t, (_, _, a, _) in enumerate(self._rows):
            action[t, : a.shape[0]] = a
        return Trace(
            neuron_names=[],
            neuron_roles=[],
            state=np.zeros((steps, 0)),
            output=np.zeros((steps, 0)),
            action=action,
            info=info_to_arrays([info for _, _, _, info in self._rows]),
            episode=np.array([e for e, _, _, _ in self._rows], dtype=np.int64),
            road_points=self._road,
            observations=np.stack(observations) if images else None,
            metadata={"agent": type(self.agent).__name__, **self.metadata},
        )

    def write(self, path: str | os.PathLike[str], expert: bool = True) -> Path:
        """Write the Rerun recording (the expert's steering beside the policy's when ``expert``)."""
        trace = self.trace()
        steer = expert_steering(trace) if expert else None
        chase = self.chase if self.chase and len(self.chase) <= trace.num_steps else None
        return record_rerun(trace, path, chase=np.stack(chase) if chase else None, expert_steering=steer)
