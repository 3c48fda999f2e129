"""Tests of the liquid sb3 policies (ltc_control.agents.sb3) and the partially observed envs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.env_util import make_vec_env

from ltc_control.agents.sb3 import CENTER_STEPS, CnnLtcPolicy, LtcPolicy
from ltc_control.agents.sb3_checkpoint import (
    load_policy_weights,
    policy_kwargs_from_policy,
    sb3_to_checkpoint,
    to_policy,
)
from ltc_control.agents.sb3_envs import CueMemoryEnv, MaskVelocity, PendulumPixels, make_novel_env
from ltc_control.agents.sb3_modules import MotorHead, StateReadoutHead
from ltc_control.checkpoint import load_checkpoint
from ltc_control.policy import Policy, PolicyConfig

# Small controllers keep every test in seconds: NCP with 6 inter / 4 command neurons, 3 unfolds.
SMALL_LTC = {
    "kind": "ltc",
    "ode_unfolds": 3,
    "wiring": {
        "preset": "ncp",
        "inter": 6,
        "command": 4,
        "sensory_fanout": 2,
        "inter_fanout": 2,
        "recurrent_command_synapses": 3,
        "motor_fanin": 3,
    },
}
SMALL_CFC = {**SMALL_LTC, "kind": "cfc"}
del SMALL_CFC["ode_unfolds"]


class _ImageEnv(gym.Env):  # type: ignore[type-arg]
    """Small uint8 camera env (like sb3's FakeImageEnv) with 1-D continuous or discrete actions."""

    def __init__(self, discrete: bool = False) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(24, 32, 3), dtype=np.uint8)
        self.action_space: spaces.Space = (
            spaces.Discrete(3) if discrete else spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        )
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):  # type: ignore[override]
        self._t += 1
        return self.observation_space.sample(), 0.0, self._t >= 6, False, {}


def _small_image_kwargs() -> dict:
    return {
        "controller": SMALL_LTC,
        "features_extractor_kwargs": {
            "perception": {
                "channels": (4, 8, 4),
                "kernels": (3, 3, 3),
                "strides": (2, 2, 1),
                "features_per_channel": 2,
            }
        },
    }


def _eval_cue(model: RecurrentPPO, episodes: int = 200, seed: int = 123) -> float:
    env = CueMemoryEnv(delay=3, continuous=isinstance(model.action_space, spaces.Box))
    total = 0.0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        state, start, done = None, np.ones((1,), dtype=bool), False
        while not done:
            action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
            start = np.zeros((1,), dtype=bool)
    return total / episodes


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("kind,readout", [("ltc", "motor"), ("ltc", "state")])
def test_learns_cue_memory_task(kind: str, readout: str) -> None:
    """A short learn() run makes the policy remember a cue shown 3 steps earlier.

    Chance is a mean return of 0 (the untrained policy scores about +-0.2); measured after 2,500 steps: 1.0
    for seeds 0 and 1.
    """
    torch.manual_seed(0)
    env = make_vec_env(lambda: CueMemoryEnv(delay=3), n_envs=8, seed=0)
    model = RecurrentPPO(
        LtcPolicy,
        env,
        n_steps=32,
        batch_size=128,
        n_epochs=8,
        learning_rate=2e-2,
        gamma=0.99,
        ent_coef=0.0,
        seed=0,
        device="cpu",
        policy_kwargs={
            "controller": {**SMALL_LTC, "kind": kind},
            "net_arch": [16],
            "action_readout": readout,
        },
    )
    before = _eval_cue(model)
    model.learn(2500)
    after = _eval_cue(model)
    assert after > before + 0.3, f"learning should improve the mean return: {before} -> {after}"
    assert after >= 0.9, f"trained policy should remember the cue (mean return >= 0.9), got {after}"


# ------------------------------------------------------------------------------------------- episode starts
def _tiny_model(env_or_id="Pendulum-v1", **kwargs) -> RecurrentPPO:
    policy = kwargs.pop("policy", LtcPolicy)
    pk = {"controller": SMALL_LTC}
    pk.update(kwargs.pop("policy_kwargs", {}))
    return RecurrentPPO(
        policy,
        env_or_id,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        device="cpu",
        policy_kwargs=pk,
        **kwargs,
    )


@pytest.mark.parametrize("critic", ["separate", "shared", "feedforward"])
def test_episode_starts_reset_the_state(critic: str) -> None:
    """Hand-made sequence with an episode start at step 5: steps 5.. equal a fresh run of those steps."""
    model = _tiny_model(policy_kwargs={"critic": critic})
    policy = model.policy
    torch.manual_seed(1)
    t, split = 9, 5
    obs = torch.randn(t, 3)
    hid = policy.lstm_actor.hidden_size
    # a non-zero carried-in state, so that a missing reset would show
    h = torch.zeros(1, 1, hid)
    h[0, 0, : policy.lstm_actor.state_size] = torch.rand(policy.lstm_actor.state_size)
    states = RNNStates((h, torch.zeros_like(h)), (h.clone(), torch.zeros_like(h)))
    starts = torch.zeros(t)
    starts[split] = 1.0
    actions = torch.randn(t, 1)
    with torch.no_grad():
        values, logp, _ = policy.evaluate_actions(obs, actions, states, starts)
        zero = torch.zeros_like(h)
        fresh = RNNStates((zero, zero), (zero, zero))
        v2, lp2, _ = policy.evaluate_actions(obs[split:], actions[split:], fresh, torch.zeros(t - split))
        v_nr, lp_nr, _ = policy.evaluate_actions(obs, actions, states, torch.zeros(t))
    torch.testing.assert_close(values[split:], v2, rtol=0, atol=1e-6)
    torch.testing.assert_close(logp[split:], lp2, rtol=0, atol=1e-6)
    # without the reset the carried-in state changes the actor's outputs after the split
    assert float((lp_nr[split:] - lp2).abs().max()) > 1e-4


