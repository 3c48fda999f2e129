"""A Markdown comparison of training-diagnostics CSVs (``RecurrentDiagnostics``, ``diagnostics: true`` in a
benchmark config): per-update means of the relative update sizes and gradient norms per parameter group, and
the value function's explained variance, the time constants and the synapse saturation at five points.

Usage::

    .venv/bin/python experiments/bench/rl_diag_table.py LTC=runs/.../x__ltc__0__30720.diagnostics.csv \\
        LSTM=runs/.../x__lstm__0__30720.diagnostics.csv [--at 2048 6144 10240 20480 30720]
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GROUPS = ("actor_sensory", "actor_recurrent", "actor_time_constants", "action_head", "critic")
MEANS = [f"update_rel_{g}" for g in GROUPS] + [f"grad_{g}_mean" for g in (*GROUPS, "total")]
POINTS = (
    "policy_entropy",
    "value_explained_variance",
    "value_rmse",
    "tau_steps_median",
    "tau_steps_p90",
    "sensory_saturated_fraction",
    "recurrent_saturated_fraction",
    "episode_return_mean",
)


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r.get(key, "nan") or "nan") for r in rows])


def table(runs: dict[str, Path], at: Sequence[int]) -> str:
    """The Markdown table (one column per run)."""
    data = {name: list(csv.DictReader(path.open())) for name, path in runs.items()}
    lines = ["| quantity | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
    for key in [*MEANS, "grad_clipped_fraction"]:
        cells = []
        for rows in data.values():
            v = _column(rows, key)
            v = v[np.isfinite(v)]
            cells.append(f"{v.mean():.3g}" if v.size else "n/a")
        lines.append(f"| {key} (mean over updates) | " + " | ".join(cells) + " |")
    where = " / ".join(f"{t / 1000:.0f}k" for t in at)
    for key in POINTS:
        cells = []
        for rows in data.values():
            t, v = _column(rows, "timesteps"), _column(rows, key)
            picks = [int(np.argmin(np.abs(t - x))) for x in at]
            cells.append(" / ".join("n/a" if not math.isfinite(v[i]) else f"{v[i]:.3g}" for i in picks))
        lines.append(f"| {key} at {where} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=path/to/diagnostics.csv")
    parser.add_argument("--at", nargs="+", type=int, default=[2048, 6144, 10240, 20480, 30720])
    ns = parser.parse_args(argv)
    runs = {}
    for item in ns.runs:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"expected NAME=PATH, got {item!r}")
        runs[name] = Path(path)
    print(table(runs, ns.at))
    return 0


if __name__ == "__main__":
    sys.exit(main())
