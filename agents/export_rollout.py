"""Closed-loop parity traces for export: a policy driving its lane-keeping env, recorded step by step.

Used by ``ltc-control export`` (:mod:`ltc_control.agents.export`) and the sb3 export
(:mod:`ltc_control.agents.sb3_export`): the exported files must reproduce the recorded actions and states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ltc_control.export import ExportError, ParityTrace
from ltc_control.policy import Policy

__all__ = ["DT_JITTER", "PARITY_SEED", "Actor", "closed_loop_trace", "default_env", "drive_trace"]

#: first road seed of the parity rollout: the held-out evaluation roads (training uses seeds from 0)
PARITY_SEED = 100_000
#: a policy's dt is drawn uniformly from this range (times the trained dt) at every step of the parity rollout
DT_JITTER = (0.5, 1.5)

#: ``(obs, state, dt, episode_start) -> (action sent to the env, motor outputs (A,), state after (S,))``
Actor = Callable[[np.ndarray, Any, float, bool], tuple[np.ndarray, np.ndarray, Any, np.ndarray]]


def default_env(policy: Policy, env: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The env to roll ``policy`` out in: ``env`` if given (the checkpoint's), else ``LTC/LaneKeeping-v0``
    with the policy's camera size for image policies, ``LTC/LaneKeepingState-v0`` for vector policies of its
    observation size, else None (no env fits: the parity check falls back to a synthetic trace)."""
    if env is not None:
        return {"id": str(env["id"]), "kwargs": dict(env.get("kwargs") or {})}
    cfg = policy.config
    if cfg.observation == "image":
        h, w, c = cfg.image_shape
        if c == 3:
            return {"id": "LTC/LaneKeeping-v0", "kwargs": {"image_height": h, "image_width": w}}
        return None
    import ltc_control.envs  # noqa: F401  (registers the ids)
    from ltc_control.envs import LaneKeepingEnv

    probe = LaneKeepingEnv(observation="state")
    try:
        size = int(np.prod(probe.observation_space.shape or ()))
    finally:
        probe.close()
    if size == cfg.vector_size:
        return {"id": "LTC/LaneKeepingState-v0", "kwargs": {}}
    return None


def drive_trace(
    actor: Actor,
    env_id: str,
    env_kwargs: Mapping[str, Any],
    steps: int,
    dt: float,
    seed: int = PARITY_SEED,
    jitter: tuple[float, float] | None = DT_JITTER,
) -> ParityTrace:
    """Drive ``actor`` in the env for ``steps`` control steps and record a :class:`ParityTrace`.

    Episodes run on roads ``seed, seed + 1, ...`` until ``steps`` steps are recorded; the state is reset at
    each episode start. ``dt`` of each step is ``dt * U(jitter)`` (fixed ``dt`` when ``jitter`` is None).

    Args:
        actor: the policy under test (see :data:`Actor`).
        env_id: Gymnasium id.
        env_kwargs: env keyword arguments.
        steps: control steps to record.
        dt: the policy's trained ``dt``.
        seed: first road seed.
        jitter: range of the random factor on ``dt``.
    """
    import gymnasium as gym

    import ltc_control.envs  # noqa: F401  (registers the ids)

    rng = np.random.default_rng(seed)
    env = gym.make(env_id, **dict(env_kwargs))
    obs_l: list[np.ndarray] = []
    dts: list[float] = []
    starts: list[bool] = []
    actions: list[np.ndarray] = []
    states: list[np.ndarray] = []
    episodes = 0
    try:
        obs, _ = env.reset(seed=seed)
        start, state = True, None
        while len(obs_l) < steps:
            step_dt = float(dt * rng.uniform(*jitter)) if jitter else float(dt)
            env_action, out, state, state_np = actor(np.asarray(obs), state, step_dt, start)
            obs_l.append(np.array(obs)[None])
            dts.append(step_dt)
            starts.append(start)
            actions.append(np.asarray(out, dtype=np.float32)[None])
            states.append(np.asarray(state_np, dtype=np.float32)[None])
            obs, _, terminated, truncated, _ = env.step(env_action)
            start = bool(terminated or truncated)
            if start:
                episodes += 1
                obs, _ = env.reset(seed=seed + episodes)
    finally:
        env.close()
    roads = f"roads {seed}..{seed + episodes}"
    dt_note = f"dt = {dt:g} x U{jitter}" if jitter else f"dt = {dt:g}"
    return ParityTrace(
        np.stack(obs_l),
        np.asarray(dts, dtype=np.float32)[:, None],
        np.asarray(starts, dtype=bool)[:, None],
        np.stack(actions),
        np.stack(states),
        source=f"closed-loop rollout in {env_id} ({steps} steps, {roads}, {dt_note})",
    )


def closed_loop_trace(
    policy: Policy,
    env: Mapping[str, Any] | None = None,
    steps: int = 1000,
    seed: int = PARITY_SEED,
) -> ParityTrace:
    """The :class:`Policy` driving its env (``Policy.act``, state carried, irregular ``dt``) as a trace.

    Args:
        policy: the policy.
        env: ``{"id", "kwargs"}`` (default :func:`default_env`).
        steps: control steps.
        seed: first road seed.

    Raises:
        ExportError: no env fits the policy.
    """
    import torch

    spec = default_env(policy, env)
    if spec is None:
        raise ExportError(
            "no lane-keeping env fits this policy's observations; pass env={'id': ..., 'kwargs': ...}"
        )
    policy = policy.eval()

    def actor(obs: np.ndarray, state: Any, dt: float, start: bool) -> tuple[Any, Any, Any, Any]:
        if start:
            state = policy.reset(1)
        action, state = policy.act(obs[None], state, dt=dt)
        return action[0], action[0], state, state[0].numpy().copy()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 steps: one thread is fastest and does not oversubscribe the cores
    try:
        with torch.no_grad():
            return drive_trace(actor, spec["id"], spec["kwargs"], steps, policy.config.controller.dt, seed)
    finally:
        torch.set_num_threads(threads)
