"""Partially observed RL benchmark: LTC-PPO vs CfC-PPO vs LSTM-PPO (RecurrentPPO's own policy).

Every model trains with the same PPO hyper-parameters, budget and seeds on a "NoVel" task (velocities masked,
:mod:`ltc_control.agents.sb3_envs`). Each run writes a JSON record (training-episode returns over time, final
deterministic evaluation, wall time, steps per second, parameter counts) to ``runs_dir``; runs whose
record exists are skipped, so an interrupted benchmark resumes where it stopped. :func:`summarize` turns the
records into a table (Markdown + CSV, mean and spread over seeds) and a learning-curve plot.

Entry points: ``experiments/rl_benchmark.py`` (``--config experiments/configs/rl_pendulum_novel.yaml``) or
``ltc-control bench rl`` (the same options) from a checkout.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from rl_bench_config import BenchmarkConfig, ModelName, PPOConfig, RunSpec, parse_schedule

from ltc_control.controllers import ControllerConfig
from ltc_control.runs import atomic_write_json, atomic_write_text

__all__ = [
    "BenchmarkConfig",
    "ModelName",
    "PPOConfig",
    "RunSpec",
    "evaluate_model",
    "is_image_space",
    "make_model",
    "parse_schedule",
    "run_benchmark",
    "run_missing",
    "run_one",
    "summarize",
]


# ---------------------------------------------------------------------------------------------- building
def _make_env_fn(env_id: str) -> Any:
    from ltc_control.agents.sb3_envs import make_novel_env

    def _fn() -> Any:
        return make_novel_env(env_id)

    return _fn


def _schedule(value: float | str, kind: str, name: str) -> Any:
    """A constant rate, or sb3's linear schedule (``progress_remaining`` 1 -> 0) for ``lin_<rate>`` or
    ``kind == "linear"``."""
    rate, parsed = parse_schedule(value, name)
    if kind == "constant" and parsed == "constant":
        return rate
    from stable_baselines3.common.utils import LinearSchedule

    return LinearSchedule(rate, 0.0, 1.0)


def is_image_space(space: Any) -> bool:
    """Whether ``space`` is an image ``Box`` the way sb3 sees one (uint8, 2-D frames with channels)."""
    from stable_baselines3.common.preprocessing import is_image_space as sb3_is_image_space

    return bool(sb3_is_image_space(space, check_channels=False))


def defaults_policy_kwargs(model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``LtcPolicy`` kwargs of a liquid ``model`` under the suite's protocol: ``kwargs`` (an ablation's,
    or none) on top of the defaults, and for ``"cfc"`` the CfC kind in the controller (a ``controller``
    mapping in ``kwargs`` keeps its other fields)."""
    if model not in ("ltc", "cfc"):
        raise ValueError(f"unknown liquid model {model!r}; valid: ltc, cfc")
    out = dict(kwargs)
    if model == "cfc":
        out["controller"] = {**dict(out.get("controller") or {}), "kind": "cfc"}
    return out


