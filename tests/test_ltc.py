"""LTCCell: ncps parity, gradcheck, convergence to the ODE, masking, boundedness, dt handling, registry."""

from __future__ import annotations

import math
from typing import Any

import ncps.torch as ncps_torch
import ncps.wirings as ncps_wirings
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from torch.func import functional_call

from ltc_control import SequenceModel, from_ncps
from ltc_control.cells import base as cell_base
from ltc_control.cells import ltc as ltc_mod
from ltc_control.cells.ltc import LTCCell, reference_step, register_implementation, unregister_implementation
from ltc_control.wirings import NCP, Random, Wiring, lane_keeping_ncp

PARAM_NAMES = list(ltc_mod.PARAMETER_NAMES)


def _ncps_wiring(kind: str, seed: int) -> Any:
    if kind == "ncp":
        return ncps_wirings.NCP(6, 4, 2, 3, 2, 3, 2, seed=seed)
    if kind == "autoncp":
        return ncps_wirings.AutoNCP(12, 3, sparsity_level=0.5, seed=seed)
    if kind == "fully_connected":
        return ncps_wirings.FullyConnected(7, output_dim=2, erev_init_seed=seed)
    return ncps_wirings.Random(8, output_dim=3, sparsity_level=0.5, random_seed=seed)


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def _grads_close(ref: torch.Tensor, ours: torch.Tensor) -> float:
    """Largest gradient difference relative to the gradient's own scale (at least 1)."""
    return float((ref - ours).abs().max() / max(1.0, float(ref.abs().max())))


# ------------------------------------------------------------------ parity with ncps
@pytest.mark.parametrize("kind", ["ncp", "autoncp", "fully_connected", "random"])
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("implicit", [True, False])
def test_parity_with_ncps_outputs_and_gradients(kind: str, seed: int, implicit: bool) -> None:
    torch.manual_seed(seed)
    ref = ncps_torch.LTC(5, _ncps_wiring(kind, seed), implicit_param_constraints=implicit)
    if not implicit:
        ref.rnn_cell.apply_weight_constraints()
    model = from_ncps(ref)
    model.cell.implementation = "reference"
    assert model.cell.constraint == ("softplus" if implicit else "clamp")
    x = torch.randn(4, 32, 5)
    h0 = 0.3 * torch.randn(4, ref.state_size)
    y_ref, h_ref = ref(x, h0)
    y, h = model(x, h0)
    assert y.shape == y_ref.shape == (4, 32, ref.motor_size)
    assert _maxdiff(y, y_ref) <= 1e-5
    assert _maxdiff(h, h_ref) <= 1e-5
    target = torch.randn_like(y)
    ((y_ref - target) ** 2).mean().backward()
    ((y - target) ** 2).mean().backward()
    params = dict(model.cell.named_parameters())
    assert list(params) == PARAM_NAMES
    for name, p in ref.rnn_cell.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and params[name].grad is not None, name
        assert _grads_close(p.grad, params[name].grad) <= 1e-5, name
    assert model.cell.implementation_name == "reference"


@pytest.mark.parametrize(
    ("in_map", "out_map", "unfolds"), [("linear", "none", 3), ("none", "linear", 1), ("affine", "affine", 10)]
)
def test_parity_with_ncps_cell_options_and_scalar_dt(in_map: str, out_map: str, unfolds: int) -> None:
    torch.manual_seed(3)
    wiring = ncps_wirings.AutoNCP(10, 2, seed=4)
    ref = ncps_torch.LTCCell(
        wiring, in_features=4, input_mapping=in_map, output_mapping=out_map, ode_unfolds=unfolds, epsilon=1e-6
    )
    model = from_ncps(ref)
    cell = model.cell
    assert (cell.input_mapping, cell.output_mapping, cell.ode_unfolds, cell.epsilon) == (
        in_map,
        out_map,
        unfolds,
        1e-6,
    )
    assert cell.constraint == "clamp"  # the bare ncps cell defaults to implicit_param_constraints=False
    x = torch.randn(3, 32, 4)
    h_ref = torch.zeros(3, 10)
    h = h_ref.clone()
    for t in range(32):
        # ncps handles a scalar timespan correctly (batched ones are broken: ncps issues #81-#83).
        y_ref, h_ref = ref(x[:, t], h_ref, 0.37)
        y, h = cell(x[:, t], h, 0.37)
        assert _maxdiff(y, y_ref) <= 1e-5
    assert _maxdiff(h, h_ref) <= 1e-5
    y_seq, h_seq = model(x, dt=0.37)
    assert _maxdiff(h_seq, h_ref) <= 1e-5


