"""Tests of the recurrent-PPO training diagnostics (ltc_control.agents.sb3_diagnostics)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

from ltc_control.agents.sb3 import LtcPolicy
from ltc_control.agents.sb3_diagnostics import GROUPS, RecurrentDiagnostics, parameter_group
from ltc_control.agents.sb3_envs import CueMemoryEnv

SMALL_NCP = {
    "preset": "ncp",
    "inter": 6,
    "command": 4,
    "sensory_fanout": 2,
    "inter_fanout": 2,
    "motor_fanin": 3,
}
MODELS: dict[str, tuple[Any, dict[str, Any] | None]] = {
    "ltc": (LtcPolicy, {"controller": {"kind": "ltc", "ode_unfolds": 2, "wiring": SMALL_NCP}}),
    "cfc": (LtcPolicy, {"controller": {"kind": "cfc", "wiring": SMALL_NCP}}),
    "lstm": ("MlpLstmPolicy", {"lstm_hidden_size": 8, "net_arch": [8]}),
}


def _model(name: str) -> RecurrentPPO:
    env = VecNormalize(make_vec_env(lambda: CueMemoryEnv(delay=3, continuous=True), n_envs=2, seed=0))
    policy, kwargs = MODELS[name]
    return RecurrentPPO(
        policy, env, n_steps=16, batch_size=16, n_epochs=2, policy_kwargs=kwargs, seed=0, device="cpu"
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_every_parameter_has_a_group(name: str) -> None:
    policy = _model(name).policy
    groups: dict[str, list[str]] = {}
    for param_name, _ in policy.named_parameters():
        groups.setdefault(parameter_group(param_name), []).append(param_name)
    assert "other" not in groups, groups.get("other")
    assert {"actor_recurrent", "action_head", "critic"} <= set(groups)
    # CfC: input and recurrent weights share the ff matrices over [x, h], all counted as recurrent
    assert ("actor_sensory" in groups) == (name != "cfc")
    if name == "ltc":
        assert {n.split(".")[-1] for n in groups["actor_time_constants"]} == {"cm", "gleak", "vleak"}
        assert "lstm_actor.controller.cell.sensory_mu" in groups["actor_sensory"]
        assert "lstm_actor.controller.cell.erev" in groups["actor_recurrent"]
    if name == "cfc":
        assert groups["actor_time_constants"]  # the time_a / time_b heads
    if name == "lstm":
        assert groups["actor_sensory"] == ["lstm_actor.weight_ih_l0"]
        assert "mlp_extractor.policy_net.0.weight" in groups["action_head"]


@pytest.mark.parametrize("name", list(MODELS))
def test_diagnostics_callback_writes_a_row_per_rollout(name: str, tmp_path: Path) -> None:
    model = _model(name)
    diag = RecurrentDiagnostics(tmp_path / "diag.csv", samples=32)
    model.learn(96, callback=diag)  # 3 rollouts of 32 steps
    with (tmp_path / "diag.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["timesteps"]) for r in rows] == [32.0, 64.0, 96.0]
    first, last = rows[0], rows[-1]
    assert math.isnan(float(first["grad_total_mean"]))  # no update before the first rollout
    assert float(last["minibatches"]) == 2 * 2  # 2 epochs x (32 steps / 16 per minibatch)
    for group in ("actor_recurrent", "action_head", "critic", "total"):
        assert float(last[f"grad_{group}_mean"]) > 0
    assert (float(last["grad_actor_sensory_mean"]) > 0) == (name != "cfc")
    assert 0.0 <= float(last["grad_clipped_fraction"]) <= 1.0
    assert math.isnan(float(first["update_rel_critic"])) and float(last["update_rel_critic"]) > 0
    assert np.isfinite(float(last["value_explained_variance"])) and float(last["value_rmse"]) >= 0
    # Gaussian actions, log_std 0 at the start: entropy 0.5 * log(2 pi e) = 1.419 nats
    assert float(first["policy_entropy"]) == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=1e-3)
    assert np.isfinite(float(last["policy_entropy"]))
    tau = [float(last[f"tau_steps_{q}"]) for q in ("p10", "median", "p90")]
    sat = float(last["sensory_saturated_fraction"])
    if name == "cfc":
        assert all(math.isnan(t) for t in tau) and math.isnan(sat)
    else:
        assert 0 < tau[0] <= tau[1] <= tau[2]
    if name == "ltc":
        assert 0.0 <= sat <= 1.0 and 0.0 <= float(last["recurrent_saturated_fraction"]) <= 1.0
    if name == "lstm":
        assert tau[0] >= 1.0  # 1 / (1 - f) >= 1 step
    assert set(GROUPS) >= {k[5:-5] for k in last if k.startswith("grad_") and k.endswith("_mean")} - {"total"}
    # the hooks are removed after training: a plain backward adds nothing
    n = len(diag.rows)
    model.policy.optimizer.zero_grad()
    assert len(diag.rows) == n and not diag._handles


@pytest.mark.parametrize("name", list(MODELS))
def test_diagnostics_policy_entropy_of_discrete_actions(name: str, tmp_path: Path) -> None:
    """The entropy column on discrete actions: at most log(2) nats for 2 actions, and it is the entropy of
    the actor's distribution at the rollout's states (a motor head forced to one action drives it to 0)."""
    env = make_vec_env(lambda: CueMemoryEnv(delay=3, continuous=False), n_envs=2, seed=0)
    policy, kwargs = MODELS[name]
    model = RecurrentPPO(policy, env, n_steps=16, batch_size=16, n_epochs=1, policy_kwargs=kwargs, seed=0)
    diag = RecurrentDiagnostics(tmp_path / "diag.csv", samples=32)
    model.learn(32, callback=diag)
    entropy = diag.rows[0]["policy_entropy"]
    assert 0.5 < entropy <= math.log(2) + 1e-6  # an untrained policy is close to uniform
    if name != "lstm":
        import torch

        with torch.no_grad():
            model.policy.motor_head.scale.zero_()
            model.policy.motor_head.bias.copy_(torch.tensor([0.0, 30.0]))
        model.learn(32, callback=diag, reset_num_timesteps=False)
        assert diag.rows[-1]["policy_entropy"] < 1e-6
