"""LTC speed benchmark: the fast LTC against ncps' LTC (same wiring and weights) and nn.LSTM(32, 64).

Thin wrapper of ``ltc-control bench ltc`` (see ``ltc_control.bench`` for the method). By default it writes
``experiments/results/ltc_speed.md`` and ``experiments/results/ltc_speed.json``.

Usage:
    python experiments/bench/ltc_speed.py [--configs ncp19,autoncp64,fc64] [--repeats 5] [--no-memory] ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from ltc_control.bench import ltc_bench_main

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str]) -> int:
    """Runs the benchmark; adds the default output files unless the caller chose them."""
    args = list(argv)
    if not any(a in ("-h", "--help") for a in args):
        if "--markdown" not in args:
            args += ["--markdown", str(RESULTS / "ltc_speed.md")]
        if "--json" not in args:
            args += ["--json", str(RESULTS / "ltc_speed.json")]
    return ltc_bench_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
