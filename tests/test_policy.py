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


# ------------------------------------------------------------------------ act: fast path == general path
def _count_general(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of the general act path (the fast path declines into it)."""
    calls = [0]
    general = Policy.act_general

    def counting(self: Policy, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        return general(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Policy, "act_general", counting)
    return calls


def _act_both(
    policy: Policy, obs: np.ndarray | torch.Tensor, s_fast: object, s_gen: object, dt: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step through act() and through the general path; asserts bit-identical actions and states."""
    a_fast, new_fast = policy.act(obs, s_fast, dt)  # type: ignore[arg-type]
    a_gen, new_gen = policy.act_general(obs, s_gen, dt)  # type: ignore[arg-type]
    assert a_fast.dtype == a_gen.dtype == np.float32 and a_fast.shape == a_gen.shape
    assert np.array_equal(a_fast, a_gen)
    assert torch.equal(new_fast, new_gen) and not new_fast.requires_grad
    return new_fast, new_gen


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("training", [False, True])
def test_vector_act_fast_path_is_bit_identical(
    kind: str, training: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = _vector_policy(kind).train(training)
    g = torch.Generator().manual_seed(4)
    obs = torch.randn(40, 3, 5, generator=g).numpy()
    calls = _count_general(monkeypatch)
    s_fast = s_gen = None
    single_fast = single_gen = None
    for t in range(40):
        if t in (13, 27):  # episode resets: a fresh state, by None or by reset()
            s_fast = s_gen = None if t == 13 else policy.reset(3)
            single_fast = single_gen = None
        dt = None if t % 3 else 0.5
        s_fast, s_gen = _act_both(policy, obs[t], s_fast, s_gen, dt)  # batch of 3
        single_fast, single_gen = _act_both(policy, obs[t, 0].astype(np.float64), single_fast, single_gen, dt)
    assert calls[0] == 40 * 2  # the general path ran only when called directly: act took the fast path
    assert policy.training is training
    assert all(m.training is training for m in policy.modules())
    _assert_act_is_forward_per_step(policy, obs[:13])


def _assert_act_is_forward_per_step(policy: Policy, obs: np.ndarray) -> None:
    """act(obs[t], state) is, bit for bit, forward(obs[t][:, None], state) in eval mode, state carried."""
    training = policy.training
    state = fwd_state = None
    for t in range(len(obs)):
        action, state = policy.act(obs[t], state)
        with torch.no_grad():
            expected, fwd_state = policy.eval()(obs[t][:, None], fwd_state)
        policy.train(training)
        np.testing.assert_array_equal(action, expected[:, 0].numpy())
        assert torch.equal(state, fwd_state)


@pytest.mark.parametrize("kind", ["ltc", "cfc", "mlp"])
def test_image_act_fast_path_is_bit_identical_and_acts_in_eval_mode(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # dropout and augmentation would change the actions if act() ran in training mode
    perception = PerceptionConfig(
        dropout=0.5, augment=AugmentConfig(enabled=True, shadow_prob=1.0, brightness_prob=1.0)
    )
    policy = _image_policy(kind, perception=perception)
    frames = _frames(2, 6, seed=7)
    calls = _count_general(monkeypatch)
    for training in (True, False):
        policy.train(training)
        s_fast = s_gen = None
        for t in range(6):
            s_fast, s_gen = _act_both(policy, frames[:, t], s_fast, s_gen, None)
        s_fast = s_gen = None
        for t in range(3):  # single frames, uint8 and float in [0, 1] (numpy and torch)
            as_float = torch.tensor(frames[0, t], dtype=torch.float32) / 255.0
            for obs in (frames[0, t], as_float, as_float.numpy()):
                _act_both(policy, obs, s_fast, s_gen, None)
            s_fast, s_gen = _act_both(policy, frames[0, t], s_fast, s_gen, None)
        assert all(m.training is training for m in policy.modules())
        _assert_act_is_forward_per_step(policy, frames.swapaxes(0, 1))
    assert calls[0] == 2 * (6 + 3 * 4)


def test_act_keeps_grad_mode_and_forward_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _vector_policy("ltc").eval()
    obs = np.linspace(-1, 1, 5, dtype=np.float32)
    seen: list[int] = []
    policy.controller.register_forward_hook(lambda _m, _i, out: seen.append(out[0].shape[0]))
    calls = _count_general(monkeypatch)
    with torch.no_grad():
        a_off, s_off = policy.act(obs)
        assert not torch.is_grad_enabled()
    a_on, s_on = policy.act(obs)
    assert torch.is_grad_enabled() and not s_on.requires_grad
    np.testing.assert_array_equal(a_off, a_on)
    torch.testing.assert_close(s_off, s_on, rtol=0, atol=0)
    assert seen == [1, 1] and calls[0] == 0


def test_act_falls_back_to_general_path_for_unusual_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _image_policy("ltc").train()
    policy.perception.eval()  # type: ignore[union-attr]  # a mixed-mode tree: act() behaves as it always did
    calls = _count_general(monkeypatch)
    policy.act(_frames(1, 1)[0, 0])
    assert calls[0] == 1
    assert all(m.training for m in policy.modules())  # eval() then train(True) of the whole tree, as before

    class Shifted(Policy):
        def features(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
            return super().features(obs) + 1.0

    torch.manual_seed(0)
    shifted = Shifted(
        PolicyConfig(observation="vector", vector_size=5, action_size=2, controller=_ctrl("gru"))
    )
    plain = _vector_policy("gru")
    obs = np.ones(5, np.float32)
    # an overridden method the fast path stands in for sends act() through forward()
    np.testing.assert_array_equal(shifted.act(obs)[0], plain.act(obs + 1.0)[0])
    assert calls[0] == 2
    with pytest.raises(ValueError, match="uint8 or float"):  # an unusual dtype: the general path decides
        policy.act(_frames(1, 1)[0, 0].astype(np.int16))
    assert calls[0] == 3


def _error(fn: object, *args: object) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args)  # type: ignore[operator]
    return str(info.value)


@pytest.mark.parametrize("training", [False, True])
def test_act_errors_are_those_of_the_general_path(training: bool) -> None:
    vec = _vector_policy("ltc").train(training)
    nan = np.ones(5, np.float32)
    nan[2] = np.nan
    inf_pair = np.ones((2, 5))
    inf_pair[1, :2] = (np.inf, -np.inf)  # sums to NaN
    bad_vectors: list[tuple[object, object]] = [
        (np.ones(4, np.float32), None),  # wrong width
        (np.ones((1, 2, 5), np.float32), None),  # a sequence
        (np.ones((0, 5), np.float32), None),  # empty batch
        (nan, None),
        (torch.from_numpy(nan), None),
        (inf_pair, None),
        (np.full(5, np.inf, np.float32), None),
        (np.ones(5, np.float32), torch.zeros(1, 7)),  # state of the wrong width
        (np.ones((2, 5), np.float32), torch.zeros(3, vec.state_size)),  # state of the wrong batch
        ("not an array", None),
    ]
    for obs, state in bad_vectors:
        message = _error(vec.act_general, obs, state)
        assert _error(vec.act, obs, state) == message
        assert all(m.training is training for m in vec.modules())
    img = _image_policy("ltc").train(training)
    frame = _frames(1, 1)[0, 0]
    nan_frame = frame.astype(np.float32) / 255.0
    nan_frame[3, 4, 1] = np.nan
    bad_images: list[tuple[object, object]] = [
        (frame.astype(np.int32), None),
        (np.moveaxis(frame, -1, 0), None),  # channel-first
        (np.zeros((32, 32, 3), np.uint8), None),  # another image size
        (_frames(1, 2), None),  # a sequence
        (nan_frame, None),
        (torch.from_numpy(nan_frame), None),
        (frame, torch.zeros(2, img.state_size)),
    ]
    for obs, state in bad_images:
        message = _error(img.act_general, obs, state)
        assert _error(img.act, obs, state) == message
        assert all(m.training is training for m in img.modules())
    huge = np.full(5, 1e300)  # finite float64 whose sum overflows: same outcome on both paths
    assert _error(vec.act, huge, None) == _error(vec.act_general, huge, None)
