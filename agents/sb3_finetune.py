"""Lane keeping by RL: fine-tune an imitation-trained policy with RecurrentPPO, compare closed-loop metrics.

Flow: load an :class:`ltc_control.policy.Policy` checkpoint (e.g. from ``ltc-control train`` / ``demo``) ->
closed-loop metrics on held-out road seeds (DESIGN.md section 5, via :mod:`ltc_control.agents.episode`) ->
build a :class:`~ltc_control.agents.sb3.CnnLtcPolicy` with the same perception, wiring and head, copy the
weights in -> train only the critic for ``value_warmup_steps`` (a random critic would otherwise push the
imitation actor around with meaningless advantages) -> PPO on everything -> export the actor back to a
``Policy`` checkpoint -> the same closed-loop metrics. Writes a Markdown report, a JSON record and the
fine-tuned checkpoint (with the JSON record beside it).

Interrupts: the run saves an exact resume point at the start of every PPO rollout to
``<checkpoint_out>.resume`` (:mod:`ltc_control.agents.sb3_resume`); ``finetune(config, resume=True)``
(``--resume``) continues from it and ends with the same weights as an uninterrupted run. The folder is deleted
when the run finishes.

Entry point: ``experiments/finetune_lane_keeping_rl.py``.
"""

from __future__ import annotations

import json
import shutil
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
from ltc_control.errors import InputError, OutputExistsError
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


def resume_folder(config: FinetuneConfig) -> Path:
    """Where the run's resume point lives: ``<checkpoint_out>.resume``."""
    out = Path(config.checkpoint_out)
    return out.parent / f"{out.name}.resume"


def _config_key(config: FinetuneConfig) -> dict[str, Any]:
    return json.loads(json.dumps(to_dict(config), default=str))


def _check_outputs(config: FinetuneConfig, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Refuse outputs that hold results (unless ``overwrite``); the resume state if ``resume``."""
    from ltc_control.agents.sb3_resume import ResumeError, load_snapshot

    folder, out = resume_folder(config), Path(config.checkpoint_out)
    if resume:
        if not folder.is_dir():
            raise InputError(
                f"nothing to resume: no resume state at {folder} (the run finished or never started); "
                "run without --resume"
            )
        state, meta = load_snapshot(folder)
        saved, now = meta.get("finetune_config") or {}, _config_key(config)
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ResumeError(
                f"the resume state at {folder} was made with another config (differs in {diff}); resume with "
                "the same options, or start again with --overwrite"
            )
        return {"state": state, "before": meta["before"]}
    if (out.exists() or folder.exists()) and not overwrite:
        what = (
            f"{folder} holds an interrupted run (--resume to continue it)"
            if folder.exists()
            else f"{out} already exists"
        )
        raise OutputExistsError(f"{what}; pass --overwrite to start again or choose another checkpoint_out")
    if overwrite:
        shutil.rmtree(folder, ignore_errors=True)
    return None


def finetune(config: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Runs the whole flow (see the module docstring) and writes the report.

    Args:
        config: the fine-tuning config.
        resume: continue an interrupted run from ``<checkpoint_out>.resume`` (the same config).
        overwrite: replace an existing ``checkpoint_out`` / discard a resume state.

    Returns:
        The JSON record (config, metrics before and after, training time).

    Raises:
        FileNotFoundError: a missing checkpoint folder.
        ValueError: a checkpoint that is not an image policy.
        OutputExistsError: ``checkpoint_out`` or a resume state exists and neither flag is given.
        ResumeError: a resume state made with another config, or one whose env replay diverges.
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
    from ltc_control.agents.sb3_resume import ActionLog, restore_snapshot

    if not config.checkpoint:
        raise ValueError("checkpoint is required: the imitation-trained policy folder (model.json inside)")
    source, meta = load_checkpoint(config.checkpoint)
    if source.config.observation != "image":
        raise ValueError(
            f"{config.checkpoint} holds a {source.config.observation!r} policy; lane-keeping fine-tuning "
            "needs an image policy"
        )
    resumed = _check_outputs(config, resume, overwrite)
    env_kwargs = _env_kwargs(config, source.config.image_shape)
    if resumed is not None:
        before = resumed["before"]
    else:
        before = closed_loop_metrics(
            source, config.env_id, env_kwargs, config.eval_seeds, config.eval_max_steps
        )

    torch.manual_seed(config.seed)
    log = ActionLog(
        make_vec_env(config.env_id, n_envs=config.n_envs, seed=config.train_seed_start, env_kwargs=env_kwargs)
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
        log,
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
    phase = "warmup" if config.value_warmup_steps else "main"
    if resumed is not None:
        restore_snapshot(model, log, resumed["state"])
        phase = str(resumed["state"]["phase"])
    resumed_total = None if resumed is None else int(resumed["state"]["total_timesteps"])
    train_time = _train(model, config, log, phase, before, resumed_total)
    tuned = to_policy(model)
    after = closed_loop_metrics(tuned, config.env_id, env_kwargs, config.eval_seeds, config.eval_max_steps)
    sb3_to_checkpoint(
        model,
        config.checkpoint_out,
        metadata={
            "source_checkpoint": str(config.checkpoint),
            "env_id": config.env_id,
            "env_kwargs": env_kwargs,
            # where rollout / evaluate / inspect look for the env a checkpoint was trained in
            "train_config": {"env": {"id": config.env_id, "kwargs": env_kwargs}},
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
        "resumed": resumed is not None,
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
    shutil.rmtree(resume_folder(config), ignore_errors=True)
    return record


def _train(
    model: Any,
    config: FinetuneConfig,
    log: Any,
    phase: str,
    before: dict[str, Any],
    resumed_total: int | None = None,
) -> float:
    """Critic-only warm-up, then PPO on everything, with one progress bar and a resume point at every
    rollout start. A resumed run continues from ``phase`` and ``model.num_timesteps`` up to the interrupted
    ``learn()`` call's budget ``resumed_total`` (sb3 adds ``num_timesteps`` to a budget when not resetting).
    Returns the training seconds of this process."""
    from stable_baselines3.common.callbacks import BaseCallback

    from ltc_control.agents.sb3_checkpoint import to_policy
    from ltc_control.agents.sb3_resume import install_snapshots, save_snapshot

    total = config.value_warmup_steps + config.timesteps
    bar = tqdm(total=total, desc="PPO fine-tuning", unit="step", mininterval=5.0, initial=model.num_timesteps)
    current = [phase]

    class _Progress(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(self.num_timesteps - bar.n)
            return True

    def save(state: dict[str, Any], actions: np.ndarray) -> None:
        metadata = {"finetune_config": _config_key(config), "before": before, "phase": state["phase"]}
        save_snapshot(resume_folder(config), to_policy(model), state, actions, metadata)

    install_snapshots(model, log, save, lambda: current[0])
    t0 = time.perf_counter()
    if current[0] == "warmup":
        bar.set_postfix_str("critic-only warm-up")
        _set_actor_trainable(model.policy, False)
        if resumed_total is None:
            model.learn(config.value_warmup_steps, callback=_Progress(), progress_bar=False)
        else:
            model.learn(
                resumed_total - model.num_timesteps,
                callback=_Progress(),
                reset_num_timesteps=False,
                progress_bar=False,
            )
        resumed_total = None
        _set_actor_trainable(model.policy, True)
        bar.set_postfix_str("")
        current[0] = "main"
    steps = config.timesteps if resumed_total is None else resumed_total - model.num_timesteps
    model.learn(steps, callback=_Progress(), reset_num_timesteps=False, progress_bar=False)
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
