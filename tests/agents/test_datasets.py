"""Tests of the demonstration dataset format, loader and CLI (``ltc_control.agents.datasets``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ltc_control.agents.dataset_cli import dataset_main
from ltc_control.agents.datasets import (
    MANIFEST_NAME,
    DatasetError,
    DatasetWriter,
    DemoDataset,
    Episode,
    read_manifest,
    split_road_seeds,
    summarize_dataset,
)


def _episode(road: int, length: int, k: int = 0, h: int = 6, w: int = 8) -> Episode:
    rng = np.random.default_rng([road, k])
    steps = np.arange(length, dtype=np.float32)
    # Encode (road, step) in the pixels and labels so that windows can be traced back to their episode.
    images = np.zeros((length, h, w, 3), np.uint8)
    images[:, 0, 0, 0] = road
    images[:, 0, 1, 0] = np.arange(length) % 256
    labels = (road * 1000 + steps)[:, None] / 1e4
    return Episode(
        images=images,
        labels=labels,
        actions=labels + rng.normal(0, 0.01, labels.shape).astype(np.float32),
        info={"lateral_offset": steps * 0.01, "curvature_ahead": np.tile(steps[:, None], (1, 3))},
        road_seed=road,
        key=f"expert/road{road}/ep{k}",
        completed=road % 2 == 0,
    )


def _write(root: Path, lengths: dict[int, int], per_chunk: int = 2) -> list[Episode]:
    eps = [_episode(r, n) for r, n in lengths.items()]
    with DatasetWriter(root, episodes_per_chunk=per_chunk, metadata={"test": True}) as writer:
        for ep in eps:
            writer.add(ep)
    return eps


def test_round_trip_is_exact(tmp_path: Path) -> None:
    eps = _write(tmp_path, {1: 20, 2: 33, 3: 17, 4: 25, 5: 40})
    manifest = read_manifest(tmp_path)
    assert [c["file"] for c in manifest["chunks"]] == [f"chunk_{i:06d}.npz" for i in range(3)]
    assert manifest["image_shape"] == [6, 8, 3] and manifest["action_size"] == 1
    ds = DemoDataset(tmp_path)
    assert len(ds) == 135 and ds.num_episodes == 5 and ds.road_seeds == [1, 2, 3, 4, 5]
    assert np.array_equal(ds.images, np.concatenate([e.images for e in eps]))
    assert np.array_equal(ds.labels, np.concatenate([e.labels for e in eps]))
    assert np.array_equal(ds.actions, np.concatenate([e.actions for e in eps]))
    assert ds.info["curvature_ahead"].shape == (135, 3)
    assert np.array_equal(ds.info["lateral_offset"], np.concatenate([e.info["lateral_offset"] for e in eps]))
    sub = DemoDataset(tmp_path, road_seeds=[2, 5])
    assert sub.road_seeds == [2, 5] and len(sub) == 73
    assert np.array_equal(sub.labels, np.concatenate([eps[1].labels, eps[4].labels]))


def test_windows_never_cross_episodes_and_shuffle_is_seeded(tmp_path: Path) -> None:
    _write(tmp_path, {1: 20, 2: 33, 3: 10, 4: 16})
    ds = DemoDataset(tmp_path)
    starts = ds.window_starts(16, stride=8)
    # road 1: 0,4 (end-aligned); road 2: 0,8,16,17; road 3 (10 < 16): none; road 4: exactly one.
    assert starts.tolist() == [0, 4, 20, 28, 36, 37, 63]
    batches = list(ds.iter_windows(3, 16, stride=8, seed=7, epoch=0))
    assert [b.images.shape for b in batches] == [(3, 16, 6, 8, 3)] * 2 + [(1, 16, 6, 8, 3)]
    for b in batches:
        road = b.images[:, :, 0, 0, 0].astype(int)
        assert np.all(road == road[:, :1])  # one road per window
        step = b.images[:, :, 0, 1, 0].astype(int)
        assert np.all(np.diff(step, axis=1) == 1)  # consecutive steps
        assert np.array_equal(b.episode_starts, (step == 0).astype(np.float32))
        assert np.allclose(b.labels[..., 0], (road * 1000 + step) / 1e4)
    again = [b.index.tolist() for b in ds.iter_windows(3, 16, stride=8, seed=7, epoch=0)]
    assert again == [b.index.tolist() for b in batches]
    other = [b.index.tolist() for b in ds.iter_windows(3, 16, stride=8, seed=7, epoch=1)]
    assert sorted(sum(other, [])) == sorted(sum(again, [])) and other != again
    assert (
        len(list(ds.iter_windows(3, 16, stride=8, drop_last=True)))
        == 2
        == ds.num_batches(3, 16, stride=8, drop_last=True)
    )
    # Data-parallel shares: disjoint, equal sized, together the (trimmed) permutation.
    r0 = np.concatenate([b.index for b in ds.iter_windows(2, 16, stride=8, rank=0, world_size=2)])
    r1 = np.concatenate([b.index for b in ds.iter_windows(2, 16, stride=8, rank=1, world_size=2)])
    assert len(r0) == len(r1) == 3 and not set(r0) & set(r1)


def test_split_by_road_seed() -> None:
    train, val = split_road_seeds([5, 1, 2, 2, 3, 4, 6, 7, 8, 9, 10], 0.2, seed=0)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert sorted(train + val) == list(range(1, 11))
    assert split_road_seeds(range(10), 0.2, seed=0) == split_road_seeds(range(10), 0.2, seed=0)
    assert split_road_seeds([3], 0.5) == ([3], [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_road_seeds([1, 2], 1.0)


def test_corrupt_truncated_and_missing_files_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path, {1: 12, 2: 12, 3: 12}, per_chunk=1)
    chunk = tmp_path / "chunk_000001.npz"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="chunk_000001.npz.*(corrupt|truncated)"):
        DemoDataset(tmp_path)
    with pytest.raises(DatasetError, match="chunk_000001.npz.*cannot read"):
        DemoDataset(tmp_path, verify=False)
    DemoDataset(tmp_path, road_seeds=[1, 3])  # the intact chunks still load
    chunk.unlink()
    with pytest.raises(DatasetError, match="chunk_000001.npz.*missing"):
        DemoDataset(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DatasetError, match="manifest.json.*corrupt"):
        DemoDataset(tmp_path)
    with pytest.raises(DatasetError, match="no dataset manifest"):
        DemoDataset(tmp_path / "nowhere")


def test_interrupted_writer_keeps_finished_chunks_and_resumes(tmp_path: Path) -> None:
    eps = [_episode(r, 15) for r in range(6)]
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(tmp_path, episodes_per_chunk=2) as writer:
            for ep in eps[:3]:
                writer.add(ep)
            raise KeyboardInterrupt
    assert not list(tmp_path.glob("*.tmp"))  # nothing half-written
    ds = DemoDataset(tmp_path)
    assert ds.num_episodes == 3  # the partial chunk is flushed on the way out
    writer = DatasetWriter(tmp_path, episodes_per_chunk=2)
    assert writer.keys == {e.key for e in eps[:3]}
    with pytest.raises(ValueError, match="already in"):
        writer.add(eps[0])
    with pytest.raises(ValueError, match="images are"):
        writer.add(_episode(9, 10, h=7))
    for ep in eps[3:]:
        writer.add(ep)
    writer.close()
    assert DemoDataset(tmp_path).road_seeds == list(range(6))


def test_episode_validation() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Episode(images=np.zeros((3, 4, 4, 3), np.float32), labels=np.zeros(3), actions=np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        Episode(images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.full(3, np.nan), actions=np.zeros(3))
    with pytest.raises(ValueError, match=r"labels must be \(T=3"):
        Episode(images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.zeros(4), actions=np.zeros(3))


def test_summary_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, {1: 20, 2: 30})
    info = summarize_dataset(tmp_path, verify=True)
    assert info["episodes"] == 2 and info["steps"] == 50 and info["roads"] == 2 and info["completed"] == 1
    assert info["label_abs_max"] == pytest.approx((2000 + 29) / 1e4)
    assert dataset_main(["summary", str(tmp_path), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "episodes  2 on 2 roads" in out and "steps     50" in out
    assert dataset_main(["summary", str(tmp_path / "missing")]) == 2
    assert "no dataset manifest" in capsys.readouterr().err
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["metadata"] == {"test": True}


def test_collect_cli_with_workers_is_deterministic_and_resumes(tmp_path: Path) -> None:
    env = "{image_height: 16, image_width: 32, road_length: 30.0}"
    common = ["--env.kwargs", env, "--max_steps", "40", "--episodes_per_chunk", "1", "--no-progress"]
    assert (
        dataset_main(["collect", "--out", str(tmp_path / "a"), "--num_roads", "2", "--workers", "2", *common])
        == 0
    )
    # Resume: the two finished roads are skipped, only road 2 is collected (in-process this time).
    argv = [
        "collect",
        "--out",
        str(tmp_path / "a"),
        "--num_roads",
        "3",
        "--workers",
        "0",
        "--resume",
        *common,
    ]
    assert dataset_main(argv) == 0
    assert (
        dataset_main(["collect", "--out", str(tmp_path / "b"), "--num_roads", "3", "--workers", "0", *common])
        == 0
    )
    assert (
        dataset_main(["collect", "--out", str(tmp_path / "b"), "--num_roads", "3", *common]) == 2
    )  # no --resume
    a, b = DemoDataset(tmp_path / "a"), DemoDataset(tmp_path / "b")
    assert [e["key"] for e in a.episodes] == [f"expert/road{r}/ep0" for r in range(3)]
    assert len(read_manifest(tmp_path / "a")["chunks"]) == 3
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.images.shape == (120, 16, 32, 3) and a.info["curvature_ahead"].shape[0] == 120
    # Executed actions carry the injected noise; labels are the expert's clean actions at the same states.
    assert np.abs(a.actions - a.labels).max() > 0.01