def test_step_loop_matches_sequence_path() -> None:
    """The shared critic's step loop (every neuron's state) gives the same outputs as the fused sequence
    path."""
    model = _tiny_model()
    adapter = model.policy.lstm_actor
    torch.manual_seed(2)
    x = torch.randn(2 * 7, 3)
    h = torch.zeros(1, 2, adapter.hidden_size)
    h[0, :, : adapter.state_size] = torch.rand(2, adapter.state_size)
    starts = torch.zeros(14)
    starts[3] = 1.0
    with torch.no_grad():
        y1, none, s1 = adapter(x, (h, torch.zeros_like(h)), starts)
        y2, seq, s2 = adapter(x, (h, torch.zeros_like(h)), starts, return_states=True)
    assert none is None and seq is not None and seq.shape == (14, adapter.state_size)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-6)
    torch.testing.assert_close(s1[0], s2[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(seq.reshape(2, 7, -1)[:, -1], s2[0][0, :, : adapter.state_size])


_DENSE_CFC = {"kind": "cfc", "cfc_wired": False, "units": 8, "cfc_backbone_units": 8}


@pytest.mark.parametrize(
    "ctrl",
    [
        {**SMALL_LTC, "ltc_implementation": "auto"},
        {**SMALL_LTC, "ltc_implementation": "reference"},
        SMALL_CFC,
        _DENSE_CFC,
        {"kind": "lstm", "lstm_hidden": 5},
    ],
    ids=["ltc_auto", "ltc_reference", "wired_cfc", "dense_cfc", "lstm"],
)
def test_state_sequence_matches_step_loop(ctrl: dict) -> None:
    """Every step's neuron state (gSDE's latent, the shared critic's input) comes from the cell's
    ``state_sequence`` (fused for LTC and CfC, the base step loop otherwise) and equals a step loop over
    ``cell.forward`` with resets, values and gradients."""
    adapter = _tiny_model(policy_kwargs={"controller": ctrl}).policy.lstm_actor
    cell = adapter.controller.cell
    torch.manual_seed(3)
    x = torch.randn(2, 7, 3)
    h = torch.rand(2, cell.state_size)
    starts = torch.zeros(2, 7)
    starts[0, 3] = 1.0
    starts[1, 0] = 1.0
    params = [p for p in cell.parameters() if p.requires_grad]
    fused = adapter.state_sequence(x, h, starts)
    # readout-only parameters (an output mapping or head) get no gradient from the states: allow_unused
    g_fused = torch.autograd.grad(fused.square().sum(), params, allow_unused=True)
    v, seq = h, []
    for i in range(7):
        v = (1.0 - starts[:, i : i + 1]) * v  # every cell's initial state is zero
        _, v = cell(x[:, i], v, 1.0)
        seq.append(v)
    loop = torch.stack(seq, dim=1)
    g_loop = torch.autograd.grad(loop.square().sum(), params, allow_unused=True)
    assert fused.shape == (2, 7, cell.state_size)
    torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6)
    assert sum(g is not None and bool(g.any()) for g in g_loop) >= 2
    for a, b in zip(g_fused, g_loop, strict=True):
        if a is None or b is None:
            assert a is None or not bool(a.any()), "a parameter only one path depends on"
            assert b is None or not bool(b.any()), "a parameter only one path depends on"
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------- gSDE
def test_gsde_learns_saves_loads_and_predicts(tmp_path: Path) -> None:
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=2, seed=0)
    model = _tiny_model(env, use_sde=True, sde_sample_freq=2)
    policy = model.policy
    assert policy.log_std.shape == (policy.controller.state_size, 1)  # one std per (neuron, action)
    before = policy.log_std.detach().clone()
    model.learn(64)
    assert not torch.equal(before, policy.log_std.detach()), "PPO should train gSDE's log_std"
    path = tmp_path / "ppo_ltc_sde.zip"
    model.save(path)
    loaded = RecurrentPPO.load(path, device="cpu")
    assert loaded.use_sde and isinstance(loaded.policy, LtcPolicy)
    obs = np.array([[0.5, -0.8], [-0.1, 0.9]], np.float32)
    s1 = s2 = None
    for _ in range(3):
        a1, s1 = model.predict(obs, state=s1, deterministic=True)
        a2, s2 = loaded.predict(obs, state=s2, deterministic=True)
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(s1[0], s2[0])
    sampled, _ = model.predict(obs, state=s1, deterministic=False)
    mean, _ = model.predict(obs, state=s1, deterministic=True)
    assert not np.allclose(sampled, mean), "stochastic actions should carry exploration noise"


def test_gsde_noise_depends_on_the_controller_state() -> None:
    """gSDE's noise is ``neuron state @ exploration matrix``: with one drawn matrix, two controller states
    seeing the same observation get different noise (and the same state the same noise)."""
    model = _tiny_model(use_sde=True)
    policy = model.policy
    policy.reset_noise(1)
    obs = torch.tensor([[0.3, -0.2, 0.5]])
    start = torch.zeros(1)
    n, hid = policy.lstm_actor.state_size, policy.lstm_actor.hidden_size
    noises, latents = [], []
    with torch.no_grad():
        for seed in (0, 1, 0):
            g = torch.Generator().manual_seed(seed)
            h = torch.zeros(1, 1, hid)
            h[0, 0, :n] = torch.rand(n, generator=g) * 2 - 1
            dist, (h_new, _) = policy.get_distribution(obs, (h, torch.zeros_like(h)), start)
            noises.append(dist.get_actions(deterministic=False) - dist.get_actions(deterministic=True))
            latents.append(h_new[0, :, :n])
    assert float((noises[0] - noises[1]).abs().max()) > 1e-3, "noise should depend on the neuron state"
    torch.testing.assert_close(noises[0], noises[2])
    expected = latents[1] @ policy.action_dist.exploration_mat
    torch.testing.assert_close(noises[1], expected, rtol=1e-5, atol=1e-6)


def test_controller_lr_scale_steps_the_controllers_faster(tmp_path: Path) -> None:
    """Adam's first step moves every parameter by about its lr: controllers by scale * lr, the rest by lr;
    the groups' lr (what sb3's schedule sets) is left as set; saving and loading keeps the option."""
    from stable_baselines3.common.utils import update_learning_rate

    model = _tiny_model(learning_rate=1e-3, policy_kwargs={"controller_lr_scale": 10.0})
    policy = model.policy
    update_learning_rate(policy.optimizer, 2e-3)  # as RecurrentPPO.train does before each update
    ctrl = policy.lstm_actor.controller.cell.sigma
    before_ctrl, before_vf = ctrl.detach().clone(), policy.value_net.weight.detach().clone()
    obs = torch.randn(8, 3)
    h = torch.zeros(1, 8, policy.lstm_actor.hidden_size)
    states = RNNStates((h, h), (h, h))
    values, logp, _ = policy.evaluate_actions(obs, torch.zeros(8, 1), states, torch.ones(8))
    policy.optimizer.zero_grad()
    (values.square().mean() - logp.mean()).backward()
    policy.optimizer.step()
    step_ctrl = (ctrl.detach() - before_ctrl)[ctrl.grad != 0].abs()
    step_vf = (policy.value_net.weight.detach() - before_vf).abs()
    torch.testing.assert_close(step_ctrl.max(), torch.tensor(2e-2), rtol=5e-2, atol=0)
    torch.testing.assert_close(step_vf.max(), torch.tensor(2e-3), rtol=5e-2, atol=0)
    assert [g["lr"] for g in policy.optimizer.param_groups] == [2e-3, 2e-3]
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.controller_lr_scale == 10.0
    assert [g["lr_scale"] for g in loaded.policy.optimizer.param_groups] == [1.0, 10.0]
    with pytest.raises(ValueError, match="controller_lr_scale must be"):
        _tiny_model(policy_kwargs={"controller_lr_scale": 0.0})


def test_input_mapping_init() -> None:
    model = _tiny_model(policy_kwargs={"input_scale_init": 0.2, "input_bias_init": 0.55})
    for cell in (model.policy.controller.cell, model.policy.critic_controller.cell):
        torch.testing.assert_close(cell.input_w.detach(), torch.full((3,), 0.2))
        torch.testing.assert_close(cell.input_b.detach(), torch.full((3,), 0.55))
    with pytest.raises(ValueError, match="input_bias_init needs the LTC's input_b"):
        _tiny_model(
            policy_kwargs={"controller": {**SMALL_LTC, "ltc_input_mapping": "linear"}, "input_bias_init": 0.5}
        )


def test_predict_episode_start_equals_fresh_state() -> None:
    model = _tiny_model()
    obs = np.array([[0.3, -0.2, 0.5]], dtype=np.float32)
    _, state = model.predict(obs, deterministic=True)
    for _ in range(3):
        _, state = model.predict(obs, state=state, deterministic=True)
    a_reset, s_reset = model.predict(obs, state=state, episode_start=np.ones(1, bool), deterministic=True)
    a_fresh, s_fresh = model.predict(obs, state=None, deterministic=True)
    a_carry, _ = model.predict(obs, state=state, episode_start=np.zeros(1, bool), deterministic=True)
    np.testing.assert_array_equal(a_reset, a_fresh)
    np.testing.assert_array_equal(s_reset[0], s_fresh[0])
    assert not np.array_equal(a_carry, a_fresh)


