"""Policy (perception + controller + action head) and controllers (policy.py, controllers.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ltc_control.config import apply_overrides, from_dict, to_dict
from ltc_control.controllers import (
    ControllerConfig,
    FeedForwardCell,
    WiringConfig,
    build_controller,
    build_wiring,
    controller_summary,
    count_parameters,
    count_synapses,
)
from ltc_control.perception import AugmentConfig, PerceptionConfig
from ltc_control.policy import ActionHeadConfig, Policy, PolicyConfig
from ltc_control.wirings import lane_keeping_ncp

KINDS = ["ltc", "cfc", "lstm", "gru", "ctrnn", "mlp"]
IMAGE = (16, 32, 3)
RECURRENT = ["ltc", "cfc", "lstm", "gru", "ctrnn"]


def _ctrl(kind: str) -> ControllerConfig:
    # small dense sizes keep the tests fast; the wired kinds use the paper's lane-keeping NCP
    return ControllerConfig(kind=kind, units=16, lstm_hidden=16, cfc_backbone_units=16)


def _image_policy(kind: str, **kw: object) -> Policy:
    torch.manual_seed(0)
    return Policy(PolicyConfig(image_shape=IMAGE, controller=_ctrl(kind), **kw))  # type: ignore[arg-type]


def _vector_policy(kind: str, d: int = 5, a: int = 2) -> Policy:
    torch.manual_seed(0)
    return Policy(PolicyConfig(observation="vector", vector_size=d, action_size=a, controller=_ctrl(kind)))


def _frames(b: int, t: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, t, *IMAGE), dtype=np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_image_forward_shapes(kind: str) -> None:
    policy = _image_policy(kind)
    actions, state = policy(_frames(2, 3))
    assert actions.shape == (2, 3, 1)
    assert state.shape == (2, policy.state_size)
    assert float(actions.detach().abs().max()) <= 1.0
    assert policy.features(_frames(2, 3)).shape == (2, 3, 32)
    assert policy.controller.cell is not None and policy.perception is not None


@pytest.mark.parametrize("kind", KINDS)
def test_vector_act_steps_equal_sequence_forward(kind: str) -> None:
    policy = _vector_policy(kind).eval()
    obs = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        seq, h_seq = policy(obs)
    assert seq.shape == (3, 6, 2)
    state = policy.reset(3)
    steps = []
    for t in range(6):
        action, state = policy.act(obs[:, t].numpy(), state)
        steps.append(action)
    np.testing.assert_allclose(np.stack(steps, 1), seq.numpy(), atol=1e-5, rtol=0)
    torch.testing.assert_close(state, h_seq, atol=1e-5, rtol=0)
    single, _ = policy.act(obs[0, 0].numpy())
    assert single.shape == (2,) and single.dtype == np.float32
    np.testing.assert_allclose(single, seq[0, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["ltc", "mlp"])
def test_image_act_steps_equal_sequence_forward(kind: str) -> None:
    policy = _image_policy(kind)
    frames = _frames(2, 4, seed=3)
    policy.eval()
    with torch.no_grad():
        seq, _ = policy(frames)
    policy.train()  # act() must switch to eval itself and restore the mode
    state = policy.reset(2)
    out = []
    for t in range(4):
        action, state = policy.act(frames[:, t], state)
        out.append(action)
    assert policy.training
    np.testing.assert_allclose(np.stack(out, 1), seq.numpy(), atol=1e-5, rtol=0)
    one, _ = policy.act(frames[0, 0])
    assert one.shape == (1,)


@pytest.mark.parametrize("kind", RECURRENT)
def test_episode_starts_reset_state(kind: str) -> None:
    policy = _vector_policy(kind).eval()
    g = torch.Generator().manual_seed(2)
    first, second = torch.randn(2, 4, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    joined = torch.cat([first, second], 1)
    starts = torch.zeros(2, 7)
    starts[:, 4] = 1
    with torch.no_grad():
        reset, _ = policy(joined, episode_starts=starts)
        fresh, _ = policy(second)
        carried, _ = policy(joined)
    torch.testing.assert_close(reset[:, 4:], fresh, atol=1e-6, rtol=0)
    assert float((carried[:, 4:] - fresh).abs().max()) > 1e-4  # without the reset the state carries over
    # numpy bool starts work too
    with torch.no_grad():
        reset_np, _ = policy(joined.numpy(), episode_starts=starts.numpy().astype(bool))
    torch.testing.assert_close(reset_np, reset)


def test_mlp_has_no_memory() -> None:
    policy = _vector_policy("mlp").eval()
    a = torch.randn(1, 3, 5)
    b = a.clone()
    b[:, 0] += 5.0
    with torch.no_grad():
        ya, _ = policy(a)
        yb, _ = policy(b)
    torch.testing.assert_close(ya[:, 1:], yb[:, 1:])
    assert isinstance(policy.controller.cell, FeedForwardCell)


def test_shape_errors_name_expected_shape_and_fix() -> None:
    policy = _image_policy("ltc")
    with pytest.raises(ValueError, match=r"\(B, T, 16, 32, 3\).*got \(2, 16, 32, 3\).*obs\[:, None\]"):
        policy(_frames(2, 1)[:, 0])
    with pytest.raises(ValueError, match=r"channel-last.*permute"):
        policy(torch.zeros(1, 2, 3, 16, 32, dtype=torch.uint8))
    with pytest.raises(
        ValueError, match=r"built for 16x32x3 images.*PolicyConfig\(image_shape=\(32, 32, 3\)\)"
    ):
        policy(torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        policy(torch.zeros(1, 2, 16, 32, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"act\(\) takes one \(16, 32, 3\) image or a batch"):
        policy.act(_frames(1, 2))
    vec = _vector_policy("gru")
    with pytest.raises(ValueError, match=r"\(B, T, 5\), got \(2, 5\).*act"):
        vec(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="NaN or inf"):
        vec(torch.full((1, 2, 5), float("nan")))
    with pytest.raises(ValueError, match=r"state_size=16"):
        vec(torch.zeros(2, 1, 5), state=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="vector_size >= 1"):
        PolicyConfig(observation="vector")


def test_float_images_and_saliency_gradients() -> None:
    policy = _image_policy("ltc").eval()
    frames = _frames(1, 2, seed=5)
    as_float = torch.tensor(frames, dtype=torch.float32) / 255.0
    with torch.no_grad():
        a_uint8, _ = policy(frames)
        a_float, _ = policy(as_float)
    torch.testing.assert_close(a_uint8, a_float)
    x = as_float.clone().requires_grad_(True)
    actions, _ = policy(x)
    actions.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    maps = policy.perception.conv_activations(policy.preprocess(frames))  # type: ignore[union-attr]
    assert [m.shape[1] for m in maps] == [24, 36, 48, 64, 8]


def test_augmentation_only_in_training() -> None:
    cfg = PerceptionConfig(augment=AugmentConfig(enabled=True, shadow_prob=1.0, brightness_prob=1.0))
    policy = _image_policy("mlp", perception=cfg)
    frames = _frames(2, 2)
    with torch.no_grad():
        policy.train()
        train_a, _ = policy(frames)
        policy.eval()
        eval_a, _ = policy(frames)
        eval_b, _ = policy(frames)
    torch.testing.assert_close(eval_a, eval_b)
    assert float((train_a - eval_a).abs().max()) > 1e-6


def test_action_head_and_two_actions() -> None:
    cfg = PolicyConfig(
        image_shape=IMAGE,
        action_size=2,
        action_head=ActionHeadConfig(squash="none", init_scale=2.0, init_bias=0.5, learnable=False),
    )
    policy = Policy(cfg)
    assert policy.controller.output_size == 2
    y = torch.tensor([[0.25, -1.0]])
    torch.testing.assert_close(policy.action_head(y), torch.tensor([[1.0, -1.5]]))
    assert "action_scale" in dict(policy.named_buffers())
    wiring = policy.controller.wiring
    assert wiring.output_size == 2 and wiring.input_size == 32 and wiring.layer_sizes()["inter"] == 12


def test_paper_counts() -> None:
    ltc = build_controller(ControllerConfig(kind="ltc"), 32, 1)
    assert ltc.wiring == lane_keeping_ncp(seed=22222)
    assert count_synapses(ltc) == ltc.wiring.num_synapses == 252
    # paper: 1,065 LTC parameters (3 per neuron + 4 per synapse); the affine input/output maps add 2*32 + 2*1
    assert count_parameters(ltc, effective=True) == 3 * 19 + 4 * 252 + 2 * 32 + 2 == 1131
    ctrnn = build_controller(ControllerConfig(kind="ctrnn", units=64), 32, 1)
    assert count_parameters(ctrnn) == 6273  # paper's CT-RNN-64: 6,273
    lstm = build_controller(ControllerConfig(kind="lstm"), 32, 1)
    assert count_parameters(lstm) == 24_897 + 4 * 64  # paper's LSTM-64 + PyTorch's second bias vector
    assert count_synapses(lstm) is None
    summary = controller_summary(build_controller(ControllerConfig(kind="cfc"), 32, 1))
    assert summary["synapses"] == 252 and summary["neurons"] == 19


@pytest.mark.parametrize(
    ("wiring", "units"),
    [
        (WiringConfig(preset="ncp", inter=8, command=4, sensory_fanout=3, inter_fanout=2, motor_fanin=3), 13),
        (WiringConfig(preset="auto_ncp", units=10), 10),
        (WiringConfig(preset="fully_connected", units=6), 6),
        (WiringConfig(preset="random", units=7, sparsity=0.3), 7),
    ],
)
def test_wiring_presets_and_saved_round_trip(wiring: WiringConfig, units: int) -> None:
    built = build_wiring(wiring, 32, 1)
    assert built.units == units and built.input_size == 32 and built.output_size == 1
    saved = WiringConfig(preset="saved", saved=built.to_dict())
    assert build_wiring(saved, 32, 1) == built
    with pytest.raises(ValueError, match="saved wiring has 32 inputs"):
        build_wiring(saved, 16, 1)


def test_policy_config_yaml_and_overrides() -> None:
    cfg = apply_overrides(PolicyConfig(), ["controller.kind=cfc", "controller.wiring.preset=auto_ncp"])
    assert cfg.controller.kind == "cfc" and cfg.controller.wiring.preset == "auto_ncp"
    assert from_dict(PolicyConfig, to_dict(cfg)) == cfg
    policy = Policy(PolicyConfig(image_shape=IMAGE))
    resolved = policy.resolved_config()
    assert resolved.controller.wiring.preset == "saved"
    assert from_dict(PolicyConfig, to_dict(resolved)) == resolved
    rebuilt = Policy(dataclasses.replace(resolved))
    assert rebuilt.controller.wiring == policy.controller.wiring