def make_model(config: BenchmarkConfig, model: str, seed: int) -> Any:
    """The ``RecurrentPPO`` model of one run (envs built and seeded).

    Args:
        config: the benchmark config.
        model: ``"ltc"``, ``"cfc"`` or ``"lstm"``.
        seed: training seed.

    Returns:
        The model (``model.get_env()`` is its ``VecEnv``).
    """
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize
    from torch import nn

    from ltc_control.agents.sb3 import CnnLtcPolicy, LtcPolicy

    ppo = config.ppo
    env = make_vec_env(_make_env_fn(config.env_id), n_envs=ppo.n_envs, seed=seed)
    # image observations: each model's CNN variant (sb3's own convention: "CnnLstmPolicy" for the LSTM)
    image = is_image_space(env.observation_space)
    if image and ppo.normalize_observations:
        raise ValueError(
            f"{config.env_id}: normalize_observations must be false for image observations (VecNormalize "
            "would standardise every pixel; the policies scale images to [0, 1] themselves)"
        )
    lstm_policy = "CnnLstmPolicy" if image else "MlpLstmPolicy"
    liquid_policy = CnnLtcPolicy if image else LtcPolicy
    if ppo.normalize_observations or ppo.normalize_rewards:
        env = VecNormalize(
            env, norm_obs=ppo.normalize_observations, norm_reward=ppo.normalize_rewards, gamma=ppo.gamma
        )
    kwargs: dict[str, Any] | None
    common: dict[str, Any] = dict(
        n_steps=ppo.n_steps,
        batch_size=ppo.batch_size,
        n_epochs=ppo.n_epochs,
        learning_rate=_schedule(ppo.learning_rate, ppo.learning_rate_schedule, "ppo.learning_rate"),
        gamma=ppo.gamma,
        gae_lambda=ppo.gae_lambda,
        clip_range=_schedule(ppo.clip_range, "constant", "ppo.clip_range"),
        ent_coef=ppo.ent_coef,
        vf_coef=ppo.vf_coef,
        max_grad_norm=ppo.max_grad_norm,
        use_sde=ppo.use_sde,
        sde_sample_freq=ppo.sde_sample_freq,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    if config.policies == "defaults":  # no policy kwargs at all (issue #16's protocol)
        if model == "lstm":
            return RecurrentPPO(lstm_policy, env, **common)
        if model not in ("ltc", "cfc"):
            raise ValueError(f"unknown model {model!r}; valid: ltc, cfc, lstm")
        # an ablation adds its liquid policy kwargs on top of the defaults (none in the suite itself)
        kwargs = defaults_policy_kwargs(model, config.liquid_policy_kwargs) or None
        return RecurrentPPO(liquid_policy, env, policy_kwargs=kwargs, **common)
    shared_kwargs: dict[str, Any] = {
        "log_std_init": ppo.log_std_init,
        "ortho_init": ppo.ortho_init,
        "activation_fn": nn.ReLU if ppo.activation == "relu" else nn.Tanh,
    }
    if model == "lstm":
        arch = list(config.lstm_net_arch)
        kwargs = {
            "lstm_hidden_size": config.lstm_hidden_size,
            "net_arch": {"pi": arch, "vf": arch},
            "enable_critic_lstm": config.lstm_critic,
            **shared_kwargs,
        }
        return RecurrentPPO(lstm_policy, env, policy_kwargs=kwargs, **common)
    if model not in ("ltc", "cfc"):
        raise ValueError(f"unknown model {model!r}; valid: ltc, cfc, lstm")
    kwargs = {
        "controller": config.ltc if model == "ltc" else config.cfc,
        "critic": config.critic,
        "critic_outputs": config.critic_outputs,
        "net_arch": list(config.value_arch),
        **shared_kwargs,
        **dict(config.liquid_policy_kwargs),
    }
    return RecurrentPPO(liquid_policy, env, policy_kwargs=kwargs, **common)


def evaluate_model(
    model: Any,
    env_id: str,
    episodes: int,
    seed0: int = 10_000,
    vec_normalize: Any | None = None,
    deterministic: bool = True,
    actions_out: list[np.ndarray] | None = None,
) -> list[float]:
    """Returns of ``episodes`` episodes on fresh envs seeded ``seed0 + i``, greedy by default.

    Observations go through ``VecNormalize`` statistics (if any) as in training, without updating them; the
    returns are the env's raw (unnormalised) rewards.

    Args:
        model: a trained ``RecurrentPPO`` model.
        env_id: the benchmark env id.
        episodes: number of episodes.
        seed0: seed of the first episode.
        vec_normalize: the ``VecNormalize`` whose observation statistics to use (e.g. loaded from a run's
            ``.vecnormalize.pkl`` for a loaded model); default: the model's own (``None`` if it has none).
        deterministic: the greedy action (the benchmark's evaluation). False: actions drawn from the policy
            as in training (torch seeded with ``seed0 + i`` per episode; a gSDE policy redraws its noise at
            each episode's start and every ``sde_sample_freq`` steps, as its rollouts did).
        actions_out: where given, each episode's actions as the env received them, ``(steps, *action
            shape)``, are appended to it (``experiments/bench/rl_greedy_actions.py``).

    Returns:
        One undiscounted return per episode.
    """
    import torch
    from stable_baselines3.common.vec_env import VecNormalize

    env = _make_env_fn(env_id)()
    norm = vec_normalize if vec_normalize is not None else model.get_vec_normalize_env()
    sde = not deterministic and bool(getattr(model, "use_sde", False))
    sde_freq = int(getattr(model, "sde_sample_freq", -1))
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed0 + i)
        if not deterministic:
            torch.manual_seed(seed0 + i)
        state, start, done, total, step = None, np.ones((1,), dtype=bool), False, 0.0, 0
        taken = []
        while not done:
            if sde and (step == 0 or (sde_freq > 0 and step % sde_freq == 0)):
                model.policy.reset_noise(1)
            x = norm.normalize_obs(obs) if isinstance(norm, VecNormalize) else obs
            action, state = model.predict(x, state=state, episode_start=start, deterministic=deterministic)
            step += 1
            taken.append(np.array(action, copy=True))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = bool(terminated or truncated)
            start = np.zeros((1,), dtype=bool)
        returns.append(total)
        if actions_out is not None:
            actions_out.append(np.stack(taken))
    env.close()
    return returns


