"""Where does ``mean_limit`` act? The pre-tanh Gaussian mean of saved ``tanh_sample`` runs along an episode.

``LtcPolicy``'s default squashes the Gaussian *sample* with tanh and bounds the pre-tanh mean at
``mean_limit`` (5): :func:`~ltc_control.policy.bound_mean` leaves it unchanged up to ``mean_limit - 1`` (the
knee, 4) and saturates it smoothly beyond, where its slope ``1 - tanh(|m| - knee)^2`` damps the mean's
gradient. This script replays each saved run's first evaluation episodes (the suite's reset seeds 10000..,
greedy or sampled actions; ``<stem>.zip`` and ``<stem>.vecnormalize.pkl`` beside each record) and reports the
head's affine output **before** the bound: the share of action entries past the knee, their median and
largest absolute value, the mean bound slope, and the per-dimension mean (a mean that hardly moves with the
state is a near-constant action)::

    .venv/bin/python experiments/bench/rl_pretanh_mean.py --runs-dir runs/rl_benchmark/rl_novel_suite \\
        --env-id Walker2dNoVel-v5 --timesteps 100000 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np


def pretanh_means(
    stem: Path, env_id: str, episodes: int, deterministic: bool, seed0: int = 10_000
) -> tuple[np.ndarray, float | None, list[float]]:
    """The action head's affine outputs (``(steps, action dims)``) along ``episodes`` episodes of the run
    saved at ``stem`` (``.zip``, ``.vecnormalize.pkl`` if present), the policy's ``mean_limit`` and the
    episodes' returns. The episodes are the suite's evaluation (:func:`rl_bench.evaluate_model`: the same
    reset seeds, greedy or sampled), so greedy returns equal the run's record.

    Raises:
        FileNotFoundError: no saved model at ``stem``.
        ValueError: the policy does not squash its sample (``action_squash`` other than ``tanh_sample``).
    """
    import torch
    from rl_bench import evaluate_model
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ltc_control.agents.sb3_envs import make_novel_env

    zip_path = stem.with_suffix(".zip")
    if not zip_path.is_file():
        raise FileNotFoundError(f"no saved model {zip_path} (the suite keeps weights with save_models: true)")
    model = RecurrentPPO.load(zip_path, device="cpu")
    if getattr(model.policy, "action_squash", None) != "tanh_sample":
        raise ValueError(f"{zip_path}: not a tanh_sample liquid policy (nothing to bound)")
    norm = None
    norm_path = stem.with_suffix(".vecnormalize.pkl")
    if norm_path.is_file():
        norm = VecNormalize.load(str(norm_path), DummyVecEnv([lambda: make_novel_env(env_id)]))
        norm.training, norm.norm_reward = False, False
    outputs: list[np.ndarray] = []

    def grab(_module: Any, _inputs: Any, out: torch.Tensor) -> None:
        outputs.append(out.detach().reshape(-1, out.shape[-1]).numpy().copy())

    hook = model.policy.action_net.register_forward_hook(grab)
    try:
        returns = evaluate_model(
            model, env_id, episodes, seed0, vec_normalize=norm, deterministic=deterministic
        )
    finally:
        hook.remove()
    limit = cast(float | None, model.policy.mean_limit)
    return np.concatenate(outputs), None if limit is None else float(limit), returns


def summary_row(x: np.ndarray, limit: float) -> dict[str, Any]:
    """Statistics of pre-tanh means ``x`` under a bound at ``limit`` (knee ``limit - 1``)."""
    knee = limit - 1.0
    a = np.abs(x)
    slope = np.where(a > knee, 1.0 - np.tanh(a - knee) ** 2, 1.0)
    return {
        "past_knee": float(np.mean(a > knee)),
        "median_abs": float(np.median(a)),
        "max_abs": float(a.max()),
        "mean_slope": float(slope.mean()),
        "per_dim_mean": [round(float(v), 2) for v in x.mean(axis=0)],
        "steps": int(x.shape[0]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from ltc_control.agents.sb3 import DEFAULT_MEAN_LIMIT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs-dir", type=Path, required=True, help="the suite's records and saved runs")
    p.add_argument("--env-id", required=True)
    p.add_argument("--timesteps", type=int, required=True, help="the budget in the records' file names")
    p.add_argument("--model", default="ltc", choices=("ltc", "cfc"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--episodes", type=int, default=1, help="evaluation episodes replayed per run (default 1)")
    p.add_argument("--sampled", action="store_true", help="sampled actions (default: greedy)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    mode = "sampled" if args.sampled else "greedy"
    episodes = f"{args.episodes} episode(s) per run from reset seed 10000"
    print(f"{args.env_id}, {args.model}, {mode} actions, {episodes}")
    columns = ("seed", "steps", "return", "past the knee", "median abs", "max abs", "mean bound slope")
    print("| " + " | ".join((*columns, "mean per dimension")) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        stem = args.runs_dir / f"{args.env_id}__{args.model}__{seed}__{args.timesteps}"
        try:
            x, limit, returns = pretanh_means(stem, args.env_id, args.episodes, not args.sampled)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # an unbounded run (mean_limit None): where the default bound would act
        r = summary_row(x, DEFAULT_MEAN_LIMIT if limit is None else float(limit))
        print(
            f"| {seed} | {r['steps']} | {np.mean(returns):.1f} | {r['past_knee']:.2f} | "
            f"{r['median_abs']:.2f} | {r['max_abs']:.1f} | "
            f"{r['mean_slope']:.2f} | {r['per_dim_mean']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
