"""Tests of the privileged experts and the steering noise (``ltc_control.agents.experts``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltc_control.agents.experts import (
    ExpertConfig,
    NoiseConfig,
    NoisyAgent,
    PurePursuitExpert,
    StanleyExpert,
    SteeringNoise,
    make_expert,
)


def _info(lat: float = 0.0, head: float = 0.0, curv: float = 0.0, speed: float = 8.0) -> dict:
    return {"lateral_offset": lat, "heading_error": head, "curvature": curv, "speed": speed}


@pytest.mark.parametrize("kind", ["stanley", "pure_pursuit"])
def test_signs_follow_the_env_conventions(kind: str) -> None:
    expert = make_expert(ExpertConfig(kind=kind))
    assert expert.label(_info()) == 0.0
    assert expert.label(_info(lat=0.5)) < 0.0  # left of centre -> steer right
    assert expert.label(_info(lat=-0.5)) > 0.0
    assert expert.label(_info(head=0.1)) < 0.0  # pointing left -> steer right
    assert expert.label(_info(curv=0.02)) > 0.0  # left bend -> steer left
    assert expert.label(_info(lat=100.0)) == -1.0  # clipped to the action range
    action = expert.act(np.zeros((4, 4, 3), np.uint8), _info(lat=0.2))
    assert action.shape == (1,) and action.dtype == np.float32


def test_feedforward_is_exact_on_a_centred_car() -> None:
    cfg = ExpertConfig(wheelbase=2.5, max_steer=0.5)
    kappa = 0.04
    assert StanleyExpert(cfg).label(_info(curv=kappa)) == pytest.approx(math.atan(2.5 * kappa) / 0.5)
    preview = StanleyExpert(ExpertConfig(feedforward_preview=1))
    info = dict(_info(curv=0.0), curvature_ahead=np.array([0.0, 0.02, 0.05]))
    assert preview.label(info) == pytest.approx(math.atan(2.6 * 0.02) / 0.5)
    with pytest.raises(ValueError, match="feedforward_preview=5"):
        StanleyExpert(ExpertConfig(feedforward_preview=5)).label(info)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="valid kinds"):
        ExpertConfig(kind="mpc")
    with pytest.raises(ValueError, match="max_steer"):
        ExpertConfig(max_steer=0.0)
    with pytest.raises(KeyError, match="lateral_offset"):
        StanleyExpert().label({"speed": 1.0})
    with pytest.raises(ValueError, match="non-finite"):
        StanleyExpert().label(_info(lat=float("nan")))
    with pytest.raises(ValueError, match="burst_min_duration"):
        NoiseConfig(burst_min_duration=1.0, burst_max_duration=0.5)


def _drive_kinematic_bicycle(expert: StanleyExpert | PurePursuitExpert, steps: int = 1500) -> np.ndarray:
    """Drive a kinematic bicycle (L = 2.6 m, 8 m/s, dt = 1/30 s) around a 40 m-radius circle from an offset.

    The road is the circle of radius R about the origin, driven counter-clockwise (a left bend, kappa = 1/R).
    Returns the lateral offsets along the way.
    """
    radius, speed, dt, wheelbase, max_steer = 40.0, 8.0, 1.0 / 30.0, 2.6, 0.5
    x, y, yaw = (
        radius - 1.0,
        0.0,
        math.pi / 2 + 0.1,
    )  # 1 m left (inside), nose 0.1 rad left
    offsets = []
    for _ in range(steps):
        r = math.hypot(x, y)
        tangent = math.atan2(y, x) + math.pi / 2
        lateral = radius - r  # inside of a left bend is the left side
        heading = (yaw - tangent + math.pi) % (2 * math.pi) - math.pi
        steer = expert.label(_info(lateral, heading, 1.0 / radius, speed)) * max_steer
        x += speed * math.cos(yaw) * dt
        y += speed * math.sin(yaw) * dt
        yaw += speed / wheelbase * math.tan(steer) * dt
        offsets.append(lateral)
    return np.array(offsets)


@pytest.mark.parametrize("kind", ["stanley", "pure_pursuit"])
def test_expert_converges_to_the_centre_of_a_bend(kind: str) -> None:
    offsets = _drive_kinematic_bicycle(make_expert(ExpertConfig(kind=kind)))
    assert abs(offsets[0]) == pytest.approx(1.0)
    assert np.abs(offsets).max() < 1.3  # no overshoot out of a 1.75 m half-lane
    assert np.abs(offsets[-300:]).max() < 0.05  # settles on the centre line (feed-forward cancels the bend)


def test_ou_noise_is_seeded_and_has_the_configured_spread() -> None:
    cfg = NoiseConfig(ou_sigma=0.2, ou_theta=2.0, burst_probability=0.0, warmup_steps=0)
    a = SteeringNoise(cfg, dt=1 / 30, seed=3)
    b = SteeringNoise(cfg, dt=1 / 30, seed=3)
    xs = np.array([a.sample() for _ in range(30000)])
    assert np.array_equal(xs[:100], np.array([b.sample() for _ in range(100)]))
    assert xs.std() == pytest.approx(0.2, rel=0.1)
    assert abs(xs.mean()) < 0.03
    lag1 = np.corrcoef(xs[:-1], xs[1:])[0, 1]
    assert lag1 == pytest.approx(math.exp(-2.0 / 30), abs=0.02)  # OU autocorrelation over one step


def test_bursts_and_warmup() -> None:
    cfg = NoiseConfig(ou_sigma=0.0, burst_probability=2.0, burst_magnitude=0.6, warmup_steps=5)
    noise = SteeringNoise(cfg, dt=1 / 30, seed=0)
    xs = np.array([noise.sample() for _ in range(3000)])
    assert np.all(xs[:5] == 0.0)
    active = np.abs(xs) > 0
    assert 0.2 < active.mean() < 0.9  # ~2 bursts/s of 0.3-0.8 s
    assert np.all((np.abs(xs[active]) >= 0.3 - 1e-9) & (np.abs(xs[active]) <= 0.6 + 1e-9))
    noise.reset()
    assert noise.sample() == 0.0


def test_noisy_agent_executes_noise_but_labels_clean() -> None:
    expert = StanleyExpert()
    noise = SteeringNoise(NoiseConfig(ou_sigma=0.3, warmup_steps=0), dt=1 / 30, seed=1)
    agent = NoisyAgent(expert, noise)
    agent.reset()
    diffs = []
    for k in range(200):
        info = _info(lat=0.1 * math.sin(k / 10))
        executed = agent.act(None, info)
        assert agent.last_label == expert.label(info)
        diffs.append(float(executed[0]) - agent.last_label)
    assert np.std(diffs) > 0.1


@pytest.mark.parametrize("kind", ["stanley", "pure_pursuit"])
def test_expert_drives_held_out_roads_without_leaving_the_lane(kind: str) -> None:
    import gymnasium as gym

    import ltc_control.envs  # noqa: F401

    env = gym.make("LTC/LaneKeepingState-v0", road_length=100.0)
    expert = make_expert(ExpertConfig(kind=kind))
    for seed in (123_456, 123_457):
        obs, info = env.reset(seed=seed)
        worst = 0.0
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            worst = max(worst, abs(info["lateral_offset"]))
            if terminated or truncated:
                break
        assert not info["lane_departure"] and truncated
        assert info["distance"] >= 99.0
        assert worst < 0.6, (seed, worst)  # half lane width is 1.875 m
    env.close()
