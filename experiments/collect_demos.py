"""Collect noisy-expert lane-keeping demonstrations; a thin wrapper of ``ltc-control dataset collect``.

Usage:
    python experiments/collect_demos.py --out data/demos --num_roads 16 --workers 2 \
        --env.kwargs "{image_height: 32, image_width: 64, road_length: 250.0}"
    python experiments/collect_demos.py --out data/demos --resume      # continue after an interrupt
"""

from __future__ import annotations

import sys

from ltc_control.agents.dataset_cli import dataset_main

if __name__ == "__main__":
    raise SystemExit(dataset_main(["collect", *sys.argv[1:]]))
