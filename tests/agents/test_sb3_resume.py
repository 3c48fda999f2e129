"""``agents.sb3_resume``: exact resume of sb3 on-policy training from a rollout-start snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ltc_control.agents.sb3_resume import (
    ActionLog,
    ResumeError,
    install_snapshots,
    load_snapshot,
    restore_snapshot,
    save_snapshot,
)
from ltc_control.policy import Policy, PolicyConfig


def _model() -> tuple[Any, ActionLog]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    log = ActionLog(make_vec_env("Pendulum-v1", n_envs=2, seed=3))
    model = PPO("MlpPolicy", log, n_steps=32, batch_size=32, n_epochs=2, seed=1, device="cpu")
    return model, log


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.policy.state_dict().items()}


def test_ppo_resumed_from_a_snapshot_ends_with_the_same_weights(tmp_path: Path) -> None:
    reference, _ = _model()
    reference.learn(256)
    expected = _weights(reference)

    model, log = _model()
    saved: list[tuple[dict[str, Any], np.ndarray]] = []
    install_snapshots(model, log, lambda state, actions: saved.append((state, actions)), lambda: "main")
    from stable_baselines3.common.callbacks import BaseCallback

    class _Interrupt(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 150:
                raise KeyboardInterrupt
            return True

    with pytest.raises(KeyboardInterrupt):  # interrupted mid-rollout; the last snapshot is at its start
        model.learn(256, callback=_Interrupt())
    state, actions = saved[-1]
    assert state["num_timesteps"] == 128 and actions.shape == (64, 2, 1) and state["total_timesteps"] == 256
    actor = Policy(PolicyConfig(observation="vector", vector_size=3, action_size=1))  # any Policy: a label
    save_snapshot(tmp_path / "resume", actor, state, actions, {"note": "test"})
    loaded, meta = load_snapshot(tmp_path / "resume")
    assert meta["note"] == "test"

    fresh, fresh_log = _model()
    restore_snapshot(fresh, fresh_log, loaded)
    fresh.learn(int(loaded["total_timesteps"]) - fresh.num_timesteps, reset_num_timesteps=False)
    got = _weights(fresh)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)

    other, other_log = _model()
    tampered = {**loaded, "last_obs": loaded["last_obs"] + 1e-6}
    with pytest.raises(ResumeError, match="did not reproduce the saved observations"):
        restore_snapshot(other, other_log, tampered)
