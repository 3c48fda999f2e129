"""LaneKeeping env: Gymnasium/sb3 checkers, determinism, physics sanity, the info contract, vector envs."""

from __future__ import annotations

import math
import pickle
import warnings
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import pytest

import ltc_control.envs as lenvs
from ltc_control.envs import CAR, ENV_IDS, LaneKeepingEnv, Road, Segment
from ltc_control.envs.scene import build_model

CONTRACT_KEYS = (
    "lateral_offset",
    "heading_error",
    "curvature",
    "curvature_ahead",
    "lookahead_distances",
    "distance",
    "road_length",
    "speed",
    "position",
    "yaw",
    "steering",
    "lane_departure",
    "road_seed",
    "wheelbase",
    "max_steer",
)
ARC_R = 25.0
ARC_ROAD = [Segment.arc(120.0, 1.0 / ARC_R)]  # a left arc from the origin: centre at (0, ARC_R)


def _lane_follower(info: dict[str, Any]) -> np.ndarray:
    """A plain centre-line follower: curvature feed-forward + heading and front-axle offset feedback."""
    kappa = 0.5 * (info["curvature"] + info["curvature_ahead"][0])
    delta = (
        math.atan(info["wheelbase"] * kappa)
        - info["heading_error"]
        - math.atan2(info["front_lateral_offset"], info["speed"] + 0.5)
    )
    return np.array([np.clip(delta / info["max_steer"], -1.0, 1.0)], dtype=np.float32)


def _run(env: gym.Env, policy: Any, max_steps: int) -> tuple[int, bool, bool, dict[str, Any], float]:
    obs, info = env.reset(seed=0)
    max_lat = abs(info["lateral_offset"])
    for n in range(1, max_steps + 1):
        obs, _, terminated, truncated, info = env.step(policy(info))
        max_lat = max(max_lat, abs(info["lateral_offset"]))
        if terminated or truncated:
            return n, terminated, truncated, info, max_lat
    return max_steps, False, False, info, max_lat


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_checkers_pass_for_every_registered_id(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(env_id, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_registration_and_spaces() -> None:
    # Every LTC/ id is in ENV_IDS, so the checker test above covers each of them.
    assert {i for i in gym.registry if i.startswith("LTC/")} == set(ENV_IDS)
    env = gym.make("LTC/LaneKeeping-v0")
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 128, 3), np.uint8)
    assert env.action_space.shape == (1,)
    assert env.unwrapped.metadata["render_fps"] == 30.0
    assert env.unwrapped.dt == pytest.approx(1 / 30)
    state = gym.make("LTC/LaneKeepingState-v0", throttle=True, lookahead_distances=(4.0, 8.0))
    assert state.observation_space.shape == (len(lenvs.STATE_FEATURES) + 2,)
    assert state.action_space.shape == (2,)
    env.close()


def test_same_seed_same_episode_different_seed_different_road() -> None:
    def rollout(seed: int) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        env = gym.make("LTC/LaneKeeping-v0", image_height=32, image_width=64)
        obs, info = env.reset(seed=seed)
        rng = np.random.default_rng(123)
        observations, infos = [obs], [info]
        for _ in range(15):
            obs, _, _, _, info = env.step(rng.uniform(-1, 1, size=1))
            observations.append(obs)
            infos.append(info)
        env.close()
        return observations, infos

    o1, i1 = rollout(5)
    o2, i2 = rollout(5)
    o3, i3 = rollout(6)
    for a, b in zip(o1, o2):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(i1, i2):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (i1[0]["road_seed"], i3[0]["road_seed"]) == (5, 6)  # reset(seed=k) drives road k
    assert any(not np.array_equal(a, b) for a, b in zip(o1, o3))
    # Different roads, not just different labels.
    r5 = Road.generate(i1[0]["road_seed"], LaneKeepingEnv().road_config)
    r6 = Road.generate(i3[0]["road_seed"], LaneKeepingEnv().road_config)
    n = min(len(r5.s), len(r6.s))
    assert np.abs(r5.points[:n] - r6.points[:n]).max() > 5.0