# -------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_save_load_identical_actions_and_states(tmp_path: Path, critic: str) -> None:
    model = _tiny_model(
        make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=2, seed=0),
        policy_kwargs={"critic": critic},
    )
    model.learn(32)
    path = tmp_path / "ppo_ltc.zip"
    model.save(path)
    loaded = RecurrentPPO.load(path, device="cpu")
    assert isinstance(loaded.policy, LtcPolicy)
    rng = np.random.default_rng(0)
    s1 = s2 = None
    starts = np.array([True, True])
    for i in range(6):
        obs = rng.normal(size=(2, 2)).astype(np.float32)
        a1, s1 = model.predict(obs, state=s1, episode_start=starts, deterministic=i % 2 == 0)
        a2, s2 = loaded.predict(obs, state=s2, episode_start=starts, deterministic=i % 2 == 0)
        if i % 2 == 0:
            np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(s1[0], s2[0])
        np.testing.assert_array_equal(s1[1], s2[1])
        starts = np.array([False, i == 3])
    for (k, v), (k2, v2) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


# ----------------------------------------------------------------------------------- spaces and controllers
@pytest.mark.parametrize(
    "policy_kwargs",
    [
        {"controller": SMALL_CFC},
        {"controller": {"kind": "lstm", "lstm_hidden": 8}, "critic": "feedforward"},
        {"controller": {"kind": "cfc", "cfc_wired": False, "units": 8, "cfc_backbone_units": 8}},
    ],
)
def test_other_controllers_learn_and_predict(policy_kwargs: dict) -> None:
    model = _tiny_model(policy_kwargs=policy_kwargs)
    model.learn(32)
    action, state = model.predict(np.zeros(3, np.float32), deterministic=True)
    assert action.shape == (1,) and np.all(np.abs(action) <= 2.0)
    assert state[0].shape == (1, 1, model.policy.lstm_actor.hidden_size)


def test_discrete_vector_actions() -> None:
    model = _tiny_model("CartPole-v1")
    assert model.policy.controller.output_size == 2  # one motor neuron per logit
    model.learn(32)
    action, _ = model.predict(np.zeros(4, np.float32), deterministic=True)
    assert action.shape == () and int(action) in (0, 1)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_state_readout_reads_every_neuron(env_id: str) -> None:
    """``action_readout="state"``: each logit (or Gaussian mean) depends on every neuron of the actor circuit,
    not only on its motor neuron; ``action_scale_init`` is the gain of the readout's orthogonal init."""
    model = _tiny_model(env_id, policy_kwargs={"action_readout": "state"})
    policy = model.policy
    n = policy.controller.state_size
    head = policy.action_net
    assert isinstance(head, StateReadoutHead) and head.linear.weight.shape == (policy.motor_size, n)
    feats = torch.randn(3, policy.features_dim)
    zeros = torch.zeros(1, 3, policy.lstm_actor.hidden_size)
    latent, seq, _ = policy._actor(feats, (zeros, zeros), torch.ones(3), False)
    assert latent.shape == (3, n) and torch.equal(latent, seq)
    x = latent.detach().requires_grad_(True)
    head(x).sum().backward()
    assert bool((x.grad.abs() > 0).all()), "every neuron should reach the action"
    model.learn(32)
    action, _ = model.predict(np.zeros(policy.observation_space.shape, np.float32), deterministic=True)
    assert np.all(np.isfinite(action))
    # sb3's uniform start: gain 0.01 makes every initial logit tiny
    small = _tiny_model(env_id, policy_kwargs={"action_readout": "state", "action_scale_init": 0.01})
    rows = small.policy.action_net.linear.weight.detach().norm(dim=1)
    np.testing.assert_allclose(rows.numpy(), 0.01, rtol=1e-4)
    with pytest.raises(ValueError, match="no element-wise motor head"):
        _ = small.policy.motor_head
    with pytest.raises(ValueError, match=r"reads every neuron \(action_readout='state'\)"):
        to_policy(small)
    with pytest.raises(ValueError, match="cannot copy a Policy's weights into the sb3 policy"):
        load_policy_weights(small, to_policy(_tiny_model(env_id)))


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_motors_per_output_average_their_motor_neurons(env_id: str, tmp_path: Path) -> None:
    """``motors_per_output=3``: the circuit gets 3 motor neurons per output and each output (logit or
    Gaussian mean) is their mean; the model saves, loads and predicts the same, and refuses conversion to a
    ``Policy`` with the reason named."""
    model = _tiny_model(env_id, policy_kwargs={"motors_per_output": 3})
    policy = model.policy
    m = policy.motor_size
    assert policy.controller.cell.wiring.output_size == 3 * m
    head = policy.action_net
    assert isinstance(head, MotorHead) and head.group == 3 and head.scale.shape == (m,)
    with torch.no_grad():
        head.scale.copy_(torch.linspace(0.5, 2.0, m))
        head.bias.copy_(torch.linspace(-0.3, 0.3, m))
    y = torch.randn(5, 3 * m)
    expected = head.scale * y.reshape(5, m, 3).mean(-1) + head.bias
    if head.squash == "tanh":
        expected = torch.tanh(expected)
    torch.testing.assert_close(head(y), expected)
    # every one of the 3 motor neurons of an output reaches it, none of another output's
    x = y.clone().requires_grad_(True)
    head(x)[..., 0].sum().backward()
    assert bool((x.grad[:, :3] != 0).all()) and bool((x.grad[:, 3:] == 0).all())
    with pytest.raises(ValueError, match=rf"expects {3 * m} motor outputs \({m} outputs x 3 motor"):
        head(torch.randn(5, m))
    model.learn(32)
    obs = np.random.default_rng(0).normal(size=policy.observation_space.shape).astype(np.float32)
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.motors_per_output == 3
    again, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(action, again)
    with pytest.raises(ValueError, match=r"averages 3 motor neurons \(motors_per_output\)"):
        to_policy(model)
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="motors_per_output must be an integer >= 1"):
            _tiny_model(env_id, policy_kwargs={"motors_per_output": bad})
    with pytest.raises(ValueError, match="needs action_readout='motor'"):
        _tiny_model(env_id, policy_kwargs={"motors_per_output": 2, "action_readout": "state"})


@pytest.mark.parametrize("discrete", [False, True])
def test_image_observations(discrete: bool) -> None:
    env = make_vec_env(lambda: _ImageEnv(discrete), n_envs=2, seed=0)
    model = _tiny_model(env, policy=CnnLtcPolicy, policy_kwargs=_small_image_kwargs())
    assert model.policy.features_dim == 4 * 2  # last conv maps x features per map
    model.learn(32)
    obs = np.random.default_rng(0).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    action, state = model.predict(obs, deterministic=True)
    assert action.shape == (() if discrete else (2,))
    assert np.all(np.isfinite(state[0]))


# ------------------------------------------------------------------------------------------- export
def _rollout_pairs(model: RecurrentPPO, policy: Policy, observations: list[np.ndarray]) -> float:
    """Largest |sb3 deterministic action - Policy.act action| over a sequence, with states carried."""
    state_sb3, state_pol, worst = None, policy.reset(1), 0.0
    for obs in observations:
        a1, state_sb3 = model.predict(obs, state=state_sb3, deterministic=True)
        a2, state_pol = policy.act(obs, state_pol)
        worst = max(worst, float(np.abs(np.asarray(a1, np.float64) - a2).max()))
    return worst


def test_export_vector_policy_matches_predict(tmp_path: Path) -> None:
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=1, seed=0)
    model = _tiny_model(env)
    assert model.policy.action_squash == "tanh"  # rescaled to [-1, 1]
    model.learn(32)
    rng = np.random.default_rng(1)
    observations = [rng.normal(size=2).astype(np.float32) for _ in range(8)]
    policy = to_policy(model)
    assert policy.controller.cell.num_neurons == model.policy.controller.cell.num_neurons
    assert _rollout_pairs(model, policy, observations) < 1e-6
    folder = sb3_to_checkpoint(model, tmp_path / "ckpt", metadata={"env": "PendulumNoVel-v1"})
    loaded, meta = load_checkpoint(folder)
    assert meta["env"] == "PendulumNoVel-v1" and meta["num_timesteps"] == model.num_timesteps
    assert _rollout_pairs(model, loaded, observations) < 1e-6


