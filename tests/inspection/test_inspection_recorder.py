"""Recorder: hand-computed liquid time constants, shapes, non-LTC cells, sequence calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inspection_helpers import two_neuron_ltc

from ltc_control.cells.baselines import LSTMCell
from ltc_control.cells.cfc import CfCCell
from ltc_control.inspection.recorder import info_to_arrays, record
from ltc_control.sequence import SequenceModel


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


def _hand_step(v: np.ndarray, x: float, dt: float, sigma: float, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The fused step of docs/architecture.md written out for the two-neuron circuit, in plain floats.

    Returns the new state and the pre-update state of the last unfold.
    """
    gleak, cm = np.array([0.5, 0.25]), np.array([0.8, 0.6])
    r = 1.0 * _sigmoid(sigma * (x - 0.5))  # input -> neuron 1, erev +1
    v_pre = v
    for _ in range(k):
        v_pre = v.copy()
        s10 = 2.0 * _sigmoid(sigma * (v[1] - 0.5))  # neuron 1 -> 0, erev +1
        s01 = 1.0 * _sigmoid(sigma * (v[0] - 0.5))  # neuron 0 -> 1, erev -1
        a = cm / (dt / k)
        num = np.array([a[0] * v[0] + s10 * 1.0, a[1] * v[1] + s01 * -1.0 + r * 1.0])
        den = np.array([a[0] + gleak[0] + s10, a[1] + gleak[1] + s01 + r])
        v = num / den
    return v, v_pre


