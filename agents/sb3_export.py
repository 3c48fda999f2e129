"""Export the actor of a stable-baselines3 ``RecurrentPPO`` model with an
:class:`~ltc_control.agents.sb3.LtcPolicy` / :class:`~ltc_control.agents.sb3.CnnLtcPolicy` to ONNX /
``torch.export``.

The actor becomes a :class:`~ltc_control.policy.Policy` (:func:`ltc_control.agents.sb3.to_policy`, same
weights), which is exported like any checkpoint; the parity reference, however, is the sb3 actor itself: its
deterministic output (the Gaussian mean for ``Box`` actions, which ``model.predict(..., deterministic=True)``
clips to the action space; the logits for discrete actions, whose argmax is the action) and its cell state
(``h[0, :, :state_size]`` of sb3's ``(h, c)`` pair), stepped with the ``dt`` the adapter was trained with.

``ltc-control export model.zip --out DIR`` comes here (:func:`export_sb3`); from Python pass the model::

    from ltc_control.agents.sb3_export import export_sb3
    export_sb3(model, "exported/ppo", env={"id": "LTC/LaneKeeping-v0", "kwargs": {...}})
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel

from ltc_control.agents.export_rollout import PARITY_SEED, default_env, drive_trace
from ltc_control.agents.sb3 import LtcPolicy
from ltc_control.agents.sb3_checkpoint import to_policy
from ltc_control.agents.sb3_modules import ControllerAdapter
from ltc_control.export import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    ParityTrace,
    export_policy,
    synthetic_trace,
)

__all__ = ["export_sb3", "load_sb3", "sb3_actor", "sb3_trace"]


def load_sb3(path: str | Path) -> Any:
    """Load a ``RecurrentPPO`` zip on the CPU.

    Raises:
        ExportError: the file does not load or its policy is not an ``LtcPolicy`` (one line).
    """
    from sb3_contrib import RecurrentPPO

    try:
        model = RecurrentPPO.load(str(path), device="cpu")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ExportError(f"cannot load sb3 model {str(path)!r}: {type(exc).__name__}: {first}") from exc
    _ltc_policy(model)
    return model


def _ltc_policy(model: Any) -> LtcPolicy:
    policy = getattr(model, "policy", model)
    if not isinstance(policy, LtcPolicy):
        raise ExportError(
            f"only LtcPolicy / CnnLtcPolicy actors export, got {type(policy).__name__}; sb3's own "
            "MlpLstmPolicy has no liquid controller"
        )
    return policy


def sb3_actor(model: Any) -> Any:
    """The sb3 actor as an :data:`~ltc_control.agents.export_rollout.Actor` (batch 1): ``(obs, state, dt,
    start) -> (env action, deterministic output (A,), state, cell state (S,))``; ``dt`` is ignored (the
    adapter's fixed one applies)."""
    policy = _ltc_policy(model).eval()
    adapter = cast(ControllerAdapter, policy.lstm_actor)
    space = policy.action_space

    def actor(obs: np.ndarray, state: Any, dt: float, start: bool) -> tuple[Any, Any, Any, Any]:
        with torch.no_grad():
            if start or state is None:
                zeros = torch.zeros(1, 1, adapter.hidden_size)
                state = (zeros, zeros.clone())
            obs_t, _ = policy.obs_to_tensor(obs)
            feats = BaseModel.extract_features(policy, obs_t, policy.pi_features_extractor)
            starts = torch.full((1,), float(start))
            motor, _, state = adapter(feats, state, starts)
            out = policy.greedy_output(motor)[0].numpy().astype(np.float32)
            cell_state = adapter.unpack(state[0])[0].numpy().copy()
        if isinstance(space, spaces.Box):
            env_action: Any = np.clip(out.reshape(space.shape), space.low, space.high)
        elif isinstance(space, spaces.Discrete):
            env_action = int(np.argmax(out))
        else:
            env_action = out
        return env_action, out, state, cell_state

    return actor


def sb3_trace(
    model: Any, env: Mapping[str, Any] | None = None, steps: int = 1000, seed: int = PARITY_SEED
) -> ParityTrace:
    """The sb3 actor driving its env (or, when no lane-keeping env fits, on synthetic inputs) as a trace.

    Args:
        model: a ``RecurrentPPO`` model (or its policy).
        env: ``{"id", "kwargs"}`` (default: :func:`~ltc_control.agents.export_rollout.default_env`).
        steps: control steps.
        seed: first road seed (or the synthetic inputs' seed).
    """
    policy = _ltc_policy(model)
    actor = sb3_actor(model)
    dt = float(cast(ControllerAdapter, policy.lstm_actor).dt)
    spec = default_env(to_policy(model), env)
    if spec is not None:
        return drive_trace(actor, spec["id"], spec["kwargs"], steps, dt, seed, jitter=None)
    synth = synthetic_trace(to_policy(model), steps=steps, seed=seed)
    actions, states = [], []
    state = None
    for i in range(synth.steps):
        _, out, state, cell = actor(synth.observations[i][0], state, dt, bool(synth.starts[i, 0]))
        actions.append(out[None])
        states.append(cell[None])
    return ParityTrace(
        synth.observations,
        np.full_like(synth.dt, dt),
        synth.starts,
        np.stack(actions),
        np.stack(states),
        source=f"sb3 actor on synthetic inputs ({steps} steps, seed {seed}, dt = {dt:g})",
    )


def _semantics(policy: LtcPolicy) -> list[str]:
    space = policy.action_space
    if isinstance(space, spaces.Box):
        low, high = np.asarray(space.low).ravel(), np.asarray(space.high).ravel()
        what = (
            "tanh of the Gaussian mean, the sample being squashed"
            if policy.action_squash == "tanh_sample"
            else "Gaussian mean"
        )
        return [
            f"output {i}: the deterministic action ({what}); clip to the action space "
            f"[{lo:g}, {hi:g}] as model.predict does"
            for i, (lo, hi) in enumerate(zip(low, high))
        ]
    if isinstance(space, spaces.Discrete):
        return [
            f"logit {i}: the action is the argmax over the {int(space.n)} logits" for i in range(int(space.n))
        ]
    return [
        f"output {i}: motor output (sb3 {type(space).__name__} action space)"
        for i in range(policy.motor_size)
    ]


def export_sb3(
    model: Any,
    out: str | Path,
    formats: str | Sequence[str] = EXPORT_FORMATS,
    opset: int = DEFAULT_OPSET,
    steps: int = 1000,
    tolerance: float = DEFAULT_TOLERANCE,
    env: Mapping[str, Any] | None = None,
    seed: int = PARITY_SEED,
) -> ExportResult:
    """Export an sb3 liquid actor (a ``RecurrentPPO`` model or the path of its zip), parity against sb3.

    Arguments as :func:`ltc_control.agents.export.export_checkpoint`.

    Raises:
        ExportError: an unloadable zip, a non-liquid policy, or the errors of
            :func:`ltc_control.export.export_policy`.
    """
    from ltc_control.export import check_opset, parse_formats

    if "onnx" in parse_formats(formats):
        check_opset(opset)
    source: dict[str, Any] = {"kind": "sb3", "algorithm": type(model).__name__}
    if isinstance(model, str | Path):
        path = Path(model)
        source = {
            "kind": "sb3",
            "path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None,
        }
        model = load_sb3(path)
        source["algorithm"] = type(model).__name__
    policy = _ltc_policy(model)
    try:
        converted = to_policy(model)
    except ValueError as exc:
        raise ExportError(f"cannot convert the sb3 actor: {exc}") from exc
    timesteps = getattr(model, "num_timesteps", None)
    if isinstance(timesteps, int):
        source["num_timesteps"] = timesteps
    trace = sb3_trace(model, env, steps=steps, seed=seed)
    return export_policy(
        converted,
        out,
        formats,
        opset,
        trace=trace,
        env=env,
        source=source,
        action_semantics=_semantics(policy),
        tolerance=tolerance,
    )