def _param_counts(model: Any) -> dict[str, int]:
    policy = model.policy
    total = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    out = {"policy_parameters": int(total)}
    actor = getattr(policy, "controller", None)
    if actor is not None:
        from ltc_control.controllers import count_parameters, count_synapses

        out["actor_controller_parameters"] = count_parameters(actor)
        out["actor_controller_effective_parameters"] = count_parameters(actor, effective=True)
        out["actor_synapses"] = int(count_synapses(actor) or 0)
    else:
        lstm = policy.lstm_actor
        out["actor_controller_parameters"] = int(sum(p.numel() for p in lstm.parameters()))
        out["actor_controller_effective_parameters"] = out["actor_controller_parameters"]
    return out


def run_one(config: BenchmarkConfig, spec: RunSpec, out_dir: Path | None = None) -> dict[str, Any]:
    """Trains and evaluates one run; writes its JSON record atomically (if ``out_dir``) and returns it.

    Args:
        config: the benchmark config.
        spec: model and seed.
        out_dir: folder for the JSON record (None: do not write).

    Returns:
        The record: ``curve`` (``[timestep, return]`` of every finished training episode), ``eval_returns``,
        ``eval_mean``, ``wall_time_s``, ``cpu_time_s``, ``steps_per_second``, parameter counts, config.
    """
    import torch
    from bench_common import cpu_model
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from tqdm.auto import tqdm

    from ltc_control.config import to_dict

    torch.set_num_threads(config.torch_threads)
    model = make_model(config, spec.model, spec.seed)
    curve: list[list[float]] = []
    bar = tqdm(total=config.timesteps, desc=f"{spec.model} seed {spec.seed}", unit="step", mininterval=5.0)

    class _Curve(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                ep = info.get("episode")
                if ep is not None:
                    curve.append([float(self.num_timesteps), float(ep["r"])])
            bar.update(self.num_timesteps - bar.n)
            return True

    callbacks: list[BaseCallback] = [_Curve()]
    if config.diagnostics:
        from ltc_control.agents.sb3_diagnostics import RecurrentDiagnostics

        diag_name = spec.file_name(config.env_id, config.timesteps).removesuffix(".json") + ".diagnostics.csv"
        callbacks.append(RecurrentDiagnostics((out_dir or Path(config.runs_dir)) / diag_name))
    from ltc_control.agents.sb3 import TrainingDivergedError

    t0, c0 = time.perf_counter(), time.process_time()
    diverged: dict[str, Any] | None = None
    try:
        model.learn(config.timesteps, callback=CallbackList(callbacks))
    except TrainingDivergedError as exc:
        # A run whose policy went NaN is a result too (the method failed on this seed): it gets a record
        # with no evaluation and no saved model, and the benchmark goes on with its other runs.
        diverged = {"at_timesteps": int(model.num_timesteps), "error": str(exc)}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    bar.close()
    norm = model.get_vec_normalize_env()
    if norm is not None:
        norm.training = False  # freeze the statistics for evaluation
    returns = [] if diverged else evaluate_model(model, config.env_id, config.eval_episodes)
    saved: dict[str, str] = {}
    # the model and statistics first: the record (written last) marks a finished run
    if out_dir is not None and not diverged:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / spec.file_name(config.env_id, config.timesteps).removesuffix(".json")
        if norm is not None:
            norm.save(str(stem) + ".vecnormalize.pkl")
            saved["vecnormalize"] = str(stem) + ".vecnormalize.pkl"
        if config.save_models:
            model.save(str(stem) + ".zip")
            saved["model"] = str(stem) + ".zip"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    record: dict[str, Any] = {
        "env_id": config.env_id,
        "model": spec.model,
        "seed": spec.seed,
        "timesteps": int(model.num_timesteps),
        "curve": curve,
        "eval_returns": returns,
        "eval_mean": None if diverged else float(np.mean(returns)),
        "diverged": diverged,
        "wall_time_s": wall,
        "cpu_time_s": cpu,
        "steps_per_second": model.num_timesteps / wall,
        "steps_per_cpu_second": model.num_timesteps / max(cpu, 1e-9),
        "load_average_at_end": load,
        "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu_count": os.cpu_count(),
        # the CPU and torch's vector kernels for it: fixed-seed runs reproduce on one machine, not across CPUs
        # whose vector units differ (docs/rl.md, "logits centred at rest?", the CartPoleNoVel seed-1 note)
        "cpu": {"model": cpu_model(), "torch_capability": torch.backends.cpu.get_cpu_capability()},
        "versions": _versions(),
        **_param_counts(model),
        "saved": saved,
        "config": to_dict(config),
        "liquid_defaults_sha256": liquid_defaults_digest(),
    }
    if out_dir is not None:
        atomic_write_json(out_dir / spec.file_name(config.env_id, config.timesteps), record)
    return record


#: The digest of :func:`liquid_defaults` when records started to carry it (2026-12-06): records without the
#: field were made with these defaults.
_DEFAULTS_BEFORE_THE_FIELD = "82d32867850aaf004e96b863f7b212d361a2f13e95fa87a88acde75d8a3d2a11"


#: ``LtcPolicy`` options added after the defaults digest, with the value that reproduces the earlier policies
#: (``action_readout="motor"``: the element-wise motor head every earlier run had; ``tau_scale=None``: the
#: cell's own time-constant init; ``action_bias_init=0.0``: the head's zero bias at init). ``mean_limit`` was
#: one (None, the unbounded pre-tanh mean) from 2026-12-07 until its default became ``"auto"`` the same day (a
#: defaults change: the digest moved, ``experiments/bench/rl_relabel.py`` change 5).
_NEUTRAL_NEW_OPTIONS: dict[str, Any] = {
    "action_readout": "motor",
    "motors_per_output": 1,
    "tau_scale": None,
    "action_bias_init": 0.0,
    "mean_pull": 0.0,
}


def liquid_defaults() -> dict[str, Any]:
    """``LtcPolicy``'s keyword defaults and the default controller (as JSON): what a liquid run with no (or
    some) policy kwargs was made with."""
    import inspect

    from gymnasium import spaces

    from ltc_control.agents.sb3 import (
        LtcPolicy,
        default_action_squash,
        default_controller,
        default_controller_lr_scale,
        default_mean_limit,
    )
    from ltc_control.config import to_dict

    params = inspect.signature(LtcPolicy.__init__).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    # options added after the digest existed, at a default that builds exactly the earlier policy: left out
    # while at that value, so runs made before the option stay runs of today's defaults
    for key, neutral in _NEUTRAL_NEW_OPTIONS.items():
        if out.get(key) == neutral:
            out.pop(key)
    # controller=None resolves per task (motor neurons); controller_lr_scale=None per action space and given
    # controller
    out["controller"] = {str(m): to_dict(default_controller(m)) for m in (1, 6, 8, 9)}
    # with discrete actions (dt 0.1 since 2026-12-06; the key is new then, so the digest changed with it)
    out["controller, discrete actions"] = {str(m): to_dict(default_controller(m, True)) for m in (2, 3, 4, 9)}
    box, discrete = spaces.Box(-1.0, 1.0, (1,)), spaces.Discrete(4)
    out["controller_lr_scale"] = {
        "default controller, Box actions": default_controller_lr_scale(box, False),
        "default controller, discrete actions": default_controller_lr_scale(discrete, False),
        "given controller, Box actions": default_controller_lr_scale(box, True),
        "given controller, discrete actions": default_controller_lr_scale(discrete, True),
    }
    # what action_squash="auto" resolves to (tanh_sample with the default controller since 2026-12-07; the key
    # is new then, so the digest changed with it)
    out["action_squash, Box(-1, 1)"] = {
        "default controller": default_action_squash(box, False),
        "given controller": default_action_squash(box, True),
    }
    # what mean_limit="auto" resolves to per squash (the bound of tanh_sample since 2026-12-07)
    out["mean_limit, per action_squash"] = {m: default_mean_limit(m) for m in ("tanh", "tanh_sample", "none")}
    return dict(json.loads(json.dumps(out, default=str, sort_keys=True)))


def liquid_defaults_digest() -> str:
    """sha256 of :func:`liquid_defaults` (records carry it; records of other defaults are refused)."""
    import hashlib

    return hashlib.sha256(json.dumps(liquid_defaults(), sort_keys=True).encode()).hexdigest()


def _versions() -> dict[str, str]:
    """Versions of the packages a run depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ltc-control", "torch", "stable-baselines3", "sb3-contrib", "gymnasium", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


_WATCHING_PARENT = False


def exit_with_parent(parent: int, period: float = 2.0) -> None:
    """Ends this process (exit code 1) once ``parent`` is no longer its parent, checked every ``period``
    seconds by a daemon thread (once per process).

    A ``ProcessPoolExecutor`` worker whose benchmark was stopped (Ctrl-C, ``kill``, even ``kill -9``) would
    otherwise finish its training run orphaned and write its record after the user thought it stopped. Its
    unfinished run writes nothing (records are written atomically at the end), so a resumed benchmark trains
    it again.
    """
    global _WATCHING_PARENT
    if _WATCHING_PARENT:
        return
    _WATCHING_PARENT = True

    def watch() -> None:
        while True:
            time.sleep(period)
            if os.getppid() != parent:
                print(f"[rl_bench] worker {os.getpid()}: the benchmark process stopped; exiting", flush=True)
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker(args: tuple[BenchmarkConfig, RunSpec, str, int, bool]) -> str:
    config, spec, out, parent, resume = args
    if resume and (Path(out) / spec.file_name(config.env_id, config.timesteps)).is_file():
        # another process (with disjoint --set seeds/models) finished it while this one waited in the queue
        return f"{spec.model} seed {spec.seed} (already finished by another process)"
    exit_with_parent(parent)
    run_one(config, spec, Path(out))
    return f"{spec.model} seed {spec.seed}"


def run_benchmark(config: BenchmarkConfig, resume: bool = True) -> Path:
    """Trains every (model, seed) run that has no record yet, then writes the summary.

    Args:
        config: the benchmark config.
        resume: skip runs whose record exists (False retrains and overwrites them).

    Returns:
        Path of the Markdown table.
    """
    run_missing(config, resume)
    return summarize(config)


def run_missing(config: BenchmarkConfig, resume: bool = True) -> None:
    """Trains every (model, seed) run of ``config`` that has no record yet (all of them if not ``resume``),
    ``config.workers`` at a time; writes no summary."""
    # the digest imports the policy code; do it now, with this module's constants, not first at summary time
    # (after a long run, from files edited meanwhile, which would refuse this run's own records)
    liquid_defaults_digest()
    out = Path(config.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        RunSpec(m, s)
        for s in config.seeds
        for m in config.models
        if not (resume and (out / RunSpec(m, s).file_name(config.env_id, config.timesteps)).is_file())
    ]
    if config.workers == 1:
        for spec in todo:
            if resume and (out / spec.file_name(config.env_id, config.timesteps)).is_file():
                continue  # another process (with disjoint --set seeds/models) finished it meanwhile
            run_one(config, spec, out)
    elif todo:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(config.workers, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, (config, spec, str(out), os.getpid(), resume)) for spec in todo]
            for fut in as_completed(futures):
                print(f"finished {fut.result()}", flush=True)


# ----------------------------------------------------------------------------------------------- summary
def _load_records(config: BenchmarkConfig, include_diverged: bool = False) -> list[dict[str, Any]]:
    """The run records of ``config`` (its models and seeds at its budget); records of runs that diverged
    (``record["diverged"]``: no evaluation, no saved model) only with ``include_diverged``.

    Raises:
        ValueError: a corrupt record, or a liquid record made with other defaults or kwargs (named).
    """
    runs = Path(config.runs_dir)
    records = []
    for model in config.models:
        for seed in config.seeds:
            path = runs / RunSpec(model, seed).file_name(config.env_id, config.timesteps)
            if not path.is_file():
                continue
            # Records of another budget (same file name) must not be mixed into this table.
            try:
                rec = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"corrupt run record {path}: {exc}; delete it to retrain that run") from exc
            if int(rec.get("config", {}).get("timesteps", -1)) != config.timesteps:
                continue
            if rec["model"] != "lstm":
                digest = rec.get("liquid_defaults_sha256", _DEFAULTS_BEFORE_THE_FIELD)
                if digest != liquid_defaults_digest():
                    raise ValueError(
                        f"run record {path} was made with other LtcPolicy defaults than today's "
                        "(liquid_defaults_sha256 differs): move the records aside or give this config its "
                        "own runs_dir"
                    )
            made_with = rec.get("config", {}).get("liquid_policy_kwargs", {})
            if made_with != _jsonable(config.liquid_policy_kwargs):
                raise ValueError(
                    f"run record {path} was made with liquid_policy_kwargs {made_with}, this config has "
                    f"{dict(config.liquid_policy_kwargs)}: give this config its own runs_dir"
                )
            if rec.get("diverged") and not include_diverged:
                continue
            records.append(rec)
    return records


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from a JSON record (tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


def _binned_curve(curve: Sequence[Sequence[float]], timesteps: int, points: int) -> np.ndarray:
    """Mean training-episode return in ``points`` equal bins of the budget (NaN where no episode ended)."""
    edges = np.linspace(0, timesteps, points + 1)
    out = np.full(points, np.nan)
    if not curve:
        return out
    arr = np.asarray(curve, dtype=np.float64)
    idx = np.clip(np.searchsorted(edges, arr[:, 0], side="left") - 1, 0, points - 1)
    for i in range(points):
        sel = arr[idx == i, 1]
        if sel.size:
            out[i] = sel.mean()
    return out


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}f}"


def summarize(config: BenchmarkConfig) -> Path:
    """Writes ``<name>.md``, ``<name>.csv`` and ``<name>.png`` from the run records in ``runs_dir``.

    Args:
        config: the benchmark config (the same one the runs used).

    Returns:
        Path of the Markdown table.

    Raises:
        ValueError: no run record exists yet, or a corrupt record (named).
    """
    records = _load_records(config)
    if not records:
        raise ValueError(
            f"no run records in {config.runs_dir} for {config.env_id} at {config.timesteps} steps; run first"
        )
    out = Path(config.out_dir)
    rows = []
    for model in config.models:
        recs = [r for r in records if r["model"] == model]
        if not recs:
            continue
        evals = np.array([r["eval_mean"] for r in recs])
        last = []
        for r in recs:
            tail = [ret for t, ret in r["curve"] if t > 0.9 * r["timesteps"]]
            last.append(float(np.mean(tail)) if tail else float("nan"))
        rows.append(
            {
                "model": model,
                "seeds": len(recs),
                "timesteps": int(np.mean([r["timesteps"] for r in recs])),
                "eval_return_mean": float(evals.mean()),
                "eval_return_std": float(evals.std(ddof=1)) if len(evals) > 1 else float("nan"),
                "eval_return_min": float(evals.min()),
                "eval_return_max": float(evals.max()),
                "train_return_last10pct_mean": float(np.nanmean(last))
                if np.isfinite(last).any()
                else math.nan,
                "per_seed_eval": " ".join(f"{r['seed']}:{r['eval_mean']:.1f}" for r in recs),
                "policy_parameters": recs[0]["policy_parameters"],
                "controller_parameters": recs[0]["actor_controller_parameters"],
                "controller_effective_parameters": recs[0]["actor_controller_effective_parameters"],
                "wall_time_s_mean": float(np.mean([r["wall_time_s"] for r in recs])),
                "steps_per_second_mean": float(np.mean([r["steps_per_second"] for r in recs])),
                "steps_per_cpu_second_mean": float(np.mean([r["steps_per_cpu_second"] for r in recs])),
            }
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / f"{config.name}.csv", buf.getvalue())
    ppo = config.ppo
    sde = f"gSDE (sample freq {ppo.sde_sample_freq})" if ppo.use_sde else "no gSDE"
    normed = [w for w, on in (("obs", ppo.normalize_observations), ("reward", ppo.normalize_rewards)) if on]
    norm = f"VecNormalize({', '.join(normed)})" if normed else "no VecNormalize"
    title = " vs ".join(_MODEL_NAMES[m] for m in config.models)
    models_text: list[str] = []
    if config.policies == "defaults":
        models_text.append(
            "Policies: defaults, no policy kwargs (LTC: LtcPolicy(); CfC: LtcPolicy(controller={'kind': "
            "'cfc'}); LSTM: MlpLstmPolicy()). "
        )
        if config.liquid_policy_kwargs:
            models_text.append(
                f"**Ablation**: the liquid policies get {dict(config.liquid_policy_kwargs)} on top of "
                "their defaults. "
            )
    elif "ltc" in config.models:
        models_text.append(f"LTC: {_controller_text(config.ltc)}. ")
    if "cfc" in config.models and config.policies == "config":
        models_text.append(f"CfC: {_controller_text(config.cfc)}. ")
    if config.policies == "config" and ("ltc" in config.models or "cfc" in config.models):
        critic: str = config.critic
        if critic == "separate":
            critic += f" ({config.critic_outputs} motor neurons)"
        models_text.append(
            f"Liquid policy kwargs {dict(config.liquid_policy_kwargs)}; liquid critics: {critic}, value MLP "
            f"{list(config.value_arch)}. "
        )
    if "lstm" in config.models and config.policies == "config":
        models_text.append(
            f"LSTM: {config.lstm_hidden_size} units, net_arch {list(config.lstm_net_arch)}, critic LSTM "
            f"{config.lstm_critic}. "
        )
    lines = [
        f"# {config.env_id}: {title}",
        "",
        f"Budget {config.timesteps:,} env steps per run; seeds {list(config.seeds)} (rows list the seeds "
        f"done). PPO for all models: n_envs {ppo.n_envs}, n_steps {ppo.n_steps}, batch {ppo.batch_size}, "
        f"epochs {ppo.n_epochs}, {ppo.rate_text()}, gamma {ppo.gamma}, GAE {ppo.gae_lambda}, "
        f"{sde}, {norm}, ortho init {ppo.ortho_init}, {ppo.activation} MLPs, "
        f"log_std_init {ppo.log_std_init}. "
        + "".join(models_text)
        + f"Eval: deterministic, {config.eval_episodes} episodes on unseen seeds, mean per run; the table "
        "gives mean +- std (and min..max) over seeds.",
        "",
        "| model | seeds | eval return (mean +- std) | min .. max | train return, last 10% | policy params | "
        "controller params (effective) | wall time / run (s) | steps/s | steps/CPU-s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['seeds']} | "
            f"{_fmt(r['eval_return_mean'])} +- {_fmt(r['eval_return_std'])} | "
            f"{_fmt(r['eval_return_min'])} .. {_fmt(r['eval_return_max'])} | "
            f"{_fmt(r['train_return_last10pct_mean'])} | {r['policy_parameters']:,} | "
            f"{r['controller_parameters']:,} ({r['controller_effective_parameters']:,}) | "
            f"{_fmt(r['wall_time_s_mean'], 0)} | {_fmt(r['steps_per_second_mean'], 1)} | "
            f"{_fmt(r['steps_per_cpu_second_mean'], 1)} |"
        )
    lines += [
        "",
        "Per-seed eval returns: " + "; ".join(f"{r['model']} {r['per_seed_eval']}" for r in rows),
    ]
    gaps = _differences_to_lstm(rows)
    if gaps:
        lines += [
            "",
            "Difference of the mean eval return to LSTM-PPO (+- its standard error, Welch; positive = better "
            "than LSTM-PPO): " + "; ".join(gaps),
        ]
    lines += ["", _provenance(records), ""]
    md = out / f"{config.name}.md"
    atomic_write_text(md, "\n".join(lines))
    _plot(config, records, out / f"{config.name}.png")
    return md


_MODEL_NAMES = {"ltc": "LTC-PPO", "cfc": "CfC-PPO", "lstm": "LSTM-PPO"}


def _differences_to_lstm(rows: list[dict[str, Any]]) -> list[str]:
    """``"<model> - lstm: d +- se (n vs m seeds)"`` for each liquid row, when both have two seeds or more."""
    ref = next((r for r in rows if r["model"] == "lstm"), None)
    if ref is None or ref["seeds"] < 2:
        return []
    out = []
    for r in rows:
        if r["model"] == "lstm" or r["seeds"] < 2:
            continue
        d = r["eval_return_mean"] - ref["eval_return_mean"]
        se = math.sqrt(r["eval_return_std"] ** 2 / r["seeds"] + ref["eval_return_std"] ** 2 / ref["seeds"])
        out.append(f"{r['model']} - lstm: {d:+.1f} +- {se:.1f} ({r['seeds']} vs {ref['seeds']} seeds)")
    return out


def _controller_text(ctrl: ControllerConfig) -> str:
    """A short description of a liquid controller config (wiring, unfolds)."""
    w = ctrl.wiring
    if w.preset in ("ncp", "lane_keeping"):
        wiring = f"{w.preset} wiring ({w.inter} inter, {w.command} command)"
    elif w.preset == "saved":
        wiring = "saved wiring"
    else:
        wiring = f"{w.preset} wiring ({w.units} units)"
    return wiring + (f", {ctrl.ode_unfolds} ODE unfolds" if ctrl.kind == "ltc" else "")


#: how ``rl_relabel`` labels a record it could check only by its parameter counts (no saved weights)
COUNTS_ONLY = "no saved weights"


def _provenance(records: list[dict[str, Any]]) -> str:
    """A line with when, where and with which versions the runs were recorded."""
    loads = [float(r["load_average_at_end"]) for r in records if "load_average_at_end" in r]
    done = sorted(r["finished_utc"] for r in records if "finished_utc" in r)
    cpus = sorted({int(r["cpu_count"]) for r in records if r.get("cpu_count")})
    models = sorted({f"{c['model']}, torch {c['torch_capability']}" for r in records if (c := r.get("cpu"))})
    versions = next((r["versions"] for r in reversed(records) if "versions" in r), None) or _versions()
    parts = [
        f"Runs finished {done[0]} .. {done[-1]} UTC" if done else "Run finish times not recorded",
        f"on a {'/'.join(map(str, cpus)) or os.cpu_count()}-CPU machine"
        + (f" ({' / '.join(models)})" if models else "")
        + " (1 torch thread per run)",
        f"1-minute load average at the end of the runs {min(loads):.1f} .. {max(loads):.1f}" if loads else "",
        "versions " + ", ".join(f"{k} {v}" for k, v in versions.items()),
    ]
    text = "; ".join(p for p in parts if p) + "."
    relabelled = [r for r in records if "relabelled" in r]
    if relabelled:
        when = sorted(r["relabelled"].get("utc", "") for r in relabelled)
        # rl_relabel checks the saved weights where it had them, else the parameter counts alone
        by_count = sum(str(r["relabelled"].get("check", "")).startswith(COUNTS_ONLY) for r in relabelled)
        check = (
            "the policy those build loads each run's saved weights strictly"
            if not by_count
            else f"{by_count} of them, whose weights were not kept, by their parameter counts alone; the "
            "rest by loading their saved weights strictly"
            if by_count < len(relabelled)
            else "by their parameter counts alone: their weights were not kept"
        )
        text += (
            f" {len(relabelled)} of these {len(records)} records were made under earlier defaults and "
            f"re-labelled ({when[-1]} UTC, `experiments/bench/rl_relabel.py`) as runs of today's defaults "
            f"plus the kwargs that give the same policy (checked: {check}; re-runs that reproduced records "
            "exactly: docs/rl.md)."
        )
    return text


def _plot(config: BenchmarkConfig, records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ltc_control.runs import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = (np.arange(config.curve_points) + 0.5) * config.timesteps / config.curve_points
    for model in config.models:
        recs = [r for r in records if r["model"] == model]
        if not recs:
            continue
        curves = np.stack([_binned_curve(r["curve"], config.timesteps, config.curve_points) for r in recs])
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(curves, axis=0)
                lo, hi = np.nanmin(curves, axis=0), np.nanmax(curves, axis=0)
        ok = np.isfinite(mean)  # bins in which no training episode ended are skipped, not drawn as gaps
        (line,) = ax.plot(x[ok], mean[ok], marker=".", label=f"{model} ({len(recs)} seeds)")
        ax.fill_between(x[ok], lo[ok], hi[ok], color=line.get_color(), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("training episode return")
    ax.set_title(f"{config.env_id}: mean over seeds, band = min..max")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: Sequence[str] | None = None, prog: str = "ltc-control bench rl") -> int:
    """Entry point (``ltc-control bench rl`` / ``experiments/rl_benchmark.py``): parse the config, run the
    missing runs (or only re-write the summary with ``--summary-only``) and print the summary."""
    from ltc_control.config import make_parser, parse_args_and_config

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--suite" or a.startswith("--suite=") for a in args):  # a suite of tasks: rl_suite.py
        from rl_suite import main as suite_main

        return suite_main(args, prog=prog)
    parser = make_parser(BenchmarkConfig, description=(__doc__ or "").split("\n\n")[0], prog=prog)
    parser.add_argument("--summary-only", action="store_true", help="only re-write the table and the plot")
    parser.add_argument("--no-resume", action="store_true", help="retrain runs whose record exists")
    config, ns = parse_args_and_config(BenchmarkConfig, args, parser)
    path = summarize(config) if ns.summary_only else run_benchmark(config, resume=not ns.no_resume)
    print(path.read_text())
    return 0
