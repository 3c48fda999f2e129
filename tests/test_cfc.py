"""CfC cells: ncps 1.0.1 parity (outputs, gradients), wiring sparsity, polarity, dt batching, gradcheck."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from ncps import torch as ncps_torch
from ncps import wirings as ncps_wirings

from ltc_control.cells.cfc import CfCCell, WiredCfCCell, wiring_layers
from ltc_control.cells.cfc_ncps import cfc_cell_from_ncps, cfc_from_ncps
from ltc_control.sequence import SequenceModel
from ltc_control.wirings import NCP, AutoNCP, FullyConnected, Wiring, lane_keeping_ncp

MODES = ("default", "no_gate", "pure")
T = 32  # steps of every parity sequence
TOL = 1e-5


def _run_cell(
    cell: torch.nn.Module, x: torch.Tensor, dt: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Python loop over the cell; returns (y (B, T, M), h_T)."""
    h = cell.initial_state(x.shape[0])
    ys = []
    for t in range(x.shape[1]):
        y, h = cell(x[:, t], h, 1.0 if dt is None else dt[:, t])
        ys.append(y)
    return torch.stack(ys, 1), h


def _grads(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        n[len(prefix) :]: p.grad.clone()
        for n, p in module.named_parameters()
        if n.startswith(prefix) and p.requires_grad
    }


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().max())


def _ncps_ncp(seed: int) -> ncps_wirings.NCP:
    return ncps_wirings.NCP(
        inter_neurons=6,
        command_neurons=4,
        motor_neurons=2,
        sensory_fanout=3,
        inter_fanout=2,
        recurrent_command_synapses=3,
        motor_fanin=2,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------- dense parity
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("proj", "layers"), [(None, 1), (3, 2)])
def test_dense_parity_with_ncps_outputs_and_gradients(
    mode: str, seed: int, proj: int | None, layers: int
) -> None:
    torch.manual_seed(seed)
    ref = ncps_torch.CfC(5, 12, proj_size=proj, mode=mode, backbone_units=16, backbone_layers=layers)
    cell = cfc_cell_from_ncps(ref)
    assert isinstance(cell, CfCCell)
    # Same parameter names as ncps' cell + wrapper: a state_dict loads 1:1.
    ncps_names = {k.replace("rnn_cell.", "") for k in ref.state_dict()}
    assert set(cell.state_dict()) == ncps_names
    x = torch.randn(4, T, 5)
    y_ref, h_ref = ref(x)
    y, h = _run_cell(cell, x)
    assert y.shape == (4, T, 12 if proj is None else proj)
    assert _maxdiff(y, y_ref) <= TOL
    assert _maxdiff(h, h_ref) <= TOL
    w = torch.randn_like(y)
    ((y_ref * w).sum() + h_ref.square().sum()).backward()
    ((y * w).sum() + h.square().sum()).backward()
    g_ref = {k.replace("rnn_cell.", ""): v for k, v in _grads(ref).items()}
    g = _grads(cell)
    assert set(g) == set(g_ref)
    for name in g:
        scale = max(1.0, float(g_ref[name].abs().max()))
        assert _maxdiff(g[name], g_ref[name]) <= TOL * scale, name


def test_backbone_free_and_activation_variants_match_ncps() -> None:
    torch.manual_seed(3)
    for act in ("relu", "gelu", "silu", "tanh"):
        ref = ncps_torch.CfC(3, 6, activation=act, backbone_units=8)
        cell = cfc_cell_from_ncps(ref)
        assert isinstance(cell, CfCCell) and cell.activation == act
        x = torch.randn(2, 10, 3)
        assert _maxdiff(_run_cell(cell, x)[0], ref(x)[0]) <= TOL
    ref = ncps_torch.CfC(3, 6, backbone_layers=0)
    cell = cfc_cell_from_ncps(ref)
    assert cell.backbone is None and cell.ff1.in_features == 9
    x = torch.randn(2, 10, 3)
    assert _maxdiff(_run_cell(cell, x)[0], ref(x)[0]) <= TOL


# ------------------------------------------------------------------------------------------- wired parity
def _wired_parity(
    ref: ncps_torch.CfC, cell: WiredCfCCell, x: torch.Tensor, masked_grads: bool = False
) -> None:
    """Outputs, final state (through the documented permutation) and gradients of every layer agree.

    With ``masked_grads`` the weight gradients are compared on the wiring's synapses only (ncps still computes
    gradients for the entries the sparse cell masks), and the sparse cell's must be exactly zero elsewhere.
    """
    y_ref, h_ref = ref(x)
    y, h = _run_cell(cell, x)
    perm = cell.ncps_permutation()
    assert _maxdiff(y, y_ref) <= TOL
    assert _maxdiff(h[:, perm], h_ref) <= TOL
    assert _maxdiff(h, h_ref[:, np.argsort(perm)]) <= TOL
    w = torch.randn_like(y)
    ((y_ref * w).sum() + h_ref.square().sum()).backward()
    ((y * w).sum() + h.square().sum()).backward()
    g_ref = {k.replace("rnn_cell.", ""): v for k, v in _grads(ref).items()}
    g = _grads(cell)
    assert set(g) == set(g_ref)  # ncps' sparsity_mask is a frozen parameter: it has no grad, so it is absent
    for name in g:
        ours, theirs = g[name], g_ref[name]
        layer_name, _, rest = name.partition(".")
        if masked_grads and rest.endswith("weight") and not rest.startswith("fc"):
            layer = getattr(cell, layer_name)
            mask = layer.ff_mask if rest.startswith("ff") else layer.gate_mask
            assert float(ours[mask == 0].abs().sum()) == 0.0, name
            ours, theirs = ours * mask, theirs * mask
        assert _maxdiff(ours, theirs) <= TOL * max(1.0, float(theirs.abs().max())), name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("kind", ["autoncp", "ncp", "fully_connected"])
