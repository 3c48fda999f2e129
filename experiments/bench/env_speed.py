"""Environment speed benchmark (LTC/LaneKeeping-v0 vs CarRacing-v3); see ``ltc_control.envs.bench``.

Usage::

    python experiments/bench/env_speed.py [--steps 300] [--repeats 5] [--write FILE.md]
"""

from __future__ import annotations

import sys

from ltc_control.envs.bench import main

if __name__ == "__main__":
    sys.exit(main())
