"""Exact interrupt and resume of stable-baselines3 on-policy training (``RecurrentPPO``, ``PPO``).

A resumed run must end with the same weights as an uninterrupted one with the same seed. Everything the
learning loop carries from one rollout to the next is captured at the start of every rollout
(``collect_rollouts`` is wrapped on the model instance): the policy's and optimizer's state, the counters,
the last observations, episode starts and recurrent states, the episode-info buffer, and the torch, numpy
and Python RNG states. The envs' own state (physics, roads, step counters, episode statistics, their RNGs)
is not serialised: an :class:`ActionLog` wrapper records every action array sent to the vectorised env, and
resuming rebuilds the envs with the same seeds and replays those actions. The replayed observations must
equal the saved ones bit for bit, else the env is not deterministic and resuming is refused
(:class:`ResumeError`) rather than silently inexact.

The snapshot is written at every rollout start as a checkpoint folder (``ltc_control.checkpoint`` format:
safetensors + JSON, sha256-checked, atomic), so a SIGKILL resumes as exactly as a Ctrl-C; a rollout that was
interrupted is collected again from its start. Replaying costs one env step per recorded step, no policy
calls. The action log grows with the run (4 bytes x action size per env step) and is rewritten with every
snapshot: cheap for fine-tuning budgets (32k steps of one action: 128 KB), worth a thought for millions.
"""

from __future__ import annotations

import copy
import random
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from ltc_control.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from ltc_control.errors import ExpectedError

__all__ = ["ActionLog", "ResumeError", "install_snapshots", "load_snapshot", "restore_snapshot"]


class ResumeError(ExpectedError, ValueError):
    """A resume state that does not belong to this run or cannot be replayed exactly."""


class ActionLog(VecEnvWrapper):
    """Records every action array sent to the wrapped vectorised env (copied, as sent).

    Args:
        venv: the vectorised env (before sb3 wraps it, e.g. in ``VecTransposeImage``).
    """

    def __init__(self, venv: VecEnv) -> None:
        super().__init__(venv)
        self.actions: list[np.ndarray] = []
        self.recording = True

    def step_async(self, actions: np.ndarray) -> None:
        if self.recording:
            self.actions.append(np.array(actions, copy=True))
        self.venv.step_async(actions)

    def step_wait(self) -> Any:
        return self.venv.step_wait()

    def reset(self) -> Any:
        return self.venv.reset()


def _numpy_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (sb3 seeds the legacy global RNG)
    return {
        "name": name,
        "keys": np.asarray(keys),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": cached,
    }


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, np.asarray(internal, dtype=np.int64), gauss]


def take_snapshot(model: Any, log: ActionLog, phase: str) -> dict[str, Any]:
    """Everything the learning loop carries into the next rollout (see the module docstring)."""
    obs = model._last_obs
    if not isinstance(obs, np.ndarray):
        raise ResumeError(f"resume supports array observations only, got {type(obs).__name__}")
    state: dict[str, Any] = {
        "phase": phase,
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num),
        "progress_remaining": float(model._current_progress_remaining),
        "total_timesteps": int(model._total_timesteps),
        "ep_info_buffer": [dict(e) for e in (model.ep_info_buffer or [])],
        "ep_success_buffer": [bool(s) for s in (model.ep_success_buffer or [])],
        "last_obs": np.array(obs, copy=True),
        "last_episode_starts": np.array(model._last_episode_starts, copy=True),
        "policy": {k: v.detach().clone() for k, v in model.policy.state_dict().items()},
        "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": _numpy_rng(),
        "python_rng": _python_rng(),
        "vec_steps": len(log.actions),
    }
    lstm = getattr(model, "_last_lstm_states", None)
    if lstm is not None:
        state["lstm_states"] = [[t.detach().clone() for t in pair] for pair in (lstm.pi, lstm.vf)]
    return state