def test_model_compiles_and_runs_one_second_without_warnings() -> None:
    road = Road.generate(4)
    model = build_model(road, lane_width=3.75, timestep=1 / 210)
    data = mujoco.MjData(model)
    rng = np.random.default_rng(0)
    mujoco.mj_forward(model, data)
    for _ in range(210):
        data.ctrl[:] = rng.uniform(model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1])
        mujoco.mj_step(model, data)
    assert data.time == pytest.approx(1.0)
    assert [int(w.number) for w in data.warning] == [0] * len(data.warning)
    assert np.all(np.isfinite(data.qpos))

    env = gym.make("LTC/LaneKeepingState-v0").unwrapped
    env.reset(seed=1)
    for _ in range(30):
        env.step(env.action_space.sample())
    assert env.data.time == pytest.approx(1.0)
    assert [int(w.number) for w in env.data.warning] == [0] * len(env.data.warning)


def test_car_constants_match_the_asset() -> None:
    env = gym.make("LTC/LaneKeepingState-v0").unwrapped
    env.reset(seed=0)
    m = env.model
    fl, rl, fr = (m.body(n).pos for n in ("knuckle_fl", "wheel_rl", "knuckle_fr"))
    assert fl[0] - rl[0] == pytest.approx(CAR.wheelbase)
    assert fl[1] - fr[1] == pytest.approx(CAR.track)
    assert fl[0] == pytest.approx(CAR.front_axle)
    assert m.geom("tyre_fl").size[0] == pytest.approx(CAR.wheel_radius)
    # The joint range must admit the inner wheel's Ackermann angle at full lock.
    inner = math.atan(
        CAR.wheelbase * math.tan(CAR.max_steer) / (CAR.wheelbase - CAR.track / 2 * math.tan(0.5))
    )
    assert m.jnt_range[m.joint("steer_fl").id][1] > inner > CAR.max_steer


def test_zero_steering_leaves_lane_and_lane_follower_does_not() -> None:
    env = gym.make("LTC/LaneKeepingState-v0", road_length=90.0)
    n0, term0, _, info0, _ = _run(env, lambda info: np.zeros(1, np.float32), 400)
    assert term0 and info0["lane_departure"]
    assert info0["distance"] < 60.0
    n1, term1, trunc1, info1, max_lat = _run(env, _lane_follower, 1000)
    assert trunc1 and not term1
    assert info1["distance"] >= 90.0
    assert max_lat < 0.8
    assert n1 > n0


def test_default_road_is_long_and_curvy_enough() -> None:
    env = gym.make("LTC/LaneKeepingState-v0")
    n, term, trunc, info, max_lat = _run(env, _lane_follower, 3000)
    assert trunc and not term
    assert info["distance"] >= 250.0 and info["road_length"] == 300.0
    # about road_length / target_speed * 30 Hz steps: the speed servo holds 4.5 m/s.
    assert 300 / 4.5 * 30 * 0.97 < n < 300 / 4.5 * 30 * 1.05
    assert info["speed"] == pytest.approx(4.5, abs=0.1)
    assert max_lat < 0.8
    _, term0, _, info0, _ = _run(env, lambda info: np.zeros(1, np.float32), 3000)
    assert term0 and info0["distance"] < 100.0


def test_lateral_offset_on_hand_built_straight_road() -> None:
    env = gym.make("LTC/LaneKeepingState-v0", road_segments=[(400.0,)], road_length=100.0)
    _, info = env.reset(seed=0, options={"initial_lateral": 0.8, "initial_heading": 0.05})
    assert info["lateral_offset"] == pytest.approx(0.8, abs=1e-9)
    assert info["heading_error"] == pytest.approx(0.05, abs=1e-9)
    assert info["road_seed"] == -1 and info["curvature"] == 0.0
    for _ in range(20):
        _, _, _, _, info = env.step(np.array([-0.3], np.float32))
        x, y = info["position"]
        assert info["lateral_offset"] == pytest.approx(y, abs=1e-9)
        assert info["heading_error"] == pytest.approx(info["yaw"], abs=1e-9)
        assert info["distance"] == pytest.approx(x - 5.0, abs=1e-9)


