"""``ltc-control export``: a checkpoint (or an sb3 ``RecurrentPPO`` zip) -> ONNX / ``torch.export`` files,
with the parity check on a closed-loop rollout in the lane-keeping env.

The export itself is :func:`ltc_control.export.export_policy` (the core, which imports no env); this module
adds what needs the env: :func:`closed_loop_trace` drives the policy in its env for 1,000 steps with an
irregular ``dt`` (episodes restart on new roads when they end) and records the inputs and the PyTorch
policy's actions and states, which the exported files must then reproduce within 1e-5.

Usage::

    ltc-control export runs/<run>/checkpoints/best --out exported/ncp
    ltc-control export ppo_ltc.zip --out exported/ppo --format onnx --opset 18

Every failure (a checkpoint that does not load, an unsupported opset or format, a failed parity check) prints
one line ``ltc-control export: error: ...`` and exits with status 2, leaving no files behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.export import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    ParityTrace,
    export_policy,
    load_for_export,
    synthetic_trace,
)
from ltc_control.policy import Policy

__all__ = ["closed_loop_trace", "default_env", "drive_trace", "export_checkpoint", "export_main"]

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


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    formats: str | Sequence[str] = EXPORT_FORMATS,
    opset: int = DEFAULT_OPSET,
    steps: int = 1000,
    tolerance: float = DEFAULT_TOLERANCE,
    env: Mapping[str, Any] | None = None,
    seed: int = PARITY_SEED,
) -> ExportResult:
    """Export a checkpoint folder or an sb3 ``RecurrentPPO`` zip, with closed-loop parity.

    Args:
        checkpoint: checkpoint folder (``save_checkpoint``) or ``.zip`` of a ``RecurrentPPO`` with an
            ``LtcPolicy`` / ``CnnLtcPolicy``.
        out: output folder.
        formats: ``"onnx"``, ``"torch-export"`` or both.
        opset: ONNX opset.
        steps: steps of the parity rollout.
        tolerance: parity tolerance.
        env: env override (default: the checkpoint's metadata, else :func:`default_env`).
        seed: first road seed of the parity rollout.

    Raises:
        ExportError: see :func:`ltc_control.export.export_policy`, plus an unloadable source.
    """
    path = Path(checkpoint)
    if path.suffix == ".zip" and path.is_file():
        from ltc_control.agents.sb3_export import export_sb3

        return export_sb3(path, out, formats, opset, steps, tolerance, env, seed)
    # Checked before the (slower) load so a bad opset fails at once.
    from ltc_control.export import _check_opset, _parse_formats

    if "onnx" in _parse_formats(formats):
        _check_opset(opset)
    policy, meta_env, source = load_for_export(path)
    spec = default_env(policy, env if env is not None else meta_env)
    if spec is None:
        trace = synthetic_trace(policy, steps=steps, seed=seed)
    else:
        trace = closed_loop_trace(policy, spec, steps=steps, seed=seed)
    return export_policy(
        policy,
        out,
        formats,
        opset,
        trace=trace,
        env=env if env is not None else meta_env,
        source=source,
        tolerance=tolerance,
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ltc-control export",
        description="Export a policy's control step to ONNX (policy.onnx) and torch.export (policy.pt2), "
        "with export.json; parity with the PyTorch policy is checked on a closed-loop rollout.",
    )
    ap.add_argument("checkpoint", help="checkpoint folder, or the .zip of an sb3 RecurrentPPO (LtcPolicy)")
    ap.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    ap.add_argument(
        "--format", default=",".join(EXPORT_FORMATS), help="onnx, torch-export or both (comma list)"
    )
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--steps", type=int, default=1000, help="steps of the parity rollout (default 1000)")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |difference| (1e-5)")
    ap.add_argument("--env", default=None, help="env id of the parity rollout (default: the checkpoint's)")
    ap.add_argument("--env-kwargs", default=None, help="env kwargs as JSON (with --env)")
    ap.add_argument("--seed", type=int, default=PARITY_SEED, help="first road seed of the parity rollout")
    return ap


def export_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control export`` (see the module docstring); returns the exit code (2 on any error)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        env = None
        if args.env is not None:
            env = {"id": args.env, "kwargs": json.loads(args.env_kwargs) if args.env_kwargs else {}}
        elif args.env_kwargs:
            raise ExportError("--env-kwargs needs --env")
        if args.steps < 1:
            raise ExportError(f"--steps must be >= 1, got {args.steps}")
        result = export_checkpoint(
            args.checkpoint, args.out, args.format, args.opset, args.steps, args.tolerance, env, args.seed
        )
    except (ExportError, json.JSONDecodeError) as exc:
        print(f"ltc-control export: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    parity = result.manifest["parity"]
    worst = {k: max(v["max_abs_action"], v["max_abs_state"]) for k, v in parity["results"].items()}
    print(f"wrote {', '.join(str(p) for p in result.files.values())} and export.json to {result.directory}")
    print(
        f"parity over {parity['steps']} steps ({parity['trace']}): "
        + ", ".join(f"{k} max |diff| {v:.2g}" for k, v in worst.items())
    )
    return 0