def test_wired_parity_with_ncps_in_compatible_mode(mode: str, seed: int, kind: str) -> None:
    torch.manual_seed(seed)
    wiring = {
        "autoncp": lambda: ncps_wirings.AutoNCP(14, 2, seed=seed + 10),
        "ncp": lambda: _ncps_ncp(seed + 20),
        "fully_connected": lambda: ncps_wirings.FullyConnected(6, erev_init_seed=seed),
    }[kind]()
    ref = ncps_torch.CfC(4, wiring, mode=mode, proj_size=3 if seed else None)
    cell = cfc_cell_from_ncps(ref)
    assert isinstance(cell, WiredCfCCell) and cell.ncps_compatible
    assert cell.num_layers == wiring.num_layers
    _wired_parity(ref, cell, torch.randn(3, T, 4))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["autoncp", "ncp"])
def test_sparse_wired_cfc_equals_ncps_with_the_absent_synapses_zeroed(mode: str, kind: str) -> None:
    """Parity of the fixed (sparse) cell on the part that is the same: ncps with its weights zeroed wherever
    the wiring has no synapse computes exactly what the sparse cell computes."""
    torch.manual_seed(11)
    nw = ncps_wirings.AutoNCP(14, 2, seed=4) if kind == "autoncp" else _ncps_ncp(9)
    ref = ncps_torch.CfC(4, nw, mode=mode)
    compat = cfc_cell_from_ncps(ref)
    assert isinstance(compat, WiredCfCCell)
    sparse = WiredCfCCell(compat.wiring, mode=mode, polarity="ignore")
    sparse.load_state_dict(
        {k: v for k, v in compat.state_dict().items() if not k.endswith(("_mask", "sign"))}, strict=False
    )
    with torch.no_grad():
        for nl, sl in zip(ref.rnn_cell._layers, sparse._layers):
            for head in ("ff1", "ff2"):
                if hasattr(nl, head):
                    getattr(nl, head).weight.mul_(sl.ff_mask)
            for head in ("time_a", "time_b"):
                if hasattr(nl, head):
                    getattr(nl, head).weight.mul_(sl.gate_mask)
    # The fix must really differ from ncps here (dense intra-layer blocks), or this test would prove nothing.
    assert any(float((sl.ff_mask == 0).sum()) > 0 for sl in sparse._layers[1:])
    _wired_parity(ref, sparse, torch.randn(3, T, 4), masked_grads=True)


def test_cfc_from_ncps_returns_an_equivalent_sequence_model() -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 12, 4)
    for units in (8, ncps_wirings.AutoNCP(10, 3, seed=2)):
        for return_sequences in (True, False):
            ref = ncps_torch.CfC(4, units, proj_size=2, return_sequences=return_sequences)
            model = cfc_from_ncps(ref)
            assert isinstance(model, SequenceModel) and model.return_sequences is return_sequences
            y_ref, h_ref = ref(x)
            y, h = model(x)
            assert y.shape == y_ref.shape
            assert _maxdiff(y, y_ref) <= TOL
            perm = model.cell.ncps_permutation() if isinstance(model.cell, WiredCfCCell) else np.arange(8)
            assert _maxdiff(h[:, perm], h_ref) <= TOL


def test_cfc_from_ncps_rejects_unsupported_models() -> None:
    with pytest.raises(ValueError, match="mixed_memory=True"):
        cfc_from_ncps(ncps_torch.CfC(3, 4, mixed_memory=True))
    with pytest.raises(TypeError, match="expected an ncps.torch.CfC, got LTC"):
        cfc_cell_from_ncps(ncps_torch.LTC(3, 4))


def test_converted_wiring_keeps_ncps_layers_and_synapses() -> None:
    nw = ncps_wirings.AutoNCP(14, 2, seed=4)
    ref = ncps_torch.CfC(4, nw)
    cell = cfc_cell_from_ncps(ref)
    assert isinstance(cell, WiredCfCCell)
    np.testing.assert_array_equal(cell.wiring.adjacency, nw.adjacency_matrix)
    np.testing.assert_array_equal(cell.wiring.sensory_adjacency, nw.sensory_adjacency_matrix)
    for l_id, idx in enumerate(wiring_layers(cell.wiring)):
        assert idx.tolist() == list(nw.get_neurons_of_layer(l_id))
    assert cell.neuron_roles[:2] == ["motor", "motor"]


# ------------------------------------------------------------------------------------------- dt handling
@pytest.mark.parametrize("mode", MODES)
def test_batched_per_sample_dt_equals_a_per_sample_loop(mode: str) -> None:
    torch.manual_seed(6)
    cells = [
        CfCCell(3, 7, 2, mode=mode, backbone_units=10),
        WiredCfCCell(AutoNCP(10, 2, input_size=3, seed=3), mode=mode),
    ]
    x = torch.randn(5, 3)
    dt = torch.tensor([0.1, 0.5, 1.0, 2.0, 7.5])
    for cell in cells:
        h0 = torch.randn(5, cell.state_size)
        y_b, h_b = cell(x, h0, dt)
        y_c, h_c = cell(x, h0, dt[:, None])
        assert torch.equal(y_b, y_c) and torch.equal(h_b, h_c)
        for b in range(5):
            y_1, h_1 = cell(x[b : b + 1], h0[b : b + 1], float(dt[b]))
            assert _maxdiff(y_b[b : b + 1], y_1) <= 1e-6
            assert _maxdiff(h_b[b : b + 1], h_1) <= 1e-6
        # dt really matters (mode-dependent): different dt give different states.
        assert _maxdiff(h_b[0], cell(x[:1], h0[:1], 7.5)[1][0]) > 1e-4


