"""Tests of closed-loop evaluation: metrics, noise protocol, episodes and the parallel evaluator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ltc_control.agents.episode import ConstantAgent, EpisodeResult
from ltc_control.agents.evaluate_cli import parse_floats, parse_seeds
from ltc_control.agents.metrics import EpisodeMetrics, episode_metrics, summarize_levels
from ltc_control.agents.perturbations import Perturbation


def _hand_episode() -> EpisodeResult:
    return EpisodeResult(
        seed=7,
        lateral_error=np.array([0.1, -0.2, 0.3, -0.4]),
        steering=np.array([0.0, 0.5, 0.25, 0.25]),
        actions=np.array([[0.0], [0.5], [0.25], [0.25]], dtype=np.float32),
        speed=np.full(4, 5.0),
        distance=np.array([11.0, 12.0, 13.0, 14.0]),
        positions=np.zeros((4, 2)),
        rewards=np.zeros(4),
        lane_departure=np.array([False, False, True, True]),
        start_distance=10.0,
        road_length=100.0,
        terminated=True,
    )


def test_episode_metrics_hand_computed() -> None:
    m = episode_metrics(_hand_episode())
    assert m.steps == 4
    assert m.departed and m.departures == 1 and not m.completed
    assert m.distance_m == pytest.approx(3.0)  # 13 - 10 at the first departure step
    assert m.total_distance_m == pytest.approx(4.0)
    assert m.mean_abs_lateral_m == pytest.approx(0.25)
    assert m.max_abs_lateral_m == pytest.approx(0.4)
    assert m.steering_smoothness == pytest.approx((0.5 + 0.25 + 0.0) / 3)


def test_departures_count_rising_edges_and_completion() -> None:
    ep = _hand_episode()
    ep.lane_departure = np.array([True, False, True, True])
    m = episode_metrics(ep)
    assert m.departures == 2
    assert m.distance_m == pytest.approx(1.0)
    clean = _hand_episode()
    clean.lane_departure[:] = False
    clean.distance = np.array([50.0, 80.0, 99.0, 99.5])
    assert episode_metrics(clean).completed  # within 1 m of the 100 m road's end
    assert not episode_metrics(clean, completion_tolerance=0.1).completed


def _metrics(seed: int, departures: int, km: float, completed: bool, lat: float) -> EpisodeMetrics:
    return EpisodeMetrics(
        seed=seed,
        noise_variance=0.1,
        steps=10,
        distance_m=km * 1000.0,
        total_distance_m=km * 1000.0,
        departures=departures,
        departed=departures > 0,
        completed=completed,
        mean_abs_lateral_m=lat,
        max_abs_lateral_m=2 * lat,
        steering_smoothness=0.01,
    )


def test_summarize_hand_computed_with_bootstrap_interval() -> None:
    eps = [_metrics(1, 1, 0.004, False, 0.2), _metrics(2, 0, 0.996, True, 0.4)]
    s = summarize_levels(eps)
    assert s.episodes == 2 and s.departures == 1
    assert s.total_km == pytest.approx(1.0)
    assert s.crashes_per_km.value == pytest.approx(1.0)
    # Resampling two episodes: {A,A} -> 1/0.008 = 250, {A,B} -> 1, {B,B} -> 0, each at least 1/4 of the time.
    assert s.crashes_per_km.lo == pytest.approx(0.0)
    assert s.crashes_per_km.hi == pytest.approx(250.0)
    assert s.completion_rate.value == pytest.approx(0.5)
    assert (s.completion_rate.lo, s.completion_rate.hi) == (0.0, 1.0)
    assert s.mean_abs_lateral_m.value == pytest.approx(0.3)
    assert s.max_abs_lateral_m.value == pytest.approx(0.6)
    assert s.worst_abs_lateral_m == pytest.approx(0.8)
    assert s.distance_before_departure_m.value == pytest.approx(500.0)
    assert s.noise_variance == pytest.approx(0.1)
    single = summarize_levels(eps[:1])
    assert single.crashes_per_km.value == single.crashes_per_km.lo == single.crashes_per_km.hi == 250.0


def test_noise_identical_for_same_seed_and_different_otherwise() -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    p = Perturbation(noise_variance=0.1, seed=3)
    a = p.apply(img, road_seed=1000, step=5)
    b = Perturbation(noise_variance=0.1, seed=3).apply(img, road_seed=1000, step=5)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, Perturbation(noise_variance=0.1, seed=4).apply(img, 1000, 5))
    assert not np.array_equal(a, p.apply(img, 1001, 5))
    assert not np.array_equal(a, p.apply(img, 1000, 6))
    assert Perturbation().apply(img, 1000, 5) is img


def test_noise_has_the_requested_variance_on_the_unit_scale() -> None:
    gray = np.full((200, 200, 3), 128, dtype=np.uint8)
    out = Perturbation(noise_variance=0.01, seed=0).apply(gray, 1, 0)
    diff = out.astype(np.float64) / 255.0 - 128 / 255.0
    assert abs(diff.mean()) < 0.002
    assert diff.var() == pytest.approx(0.01, rel=0.03)
    # variance 0.3 on a mid-grey image: std 0.55, so clipping to [0, 1] saturates many pixels
    heavy = Perturbation(noise_variance=0.3, seed=0).apply(gray, 1, 0)
    frac_saturated = np.mean((heavy == 0) | (heavy == 255))
    assert 0.3 < frac_saturated < 0.5  # 2 * P(Z > 0.5 / 0.548) = 0.36


def test_other_perturbations() -> None:
    img = np.full((40, 40, 3), 100, dtype=np.uint8)
    bright = Perturbation(brightness=0.2).apply(img, 0, 0)
    assert int(bright[0, 0, 0]) == round((100 / 255 + 0.2) * 255)
    occluded = Perturbation(occlusion_patches=2, occlusion_size=0.25, seed=1).apply(img, 0, 0)
    black = np.all(occluded == 0, axis=2)
    assert 100 <= black.sum() <= 200  # two 10x10 patches, possibly overlapping
    edge = np.zeros((40, 40, 3), dtype=np.uint8)
    edge[:, 20:] = 255
    blurred = Perturbation(blur_sigma=2.0).apply(edge, 0, 0)
    assert 0 < blurred[0, 19, 0] < 255 and blurred[0, 0, 0] == 0 and blurred[0, 39, 0] == 255
    vec = np.zeros(1000, dtype=np.float32)
    noisy = Perturbation(noise_variance=0.04).apply(vec, 0, 0)
    assert noisy.dtype == np.float32 and noisy.std() == pytest.approx(0.2, rel=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [{"noise_variance": -0.1}, {"noise_variance": float("nan")}, {"occlusion_size": 0.0}, {"seed": -1}],
)
def test_bad_perturbation_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="Perturbation"):
        Perturbation(**kwargs)  # type: ignore[arg-type]


def test_parsers() -> None:
    assert parse_seeds("1000-1003") == [1000, 1001, 1002, 1003]
    assert parse_seeds("1,5-6, 9") == [1, 5, 6, 9]
    assert parse_floats("0,0.1,0.2,0.3") == [0.0, 0.1, 0.2, 0.3]
    for bad in ("10-5", "a-b", ""):
        with pytest.raises(ValueError, match="seed"):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="noise"):
        parse_floats("0,x")


def test_constant_agent() -> None:
    agent = ConstantAgent([0.25])
    agent.reset()
    out = agent.act(np.zeros((4, 4, 3), np.uint8), {})
    np.testing.assert_array_equal(out, np.array([0.25], np.float32))
    out[0] = 9.0
    assert agent.act(None, {})[0] == 0.25  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        ConstantAgent([math.nan])


# ------------------------------------------------------------------------------ closed loop on the real env
# Short, curvy roads keep every episode to a few hundred steps: the expert must hold the lane on them, and a
# car that never steers leaves the lane before the end (the road starts with a 12 m straight, then arcs).
SHORT_CURVY = {"road_length": 24.0, "curvature_range": (0.04, 0.066)}


def test_expert_never_departs_and_zero_steering_departs_on_curves(tmp_path: Path) -> None:
    from ltc_control.agents.evaluation import EvalReport, evaluate, plot_crashes_per_km

    seeds = [1000, 1001]
    expert = evaluate(
        "expert",
        "LTC/LaneKeeping-v0",
        seeds,
        noise_levels=(0.0, 0.3),
        workers=0,
        env_kwargs=SHORT_CURVY,
        progress=False,
    )
    for level in expert.levels:
        assert level.episodes == 2 and level.departures == 0
        assert level.crashes_per_km.value == 0.0
        assert level.completion_rate.value == 1.0
        assert level.distance_before_departure_m.value >= 23.0
        assert level.max_abs_lateral_m.value < 0.6  # lane half-width is 1.875 m
    # the expert reads privileged info, not the image: noise must not change what it does
    assert [e.mean_abs_lateral_m for e in expert.episodes[:2]] == [
        e.mean_abs_lateral_m for e in expert.episodes[2:]
    ]

    const = evaluate(
        ConstantAgent([0.0]),
        "LTC/LaneKeeping-v0",
        seeds,
        noise_levels=(0.0,),
        workers=0,
        env_kwargs=SHORT_CURVY,
        progress=False,
        out_dir=tmp_path,
    )
    level = const.levels[0]
    assert level.departures == 2 and level.completion_rate.value == 0.0
    assert 12.0 < level.distance_before_departure_m.value < 23.0  # after the straight lead-in, before the end
    km = sum(e.total_distance_m for e in const.episodes) / 1000.0
    assert level.crashes_per_km.value == pytest.approx(2 / km)
    assert level.steering_smoothness.value == 0.0
    assert level.worst_abs_lateral_m > 1.875
    doc = json.loads((tmp_path / "evaluation.json").read_text())
    assert doc["levels"][0]["departures"] == 2 and len(doc["episodes"]) == 2
    assert (tmp_path / "crashes_per_km.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("noise_variance,episodes,departures") and len(rows) == 2
    loaded = EvalReport.load(tmp_path)
    assert loaded.to_dict() == json.loads(json.dumps(const.to_dict()))  # exact round trip through the JSON
    assert loaded.levels[0].crashes_per_km == level.crashes_per_km
    both = plot_crashes_per_km([expert, loaded], tmp_path / "compare.png")
    assert both.stat().st_size > 10_000
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        EvalReport.load(tmp_path / "bad.json")


def test_noise_reaches_the_agent_exactly_as_the_protocol_says() -> None:
    from ltc_control.agents.episode import make_env, run_episode

    env = make_env("LTC/LaneKeeping-v0", {"road_length": 10.0})
    try:
        agent = ConstantAgent([0.1])
        clean = run_episode(env, agent, seed=1003, max_steps=12, record=True)
        noisy = run_episode(env, agent, seed=1003, noise=0.2, max_steps=12, record=True)
        again = run_episode(env, agent, seed=1003, noise=Perturbation(0.2), max_steps=12, record=True)
        other = run_episode(env, agent, seed=1003, noise=Perturbation(0.2, seed=1), max_steps=12, record=True)
    finally:
        env.close()
    assert clean.frames is not None and noisy.frames is not None and again.frames is not None
    assert clean.frames.shape == (12, 64, 128, 3) and clean.frames.dtype == np.uint8
    # the agent ignores its input, so the car drives the same path and noisy frame t must be
    # clean frame t + the noise drawn for (noise seed, road seed, t)
    np.testing.assert_array_equal(clean.lateral_error, noisy.lateral_error)
    for t in range(12):
        np.testing.assert_array_equal(noisy.frames[t], Perturbation(0.2).apply(clean.frames[t], 1003, t))
    np.testing.assert_array_equal(noisy.frames, again.frames)
    assert other.frames is not None and not np.array_equal(noisy.frames, other.frames)
    diff = noisy.frames.astype(np.float64) / 255 - clean.frames.astype(np.float64) / 255
    assert 0.2 < diff.std() < 0.45  # std 0.447 before clipping to [0, 1]


def test_checkpoint_policy_in_worker_processes_matches_in_process(tmp_path: Path) -> None:
    import torch

    from ltc_control.agents.episode import PolicyAgent, make_env
    from ltc_control.agents.evaluation import evaluate
    from ltc_control.checkpoint import save_checkpoint
    from ltc_control.controllers import ControllerConfig
    from ltc_control.policy import Policy, PolicyConfig

    kwargs = {"observation": "state", "road_length": 15.0}
    probe = make_env("LTC/LaneKeeping-v0", kwargs)
    size = int(probe.observation_space.shape[0])
    probe.close()
    torch.manual_seed(0)
    # the reference LTC path: the comparison must not depend on which compiled kernel each process builds
    controller = ControllerConfig(ltc_implementation="reference")
    policy = Policy(PolicyConfig(observation="vector", vector_size=size, controller=controller))
    save_checkpoint(tmp_path / "ckpt", policy, {"note": "untrained"})
    common = dict(noise_levels=(0.0, 0.05), env_kwargs=kwargs, max_steps=40, progress=False)
    serial = evaluate(PolicyAgent(policy), "LTC/LaneKeeping-v0", [1000, 1001], workers=0, **common)
    parallel = evaluate(str(tmp_path / "ckpt"), "LTC/LaneKeeping-v0", [1000, 1001], workers=2, **common)
    assert [e.seed for e in parallel.episodes] == [1000, 1001, 1000, 1001]
    for a, b in zip(serial.episodes, parallel.episodes):
        assert a == b  # same roads, same noise, same policy -> identical metrics, whatever the process
    # vector noise changes what the policy sees, so its steering differs between the levels
    assert serial.episodes[0].steering_smoothness != serial.episodes[2].steering_smoothness


def test_evaluate_cli_writes_the_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ltc_control.agents.evaluate_cli import evaluate_main

    out = tmp_path / "eval"
    code = evaluate_main(
        [
            "expert",
            "--env",
            "LTC/LaneKeepingState-v0",
            "--seeds",
            "1000-1001",
            "--noise",
            "0,0.1",
            "--workers",
            "0",
            "--out",
            str(out),
            "--env_kwargs",
            "{road_length: 12}",
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "crashes/km" in text and "noise var" in text
    doc = json.loads((out / "evaluation.json").read_text())
    assert [lv["noise_variance"] for lv in doc["levels"]] == [0.0, 0.1]
    assert all(lv["departures"] == 0 for lv in doc["levels"])
    assert doc["seeds"] == [1000, 1001]
    for name in (
        "summary.csv",
        "episodes.csv",
        "crashes_per_km.png",
        "config.yaml",
        "command.txt",
        "git.txt",
    ):
        assert (out / name).is_file(), name
    assert len((out / "episodes.csv").read_text().splitlines()) == 5
    with pytest.raises(SystemExit):
        evaluate_main(["/nonexistent/ckpt", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit):
        evaluate_main(["expert", "--seeds", "9-1", "--out", str(tmp_path / "y")])


def test_bad_inputs_raise_clear_errors() -> None:
    from ltc_control.agents.episode import make_agent, make_env, run_episode
    from ltc_control.agents.evaluation import evaluate

    with pytest.raises(FileNotFoundError, match="checkpoint"):
        make_agent("/nonexistent/checkpoint")
    with pytest.raises(TypeError, match="reset"):
        make_agent(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no_such_option"):
        make_env("LTC/LaneKeepingState-v0", {"no_such_option": 1})
    env = make_env("LTC/LaneKeepingState-v0", {"road_length": 10.0})
    try:
        with pytest.raises(ValueError, match=r"shape \(2,\).*\(1,\)"):
            run_episode(env, ConstantAgent([0.0, 0.0]), seed=1)
        with pytest.raises(ValueError, match="max_steps"):
            run_episode(env, ConstantAgent([0.0]), seed=1, max_steps=0)
    finally:
        env.close()
    with pytest.raises(ValueError, match="at least one road seed"):
        evaluate("expert", "LTC/LaneKeepingState-v0", [], workers=0)
    with pytest.raises(ValueError, match="distinct"):
        evaluate("expert", "LTC/LaneKeepingState-v0", [1], noise_levels=(0.1, 0.1), workers=0)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        evaluate("/nonexistent/ckpt", "LTC/LaneKeepingState-v0", [1], workers=2)
    with pytest.raises(TypeError, match="cannot be sent to worker processes"):
        evaluate(lambda: ConstantAgent([0.0]), "LTC/LaneKeepingState-v0", [1], workers=2)


def test_worker_failures_surface_as_the_original_error(tmp_path: Path) -> None:
    from ltc_control.agents import evaluation as ev

    (tmp_path / "empty").mkdir()
    # what a spawned worker runs: the initializer only stores the setup, the first episode builds the agent,
    # so a corrupt checkpoint reaches the caller as the loader's own error, not as a BrokenProcessPool
    ev._worker_init(str(tmp_path / "empty"), "LTC/LaneKeepingState-v0", {"road_length": 10.0}, "cpu", 1)
    try:
        with pytest.raises((FileNotFoundError, ValueError), match="model"):
            ev._worker_episode(1, Perturbation(), 5, 1.0)
        ev._worker_init(ConstantAgent([0.0]), "LTC/LaneKeepingState-v0", {"road_length": 10.0}, "cpu", 1)
        m = ev._worker_episode(1, Perturbation(), 5, 1.0)
        assert m.steps == 5 and m.seed == 1
    finally:
        if "env" in ev._WORKER:
            ev._WORKER["env"].close()
        ev._WORKER.clear()


def test_policy_is_wrapped_and_carries_its_state() -> None:
    import torch

    from ltc_control.agents.episode import PolicyAgent, make_agent
    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(observation="vector", vector_size=4))
    agent = make_agent(policy)  # a Policy has act(obs, state): it must be wrapped, not used as an Agent
    assert isinstance(agent, PolicyAgent)
    agent.reset()
    assert np.all(agent.neuron_activity() == 0.0)  # states start at zero
    obs = np.array([0.5, -0.2, 0.1, 0.3], np.float32)
    a1 = agent.act(obs, {})
    act2 = agent.neuron_activity().copy()
    a2 = agent.act(obs, {})
    state = policy.reset(1)
    r1, state = policy.act(obs, state)
    r2, state = policy.act(obs, state)
    np.testing.assert_allclose([a1, a2], [r1, r2], rtol=1e-6)  # same as driving the policy by hand
    np.testing.assert_allclose(agent.neuron_activity(), state[0, : agent.num_neurons].numpy(), rtol=1e-6)
    assert not np.allclose(act2, agent.neuron_activity())  # the recurrent state moved
    agent.reset()
    np.testing.assert_allclose(agent.act(obs, {}), a1, rtol=1e-6)  # reset -> same first action again


def test_camera_offset_moves_the_dash_camera() -> None:
    from ltc_control.agents.episode import make_env
    from ltc_control.agents.evaluation import _with_camera_offset

    kwargs = _with_camera_offset("LTC/LaneKeeping-v0", {"road_length": 10.0}, 0.5)
    assert kwargs["visuals"]["camera_pos_offset"] == (0.0, 0.5, 0.0)
    images = []
    for kw in ({"road_length": 10.0}, kwargs):
        env = make_env("LTC/LaneKeeping-v0", kw)
        try:
            images.append(env.reset(seed=5)[0].astype(int))
        finally:
            env.close()
    assert np.abs(images[0] - images[1]).mean() > 2.0
    assert _with_camera_offset("CarRacing-v3", {}, 0.2) == {"camera_offset": 0.2}


def test_dict_observations_get_image_noise_only() -> None:
    from ltc_control.agents.episode import make_env, run_episode

    seen: list[dict[str, np.ndarray]] = []

    class Recorder(ConstantAgent):
        def act(self, obs: dict[str, np.ndarray], info: object) -> np.ndarray:  # type: ignore[override]
            seen.append(obs)
            return super().act(obs, {})  # type: ignore[arg-type]

    env = make_env("LTC/LaneKeepingDict-v0", {"road_length": 10.0})
    try:
        clean = run_episode(env, Recorder([0.0]), seed=2, max_steps=3, record=True)
        noisy = run_episode(env, Recorder([0.0]), seed=2, noise=0.1, max_steps=3, record=True)
    finally:
        env.close()
    assert clean.frames is not None and clean.frames.shape == (3, 64, 128, 3)
    assert noisy.frames is not None and not np.array_equal(clean.frames, noisy.frames)
    for a, b in zip(seen[:3], seen[3:]):
        np.testing.assert_array_equal(a["state"], b["state"])  # the privileged vector is left alone
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).mean() > 20


def test_torch_threads_is_restored() -> None:
    import torch

    from ltc_control.agents.episode import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_worker_runs_torch_single_threaded_even_when_torch_was_not_imported(tmp_path: Path) -> None:
    """A spawned worker imports torch only while loading the checkpoint; its threads must still be set."""
    import subprocess
    import sys

    import torch

    from ltc_control.checkpoint import save_checkpoint
    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ckpt", Policy(PolicyConfig(observation="vector", vector_size=11)), {})
    code = (
        "import sys\n"
        "from ltc_control.agents import evaluation as ev\n"
        "assert 'torch' not in sys.modules\n"
        f"ev._worker_init({str(tmp_path / 'ckpt')!r}, 'LTC/LaneKeeping-v0',"
        " {'observation': 'state'}, 'cpu', 1)\n"
        "ev._worker_objects()\n"
        "import torch\n"
        "print('threads', torch.get_num_threads())\n"
    )
    env = {"OMP_NUM_THREADS": "2", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "threads 1" in out.stdout
