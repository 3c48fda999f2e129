"""How soon runs learned: the env step at which a rolling mean of training episode returns first passes a bar.

The discrete-action rules of issue #16 (docs/rl.md, "Discrete actions") judge a candidate by its greedy
return *and* by how soon it learned: "the step of the first 20-episode training mean above -200" on
AcrobotNoVel. This script computes that from the run records ``experiments/rl_benchmark.py`` writes (their
``curve`` holds ``[env step at the episode's end, episode return]`` for every training episode, in order) and
prints one row per run, plus the median over runs::

    .venv/bin/python experiments/bench/rl_first_reach.py runs/rl_benchmark/acro_dt007 --bar -200 --window 20
    .venv/bin/python experiments/bench/rl_first_reach.py runs/a/X__ltc__0__1000000.json --write out.md

A run whose rolling mean never passes the bar gets "never" (and counts as its budget in the median, which
then says "at least"). Records are read as they are; nothing is re-run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import write_atomic


def first_reach(curve: list[list[float]], bar: float, window: int) -> float | None:
    """The env step of the episode that completes the first ``window`` consecutive training episodes whose
    mean return is above ``bar``; None if there is none.

    Raises:
        ValueError: ``window`` < 1, or a curve that is not a list of ``[step, return]`` pairs of finite
            numbers with non-decreasing steps.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    try:
        c = np.asarray(curve, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the curve must be a list of [step, return] pairs: {exc}") from exc
    if c.size == 0:
        return None
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"the curve must be a list of [step, return] pairs, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("the curve contains non-finite steps or returns")
    if (np.diff(c[:, 0]) < 0).any():
        raise ValueError("the curve's steps must not decrease (episodes in the order they ended)")
    if len(c) < window:
        return None
    rolling = np.convolve(c[:, 1], np.ones(window) / window, mode="valid")
    above = np.nonzero(rolling > bar)[0]
    return float(c[above[0] + window - 1, 0]) if len(above) else None


def _records(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in paths:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise FileNotFoundError(f"{path}: no run records (*.json) in this folder")
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: no such run record")
            if f.name.endswith(".sampled_eval.json"):
                continue
            try:
                doc = json.loads(f.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{f}: not a JSON run record ({exc})") from exc
            if not isinstance(doc, dict) or "curve" not in doc:
                if isinstance(doc, dict) and doc.get("model") == "random":
                    continue  # the random policy's record has no training curve
                raise ValueError(f"{f}: not a training run record (no 'curve')")
            out.append((f, doc))
    return out


def table(paths: list[Path], bar: float, window: int) -> str:
    """The Markdown table (one row per run, then the median) for the records under ``paths``."""
    rows = [
        f"| run | seed | greedy eval return | first {window}-episode training mean above {bar:g} (env step) "
        "| budget | steps/CPU-s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    firsts: list[float] = []
    censored = False
    for f, doc in _records(paths):
        step = first_reach(doc["curve"], bar, window)
        budget = float(doc.get("timesteps", float("nan")))
        if step is None:
            censored = True
            firsts.append(budget)
        else:
            firsts.append(step)
        eval_mean = doc.get("eval_mean")
        rows.append(
            f"| {f.stem} | {doc.get('seed', '?')} | {'n/a' if eval_mean is None else f'{eval_mean:.1f}'} | "
            f"{'never' if step is None else f'{step:,.0f}'} | {budget:,.0f} | "
            f"{doc.get('steps_per_cpu_second', float('nan')):.0f} |"
        )
    if not firsts:
        raise ValueError("no training run records found")
    median = statistics.median(firsts)
    rows.append("")
    rows.append(
        f"Median first step over {len(firsts)} runs: {'at least ' if censored else ''}{median:,.0f} "
        f"(a run that never passed counts as its budget)."
    )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", type=Path, help="run records (*.json) or folders of them")
    ap.add_argument("--bar", type=float, required=True, help="the rolling mean must be above this")
    ap.add_argument("--window", type=int, default=20, help="consecutive training episodes (default 20)")
    ap.add_argument("--write", type=Path, default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    try:
        text = table(args.paths, args.bar, args.window)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.write is not None:
        write_atomic(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
