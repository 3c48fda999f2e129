"""Partially observed RL benchmark: LTC-PPO vs CfC-PPO vs LSTM-PPO with the same budget and seeds.

Usage::

    .venv/bin/python experiments/rl_benchmark.py --config experiments/configs/rl_pendulum_novel.yaml
    .venv/bin/python experiments/rl_benchmark.py --config experiments/configs/rl_pendulum_novel.yaml \\
        --set timesteps=100000 --set 'seeds=[0, 1, 2]' --set workers=2
    .venv/bin/python experiments/rl_benchmark.py --config ... --summary-only   # re-write table and plot

Each run's record goes to ``<out_dir>/runs/``; an interrupted benchmark resumes (finished runs are skipped).
Writes ``<out_dir>/<name>.md|csv|png``. The benchmark code is ``experiments/bench/rl_bench.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

# the benchmark code sits beside this script; on sys.path (not loaded by file) so that spawned workers,
# which inherit sys.path, can unpickle its functions and configs
BENCH_DIR = str(Path(__file__).resolve().parent / "bench")
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the config, run the missing runs (unless ``--summary-only``) and write the summary."""
    from rl_bench import main as bench_main

    return bench_main(argv, prog="rl_benchmark.py")


if __name__ == "__main__":
    sys.exit(main())