@pytest.mark.parametrize("use_sde", [False, True])
def test_tanh_sample_squashes_the_sample_and_keeps_the_gradient(use_sde: bool, tmp_path: Path) -> None:
    """``action_squash="tanh_sample"``: the head gives an unbounded Gaussian mean, the sample is squashed
    into (-1, 1) and its log-likelihood corrected (the same value at collection and in the PPO update); with
    the mean far past the bound the log-likelihood still has a gradient for the head (the mean-``tanh`` head
    has none); greedy = tanh(mean); it trains (no analytic entropy), saves, loads and converts to an exact
    ``Policy``."""
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=2, seed=0)
    kwargs = {"use_sde": use_sde, "sde_sample_freq": 4} if use_sde else {}
    # the squash's own mechanics, unbounded (the default bound, mean_limit "auto", has a test of its own)
    bounds = {"tanh_sample": {"mean_limit": None}, "tanh": {}}
    models = {
        squash: _tiny_model(env, ent_coef=0.01, policy_kwargs={"action_squash": squash, **bound}, **kwargs)
        for squash, bound in bounds.items()
    }
    model, policy = models["tanh_sample"], models["tanh_sample"].policy
    assert policy.action_squash == "tanh_sample" and policy.action_net.squash == "none"
    assert policy.action_dist.bijector is not None if use_sde else policy.action_dist.entropy() is None
    obs = torch.randn(2 * 6, 2)
    starts = torch.zeros(2 * 6)
    hid = policy.lstm_actor.hidden_size
    zeros = (torch.zeros(1, 2, hid), torch.zeros(1, 2, hid))
    grads = {}
    for squash, m in models.items():
        pol = m.policy
        with torch.no_grad():
            pol.action_net.bias.fill_(6.0)  # the pre-squash mean far above the upper bound
        if use_sde:
            pol.reset_noise(2)
        states = RNNStates(zeros, zeros)
        with torch.no_grad():
            actions, _, log_prob, _ = pol(obs, states, starts)
        if squash == "tanh_sample":  # the mean-tanh head's samples are mean + noise (sb3 clips them)
            assert actions.abs().max() <= 1.0
        _, again, _ = pol.evaluate_actions(obs, actions, states, starts)
        torch.testing.assert_close(again, log_prob)  # collection and update agree
        pol.zero_grad()
        pol.evaluate_actions(obs, actions.clamp(-0.5, 0.5), states, starts)[1].sum().backward()
        grads[squash] = float(pol.action_net.bias.grad.abs().max())
    # tanh'(6) ~ 2.5e-5: the mean-tanh head's gradient is all but gone
    assert grads["tanh_sample"] > 1.0 and grads["tanh_sample"] > 1e4 * grads["tanh"], grads
    with torch.no_grad():
        affine = policy.action_net(policy._actor(obs, zeros, starts, False)[0])
        greedy = policy._get_action_dist_from_latent(
            policy._actor(obs, zeros, starts, False)[0], policy._actor(obs, zeros, starts, True)[1]
        ).get_actions(deterministic=True)
    torch.testing.assert_close(greedy, torch.tanh(affine))
    with torch.no_grad():
        torch.testing.assert_close(policy.greedy_output(policy._actor(obs, zeros, starts, False)[0]), greedy)
    with torch.no_grad():
        policy.action_net.bias.fill_(0.0)
    model.learn(64)
    assert all(np.isfinite(p.detach().numpy()).all() for p in policy.parameters())
    rng = np.random.default_rng(3)
    observations = [rng.normal(size=2).astype(np.float32) for _ in range(8)]
    converted = to_policy(model)
    assert converted.config.action_head.squash == "tanh"
    assert _rollout_pairs(model, converted, observations) < 1e-6
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.action_squash == "tanh_sample"
    assert type(loaded.policy.action_dist) is type(policy.action_dist)
    assert _rollout_pairs(loaded, converted, observations) < 1e-6
    with pytest.raises(ValueError, match=r"needs a Box\(-1, 1\) action space, got low=\[-2.0\]"):
        _tiny_model("Pendulum-v1", policy_kwargs={"action_squash": "tanh_sample"})
    with pytest.raises(ValueError, match="'tanh_sample' only applies to continuous"):
        _tiny_model("CartPole-v1", policy_kwargs={"action_squash": "tanh_sample"})


