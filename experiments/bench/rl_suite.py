"""A suite of partially observed tasks for issue #16: the liquid policies' **defaults** against RecurrentPPO's
default LSTM policy, task by task, with the same PPO hyper-parameters, budget and seeds.

Every model runs with no policy kwargs (``BenchmarkConfig.policies = "defaults"``: ``LtcPolicy()``, its
CfC variant ``LtcPolicy(controller={"kind": "cfc"})``, ``"MlpLstmPolicy"``). Each task has its PPO settings
(the RL Zoo's where it has an entry), its budget (the Zoo's, times the task's ``fraction`` and the suite's
``budget_fraction``) and a flag saying whether it is **held out** from every tuning run. The runs are
:mod:`rl_bench` runs (one JSON record per task, model and seed under ``runs_dir``; finished runs are skipped).
The summary, ``<out_dir>/<name>.md|csv|png``, gives per task and model: the final deterministic return (mean
and 95% t-interval over seeds), the return normalised between a random policy (0) and LSTM-PPO's mean (1) with
its 95% interval, whether it reaches the issue's 0.9, the training return of the last 10% of the budget and
the training steps per CPU-second; the plot has one learning-curve panel per task.

Entry points: ``experiments/rl_benchmark.py --suite novel`` (``experiments/configs/rl_novel_suite.yaml``) or
``ltc-control bench rl --suite novel``; ``--budget-fraction F`` scales every budget (a run with ``F != 1``
writes ``<name>_frac<F>.*`` so it never overwrites the full suite's table).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rl_bench import _MODEL_NAMES, _binned_curve, _fmt, _load_records, _provenance, run_missing
from rl_bench_config import BenchmarkConfig, PPOConfig

from ltc_control.agents.sb3_envs import PIXEL_TASKS
from ltc_control.runs import atomic_write_json, atomic_write_text

__all__ = [
    "SuiteConfig",
    "SuiteTask",
    "normalisation_scale",
    "random_returns",
    "run_suite",
    "summarize_suite",
    "t_interval",
]

SUITES_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite.

    Args:
        env_id: a partially observed env id (``make_novel_env``), e.g. ``"PendulumNoVel-v1"``.
        zoo_timesteps: the RL Zoo's budget for the task (``n_timesteps``).
        fraction: the part of ``zoo_timesteps`` this suite trains (documented in the summary).
        ppo: the task's PPO hyper-parameters, the same for every model.
        held_out: never used in a tuning run (the issue's "tasks you have not tuned on").
        source: where the PPO settings come from (printed in the summary).
    """

    env_id: str
    zoo_timesteps: int
    fraction: float = 1.0
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    held_out: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.zoo_timesteps < 1 or not 0 < self.fraction <= 1:
            raise ValueError(f"{self.env_id}: zoo_timesteps must be >= 1 and fraction in (0, 1]")


