"""Road geometry: hand-built roads against closed-form positions, generator determinism and validation."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from ltc_control.envs import Road, RoadGenerationConfig, Segment, wrap_angle

R = 20.0  # radius of the test arc (m)


def _straight_then_arc() -> Road:
    return Road.from_segments([Segment.straight(20.0), Segment.arc(40.0, 1.0 / R)])


def test_straight_projection_is_exact() -> None:
    road = _straight_then_arc()
    for x, y in [(3.0, 0.0), (7.5, 1.3), (15.25, -0.9)]:
        proj = road.project([x, y])
        assert proj.s == pytest.approx(x, abs=1e-9)
        assert proj.lateral == pytest.approx(y, abs=1e-9)
        assert proj.heading == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("angle,offset", [(0.3, 0.7), (0.9, -1.2), (1.5, 0.0), (1.8, 1.9)])
def test_arc_projection_matches_circle(angle: float, offset: float) -> None:
    """A left arc of radius R starting at (20, 0) heading +x has its centre at (20, R)."""
    road = _straight_then_arc()
    centre = np.array([20.0, R])
    p = centre + (R - offset) * np.array([math.sin(angle), -math.cos(angle)])
    proj = road.project(p)
    assert proj.lateral == pytest.approx(offset, abs=2e-4)
    assert proj.s == pytest.approx(20.0 + R * angle, abs=5e-3)
    assert proj.heading == pytest.approx(angle, abs=5e-4)
    # The sampled centre line itself lies on the circle.
    on_arc = road.points[road.s >= 20.0]
    assert np.abs(np.linalg.norm(on_arc - centre, axis=1) - R).max() < 1e-9


def test_right_arc_and_ramp_geometry() -> None:
    road = Road.from_segments([(10.0,), (12.0, 0.0, -0.05), (30.0, -0.05)])
    assert road.length == pytest.approx(52.0)
    # Linear curvature ramp: heading change = mean curvature x length.
    assert road.heading_at(22.0) == pytest.approx(-0.05 * 12.0 / 2.0, abs=1e-12)
    assert road.curvature_at(16.0) == pytest.approx(-0.025, abs=1e-12)
    assert road.heading_at(52.0) == pytest.approx(-0.3 - 1.5, abs=1e-12)
    # Points on a right-hand arc project with negative lateral offset when displaced to the right.
    s = 40.0
    p = road.point_at(s) + 0.5 * np.array([math.sin(road.heading_at(s)), -math.cos(road.heading_at(s))])
    proj = road.project(p)
    assert proj.lateral == pytest.approx(-0.5, abs=2e-4)
    assert proj.s == pytest.approx(s, abs=1e-2)


def test_project_with_hint_stays_on_branch() -> None:
    road = Road.generate(3)
    s = 150.0
    p = road.point_at(s)
    assert road.project(p, s_hint=s - 3.0).s == pytest.approx(s, abs=1e-6)
    assert road.project(p).s == pytest.approx(s, abs=1e-6)


def test_generator_is_deterministic_and_seed_dependent() -> None:
    a, b, c = Road.generate(7), Road.generate(7), Road.generate(8)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.segments == b.segments
    assert a.seed == 7
    assert a.points.shape != c.points.shape or np.abs(a.points - c.points).max() > 1.0


@pytest.mark.parametrize("seed", range(6))
def test_generated_roads_respect_config(seed: int) -> None:
    cfg = RoadGenerationConfig(length=340.0, curvature_range=(0.02, 0.06))
    road = Road.generate(seed, cfg)
    assert road.length >= 340.0
    assert np.abs(road.curvature).max() <= 0.06 + 1e-12
    # Curvy: some arc reaches at least the minimum curvature; the lead-in is straight.
    assert np.abs(road.curvature).max() >= 0.02
    assert np.all(road.curvature[road.s <= cfg.lead_in] == 0.0)
    # Continuous heading and curvature (clothoid-like transitions, no kinks).
    assert np.abs(np.diff(road.curvature)).max() <= cfg.ramp_rate * road.ds + 1e-12
    dh = np.diff(road.heading)
    assert np.abs(dh).max() <= 0.06 * road.ds + 1e-9
    # The road never comes back near itself (checked on a 2 m grid, as the generator does).
    pts, ss = road.points[::10], road.s[::10]
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    far = np.abs(ss[:, None] - ss[None]) > 3 * cfg.min_clearance
    assert d[far].min() >= cfg.min_clearance


def test_road_pickles() -> None:
    road = Road.generate(11)
    back = pickle.loads(pickle.dumps(road))
    np.testing.assert_array_equal(back.points, road.points)
    assert back.seed == 11


def test_bad_road_inputs_raise() -> None:
    with pytest.raises(ValueError, match="length"):
        Segment.straight(-1.0)
    with pytest.raises(ValueError, match="finite"):
        Segment.arc(5.0, float("nan"))
    with pytest.raises(ValueError, match="at least one"):
        Road([])
    with pytest.raises(ValueError, match="expected Segment"):
        Road([(10.0, 0.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="curvature_start"):
        Road.from_segments([(1.0, 2.0, 3.0, 4.0)])
    with pytest.raises(ValueError, match="curvature_range"):
        RoadGenerationConfig(curvature_range=(0.05, 0.01))
    with pytest.raises(ValueError, match="non-negative int"):
        Road.generate(-3)
    with pytest.raises(ValueError, match="finite"):
        _straight_then_arc().project([float("nan"), 0.0])


def test_wrap_angle() -> None:
    assert wrap_angle(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    assert wrap_angle(-0.25) == pytest.approx(-0.25)


def test_every_default_road_turns_early() -> None:
    """Driving straight ahead leaves the 3.75 m lane within 30 m on every one of 30 default roads."""
    from ltc_control.envs import LaneKeepingEnv

    cfg = LaneKeepingEnv(observation="state").road_config
    for seed in range(30):
        road = Road.generate(seed, cfg)
        s_hint, left_at = 5.0, None
        for x in np.arange(5.0, 60.0, 1.0):
            proj = road.project([x, 0.0], s_hint=s_hint)
            s_hint = proj.s
            if abs(proj.lateral) > 3.75 / 2:
                left_at = x - 5.0
                break
        assert left_at is not None and left_at <= 30.0, (seed, left_at)