def test_two_neuron_tau_matches_hand_values() -> None:
    cell = two_neuron_ltc(sigma=0.0)
    with record(cell) as trace:
        h = cell.initial_state(1)
        for x in (0.0, 1.0, -2.0, 3.0):
            _, h = cell(torch.tensor([[x]], dtype=torch.float64), h, dt=1.0)
    # sigma = 0: every synapse is half open whatever the state, so tau is constant
    expected = np.array([0.8 / (0.5 + 0.5 * 2.0), 0.6 / (0.25 + 0.5 * 1.0 + 0.5 * 1.0)])
    np.testing.assert_allclose(expected, [0.8 / 1.5, 0.48])
    np.testing.assert_allclose(trace.tau, np.tile(expected, (4, 1)), rtol=1e-12)
    np.testing.assert_allclose(trace.conductance, np.tile([1.5, 1.25], (4, 1)), rtol=1e-12)
    # the state follows the hand-written fused step: v0 -> 1/1.5 (fixed point), v1 stays 0
    v = np.zeros(2)
    for t, x in enumerate((0.0, 1.0, -2.0, 3.0)):
        v, v_pre = _hand_step(v, x, 1.0, 0.0)
        np.testing.assert_allclose(trace.state[t], v, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(trace.synaptic_current[t, 0], 1.0 * (1.0 - v_pre[0]), rtol=1e-12)
        np.testing.assert_allclose(trace.sensory_current[t, 1], 0.5 * (1.0 - v_pre[1]), rtol=1e-12)
    assert trace.state[0, 1] == 0.0


def test_two_neuron_tau_state_dependent() -> None:
    cell = two_neuron_ltc(sigma=4.0)
    xs = [1.5, 0.2, -1.0, 2.0, 0.7]
    with record(cell) as trace:
        h = cell.initial_state(1)
        for x in xs:
            _, h = cell(torch.tensor([[x]], dtype=torch.float64), h, dt=0.5)
    v = np.zeros(2)
    for t, x in enumerate(xs):
        v, v_pre = _hand_step(v, x, 0.5, 4.0)
        s10 = 2.0 * _sigmoid(4.0 * (v_pre[1] - 0.5))
        s01 = 1.0 * _sigmoid(4.0 * (v_pre[0] - 0.5))
        r = _sigmoid(4.0 * (x - 0.5))
        tau = np.array([0.8 / (0.5 + s10), 0.6 / (0.25 + s01 + r)])
        np.testing.assert_allclose(trace.state[t], v, rtol=1e-10)
        np.testing.assert_allclose(trace.tau[t], tau, rtol=1e-10)
    # the liquid time constant really moves with the input
    assert np.ptp(trace.tau[:, 1]) > 0.05
    assert np.all(trace.dt == 0.5)


def test_recorded_shapes_and_output_equal_readout(ncp_trace) -> None:
    tr = ncp_trace
    assert tr.state.shape == (120, 19)
    for key in ("tau", "conductance", "sensory_current", "synaptic_current"):
        assert getattr(tr, key).shape == (120, 19)
    assert tr.output.shape == (120, 1) and tr.action.shape == (120, 1)
    # affine output mapping initialised to identity: the readout is the motor state
    np.testing.assert_allclose(tr.output[:, 0], tr.state[:, 0], rtol=1e-6)
    np.testing.assert_allclose(tr.action[:, 0], np.tanh(tr.output[:, 0]), rtol=1e-6)
    assert tr.neuron_roles[0] == "motor" and tr.layer_indices("command").size == 6
    assert tr.info["position"].shape == (120, 2)
    assert tr.adjacency.shape == (19, 19) and tr.sensory_adjacency.shape == (32, 19)
    assert np.all(tr.tau > 0)


def test_sequence_calls_are_recorded_step_by_step() -> None:
    cell = two_neuron_ltc(sigma=2.0)
    model = SequenceModel(cell)
    x = torch.linspace(-1, 1, 7, dtype=torch.float64).reshape(1, 7, 1)
    with torch.no_grad():
        y_plain, _ = model(x)
    with record(model) as trace, torch.no_grad():
        y_rec, _ = model(x)
    assert trace.num_steps == 7
    np.testing.assert_allclose(trace.output[:, 0], y_plain[0, :, 0].numpy(), rtol=1e-12)
    np.testing.assert_allclose(y_rec.numpy(), y_plain.numpy(), rtol=1e-12)
    # the hooks and the instance override are gone afterwards
    assert "forward_sequence" not in vars(cell) and not cell._forward_hooks


@pytest.mark.parametrize("make", [lambda: LSTMCell(5, 4, 1), lambda: CfCCell(5, 6, 1)])
def test_non_ltc_cells_record_states_only(make) -> None:
    cell = make()
    with record(cell, batch_index=1) as trace, torch.no_grad():
        y, h = cell.forward_sequence(torch.randn(2, 9, 5))
    assert trace.state.shape == (9, cell.num_neurons)
    assert trace.tau is None and trace.synaptic_current is None
    np.testing.assert_allclose(trace.state[-1], h[1, : cell.num_neurons].numpy(), rtol=1e-6)
    np.testing.assert_allclose(trace.output[:, 0], y[1, :, 0].numpy(), rtol=1e-6)


def test_recorder_errors() -> None:
    cell = two_neuron_ltc()
    with pytest.raises(ValueError, match="empty"):
        with record(cell) as trace:
            pass
        trace.trace  # noqa: B018
    with pytest.raises(ValueError, match="batch_index"):
        with record(cell, batch_index=3):
            cell(torch.zeros(1, 1, dtype=torch.float64), cell.initial_state(1))
    with pytest.raises(TypeError, match="recurrent cell"):
        with record(torch.nn.Linear(2, 2)):
            pass


def test_info_to_arrays_keeps_numeric_consistent_keys() -> None:
    infos = [{"a": 1.0, "p": [1, 2], "s": "x", "b": True}, None, {"a": 3.0, "p": [3, 4], "b": False}]
    out = info_to_arrays(infos)
    assert set(out) == {"a", "p", "b"}
    np.testing.assert_array_equal(out["a"], [1.0, np.nan, 3.0])
    assert out["p"].shape == (3, 2) and out["b"][2] == 0.0


@pytest.mark.parametrize("make", [lambda: two_neuron_ltc(sigma=2.0), lambda: CfCCell(1, 6, 1).double()])
def test_state_sequence_calls_are_recorded_and_perturbed_step_by_step(make) -> None:
    """``state_sequence`` (the fused every-state path the sb3 adapter uses) goes through the hooks too, so a
    recorder sees every step and a clamp holds the neuron; both overrides are gone afterwards."""
    from ltc_control.inspection.perturbation import clamp_neurons

    cell = make()
    x = torch.linspace(-1, 1, 7, dtype=torch.float64).reshape(1, 7, 1)
    with torch.no_grad():
        plain = cell.state_sequence(x)
    with record(cell) as trace, torch.no_grad():
        recorded = cell.state_sequence(x)
    assert trace.num_steps == 7
    np.testing.assert_allclose(recorded.numpy(), plain.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(trace.state, plain[0, :, : cell.num_neurons].numpy(), rtol=1e-9, atol=1e-12)
    with clamp_neurons(cell, {1: 0.25}), torch.no_grad():
        clamped = cell.state_sequence(x)
    assert torch.all(clamped[0, :, 1] == 0.25) and not torch.allclose(clamped, plain)
    assert "state_sequence" not in vars(cell) and "forward_sequence" not in vars(cell)
    assert not cell._forward_hooks
    torch.testing.assert_close(cell.state_sequence(x), plain)