@dataclass(frozen=True)
class SuiteConfig:
    """A suite: tasks, models, seeds and where the records and the summary go.

    Args:
        name: prefix of the summary files.
        tasks: the tasks.
        seeds: training seeds (every model, every task).
        models: which of ``ltc``, ``cfc``, ``lstm`` to train (``lstm`` is the normalisation's 1).
        budget_fraction: multiplies every task's budget (``--budget-fraction``; < 1 for a smoke run).
        eval_episodes: deterministic evaluation episodes per run (seeds 10_000 + i).
        random_episodes: episodes of the uniformly random policy on the same seeds (the normalisation's 0).
        curve_points: points of each learning curve.
        out_dir: where the summary goes.
        runs_dir: where the run records go (one folder for the whole suite).
        save_models: save each trained model beside its record.
        workers: parallel training processes.
        torch_threads: torch threads per process.
        only_tasks: train and summarise only these env ids (empty: every task).
        liquid_policy_kwargs: an **ablation** of a candidate default: these kwargs on top of the liquid
            policies' defaults (the LSTM runs as always). Refused on held-out tasks (they stay out of every
            tuning run); records go to ``<runs_dir>/ablation/<slug>`` and the summary, beside them, to
            ``<name>_ablation_<slug>.*``, so an ablation never mixes with the suite's own runs (the table of
            all ablations: ``experiments/bench/rl_ablation_table.py``).
    """

    name: str = "rl_novel_suite"
    tasks: tuple[SuiteTask, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    models: tuple[str, ...] = ("ltc", "cfc", "lstm")
    budget_fraction: float = 1.0
    eval_episodes: int = 10
    random_episodes: int = 10
    curve_points: int = 20
    out_dir: str = "experiments/results"
    runs_dir: str = "runs/rl_benchmark/rl_novel_suite"
    save_models: bool = True
    workers: int = 1
    torch_threads: int = 1
    only_tasks: tuple[str, ...] = ()
    liquid_policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("a suite needs at least one task")
        ids = [t.env_id for t in self.tasks]
        unknown = [e for e in self.only_tasks if e not in ids]
        if unknown:
            raise ValueError(f"only_tasks names tasks not in the suite: {unknown}; the suite's: {ids}")
        if self.liquid_policy_kwargs:
            held = [t.env_id for t in self.selected_tasks if t.held_out]
            if held:
                raise ValueError(
                    f"an ablation (liquid_policy_kwargs {dict(self.liquid_policy_kwargs)}) must not run on "
                    f"held-out tasks {held}: they stay out of every tuning run; select tuning tasks with "
                    "only_tasks"
                )
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if self.random_episodes < 1:
            raise ValueError("random_episodes must be >= 1")

    @property
    def selected_tasks(self) -> tuple[SuiteTask, ...]:
        """The tasks to train and summarise (``only_tasks``, in the suite's order)."""
        return tuple(t for t in self.tasks if not self.only_tasks or t.env_id in self.only_tasks)

    @property
    def ablation_slug(self) -> str:
        """``key=value`` pairs of ``liquid_policy_kwargs`` joined by ``_`` ("" for the suite itself)."""
        pairs = sorted(self.liquid_policy_kwargs.items())
        slug = "_".join(f"{k}={json.dumps(v, sort_keys=True, separators=(',', ':'))}" for k, v in pairs)
        return "".join(c if c.isalnum() or c in "=._-," else "-" for c in slug)

    @property
    def file_stem(self) -> str:
        """``name`` (``_ablation_<slug>`` for an ablation), ``_frac<F>`` added for a scaled budget."""
        stem = f"{self.name}_ablation_{self.ablation_slug}" if self.liquid_policy_kwargs else self.name
        return stem if self.budget_fraction == 1 else f"{stem}_frac{self.budget_fraction:g}"

    @property
    def records_dir(self) -> str:
        """``runs_dir``, or ``<runs_dir>/ablation/<slug>`` for an ablation."""
        if not self.liquid_policy_kwargs:
            return self.runs_dir
        return str(Path(self.runs_dir) / "ablation" / self.ablation_slug)

    def timesteps(self, task: SuiteTask) -> int:
        """The task's training budget in env steps."""
        return max(1, round(task.zoo_timesteps * task.fraction * self.budget_fraction))

    def benchmark(self, task: SuiteTask, base: bool = False) -> BenchmarkConfig:
        """The :mod:`rl_bench` config of one task (defaults-only policies).

        An ablation's config trains only the liquid models (in ``records_dir``); its LSTM-PPO runs are the
        suite's own, the config with ``base=True`` (no ablation kwargs, only ``lstm``, the suite's
        ``runs_dir``).
        """
        if base or not self.liquid_policy_kwargs:
            models = ("lstm",) if base else self.models
            kwargs: dict[str, Any] = {}
            runs_dir = self.runs_dir
        else:
            models = tuple(m for m in self.models if m != "lstm") or ("ltc",)
            kwargs, runs_dir = dict(self.liquid_policy_kwargs), self.records_dir
        return BenchmarkConfig(
            env_id=task.env_id,
            timesteps=self.timesteps(task),
            seeds=self.seeds,
            models=models,
            ppo=task.ppo,
            policies="defaults",
            liquid_policy_kwargs=kwargs,
            save_models=self.save_models,
            eval_episodes=self.eval_episodes,
            curve_points=self.curve_points,
            out_dir=self.out_dir,
            runs_dir=runs_dir,
            name=f"{self.file_stem}__{task.env_id}",
            workers=self.workers,
            torch_threads=self.torch_threads,
        )


# ------------------------------------------------------------------------------------------------ running
def random_returns(env_id: str, episodes: int, seed0: int = 10_000) -> list[float]:
    """Returns of a uniformly random policy on ``episodes`` episodes seeded ``seed0 + i`` (the seeds of the
    deterministic evaluation)."""
    from ltc_control.agents.sb3_envs import make_novel_env

    env = make_novel_env(env_id)
    out = []
    for i in range(episodes):
        env.reset(seed=seed0 + i)
        env.action_space.seed(seed0 + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = bool(terminated or truncated)
        out.append(total)
    env.close()
    return out


def _random_baseline(config: SuiteConfig, env_id: str) -> list[float]:
    """The random policy's returns, cached in ``runs_dir``."""
    path = Path(config.runs_dir) / f"{env_id}__random__{config.random_episodes}.json"
    if path.is_file():
        return [float(r) for r in json.loads(path.read_text())["returns"]]
    returns = random_returns(env_id, config.random_episodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"env_id": env_id, "episodes": config.random_episodes, "returns": returns})
    return returns


def add_suite_arguments(parser: argparse.ArgumentParser, default_suite: Path, tasks_required: bool) -> None:
    """The options of the scripts that read the suite's saved runs: ``--suite``, ``--tasks`` and ``--kwargs``
    (an ablation's ``liquid_policy_kwargs``: read its runs instead of the suite's own)."""
    parser.add_argument("--suite", type=Path, default=default_suite, help="the suite's YAML config")
    parser.add_argument(
        "--tasks",
        nargs="+",
        required=tasks_required,
        default=None,
        help="env ids of the suite" + ("" if tasks_required else " (default: every task)"),
    )
    parser.add_argument(
        "--kwargs",
        default=None,
        help="an ablation's liquid_policy_kwargs (YAML mapping, e.g. '{action_squash: none}'): read its runs "
        "(liquid models only; tuning tasks only)",
    )


def suite_from_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[SuiteConfig, list[SuiteTask]]:
    """The suite config and the selected tasks of :func:`add_suite_arguments`' options; every bad value is a
    ``parser.error`` naming it (a missing file, tasks not in the suite, kwargs that are not a mapping, an
    ablation on held-out tasks)."""
    import yaml

    from ltc_control.config import load_yaml

    if not args.suite.is_file():
        parser.error(f"--suite {args.suite} does not exist")
    config = load_yaml(SuiteConfig, args.suite)
    ids = [t.env_id for t in config.tasks]
    unknown = sorted(set(args.tasks or []) - set(ids))
    if unknown:
        parser.error(f"--tasks names tasks not in the suite: {unknown}; the suite's: {ids}")
    selected = [e for e in ids if args.tasks is None or e in args.tasks]
    if args.kwargs is not None:
        kwargs = yaml.safe_load(args.kwargs)
        if not isinstance(kwargs, dict) or not kwargs:
            parser.error(f"--kwargs must be a non-empty YAML mapping, got {args.kwargs!r}")
        models = tuple(m for m in config.models if m != "lstm")
        try:
            config = dataclasses.replace(
                config, liquid_policy_kwargs=kwargs, only_tasks=tuple(selected), models=models
            )
        except ValueError as err:
            parser.error(str(err))
    return config, [t for t in config.tasks if t.env_id in selected]


def run_suite(config: SuiteConfig, resume: bool = True) -> Path:
    """Trains every missing run of every task (task by task), then writes the summary.

    Returns:
        Path of the Markdown summary.
    """
    for task in config.selected_tasks:
        _random_baseline(config, task.env_id)
        if config.liquid_policy_kwargs and "lstm" in config.models:
            run_missing(config.benchmark(task, base=True), resume)  # the suite's own LSTM-PPO runs
        run_missing(config.benchmark(task), resume)
    return summarize_suite(config)


# ------------------------------------------------------------------------------------------------ summary
#: Student-t 97.5% quantiles by degrees of freedom (two-sided 95% intervals).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def normalisation_scale(lstm_returns: Sequence[float], random_return: float) -> float:
    """LSTM-PPO's mean return minus the random policy's (the normalisation's unit), or NaN when LSTM-PPO does
    not beat random by more than its own 95% interval (then "90% of LSTM-PPO" has no meaning)."""
    if not lstm_returns:
        return math.nan
    mean, half = t_interval(lstm_returns)
    scale = mean - random_return
    if not scale > 0 or (math.isfinite(half) and scale <= half):
        return math.nan
    return scale


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval of the mean (NaN width for one value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    df = x.size - 1
    t = _T975.get(df, 2.0 if df <= 30 else 1.96)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def _task_rows(config: SuiteConfig, task: SuiteTask) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The summary rows of one task (one per model with records) and its run records."""
    bench = config.benchmark(task)
    records = _load_records(bench, include_diverged=True)
    if config.liquid_policy_kwargs and "lstm" in config.models:
        records += _load_records(config.benchmark(task, base=True), include_diverged=True)
    if not records:
        return [], []
    rand = float(np.mean(_random_baseline(config, task.env_id)))
    lstm = [r["eval_mean"] for r in records if r["model"] == "lstm" and not r.get("diverged")]
    scale = normalisation_scale(lstm, rand)
    usable = math.isfinite(scale)
    rows = []
    for model in config.models:
        every = [r for r in records if r["model"] == model]
        if not every:
            continue
        # a run that diverged (NaN policy) has no evaluation: it is counted and named, not averaged
        recs = [r for r in every if not r.get("diverged")]
        diverged = [r for r in every if r.get("diverged")]
        evals = [float(r["eval_mean"]) for r in recs]
        mean, half = t_interval(evals)
        norm_mean, norm_half = t_interval([(e - rand) / scale for e in evals]) if usable else (math.nan,) * 2
        last = []
        for r in recs:
            tail = [ret for t, ret in r["curve"] if t > 0.9 * r["timesteps"]]
            last.append(float(np.mean(tail)) if tail else math.nan)
        rows.append(
            {
                "env_id": task.env_id,
                "held_out": task.held_out,
                "model": model,
                "seeds": len(recs),
                "diverged": len(diverged),
                "timesteps": bench.timesteps,
                "zoo_fraction": bench.timesteps / task.zoo_timesteps,
                "trained_steps": int(np.mean([r["timesteps"] for r in recs])) if recs else 0,
                "eval_return_mean": mean,
                "eval_return_ci95": half,
                "random_return": rand,
                "normalized_mean": norm_mean,
                "normalized_ci95": norm_half,
                "reaches_0.9_of_lstm": bool(usable and norm_mean >= 0.9 and not diverged),
                "train_return_last10pct": float(np.nanmean(last)) if np.isfinite(last).any() else math.nan,
                "steps_per_cpu_second": float(np.mean([r["steps_per_cpu_second"] for r in every])),
                "steps_per_second": float(np.mean([r["steps_per_second"] for r in every])),
                "policy_parameters": int(every[0]["policy_parameters"]),
                "per_seed_eval": " ".join(
                    f"{r['seed']}:diverged@{r['diverged']['at_timesteps']}"
                    if r.get("diverged")
                    else f"{r['seed']}:{r['eval_mean']:.1f}"
                    for r in sorted(every, key=lambda r: int(r["seed"]))
                ),
            }
        )
    return rows, records


def summarize_suite(config: SuiteConfig) -> Path:
    """Writes ``<out_dir>/<file_stem>.md|csv|png`` (an ablation's: in its ``records_dir``) from the records.

    Raises:
        ValueError: no record of any task yet.
    """
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    for task in config.selected_tasks:
        task_rows, records = _task_rows(config, task)
        rows += task_rows
        curves[task.env_id] = records
    if not rows:
        raise ValueError(f"no run records in {config.runs_dir} for any task of {config.name}; run first")
    # an ablation's own summary stays beside its records (the committed table is rl_ablation_table.py's)
    out = Path(config.records_dir) if config.liquid_policy_kwargs else Path(config.out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / f"{config.file_stem}.csv", buf.getvalue())
    atomic_write_text(out / f"{config.file_stem}.md", _markdown(config, rows, curves))
    _plot_suite(config, curves, out / f"{config.file_stem}.png")
    return out / f"{config.file_stem}.md"


def _missing_runs(config: SuiteConfig, records: dict[str, list[dict[str, Any]]]) -> list[str]:
    """``"<task> <model> seed <s>"`` for every selected (task, model, seed) without a record (``records``:
    the run records per task, as the summary loaded them)."""
    done = {(env_id, r["model"], int(r["seed"])) for env_id, recs in records.items() for r in recs}
    return [
        f"{task.env_id} {model} seed {seed}"
        for task in config.selected_tasks
        for model in config.models
        for seed in config.seeds
        if (task.env_id, model, int(seed)) not in done
    ]


def _markdown(
    config: SuiteConfig, rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]]
) -> str:
    lines = [f"# {config.name}: default liquid policies vs RecurrentPPO's default LSTM policy", ""]
    if config.budget_fraction < 1:
        lines += [
            f"**Budget fraction {config.budget_fraction:g} of the suite's budgets: a smoke run of the "
            "pipeline, not a result.**",
            "",
        ]
    if config.only_tasks:
        lines += [
            f"**Part of the suite: only {', '.join(config.only_tasks)}, seeds {list(config.seeds)}; not the "
            "suite's result.**",
            "",
        ]
    if config.liquid_policy_kwargs:
        lines += [
            f"**Ablation**: the liquid policies get `{dict(config.liquid_policy_kwargs)}` on top of their "
            "defaults (LSTM-PPO unchanged); tuning tasks only.",
            "",
        ]
    missing = _missing_runs(config, curves)
    if missing:
        total = len(config.selected_tasks) * len(config.models) * len(config.seeds)
        lines += [
            f"**Incomplete: {len(missing)} of {total} runs have no record yet ({', '.join(missing)}); the "
            "suite's command resumes and runs them.**",
            "",
        ]
    held = [t.env_id for t in config.tasks if t.held_out]
    pixel = [t.env_id for t in config.selected_tasks if t.env_id in PIXEL_TASKS]
    lines += [
        "Every model with **no policy kwargs** (apart from an ablation's): LTC-PPO `LtcPolicy()`, CfC-PPO "
        "`LtcPolicy(controller={'kind': 'cfc'})`, LSTM-PPO `MlpLstmPolicy`"
        + (
            " (on image tasks, "
            + ", ".join(pixel)
            + ": `CnnLtcPolicy()`, `CnnLtcPolicy(controller={'kind': 'cfc'})`, `CnnLstmPolicy`)"
            if pixel
            else ""
        )
        + "; per task the same PPO settings, budget and seeds for all. "
        f"Held out from every tuning run: {', '.join(held) or 'none'}. Eval: deterministic, "
        f"{config.eval_episodes} episodes on unseen seeds per run; mean +- 95% t-interval over seeds. "
        f"Normalised return: random policy ({config.random_episodes} episodes, same seeds) = 0, LSTM-PPO's "
        "mean = 1 (n/a where LSTM-PPO does not beat random by more than its own 95% interval); the issue's "
        "bar is 0.9.",
        "",
        "| task | model | seeds | budget (of Zoo's); trained | eval return | normalised | >= 0.9 | "
        "train return, last 10% | steps/CPU-s | policy params |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        task = r["env_id"] + (" (held out)" if r["held_out"] else "")
        trained = f"{r['trained_steps']:,}" if r["seeds"] else "-"  # "-": every run diverged
        lines.append(
            f"| {task} | {_MODEL_NAMES[r['model']]} | {r['seeds']}"
            f"{f' + {d} diverged' if (d := r.get('diverged', 0)) else ''} | {r['timesteps']:,} "
            f"({r['zoo_fraction']:.2g}); {trained} | "
            f"{_fmt(r['eval_return_mean'])} +- {_fmt(r['eval_return_ci95'])} | "
            f"{_fmt(r['normalized_mean'], 2)} +- {_fmt(r['normalized_ci95'], 2)} | "
            f"{'yes' if r['reaches_0.9_of_lstm'] else 'no'} | {_fmt(r['train_return_last10pct'])} | "
            f"{_fmt(r['steps_per_cpu_second'], 0)} | {r['policy_parameters']:,} |"
        )
    lines += ["", "Random policy's mean return: " + "; ".join(_random_text(rows)), ""]
    lines += [
        "Per-seed eval returns: "
        + "; ".join(f"{r['env_id']} {r['model']} {r['per_seed_eval']}" for r in rows)
    ]
    diverged = [r for recs in curves.values() for r in recs if r.get("diverged")]
    if diverged:
        lines += [
            "",
            "**Runs that diverged** (training stopped when the policy's action head gave NaN or inf; no "
            "evaluation, not in the means, and a model with one never reaches the bar): "
            + "; ".join(
                f"{r['env_id']} {r['model']} seed {r['seed']} at {r['diverged']['at_timesteps']:,} steps"
                for r in diverged
            ),
        ]
    lines += ["", "PPO settings per task (the same for every model):", ""]
    for task in config.selected_tasks:
        ppo = task.ppo
        lines.append(
            f"- {task.env_id}: {task.source or 'no source given'}; n_envs {ppo.n_envs}, "
            f"n_steps {ppo.n_steps}, batch {ppo.batch_size}, epochs {ppo.n_epochs}, {ppo.rate_text()}, "
            f"gamma {ppo.gamma}, GAE {ppo.gae_lambda}, ent {ppo.ent_coef}, vf {ppo.vf_coef}, "
            f"max grad norm {ppo.max_grad_norm}, "
            f"gSDE {ppo.use_sde} ({ppo.sde_sample_freq}), VecNormalize obs {ppo.normalize_observations} / "
            f"reward {ppo.normalize_rewards}."
        )
    records = [r for recs in curves.values() for r in recs]
    lines += ["", _provenance(records), ""]
    return "\n".join(lines)


def _random_text(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, float] = {}
    for r in rows:
        seen.setdefault(r["env_id"], r["random_return"])
    return [f"{env} {_fmt(v)}" for env, v in seen.items()]


def _plot_suite(config: SuiteConfig, curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ltc_control.runs import atomic_write_bytes

    tasks = list(config.selected_tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        recs_all = curves.get(task.env_id, [])  # sb3 trains whole rollouts: the runs may pass the budget
        steps = max([config.timesteps(task), *(int(r["timesteps"]) for r in recs_all)])
        x = (np.arange(config.curve_points) + 0.5) * steps / config.curve_points
        for model in config.models:
            recs = [r for r in curves.get(task.env_id, []) if r["model"] == model]
            if not recs:
                continue
            binned = np.stack([_binned_curve(r["curve"], steps, config.curve_points) for r in recs])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, lo, hi = np.nanmean(binned, 0), np.nanmin(binned, 0), np.nanmax(binned, 0)
            ok = np.isfinite(mean)
            (line,) = ax.plot(x[ok], mean[ok], marker=".", label=f"{model} ({len(recs)})")
            ax.fill_between(x[ok], lo[ok], hi[ok], color=line.get_color(), alpha=0.2)
        ax.set_title(task.env_id + (" (held out)" if task.held_out else ""), fontsize=9)
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training episode return")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------------- CLI
def summary_aside_for_partial_runs(config: SuiteConfig, file_config: SuiteConfig) -> SuiteConfig:
    """``config`` with its end-of-run summary moved beside its records when it trains only part of its suite
    file's runs (tasks, models or seeds narrowed) under the file's own ``name`` and ``out_dir``: such a table
    would replace the whole suite's table in ``out_dir`` with part of it. A partial run that names its own
    table (``name``) or folder (``out_dir``), and ``--summary-only``, write where they are told."""
    partial = (
        tuple(config.selected_tasks) != tuple(file_config.selected_tasks)
        or tuple(config.models) != tuple(file_config.models)
        or tuple(config.seeds) != tuple(file_config.seeds)
    )
    if not partial or config.liquid_policy_kwargs:  # an ablation's summary already stays beside its records
        return config
    if config.name != file_config.name or config.out_dir != file_config.out_dir:
        return config
    print(
        f"part of the suite (tasks, models or seeds narrowed): its summary goes to {config.records_dir}, not "
        f"{config.out_dir} (the whole suite's table); re-write that with --summary-only",
        file=sys.stderr,
    )
    return dataclasses.replace(config, out_dir=config.records_dir)


def main(argv: Sequence[str] | None = None, prog: str = "rl_benchmark.py") -> int:
    """``--suite NAME`` (``experiments/configs/rl_<NAME>_suite.yaml``) or ``--config FILE``; runs the missing
    runs (or only re-writes the summary with ``--summary-only``) and prints the summary."""
    from ltc_control.config import load_yaml, make_parser, parse_args_and_config

    parser = make_parser(SuiteConfig, description=(__doc__ or "").split("\n\n")[0], prog=prog)
    parser.add_argument("--suite", help="a suite name: experiments/configs/rl_<NAME>_suite.yaml (e.g. novel)")
    parser.add_argument(
        "--budget-fraction", type=float, dest="budget_fraction_flag", help="scale every task's budget"
    )
    parser.add_argument("--summary-only", action="store_true", help="only re-write the table and the plot")
    parser.add_argument("--no-resume", action="store_true", help="retrain runs whose record exists")
    args = list(sys.argv[1:] if argv is None else argv)
    known, _ = parser.parse_known_args(args)
    if known.suite and known.config is None:
        args = ["--config", str(SUITES_DIR / f"rl_{known.suite}_suite.yaml"), *args]
    config, ns = parse_args_and_config(SuiteConfig, args, parser)
    if ns.budget_fraction_flag is not None:
        config = dataclasses.replace(config, budget_fraction=ns.budget_fraction_flag)
    if not ns.summary_only and ns.config is not None:
        config = summary_aside_for_partial_runs(config, load_yaml(SuiteConfig, ns.config))
    path = summarize_suite(config) if ns.summary_only else run_suite(config, resume=not ns.no_resume)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