def test_lateral_offset_on_hand_built_arc_road() -> None:
    env = gym.make("LTC/LaneKeepingState-v0", road_segments=ARC_ROAD, road_length=60.0).unwrapped
    _, info = env.reset(seed=0, options={"initial_lateral": -0.6})
    centre = np.array([0.0, ARC_R])
    assert info["lateral_offset"] == pytest.approx(-0.6, abs=1e-4)
    assert info["curvature"] == pytest.approx(1 / ARC_R)
    np.testing.assert_allclose(info["curvature_ahead"], 1 / ARC_R)
    for k in range(40):
        _, _, _, _, info = env.step(np.array([0.4 if k < 20 else -0.2], np.float32))
        exact_lat = ARC_R - float(np.linalg.norm(info["position"] - centre))
        assert info["lateral_offset"] == pytest.approx(exact_lat, abs=2e-4)
        rel = info["position"] - centre
        angle = math.atan2(rel[0], -rel[1])  # angle travelled around the centre
        assert info["distance"] == pytest.approx(ARC_R * angle - 5.0, abs=5e-3)
        x, y, yaw, speed = env.car_pose()
        assert (x, y) == (info["position"][0], info["position"][1]) and yaw == info["yaw"]
        assert info["heading_error"] == pytest.approx(lenvs.wrap_angle(yaw - angle), abs=5e-4)


def test_info_contract_types_and_lookahead() -> None:
    env = gym.make("LTC/LaneKeeping-v0", lookahead_distances=(3.0, 9.0, 27.0)).unwrapped
    _, info = env.reset(seed=2)
    for _ in range(45):
        _, _, _, _, info = env.step(np.array([0.05], np.float32))
    for key in CONTRACT_KEYS:
        assert key in info, key
    for key in ("lateral_offset", "heading_error", "curvature", "distance", "speed", "yaw", "steering"):
        assert type(info[key]) is float, key
    assert type(info["lane_departure"]) is bool and type(info["road_seed"]) is int
    np.testing.assert_array_equal(info["lookahead_distances"], [3.0, 9.0, 27.0])
    expected = env.road.curvature_at(info["road_s"] + np.array([3.0, 9.0, 27.0]))
    np.testing.assert_allclose(info["curvature_ahead"], expected, atol=1e-12)
    assert info["wheelbase"] == 2.6 and info["max_steer"] == 0.5
    assert info["time"] == pytest.approx(1.5)
    assert env.road.points.shape == (len(env.road.s), 2)
    assert env.road.curvature.shape == env.road.heading.shape == env.road.s.shape
    proj = env.road.project(info["position"])
    assert proj.lateral == pytest.approx(info["lateral_offset"], abs=1e-9)


