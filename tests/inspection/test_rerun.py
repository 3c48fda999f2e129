"""record_rerun: the .rrd read back with Rerun's own reader (rerun.chunk.RrdReader) matches the trace."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltc_control.inspection.rerun_log import neuron_entity, record_rerun, sim_time
from ltc_control.inspection.trace import Trace

rr = pytest.importorskip("rerun", reason="pip install 'ltc-control[rerun]'")
pa = pytest.importorskip("pyarrow")
RrdReader = pytest.importorskip(
    "rerun.chunk", reason="reading .rrd back needs rerun.chunk (tested: rerun-sdk 0.41)"
).RrdReader


def _read(path: Path) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, list[Any]]]]:
    """``(temporal, static)``: entity -> column -> values in step order (temporal) or as logged (static)."""
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    static: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for chunk in RrdReader(path).stream().to_chunks():
        record = chunk.to_record_batch()
        # duration index columns (sim_time) as integer nanoseconds: exact, and pyarrow cannot make every
        # nanosecond duration a datetime.timedelta
        batch = {
            name: (column.cast(pa.int64()) if pa.types.is_duration(column.type) else column).to_pylist()
            for name, column in zip(record.schema.names, record.columns)
        }
        names = [n for n in batch if n != "rerun.controls.RowId"]
        for r in range(chunk.num_rows):
            row = {n: batch[n][r] for n in names}
            if chunk.is_static:
                for n, v in row.items():
                    static[chunk.entity_path][n].append(v)
            else:
                rows[chunk.entity_path].append((row["step"], row))
    temporal: dict[str, dict[str, list[Any]]] = {}
    for entity, items in rows.items():
        items.sort(key=lambda item: item[0])
        columns: dict[str, list[Any]] = defaultdict(list)
        for _, row in items:
            for n, v in row.items():
                columns[n].append(v)
        temporal[entity] = dict(columns)
    return temporal, {k: dict(v) for k, v in static.items()}


@pytest.fixture(scope="module")
def rich_trace(ncp_trace: Trace) -> Trace:
    rng = np.random.default_rng(0)
    steps = ncp_trace.num_steps
    info = dict(ncp_trace.info)
    info["speed"] = np.linspace(5.0, 8.0, steps)
    info["time"] = 0.05 * np.arange(1, steps + 1)
    return dataclasses.replace(
        ncp_trace, observations=rng.integers(0, 256, (steps, 12, 20, 3), dtype=np.uint8), info=info
    )


@pytest.fixture(scope="module")
def recording(rich_trace: Trace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    steps = rich_trace.num_steps
    chase = np.zeros((steps, 24, 32, 3), np.uint8)
    chase[:, :, :16] = 200
    saliency = np.random.default_rng(1).random((10, 6, 10)).astype(np.float32)
    expert = np.cos(np.arange(steps) / 9.0)
    path = record_rerun(
        rich_trace,
        tmp_path_factory.mktemp("rerun") / "out",
        chase=chase,
        saliency=saliency,
        expert_steering=expert,
    )
    return (path, *_read(path))


def test_file_and_timelines(recording: tuple[Path, Any, Any], rich_trace: Trace) -> None:
    path, temporal, _ = recording
    assert path.suffix == ".rrd" and path.stat().st_size > 0
    steps = rich_trace.num_steps
    lateral = temporal["/lateral_error"]
    assert lateral["step"] == list(range(steps))
    # sim_time is the env clock (info["time"]) as a duration column
    seconds = np.array(lateral["sim_time"]) * 1e-9
    np.testing.assert_allclose(seconds, rich_trace.info["time"], atol=1e-9)
    for columns in temporal.values():
        assert (
            set(columns) >= {"step", "sim_time"} and "log_time" not in columns and "log_tick" not in columns
        )


def test_the_viewer_can_load_it(recording: tuple[Path, Any, Any]) -> None:
    """``rerun rrd verify``: the viewer's own loader reads and interprets every chunk of the file."""
    import subprocess
    import sys

    path = recording[0]
    command = [sys.executable, "-m", "rerun", "rrd", "verify", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "verified without error" in done.stdout + done.stderr, done.stderr


def test_scalar_series_match_the_trace(recording: tuple[Path, Any, Any], rich_trace: Trace) -> None:
    _, temporal, static = recording

    def series(entity: str) -> np.ndarray:
        return np.array([v[0] for v in temporal[entity]["Scalars:scalars"]])

    np.testing.assert_allclose(series("/steering/policy"), rich_trace.steering)
    np.testing.assert_allclose(series("/steering/expert"), np.cos(np.arange(rich_trace.num_steps) / 9.0))
    np.testing.assert_allclose(series("/lateral_error"), rich_trace.info["lateral_offset"])
    np.testing.assert_allclose(series("/speed"), rich_trace.info["speed"])
    assert rich_trace.tau is not None
    state_entities = [e for e in temporal if e.startswith("/neurons/state/")]
    tau_entities = [e for e in temporal if e.startswith("/neurons/tau/")]
    assert len(state_entities) == len(tau_entities) == rich_trace.num_neurons == 19
    for i, (name, role) in enumerate(zip(rich_trace.neuron_names, rich_trace.neuron_roles)):
        np.testing.assert_allclose(series(neuron_entity("state", role, name)), rich_trace.state[:, i])
        np.testing.assert_allclose(series(neuron_entity("tau", role, name)), rich_trace.tau[:, i])
        assert static[neuron_entity("state", role, name)]["SeriesLines:names"] == [[name]]
    # grouped by layer: one sub-tree per role
    layers = {e.split("/")[3] for e in state_entities}
    assert layers == set(rich_trace.neuron_roles)


def test_images_map_and_wiring(recording: tuple[Path, Any, Any], rich_trace: Trace) -> None:
    _, temporal, static = recording
    assert rich_trace.observations is not None
    dash = temporal["/camera/dash"]
    assert len(dash["Image:buffer"]) == rich_trace.num_steps
    first = np.array(dash["Image:buffer"][5][0], dtype=np.uint8).reshape(12, 20, 3)
    np.testing.assert_array_equal(first, rich_trace.observations[5])  # the dash camera is lossless
    assert len(temporal["/camera/chase"]["EncodedImage:blob"]) == rich_trace.num_steps
    assert len(temporal["/camera/saliency"]["Image:buffer"]) == 10
    car = temporal["/map/car"]["Points2D:positions"]
    np.testing.assert_allclose(np.array([p[0] for p in car]), rich_trace.info["position"], rtol=1e-6)
    assert rich_trace.road_points is not None
    road = np.array(static["/map/road"]["LineStrips2D:strips"][0][0])
    np.testing.assert_allclose(road, rich_trace.road_points, rtol=1e-6)
    # wiring: every neuron and sensory input is a node, every synapse an edge; node colours change per step
    assert rich_trace.adjacency is not None and rich_trace.sensory_adjacency is not None
    nodes = static["/wiring"]["GraphNodes:node_ids"][0]
    assert len(nodes) == rich_trace.num_neurons + rich_trace.sensory_adjacency.shape[0]
    assert set(rich_trace.neuron_names) <= set(nodes)
    edges = static["/wiring"]["GraphEdges:edges"][0]
    synapses = np.count_nonzero(rich_trace.adjacency) + np.count_nonzero(rich_trace.sensory_adjacency)
    assert len(edges) == synapses
    colors = temporal["/wiring"]["GraphNodes:colors"]
    assert len(colors) == rich_trace.num_steps and all(len(c) == len(nodes) for c in colors)
    assert colors[0] != colors[-1]


def test_multi_episode_sim_time_is_monotonic(ncp_trace: Trace) -> None:
    episode = np.repeat([0, 1], [50, ncp_trace.num_steps - 50])
    trace = dataclasses.replace(ncp_trace, episode=episode)
    seconds = sim_time(trace)
    assert np.all(np.diff(seconds) > 0)
    np.testing.assert_allclose(np.diff(seconds), 1 / 30, rtol=1e-6)


def test_bad_arguments(ncp_trace: Trace, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="saliency needs the dash frames"):
        record_rerun(ncp_trace, tmp_path / "x.rrd", saliency=np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="expert_steering"):
        record_rerun(ncp_trace, tmp_path / "x.rrd", expert_steering=np.zeros(3))
    # a trace without camera frames still records (no /camera entities)
    temporal, _ = _read(record_rerun(ncp_trace, tmp_path / "plain.rrd"))
    assert not any(e.startswith("/camera") for e in temporal)


# ---------------------------------------------------------------------------------------------- the CLIs
def _scalars(temporal: dict[str, Any], entity: str) -> np.ndarray:
    return np.array([v[0] for v in temporal[entity]["Scalars:scalars"]])


def test_rollout_writes_a_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from ltc_control.agents.rollout import RolloutConfig, rollout, rollout_main
    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    cfg = RolloutConfig(
        seed=1000,
        episodes=2,
        max_steps=4,
        video=None,
        rerun=str(tmp_path / "drive.rrd"),
        env_kwargs={"road_length": 10.0},
        progress=False,
    )
    result = rollout(Policy(PolicyConfig(image_shape=(64, 128, 3))), cfg)
    assert result.rerun == tmp_path / "drive.rrd" and result.video is None
    temporal, static = _read(result.rerun)
    assert temporal["/steering/policy"]["step"] == list(range(8))  # 2 episodes x 4 steps on one timeline
    assert np.all(np.diff(temporal["/steering/policy"]["sim_time"]) > 0)
    np.testing.assert_allclose(
        _scalars(temporal, "/steering/policy"), np.concatenate([ep.actions[:, 0] for ep in result.episodes])
    )
    assert (
        len(temporal["/camera/dash"]["Image:buffer"])
        == len(temporal["/camera/chase"]["EncodedImage:blob"])
        == 8
    )
    assert len(_scalars(temporal, "/steering/expert")) == 8
    assert sum(e.startswith("/neurons/state/") for e in temporal) == 19
    assert sum(e.startswith("/neurons/tau/") for e in temporal) == 19
    assert len(temporal["/wiring"]["GraphNodes:colors"]) == 8 and "/map/road" in static
    # the CLI, with an agent that has no neurons: the expert drives, so its steering is the expert's
    code = rollout_main(
        [
            "expert",
            "--env",
            "LTC/LaneKeepingState-v0",
            "--env_kwargs",
            "{road_length: 8}",
            "--max_steps",
            "5",
            "--out",
            str(tmp_path / "run"),
            "--rerun",
            str(tmp_path / "expert.rrd"),
            "--no-progress",
        ]
    )
    assert code == 0 and "rerun " + str(tmp_path / "expert.rrd") in capsys.readouterr().out
    temporal, _ = _read(tmp_path / "expert.rrd")
    np.testing.assert_allclose(
        _scalars(temporal, "/steering/policy"), _scalars(temporal, "/steering/expert"), atol=1e-6
    )
    assert not any(e.startswith("/neurons") or e == "/camera/dash" for e in temporal)
    assert len(temporal["/camera/chase"]["EncodedImage:blob"]) == 5
    with pytest.raises(ValueError, match=r"\.rrd"):
        RolloutConfig(rerun="drive.mp4")


def test_inspect_writes_a_recording(tmp_path: Path) -> None:
    import torch

    from ltc_control.agents.inspect import inspect_main
    from ltc_control.checkpoint import save_checkpoint
    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", Policy(PolicyConfig()), {})
    out = tmp_path / "insp"
    common = ["--formats", "png", "--threads", "1", "--no-progress", "--rerun"]
    args = ["--steps", "12", "--saliency_frames", "5", "--noise", "0.1", "--no-video"]
    assert inspect_main([str(ckpt), "--out", str(out), *args, *common]) == 0
    trace = Trace.load(out / "trace.npz")
    temporal, _ = _read(out / "recording.rrd")
    assert len(temporal["/camera/saliency"]["Image:buffer"]) == 5
    assert len(temporal["/camera/dash"]["Image:buffer"]) == trace.num_steps == 12
    np.testing.assert_allclose(_scalars(temporal, "/steering/policy"), trace.steering)
    assert trace.tau is not None
    np.testing.assert_allclose(_scalars(temporal, neuron_entity("tau", "motor", "motor_0")), trace.tau[:, 0])
    # from a saved trace (no policy: no saliency overlay)
    assert inspect_main([str(out / "trace.npz"), "--out", str(tmp_path / "again"), *common]) == 0
    temporal, _ = _read(tmp_path / "again" / "recording.rrd")
    assert "/camera/saliency" not in temporal and len(temporal["/camera/dash"]["Image:buffer"]) == 12
