#!/usr/bin/env python
"""Closed-loop evaluation with image-noise robustness (same as ``ltc-control evaluate``).

Usage:
    python experiments/evaluate.py CHECKPOINT|expert --seeds 1000-1019 --noise 0,0.1,0.2,0.3 \
        [--env LTC/LaneKeeping-v0] [--workers 2] [--out DIR] [--config preset.yaml] [--set key=value]

Writes evaluation.json, summary.csv, episodes.csv and crashes_per_km.png into the run folder and prints the
table (see ``ltc_control.agents.evaluation`` for the metrics and the noise protocol).
"""

from __future__ import annotations

import sys

from ltc_control.agents.evaluate_cli import evaluate_main

if __name__ == "__main__":
    raise SystemExit(evaluate_main(sys.argv[1:]))