def test_actions_clip_rate_limit_and_bad_actions_raise() -> None:
    env = gym.make("LTC/LaneKeepingState-v0").unwrapped
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([7.0]))
    # Rate limit 1 rad/s on a 0.5 rad range at 30 Hz: one step moves the command by 1/15.
    assert info["steering"] == pytest.approx(1.0 / 15.0, abs=1e-9)
    for _ in range(30):
        _, _, _, _, info = env.step(np.array([7.0]))
    assert info["steering"] == 1.0
    assert info["steering_angle"] == pytest.approx(CAR.max_steer, abs=0.01)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan]))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.inf]))
    with pytest.raises(ValueError, match="1 value"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"road_sed": 3})
    fresh = LaneKeepingEnv(observation="state")
    with pytest.raises(RuntimeError, match="reset"):
        fresh.step(np.zeros(1))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"observation": "pixels"}, "observation"),
        ({"image_height": 4}, "image_height"),
        ({"control_hz": 0}, "control_hz"),
        ({"curvature_range": (0.05, 0.5)}, "too tight"),
        ({"road_options": {"arc_lenght": (1, 2)}}, "unknown road_options"),
        ({"visuals": {"road_colour": (1, 1, 1)}}, "unknown visuals"),
        ({"visual_randomization": {"hue": 1.0}}, "unknown visual_randomization"),
        ({"lookahead_distances": (5.0, 100.0)}, "lookahead"),
        ({"road_segments": [(30.0,)]}, "road is 30.0 m"),
        ({"target_speed": 20.0}, "max_speed"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LaneKeepingEnv(**kwargs)


def test_speed_servo_and_throttle() -> None:
    env = gym.make("LTC/LaneKeepingState-v0", target_speed=3.0, road_segments=[(400.0,)], road_length=150.0)
    env.reset(seed=0)
    for _ in range(60):
        _, _, _, _, info = env.step(np.zeros(1))
    assert info["speed"] == pytest.approx(3.0, abs=0.05)
    tenv = gym.make("LTC/LaneKeepingState-v0", throttle=True, road_segments=[(400.0,)], road_length=150.0)
    tenv.reset(seed=0)
    for _ in range(90):
        _, _, _, _, info = tenv.step(np.array([0.0, 1.0]))
    assert info["target_speed"] == 10.0 and info["speed"] > 7.0
    for _ in range(120):
        _, _, _, _, info = tenv.step(np.array([0.0, -1.0]))
    assert abs(info["speed"]) < 0.3


def test_reward_is_progress_minus_lateral_penalty() -> None:
    env = gym.make(
        "LTC/LaneKeepingState-v0", road_segments=[(400.0,)], road_length=100.0, lateral_penalty=2.0
    )
    _, info = env.reset(seed=0, options={"initial_lateral": 1.0})
    _, reward, _, _, info2 = env.step(np.zeros(1))
    expected = (info2["distance"] - info["distance"]) - 2.0 * info2["lateral_offset"] ** 2 / 30.0
    assert reward == pytest.approx(expected, abs=1e-12)
    assert info2["distance"] - info["distance"] == pytest.approx(4.5 / 30, abs=0.01)


def test_render_views_and_visual_randomization() -> None:
    env = gym.make("LTC/LaneKeeping-v0", render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    chase = env.render()
    assert chase.shape == (240, 320, 3) and chase.dtype == np.uint8
    assert chase.std() > 10.0 and obs.std() > 10.0
    top = gym.make("LTC/LaneKeeping-v0", render_mode="rgb_array", render_camera="top")
    top.reset(seed=0)
    assert np.abs(top.render().astype(int) - chase.astype(int)).mean() > 10.0
    rand = gym.make("LTC/LaneKeepingRandomized-v0")
    images = [rand.reset(seed=s)[0].astype(int) for s in range(3)]
    assert np.abs(images[0] - images[1]).mean() > 3.0 and np.abs(images[1] - images[2]).mean() > 3.0
    with pytest.warns(UserWarning, match="render_mode=None"):
        assert gym.make("LTC/LaneKeeping-v0").unwrapped.render() is None
    # close() frees the renderer; the env still resets (a new renderer is made on demand).
    env.close()
    assert env.unwrapped._renderer is None
    obs2, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs2, obs)
    for e in (env, top, rand):
        e.close()


def test_pickle_round_trip_mid_episode() -> None:
    env = gym.make("LTC/LaneKeeping-v0", image_height=32, image_width=64).unwrapped
    blank = pickle.loads(pickle.dumps(env))
    assert blank.data is None
    env.reset(seed=3)
    for _ in range(10):
        env.step(np.array([0.3]))
    clone = pickle.loads(pickle.dumps(env))
    for a in (0.2, -0.4, 0.0):
        o1, r1, t1, u1, i1 = env.step(np.array([a]))
        o2, r2, t2, u2, i2 = clone.step(np.array([a]))
        np.testing.assert_array_equal(o1, o2)
        assert (r1, t1, u1) == (r2, t2, u2)
        assert i1["lateral_offset"] == i2["lateral_offset"]
    env.close()
    clone.close()
    wrapped = pickle.loads(pickle.dumps(gym.make("LTC/LaneKeepingState-v0", lane_width=3.5)))
    assert wrapped.unwrapped.lane_width == 3.5
    assert wrapped.reset(seed=1)[1]["road_seed"] == 1


def test_async_vector_env_steps_with_two_workers() -> None:
    fns = [lambda: gym.make("LTC/LaneKeeping-v0", image_height=32, image_width=64) for _ in range(2)]
    venv = gym.vector.AsyncVectorEnv(fns)
    obs, infos = venv.reset(seed=[10, 11])
    assert obs.shape == (2, 32, 64, 3) and obs.dtype == np.uint8
    for _ in range(5):
        obs, rewards, term, trunc, infos = venv.step(np.array([[0.2], [-0.2]], np.float32))
    assert infos["lateral_offset"].shape == (2,)
    assert infos["curvature_ahead"].shape == (2, 4)
    assert infos["lateral_offset"][0] > 0 > infos["lateral_offset"][1]
    assert np.all(rewards > 0.1)
    venv.close()


def test_sb3_subproc_vec_env_steps() -> None:
    from stable_baselines3.common.vec_env import SubprocVecEnv

    fns = [lambda: gym.make("LTC/LaneKeeping-v0", image_height=32, image_width=64) for _ in range(2)]
    venv = SubprocVecEnv(fns, start_method="fork")
    venv.seed(4)
    obs = venv.reset()
    assert obs.shape == (2, 32, 64, 3)
    for _ in range(3):
        obs, rewards, dones, infos = venv.step(np.zeros((2, 1), np.float32))
    assert len(infos) == 2 and infos[0]["road_seed"] != infos[1]["road_seed"]
    assert np.all(rewards > 0.1) and not dones.any()
    venv.close()


def test_flipped_car_terminates() -> None:
    env = gym.make("LTC/LaneKeepingState-v0", road_segments=[(400.0,)], road_length=100.0).unwrapped
    env.reset(seed=0)
    # Roll the chassis onto its roof (180 degrees about x) and lift it clear of the ground.
    env.data.qpos[2] = 2.0
    env.data.qpos[3:7] = (0.0, 1.0, 0.0, 0.0)
    env.data.qvel[:] = 0.0
    _, _, terminated, truncated, info = env.step(np.zeros(1))
    assert info["flipped"] and terminated and not truncated
    assert not info["lane_departure"]


def test_reset_options_select_road_and_visuals() -> None:
    env = gym.make("LTC/LaneKeeping-v0", image_height=32, image_width=64).unwrapped
    obs_a, info_a = env.reset(seed=0, options={"road_seed": 77})
    assert info_a["road_seed"] == 77
    np.testing.assert_array_equal(env.road.points, Road.generate(77, env.road_config).points)
    obs_b, info_b = env.reset(seed=0, options={"road_seed": 77, "visuals": {"road_rgb": (0.6, 0.6, 0.6)}})
    assert info_b["lateral_offset"] == info_a["lateral_offset"]
    assert obs_b.astype(int).sum() > obs_a.astype(int).sum()  # a lighter road
    # A deliberate camera offset (evaluation's robustness test) moves the view; randomisation keeps it.
    obs_cam, _ = env.reset(
        seed=0, options={"road_seed": 77, "visuals": {"camera_pos_offset": (0.0, 0.5, 0.0)}}
    )
    assert np.abs(obs_cam.astype(int) - obs_a.astype(int)).mean() > 2.0
    rand = LaneKeepingEnv(randomize_visuals=True, visuals={"camera_pos_offset": (0.0, 0.5, 0.0)})
    rand.reset(seed=0)
    assert rand.visuals.camera_pos_offset[1] == pytest.approx(0.5, abs=0.031)
    _, info_c = env.reset(seed=0, options={"road": [(400.0,)], "initial_lateral": 0.4})
    assert info_c["road_seed"] == -1 and info_c["lateral_offset"] == pytest.approx(0.4, abs=1e-9)
    noisy = gym.make("LTC/LaneKeepingState-v0", initial_lateral_noise=0.5, initial_heading_noise=0.1)
    starts = [noisy.reset(seed=s)[1] for s in range(5)]
    lats = [i["lateral_offset"] for i in starts]
    assert max(abs(v) for v in lats) <= 0.5 and len(set(lats)) == 5
    assert max(abs(i["heading_error"]) for i in starts) <= 0.1 + 1e-9
    with pytest.raises(ValueError, match="road seeds"):
        env.reset(options={"road_seed": -1})
    env.close()


def test_headless_gl_default_is_set_by_any_ltc_control_import(tmp_path: Any) -> None:
    """MuJoCo fixes its GL backend at its own import: a process whose first MuJoCo user is another module (the
    HalfCheetah benchmark env here) must still render the camera, so importing any ``ltc_control`` module sets
    ``MUJOCO_GL=egl`` on a machine without a display (it used to be set only by ``ltc_control.envs``)."""
    import os
    import subprocess
    import sys

    code = (
        "import os\n"
        "from ltc_control.agents.sb3_envs import make_novel_env\n"
        "assert os.environ['MUJOCO_GL'] == 'egl', os.environ.get('MUJOCO_GL')\n"
        "make_novel_env('HalfCheetahNoVel-v5').reset(seed=0)\n"
        "import gymnasium as gym, ltc_control.envs\n"
        "env = gym.make('LTC/LaneKeeping-v0', image_height=16, image_width=32, road_length=20.0)\n"
        "obs, _ = env.reset(seed=0)\n"
        "assert obs.shape == (16, 32, 3) and obs.std() > 0\n"
        "print('rendered')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "rendered" in out.stdout, out.stderr[-2000:]