def test_auto_implementation_matches_reference_on_lane_keeping() -> None:
    torch.manual_seed(0)
    cell = LTCCell(lane_keeping_ncp(seed=0))
    ref = LTCCell(lane_keeping_ncp(seed=0), implementation="reference")
    ref.load_state_dict(cell.state_dict())
    x = torch.randn(3, 16, 32)
    dt = torch.rand(3, 16) + 0.05
    y_auto, h_auto = cell.forward_sequence(x, dt=dt)
    y_ref, h_ref = ref.forward_sequence(x, dt=dt)
    assert cell.implementation_name in ltc_mod.available_implementations()
    assert _maxdiff(y_auto, y_ref) <= 1e-5
    assert _maxdiff(h_auto, h_ref) <= 1e-5


# ------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("constraint", ["softplus", "clamp"])
def test_gradcheck_float64(tiny_ncp: Wiring, constraint: str) -> None:
    torch.manual_seed(0)
    cell = LTCCell(tiny_ncp, ode_unfolds=3, constraint=constraint, implementation="reference").double()
    names = [n for n, _ in cell.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in cell.named_parameters())
    model = SequenceModel(cell)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = (0.2 * torch.randn(2, 6, dtype=torch.float64)).requires_grad_(True)
    dt = (torch.rand(2, 3, dtype=torch.float64) + 0.2).requires_grad_(True)
    starts = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)

    def seq(
        x: torch.Tensor, h0: torch.Tensor, dt: torch.Tensor, *ps: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        state = {f"cell.{n}": p for n, p in zip(names, ps)}
        y, h = functional_call(model, state, (x, h0, dt, starts), strict=False)
        return y, h

    # Gradients w.r.t. inputs, initial state, step lengths and every parameter, through episode resets.
    # The clamp variant shares every code path but the constraint; a random-projection check keeps it fast.
    fast = constraint == "clamp"
    assert torch.autograd.gradcheck(seq, (x, h0, dt, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


# ------------------------------------------------------------------ convergence to the ODE
def _ode_rhs(params: dict[str, np.ndarray], x_in: np.ndarray) -> Any:
    r = params["sensory_w"] / (1 + np.exp(-params["sensory_sigma"] * (x_in[:, None] - params["sensory_mu"])))
    sens_cond = r.sum(0)
    sens_num = (r * params["sensory_erev"]).sum(0)

    def rhs(_t: float, v: np.ndarray) -> np.ndarray:
        s = params["w"] / (1 + np.exp(-params["sigma"] * (v[:, None] - params["mu"])))
        current = (
            params["gleak"] * (params["vleak"] - v)
            + (s * (params["erev"] - v[None, :])).sum(0)
            + sens_num
            - sens_cond * v
        )
        return current / params["cm"]

    return rhs


def test_converges_to_ode_solution_with_order_one() -> None:
    torch.manual_seed(5)
    wiring = NCP(4, 3, 2, 2, 2, 3, 2, input_size=3, seed=5)
    cell = LTCCell(wiring, epsilon=0.0, implementation="reference").double()
    with torch.no_grad():
        cell.erev.mul_(1.5)
        cell.vleak.add_(0.3)
    x = torch.randn(1, 3, dtype=torch.float64)
    v0 = 0.5 * torch.randn(1, 9, dtype=torch.float64)
    dt = 2.0
    eff = {k: v.detach().numpy() for k, v in cell.effective_parameters().items()}
    x_in = cell.map_inputs(x).detach().numpy()[0]
    sol = solve_ivp(_ode_rhs(eff, x_in), (0.0, dt), v0.numpy()[0], method="DOP853", rtol=1e-12, atol=1e-12)
    exact = sol.y[:, -1]
    assert np.abs(exact - v0.numpy()[0]).max() > 0.05  # the state really moves over the step
    unfolds = [4, 8, 16, 32, 64, 128, 256]
    errors = []
    for k in unfolds:
        cell.ode_unfolds = k
        _, v = cell(x, v0, dt)
        errors.append(float(np.abs(v.detach().numpy()[0] - exact).max()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2 and errors[0] / errors[-1] > 30
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(0.8 <= p <= 1.25 for p in orders[2:]), orders  # first order in the sub-step h = dt / K

    # Shrinking the input step (same K) also converges at first order.
    cell.ode_unfolds = 2
    errs_dt = []
    for step in (0.4, 0.2, 0.1, 0.05):
        sol = solve_ivp(
            _ode_rhs(eff, x_in), (0.0, step), v0.numpy()[0], method="DOP853", rtol=1e-12, atol=1e-12
        )
        _, v = cell(x, v0, step)
        errs_dt.append(float(np.abs(v.detach().numpy()[0] - sol.y[:, -1]).max()))
    local_orders = [math.log2(a / b) for a, b in zip(errs_dt, errs_dt[1:])]
    # One step's local error is O(h^2) for a first-order method.
    assert all(1.7 <= p <= 2.3 for p in local_orders), local_orders


# ------------------------------------------------------------------ masking
def test_masked_synapses_have_zero_gradient_and_no_effect() -> None:
    torch.manual_seed(2)
    wiring = lane_keeping_ncp(seed=3)
    cell = LTCCell(wiring, implementation="reference")
    x = torch.randn(2, 8, 32)
    y, _ = cell.forward_sequence(x)
    (y**2).sum().backward()
    mask = torch.tensor(wiring.adjacency != 0)
    smask = torch.tensor(wiring.sensory_adjacency != 0)
    for name in ("w", "sigma", "mu", "erev"):
        g = getattr(cell, name).grad
        assert torch.count_nonzero(g[~mask]) == 0, name
        assert torch.count_nonzero(g[mask]) > 0.5 * int(mask.sum()), name
    for name in ("sensory_w", "sensory_sigma", "sensory_mu", "sensory_erev"):
        g = getattr(cell, name).grad
        assert torch.count_nonzero(g[~smask]) == 0, name
        assert torch.count_nonzero(g[smask]) > 0, name
    with torch.no_grad():
        y0, h0 = cell.forward_sequence(x)
        for name in ("w", "sigma", "mu", "erev"):
            p = getattr(cell, name)
            p[~mask] = 100.0 * torch.randn(int((~mask).sum()))
        for name in ("sensory_w", "sensory_sigma", "sensory_mu", "sensory_erev"):
            p = getattr(cell, name)
            p[~smask] = 100.0 * torch.randn(int((~smask).sum()))
        y1, h1 = cell.forward_sequence(x)
    assert torch.equal(y0, y1) and torch.equal(h0, h1)


# ------------------------------------------------------------------ boundedness (LTC Theorems 1-2)
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    input_exp=st.floats(0.0, 6.0),
    dt=st.floats(1e-3, 100.0),
    unfolds=st.integers(1, 8),
    constraint=st.sampled_from(["softplus", "clamp"]),
)
def test_states_and_time_constants_stay_bounded(
    seed: int, input_exp: float, dt: float, unfolds: int, constraint: str
) -> None:
    gen = torch.Generator().manual_seed(seed)
    wiring = Random(6, input_size=4, output_size=2, sparsity=0.3, seed=seed % 1000)
    cell = LTCCell(wiring, ode_unfolds=unfolds, constraint=constraint, implementation="reference").double()

    def u(shape: torch.Size, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low

    with torch.no_grad():
        for name, p in cell.named_parameters():
            if name in ("gleak", "cm", "w", "sensory_w"):
                p.copy_(u(p.shape, -3.0, 3.0))
            elif name in ("sigma", "sensory_sigma"):
                p.copy_(u(p.shape, -30.0, 30.0))
            else:
                p.copy_(u(p.shape, -5.0, 5.0))
        cell.apply_constraints()
    eff = cell.effective_parameters()
    x = u(torch.Size((3, 5, 4)), -1.0, 1.0) * 10.0**input_exp
    v0 = u(torch.Size((3, 6)), -5.0, 5.0)
    mask, smask = eff["sparsity_mask"] > 0, eff["sensory_sparsity_mask"] > 0
    candidates = [
        v0.flatten(),
        eff["vleak"],
        eff["erev"][mask],
        eff["sensory_erev"][smask],
        torch.zeros(1).double(),
    ]
    bounds = torch.cat(candidates).detach()
    lo, hi = float(bounds.min()), float(bounds.max())
    _, states = _all_states(cell, x, v0, dt)
    states = states.detach()
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    assert float(states.min()) >= lo - tol and float(states.max()) <= hi + tol

    # tau = cm / conductance lies in [cm / (gleak + all max conductances), cm / gleak] (Theorem 1).
    diag = cell.diagnostics(x[:, 0], v0, dt)
    gmax = eff["gleak"] + eff["w"].sum(0) + eff["sensory_w"].sum(0)
    tau = diag["tau"]
    ok = eff["gleak"] > 1e-12
    lower = (eff["cm"] / gmax).expand_as(tau)
    upper = (eff["cm"] / eff["gleak"].clamp_min(1e-300)).expand_as(tau)
    assert bool((tau[:, ok] >= lower[:, ok] * (1 - 1e-9)).all())
    assert bool((tau[:, ok] <= upper[:, ok] * (1 + 1e-9)).all())


def _all_states(
    cell: LTCCell, x: torch.Tensor, v0: torch.Tensor, dt: float
) -> tuple[torch.Tensor, torch.Tensor]:
    eff = cell.effective_parameters()
    xm = cell.map_inputs(x)
    dts = torch.full((x.shape[0], x.shape[1], 1), dt, dtype=x.dtype)
    states = ltc_mod.reference_sequence(eff, xm, v0, dts, None, cell.ode_unfolds, cell.epsilon)
    return xm, states


# ------------------------------------------------------------------ dt handling
def test_batched_dt_equals_per_sample_loop() -> None:
    torch.manual_seed(4)
    cell = LTCCell(lane_keeping_ncp(seed=1), implementation="reference")
    x = torch.randn(5, 32)
    h = 0.2 * torch.randn(5, 19)
    dt = torch.tensor([0.05, 0.3, 1.0, 2.5, 7.0])
    y_b, h_b = cell(x, h, dt)
    for b in range(5):
        y_1, h_1 = cell(x[b : b + 1], h[b : b + 1], float(dt[b]))
        torch.testing.assert_close(h_b[b : b + 1], h_1, rtol=0, atol=1e-6)
        torch.testing.assert_close(y_b[b : b + 1], y_1, rtol=0, atol=1e-6)
    assert float((h_b[0] - h_b[4]).detach().abs().max()) > 1e-3  # different dt really gives different states
    _, h_col = cell(x, h, dt.unsqueeze(1))
    assert torch.equal(h_col, h_b)
    _, h_float = cell(x, h, 0.3)
    _, h_vec = cell(x, h, torch.full((5,), 0.3))
    _, h_0d = cell(x, h, torch.tensor(0.3))
    assert torch.equal(h_float, h_vec) and torch.equal(h_float, h_0d)
    # Sequence dt (B, T) matches stepping with the per-sample column.
    xs = torch.randn(5, 6, 32)
    dts = torch.rand(5, 6) + 0.1
    _, h_seq = cell.forward_sequence(xs, h, dts)
    h_loop = h
    for t in range(6):
        _, h_loop = cell(xs[:, t], h_loop, dts[:, t])
    torch.testing.assert_close(h_seq, h_loop, rtol=0, atol=1e-6)


@pytest.mark.parametrize("implementation", ["auto", "reference"])
def test_state_sequence_is_every_steps_state(implementation: str) -> None:
    """``state_sequence`` returns the states the step loop visits (resets included); ``forward_sequence``'s
    outputs are ``readout`` of them and its h_T the last one; gradients flow from every state."""
    torch.manual_seed(8)
    for wiring in (lane_keeping_ncp(seed=3), Random(7, input_size=5, output_size=3, sparsity=0.3, seed=2)):
        cell = LTCCell(wiring, implementation=implementation)
        x = torch.randn(3, 6, cell.input_size)
        starts = torch.zeros(3, 6)
        starts[1, 3] = 1.0
        h0 = 0.3 * torch.randn(3, cell.state_size)
        ref, h = [], h0
        for t in range(6):
            h = (1.0 - starts[:, t : t + 1]) * h
            h = cell(x[:, t], h, 0.7)[1]
            ref.append(h)
        states = cell.state_sequence(x, h0, 0.7, starts)
        assert states.shape == (3, 6, cell.state_size)
        torch.testing.assert_close(states, torch.stack(ref, 1), rtol=0, atol=1e-5)
        y, h_t = cell.forward_sequence(x, h0, 0.7, starts)
        torch.testing.assert_close(cell.readout(states), y, rtol=0, atol=1e-6)
        torch.testing.assert_close(states[:, -1], h_t, rtol=0, atol=1e-6)
        states.square().sum().backward()
        for name, p in cell.named_parameters():  # the output mapping is after the states
            assert (p.grad is None) == name.startswith("output_"), name
            assert p.grad is None or bool(p.grad.abs().sum() > 0), name


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_errors(tiny_ncp: Wiring) -> None:
    cell = LTCCell(tiny_ncp)
    h = cell.initial_state(2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, input_size=3\), got \(2, 5\)"):
        cell(torch.zeros(2, 5), h)
    with pytest.raises(
        ValueError, match=r"x must have shape \(B, input_size=3\), got \(2, 4, 3\).*forward_sequence"
    ):
        cell(torch.zeros(2, 4, 3), h)
    with pytest.raises(ValueError, match=r"h \(state\) must have shape \(B=2, state_size=6\), got \(2, 7\)"):
        cell(torch.zeros(2, 3), torch.zeros(2, 7))
    with pytest.raises(ValueError, match=r"h \(state\) must have shape \(B=2, state_size=6\), got \(3, 6\)"):
        cell(torch.zeros(2, 3), torch.zeros(3, 6))
    with pytest.raises(ValueError, match="non-finite"):
        cell(torch.tensor([[0.0, float("nan"), 1.0], [0.0, 0.0, 0.0]]), h)
    with pytest.raises(ValueError, match="non-finite"):
        cell(torch.tensor([[0.0, float("inf"), 1.0], [0.0, 0.0, 0.0]]), h)
    with pytest.raises(ValueError, match=r"dt must be finite and > 0, got 0.0"):
        cell(torch.zeros(2, 3), h, 0.0)
    with pytest.raises(ValueError, match=r"dt must be finite and > 0, got -1"):
        cell(torch.zeros(2, 3), h, -1)
    with pytest.raises(ValueError, match=r"dt must be finite and > 0, got nan"):
        cell(torch.zeros(2, 3), h, float("nan"))
    with pytest.raises(
        ValueError, match=r"dt must be finite and > 0 for every sample, got values such as \[-0.5\]"
    ):
        cell(torch.zeros(2, 3), h, torch.tensor([0.1, -0.5]))
    with pytest.raises(
        ValueError, match=r"dt must be a float or a tensor of shape \(B=2,\) or \(2, 1\), got \(3,\)"
    ):
        cell(torch.zeros(2, 3), h, torch.ones(3))
    with pytest.raises(ValueError, match="dt must be a float or a tensor"):
        cell(torch.zeros(2, 3), h, "fast")  # type: ignore[arg-type]
    # Validation can be switched off for benchmarks: the NaN then propagates instead of raising.
    cell_base.set_validation(False)
    y, _ = cell(torch.full((2, 3), float("nan")), h)
    assert torch.isnan(y).all()
    cell_base.set_validation(True)
    with cell_base.validation(False):
        assert not cell_base.validation_enabled()
    assert cell_base.validation_enabled()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"ode_unfolds": 0}, r"ode_unfolds must be an integer >= 1, got 0"),
        ({"epsilon": -1.0}, r"epsilon must be a finite float >= 0, got -1.0"),
        ({"constraint": "relu"}, r"constraint must be one of \['softplus', 'clamp'\], got 'relu'"),
        ({"input_mapping": "mlp"}, r"input_mapping must be one of \['affine', 'linear', 'none'\], got 'mlp'"),
        ({"output_mapping": "x"}, r"output_mapping must be one of"),
        (
            {"implementation": "cuda-magic"},
            r"unknown LTC implementation 'cuda-magic'; choose 'auto' or one of",
        ),
    ],
)
def test_bad_constructor_arguments(tiny_ncp: Wiring, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        LTCCell(tiny_ncp, **kwargs)


def test_rejects_non_wiring() -> None:
    with pytest.raises(ValueError, match="wiring must be an ltc_control.wirings.Wiring, got NCP.*from_ncps"):
        LTCCell(ncps_wirings.NCP(3, 2, 1, 2, 1, 1, 1))  # type: ignore[arg-type]


# ------------------------------------------------------------------ parameters, constraints, diagnostics
def test_parameter_shapes_init_ranges_and_counts() -> None:
    torch.manual_seed(0)
    w = lane_keeping_ncp(seed=0)
    cell = LTCCell(w)
    n, s, m = 19, 32, 1
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {
        "gleak": (n,),
        "vleak": (n,),
        "cm": (n,),
        "sigma": (n, n),
        "mu": (n, n),
        "w": (n, n),
        "erev": (n, n),
        "sensory_sigma": (s, n),
        "sensory_mu": (s, n),
        "sensory_w": (s, n),
        "sensory_erev": (s, n),
        "input_w": (s,),
        "input_b": (s,),
        "output_w": (m,),
        "output_b": (m,),
    }
    for name, (low, high) in ltc_mod.INIT_RANGES.items():
        p = getattr(cell, name).detach()
        assert float(p.min()) >= low and float(p.max()) <= high, name
    torch.testing.assert_close(cell.erev, torch.tensor(w.adjacency, dtype=torch.float32))
    torch.testing.assert_close(cell.sensory_erev, torch.tensor(w.sensory_adjacency, dtype=torch.float32))
    torch.testing.assert_close(cell.sparsity_mask, torch.tensor(np.abs(w.adjacency), dtype=torch.float32))
    # The paper's count: 3 per neuron + 4 per synapse (1,065 for its 252-synapse NCP).
    assert 3 * n + 4 * cell.num_synapses == 3 * 19 + 4 * w.num_synapses
    assert cell.neuron_names == list(w.names) and cell.neuron_roles == list(w.roles)
    assert cell.num_neurons == cell.state_size == 19 and cell.output_size == 1 and cell.input_size == 32


@torch.no_grad()
def test_clamp_constraint_and_apply_constraints(tiny_ncp: Wiring) -> None:
    cell = LTCCell(tiny_ncp, constraint="clamp")
    with torch.no_grad():
        cell.w.fill_(-0.5)
        cell.cm.fill_(-1.0)
        cell.vleak.fill_(-3.0)
    eff = cell.effective_parameters()
    assert float(eff["w"].min()) == -0.5  # raw until constraints are applied
    cell.apply_constraints()
    assert float(cell.w.min()) == 0.0 and float(cell.cm.min()) == 0.0
    assert float(cell.vleak.max()) == -3.0  # unconstrained parameters untouched
    soft = LTCCell(tiny_ncp)
    with torch.no_grad():
        soft.w.fill_(-0.5)
    soft.apply_constraints()
    assert float(soft.w.max()) == -0.5
    torch.testing.assert_close(
        soft.effective_parameters()["w"],
        torch.nn.functional.softplus(torch.tensor(-0.5)) * soft.sparsity_mask,
    )


def test_diagnostics_match_hand_computation(tiny_ncp: Wiring) -> None:
    torch.manual_seed(1)
    cell = LTCCell(tiny_ncp, ode_unfolds=1, implementation="reference").double()
    x = torch.randn(2, 3, dtype=torch.float64)
    v = 0.3 * torch.randn(2, 6, dtype=torch.float64)
    d = cell.diagnostics(x, v, dt=0.5)
    assert set(d) == {"state", "sensory_current", "synaptic_current", "conductance", "tau", "output"}
    _, v_new = cell(x, v, 0.5)
    torch.testing.assert_close(d["state"], v_new, rtol=0, atol=0)
    torch.testing.assert_close(d["output"], cell.readout(v_new), rtol=0, atol=0)
    p = {k: t.detach().numpy() for k, t in cell.effective_parameters().items()}
    xin = cell.map_inputs(x).detach().numpy()
    vv = v.numpy()
    for b in range(2):
        for j in range(6):
            syn = sum(
                p["w"][i, j]
                / (1 + math.exp(-p["sigma"][i, j] * (vv[b, i] - p["mu"][i, j])))
                * (p["erev"][i, j] - vv[b, j])
                for i in range(6)
            )
            sens_g = [
                p["sensory_w"][k, j]
                / (1 + math.exp(-p["sensory_sigma"][k, j] * (xin[b, k] - p["sensory_mu"][k, j])))
                for k in range(3)
            ]
            syn_g = [
                p["w"][i, j] / (1 + math.exp(-p["sigma"][i, j] * (vv[b, i] - p["mu"][i, j])))
                for i in range(6)
            ]
            sens = sum(g * (p["sensory_erev"][k, j] - vv[b, j]) for k, g in enumerate(sens_g))
            cond = p["gleak"][j] + sum(syn_g) + sum(sens_g)
            assert d["synaptic_current"][b, j].item() == pytest.approx(syn, abs=1e-12)
            assert d["sensory_current"][b, j].item() == pytest.approx(sens, abs=1e-12)
            assert d["conductance"][b, j].item() == pytest.approx(cond, abs=1e-12)
            assert d["tau"][b, j].item() == pytest.approx(p["cm"][j] / cond, rel=1e-12)
            # The fused step itself, written out by hand.
            cm_t = p["cm"][j] / 0.5
            num = cm_t * vv[b, j] + p["gleak"][j] * p["vleak"][j]
            num += sum(g * p["erev"][i, j] for i, g in enumerate(syn_g))
            num += sum(g * p["sensory_erev"][k, j] for k, g in enumerate(sens_g))
            expected = num / (cm_t + cond + cell.epsilon)
            assert v_new[b, j].item() == pytest.approx(expected, abs=1e-12)


def test_no_grad_parameter_cache_tracks_updates(tiny_ncp: Wiring) -> None:
    torch.manual_seed(0)
    cell = LTCCell(tiny_ncp, implementation="reference")
    x, h = torch.randn(1, 3), cell.initial_state(1)
    with torch.no_grad():
        y1, _ = cell(x, h)
        assert cell.effective_parameters() is cell.effective_parameters()  # cached between control steps
        cell.gleak.add_(0.7)  # in-place optimizer-style update
        y2, _ = cell(x, h)
    y_fresh, _ = cell(x, h)  # grad mode recomputes from scratch
    assert not torch.equal(y1, y2)
    torch.testing.assert_close(y2, y_fresh.detach(), rtol=0, atol=0)
    cell.load_state_dict(LTCCell(tiny_ncp).state_dict())
    with torch.no_grad():
        y3, _ = cell(x, h)
    torch.testing.assert_close(y3, cell(x, h)[0].detach(), rtol=0, atol=0)
    cell.double()
    with torch.no_grad():
        y4, _ = cell(x.double(), h.double())
    assert y4.dtype == torch.float64


# ------------------------------------------------------------------ implementation registry
class _Float64Reference:
    """A genuine alternative implementation: runs the reference math in float64 and casts back."""

    def __init__(self, usable: bool) -> None:
        self.usable = usable
        self.calls = 0

    def available(self, device: torch.device) -> bool:
        return self.usable and device.type == "cpu"

    def step(
        self, params: Any, x: torch.Tensor, v: torch.Tensor, dt: torch.Tensor, unfolds: int, eps: float
    ) -> Any:
        self.calls += 1
        p64 = {k: t.double() for k, t in params.items()}
        return reference_step(p64, x.double(), v.double(), dt.double(), unfolds, eps).to(v.dtype)


def test_registry_dispatch_and_fallback(tiny_ncp: Wiring) -> None:
    good, down = _Float64Reference(True), _Float64Reference(False)
    register_implementation("test-f64", good, priority=1000)
    register_implementation("test-down", down, priority=2000)
    try:
        torch.manual_seed(0)
        cell = LTCCell(tiny_ncp)  # "auto": highest-priority *available* implementation
        ref = LTCCell(tiny_ncp, implementation="reference")
        ref.load_state_dict(cell.state_dict())
        x = torch.randn(2, 5, 3)
        y, h = cell.forward_sequence(x)
        y_ref, h_ref = ref.forward_sequence(x)
        assert cell.implementation_name == "test-f64" and good.calls == 5 and down.calls == 0
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        assert "test-f64" in ltc_mod.available_implementations("cpu")
        assert "test-down" not in ltc_mod.available_implementations("cpu")
        cell.implementation = "test-down"
        with pytest.raises(ValueError, match="'test-down' is not available on device cpu"):
            cell(x[:, 0], h)
        cell.implementation = "reference"
        cell(x[:, 0], h)
        assert cell.implementation_name == "reference"
        with pytest.raises(ValueError, match="must provide available"):
            register_implementation("broken", object())
        with pytest.raises(ValueError, match="other than"):
            register_implementation("reference", good)
    finally:
        unregister_implementation("test-f64")
        unregister_implementation("test-down")
    auto = LTCCell(tiny_ncp)
    auto(torch.randn(1, 3), auto.initial_state(1))
    assert auto.implementation_name != "test-f64"


def test_copy_and_pickle_preserve_outputs_without_caches(tiny_ncp: Wiring) -> None:
    import copy
    import pickle

    torch.manual_seed(0)
    cell = LTCCell(tiny_ncp)
    x, h = torch.randn(2, 3), torch.randn(2, 6)
    with torch.no_grad():
        y, _ = cell(x, h, 0.5)  # fills the parameter cache and the implementation choice
    for clone in (copy.deepcopy(cell), pickle.loads(pickle.dumps(cell))):
        assert clone._eff_cache is None and clone._resolved == {}
        with torch.no_grad():
            assert torch.equal(clone(x, h, 0.5)[0], y)
        assert clone.wiring == cell.wiring


def test_parameter_names_are_exactly_the_cells_parameters() -> None:
    cell = LTCCell(lane_keeping_ncp(seed=0))
    assert {name for name, _ in cell.named_parameters()} == set(PARAM_NAMES)
    assert len(PARAM_NAMES) == 15  # ncps' LTCCell parameters (the masks are buffers)


# ------------------------------------------------------------------ time-constant scaling by role
@pytest.mark.parametrize("constraint", ["softplus", "clamp"])
def test_scale_time_constants_scales_exactly_the_role(tiny_ncp: Wiring, constraint: str) -> None:
    """``scale_time_constants(f, role)``: the effective ``cm`` and the liquid time constant
    ``cm / conductance`` of that role's neurons become ``f`` times what they were at the same state and input;
    other neurons and every other parameter are untouched; None scales every neuron."""
    torch.manual_seed(0)
    cell = LTCCell(tiny_ncp, ode_unfolds=1, constraint=constraint)  # one unfold: tau at the given state
    x, h = torch.randn(4, 3), torch.rand(4, 6) * 2 - 1
    before_params = {k: v.detach().clone() for k, v in cell.state_dict().items()}
    with torch.no_grad():
        before = cell.diagnostics(x, h)
        cm_before = cell.effective_parameters()["cm"].clone()
    motor = torch.tensor([r == "motor" for r in tiny_ncp.roles])
    assert cell.scale_time_constants(0.1, "motor") == int(motor.sum()) == 1
    with torch.no_grad():
        after = cell.diagnostics(x, h)
        cm_after = cell.effective_parameters()["cm"]
    torch.testing.assert_close(cm_after[motor], 0.1 * cm_before[motor])
    torch.testing.assert_close(cm_after[~motor], cm_before[~motor], rtol=0, atol=0)
    torch.testing.assert_close(after["tau"][:, motor], 0.1 * before["tau"][:, motor])
    torch.testing.assert_close(after["tau"][:, ~motor], before["tau"][:, ~motor], rtol=0, atol=0)
    for name, value in cell.state_dict().items():
        if name != "cm":
            assert torch.equal(value, before_params[name]), name
    assert cell.scale_time_constants(3.0) == 6
    torch.testing.assert_close(cell.effective_parameters()["cm"][~motor], 3.0 * cm_before[~motor])
    # still a trained parameter
    cell.zero_grad()
    cell(x, h)[0].sum().backward()
    assert cell.cm.grad is not None and bool(cell.cm.grad.abs().sum() > 0)


def test_scale_time_constants_refuses_bad_factors_and_roles(tiny_ncp: Wiring) -> None:
    cell = LTCCell(tiny_ncp)
    cm = cell.cm.detach().clone()
    for bad in (0, -1.0, math.nan, math.inf, True, "0.1", None):
        with pytest.raises(ValueError, match="finite number > 0"):
            cell.scale_time_constants(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no neuron of this wiring has the role 'hidden'; its roles: \["):
        cell.scale_time_constants(0.5, "hidden")
    for extreme in (1e-50, 1e39):
        with pytest.raises(ValueError, match="out of torch.float32's finite range; nothing was changed"):
            cell.scale_time_constants(extreme, "motor")
    assert torch.equal(cell.cm.detach(), cm)  # nothing changed by a refused call
