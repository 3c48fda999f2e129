"""Interrupting long commands with SIGINT / SIGTERM at a random point and resuming them gives the same final
files as an uninterrupted run with the same seed (issue #15 item 1 and the interruption contract)."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest

from ltc_control.cli import main as cli_main
from tests.faults.helpers import (
    csv_without,
    interrupt_cli,
    interrupted_status,
    write_stripe_dataset,
)

TRAIN_YAML = """\
name: synthetic
out_dir: runs
workers: 0
env: {kwargs: {image_height: 16, image_width: 32}}
demos: {dir: DATA, num_roads: 5, val_fraction: 0.2}
policy: {image_shape: [16, 32, 3]}
bc: {epochs: 6, batch_size: 8, window: 8, stride: 4, patience: 0, log_every: 1, device: cpu, num_threads: 1}
eval: {num_roads: 0}
"""
TIMING = {"time", "epoch/seconds", "final/train_seconds", "final/wall_seconds"}


def _train_setup(root: Path, data: Path) -> Path:
    root.mkdir()
    (root / "cfg.yaml").write_text(TRAIN_YAML.replace("DATA", str(data)))
    return root


def _run_dir(root: Path) -> Path:
    (run,) = sorted((root / "runs").iterdir())
    return run


def _final_files(run: Path) -> dict[str, object]:
    final = json.loads((run / "final_metrics.json").read_text())
    return {
        "best": (run / "checkpoints/best/model.safetensors").read_bytes(),
        "last": (run / "checkpoints/last/model.safetensors").read_bytes(),
        "final": {k: v for k, v in final.items() if "seconds" not in k},
        "metrics": csv_without(run / "metrics.csv", TIMING),
    }


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"row {i}: {x} != {y}"
    return f"{len(a)} rows != {len(b)} rows"


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    base = tmp_path_factory.mktemp("train")
    data = write_stripe_dataset(base / "data")
    root = _train_setup(base / "reference", data)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli_main(["train", "--config", "cfg.yaml", "--no-progress"]) == 0
    return data, _final_files(_run_dir(root))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_train_interrupted_and_resumed_is_bit_identical(
    tmp_path: Path, train_reference: tuple[Path, dict[str, object]], sig: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, reference = train_reference
    root = _train_setup(tmp_path / "run", data)
    rng = random.Random(int(sig))
    started = lambda: (root / "runs").is_dir() and any((root / "runs").glob("*/metrics.csv"))  # noqa: E731
    rc, err = interrupt_cli(["train", "--config", "cfg.yaml", "--no-progress"], root, sig, started, rng, 0.8)
    assert rc in (0, interrupted_status(sig)), err
    run = _run_dir(root)
    if rc != 0:
        assert "Traceback" not in err
        assert not (run / "checkpoints/best").exists()
    if rc != 0:
        monkeypatch.chdir(root)
        assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    got = _final_files(run)
    assert got["metrics"] == reference["metrics"], _first_difference(got["metrics"], reference["metrics"])
    assert got == reference
    assert not (run / ".lock").exists()
