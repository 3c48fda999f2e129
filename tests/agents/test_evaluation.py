"""Tests of closed-loop evaluation: metrics, noise protocol, episodes and the parallel evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ltc_control.agents.evaluation import (
    ConstantAgent,
    EpisodeMetrics,
    EpisodeResult,
    Perturbation,
    episode_metrics,
    parse_floats,
    parse_seeds,
    summarize,
)


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
    s = summarize(eps)
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
    single = summarize(eps[:1])
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