def install_snapshots(
    model: Any, log: ActionLog, save: Callable[[dict[str, Any], np.ndarray], None], phase: Callable[[], str]
) -> None:
    """Wrap ``model.collect_rollouts`` so that a snapshot is saved at the start of every rollout.

    Args:
        model: the sb3 on-policy model (its env must contain ``log``).
        log: the action recorder.
        save: called with the snapshot and the recorded actions ``(steps, n_envs, ...)``.
        phase: returns the caller's phase label (stored in the snapshot).
    """
    original = model.collect_rollouts

    def collect_rollouts(*args: Any, **kwargs: Any) -> Any:
        state = take_snapshot(model, log, phase())
        actions = np.stack(log.actions) if log.actions else np.zeros((0, model.n_envs), dtype=np.float32)
        save(state, actions)
        return original(*args, **kwargs)

    model.collect_rollouts = collect_rollouts


def save_snapshot(
    folder: str | Path,
    actor: Any,
    state: Mapping[str, Any],
    actions: np.ndarray,
    metadata: Mapping[str, Any],
) -> None:
    """Write a snapshot as a checkpoint folder (``actor``: the ``Policy`` at this point, for inspection)."""
    save_checkpoint(folder, actor, metadata=metadata, extra_state={**state, "actions": actions})


def load_snapshot(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state, metadata)`` of a snapshot folder (hash-checked; CheckpointError when damaged)."""
    _, metadata = load_checkpoint(folder)
    trainer = load_trainer_state(folder)
    if trainer is None or not isinstance(trainer.get("extra"), dict):
        raise ResumeError(f"{folder} holds no resume state")
    return trainer["extra"], metadata


def restore_snapshot(model: Any, log: ActionLog, state: Mapping[str, Any]) -> None:
    """Put a fresh model (built like the original, same seeds) in the snapshot's state: replay the recorded
    actions through its env, check the observations, then restore weights, optimizer, counters and RNGs.

    Raises:
        ResumeError: the replay does not reproduce the saved observations (a non-deterministic env, or the
            run was built differently).
    """
    actions = np.asarray(state["actions"])
    log.recording = False
    try:
        obs = model.env.reset()
        for a in actions:
            obs, _, _, _ = model.env.step(a)
    finally:
        log.recording = True
    log.actions = [np.array(a, copy=True) for a in actions]
    saved = np.asarray(state["last_obs"])
    if obs.shape != saved.shape or not np.array_equal(obs, saved):
        raise ResumeError(
            f"replaying {len(actions)} recorded env steps did not reproduce the saved observations: the env "
            "is not deterministic or the run was built differently; start again without --resume"
        )
    model.policy.load_state_dict(state["policy"])
    model.policy.optimizer.load_state_dict(state["optimizer"])
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    model._episode_num = int(state["episode_num"])
    model._current_progress_remaining = float(state["progress_remaining"])
    model._total_timesteps = int(state["total_timesteps"])
    model._last_obs = saved.copy()
    model._last_episode_starts = np.asarray(state["last_episode_starts"]).copy()
    window = model._stats_window_size
    model.ep_info_buffer = deque((dict(e) for e in state["ep_info_buffer"]), maxlen=window)
    model.ep_success_buffer = deque((bool(s) for s in state["ep_success_buffer"]), maxlen=window)
    if "lstm_states" in state:
        from sb3_contrib.common.recurrent.type_aliases import RNNStates

        pi, vf = (tuple(t.clone() for t in pair) for pair in state["lstm_states"])
        model._last_lstm_states = RNNStates(pi, vf)
    torch.set_rng_state(state["torch_rng"])
    rng = state["numpy_rng"]
    np.random.set_state(  # noqa: NPY002
        (rng["name"], np.asarray(rng["keys"], dtype=np.uint32), rng["pos"], rng["has_gauss"], rng["cached"])
    )
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(int(x) for x in np.asarray(internal)), gauss))
