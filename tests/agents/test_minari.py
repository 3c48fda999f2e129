"""Minari round trip: our dataset -> Minari -> the same arrays and the same training windows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltc_control.agents.datasets import DatasetError, DatasetWriter, DemoDataset, Episode

pytest.importorskip("minari", reason="pip install 'ltc-control[minari]'")
pytest.importorskip("pyarrow", reason="Minari's arrow storage needs pyarrow")

from ltc_control.agents.minari_io import (  # noqa: E402
    LABEL_INFO_KEY,
    MinariDemoDataset,
    export_minari,
    is_minari_source,
    open_demos,
)


def _episode(road: int, length: int, source: str = "expert", k: int = 0) -> Episode:
    rng = np.random.default_rng([road, k])
    labels = rng.uniform(-1, 1, (length, 1)).astype(np.float32)
    return Episode(
        images=rng.integers(0, 256, (length, 6, 8, 3), dtype=np.uint8),
        labels=labels,
        actions=labels + rng.normal(0, 0.05, labels.shape).astype(np.float32),
        info={
            "lateral_offset": rng.normal(0, 0.3, length).astype(np.float32),
            "curvature_ahead": rng.normal(0, 0.01, (length, 3)).astype(np.float32),
        },
        road_seed=road,
        key=f"{source}/road{road}/ep{k}",
        source=source,
        completed=road % 2 == 0,
    )


@pytest.fixture()
def exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ours = tmp_path / "demos"
    with DatasetWriter(ours, episodes_per_chunk=2, metadata={"collect": {"env": "test"}}) as writer:
        for road, n in ((3, 21), (1, 34), (4, 17), (2, 40)):
            writer.add(_episode(road, n))
        writer.add(_episode(1, 25, source="dagger_1", k=1))
    export_minari(ours, "ltc/test-demos-v0")
    return ours, "ltc/test-demos-v0"


def _same_arrays(a: DemoDataset, b: DemoDataset) -> None:
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.episode_lengths, b.episode_lengths)
    assert a.info.keys() == b.info.keys()
    for key in a.info:
        np.testing.assert_array_equal(a.info[key], b.info[key])
    assert [(e["key"], e["road_seed"], e["source"], e["completed"]) for e in a.episodes] == [
        (e["key"], e["road_seed"], e["source"], e["completed"]) for e in b.episodes
    ]


def test_round_trip_gives_the_same_training_windows(exported: tuple[Path, str], tmp_path: Path) -> None:
    ours, dataset_id = exported
    a = DemoDataset(ours)
    for source in (dataset_id, f"minari:{dataset_id}", tmp_path / "minari" / dataset_id):
        assert is_minari_source(source)
        b = open_demos(source)
        assert isinstance(b, MinariDemoDataset)
        _same_arrays(a, b)
    assert not is_minari_source(ours) and type(open_demos(ours)) is DemoDataset
    batches_a = list(a.iter_windows(3, 8, stride=4, seed=7, epoch=2))
    batches_b = list(b.iter_windows(3, 8, stride=4, seed=7, epoch=2))
    assert len(batches_a) == len(batches_b) == a.num_batches(3, 8, stride=4) > 3
    for x, y in zip(batches_a, batches_b):
        for field in ("images", "labels", "actions", "episode_starts", "index"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
    # the training selection (road split, expert-only validation) selects the same episodes
    _same_arrays(DemoDataset(ours, road_seeds=[1, 4]), open_demos(dataset_id, road_seeds=[1, 4]))
    _same_arrays(DemoDataset(ours, sources=["expert"]), open_demos(dataset_id, sources=["expert"]))


def test_minari_side_follows_its_conventions(exported: tuple[Path, str]) -> None:
    import minari

    ours, dataset_id = exported
    a = DemoDataset(ours)
    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_episodes == 5 and dataset.total_steps == len(a)
    episode = dataset[1]  # road 1, 34 steps, completed False -> ends with a termination
    assert episode.observations.shape == (35, 6, 8, 3)  # T + 1 observations
    np.testing.assert_array_equal(episode.observations[-1], episode.observations[-2])
    assert episode.actions.shape == (34, 1) and np.isnan(episode.rewards).all()
    assert episode.terminations[-1] and not episode.terminations[:-1].any() and not episode.truncations.any()
    assert dataset[2].truncations[-1]  # road 4: completed -> truncated at the end
    sl = slice(int(a.episode_offsets[1]), int(a.episode_offsets[1] + 34))
    np.testing.assert_array_equal(episode.infos[LABEL_INFO_KEY][:34], a.labels[sl])
    np.testing.assert_array_equal(episode.infos["curvature_ahead"][:34], a.info["curvature_ahead"][sl])
    meta = json.loads((Path(dataset.storage.data_path) / "metadata.json").read_text())
    assert meta.get("jpeg_encoding", False) is False
    assert meta["ltc_control"]["info_keys"]["curvature_ahead"] == [3]
    with pytest.raises(ValueError, match="already exists"):
        export_minari(ours, dataset_id)


def test_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    with pytest.raises(DatasetError, match="ltc-control dataset export"):
        MinariDemoDataset("ltc/missing-v0")
    with pytest.raises(DatasetError, match="manifest"):
        export_minari(tmp_path / "nothing", "ltc/x-v0")
    with pytest.raises(ValueError, match="Malformed"):
        export_minari(tmp_path / "nothing", "bad id")


def test_export_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ltc_control.cli import main

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    ours = tmp_path / "demos"
    with DatasetWriter(ours) as writer:
        writer.add(_episode(7, 12))
    export = ["dataset", "export", str(ours), "--format", "minari", "--name", "ltc/cli-v0"]
    assert main([*export, "--author", "me"]) == 0
    assert "1 episodes, 12 steps, roads [7]" in capsys.readouterr().out
    assert main(export) == 1
    assert "already exists" in capsys.readouterr().err


def _train_config(tmp_path: Path, demos_dir: str, name: str, rounds: int = 0) -> Any:
    from ltc_control.agents.imitation_config import TrainConfig
    from ltc_control.config import from_dict

    return from_dict(
        TrainConfig,
        {
            "name": name,
            "out_dir": str(tmp_path / "runs"),
            "workers": 0,
            "env": {"kwargs": {"image_height": 6, "image_width": 8}},
            "demos": {"dir": demos_dir, "seed_start": 1, "num_roads": 4, "val_fraction": 0.25},
            "policy": {"image_shape": [6, 8, 3]},
            "bc": {"epochs": 2, "batch_size": 4, "window": 8, "stride": 4, "patience": 0, "log_every": 1},
            "dagger": {"rounds": rounds},
            "eval": {"num_roads": 0},
        },
    )


def test_training_from_minari_equals_training_from_ours(exported: tuple[Path, str], tmp_path: Path) -> None:
    import csv

    import torch

    from ltc_control.agents.imitation import train

    ours, dataset_id = exported
    torch.set_num_threads(1)
    losses = []
    for source, name in ((str(ours), "ours"), (dataset_id, "minari")):
        torch.manual_seed(0)
        result = train(_train_config(tmp_path, source, name), progress=False)
        with open(result.run_dir / "metrics.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        losses.append([float(r["train/loss"]) for r in rows if r.get("train/loss")])
        assert result.metrics["val_loss"] > 0
    # the Minari dataset holds the same roads (1..4), so the road split, the windows and the losses agree
    assert len(losses[0]) > 4 and losses[0] == losses[1]
    with pytest.raises(ValueError, match="DAgger"):
        train(_train_config(tmp_path, dataset_id, "dagger", rounds=1), progress=False)
