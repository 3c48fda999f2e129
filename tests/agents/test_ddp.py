"""DistributedDataParallel: two CPU processes (gloo) train the same policy and end with identical weights."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ltc_control.agents.datasets import DatasetWriter, Episode
from ltc_control.agents.imitation import train
from ltc_control.agents.imitation_config import TrainConfig
from ltc_control.config import from_dict

H, W = 16, 32


def _episode(road: int, length: int = 40) -> Episode:
    rng = np.random.default_rng(road)
    labels = (0.8 * np.sin(np.arange(length) / 6.0 + road)).astype(np.float32)
    images = rng.integers(0, 40, size=(length, H, W, 3), dtype=np.uint8)
    for k, c in enumerate(np.round((labels + 1) / 2 * (W - 3)).astype(int)):
        images[k, :, c : c + 3, :] = 255
    return Episode(images=images, labels=labels, actions=labels, road_seed=road, key=f"expert/road{road}/ep0")


def _config(tmp: Path) -> TrainConfig:
    return from_dict(
        TrainConfig,
        {
            "name": "ddp",
            "out_dir": str(tmp / "runs"),
            "workers": 0,
            "env": {"kwargs": {"image_height": H, "image_width": W}},
            "demos": {"dir": str(tmp / "data"), "num_roads": 5, "val_fraction": 0.2},
            "policy": {"image_shape": [H, W, 3]},
            "bc": {"epochs": 2, "batch_size": 4, "window": 8, "stride": 4, "patience": 0, "device": "cpu"},
            "eval": {"num_roads": 0},
        },
    )


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    result = train(_config(Path(tmp)), progress=False)
    state = {k: v.detach().clone() for k, v in result.policy.state_dict().items()}
    torch.save({"state": state, "run_dir": str(result.run_dir)}, Path(tmp) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(300)
def test_two_process_ddp_ends_with_identical_weights(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "data", episodes_per_chunk=5) as writer:
        for road in range(5):
            writer.add(_episode(road))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["run_dir"] == r1["run_dir"]  # rank 0 made the run folder and shared it
    assert r0["state"].keys() == r1["state"].keys()
    for name, value in r0["state"].items():
        assert torch.equal(value, r1["state"][name]), name
    # Training moved the weights away from the (seeded, identical) initialisation.
    torch.manual_seed(0)
    from ltc_control.policy import Policy

    init = Policy(_config(tmp_path).policy).state_dict()
    moved = [n for n, v in init.items() if v.is_floating_point() and not torch.equal(v, r0["state"][n])]
    assert len(moved) > len(init) // 2
    # Only rank 0 wrote the run folder's files (one metrics.csv, checkpoints from one writer).
    run_dir = Path(r0["run_dir"])
    assert (run_dir / "checkpoints" / "best" / "model.json").is_file()
    assert (run_dir / "metrics.csv").read_text().count("\n") > 2
