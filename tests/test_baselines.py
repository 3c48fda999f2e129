"""Baseline cells: LSTM/GRU parity with torch, CT-RNN convergence to the exact ODE solution, the contract."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from ltc_control.cells.base import RecurrentCell
from ltc_control.cells.baselines import CTRNNCell, GRUCell, LSTMCell
from ltc_control.sequence import SequenceModel


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


@pytest.mark.parametrize("seed", [0, 1])
def test_lstm_equals_torch_lstmcell_with_copied_weights(seed: int) -> None:
    torch.manual_seed(seed)
    ref = torch.nn.LSTMCell(5, 9)
    fc = torch.nn.Linear(9, 3)
    cell = LSTMCell(5, 9, 3)
    missing = cell.load_state_dict({**ref.state_dict(), **{f"fc.{k}": v for k, v in fc.state_dict().items()}})
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(4, 20, 5)
    hx, cx = torch.randn(4, 9), torch.randn(4, 9)
    state = torch.cat([hx, cx], 1)
    loss_ref = loss = torch.zeros(())
    for t in range(20):
        hx, cx = ref(x[:, t], (hx, cx))
        y, state = cell(x[:, t], state, dt=0.37)
        assert _maxdiff(y, fc(hx)) <= 1e-6
        assert _maxdiff(state, torch.cat([hx, cx], 1)) <= 1e-6
        loss_ref = loss_ref + fc(hx).square().sum() + cx.sum()
        loss = loss + y.square().sum() + state[:, 9:].sum()
    loss_ref.backward()
    loss.backward()
    for name, p in ref.named_parameters():
        assert _maxdiff(getattr(cell, name).grad, p.grad) <= 1e-5 * max(1.0, float(p.grad.abs().max())), name
    assert _maxdiff(cell.fc.weight.grad, fc.weight.grad) <= 1e-5 * max(1.0, float(fc.weight.grad.abs().max()))


@pytest.mark.parametrize("seed", [0, 1])
def test_gru_equals_torch_grucell_with_copied_weights(seed: int) -> None:
    torch.manual_seed(seed)
    ref = torch.nn.GRUCell(5, 9)
    cell = GRUCell(5, 9, None)
    result = cell.load_state_dict(ref.state_dict(), strict=False)
    assert not result.unexpected_keys and not result.missing_keys  # fc is the identity: nothing to load
    x = torch.randn(4, 20, 5)
    h_ref = h = torch.randn(4, 9)
    for t in range(20):
        h_ref = ref(x[:, t], h_ref)
        y, h = cell(x[:, t], h)
        assert torch.equal(y, h)
        assert _maxdiff(h, h_ref) <= 1e-6
    h_ref.square().sum().backward()
    h.square().sum().backward()
    for name, p in ref.named_parameters():
        assert _maxdiff(getattr(cell, name).grad, p.grad) <= 1e-5 * max(1.0, float(p.grad.abs().max())), name


def test_discrete_cells_validate_but_ignore_dt() -> None:
    torch.manual_seed(2)
    for cell in (LSTMCell(3, 4, 2), GRUCell(3, 4, 2)):
        x, h = torch.randn(2, 3), torch.randn(2, cell.state_size)
        y1, h1 = cell(x, h, 1.0)
        y2, h2 = cell(x, h, torch.tensor([0.01, 50.0]))
        assert torch.equal(y1, y2) and torch.equal(h1, h2)
        with pytest.raises(ValueError, match="dt must be finite and > 0"):
            cell(x, h, -1.0)


def _ctrnn_exact(cell: CTRNNCell, x: torch.Tensor, h: torch.Tensor, dt: float) -> np.ndarray:
    """scipy's adaptive RK45 at tight tolerances: the exact solution of dx/dt = -x/tau + tanh(Wx + Uu + b)."""
    w = cell.recurrent.detach().double().numpy()
    drive = (x.double() @ cell.input_weight.detach().double().T + cell.bias.detach().double()).numpy()
    out = []
    for b in range(x.shape[0]):

        def rhs(_t: float, v: np.ndarray, b: int = b) -> np.ndarray:
            return -v / cell.tau + np.tanh(drive[b] + w @ v)

        sol = solve_ivp(rhs, (0.0, dt), h[b].double().numpy(), rtol=1e-11, atol=1e-12, method="RK45")
        out.append(sol.y[:, -1])
    return np.stack(out)