def test_bound_mean_is_the_identity_inside_and_a_smooth_bound_outside() -> None:
    from ltc_control.agents.sb3 import bound_mean

    x = torch.linspace(-40.0, 40.0, 8001, dtype=torch.float64, requires_grad=True)
    y = bound_mean(x, 5.0)
    inside = x.detach().abs() <= 4.0
    assert torch.equal(y[inside], x[inside])  # bit for bit where |mean| <= limit - 1
    assert float(y.detach().abs().max()) <= 5.0 and float(y.detach().abs().max()) > 4.99
    assert bool((torch.diff(y.detach()) >= 0).all())  # monotonic
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert bool((grad >= 0).all()) and float(grad.max()) <= 1.0
    assert bool(
        (grad[x.detach().abs() < 15] > 0).all()
    )  # a gradient back towards the range, until tanh is flat
    knee = torch.tensor([4.0 - 1e-6, 4.0 + 1e-6], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(bound_mean(knee, 5.0).sum(), knee)
    assert torch.allclose(g, torch.ones(2, dtype=torch.float64))  # slope 1 on both sides of the join
    assert bound_mean(x, None) is x


def test_bound_mean_pull_keeps_the_value_and_adds_a_penalty_gradient_past_the_limit() -> None:
    """``pull``: the same values as the bound; the gradient is the bound's plus ``pull * excess / rows``
    (the gradient of ``pull / 2 * sum(relu(|x| - limit) ** 2) / rows``), zero within the limit; no limit:
    no pull."""
    from ltc_control.policy import bound_mean, check_mean_pull

    x = torch.tensor(
        [[0.5, -3.9, 4.5], [-6.0, 9.0, 30.0], [4.99, -5.0, -12.0], [1.0, 2.0, 3.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    upstream = torch.randn(4, 3, dtype=torch.float64)
    (plain,) = torch.autograd.grad((bound_mean(x, 5.0) * upstream).sum(), x)
    pulled_value = bound_mean(x, 5.0, 2.0)
    assert torch.equal(pulled_value, bound_mean(x, 5.0))
    (pulled,) = torch.autograd.grad((pulled_value * upstream).sum(), x)
    excess = (x - x.clamp(-5.0, 5.0)).detach()
    torch.testing.assert_close(pulled, plain + 2.0 * excess / 4)  # 4 rows per action dimension
    inside = x.detach().abs() <= 5.0
    assert torch.equal(pulled[inside], plain[inside])  # bit for bit within the limit
    # the penalty's own gradient, by autograd, is what the pull adds
    xp = x.detach().clone().requires_grad_(True)
    (penalty_grad,) = torch.autograd.grad(((xp.abs() - 5.0).clamp(min=0) ** 2).sum() * 2.0 / 2 / 4, xp)
    torch.testing.assert_close(pulled - plain, penalty_grad)
    assert bound_mean(x, None, 1.0) is x
    for bad in (-1.0, float("nan"), float("inf"), "one", True):
        with pytest.raises(ValueError, match="mean_pull must be a finite number >= 0"):
            check_mean_pull(bad)


def test_mean_pull_draws_a_drifted_mean_back(tmp_path: Path) -> None:
    """``LtcPolicy(mean_pull=...)``: the distribution is unchanged; the action head's bias gets the penalty's
    gradient where its affine output passed the limit; it trains, saves and loads; without a limit it is
    refused by name."""
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=2, seed=0)
    models = {
        pull: _tiny_model(env, policy_kwargs={"action_squash": "tanh_sample", "mean_pull": pull})
        for pull in (0.0, 1.5)
    }
    models[1.5].policy.load_state_dict(models[0.0].policy.state_dict())
    obs = torch.randn(2 * 6, 2)
    starts = torch.zeros(2 * 6)
    grads, means = {}, {}
    for pull, model in models.items():
        policy = model.policy
        assert policy.mean_pull == pull and policy.mean_limit == 5.0
        hid = policy.lstm_actor.hidden_size
        zeros = (torch.zeros(1, 2, hid), torch.zeros(1, 2, hid))
        with torch.no_grad():
            policy.action_net.bias.fill_(30.0)  # far past the limit, where the bound's slope is ~0
        latent, _, _ = policy._actor(obs, zeros, starts, False)
        dist = policy._get_action_dist_from_latent(latent)
        means[pull] = dist.distribution.mean.detach()
        policy.zero_grad()
        dist.log_prob(torch.zeros(12, 1)).mean().backward()
        grads[pull] = policy.action_net.bias.grad.detach().clone()
        affine = policy.action_net(latent).detach()
    torch.testing.assert_close(means[1.5], means[0.0])
    assert float(grads[0.0].abs().max()) < 1e-6  # the bound's slope at 30 is ~0: no way back without the pull
    torch.testing.assert_close(grads[1.5] - grads[0.0], 1.5 * (affine - 5.0).mean(0), rtol=1e-4, atol=1e-4)
    model = models[1.5]
    with torch.no_grad():
        model.policy.action_net.bias.fill_(0.0)
    model.learn(64)
    model.save(tmp_path / "pull.zip")
    assert RecurrentPPO.load(tmp_path / "pull.zip", device="cpu").policy.mean_pull == 1.5
    with pytest.raises(ValueError, match="mean_pull=1 draws the pre-tanh mean back within mean_limit"):
        _tiny_model(env, policy_kwargs={"action_squash": "tanh_sample", "mean_limit": None, "mean_pull": 1.0})
    with pytest.raises(ValueError, match="mean_pull must be a finite number >= 0"):
        _tiny_model(env, policy_kwargs={"action_squash": "tanh_sample", "mean_pull": -0.5})


@pytest.mark.parametrize("use_sde", [False, True])
def test_mean_limit_bounds_the_squashed_gaussians_mean(use_sde: bool, tmp_path: Path) -> None:
    """``mean_limit`` (``tanh_sample`` only): the distribution's mean and the greedy action use the bounded
    mean, collection and update agree, it trains, saves and loads; bad values, other squashes and conversion
    to a ``Policy`` are refused by name."""
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=2, seed=0)
    kwargs = {"use_sde": use_sde, "sde_sample_freq": 4} if use_sde else {}
    model = _tiny_model(env, policy_kwargs={"action_squash": "tanh_sample", "mean_limit": 5.0}, **kwargs)
    policy = model.policy
    assert policy.mean_limit == 5.0
    obs = torch.randn(2 * 6, 2)
    starts = torch.zeros(2 * 6)
    hid = policy.lstm_actor.hidden_size
    zeros = (torch.zeros(1, 2, hid), torch.zeros(1, 2, hid))
    with torch.no_grad():
        policy.action_net.bias.fill_(30.0)  # the affine output far past the limit
        latent, _, _ = policy._actor(obs, zeros, starts, False)
        _, sde_latent, _ = policy._actor(obs, zeros, starts, True)
        dist = policy._get_action_dist_from_latent(latent, sde_latent)
        mean = dist.distribution.mean
        assert float(mean.max()) <= 5.0 and float(mean.min()) > 4.9
        greedy = policy.greedy_output(latent)
        torch.testing.assert_close(greedy, torch.tanh(mean))
        assert float(greedy.max()) <= float(np.tanh(5.0)) + 1e-7
        if use_sde:
            policy.reset_noise(2)
        actions, _, log_prob, _ = policy(obs, RNNStates(zeros, zeros), starts)
        _, again, _ = policy.evaluate_actions(obs, actions, RNNStates(zeros, zeros), starts)
    torch.testing.assert_close(again, log_prob)
    assert bool(torch.isfinite(log_prob).all())
    with torch.no_grad():
        policy.action_net.bias.fill_(0.0)
    model.learn(64)
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.mean_limit == 5.0
    with torch.no_grad():
        policy.action_net.bias.fill_(4.5)  # greedy outputs past the knee (4): the bound is active
    converted = to_policy(model)
    assert converted.config.action_head.mean_limit == 5.0
    rng = np.random.default_rng(4)
    observations = [rng.normal(size=2).astype(np.float32) for _ in range(8)]
    assert _rollout_pairs(model, converted, observations) < 1e-6
    back = policy_kwargs_from_policy(converted)
    assert back["action_squash"] == "tanh_sample" and back["mean_limit"] == 5.0
    for bad in (1.0, float("nan"), "five", True):
        with pytest.raises(ValueError, match="mean_limit must be a finite number > 1"):
            _tiny_model(env, policy_kwargs={"action_squash": "tanh_sample", "mean_limit": bad})
    with pytest.raises(ValueError, match="action_squash is 'tanh'"):
        _tiny_model(env, policy_kwargs={"action_squash": "tanh", "mean_limit": 5.0})
    # the default ("auto") bounds tanh_sample at 5; a model saved with no mean_limit (as before 2026-12-07)
    # loads bounded, and the documented custom_objects load it unbounded, as it was made
    plain = _tiny_model(env, policy_kwargs={"action_squash": "tanh_sample"}, **kwargs)
    assert plain.policy.mean_limit == 5.0
    plain.save(tmp_path / "plain.zip")
    assert RecurrentPPO.load(tmp_path / "plain.zip", device="cpu").policy.mean_limit == 5.0
    saved_kwargs = {**plain.policy_kwargs, "mean_limit": None}  # custom_objects replaces them all
    old = RecurrentPPO.load(
        tmp_path / "plain.zip", device="cpu", custom_objects={"policy_kwargs": saved_kwargs}
    )
    assert old.policy.mean_limit is None
    torch.testing.assert_close(old.policy.state_dict(), plain.policy.state_dict())


def test_export_image_policy_matches_predict(tmp_path: Path) -> None:
    env = make_vec_env(lambda: _ImageEnv(False), n_envs=1, seed=0)
    model = _tiny_model(env, policy=CnnLtcPolicy, policy_kwargs=_small_image_kwargs())
    model.learn(32)
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8) for _ in range(5)]
    loaded, _ = load_checkpoint(sb3_to_checkpoint(model, tmp_path / "ckpt"))
    assert loaded.config.observation == "image" and loaded.config.image_shape == (24, 32, 3)
    assert _rollout_pairs(model, loaded, frames) < 1e-5


def test_imitation_policy_round_trip_into_sb3() -> None:
    """A Policy's weights loaded into a fresh sb3 actor give the Policy's actions (fine-tuning starts
    there)."""
    torch.manual_seed(3)
    policy = Policy(PolicyConfig(observation="vector", vector_size=2, controller=from_small(SMALL_LTC)))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=1, seed=0)
    model = RecurrentPPO(
        LtcPolicy,
        env,
        n_steps=16,
        batch_size=16,
        seed=0,
        device="cpu",
        policy_kwargs=policy_kwargs_from_policy(policy),
    )
    load_policy_weights(model, policy)
    rng = np.random.default_rng(4)
    observations = [rng.normal(size=2).astype(np.float32) for _ in range(6)]
    assert _rollout_pairs(model, policy.eval(), observations) < 1e-6


def from_small(d: dict):
    from ltc_control.config import from_dict
    from ltc_control.controllers import ControllerConfig

    return from_dict(ControllerConfig, d)


