"""A tiny study preset shared by the study tests (seconds per trial on 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_YAML = """\
name: tiny
seeds: 1
workers: 2
env:
  id: LTC/LaneKeeping-v0
  kwargs: {image_height: 16, image_width: 32, road_length: 12.0}
demos: {num_roads: 2, val_fraction: 0.5}
test_demos: {num_roads: 1}
policy:
  image_shape: [16, 32, 3]
bc: {epochs: 1, batch_size: 4, window: 8, stride: 8, max_batches_per_epoch: 2, patience: 0}
tuning: {lr_controller: [0.001, 0.01]}
models:
  - {name: ncp_ltc, controller: {kind: ltc, wiring: {preset: lane_keeping}}}
evaluation:
  num_roads: 2
  noise_levels: [0.0, 0.3]
  shifts: [{name: dark, brightness: -0.25}]
  randomized_visuals: false
  num_envs: 4
  saliency_frames: 4
  saliency_noise: [0.3]
  inference_steps: 4
"""


@pytest.fixture
def tiny_preset(tmp_path: Path) -> Path:
    """A study preset writing under ``tmp_path`` (out_dir and results_dir)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_YAML + f"out_dir: {tmp_path / 'runs'}\nresults_dir: {tmp_path / 'results'}\n")
    return path
