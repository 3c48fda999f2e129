"""Lane keeping by RL: fine-tune an imitation-trained policy with RecurrentPPO, compare closed-loop metrics.

Flow: load an :class:`ltc_control.policy.Policy` checkpoint (e.g. from ``ltc-control train`` / ``demo``) ->
closed-loop metrics on held-out road seeds (DESIGN.md section 5, via :mod:`ltc_control.agents.episode`) ->
build a :class:`~ltc_control.agents.sb3.CnnLtcPolicy` with the same perception, wiring and head, copy the
weights in -> train only the critic for ``value_warmup_steps`` (a random critic would otherwise push the
imitation actor around with meaningless advantages) -> PPO on everything -> export the actor back to a
``Policy`` checkpoint -> the same closed-loop metrics. Writes a Markdown report, a JSON record and the
fine-tuned checkpoint (with the JSON record beside it).

Entry point: ``experiments/finetune_lane_keeping_rl.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ltc_control.agents.episode import PolicyAgent, make_env, run_episode
from ltc_control.agents.metrics import episode_metrics
from ltc_control.checkpoint import load_checkpoint
from ltc_control.config import to_dict
from ltc_control.runs import atomic_write_json, atomic_write_text

__all__ = ["FinetuneConfig", "closed_loop_metrics", "finetune"]

_METRICS = (
    "distance_m",
    "departures",
    "completed",
    "mean_abs_lateral_m",
    "max_abs_lateral_m",
    "steering_smoothness",
)


@dataclass(frozen=True)
class FinetuneConfig:
    """PPO fine-tuning of an imitation-trained lane-keeping policy.

    Args:
        checkpoint: the imitation-trained ``Policy`` checkpoint folder (``model.json``, weights).
        env_id: the lane-keeping env id (image observations).
        env_kwargs: env keyword arguments; ``image_height`` / ``image_width`` default to the policy's image.
        timesteps: PPO env steps after the value warm-up.
        value_warmup_steps: env steps during which only the critic trains (actor frozen).
        n_envs: parallel envs.
        n_steps: steps per env per rollout.
        batch_size: minibatch size.
        n_epochs: passes over each rollout.
        learning_rate: Adam learning rate (small: the actor starts from a good policy).
        gamma: discount factor.
        gae_lambda: GAE lambda.
        clip_range: PPO clip range.
        log_std_init: initial log standard deviation of the steering noise (-2: std 0.14 of full lock).
        critic: critic of the policy (``separate``: own LTC controller on its own copy of the CNN head).
        train_seed_start: first road seed used for training episodes (the envs reseed from here).
        eval_seeds: held-out road seeds for the closed-loop comparison (never used in training).
        eval_max_steps: step cap per evaluation episode (0 = the env's own end).
        seed: RL seed (PPO sampling, critic initialisation).
        out_dir: where the Markdown report ``<name>.md`` goes (the JSON record: beside ``checkpoint_out``).
        checkpoint_out: where the fine-tuned policy checkpoint goes.
        name: file name stem of the report.
    """

    checkpoint: str = ""
    env_id: str = "LTC/LaneKeeping-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    timesteps: int = 4096
    value_warmup_steps: int = 2048
    n_envs: int = 4
    n_steps: int = 128
    batch_size: int = 128
    n_epochs: int = 4
    learning_rate: float = 1e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.1
    log_std_init: float = -2.0
    critic: str = "separate"
    train_seed_start: int = 100_000
    eval_seeds: tuple[int, ...] = (9001, 9002, 9003, 9004, 9005)
    eval_max_steps: int = 0
    seed: int = 0
    out_dir: str = "experiments/results"
    checkpoint_out: str = "runs/rl_finetune/finetuned"
    name: str = "rl_lane_keeping_finetune"

    def __post_init__(self) -> None:
        if self.timesteps < 1 or self.value_warmup_steps < 0:
            raise ValueError("timesteps must be >= 1 and value_warmup_steps >= 0")
        if not self.eval_seeds:
            raise ValueError("eval_seeds must list at least one held-out road seed")
        if set(self.eval_seeds) & set(range(self.train_seed_start, self.train_seed_start + 10_000)):
            raise ValueError("eval_seeds overlap the training road seeds; pick held-out seeds")
        if self.critic not in ("separate", "shared", "feedforward"):
            raise ValueError(f"critic must be separate, shared or feedforward, got {self.critic!r}")


def _env_kwargs(config: FinetuneConfig, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    kwargs = dict(config.env_kwargs)
    kwargs.setdefault("image_height", image_shape[0])
    kwargs.setdefault("image_width", image_shape[1])
    return kwargs


def closed_loop_metrics(
    policy: Any, env_id: str, env_kwargs: dict[str, Any], seeds: tuple[int, ...], max_steps: int = 0
) -> dict[str, Any]:
    """Closed-loop lane-keeping metrics of a ``Policy`` on the given road seeds (clean observations).

    Args:
        policy: an :class:`ltc_control.policy.Policy`.
        env_id: env id.
        env_kwargs: env keyword arguments.
        seeds: road seeds, one episode each.
        max_steps: step cap per episode (0 = none).

    Returns:
        ``{"episodes": [per-episode metrics], "mean": {metric: mean over episodes}, "return": mean return}``.
    """
    env = make_env(env_id, env_kwargs)
    agent = PolicyAgent(policy)
    episodes = []
    for seed in tqdm(seeds, desc="closed-loop evaluation", unit="road", leave=False, disable=len(seeds) < 2):
        result = run_episode(env, agent, seed=seed, max_steps=max_steps or None)
        m = episode_metrics(result)
        row = {k: float(getattr(m, k)) for k in _METRICS}
        row["seed"] = int(seed)
        row["return"] = float(np.sum(result.rewards))
        episodes.append(row)
    env.close()
    mean = {k: float(np.mean([e[k] for e in episodes])) for k in (*_METRICS, "return")}
    return {"episodes": episodes, "mean": mean}


def _set_actor_trainable(policy: Any, trainable: bool) -> None:
    modules = [policy.lstm_actor, policy.action_net, policy.pi_features_extractor]
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(trainable)
    log_std = getattr(policy, "log_std", None)
    if log_std is not None:
        log_std.requires_grad_(trainable)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Runs the whole flow (see the module docstring) and writes the report.

    Args:
        config: the fine-tuning config.

    Returns:
        The JSON record (config, metrics before and after, training time).

    Raises:
        FileNotFoundError: a missing checkpoint folder.
        ValueError: a checkpoint that is not an image policy.
    """
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    import ltc_control.envs  # noqa: F401
    from ltc_control.agents.sb3 import CnnLtcPolicy
    from ltc_control.agents.sb3_checkpoint import (
        load_policy_weights,
        policy_kwargs_from_policy,
        sb3_to_checkpoint,
        to_policy,
    )

    if not config.checkpoint:
        raise ValueError("checkpoint is required: the imitation-trained policy folder (model.json inside)")
    source, meta = load_checkpoint(config.checkpoint)
    if source.config.observation != "image":
        raise ValueError(
            f"{config.checkpoint} holds a {source.config.observation!r} policy; lane-keeping fine-tuning "
            "needs an image policy"
        )
    env_kwargs = _env_kwargs(config, source.config.image_shape)
    before = closed_loop_metrics(source, config.env_id, env_kwargs, config.eval_seeds, config.eval_max_steps)

    torch.manual_seed(config.seed)
    env = make_vec_env(
        config.env_id, n_envs=config.n_envs, seed=config.train_seed_start, env_kwargs=env_kwargs
    )
    kwargs = policy_kwargs_from_policy(
        source,
        critic=config.critic,
        log_std_init=config.log_std_init,
        # A separate critic gets its own copy of the CNN head: value-loss gradients leave the actor's alone.
        share_features_extractor=config.critic == "shared",
    )
    model = RecurrentPPO(
        CnnLtcPolicy,
        env,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        learning_rate=config.learning_rate,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        seed=config.seed,
        device="cpu",
        policy_kwargs=kwargs,
    )
    load_policy_weights(model, source)
    start = to_policy(model)
    train_time = _train(model, config)
    tuned = to_policy(model)
    after = closed_loop_metrics(tuned, config.env_id, env_kwargs, config.eval_seeds, config.eval_max_steps)
    sb3_to_checkpoint(
        model,
        config.checkpoint_out,
        metadata={
            "source_checkpoint": str(config.checkpoint),
            "env_id": config.env_id,
            "env_kwargs": env_kwargs,
        },
    )
    # The sb3 actor must start exactly where the imitation policy was: check on the first held-out road.
    start_check = closed_loop_metrics(start, config.env_id, env_kwargs, config.eval_seeds[:1], 50)
    ref_check = closed_loop_metrics(source, config.env_id, env_kwargs, config.eval_seeds[:1], 50)
    record = {
        "config": to_dict(config),
        "env_kwargs": env_kwargs,
        "source_metadata_keys": sorted(meta),
        "before": before,
        "after": after,
        "start_equals_source": start_check["mean"] == ref_check["mean"],
        "train_time_s": train_time,
        "env_steps": int(model.num_timesteps),
        "ep_info": [dict(e) for e in (model.ep_info_buffer or [])],
    }
    out = Path(config.out_dir)
    # The full record (per-episode metrics, training episodes) stays beside the checkpoint, out of git.
    atomic_write_json(
        Path(config.checkpoint_out).parent / f"{config.name}.json",
        json.loads(json.dumps(record, default=float)),
    )
    atomic_write_text(out / f"{config.name}.md", _report(config, record))
    return record


def _train(model: Any, config: FinetuneConfig) -> float:
    """Critic-only warm-up, then PPO on everything, with one progress bar; returns the training seconds."""
    from stable_baselines3.common.callbacks import BaseCallback

    total = config.value_warmup_steps + config.timesteps
    bar = tqdm(total=total, desc="PPO fine-tuning", unit="step", mininterval=5.0)

    class _Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(self.num_timesteps - bar.n)
            return True

    t0 = time.perf_counter()
    if config.value_warmup_steps:
        bar.set_postfix_str("critic-only warm-up")
        _set_actor_trainable(model.policy, False)
        model.learn(config.value_warmup_steps, callback=_Progress(), progress_bar=False)
        _set_actor_trainable(model.policy, True)
        bar.set_postfix_str("")
    model.learn(config.timesteps, callback=_Progress(), reset_num_timesteps=False, progress_bar=False)
    train_time = time.perf_counter() - t0
    bar.close()
    return train_time


def _report(config: FinetuneConfig, record: dict[str, Any]) -> str:
    b, a = record["before"]["mean"], record["after"]["mean"]
    higher_is_better = {"distance_m", "completed", "return"}

    def verdict(k: str) -> str:
        if abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(b[k])):
            return "same"
        return "yes" if (a[k] > b[k]) == (k in higher_is_better) else "no"

    lines = [
        "# Lane keeping: PPO fine-tuning of an imitation-trained LTC policy",
        "",
        f"Source checkpoint: `{config.checkpoint}`. Env `{config.env_id}` "
        f"{json.dumps(record['env_kwargs'])}. "
        f"RL: {record['env_steps']:,} env steps ({config.value_warmup_steps:,} critic-only warm-up), "
        f"{config.n_envs} envs, lr {config.learning_rate:g}, clip {config.clip_range}, log_std_init "
        f"{config.log_std_init}, critic {config.critic}; {record['train_time_s']:.0f} s of training. "
        f"Held-out road seeds {list(config.eval_seeds)}, clean observations, deterministic actions.",
        "",
        f"The sb3 actor started exactly at the imitation policy: {record['start_equals_source']}.",
        "",
        "| metric (mean over held-out roads) | imitation | after PPO | better? |",
        "| --- | --- | --- | --- |",
    ]
    for k in (*_METRICS, "return"):
        lines.append(f"| {k} | {b[k]:.4g} | {a[k]:.4g} | {verdict(k)} |")
    lines += ["", "Per-road (imitation -> PPO): distance m, mean |lateral| m"]
    for eb, ea in zip(record["before"]["episodes"], record["after"]["episodes"], strict=True):
        lines.append(
            f"- seed {eb['seed']}: {eb['distance_m']:.1f} -> {ea['distance_m']:.1f}; "
            f"{eb['mean_abs_lateral_m']:.3f} -> {ea['mean_abs_lateral_m']:.3f}"
        )
    return "\n".join(lines) + "\n"
