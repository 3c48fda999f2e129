"""Partially observed RL benchmark: LTC-PPO vs CfC-PPO vs LSTM-PPO with the same budget and seeds.

Usage::

    .venv/bin/python experiments/rl_benchmark.py --config experiments/configs/rl_pendulum_novel.yaml
    .venv/bin/python experiments/rl_benchmark.py --config experiments/configs/rl_pendulum_novel.yaml \\
        --set timesteps=100000 --set 'seeds=[0, 1, 2]' --set workers=2
    .venv/bin/python experiments/rl_benchmark.py --config ... --summary-only   # re-write table and plot

Each run's record goes to ``<out_dir>/runs/``; an interrupted benchmark resumes (finished runs are skipped).
Writes ``<out_dir>/<name>.md|csv|png``. The library code is :mod:`ltc_control.agents.sb3_bench`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ltc_control.config import make_parser, parse_args_and_config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the config, run the missing runs (unless ``--summary-only``) and write the summary."""
    from ltc_control.agents.sb3_bench import BenchmarkConfig, run_benchmark, summarize

    parser = make_parser(BenchmarkConfig, description=__doc__)
    parser.add_argument("--summary-only", action="store_true", help="only re-write the table and the plot")
    parser.add_argument("--no-resume", action="store_true", help="retrain runs whose record exists")
    config, ns = parse_args_and_config(BenchmarkConfig, argv, parser)
    path = summarize(config) if ns.summary_only else run_benchmark(config, resume=not ns.no_resume)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
