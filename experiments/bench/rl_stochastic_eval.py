"""The suite's saved runs evaluated with sampled actions (the policy as it trained), beside the greedy table.

Issue #16's suite judges every run by its greedy (deterministic) return, sb3's ``evaluate_policy`` default. On
MountainCarContinuousNoVel that separates nothing: every model reaches the flag while it trains, no greedy
policy does. This script re-evaluates the suite's saved runs (``<stem>.zip`` and ``<stem>.vecnormalize.pkl``
beside each record) on the same 10 unseen reset seeds with actions **drawn from the policy** (torch seeded per
episode; a gSDE policy redraws its exploration noise every ``sde_sample_freq`` steps and at each episode's
start), and writes the same table as the suite's (mean +- 95% t-interval over seeds, normalised between the
random policy and LSTM-PPO's sampled mean) with the greedy numbers beside it. A secondary view, added after
the greedy results were seen; the suite's verdict stays the greedy table's.

Each run's sampled returns are cached beside its record (``<stem>.sampled_eval.json``, written atomically), so
a second call only evaluates new runs::

    .venv/bin/python experiments/bench/rl_stochastic_eval.py \\
        --write experiments/results/rl_novel_suite_sampled.md
    .venv/bin/python experiments/bench/rl_stochastic_eval.py --tasks MountainCarContinuousNoVel-v0

``--kwargs '{action_squash: none}'`` reads that ablation's runs instead of the suite's (tuning tasks only).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import provenance_lines, write_atomic

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = ROOT / "experiments" / "configs" / "rl_novel_suite.yaml"


def sampled_returns(record: dict[str, Any], episodes: int, seed0: int = 10_000) -> list[float]:
    """The sampled-action returns of one saved run (cached in ``<stem>.sampled_eval.json``).

    Raises:
        FileNotFoundError: the record names no saved model, or the model file is missing.
    """
    from rl_bench import evaluate_model
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ltc_control.agents.sb3_envs import make_novel_env
    from ltc_control.runs import atomic_write_json

    saved = record.get("saved", {})
    model_path = saved.get("model")
    name = f"{record['env_id']} {record['model']} seed {record['seed']}"
    if not model_path:
        raise FileNotFoundError(f"{name}: the record names no saved model (run with save_models: true)")
    cache = Path(model_path).with_suffix("").with_suffix(".sampled_eval.json")
    if cache.is_file():
        cached = json.loads(cache.read_text())
        same_run = cached.get("record_finished_utc") == record.get("finished_utc")  # not a retrained run's
        if same_run and cached.get("episodes") == episodes and cached.get("seed0") == seed0:
            return [float(r) for r in cached["returns"]]
    if not Path(model_path).is_file():
        raise FileNotFoundError(f"{name}: saved model {model_path!r} not found (the record's 'saved' entry)")
    model = RecurrentPPO.load(model_path, device="cpu")
    norm = None
    if saved.get("vecnormalize"):
        venv = DummyVecEnv([lambda: make_novel_env(record["env_id"])])
        norm = VecNormalize.load(saved["vecnormalize"], venv)
        norm.training, norm.norm_reward = False, False
    returns = evaluate_model(
        model, record["env_id"], episodes, seed0, vec_normalize=norm, deterministic=False
    )
    atomic_write_json(
        cache,
        {
            "episodes": episodes,
            "seed0": seed0,
            "returns": returns,
            "greedy": False,
            "record_finished_utc": record.get("finished_utc"),
        },
    )
    return returns


def main(argv: list[str] | None = None) -> int:
    import torch
    from rl_bench import _load_records
    from rl_suite import (
        _random_baseline,
        add_suite_arguments,
        normalisation_scale,
        suite_from_arguments,
        t_interval,
    )
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_suite_arguments(p, DEFAULT_SUITE, tasks_required=False)
    p.add_argument("--write", type=Path, default=None, help="markdown output (a .csv beside it)")
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else argv
    config, tasks = suite_from_arguments(p, args)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for task in tasks:
        records = _load_records(config.benchmark(task))
        if not records:
            print(f"{task.env_id}: no run records in {config.runs_dir}; skipped", file=sys.stderr)
            continue
        values: dict[str, dict[tuple[str, int], float]] = {"greedy": {}, "sampled": {}}
        for rec in tqdm(records, desc=task.env_id, unit="run"):
            key = (rec["model"], int(rec["seed"]))
            values["greedy"][key] = float(rec["eval_mean"])
            values["sampled"][key] = float(np.mean(sampled_returns(rec, config.eval_episodes)))
        rand = float(np.mean(_random_baseline(config, task.env_id)))
        for model in config.models:
            seeds = sorted(s for m, s in values["greedy"] if m == model)
            if not seeds:
                continue
            row: dict[str, Any] = {"env_id": task.env_id, "held_out": task.held_out, "model": model}
            row["seeds"] = len(seeds)
            for mode, by_run in values.items():
                lstm = [v for (m, _), v in by_run.items() if m == "lstm"]
                scale = normalisation_scale(lstm, rand)
                mine = [by_run[(model, s)] for s in seeds]
                mean, half = t_interval(mine)
                norm_mean, norm_half = (
                    t_interval([(v - rand) / scale for v in mine])
                    if math.isfinite(scale)
                    else (math.nan,) * 2
                )
                row[f"{mode}_mean"], row[f"{mode}_ci95"] = mean, half
                row[f"{mode}_normalized_mean"], row[f"{mode}_normalized_ci95"] = norm_mean, norm_half
                row[f"{mode}_per_seed"] = " ".join(f"{s}:{v:.1f}" for s, v in zip(seeds, mine))
            row["random_return"] = rand
            rows.append(row)
    if not rows:
        p.error(f"no run records in {config.runs_dir} for the selected tasks")
    text = _markdown(rows, config.eval_episodes, time.perf_counter() - t0, cli)
    print(text)
    if args.write is not None:
        write_atomic(args.write, text)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(args.write.with_suffix(".csv"), buf.getvalue())
    return 0


def _fmt_ci(mean: float, half: float, digits: int = 1) -> str:
    """``mean +- half`` (``mean`` alone for one seed; n/a for no value)."""
    from rl_bench import _fmt

    return _fmt(mean, digits) + (
        f" +- {_fmt(half, digits)}" if math.isfinite(mean) and math.isfinite(half) else ""
    )


def _markdown(rows: list[dict[str, Any]], episodes: int, seconds: float, cli: list[str]) -> str:
    from rl_bench import _MODEL_NAMES
    from rl_suite import _random_text

    lines = [
        "# The NoVel suite's runs, greedy vs sampled actions",
        "",
        *provenance_lines(__file__, cli),
        f"- Each saved run, {episodes} episodes on the evaluation's reset seeds (10000..), once greedy (the "
        "suite's own numbers, from the records) and once with actions drawn from the policy (torch seeded "
        "per episode; gSDE noise redrawn every `sde_sample_freq` steps). Mean +- 95% t-interval over seeds; "
        "normalised: random policy 0, LSTM-PPO's mean in the same mode 1 (n/a where LSTM-PPO does not beat "
        "random by more than its own interval). Added after the greedy results were seen: a second view, "
        f"not the suite's verdict. Evaluation time {seconds:.0f} s.",
        "",
        "| task | model | seeds | greedy return | greedy normalised | sampled return | sampled normalised |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        task = r["env_id"] + (" (held out)" if r["held_out"] else "")
        lines.append(
            f"| {task} | {_MODEL_NAMES[r['model']]} | {r['seeds']} | "
            f"{_fmt_ci(r['greedy_mean'], r['greedy_ci95'])} | "
            f"{_fmt_ci(r['greedy_normalized_mean'], r['greedy_normalized_ci95'], 2)} | "
            f"{_fmt_ci(r['sampled_mean'], r['sampled_ci95'])} | "
            f"{_fmt_ci(r['sampled_normalized_mean'], r['sampled_normalized_ci95'], 2)} |"
        )
    lines += ["", "Random policy's mean return: " + "; ".join(_random_text(rows))]
    lines += [
        "",
        "Per-seed sampled returns: "
        + "; ".join(f"{r['env_id']} {r['model']} {r['sampled_per_seed']}" for r in rows),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
