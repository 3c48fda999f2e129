"""What do the suite's greedy continuous-action policies do? Their actions along the evaluation's episodes.

Issue #16's suite judges every run by its greedy (deterministic) return. Early in training a Gaussian policy's
mean can sit at the action bound on every step, whatever it observes: then its greedy policy is one constant
action, runs of different models and seeds replay the same trajectory and score the same return. This script
replays each saved run's greedy evaluation (``<stem>.zip``, and ``<stem>.vecnormalize.pkl`` where the run
normalised observations; the same reset seeds 10000.. and the same code as the suite's evaluation, so the
returns equal the record's) and reports per run:

- ``bound share``: the fraction of action entries within 1% of the action space's range from a bound;
- ``action std``: the actions' standard deviation over the steps of the episodes, mean over the action's
  dimensions, as a fraction of the range (0: the action does not move with the state);
- ``constant``: every dimension's std below 0.1% of its range on every episode (one fixed action);
- ``mean action`` (per dimension) and the mean episode length.

    .venv/bin/python experiments/bench/rl_greedy_actions.py --tasks HopperNoVel-v5 \\
        --write experiments/results/rl_greedy_actions_hopper.md

``--kwargs '{action_squash: none}'`` reads that ablation's runs instead of the suite's (tuning tasks only).
Discrete-action runs are refused (their greedy view is ``rl_discrete_diag.py``'s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import emit_report, provenance_lines

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = ROOT / "experiments" / "configs" / "rl_novel_suite.yaml"

#: An action entry this close to a bound (as a fraction of the range) counts as at the bound.
BOUND_TOL = 0.01
#: A dimension whose std over an episode is below this fraction of the range counts as constant.
CONSTANT_TOL = 1e-3


def action_stats(episodes: list[np.ndarray], low: np.ndarray, high: np.ndarray) -> dict[str, Any]:
    """One run's greedy actions summarised: a list of ``(steps, *action shape)`` arrays in ``[low, high]``.

    Raises:
        ValueError: no episode, an empty one, a shape that is not ``(steps, D)``, unbounded or empty ranges,
            NaN or inf actions.
    """
    low, high = np.asarray(low, np.float64).ravel(), np.asarray(high, np.float64).ravel()
    if not episodes:
        raise ValueError("no episode to summarise")
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        raise ValueError(f"the action space needs finite bounds with high > low, got {low} .. {high}")
    arrays = [np.asarray(a, np.float64) for a in episodes]
    arrays = [a.reshape(a.shape[0], -1) if a.ndim > 2 else a for a in arrays]  # (steps, *shape) -> (steps, D)
    for a in arrays:
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != low.size:
            raise ValueError(f"each episode's actions must be (steps >= 1, {low.size}), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain NaN or inf")
    span = high - low
    every = np.concatenate(arrays)
    near = np.minimum(every - low, high - every) <= BOUND_TOL * span
    per_episode_std = np.stack([a.std(axis=0) / span for a in arrays])  # (episodes, D)
    return {
        "steps": int(every.shape[0]),
        "episode_length": float(np.mean([a.shape[0] for a in arrays])),
        "bound_share": float(near.mean()),
        "action_std": float(per_episode_std.mean()),
        "constant": bool(np.all(per_episode_std < CONSTANT_TOL)),
        "mean_action": [round(float(v), 3) for v in every.mean(axis=0)],
    }


def greedy_actions(record: dict[str, Any], episodes: int, seed0: int = 10_000) -> tuple[list[float], Any]:
    """One saved run's greedy returns and actions on the evaluation's reset seeds.

    Returns:
        ``(returns, (actions per episode, action space))``.

    Raises:
        FileNotFoundError: the record names no saved model, or the file is missing.
        ValueError: a discrete-action run.
    """
    from gymnasium import spaces
    from rl_bench import evaluate_model
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ltc_control.agents.sb3_envs import make_novel_env

    saved = record.get("saved", {})
    name = f"{record['env_id']} {record['model']} seed {record['seed']}"
    model_path = saved.get("model")
    if not model_path:
        raise FileNotFoundError(f"{name}: the record names no saved model (run with save_models: true)")
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{name}: saved model {model_path!r} not found (the record's 'saved' entry)")
    model = RecurrentPPO.load(model_path, device="cpu")
    if not isinstance(model.action_space, spaces.Box):
        raise ValueError(f"{name}: {model.action_space} actions; rl_discrete_diag.py reads discrete policies")
    norm = None
    if saved.get("vecnormalize"):
        norm = VecNormalize.load(
            saved["vecnormalize"], DummyVecEnv([lambda: make_novel_env(record["env_id"])])
        )
        norm.training, norm.norm_reward = False, False
    actions: list[np.ndarray] = []
    returns = evaluate_model(
        model, record["env_id"], episodes, seed0, vec_normalize=norm, actions_out=actions
    )
    return returns, (actions, model.action_space)


def main(argv: list[str] | None = None) -> int:
    import torch
    from rl_bench import _load_records
    from rl_suite import add_suite_arguments, suite_from_arguments
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_suite_arguments(p, DEFAULT_SUITE, tasks_required=True)
    p.add_argument("--episodes", type=int, default=None, help="episodes per run (default: the suite's)")
    p.add_argument("--write", type=Path, default=None, help="markdown output (+ .jsonl rows beside it)")
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else argv
    config, tasks = suite_from_arguments(p, args)
    episodes = config.eval_episodes if args.episodes is None else args.episodes
    if episodes < 1:
        p.error(f"--episodes must be >= 1, got {episodes}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for task in tasks:
        records = _load_records(config.benchmark(task))
        if not records:
            p.error(f"{task.env_id}: no run records in {config.runs_dir}")
        for rec in tqdm(records, desc=task.env_id, unit="run"):
            try:
                returns, (actions, space) = greedy_actions(rec, episodes)
            except ValueError as err:
                p.error(str(err))
            row = {"env_id": task.env_id, "model": rec["model"], "seed": int(rec["seed"])}
            row["return"] = float(np.mean(returns))
            row["record_return"] = float(rec["eval_mean"]) if episodes == config.eval_episodes else None
            row.update(action_stats(actions, space.low, space.high))
            rows.append(row)
    emit_report(_markdown(rows, episodes, time.perf_counter() - t0, cli), rows, args.write)
    return 0


def _markdown(rows: list[dict[str, Any]], episodes: int, seconds: float, cli: list[str]) -> str:
    from rl_bench import _MODEL_NAMES

    lines = [
        "# Greedy actions of the suite's continuous-action runs",
        "",
        *provenance_lines(__file__, cli),
        f"- Each saved run replayed greedily on {episodes} episodes of the evaluation's reset seeds "
        f"(10000..), the suite's evaluation code. At the bound: within {BOUND_TOL:.0%} of the range; action "
        f"std: over the steps, mean over dimensions, fraction of the range; constant: every dimension's std "
        f"below {CONSTANT_TOL:.1%} of the range. Time {seconds:.0f} s.",
        "",
        "| task | model | seed | greedy return | episode length | at the bound | action std | constant "
        "| mean action |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['env_id']} | {_MODEL_NAMES[r['model']]} | {r['seed']} | {r['return']:.1f} | "
            f"{r['episode_length']:.0f} | {r['bound_share']:.2f} | {r['action_std']:.3f} | "
            f"{'yes' if r['constant'] else 'no'} | {', '.join(f'{v:.2f}' for v in r['mean_action'])} |"
        )
    lines += ["", "Per task and model, runs whose greedy policy is one constant action:", ""]
    for env_id in dict.fromkeys(r["env_id"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows if r["env_id"] == env_id):
            mine = [r for r in rows if r["env_id"] == env_id and r["model"] == model]
            const = sum(r["constant"] for r in mine)
            share = np.mean([r["bound_share"] for r in mine])
            lines.append(
                f"- {env_id} {_MODEL_NAMES[model]}: {const} of {len(mine)} constant; "
                f"at the bound on {share:.0%} of the action entries"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
