"""SequenceModel: shapes, dt and episode_starts handling, step(), validation, base-class loop."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ltc_control.cells.base import RecurrentCell
from ltc_control.cells.ltc import LTCCell
from ltc_control.sequence import SequenceModel
from ltc_control.wirings import Wiring, lane_keeping_ncp


@pytest.fixture
def model(tiny_ncp: Wiring) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(LTCCell(tiny_ncp, implementation="reference"))


def test_shapes_and_return_sequences(model: SequenceModel) -> None:
    x = torch.randn(4, 7, 3)
    y, h = model(x)
    assert y.shape == (4, 7, 1) and h.shape == (4, 6)
    last = SequenceModel(model.cell, return_sequences=False)
    y_last, h_last = last(x)
    assert y_last.shape == (4, 1)
    assert torch.equal(y_last, y[:, -1]) and torch.equal(h_last, h)
    assert (model.input_size, model.output_size, model.state_size) == (3, 1, 6)
    assert model.wiring is model.cell.wiring


def test_sequence_equals_step_loop_with_h0_and_dt(model: SequenceModel) -> None:
    x = torch.randn(3, 6, 3)
    h0 = 0.4 * torch.randn(3, 6)
    dt = torch.rand(3, 6) + 0.1
    y, h = model(x, h0, dt)
    hs = h0
    for t in range(6):
        y_t, hs = model.step(x[:, t], hs, dt[:, t])
        torch.testing.assert_close(y[:, t], y_t, rtol=0, atol=1e-6)
    torch.testing.assert_close(h, hs, rtol=0, atol=1e-6)
    # float dt, a (B, T) tensor of that value and a (B, T, 1) tensor agree exactly.
    y_f, _ = model(x, h0, 0.25)
    y_t2, _ = model(x, h0, torch.full((3, 6), 0.25))
    y_t3, _ = model(x, h0, torch.full((3, 6, 1), 0.25))
    assert torch.equal(y_f, y_t2) and torch.equal(y_f, y_t3)
    # dt=None means 1.0.
    assert torch.equal(model(x, h0)[0], model(x, h0, 1.0)[0])
    # step() without a state starts from zeros.
    assert torch.equal(model.step(x[:, 0])[1], model.step(x[:, 0], model.initial_state(3))[1])


def test_episode_starts_reset_exactly(model: SequenceModel) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 8, 3)
    h0 = torch.randn(2, 6)
    starts = torch.zeros(2, 8)
    starts[0, 5] = 1.0  # sample 0: a new episode begins at t = 5
    starts[1, 0] = 1.0  # sample 1: reset at the very first step discards h0
    y, h = model(x, h0, episode_starts=starts)
    # Sample 0, t < 5: identical to running without resets from h0.
    y_plain, _ = model(x[:1, :5], h0[:1])
    torch.testing.assert_close(y[:1, :5], y_plain, rtol=0, atol=0)
    # Sample 0, t >= 5: identical to a fresh episode from the initial state on x[5:].
    y_fresh, h_fresh = model(x[:1, 5:])
    torch.testing.assert_close(y[:1, 5:], y_fresh, rtol=0, atol=1e-7)
    torch.testing.assert_close(h[:1], h_fresh, rtol=0, atol=1e-7)
    # Sample 1: h0 is ignored entirely.
    y1, _ = model(x[1:], torch.zeros(1, 6))
    torch.testing.assert_close(y[1:], y1, rtol=0, atol=1e-7)
    # bool masks work the same, and the reset really changes the result.
    y_bool, _ = model(x, h0, episode_starts=starts.bool())
    assert torch.equal(y_bool, y)
    y_none, _ = model(x, h0)
    assert float((y_none[0, 5:] - y[0, 5:]).detach().abs().max()) > 1e-4


def test_base_class_loop_matches_ltc_override(model: SequenceModel) -> None:
    # RecurrentCell.forward_sequence (the generic Python loop) and LTCCell's registry path must agree.
    x = torch.randn(2, 5, 3)
    dt = torch.rand(2, 5) + 0.2
    starts = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
    h0 = torch.randn(2, 6)
    y_generic, h_generic = RecurrentCell.forward_sequence(model.cell, x, h0, dt, starts)
    y_fast, h_fast = model.cell.forward_sequence(x, h0, dt, starts)
    torch.testing.assert_close(y_generic, y_fast, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_generic, h_fast, rtol=0, atol=1e-6)


def test_bad_shapes_raise_clear_errors(model: SequenceModel) -> None:
    with pytest.raises(
        ValueError, match=r"x must have shape \(B, T, input_size=3\).*got \(4, 3\).*SequenceModel.step"
    ):
        model(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"x has 5 features.*input_size=3.*got \(2, 4, 5\)"):
        model(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"h0 \(state\) must have shape \(B=2, state_size=6\), got \(2, 5\)"):
        model(torch.zeros(2, 4, 3), torch.zeros(2, 5))
    with pytest.raises(
        ValueError, match=r"dt must be a float or a tensor of shape \(B, T\) = \(2, 4\), got \(4, 2\)"
    ):
        model(torch.zeros(2, 4, 3), dt=torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"dt must be finite and > 0 at every"):
        model(torch.zeros(2, 4, 3), dt=torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0] * 4]))
    with pytest.raises(ValueError, match=r"dt must be a finite float > 0"):
        model(torch.zeros(2, 4, 3), dt=-0.1)
    with pytest.raises(
        ValueError, match=r"episode_starts must be a tensor of shape \(B, T\) = \(2, 4\), got \(2,\)"
    ):
        model(torch.zeros(2, 4, 3), episode_starts=torch.zeros(2))
    with pytest.raises(ValueError, match="non-finite"):
        model(torch.full((2, 4, 3), float("inf")))
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size=3\), got \(2, 4, 3\)"):
        model.step(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="cell must be an ltc_control.cells.base.RecurrentCell"):
        SequenceModel(torch.nn.GRUCell(3, 4))  # type: ignore[arg-type]


def test_lane_keeping_model_trains_one_step() -> None:
    torch.manual_seed(0)
    model = SequenceModel(LTCCell(lane_keeping_ncp(seed=0)))
    x = torch.randn(8, 16, 32)
    target = torch.sin(x[..., :1].cumsum(1) / 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        y, _ = model(x)
        loss = ((y - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.skipif(
    importlib.util.find_spec("ltc_control.cells.baselines") is None, reason="baselines not present"
)
def test_sequence_model_runs_baseline_cells() -> None:
    from ltc_control.cells.baselines import LSTMCell

    cell = LSTMCell(3, 8, 2)
    model = SequenceModel(cell)
    x = torch.randn(2, 5, 3)
    starts = torch.zeros(2, 5)
    starts[:, 3] = 1
    y, h = model(x, episode_starts=starts)
    assert y.shape == (2, 5, 2) and h.shape == (2, cell.state_size)
    y_fresh, _ = model(x[:, 3:])
    torch.testing.assert_close(y[:, 3:], y_fresh, rtol=0, atol=1e-6)


def test_control_loop_on_the_fast_cell_matches_the_reference() -> None:
    """A no-grad control loop through SequenceModel.step and through Policy.act (whose controller runs
    forward_sequence with T = 1) takes the fused inference hooks and reproduces the reference cell."""
    fast_ltc = pytest.importorskip("ltc_control.cells.ltc_fast")
    if not fast_ltc.kernel_available():
        pytest.skip(f"no compiled kernel here: {fast_ltc.kernel_status()}")
    from ltc_control.controllers import ControllerConfig
    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    policy = Policy(
        PolicyConfig(observation="vector", vector_size=32, controller=ControllerConfig(kind="ltc", dt=0.25))
    )
    fast_cell = policy.controller.cell
    assert isinstance(fast_cell, LTCCell)
    ref_cell = LTCCell(fast_cell.wiring, implementation="reference")
    with torch.no_grad():
        for p in fast_cell.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ref_cell.load_state_dict(fast_cell.state_dict())
    fast, ref = SequenceModel(fast_cell), SequenceModel(ref_cell)
    obs = torch.randn(5, 32)
    h_f = h_r = state = None
    with torch.no_grad():
        for t in range(5):
            y_f, h_f = fast.step(obs[t : t + 1], h_f, 0.25)
            y_r, h_r = ref.step(obs[t : t + 1], h_r, 0.25)
            action, state = policy.act(obs[t].numpy(), state)
            expected = torch.tanh(policy.action_scale * y_r + policy.action_bias)[0]
            torch.testing.assert_close(h_f, h_r, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(torch.as_tensor(action), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(state, h_r, rtol=1e-5, atol=1e-6)
    assert fast_cell.implementation_name == "fused-c"
    assert fast_cell._forward_inference(obs[:1], h_f, 0.25) is not None
    with torch.no_grad():
        assert fast_cell._forward_sequence_inference(obs[:1].unsqueeze(1), h_f, 0.25, None) is not None
