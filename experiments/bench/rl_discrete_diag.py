"""Why does a discrete policy that trains well fail when it acts greedily? Logits along its own episodes.

Issue #16's held-out LunarLanderNoVel runs: sampled during training, the liquid policies score about what
RecurrentPPO's LSTM does, but their greedy (argmax) policies crash. This script loads saved ``RecurrentPPO``
runs (``<stem>.zip`` and, where the run normalised observations, ``<stem>.vecnormalize.pkl``), plays episodes
on fixed reset seeds twice, greedy and sampled, and reports per run how much the logits depend on the state:

- ``argmax share``: the fraction of steps on which each action has the largest logit;
- ``state std``: the state-driven spread of the logits, ``sqrt(sum_k Var_t[l_k(t) - mean_j l_j(t)])``;
- ``preference``: the norm of the time-mean centred logit vector (the constant part of the policy);
- ``constant share``: the fraction of steps whose argmax is the argmax of that time-mean vector. At 1.0 the
  greedy policy takes one action whatever it sees;
- ``margin``: the mean gap between the largest and the second largest logit; ``entropy`` in nats.

A policy whose logits move little with the state (``state std`` small against ``preference``) can still
score while sampled, because its random draws mix the actions, while its argmax repeats one action.

    .venv/bin/python experiments/bench/rl_discrete_diag.py --runs runs/rl_benchmark/rl_novel_suite \\
        --task LunarLanderNoVel-v3 --models ltc cfc lstm --seeds 0 1 2 3 4 --budget 500000 \\
        --write experiments/results/rl_discrete_diag_lunarlander.md

``--init`` reads untrained policies instead (built for the task with ``--policy-kwargs`` on top of the
defaults, one per seed): where does each start, how far its logits' constant part outweighs their dependence
on the state before any training? Observations go through a fresh ``VecNormalize`` (updating, as in a first
rollout) unless ``--no-normalize``; episodes are cut at ``--max-steps``::

    .venv/bin/python experiments/bench/rl_discrete_diag.py --init --task AcrobotNoVel-v1 --models ltc \\
        --policy-kwargs '{action_readout: state}' --max-steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import emit_report, provenance_lines


def logit_stats(logits: np.ndarray) -> dict[str, Any]:
    """The summary of a ``(T, K)`` array of logits over the steps of one or more episodes."""
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (steps >= 1, actions >= 2), got shape {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits contain NaN or inf")
    centred = logits - logits.mean(axis=1, keepdims=True)
    preference = centred.mean(axis=0)
    top2 = np.sort(centred, axis=1)[:, -2:]
    probs = np.exp(centred - centred.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    argmax = centred.argmax(axis=1)
    return {
        "steps": int(logits.shape[0]),
        "argmax_share": [float(s) for s in np.bincount(argmax, minlength=logits.shape[1]) / len(argmax)],
        "state_std": float(np.sqrt(centred.var(axis=0).sum())),
        "preference": float(np.linalg.norm(preference)),
        "constant_share": float(np.mean(argmax == int(preference.argmax()))),
        "margin": float(np.mean(top2[:, 1] - top2[:, 0])),
        "entropy": float(np.mean(-(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1))),
    }


def play(
    model: Any, make_venv: Any, seeds: list[int], greedy: bool, max_steps: int | None = None
) -> tuple[np.ndarray, list[float]]:
    """Logits of every step and the return of each episode (one episode per reset seed; at most
    ``max_steps`` steps each)."""
    import torch

    policy = model.policy
    rows: list[np.ndarray] = []
    returns: list[float] = []
    venv = make_venv()
    for seed in seeds:
        venv.seed(seed)
        obs = venv.reset()
        rng = np.random.default_rng(seed)
        shape = (policy.lstm_actor.num_layers, 1, policy.lstm_actor.hidden_size)
        state: Any = (torch.zeros(shape), torch.zeros(shape))
        start, done, ret, steps = torch.ones(1), False, 0.0, 0
        while not done and (max_steps is None or steps < max_steps):
            steps += 1
            with torch.no_grad():
                obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
                dist, state = policy.get_distribution(obs_t, state, start)
                logits = dist.distribution.logits[0].double().numpy()
            rows.append(logits)
            if greedy:
                action = int(np.argmax(logits))
            else:
                p = np.exp(logits - logits.max())
                action = int(rng.choice(len(p), p=p / p.sum()))
            obs, reward, dones, _ = venv.step(np.array([action]))
            ret += float(reward[0])
            done = bool(dones[0])
            start = torch.zeros(1)
        returns.append(ret)
    venv.close()
    return np.asarray(rows), returns


def _untrained(name: str, task: str, policy_kwargs: dict[str, Any]) -> Any:
    """An untrained ``RecurrentPPO`` for ``<task>__<model>__<seed>__init`` (policy built with the seed)."""
    from rl_bench import defaults_policy_kwargs
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from ltc_control.agents.sb3 import LtcPolicy
    from ltc_control.agents.sb3_envs import make_novel_env

    _, model_name, seed, _ = name.split("__")
    venv = DummyVecEnv([lambda: make_novel_env(task)])
    if model_name == "lstm":
        return RecurrentPPO("MlpLstmPolicy", venv, seed=int(seed), device="cpu")
    kwargs = defaults_policy_kwargs(model_name, policy_kwargs)
    return RecurrentPPO(LtcPolicy, venv, policy_kwargs=kwargs, seed=int(seed), device="cpu")


def main(argv: list[str] | None = None) -> int:
    import gymnasium as gym
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ltc_control.agents.sb3_envs import make_novel_env

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--runs", type=Path, default=None, help="folder of run records <task>__<model>__<seed>__<budget>"
    )
    p.add_argument("--init", action="store_true", help="untrained policies (one per seed), not saved runs")
    p.add_argument(
        "--policy-kwargs", default="{}", help="--init: YAML mapping of LtcPolicy kwargs (liquid models)"
    )
    p.add_argument("--no-normalize", action="store_true", help="--init: raw observations (no VecNormalize)")
    p.add_argument("--max-steps", type=int, default=None, help="cut each episode after this many steps")
    p.add_argument("--task", required=True, help="env id, e.g. LunarLanderNoVel-v3")
    p.add_argument("--models", nargs="+", default=["ltc", "cfc", "lstm"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds of the runs")
    p.add_argument("--budget", type=int, default=None, help="training steps in the runs' names")
    p.add_argument("--episodes", type=int, default=3, help="episodes per run and mode")
    p.add_argument("--first-seed", type=int, default=9000, help="reset seed of the first episode")
    p.add_argument("--write", type=Path, default=None, help="markdown output (a .jsonl of rows beside it)")
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else argv
    if args.episodes < 1:
        p.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.max_steps is not None and args.max_steps < 1:
        p.error(f"--max-steps must be >= 1, got {args.max_steps}")
    unknown = sorted(set(args.models) - {"ltc", "cfc", "lstm"})
    if unknown:
        p.error(f"unknown model(s) {unknown}: choose from ltc, cfc, lstm")
    if not args.init and (args.policy_kwargs != "{}" or args.no_normalize):
        p.error("--policy-kwargs and --no-normalize apply to untrained policies: add --init")
    if args.init:
        import yaml

        try:
            policy_kwargs = yaml.safe_load(args.policy_kwargs)
        except yaml.YAMLError as exc:
            p.error(f"--policy-kwargs is not YAML: {exc}")
        if not isinstance(policy_kwargs, dict):
            p.error(f"--policy-kwargs must be a mapping, got {args.policy_kwargs!r}")
        stems = [Path(f"{args.task}__{m}__{s}__init") for m in args.models for s in args.seeds]
        source = f"untrained policies, liquid policy kwargs {policy_kwargs}"
    else:
        if args.runs is None or args.budget is None:
            p.error("--runs and --budget are required (or --init for untrained policies)")
        stems = [args.runs / f"{args.task}__{m}__{s}__{args.budget}" for m in args.models for s in args.seeds]
        for stem in stems:
            if not Path(f"{stem}.zip").is_file():
                p.error(f"{stem}.zip does not exist (run records are <task>__<model>__<seed>__<budget>.zip)")
        source = f"runs in `{args.runs}`"
    torch.set_num_threads(1)
    episode_seeds = list(range(args.first_seed, args.first_seed + args.episodes))
    t0 = time.perf_counter()
    rows = []
    for stem in stems:
        if args.init:
            try:
                model = _untrained(stem.name, args.task, policy_kwargs)
            except (TypeError, ValueError) as exc:  # an unknown or bad policy kwarg
                p.error(f"cannot build the {stem.name.split('__')[1]} policy from --policy-kwargs: {exc}")
        else:
            model = RecurrentPPO.load(f"{stem}.zip", device="cpu")
        if not isinstance(model.action_space, gym.spaces.Discrete):
            p.error(f"{stem}: the diagnosis reads discrete policies, not {type(model.action_space).__name__}")
        norm = Path(f"{stem}.vecnormalize.pkl")

        def make_venv(norm: Path = norm) -> Any:
            venv = DummyVecEnv([lambda: make_novel_env(args.task)])
            if args.init:
                return venv if args.no_normalize else VecNormalize(venv, norm_reward=False)
            if not norm.is_file():
                return venv
            normalised = VecNormalize.load(str(norm), venv)
            normalised.training, normalised.norm_reward = False, False
            return normalised

        _, model_name, seed, _ = stem.name.split("__")
        head = {}
        scale = getattr(getattr(model.policy, "action_net", None), "scale", None)
        if isinstance(scale, torch.Tensor):  # an element-wise MotorHead (not a StateReadoutHead)
            head = {"head_scale": [round(float(v), 3) for v in scale.detach()]}
        for mode in ("greedy", "sampled"):
            logits, returns = play(model, make_venv, episode_seeds, mode == "greedy", args.max_steps)
            row: dict[str, Any] = {
                "model": model_name,
                "seed": int(seed),
                "mode": mode,
                "return": float(np.mean(returns)),
            }
            row.update(logit_stats(logits))
            row.update(head)
            rows.append(row)
            print(json.dumps(row), flush=True)

    lines = [
        f"# Discrete policies' logits, greedy vs sampled: {args.task}, {source}",
        "",
        *provenance_lines(__file__, cli),
        f"- {args.episodes} episodes per run and mode on reset seeds "
        f"{episode_seeds[0]}..{episode_seeds[-1]}; "
        "greedy = argmax of the logits, sampled = a draw from the softmax (numpy seeded by the reset seed). "
        + (f"Episodes cut at {args.max_steps} steps. " if args.max_steps else "")
        + "Logits are centred per step. Total time "
        f"{time.perf_counter() - t0:.0f} s.",
        "",
        "| model | seed | mode | return | argmax share per action | constant share | state std | "
        "preference | margin | entropy (nats) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        share = " / ".join(f"{s:.2f}" for s in r["argmax_share"])
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['mode']} | {r['return']:.0f} | {share} | "
            f"{r['constant_share']:.2f} | {r['state_std']:.2f} | {r['preference']:.2f} | {r['margin']:.2f} | "
            f"{r['entropy']:.2f} |"
        )
    lines += ["", "Per model, mean over seeds (greedy rows): state std / preference, constant share", ""]
    for m in args.models:
        rs = [r for r in rows if r["model"] == m and r["mode"] == "greedy"]
        ratio = np.mean([r["state_std"] / max(r["preference"], 1e-9) for r in rs])
        lines.append(
            f"- {m}: state std {np.mean([r['state_std'] for r in rs]):.2f}, preference "
            f"{np.mean([r['preference'] for r in rs]):.2f} (ratio {ratio:.2f}), constant share "
            f"{np.mean([r['constant_share'] for r in rs]):.2f}, greedy return "
            f"{np.mean([r['return'] for r in rs]):.0f}"
        )
    emit_report("\n".join(lines) + "\n", rows, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
