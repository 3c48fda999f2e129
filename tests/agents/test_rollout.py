"""Tests of policy rollouts with video: decoded frame counts and sizes, panels, every controller kind, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltc_control.agents.episode import PolicyAgent, make_env
from ltc_control.agents.rollout import FrameComposer, RolloutConfig, rollout, rollout_main
from ltc_control.controllers import ControllerConfig
from ltc_control.policy import Policy, PolicyConfig
from ltc_control.video import ROLE_COLORS, read_video

SMALL = {"width": 320, "height": 240, "progress": False}


def _state_size() -> int:
    env = make_env("LTC/LaneKeepingState-v0", {"road_length": 10.0})
    try:
        return int(env.observation_space.shape[0])
    finally:
        env.close()


def test_ltc_policy_video_on_lane_keeping(tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(image_shape=(64, 128, 3)))
    path = tmp_path / "ltc.mp4"
    cfg = RolloutConfig(
        seed=1000, video=str(path), max_steps=5, slowmo=2, env_kwargs={"road_length": 10.0}, **SMALL
    )
    result = rollout(policy, cfg)
    assert result.video == path and result.codec in ("h264", "avc1", "mp4v")
    assert [ep.steps for ep in result.episodes] == [5]
    assert result.frames == 10 and result.fps == 30.0
    frames, fps, _ = read_video(path)
    assert frames.shape == (10, 240, 320, 3)  # 5 steps x slow motion 2, at the configured size
    assert fps == pytest.approx(30.0)
    # slow motion repeats each step's frame (up to the lossy codec)
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() < 2.0
    # 2 x 2 grid of 160 x 120 panels: camera (top-left) and chase view (top-right) show the rendered scene
    camera, chase = frames[0, :120, :160], frames[0, :120, 160:]
    assert camera.std() > 10 and chase.std() > 10
    # the neuron panel (bottom-right) shows the 19 NCP neurons in their role colours
    neurons = frames[-1, 120:, 160:].astype(int)
    for role in ("inter", "command", "motor"):
        close = np.abs(neurons - np.array(ROLE_COLORS[role])).sum(axis=2) < 60
        assert close.sum() > 5, role


def test_composer_draws_the_expert_only_when_given() -> None:
    comp = FrameComposer((480, 320), ("telemetry",), action_names=("steer",))
    info = {"lateral_offset": 0.3, "speed": 4.5, "distance": 3.0, "road_length": 10.0}
    with_expert = comp.compose(None, None, np.array([0.5]), info, "step 0", expert_action=-0.5)
    comp.new_episode()
    without = comp.compose(None, None, np.array([0.5]), info, "step 0", expert_action=None)
    orange = np.array([255, 170, 60])
    assert (np.abs(with_expert.astype(int) - orange).sum(axis=2) < 30).sum() > 200
    assert (np.abs(without.astype(int) - orange).sum(axis=2) < 30).sum() == 0
    assert with_expert.shape == (320, 480, 3)
    with pytest.raises(ValueError, match="unknown panels"):
        FrameComposer((480, 320), ("camera", "radar"))


@pytest.mark.parametrize("kind", ["ltc", "cfc", "lstm", "gru", "ctrnn", "mlp"])
def test_every_controller_kind_rolls_out_with_its_neurons(kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = Policy(
        PolicyConfig(
            observation="vector", vector_size=_state_size(), controller=ControllerConfig(kind=kind, units=8)
        )
    )
    agent = PolicyAgent(policy)
    cfg = RolloutConfig(
        env="LTC/LaneKeepingState-v0",
        seed=1001,
        video=str(tmp_path / f"{kind}.mp4"),
        max_steps=3,
        panels=("camera", "telemetry", "neurons"),
        env_kwargs={"road_length": 10.0},
        **SMALL,
    )
    result = rollout(agent, cfg)
    cell = policy.controller.cell
    assert agent.neuron_activity().shape == (cell.num_neurons,)
    assert np.all(np.isfinite(agent.neuron_activity()))
    frames, _, _ = read_video(result.video)  # type: ignore[arg-type]
    assert frames.shape == (3, 240, 320, 3)


def test_carracing_with_an_untrained_image_policy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(image_shape=(96, 96, 3), action_size=3))
    cfg = RolloutConfig(env="CarRacing-v3", seed=3, video=str(tmp_path / "car.mp4"), max_steps=4, **SMALL)
    result = rollout(policy, cfg)
    assert result.fps == 50.0  # CarRacing's render_fps
    frames, _, _ = read_video(tmp_path / "car.mp4")
    assert frames.shape == (4, 240, 320, 3)
    assert result.episodes[0].actions.shape == (4, 3)
    assert np.isnan(result.episodes[0].lateral_error).all()  # CarRacing reports no lane geometry
    wrong = Policy(PolicyConfig(image_shape=(96, 96, 3), action_size=1))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        rollout(
            wrong,
            RolloutConfig(env="CarRacing-v3", seed=3, video=str(tmp_path / "bad.mp4"), max_steps=2, **SMALL),
        )
    assert not (tmp_path / "bad.mp4").exists()  # a failed rollout leaves no partial video


def test_rollout_cli_with_checkpoint_and_expert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ltc_control.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "ckpt", Policy(PolicyConfig(observation="vector", vector_size=_state_size())), {}
    )
    out = tmp_path / "run"
    args = [
        "--env",
        "LTC/LaneKeepingState-v0",
        "--env_kwargs",
        "{road_length: 8}",
        "--max_steps",
        "4",
        "--width",
        "320",
        "--height",
        "240",
        "--no-progress",
    ]
    assert (
        rollout_main(
            [
                str(tmp_path / "ckpt"),
                *args,
                "--episodes",
                "2",
                "--out",
                str(out),
                "--video",
                str(tmp_path / "v.mp4"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "codec" in text and ("mp4v" in text or "avc1" in text)
    frames, _, _ = read_video(tmp_path / "v.mp4")
    assert frames.shape == (8, 240, 320, 3)  # 2 episodes x 4 steps
    episodes = json.loads((out / "episodes.json").read_text())
    assert [e["seed"] for e in episodes] == [1000, 1001] and all(e["steps"] == 4 for e in episodes)
    assert (out / "config.yaml").is_file() and (out / "command.txt").is_file()
    assert rollout_main(["expert", *args, "--out", str(tmp_path / "exp"), "--slowmo", "3"]) == 0
    frames, _, _ = read_video(tmp_path / "exp" / "rollout.mp4")
    assert frames.shape == (12, 240, 320, 3)
    with pytest.raises(SystemExit):
        rollout_main(["expert", "--panels", "camera", "radar", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit):
        rollout_main([str(tmp_path / "missing"), "--out", str(tmp_path / "bad2")])


def test_metrics_only_rollout_and_config_validation() -> None:
    from ltc_control.agents.episode import ConstantAgent

    cfg = RolloutConfig(
        env="LTC/LaneKeepingState-v0", video=None, max_steps=3, episodes=2, env_kwargs={"road_length": 10.0}
    )
    result = rollout(ConstantAgent([0.2]), dataclasses.replace(cfg, progress=False))
    assert result.video is None and result.codec is None and result.frames == 0
    assert [ep.seed for ep in result.episodes] == [1000, 1001]
    assert all(np.all(ep.steering == np.float32(0.2)) for ep in result.episodes)
    for bad, match in (
        ({"slowmo": 0}, "slowmo"),
        ({"panels": ()}, "panels"),
        ({"panels": ("camera", "camera")}, "repeat"),
        ({"video": "out.avi"}, "mp4"),
        ({"fps": 0.0}, "fps"),
        ({"episodes": 0}, "episodes"),
        ({"noise": -1.0}, "noise_variance"),
    ):
        with pytest.raises(ValueError, match=match):
            RolloutConfig(**bad)  # type: ignore[arg-type]
