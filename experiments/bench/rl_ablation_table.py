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


#: the columns of a suite summary CSV that :func:`references_from_csv` reads
_REFERENCE_COLUMNS = ("env_id", "model", "random_return", "per_seed_eval")


def references_from_csv(path: str | Path, seeds: Sequence[int]) -> dict[str, tuple[list[float], float]]:
    """LSTM-PPO's per-seed eval returns (for ``seeds``) and the random policy's return, per task, from a
    suite summary CSV (e.g. the committed ``experiments/results/rl_novel_suite.csv``), for a machine that
    lacks the suite's LSTM-PPO records (gitignored run folders). The CSV's per-seed returns are rounded to
    0.1.

    Returns:
        ``{env_id: (lstm_returns, random_return)}`` for every task with an ``lstm`` row.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column, an unparsable number, or a seed the CSV's LSTM-PPO row lacks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"references CSV {path} does not exist (a suite summary CSV is expected)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"references CSV {path} lacks the columns {missing} of a suite summary CSV")
        rows = list(reader)
    refs: dict[str, tuple[list[float], float]] = {}
    for line, row in enumerate(rows, start=2):
        if row["model"] != "lstm":
            continue
        try:
            per_seed = {
                int(k): float(v) for k, v in (item.split(":") for item in row["per_seed_eval"].split())
            }
            rand = float(row["random_return"])
        except ValueError as exc:
            raise ValueError(
                f"references CSV {path} line {line}: cannot read {row['env_id']}'s values ({exc})"
            ) from exc
        absent = [s for s in seeds if s not in per_seed]
        if absent:
            raise ValueError(
                f"references CSV {path}: {row['env_id']}'s LSTM-PPO row has no seeds {absent} "
                f"(it has {sorted(per_seed)})"
            )
        refs[row["env_id"]] = ([per_seed[s] for s in seeds], rand)
    return refs


def collect(
    suite: SuiteConfig,
    variants: Sequence[dict[str, Any]],
    references: dict[str, tuple[list[float], float]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (variant, tuning task, liquid model) with at least one record.

    Args:
        suite: the suite, its tasks and seeds narrowed to those reported.
        variants: policy kwargs of each variant (``{}``: the defaults).
        references: LSTM-PPO's returns and the random return per task (:func:`references_from_csv`) instead
            of the suite's LSTM-PPO records and cached random returns.

    Raises:
        ValueError: a held-out task among the selected ones (ablations never touch them), or a task the
            references lack.
    """
    rows: list[dict[str, Any]] = []
    for kwargs in variants:
        config = dataclasses.replace(suite, liquid_policy_kwargs=dict(kwargs))
        for task in config.selected_tasks:
            if task.held_out:
                raise ValueError(f"{task.env_id} is held out: ablations never run or report on it")
            if references is not None:
                if task.env_id not in references:
                    raise ValueError(f"the references have no LSTM-PPO row for {task.env_id}")
                lstm, rand = references[task.env_id]
            else:
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


def markdown(suite: SuiteConfig, rows: list[dict[str, Any]], references_from: str | None = None) -> str:
    """The table: one row per variant, one column per (task, model); ``references_from`` names the CSV the
    references were read from (default: the suite's records)."""
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
    source = (
        "the suite's records"
        if references_from is None
        else f"`{references_from}` (per-seed returns rounded to 0.1 there)"
    )
    lines += ["", f"References (mean eval return over the listed number of seeds; from {source}):", ""]
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
    parser.add_argument(
        "--references",
        help="a suite summary CSV (e.g. experiments/results/rl_novel_suite.csv) giving LSTM-PPO's per-seed "
        "returns and the random return, where the suite's LSTM-PPO records are not on this machine",
    )
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
    try:
        references = references_from_csv(args.references, suite.seeds) if args.references else None
        rows = collect(suite, variants, references)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("no records for any variant yet", file=sys.stderr)
        return 1
    text = markdown(suite, rows, args.references)
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