def test_per_sample_dt_matches_ncps_cell_with_column_timespans() -> None:
    """ncps' CfC wrapper squeezes timespans to (B,) and mis-broadcasts (issues #81-#83); its cell with a
    (B, 1) timespan column is correct, and ours agrees with it."""
    torch.manual_seed(8)
    ref = ncps_torch.CfC(3, 6, backbone_units=8)
    cell = cfc_cell_from_ncps(ref)
    x, h0 = torch.randn(4, 3), torch.randn(4, 6)
    ts = torch.tensor([0.2, 1.0, 3.0, 0.7])
    _, h_ref = ref.rnn_cell(x, h0, ts[:, None])
    _, h = cell(x, h0, ts)
    assert _maxdiff(h, h_ref) <= 1e-6


# ------------------------------------------------------------------------------------------- sparsity
def _sparse_cells() -> list[WiredCfCCell]:
    torch.manual_seed(12)
    w = NCP(
        inter=5,
        command=4,
        motor=2,
        sensory_fanout=2,
        inter_fanout=2,
        recurrent_command_synapses=3,
        motor_fanin=2,
        input_size=4,
        seed=3,
    )
    return [WiredCfCCell(w, mode=m, polarity=p) for m in MODES for p in ("ignore", "init", "constrain")]


def test_masked_weights_get_zero_gradient_and_do_not_change_outputs() -> None:
    x = torch.randn(3, 6, 4)
    for cell in _sparse_cells():
        y, h = _run_cell(cell, x)
        (y.square().sum() + h.sum()).backward()
        n_masked = 0
        for layer in cell._layers:
            for head, mask in (("ff1", layer.ff_mask), ("ff2", layer.ff_mask), ("time_a", layer.gate_mask)):
                mod = getattr(layer, head)
                if mod is None:
                    continue
                assert float(mod.weight.grad[mask == 0].abs().max()) == 0.0
                assert float(mod.weight.grad[mask == 1].abs().max()) > 0.0
                assert float(mod.weight.detach()[mask == 0].abs().max()) == 0.0  # zeroed at construction
                n_masked += int((mask == 0).sum())
        assert n_masked > 0
        with torch.no_grad():
            for layer in cell._layers:
                for head, mask in (
                    ("ff1", layer.ff_mask),
                    ("ff2", layer.ff_mask),
                    ("time_b", layer.gate_mask),
                ):
                    mod = getattr(layer, head)
                    if mod is not None:
                        mod.weight.add_(100.0 * torch.randn_like(mod.weight) * (1 - mask))
        y2, h2 = _run_cell(cell, x)
        assert torch.equal(y, y2) and torch.equal(h, h2)


