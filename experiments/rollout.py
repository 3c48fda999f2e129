#!/usr/bin/env python
"""Run a policy in closed loop and write an mp4 video (same as ``ltc-control rollout``).

Usage:
    python experiments/rollout.py CHECKPOINT|expert [--env LTC/LaneKeeping-v0] [--seed 1000] [--episodes 1] \
        [--video rollout.mp4] [--fps 30] [--width 960] [--height 540] [--slowmo 2] [--noise 0.1] [--out DIR] \
        [--panels camera chase telemetry neurons]

The video shows the policy's camera view, the env's chase view, the steering (policy and expert), lateral
error, speed and every controller neuron's activity by role (see ``ltc_control.agents.rollout``).
"""

from __future__ import annotations

import sys

from ltc_control.agents.rollout import rollout_main

if __name__ == "__main__":
    raise SystemExit(rollout_main(sys.argv[1:]))