# ------------------------------------------------------------------------------------------- bad input
def test_bad_configs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"gSDE\) needs continuous \(Box\) actions"):
        LtcPolicy(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), lambda _: 1e-3, use_sde=True)
    with pytest.raises(ValueError, match="squash_output=True is not supported"):
        _tiny_model(use_sde=True, policy_kwargs={"squash_output": True})
    with pytest.raises(ValueError, match="motor neurons are the action"):
        _tiny_model(policy_kwargs={"net_arch": {"pi": [64], "vf": [64]}})
    with pytest.raises(ValueError, match="unknown config key 'controller.hidden'"):
        _tiny_model(policy_kwargs={"controller": {"hidden": 3}})
    with pytest.raises(ValueError, match="action_readout must be 'motor' or 'state'"):
        _tiny_model(policy_kwargs={"action_readout": "all"})
    with pytest.raises(ValueError, match="critic must be"):
        _tiny_model(policy_kwargs={"critic": "both"})
    with pytest.raises(ValueError, match="only applies to continuous"):
        _tiny_model("CartPole-v1", policy_kwargs={"action_squash": "tanh"})
    for name, value in (
        ("action_scale_init", float("nan")),
        ("log_std_init", float("inf")),
        ("input_scale_init", float("nan")),
        ("input_bias_init", float("-inf")),
        ("action_scale_init", "large"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            LtcPolicy(spaces.Box(-1, 1, (3,)), spaces.Box(-1, 1, (1,)), lambda _: 1e-3, **{name: value})
    model = _tiny_model()
    bad_state = (np.zeros((1, 1, 3), np.float32), np.zeros((1, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"recurrent state must have shape \(1, n_seq"):
        model.predict(np.zeros(3, np.float32), state=bad_state)
    with pytest.raises(ValueError, match="no liquid controller"):
        to_policy(RecurrentPPO("MlpLstmPolicy", "Pendulum-v1", n_steps=16, batch_size=16, device="cpu"))


# ------------------------------------------------------------------------------------------------ envs
def test_mask_velocity_pendulum_and_halfcheetah() -> None:
    full, masked = gym.make("Pendulum-v1"), make_novel_env("PendulumNoVel-v1")
    o_full, _ = full.reset(seed=5)
    o_mask, _ = masked.reset(seed=5)
    assert masked.observation_space.shape == (2,)
    np.testing.assert_array_equal(o_mask, o_full[:2])
    assert masked.action_space.low[0] == -1.0  # rescaled from [-2, 2]
    hc = make_novel_env("HalfCheetahNoVel-v5")
    obs, _ = hc.reset(seed=0)
    qpos = hc.unwrapped.data.qpos
    assert obs.shape == (8,)
    np.testing.assert_allclose(obs, qpos[1:], rtol=0, atol=1e-12)
    a = np.full(6, 0.5, np.float32)
    _, r, term, _, info = hc.step(a)
    assert not term and r == pytest.approx(info["x_velocity"] - 0.1 * 6 * 0.25, abs=1e-9)


def test_mask_velocity_acrobot_keeps_the_angles() -> None:
    full, masked = gym.make("Acrobot-v1"), make_novel_env("AcrobotNoVel-v1")
    o_full, _ = full.reset(seed=2)
    o_mask, _ = masked.reset(seed=2)
    np.testing.assert_array_equal(o_mask, o_full[:4])  # cos / sin of both angles; the two velocities dropped
    assert masked.observation_space.shape == (4,) and masked.action_space.n == 3


def test_halfcheetah_fallback_passes_env_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    from ltc_control.agents.sb3_envs import HalfCheetahV5

    env = HalfCheetahV5()
    check_env(env, skip_render_check=True)
    o1, _ = env.reset(seed=3)
    o2, _ = env.reset(seed=3)
    np.testing.assert_array_equal(o1, o2)
    assert o1.shape == (17,) and env.dt == pytest.approx(0.05)


def test_halfcheetah_reimplementation_matches_gymnasium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make_novel_env uses HalfCheetahV5 for HalfCheetah-v5: it must be Gymnasium's env step for step."""
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its settotalmass warning to ./MUJOCO_LOG.TXT
    ours, theirs = make_novel_env("HalfCheetah-v5"), gym.make("HalfCheetah-v5")
    assert not isinstance(ours.unwrapped, type(theirs.unwrapped))  # really two implementations
    o1, _ = ours.reset(seed=5)
    o2, _ = theirs.reset(seed=5)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(1)
    for _ in range(150):
        action = rng.uniform(-1, 1, 6)
        a, b = ours.step(action), theirs.step(action)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]


def test_mask_velocity_inverted_pendulum_keeps_position_and_angle() -> None:
    full, masked = gym.make("InvertedPendulum-v5"), make_novel_env("InvertedPendulumNoVel-v5")
    o_full, _ = full.reset(seed=4)
    o_mask, _ = masked.reset(seed=4)
    np.testing.assert_array_equal(o_mask, o_full[:2])
    assert masked.observation_space.shape == (2,)
    # actions rescaled to [-1, 1] (the env's are [-3, 3])
    assert np.all(masked.action_space.low == -1.0) and np.all(masked.action_space.high == 1.0)


def test_mask_velocity_reacher_drops_the_joint_velocities() -> None:
    full, masked = gym.make("Reacher-v5"), make_novel_env("ReacherNoVel-v5")
    o_full, _ = full.reset(seed=4)
    o_mask, _ = masked.reset(seed=4)
    np.testing.assert_array_equal(o_mask, np.delete(o_full, [6, 7]))
    np.testing.assert_array_equal(o_full[6:8], full.unwrapped.data.qvel[:2])  # what was dropped: qvel
    assert masked.observation_space.shape == (8,)


def test_mask_velocity_swimmer_and_inverted_double_pendulum() -> None:
    """Held-out suite tasks added in session 18: Swimmer keeps its 3 angles (qpos[2:]), InvertedDoublePendulum
    the cart's x and the sin / cos of both hinges; every velocity (and IDP's constraint force) is dropped."""
    full, masked = gym.make("Swimmer-v5"), make_novel_env("SwimmerNoVel-v5")
    o_full, _ = full.reset(seed=5)
    o_mask, _ = masked.reset(seed=5)
    np.testing.assert_array_equal(o_mask, full.unwrapped.data.qpos[2:])
    np.testing.assert_array_equal(o_full[3:], full.unwrapped.data.qvel)  # what was dropped
    assert masked.observation_space.shape == (3,)
    full, masked = gym.make("InvertedDoublePendulum-v5"), make_novel_env("InvertedDoublePendulumNoVel-v5")
    o_full, _ = full.reset(seed=5)
    o_mask, _ = masked.reset(seed=5)
    qpos = full.unwrapped.data.qpos
    np.testing.assert_allclose(o_mask, [qpos[0], *np.sin(qpos[1:]), *np.cos(qpos[1:])], rtol=1e-6)
    np.testing.assert_array_equal(o_full[5:8], full.unwrapped.data.qvel)  # what was dropped
    assert masked.observation_space.shape == (5,)
    assert np.all(masked.action_space.low == -1.0) and np.all(masked.action_space.high == 1.0)
    action = np.full(masked.action_space.shape, 0.3, dtype=np.float32)
    a, b = full.step(action), masked.step(action)  # IDP's actions are [-1, 1] already: no rescaling
    np.testing.assert_array_equal(b[0], a[0][:5])
    assert b[1] == a[1] and b[2] == a[2]


@pytest.mark.parametrize(("base", "n_pos"), [("Hopper-v5", 5), ("Walker2d-v5", 8)])
def test_mask_velocity_hopper_walker_keep_the_positions_only(base: str, n_pos: int) -> None:
    """Held-out suite tasks: the kept entries are qpos[1:] (torso height, torso angle, joint angles), every
    qvel entry is dropped, and the masked env steps like the full one."""
    full, masked = gym.make(base), make_novel_env(base.replace("-v5", "NoVel-v5"))
    o_full, _ = full.reset(seed=3)
    o_mask, _ = masked.reset(seed=3)
    np.testing.assert_array_equal(o_mask, o_full[:n_pos])
    np.testing.assert_array_equal(o_mask, full.unwrapped.data.qpos[1:])
    np.testing.assert_allclose(o_full[n_pos:], full.unwrapped.data.qvel, atol=0)  # what was dropped
    assert masked.observation_space.shape == (n_pos,)
    action = np.full(masked.action_space.shape, 0.3, dtype=np.float32)
    a, b = full.step(action), masked.step(action)
    np.testing.assert_array_equal(b[0], a[0][:n_pos])
    assert b[1] == a[1] and b[2] == a[2]


def test_mask_velocity_errors() -> None:
    with pytest.raises(ValueError, match="no velocity mask known"):
        MaskVelocity(gym.make("BipedalWalker-v3"))
    with pytest.raises(ValueError, match="distinct indices"):
        MaskVelocity(gym.make("Pendulum-v1"), keep=[0, 0])


def _rod_centroid(frame: np.ndarray) -> tuple[float, float]:
    """Brightness-weighted (x, y) of a frame relative to the pivot (y grows downwards, as in images; OpenCV's
    pixel i is centred at coordinate i, and the pivot is at size / 2)."""
    img = frame[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    c = img.shape[0] / 2.0
    return float((img * xs).sum() / img.sum() - c), float((img * ys).sum() / img.sum() - c)


def test_pendulum_pixels_draws_the_angle_and_hides_the_velocity() -> None:
    """The image task: a (40, 40, 1) uint8 frame of the rod drawn from theta (0 up, counter-clockwise as in
    Gymnasium's renderer), the same frame for the same angle whatever the velocity; actions rescaled to
    [-1, 1] and the env's dynamics and rewards untouched."""
    env = make_novel_env("PendulumPixels-v1")
    assert env.observation_space == spaces.Box(0, 255, (40, 40, 1), np.uint8)
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    pix = env.unwrapped  # Pendulum-v1 itself
    wrapper = env
    while not isinstance(wrapper, PendulumPixels):
        wrapper = wrapper.env
    up, down, left = (_rod_centroid(wrapper.frame(t)) for t in (0.0, np.pi, np.pi / 2))
    assert up[1] < -5 and abs(up[0]) < 0.3  # above the pivot
    assert down[1] > 5 and abs(down[0]) < 0.3
    assert left[0] < -5 and abs(left[1]) < 0.3  # theta = +pi/2: counter-clockwise from up = left
    # a frame tells nearby angles apart (sub-pixel end points) and repeats exactly for the same angle
    assert np.abs(wrapper.frame(0.3).astype(int) - wrapper.frame(0.32).astype(int)).sum() > 0
    np.testing.assert_array_equal(wrapper.frame(1.0), wrapper.frame(1.0 + 2 * np.pi))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == (40, 40, 1) and obs.max() == 255 and obs.min() == 0
    np.testing.assert_array_equal(obs, wrapper.frame(pix.state[0]))
    full = gym.make("Pendulum-v1")
    full.reset(seed=0)
    for a in (0.5, -1.0, 1.0):
        obs, r, term, trunc, _ = env.step(np.array([a], np.float32))
        _, r_full, *_ = full.step(np.array([2.0 * a], np.float32))  # Pendulum's torque range is [-2, 2]
        assert r == pytest.approx(r_full) and not term
        np.testing.assert_array_equal(obs, wrapper.frame(pix.state[0]))
    theta, thetadot = pix.state
    pix.state = np.array([theta, thetadot + 3.0])  # another velocity, the same angle: the same frame
    np.testing.assert_array_equal(wrapper.observation(None), obs)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        PendulumPixels(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="size must be an integer >= 16"):
        PendulumPixels(gym.make("Pendulum-v1"), size=8)


def test_cue_memory_env_rewards() -> None:
    env = CueMemoryEnv(delay=2)
    obs, info = env.reset(seed=0)
    cue = info["cue"]
    assert obs[0] == cue and obs[1] == 0.0
    obs, r, term, _, _ = env.step(0)
    assert obs[0] == 0.0 and r == 0.0 and not term
    obs, _, _, _, _ = env.step(0)
    assert obs[1] == 1.0
    _, r, term, _, _ = env.step(1 if cue > 0 else 0)
    assert r == 1.0 and term


def test_inspection_recorder_reads_a_ppo_trained_policy() -> None:
    """The exported actor drives the env and the recorder captures every LTC neuron's state and tau."""
    from ltc_control.inspection import record

    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=1, seed=0)
    model = _tiny_model(env)
    model.learn(32)
    policy = to_policy(model)
    gym_env = make_novel_env("PendulumNoVel-v1")
    obs, _ = gym_env.reset(seed=0)
    with record(policy) as rec:
        state = policy.reset(1)
        for _ in range(12):
            action, state = policy.act(obs, state)
            obs, _, _, _, info = gym_env.step(action)
            rec.log(info)
    trace = rec.trace
    n = policy.controller.cell.num_neurons
    assert trace.state.shape == (12, n) and trace.tau.shape == (12, n)
    assert np.all(np.isfinite(trace.tau)) and np.all(trace.tau > 0)
    np.testing.assert_allclose(trace.state[-1], state[0].numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- benchmark
def test_benchmark_run_with_vecnormalize_and_gsde(
    tmp_path: Path, load_bench: Callable[[str], ModuleType]
) -> None:
    """A tiny benchmark run (LTC and LSTM, VecNormalize of observations and rewards, gSDE) writes its record,
    the VecNormalize statistics and the model; evaluation uses the saved statistics; the summary is
    written."""
    import pickle

    from stable_baselines3.common.vec_env import VecNormalize

    bench = load_bench("rl_bench")
    BenchmarkConfig, PPOConfig, RunSpec = bench.BenchmarkConfig, bench.PPOConfig, bench.RunSpec
    evaluate_model, run_one, summarize = bench.evaluate_model, bench.run_one, bench.summarize

    config = BenchmarkConfig(
        env_id="PendulumNoVel-v1",
        timesteps=32,
        seeds=(0,),
        models=("ltc", "lstm"),
        ppo=PPOConfig(
            n_envs=2,
            n_steps=16,
            batch_size=16,
            n_epochs=1,
            normalize_observations=True,
            normalize_rewards=True,
            use_sde=True,
            sde_sample_freq=4,
            ortho_init=False,
            activation="relu",
        ),
        ltc=from_small(SMALL_LTC),
        lstm_hidden_size=8,
        lstm_net_arch=(8,),
        liquid_policy_kwargs={"action_scale_init": 1.5},
        eval_episodes=1,
        curve_points=2,
        out_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
        name="tiny",
    )
    for model_name in ("ltc", "lstm"):
        record = run_one(config, RunSpec(model_name, 0), tmp_path / "runs")
        assert record["timesteps"] == 32 and len(record["eval_returns"]) == 1
        # the CPU and torch's kernels for it are recorded (seeded runs reproduce on one kind of CPU only)
        assert (
            record["cpu"]["model"]
            and record["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability()
        )
        stem = tmp_path / "runs" / f"PendulumNoVel-v1__{model_name}__0__32"
        assert record["saved"] == {"vecnormalize": f"{stem}.vecnormalize.pkl", "model": f"{stem}.zip"}
        model = RecurrentPPO.load(f"{stem}.zip", device="cpu")
        assert model.use_sde
        if model_name == "ltc":  # liquid_policy_kwargs reach the policy
            assert model.policy.action_scale_init == 1.5
        with open(f"{stem}.vecnormalize.pkl", "rb") as f:
            norm = pickle.load(f)
        assert isinstance(norm, VecNormalize) and norm.norm_obs and norm.norm_reward and not norm.training
        assert norm.gamma == config.ppo.gamma
        # the loaded model with the saved statistics reproduces the record (deterministic, same seeds)
        again = evaluate_model(model, config.env_id, 1, vec_normalize=norm)
        np.testing.assert_allclose(again, record["eval_returns"], rtol=1e-5)
        if model_name == "ltc":  # without the statistics the policy sees other inputs
            assert evaluate_model(model, config.env_id, 1) != pytest.approx(record["eval_returns"])
    # a pool worker whose run another process finished while it waited in the queue does not retrain it
    record_path = tmp_path / "runs" / "PendulumNoVel-v1__ltc__0__32.json"
    before = record_path.stat().st_mtime_ns
    done = bench._worker((config, RunSpec("ltc", 0), str(tmp_path / "runs"), os.getpid(), True))
    assert done == "ltc seed 0 (already finished by another process)"
    assert record_path.stat().st_mtime_ns == before
    md = summarize(config)
    text = md.read_text()
    assert text.startswith("# PendulumNoVel-v1: LTC-PPO vs LSTM-PPO\n") and "CfC:" not in text
    assert "gSDE (sample freq 4)" in text and "VecNormalize(obs, reward)" in text
    assert "Runs finished" in text and "sb3-contrib" in text
    assert f"torch {torch.backends.cpu.get_cpu_capability()})" in text
    assert (tmp_path / "results" / "tiny.png").is_file() and (tmp_path / "results" / "tiny.csv").is_file()


def test_benchmark_difference_to_lstm_is_welch(load_bench: Callable[[str], ModuleType]) -> None:
    _differences_to_lstm = load_bench("rl_bench")._differences_to_lstm

    rows = [
        {"model": "ltc", "seeds": 5, "eval_return_mean": -150.0, "eval_return_std": 10.0},
        {"model": "cfc", "seeds": 1, "eval_return_mean": -100.0, "eval_return_std": float("nan")},
        {"model": "lstm", "seeds": 4, "eval_return_mean": -140.0, "eval_return_std": 20.0},
    ]
    # se = sqrt(10^2 / 5 + 20^2 / 4) = sqrt(120); a single-seed row has no spread and is left out
    assert _differences_to_lstm(rows) == [f"ltc - lstm: -10.0 +- {120**0.5:.1f} (5 vs 4 seeds)"]
    assert _differences_to_lstm(rows[:2]) == []


def test_tau_scale_speeds_up_the_named_roles_and_survives_save_load(tmp_path: Path) -> None:
    """``tau_scale={"motor": 0.1}``: the actor's motor neuron(s) start with a tenth of the effective ``cm`` of
    the same policy built without it (same seed), every other neuron and the whole critic the same; the option
    is saved, the model loads and predicts the same; bad roles and factors are named."""
    ncp = SMALL_LTC  # an NCP
    plain = _tiny_model(policy_kwargs={"controller": ncp}).policy
    model = _tiny_model(policy_kwargs={"controller": ncp, "tau_scale": {"motor": 0.1}})
    policy = model.policy
    motor = torch.tensor([r == "motor" for r in policy.controller.cell.wiring.roles])
    assert bool(motor.any())
    cm, cm_plain = (p.controller.cell.effective_parameters()["cm"] for p in (policy, plain))
    torch.testing.assert_close(cm[motor], 0.1 * cm_plain[motor])
    torch.testing.assert_close(cm[~motor], cm_plain[~motor], rtol=0, atol=0)
    critic, critic_plain = policy.critic_controller.state_dict(), plain.critic_controller.state_dict()
    assert critic.keys() == critic_plain.keys()
    assert all(torch.equal(critic[k], critic_plain[k]) for k in critic)
    model.learn(32)
    obs = np.random.default_rng(0).normal(size=policy.observation_space.shape).astype(np.float32)
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.tau_scale == {"motor": 0.1}
    again, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(action, again)
    for bad, match in (
        ({"sensory": 0.1}, "unknown neuron role 'sensory'"),
        ({"motor": 0.0}, r"tau_scale\['motor'\] must be a finite number > 0"),
        ({"motor": float("nan")}, "finite number > 0"),
        ({"motor": "fast"}, "finite number > 0"),
        (0.1, "must be a mapping of neuron roles"),
    ):
        with pytest.raises(ValueError, match=match):
            _tiny_model(policy_kwargs={"controller": ncp, "tau_scale": bad})
    # a role the actor's wiring lacks (an NCP: motor, command and inter neurons)
    with pytest.raises(ValueError, match=r"tau_scale: no neuron of this wiring has the role 'hidden'"):
        _tiny_model(policy_kwargs={"tau_scale": {"hidden": 0.5}})
    with pytest.raises(ValueError, match="tau_scale scales LTC time constants; .* kind 'cfc'"):
        _tiny_model(policy_kwargs={"controller": {"kind": "cfc"}, "tau_scale": {"motor": 0.5}})


@pytest.mark.parametrize(
    ("env_id", "readout", "controller"),
    [
        ("CartPole-v1", "motor", None),  # the discrete default controller (dense 16, dt 0.1)
        ("Pendulum-v1", "motor", SMALL_LTC),  # continuous, tanh head, an NCP
        ("CartPole-v1", "state", SMALL_CFC),  # the state readout, another cell kind
    ],
)
def test_action_bias_init_center_zeroes_the_head_at_rest(
    tmp_path: Path, env_id: str, readout: str, controller: dict | None
) -> None:
    """``action_bias_init="center"``: the head's output before the squash is zero at the actor's resting
    state under zero features (which has settled), only the bias differs from the plain policy (same seed),
    the option survives save / load (the loaded bias is the saved one) and bad values are named."""
    kwargs: dict = {"controller": controller, "action_readout": readout}
    plain = _tiny_model(env_id, policy_kwargs=kwargs).policy
    model = _tiny_model(env_id, policy_kwargs={**kwargs, "action_bias_init": "center"})
    policy = model.policy
    outputs, states = policy.resting_state()
    again_outputs, again_states = policy.resting_state(2 * CENTER_STEPS)
    torch.testing.assert_close(again_states, states, rtol=0, atol=1e-4)  # settled
    head_in = states if readout == "state" else outputs
    pre = policy.action_net.linear(head_in) if readout == "state" else policy.action_net.affine(head_in)
    torch.testing.assert_close(pre, torch.zeros_like(pre), rtol=0, atol=1e-6)
    plain_pre = plain.action_net.linear(head_in) if readout == "state" else plain.action_net.affine(head_in)
    assert float(plain_pre.abs().max()) > 1e-3  # the plain head does prefer something at rest
    ours, theirs = policy.state_dict(), plain.state_dict()
    bias = "action_net.linear.bias" if readout == "state" else "action_net.bias"
    assert [k for k in ours if not torch.equal(ours[k], theirs[k])] == [bias]
    model.learn(32)
    obs = np.random.default_rng(0).normal(size=policy.observation_space.shape).astype(np.float32)
    action, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy.action_bias_init == "center"
    assert torch.equal(loaded.policy.state_dict()[bias], model.policy.state_dict()[bias])
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], action)


def test_action_bias_init_number_and_bad_values() -> None:
    """A number fills the head's bias; anything but a finite number or "center" is named."""
    policy = _tiny_model("CartPole-v1", policy_kwargs={"action_bias_init": 0.25}).policy
    assert torch.equal(policy.action_net.bias, torch.full((2,), 0.25))
    state = _tiny_model("CartPole-v1", policy_kwargs={"action_bias_init": -1, "action_readout": "state"})
    assert torch.equal(state.policy.action_net.linear.bias, torch.full((2,), -1.0))
    for bad in ("centre", float("nan"), float("inf"), None, [0.0]):
        with pytest.raises(ValueError, match="action_bias_init must be a finite number or 'center'"):
            _tiny_model("CartPole-v1", policy_kwargs={"action_bias_init": bad})
