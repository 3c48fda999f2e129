"""Train a lane-keeping policy (behaviour cloning + optional DAgger); a thin wrapper of ``ltc-control train``.

Usage:
    python experiments/train_lane_keeping.py --config experiments/configs/lane_keeping_small.yaml
    python experiments/train_lane_keeping.py --config experiments/configs/lane_keeping.yaml --set bc.epochs=20
    python experiments/train_lane_keeping.py --resume runs/LTC-LaneKeeping-v0__lane_keeping_small__0__...
    torchrun --nproc_per_node 2 experiments/train_lane_keeping.py --config ...   # DistributedDataParallel
"""

from __future__ import annotations

import sys

from ltc_control.agents.imitation_cli import train_main

if __name__ == "__main__":
    raise SystemExit(train_main(sys.argv[1:]))
