"""Export of sb3 liquid actors (LtcPolicy / CnnLtcPolicy) to ONNX + torch.export, parity against sb3."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from sb3_contrib import RecurrentPPO  # noqa: E402

import ltc_control.envs  # noqa: E402,F401  (registers the LTC/* ids)
from ltc_control import cli  # noqa: E402
from ltc_control.agents.sb3 import CnnLtcPolicy, LtcPolicy  # noqa: E402
from ltc_control.agents.sb3_envs import make_novel_env  # noqa: E402
from ltc_control.agents.sb3_export import export_sb3  # noqa: E402
from ltc_control.export import onnx_session  # noqa: E402

TOL = 1e-5
SMALL_LTC = {
    "kind": "ltc",
    "ode_unfolds": 3,
    "wiring": {
        "preset": "ncp",
        "inter": 6,
        "command": 4,
        "sensory_fanout": 3,
        "inter_fanout": 2,
        "recurrent_command_synapses": 3,
        "motor_fanin": 3,
    },
}
CAMERA_ENV = {
    "id": "LTC/LaneKeeping-v0",
    "kwargs": {"image_height": 16, "image_width": 32, "road_length": 30.0},
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(env, policy, **policy_kwargs) -> RecurrentPPO:
    return RecurrentPPO(
        policy,
        env,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs={"controller": SMALL_LTC, **policy_kwargs},
    )


def _parity_ok(manifest: dict) -> None:
    parity = manifest["parity"]
    assert parity["passed"] and parity["steps"] == 1000
    for res in parity["results"].values():
        assert res["max_abs_action"] <= TOL and res["max_abs_state"] <= TOL, res


def test_cnn_ltc_policy_zip_exports_through_the_cli(tmp_path: Path) -> None:
    """CnnLtcPolicy trained a little on LaneKeeping-v0, saved as a zip, exported by ``ltc-control export``;
    parity with the sb3 actor over a 1000-step closed-loop rollout, and ORT's action clipped to the action
    space equals ``model.predict(deterministic=True)``."""
    env = gym.make(CAMERA_ENV["id"], **CAMERA_ENV["kwargs"])
    perception = {
        "channels": (4, 8, 4),
        "kernels": (3, 3, 3),
        "strides": (2, 2, 1),
        "features_per_channel": 2,
    }
    model = _model(env, CnnLtcPolicy, features_extractor_kwargs={"perception": perception})
    model.learn(32)
    model.save(tmp_path / "ppo.zip")
    out = tmp_path / "out"
    argv = ["export", str(tmp_path / "ppo.zip"), "--out", str(out), "--env", CAMERA_ENV["id"]]
    assert cli.main([*argv, "--env-kwargs", json.dumps(CAMERA_ENV["kwargs"])]) == 0
    spec = json.loads((out / "export.json").read_text())
    _parity_ok(spec)
    assert "closed-loop rollout in LTC/LaneKeeping-v0" in spec["parity"]["trace"]
    assert spec["source"]["kind"] == "sb3" and len(spec["source"]["sha256"]) == 64
    assert spec["inputs"][0]["shape"] == ["batch", 16, 32, 3] and spec["inputs"][0]["dtype"] == "uint8"
    assert "Gaussian mean" in spec["action"]["semantics"][0]
    sess = onnx_session(out / "policy.onnx")
    obs, _ = env.reset(seed=5)
    state_sb3, state = None, np.zeros((1, spec["state"]["size"]), np.float32)
    for t in range(20):
        expected, state_sb3 = model.predict(
            obs, state=state_sb3, episode_start=np.array([t == 0]), deterministic=True
        )
        action, state = sess.run(
            None, {"observation": obs[None], "state": state, "dt": np.ones(1, np.float32)}
        )
        np.testing.assert_allclose(np.clip(action[0], -1, 1), expected, atol=TOL, rtol=0)
        np.testing.assert_allclose(state[0], state_sb3[0][0, 0, : state.shape[1]], atol=TOL, rtol=0)
        obs, *_ = env.step(expected)
    env.close()


def test_vector_ltc_policy_exports_with_synthetic_parity(tmp_path: Path) -> None:
    """LtcPolicy on a non-lane-keeping env (no env fits: the sb3 actor on synthetic inputs) and a discrete
    one (the exported outputs are the logits)."""
    model = _model(make_novel_env("PendulumNoVel-v1"), LtcPolicy)
    result = export_sb3(model, tmp_path / "pendulum")
    _parity_ok(result.manifest)
    assert result.manifest["parity"]["trace"].startswith("sb3 actor on synthetic inputs")
    # the sample squashed (the default with the default controller): the export's action is tanh(mean)
    squashed = _model(make_novel_env("PendulumNoVel-v1"), LtcPolicy, action_squash="tanh_sample")
    squashed.learn(32)
    with torch.no_grad():
        squashed.policy.action_net.bias.fill_(2.0)  # a mean past the bound: tanh(mean) differs from the clip
    result = export_sb3(squashed, tmp_path / "squashed", formats="onnx")
    _parity_ok(result.manifest)
    assert "tanh of the Gaussian mean" in result.manifest["action"]["semantics"][0]
    sess = onnx_session(tmp_path / "squashed" / "policy.onnx")
    state_sb3, state = None, np.zeros((1, result.manifest["state"]["size"]), np.float32)
    for t, obs in enumerate(np.random.default_rng(4).normal(size=(10, 2)).astype(np.float32)):
        expected, state_sb3 = squashed.predict(
            obs, state=state_sb3, episode_start=np.array([t == 0]), deterministic=True
        )
        action, state = sess.run(
            None, {"observation": obs[None], "state": state, "dt": np.ones(1, np.float32)}
        )
        np.testing.assert_allclose(action[0], expected, atol=TOL, rtol=0)
        assert abs(float(expected[0])) < 1.0  # tanh(mean), not a clipped mean at the bound
    discrete = _model("CartPole-v1", LtcPolicy)
    result = export_sb3(discrete, tmp_path / "cartpole", formats="onnx")
    _parity_ok(result.manifest)
    assert result.manifest["action"]["size"] == 2 and "argmax" in result.manifest["action"]["semantics"][0]
    sess = onnx_session(tmp_path / "cartpole" / "policy.onnx")
    obs = np.array([0.01, -0.02, 0.03, 0.0], np.float32)
    logits, _ = sess.run(
        None,
        {
            "observation": obs[None],
            "state": np.zeros((1, result.manifest["state"]["size"]), np.float32),
            "dt": np.ones(1, np.float32),
        },
    )
    expected, _ = discrete.predict(obs, deterministic=True)
    assert int(np.argmax(logits[0])) == int(expected)