@pytest.mark.parametrize("solver", ["fused", "euler"])
def test_ctrnn_converges_to_the_exact_solution_as_unfolds_grow(solver: str) -> None:
    torch.manual_seed(3)
    base = CTRNNCell(3, 6, 2, tau=0.8, unfolds=1, solver=solver).double()
    with torch.no_grad():
        base.recurrent.mul_(1.5)  # a recurrence strong enough to make the dynamics non-trivial
    x = torch.randn(3, 3, dtype=torch.float64)
    h = torch.randn(3, 6, dtype=torch.float64)
    dt = 1.5
    exact = _ctrnn_exact(base, x, h, dt)
    errors = []
    for k in (2, 4, 8, 16, 32, 64, 128):
        cell = CTRNNCell(3, 6, 2, tau=0.8, unfolds=k, solver=solver).double()
        cell.load_state_dict(base.state_dict())
        errors.append(float(np.abs(cell(x, h, dt)[1].detach().numpy() - exact).max()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # First order: halving the sub-step halves the error (ratios -> 2).
    ratios = [a / b for a, b in zip(errors[2:], errors[3:])]
    assert all(1.7 < r < 2.3 for r in ratios), ratios
    assert errors[-1] < 1.5e-2 and errors[-1] < errors[0] / 25, errors


def test_ctrnn_per_sample_dt_equals_a_per_sample_loop_and_fused_is_stable() -> None:
    torch.manual_seed(4)
    cell = CTRNNCell(3, 5, 2, tau=0.5, unfolds=3)
    x, h = torch.randn(4, 3), torch.randn(4, 5)
    dt = torch.tensor([0.1, 1.0, 2.5, 40.0])
    y_b, h_b = cell(x, h, dt)
    for b in range(4):
        y_1, h_1 = cell(x[b : b + 1], h[b : b + 1], float(dt[b]))
        assert _maxdiff(y_b[b : b + 1], y_1) <= 1e-6 and _maxdiff(h_b[b : b + 1], h_1) <= 1e-6
    # A huge step (h = 13 tau): the fused update stays bounded by tau * max|tanh| = 0.5; Euler blows past it.
    assert float(h_b[3].detach().abs().max()) <= 0.5 + 1e-6
    euler = CTRNNCell(3, 5, 2, tau=0.5, unfolds=3, solver="euler")
    euler.load_state_dict(cell.state_dict())
    assert float(euler(x[3:], h[3:], 40.0)[1].detach().abs().max()) > 10.0


def test_parameter_counts_and_neuron_metadata() -> None:
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(CTRNNCell(32, 64, 1)) == 6273  # the NCP paper's CT-RNN-64
    assert count(LSTMCell(32, 64, 1)) == 24897 + 4 * 64  # paper's LSTM-64 + torch's second bias vector
    assert count(GRUCell(32, 64, 1)) == 3 * 64 * (32 + 64) + 6 * 64 + 65
    lstm = LSTMCell(3, 4, 2)
    assert (lstm.state_size, lstm.num_neurons, lstm.output_size) == (8, 4, 2)
    assert lstm.neuron_names == ["hidden_0", "hidden_1", "hidden_2", "hidden_3"]
    assert set(lstm.neuron_roles) == {"hidden"}
    for cell in (lstm, GRUCell(3, 4), CTRNNCell(3, 4)):
        assert isinstance(cell, RecurrentCell)
        assert torch.equal(cell.initial_state(2), torch.zeros(2, cell.state_size))
    assert GRUCell(3, 4).output_size == 4 and CTRNNCell(3, 4, 1).output_size == 1
    h = torch.randn(2, 8)
    assert torch.equal(lstm.readout(h), lstm.fc(h[:, :4]))


def test_cells_run_in_a_sequence_model_with_resets() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 6, 3)
    starts = torch.zeros(2, 6)
    starts[1, 3] = 1.0
    for cell in (LSTMCell(3, 4, 2), GRUCell(3, 4, 2), CTRNNCell(3, 4, 2)):
        model = SequenceModel(cell)
        y, _ = model(x, episode_starts=starts)
        y_fresh, _ = model(x[1:, 3:])
        assert _maxdiff(y[1:, 3:], y_fresh) <= 1e-6  # the reset really started a new episode
        assert _maxdiff(y[1, 3:], model(x[1:])[0][0, 3:]) > 1e-4


def test_bad_inputs_and_configurations_raise_clear_errors() -> None:
    for cell in (LSTMCell(3, 4, 2), GRUCell(3, 4, 2), CTRNNCell(3, 4, 2)):
        h = cell.initial_state(2)
        with pytest.raises(ValueError, match=r"input_size=3.*got \(2, 5\)"):
            cell(torch.randn(2, 5), h)
        with pytest.raises(ValueError, match=rf"state_size={cell.state_size}.*got \(2, 3\)"):
            cell(torch.randn(2, 3), torch.zeros(2, 3))
        with pytest.raises(ValueError, match="non-finite"):
            cell(torch.full((2, 3), float("inf")), h)
        with pytest.raises(ValueError, match="dt must be finite and > 0"):
            cell(torch.randn(2, 3), h, 0.0)
    with pytest.raises(ValueError, match="hidden must be a positive integer"):
        LSTMCell(3, 0, 2)
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        CTRNNCell(3, 4, tau=0.0)
    with pytest.raises(ValueError, match="unfolds must be a positive integer"):
        CTRNNCell(3, 4, unfolds=0)
    with pytest.raises(ValueError, match=r"Unknown CT-RNN solver 'rk4'; valid ones are \['fused', 'euler'\]"):
        CTRNNCell(3, 4, solver="rk4")  # type: ignore[arg-type]


def test_config_round_trip() -> None:
    for cell in (LSTMCell(3, 4, 2), GRUCell(3, 4), CTRNNCell(3, 4, 1, tau=0.3, unfolds=2, solver="euler")):
        rebuilt = type(cell)(**cell.config())
        rebuilt.load_state_dict(cell.state_dict())
        x, h = torch.randn(2, 3), torch.randn(2, cell.state_size)
        assert torch.equal(cell(x, h, 0.5)[1], rebuilt(x, h, 0.5)[1])


@pytest.mark.parametrize("cls", [LSTMCell, GRUCell])
@pytest.mark.parametrize("mid_reset", [False, True])
def test_gated_sequences_fused_path_equals_the_step_loop(cls: type, mid_reset: bool) -> None:
    # The fused torch kernel serves sequences that restart only at their first step (RecurrentPPO's training
    # batches); a restart inside a sequence falls back to the step loop. Outputs, final state, every step's
    # state and all gradients agree with the reference loop either way.
    torch.manual_seed(3)
    cell = cls(5, 12, 3)
    x = torch.randn(6, 9, 5, requires_grad=True)
    h0 = torch.randn(6, cell.state_size, requires_grad=True)
    starts = torch.zeros(6, 9)
    starts[::2, 0] = 1.0
    if mid_reset:
        starts[1, 4] = 1.0
    assert (cell._fused_sequence(x, h0, None, starts) is None) == mid_reset
    y, h_t = cell.forward_sequence(x, h0, 0.5, starts)
    y_ref, h_ref = RecurrentCell.forward_sequence(cell, x, h0, 0.5, starts)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_t, h_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        cell.state_sequence(x, h0, None, starts), RecurrentCell.state_sequence(cell, x, h0, None, starts)
    )
    params = [x, h0, *cell.parameters()]
    grads = torch.autograd.grad((y**2).sum() + h_t.pow(2).sum(), params)
    grads_ref = torch.autograd.grad((y_ref**2).sum() + h_ref.pow(2).sum(), params)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    # The fused path validates like the loop: a wrong input width and a NaN are named.
    with pytest.raises(ValueError, match="input_size"):
        cell.forward_sequence(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="non-finite"):
        cell.forward_sequence(torch.full((2, 3, 5), float("nan")))


def test_gated_sequence_benchmark_smoke(load_bench: Callable[[str], ModuleType]) -> None:
    """experiments/bench/gated_seq_speed.py on a tiny budget: every (cell, workload, mode) timed, both paths
    equal."""
    bench = load_bench("gated_seq_speed")
    rows = bench.run_benchmark(rounds=1, min_time=0.001)
    assert {(r["cell"], r["workload"], r["mode"]) for r in rows} == {
        (c, w, m) for c in ("lstm", "gru") for w in bench.WORKLOADS for m in ("train", "forward")
    }
    assert all(r["speedup_cpu"] > 0 and r["max_abs_diff"] < 1e-5 for r in rows)
    assert "| lstm | ppo | train |" in bench.markdown(rows, [])