def _jacobian_state(
    cell: WiredCfCCell, x: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """d h' / d h (N, N) and d h' / d x (N, S) for one sample, as [out, in]."""
    jx, jh = torch.autograd.functional.jacobian(lambda a, b: cell(a, b, 0.7)[1], (x, h))
    return jh[0, :, 0, :], jx[0, :, 0, :]


def test_dependencies_follow_the_wiring_exactly() -> None:
    """Neuron j's new state depends on input k / neuron i only through a synapse of the wiring (plus, for
    layers after the first, the new state of its presynaptic layer); ncps' structure violates this."""
    torch.manual_seed(13)
    w = lane_keeping_ncp(seed=5)
    x, h = torch.randn(1, w.input_size), torch.randn(1, w.units)
    sens = np.abs(w.sensory_adjacency).T  # (N, S): [j, k]
    adj = np.abs(w.adjacency).T  # (N, N): [j, i]
    for mode in MODES:
        cell = WiredCfCCell(w, mode=mode)
        jh, jx = _jacobian_state(cell, x, h)
        inter = w.layer_indices("inter")
        # Inter neurons: only their sensory synapses (no inter -> inter recurrence in an NCP).
        assert float(jx[inter][sens[inter] == 0].abs().max()) == 0.0
        assert float(jx[inter][sens[inter] == 1].abs().min()) > 0.0
        assert float(jh[np.ix_(inter, inter)].abs().max()) == 0.0
        # Motor neurons: no self-recurrence in the wiring -> no dependence on the old motor state.
        motor = w.layer_indices("motor")
        assert float(jh[np.ix_(motor, motor)].abs().max()) == 0.0
        # Command -> command: exactly the wiring's recurrent synapses.
        cmd = w.layer_indices("command")
        block = jh[np.ix_(cmd, cmd)]
        rec = adj[np.ix_(cmd, cmd)]
        assert float(block[rec == 0].abs().max()) == 0.0
        assert float(block[rec == 1].abs().min()) > 0.0
    compat = WiredCfCCell(w, ncps_compatible=True)
    jh, jx = _jacobian_state(compat, x, h)
    motor = w.layer_indices("motor")
    inter = w.layer_indices("inter")
    # ncps' defects, reproduced in compatible mode: dense motor recurrence and dense time heads on the inputs.
    assert float(jh[np.ix_(motor, motor)].abs().min()) > 0.0
    assert float(jx[inter][sens[inter] == 0].abs().min()) > 0.0


def test_state_order_is_motor_first_like_the_ltc() -> None:
    w = lane_keeping_ncp(seed=0)
    cell = WiredCfCCell(w)
    assert cell.neuron_names == list(w.names) and cell.neuron_roles[0] == "motor"
    assert [idx.size for idx in wiring_layers(w)] == [12, 6, 1]
    assert cell.ncps_permutation().tolist() == (
        w.layer_indices("inter").tolist() + w.layer_indices("command").tolist() + [0]
    )
    h = torch.randn(2, 19)
    assert torch.equal(cell.readout(h), h[:, :1])
    y, h2 = cell(torch.randn(2, 32), h)
    assert torch.equal(y, h2[:, :1])
    proj = WiredCfCCell(w, output_size=3)
    assert proj.output_size == 3 and proj(torch.randn(2, 32), h)[0].shape == (2, 3)


def test_one_layer_wiring_is_one_cfc_layer() -> None:
    w = FullyConnected(5, input_size=3, output_size=2, self_connections=False, seed=1)
    cell = WiredCfCCell(w, mode="no_gate")
    assert cell.num_layers == 1 and cell.output_size == 2
    jh, _ = _jacobian_state(cell, torch.randn(1, 3), torch.randn(1, 5))
    assert float(torch.diagonal(jh).abs().max()) == 0.0  # no self-connections in the wiring
    off = ~torch.eye(5, dtype=torch.bool)
    assert float(jh[off].abs().min()) > 0.0


# ------------------------------------------------------------------------------------------- polarity
def test_polarity_init_and_constrain() -> None:
    torch.manual_seed(14)
    w = AutoNCP(12, 2, input_size=4, seed=8)
    init = WiredCfCCell(w, polarity="init")
    for layer in init._layers:
        syn = layer.ff_mask == 1
        for head in (layer.ff1, layer.ff2):
            assert torch.equal(torch.sign(head.weight[syn]), layer.sign[syn])
    compat = WiredCfCCell(w, polarity="init", ncps_compatible=True)
    layers = wiring_layers(w)
    n_extra = 0
    for l_id, layer in enumerate(compat._layers):
        idx = layers[l_id]
        into = w.sensory_adjacency[:, idx] if l_id == 0 else w.adjacency[np.ix_(layers[l_id - 1], idx)]
        pol = torch.as_tensor(np.concatenate([into, w.adjacency[np.ix_(idx, idx)]], 0).T, dtype=torch.float32)
        syn = pol != 0
        assert torch.equal(torch.sign(layer.ff1.weight[syn]), pol[syn])  # synapses get their polarity
        extra = layer.ff1.weight[(layer.ff_mask == 1) & ~syn]  # ncps' dense extra entries keep both signs
        n_extra += extra.numel()
        if extra.numel() > 4:
            assert bool((extra < 0).any()) and bool((extra > 0).any())
    assert n_extra > 20
    cons = WiredCfCCell(w, mode="no_gate", polarity="constrain")
    x = torch.randn(8, 5, 4)
    for _ in range(5):  # plain SGD by hand (torch.optim's first import costs seconds)
        cons.zero_grad()
        y, _ = _run_cell(cons, x)
        (-y.sum()).backward()
        with torch.no_grad():
            for p in cons.parameters():
                p.sub_(5.0 * p.grad)
    flipped_raw = 0
    for layer in cons._layers:
        syn = layer.ff_mask == 1
        for head in (layer.ff1, layer.ff2):
            eff = layer._synaptic(head.weight)
            signs = torch.sign(eff[syn])
            assert bool(((signs == layer.sign[syn]) | (signs == 0)).all())
            flipped_raw += int((torch.sign(head.weight[syn]) != layer.sign[syn]).sum())
    # The raw weights did cross zero; only the |W| * polarity parameterisation kept the effective signs.
    assert flipped_raw > 0


def test_constrained_polarity_fixes_the_sign_of_each_synapse_effect() -> None:
    """A chain input -> inter -> command -> motor with every synapse +1 (then -1) and random raw weights. With
    the gate heads' weights at zero (a constant gate), no_gate's ``tanh(ff1) + t * tanh(ff2)`` is monotone in
    each presynaptic value with the synapse's sign, so d(inter)/d(input) has the sign s and d(motor)/d(input)
    the sign s**3, whatever the raw weights are."""
    torch.manual_seed(15)
    for sign in (1, -1):
        adj = np.zeros((3, 3), dtype=np.int8)
        adj[2, 1] = sign  # inter (2) -> command (1)
        adj[1, 0] = sign  # command (1) -> motor (0)
        sens = np.array([[0, 0, sign]], dtype=np.int8)
        w = Wiring.from_matrices(adj, sens, roles=["motor", "command", "inter"])
        for polarity, expect_all in (("constrain", True), ("ignore", False)):
            cell = WiredCfCCell(w, mode="no_gate", polarity=polarity)
            signs = []
            for _ in range(8):
                with torch.no_grad():
                    for name, p in cell.named_parameters():
                        p.copy_(
                            torch.zeros_like(p)
                            if ".time_" in name and name.endswith("weight")
                            else torch.randn_like(p)
                        )
                jx = torch.autograd.functional.jacobian(
                    lambda a, c=cell: c(a, torch.zeros(1, 3), 1.0)[1], torch.randn(1, 1)
                )[0, :, 0, 0]
                signs.append(torch.sign(jx[[2, 0]]).tolist())  # inter, motor
            ok = all(s_inter == sign and s_motor == sign**3 for s_inter, s_motor in signs)
            # Without the constraint random raw weights give both signs: the test can tell the two apart.
            assert ok is expect_all, (polarity, sign, signs)


# ------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(mode: str) -> None:
    torch.manual_seed(16)
    cell = CfCCell(3, 4, 2, mode=mode, backbone_units=5, backbone_layers=2).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    dt = torch.tensor([0.3, 1.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: cell(a, b, c), (x, h, dt), eps=1e-6, atol=1e-6)
    params = [p for p in cell.parameters()]

    def by_params(*ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            cell, dict(zip([n for n, _ in cell.named_parameters()], ps)), (x, h, dt)
        )[1]

    assert torch.autograd.gradcheck(by_params, tuple(p.detach().requires_grad_() for p in params), atol=1e-6)


@pytest.mark.parametrize("polarity", ["init", "constrain"])
def test_gradcheck_wired_float64(polarity: str, tiny_ncp: Wiring) -> None:
    torch.manual_seed(17)
    w = tiny_ncp
    cell = WiredCfCCell(w, polarity=polarity).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    dt = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: cell(a, b, c), (x, h, dt), eps=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------- config and errors
def test_config_round_trip_rebuilds_the_same_model() -> None:
    torch.manual_seed(18)
    dense = CfCCell(3, 5, 2, mode="pure", backbone_units=7, backbone_layers=2, backbone_dropout=0.1)
    rebuilt = CfCCell(**dense.config())
    rebuilt.load_state_dict(dense.state_dict())
    dense.eval(), rebuilt.eval()
    x, h = torch.randn(2, 3), torch.randn(2, 5)
    assert torch.equal(dense(x, h)[1], rebuilt(x, h)[1])
    wired = WiredCfCCell(AutoNCP(9, 2, input_size=3, seed=1), mode="no_gate", polarity="constrain")
    cfg = wired.config()
    rebuilt_w = WiredCfCCell(Wiring.from_dict(cfg.pop("wiring")), **cfg)
    rebuilt_w.load_state_dict(wired.state_dict())
    h = torch.randn(2, 9)
    assert torch.equal(wired(x, h)[1], rebuilt_w(x, h)[1])


def test_bad_inputs_raise_clear_errors() -> None:
    cell = CfCCell(3, 4, 2, backbone_units=5)
    h = cell.initial_state(2)
    with pytest.raises(ValueError, match=r"input_size=3.*got \(2, 5\)"):
        cell(torch.randn(2, 5), h)
    with pytest.raises(ValueError, match=r"state_size=4.*got \(2, 6\)"):
        cell(torch.randn(2, 3), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="non-finite"):
        cell(torch.tensor([[0.0, float("nan"), 1.0]] * 2), h)
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        cell(torch.randn(2, 3), h, 0.0)
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        cell(torch.randn(2, 3), h, torch.tensor([1.0, -0.5]))
    with pytest.raises(ValueError, match=r"dt must be a float or a tensor of shape \(B=2,\)"):
        cell(torch.randn(2, 3), h, torch.ones(3))
    wired = WiredCfCCell(AutoNCP(9, 2, input_size=3, seed=1))
    with pytest.raises(ValueError, match=r"input_size=3.*got \(2, 4\)"):
        wired(torch.randn(2, 4), wired.initial_state(2))
    with pytest.raises(ValueError, match="dt must be finite and > 0"):
        wired(torch.randn(2, 3), wired.initial_state(2), float("inf"))


def test_bad_configurations_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown CfC mode 'gated'; valid modes are \['default'"):
        CfCCell(3, 4, mode="gated")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown backbone activation 'swish'"):
        CfCCell(3, 4, activation="swish")
    with pytest.raises(ValueError, match="has no effect with backbone_layers=1"):
        CfCCell(3, 4, backbone_dropout=0.2)
    with pytest.raises(ValueError, match="units must be a positive integer"):
        CfCCell(3, 0)
    w = AutoNCP(9, 2, input_size=3, seed=1)
    with pytest.raises(ValueError, match="Unknown polarity mode 'sign'"):
        WiredCfCCell(w, polarity="sign")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot be combined with ncps_compatible=True"):
        WiredCfCCell(w, polarity="constrain", ncps_compatible=True)
    adj = np.array(w.adjacency)
    sens = np.array(w.sensory_adjacency)
    sens[0, w.layer_indices("command")[0]] = 1  # a sensory synapse straight into a command neuron
    skip = Wiring.from_matrices(adj, sens, roles=w.roles)
    with pytest.raises(ValueError, match="sensory synapses into non-first-layer neurons.*LTCCell"):
        WiredCfCCell(skip)
    adj2 = np.array(w.adjacency)
    adj2[0, w.layer_indices("inter")[0]] = -1  # motor -> inter feedback
    back = Wiring.from_matrices(adj2, np.array(w.sensory_adjacency), roles=w.roles)
    with pytest.raises(ValueError, match=r"1 synapse\(s\) that skip or go back a layer \(motor_0->inter_0\)"):
        WiredCfCCell(back)


# --------------------------------------------------------------------------------------- fast paths
@pytest.fixture(params=["kernel", "torch"])
def kernel_or_torch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test on the compiled CfC kernel and again with the kernel switched off (the PyTorch path)."""
    from ltc_control.cells import cfc_fast, cfc_kernel

    if request.param == "torch":
        monkeypatch.setattr(cfc_kernel._LAZY, "kernel", None)
        monkeypatch.setattr(cfc_kernel._LAZY, "tried", True)
    elif cfc_fast.load_kernel() is None:
        pytest.skip(f"CfC kernel unavailable here: {cfc_fast.kernel_status()}")
    return str(request.param)


def _fast_cells(mode: str) -> list[torch.nn.Module]:
    """Every structural variant the fast paths handle: dense with 0/1/2 backbone layers and several
    activations, wired with several wirings, polarities and the ncps-compatible masks."""
    torch.manual_seed(21)
    return [
        CfCCell(5, 7, 3, mode=mode, backbone_units=9, backbone_layers=2),
        CfCCell(5, 7, None, mode=mode, backbone_layers=0),
        CfCCell(5, 6, 2, mode=mode, backbone_units=8, activation="relu"),
        CfCCell(5, 6, None, mode=mode, backbone_units=8, activation="gelu"),
        WiredCfCCell(AutoNCP(12, 2, input_size=5, seed=1), mode=mode, output_size=3),
        WiredCfCCell(AutoNCP(12, 2, input_size=5, seed=1), mode=mode, ncps_compatible=True),
        WiredCfCCell(FullyConnected(6, input_size=5, output_size=2, seed=1), mode=mode, polarity="constrain"),
        WiredCfCCell(
            NCP(
                inter=4,
                command=3,
                motor=2,
                sensory_fanout=2,
                inter_fanout=2,
                recurrent_command_synapses=2,
                motor_fanin=2,
                input_size=5,
                seed=2,
            ),
            mode=mode,
            polarity="ignore",
        ),
    ]


def _graph_has(t: torch.Tensor, name: str) -> bool:
    """Whether autograd node ``name`` is in ``t``'s graph (proves which path ran)."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == name:
            return True
        todo += [n for n, _ in node.next_functions]
    return False


def _sequence_and_grads(
    cell: torch.nn.Module,
    fast: bool,
    x: torch.Tensor,
    h0: torch.Tensor,
    dt: torch.Tensor | float | None,
    starts: torch.Tensor | None,
) -> list[torch.Tensor]:
    """y, h_T and the gradients (x, h0, every parameter) of a fixed loss, via the fast path or the reference
    step loop (``RecurrentCell.forward_sequence``: ``cell.forward`` with gradients on)."""
    from ltc_control.cells.base import RecurrentCell

    cell.zero_grad()
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    run = type(cell).forward_sequence if fast else RecurrentCell.forward_sequence
    y, h = run(cell, x, h0, dt, starts)
    assert _graph_has(y, "_CfCSequenceBackward") is fast
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    ((y * w).sum() + h.square().sum()).backward()
    grads = [p.grad.clone() for p in cell.parameters() if p.requires_grad]
    return [y.detach(), h.detach(), x.grad, h0.grad, *grads]


@pytest.mark.parametrize("mode", MODES)
def test_fast_sequence_equals_the_step_loop_in_float64(mode: str, kernel_or_torch: str) -> None:
    """Hand-written BPTT and the forward loop (C kernel for backbone-free cells, or PyTorch) against
    autograd through the reference step, in float64 (agreement to 1e-10 shows the derivation is exact), over
    batch sizes 1 and 3, sequence lengths 1 and 6, float / per-sample dt, with and without episode resets."""
    for cell in _fast_cells(mode):
        cell = cell.double()
        for b, t in ((1, 1), (3, 6), (1, 6), (3, 1)):
            gen = torch.Generator().manual_seed(b * 10 + t)
            x = torch.randn(b, t, 5, generator=gen, dtype=torch.float64)
            h0 = torch.randn(b, cell.state_size, generator=gen, dtype=torch.float64)
            starts = (torch.rand(b, t, generator=gen) < 0.4).to(torch.float64)
            starts[0, -1] = 1.0
            dts = (None, 0.6, torch.rand(b, t, generator=gen, dtype=torch.float64) + 0.1)
            for dt, es in zip(dts, (starts, None, starts)):
                ref = _sequence_and_grads(cell, False, x, h0, dt, es)
                fast = _sequence_and_grads(cell, True, x, h0, dt, es)
                assert len(ref) == len(fast)
                for i, (a, r) in enumerate(zip(fast, ref)):
                    assert a.shape == r.shape
                    assert _maxdiff(a, r) <= 1e-10 * max(1.0, float(r.abs().max())), (type(cell), b, t, i)


@pytest.mark.parametrize("mode", MODES)
def test_fast_sequence_matches_ncps_in_float32(mode: str) -> None:
    """The fast sequence path of converted ncps CfCs (wired: a small NCP; dense) against ncps itself:
    outputs within 1e-6 and every gradient within 1e-5 of the largest gradient, in float32 (the summation
    order differs: the input part is one matmul over all steps, weight gradients one matmul over all T * B
    rows; the C kernel's tanh / exp are libm's)."""
    torch.manual_seed(22)
    for units in (_ncps_ncp(3), 10):
        dense = {"backbone_units": 12} if isinstance(units, int) else {}
        ref = ncps_torch.CfC(6, units, mode=mode, proj_size=2, batch_first=True, **dense)
        model = cfc_from_ncps(ref)
        for b, t in ((1, 1), (4, 24)):
            ref.zero_grad()
            model.zero_grad()
            x = torch.randn(b, t, 6)
            y_ref, h_ref = ref(x)
            y, h = model(x)
            assert _maxdiff(y, y_ref) <= 1e-6 * max(1.0, float(y_ref.detach().abs().max()))
            assert _graph_has(y, "_CfCSequenceBackward")
            w = torch.randn_like(y_ref)
            (y_ref * w).sum().backward()
            (y * w).sum().backward()
            g_ref = {k.replace("rnn_cell.", ""): v for k, v in _grads(ref).items()}
            g = _grads(model, "cell.")
            assert set(g) == set(g_ref)
            # relative to the largest gradient of the model: a small sum with cancellation (pure mode's
            # w_tau) carries the absolute float32 rounding of the large terms it sums
            scale = max(float(v.abs().max()) for v in g_ref.values())
            for name in g:
                assert _maxdiff(g[name], g_ref[name]) <= 1e-5 * scale, (units, b, t, name)


def _activation_cells(mode: str) -> list[torch.nn.Module]:
    torch.manual_seed(26)
    return [CfCCell(5, 6, 2, mode=mode, backbone_units=7, activation=a) for a in ("tanh", "silu")]


@pytest.mark.parametrize("mode", MODES)
def test_no_grad_step_equals_the_reference_step(mode: str, kernel_or_torch: str) -> None:
    """``cell(x, h, dt)`` without gradients (cached weights; the C kernel or the fused PyTorch layers) equals
    the reference step: 1e-12 in float64, 1e-6 relative in float32; batch 1 and 3, float and per-sample dt."""
    cells = [*_fast_cells(mode), *_activation_cells(mode), WiredCfCCell(lane_keeping_ncp(seed=3), mode=mode)]
    for cell in cells:
        s = cell.input_size
        for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
            cell = cell.to(dtype)
            for b in (1, 3):
                x, h = torch.randn(b, s, dtype=dtype), torch.randn(b, cell.state_size, dtype=dtype)
                for dt in (1.0, 0.3, torch.rand(b, dtype=dtype) + 0.1):
                    y_ref, h_ref = (t.detach() for t in cell(x, h, dt))  # gradients on: the reference step
                    with torch.no_grad():
                        y, h_new = cell(x, h, dt)
                    assert _maxdiff(h_new, h_ref) <= tol * max(1.0, float(h_ref.abs().max()))
                    assert _maxdiff(y, y_ref) <= tol * max(1.0, float(y_ref.abs().max()))


def test_no_grad_cache_follows_parameter_changes() -> None:
    """The cached no-grad weights follow in-place updates, load_state_dict, dtype changes and copies."""
    import copy
    import pickle

    torch.manual_seed(23)
    for cell in (WiredCfCCell(lane_keeping_ncp(seed=4)), CfCCell(32, 8, 2, backbone_units=10)):
        x, h = torch.randn(2, 32), torch.randn(2, cell.state_size)

        def check(c: torch.nn.Module, x: torch.Tensor = x, h: torch.Tensor = h) -> torch.Tensor:
            with torch.no_grad():
                _, fast = c(x.to(h.dtype), h)
            _, ref = c(x.to(h.dtype), h)
            assert _maxdiff(fast, ref) <= 1e-6
            return fast

        first = check(cell)
        with torch.no_grad():
            for p in cell.parameters():
                p.add_(0.3 * torch.randn_like(p))  # an optimizer step
        second = check(cell)
        assert _maxdiff(first, second) > 1e-3
        other = type(cell)(**cell.config()) if isinstance(cell, CfCCell) else WiredCfCCell(cell.wiring)
        cell.load_state_dict(other.state_dict())
        check(cell)
        for clone in (copy.deepcopy(cell), pickle.loads(pickle.dumps(cell))):
            with torch.no_grad():
                assert torch.equal(clone(x, h)[1], cell(x, h)[1])
        double = cell.double()
        check(double, h=h.double())


def test_fast_paths_fall_back_for_dropout_and_dt_gradients() -> None:
    """Active backbone dropout and a dt that requires grad run the reference loop (same dropout draws, the
    gradient w.r.t. dt); in eval mode the dropout cell runs the fast path again."""
    from ltc_control.cells.base import RecurrentCell

    torch.manual_seed(24)
    cell = CfCCell(3, 5, 2, backbone_units=6, backbone_layers=2, backbone_dropout=0.3)
    x = torch.randn(2, 4, 3)
    torch.manual_seed(0)
    y_fast = cell.forward_sequence(x)[0]
    torch.manual_seed(0)
    y_loop = RecurrentCell.forward_sequence(cell, x)[0]
    assert torch.equal(y_fast, y_loop) and not _graph_has(y_fast, "_CfCSequenceBackward")
    cell.eval()
    assert _maxdiff(cell.forward_sequence(x)[0], RecurrentCell.forward_sequence(cell, x)[0]) <= 1e-6
    wired = WiredCfCCell(AutoNCP(8, 2, input_size=3, seed=5))
    grads = []
    for run in (type(wired).forward_sequence, RecurrentCell.forward_sequence):
        dt = torch.full((2, 4), 0.5, requires_grad=True)
        run(wired, x, None, dt)[0].sum().backward()
        grads.append(dt.grad)
    assert grads[0] is not None and grads[1] is not None
    assert _maxdiff(grads[0], grads[1]) <= 1e-6 and float(grads[0].abs().max()) > 0.0


def test_fast_sequence_keeps_masked_gradients_exactly_zero() -> None:
    x = torch.randn(3, 6, 4)
    for cell in _sparse_cells():
        y, h = cell.forward_sequence(x)
        (y.square().sum() + h.sum()).backward()
        for layer in cell._layers:
            for head, mask in (("ff1", layer.ff_mask), ("ff2", layer.ff_mask), ("time_b", layer.gate_mask)):
                mod = getattr(layer, head)
                if mod is not None:
                    assert float(mod.weight.grad[mask == 0].abs().max()) == 0.0
                    assert float(mod.weight.grad[mask == 1].abs().max()) > 0.0


@pytest.mark.parametrize("mode", MODES)
def test_fast_sequence_gradcheck_float64(mode: str, tiny_ncp: Wiring) -> None:
    torch.manual_seed(25)
    for cell in (
        WiredCfCCell(tiny_ncp, mode=mode).double(),
        CfCCell(3, 4, 2, mode=mode, backbone_units=5).double(),
    ):
        x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
        h = torch.randn(2, cell.state_size, dtype=torch.float64, requires_grad=True)
        starts = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
        assert torch.autograd.gradcheck(
            lambda a, b, c=cell, s=starts: c.forward_sequence(a, b, 0.7, s), (x, h), eps=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("mode", MODES)
def test_no_grad_sequence_equals_the_step_loop(mode: str, kernel_or_torch: str) -> None:
    """``forward_sequence`` without gradients (C kernel for backbone-free cells, else the fused PyTorch loop)
    equals the reference step loop: batch 1 and 3, length 1 and 5, dt None / float / per-sample, resets."""
    from ltc_control.cells.base import RecurrentCell

    for cell in [*_fast_cells(mode), *_activation_cells(mode)]:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
            cell = cell.to(dtype)
            for b, t in ((1, 1), (3, 5)):
                gen = torch.Generator().manual_seed(b + t)
                x = torch.randn(b, t, 5, generator=gen, dtype=dtype)
                h0 = torch.randn(b, cell.state_size, generator=gen, dtype=dtype)
                starts = (torch.rand(b, t, generator=gen) < 0.4).to(dtype)
                for dt, es in ((None, None), (0.4, starts), (torch.rand(b, t, dtype=dtype) + 0.1, starts)):
                    y_ref, h_ref = (v.detach() for v in RecurrentCell.forward_sequence(cell, x, h0, dt, es))
                    with torch.no_grad():
                        y, h = cell.forward_sequence(x, h0, dt, es)
                    assert _maxdiff(y, y_ref) <= tol * max(1.0, float(y_ref.abs().max()))
                    assert _maxdiff(h, h_ref) <= tol * max(1.0, float(h_ref.abs().max()))


def test_missing_compiler_falls_back_to_torch_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No C compiler: one CfCKernelUnavailableWarning naming the cause, kernel_status says why, and the
    no-grad step and sequence still equal the reference (PyTorch path)."""
    import warnings

    from ltc_control.cells import cfc_fast, cfc_kernel

    monkeypatch.setenv("LTC_CONTROL_CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("LTC_CONTROL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LTC_CONTROL_DISABLE_KERNEL", raising=False)
    monkeypatch.delenv("LTC_CONTROL_CFLAGS", raising=False)
    cfc_kernel._reset_kernel_for_tests()
    try:
        cell = WiredCfCCell(AutoNCP(10, 2, input_size=4, seed=6))
        x, h = torch.randn(2, 4), torch.randn(2, 10)
        with pytest.warns(cfc_fast.CfCKernelUnavailableWarning, match="no-such-cc"):
            with torch.no_grad():
                _, h_fast = cell(x, h)
        assert cfc_fast.load_kernel() is None and "unavailable" in cfc_fast.kernel_status()
        assert _maxdiff(h_fast, cell(x, h)[1]) <= 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # only one warning per process
            with torch.no_grad():
                y_seq, _ = cell.forward_sequence(x[:, None])
        assert _maxdiff(y_seq[:, 0], cell(x, cell.initial_state(2))[0]) <= 1e-6
    finally:
        cfc_kernel._reset_kernel_for_tests()


def test_cfc_benchmark_smoke(load_bench: Callable[[str], ModuleType]) -> None:
    """``ltc-control bench ltc --cfc-only`` on a tiny budget: every model timed, ours equal to ncps."""
    bench = load_bench("cfc_speed")
    CFC_MODELS, format_cfc_markdown, run_cfc_benchmark = (
        bench.CFC_MODELS,
        bench.format_cfc_markdown,
        bench.run_cfc_benchmark,
    )

    result = run_cfc_benchmark(batch=2, steps=3, repeats=1, min_time=0.001, progress=False)
    entry = result["configs"]["ncp19"]
    assert set(entry["models"]) == set(CFC_MODELS)
    assert max(entry["max_abs_diff"].values()) <= 1e-5
    assert entry["ratios"]["cpu"]["cfc_vs_ncps-cfc"]["train"] > 0.0
    report = format_cfc_markdown(result)
    assert "| cfc vs ncps-cfc |" in report and "ncp19" in report


def test_state_sequence_is_every_steps_state(kernel_or_torch: str) -> None:
    """``state_sequence`` returns the states the reference loop visits (its last one is ``forward_sequence``'s
    h_T, ``readout`` of it the outputs), on the fast path and on the dropout fallback, with gradients."""
    from ltc_control.cells.base import RecurrentCell

    torch.manual_seed(27)
    cells = [
        WiredCfCCell(lane_keeping_ncp(seed=6), mode="no_gate"),
        CfCCell(32, 6, 2, backbone_units=8, backbone_layers=2, backbone_dropout=0.2).eval(),
    ]
    for cell in cells:
        x = torch.randn(3, 5, 32)
        starts = torch.zeros(3, 5)
        starts[1, 2] = 1.0
        h0 = torch.randn(3, cell.state_size)
        ref = []
        h = h0
        for t in range(5):
            h = (1.0 - starts[:, t : t + 1]) * h
            h = cell(x[:, t], h, 0.5)[1]
            ref.append(h)
        states = cell.state_sequence(x, h0, 0.5, starts)
        assert states.shape == (3, 5, cell.state_size)
        assert _maxdiff(states, torch.stack(ref, 1)) <= 1e-5
        y, h_t = RecurrentCell.forward_sequence(cell, x, h0, 0.5, starts)
        assert _maxdiff(cell.readout(states), y) <= 1e-5 and _maxdiff(states[:, -1], h_t) <= 1e-5
        states.square().sum().backward()
        assert all(p.grad is not None for n, p in cell.named_parameters() if not n.startswith("fc."))
    cells[1].train()  # active dropout: the step-loop fallback
    assert cells[1].state_sequence(torch.randn(2, 3, 32)).shape == (2, 3, 6)


def test_layers_wider_than_the_kernel_run_on_torch() -> None:
    """A backbone wider than the C kernel's stack scratch allows is not packed for it: same numbers via the
    PyTorch path instead of a kernel error."""
    from ltc_control.cells import cfc_fast, cfc_kernel

    torch.manual_seed(28)
    cell = CfCCell(3, 5, backbone_units=cfc_kernel.MAX_WIDTH + 1)
    x, h = torch.randn(2, 3), torch.randn(2, 5)
    assert cfc_kernel.pack(cfc_fast.cached_plan(cell), x) is None
    with torch.no_grad():
        _, fast = cell(x, h)
    assert _maxdiff(fast, cell(x, h)[1]) <= 1e-6
