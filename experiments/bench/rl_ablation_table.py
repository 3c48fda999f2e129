"""Issue #16's ablations side by side: the liquid policies' defaults against candidate defaults on the
suite's **tuning** tasks, each variant with the same seeds, budget and PPO settings, normalised between a
random policy (0) and the suite's own LSTM-PPO runs (1).

The variants' runs are made with ``experiments/rl_benchmark.py --suite novel --set only_tasks=[...]
--set "liquid_policy_kwargs={...}"`` (records under ``<runs_dir>/ablation/<slug>``); the defaults' and
LSTM-PPO's runs are the suite's own. This script only reads records.

Usage::

    .venv/bin/python experiments/bench/rl_ablation_table.py --suite novel --seeds 0 1 2 \\
        --variants '{}' '{action_scale_init: 0.1}' '{controller_lr_scale: 5.0}' \\
        --write experiments/results/rl_novel_ablations.md
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_bench import _fmt, _load_records, _provenance  # noqa: E402
from rl_suite import SUITES_DIR, SuiteConfig, _random_baseline, normalisation_scale, t_interval  # noqa: E402

from ltc_control.config import load_yaml  # noqa: E402
from ltc_control.runs import atomic_write_text  # noqa: E402


def _variant_name(kwargs: dict[str, Any]) -> str:
    return "defaults" if not kwargs else ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))


def collect(suite: SuiteConfig, variants: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, tuning task, liquid model) with at least one record.

    Raises:
        ValueError: a held-out task among the selected ones (ablations never touch them).
    """
    rows: list[dict[str, Any]] = []
    for kwargs in variants:
        config = dataclasses.replace(suite, liquid_policy_kwargs=dict(kwargs))
        for task in config.selected_tasks:
            if task.held_out:
                raise ValueError(f"{task.env_id} is held out: ablations never run or report on it")
            base = dataclasses.replace(suite, liquid_policy_kwargs={})
            lstm = [r["eval_mean"] for r in _load_records(base.benchmark(task, base=True))]
            rand = float(np.mean(_random_baseline(config, task.env_id)))
            scale = normalisation_scale(lstm, rand)
            records = _load_records(config.benchmark(task))
            for model in ("ltc", "cfc"):
                recs = sorted((r for r in records if r["model"] == model), key=lambda r: r["seed"])
                if not recs:
                    continue
                evals = [float(r["eval_mean"]) for r in recs]
                mean, half = t_interval(evals)
                if math.isfinite(scale):
                    nmean, nhalf = t_interval([(e - rand) / scale for e in evals])
                else:
                    nmean, nhalf = math.nan, math.nan
                rows.append(
                    {
                        "variant": _variant_name(kwargs),
                        "env_id": task.env_id,
                        "model": model,
                        "seeds": " ".join(str(r["seed"]) for r in recs),
                        "eval_return_mean": mean,
                        "eval_return_ci95": half,
                        "normalized_mean": nmean,
                        "normalized_ci95": nhalf,
                        "lstm_seeds": len(lstm),
                        "lstm_return_mean": float(np.mean(lstm)) if lstm else math.nan,
                        "random_return": rand,
                        "per_seed": " ".join(f"{r['seed']}:{r['eval_mean']:.1f}" for r in recs),
                        "_records": recs,
                    }
                )
    return rows


def markdown(suite: SuiteConfig, rows: list[dict[str, Any]]) -> str:
    """The table: one row per variant, one column per (task, model)."""
    keys = sorted({(r["env_id"], r["model"]) for r in rows}, key=lambda k: (k[0], k[1] != "ltc"))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["variant"], r["env_id"], r["model"]): r for r in rows}
    name = {"ltc": "LTC", "cfc": "CfC"}
    lines = [
        f"# {suite.name}: ablations of the liquid policies' defaults (tuning tasks only)",
        "",
        "Each cell: final deterministic return, mean +- 95% t-interval over the seeds listed, and in "
        "brackets the return normalised between a random policy (0) and the suite's LSTM-PPO "
        "(`MlpLstmPolicy`, same PPO settings, budget and seeds; 1; n/a where LSTM-PPO does not beat random "
        "by more than its own 95% interval). Every variant changes only the named "
        "policy kwargs of `LtcPolicy()` / `LtcPolicy(controller={'kind': 'cfc'})`; the held-out tasks never "
        "enter an ablation.",
        "",
        "| variant | " + " | ".join(f"{env} {name[m]}" for env, m in keys) + " |",
        "| --- |" + " --- |" * len(keys),
    ]
    for v in variants:
        cells = []
        for env, m in keys:
            r = by.get((v, env, m))
            if r is None:
                cells.append("not run")
                continue
            cells.append(
                f"{_fmt(r['eval_return_mean'])} +- {_fmt(r['eval_return_ci95'])} "
                f"[{_fmt(r['normalized_mean'], 2)} +- {_fmt(r['normalized_ci95'], 2)}] (seeds {r['seeds']})"
            )
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines += ["", "References (mean eval return over the listed number of seeds):", ""]
    for env in dict.fromkeys(e for e, _ in keys):
        r = next(x for x in rows if x["env_id"] == env)
        budget = suite.timesteps(next(t for t in suite.tasks if t.env_id == env))
        lines.append(
            f"- {env}: LSTM-PPO {_fmt(r['lstm_return_mean'])} ({r['lstm_seeds']} seeds), random policy "
            f"{_fmt(r['random_return'])}; budget {budget:,} env steps per run"
        )
    lines += [
        "",
        "Per-seed returns: "
        + "; ".join(f"{r['variant']} / {r['env_id']} / {r['model']}: {r['per_seed']}" for r in rows),
    ]
    records = [rec for r in rows for rec in r["_records"]]
    lines += ["", _provenance(records), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, read the records, print the table (``--write``: save it and a CSV beside it)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--suite", default="novel", help="suite name: experiments/configs/rl_<NAME>_suite.yaml"
    )
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds to report (default: the suite's)")
    parser.add_argument(
        "--tasks", nargs="+", help="tuning tasks (default: every task of the suite that is not held out)"
    )
    parser.add_argument("--variants", nargs="+", default=["{}"], help="YAML mappings of policy kwargs")
    parser.add_argument("--write", help="Markdown output path (a .csv is written beside it)")
    args = parser.parse_args(argv)
    suite = load_yaml(SuiteConfig, SUITES_DIR / f"rl_{args.suite}_suite.yaml")
    tasks = args.tasks or [t.env_id for t in suite.tasks if not t.held_out]
    changes: dict[str, Any] = {"only_tasks": tuple(tasks)}
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    suite = dataclasses.replace(suite, **changes)
    variants = []
    for text in args.variants:
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            parser.error(f"a variant must be a YAML mapping of policy kwargs, got {text!r}")
        variants.append(value)
    rows = collect(suite, variants)
    if not rows:
        print("no records for any variant yet", file=sys.stderr)
        return 1
    text = markdown(suite, rows)
    print(text)
    if args.write:
        out = Path(args.write)
        atomic_write_text(out, text)
        buf = io.StringIO()
        fields = [k for k in rows[0] if not k.startswith("_")]
        writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
