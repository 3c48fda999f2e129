"""from_ncps: exact conversion of ncps LTC models (any wiring, options) and delegation for CfC."""

from __future__ import annotations

import importlib

import ncps.torch as ncps_torch
import ncps.wirings as ncps_wirings
import numpy as np
import pytest
import torch

from ltc_control import from_ncps
from ltc_control.cells.ltc import LTCCell
from ltc_control.interop import wiring_from_ncps
from ltc_control.sequence import SequenceModel


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def test_ltc_wrapper_conversion_copies_everything() -> None:
    torch.manual_seed(0)
    wiring = ncps_wirings.NCP(5, 4, 2, 3, 2, 3, 2, seed=9)
    ref = ncps_torch.LTC(6, wiring, return_sequences=False, ode_unfolds=4)
    with torch.no_grad():
        ref.rnn_cell.erev.mul_(0.7)  # trained reversal potentials must carry over too
    model = from_ncps(ref)
    assert isinstance(model, SequenceModel) and isinstance(model.cell, LTCCell)
    assert model.return_sequences is False
    cell = model.cell
    assert cell.ode_unfolds == 4 and cell.constraint == "softplus"
    np.testing.assert_array_equal(cell.wiring.adjacency, wiring.adjacency_matrix)
    np.testing.assert_array_equal(cell.wiring.sensory_adjacency, wiring.sensory_adjacency_matrix)
    assert list(cell.wiring.roles) == [wiring.get_type_of_neuron(i) for i in range(wiring.units)]
    assert cell.wiring.builder == "ncps.NCP"
    for name, p in ref.rnn_cell.named_parameters():
        assert torch.equal(getattr(cell, name), p), name
    x = torch.randn(3, 9, 6)
    y_ref, h_ref = ref(x)
    y, h = model(x)
    assert y.shape == y_ref.shape == (3, 2)
    assert _maxdiff(y, y_ref) <= 1e-6 and _maxdiff(h, h_ref) <= 1e-6
    # The conversion is independent of the source: training the copy leaves ncps' model alone.
    with torch.no_grad():
        cell.gleak.add_(1.0)
    assert not torch.equal(cell.gleak, ref.rnn_cell.gleak)


def test_batch_first_false_model_becomes_batch_first() -> None:
    torch.manual_seed(1)
    ref = ncps_torch.LTC(4, ncps_wirings.FullyConnected(5, output_dim=1), batch_first=False)
    model = from_ncps(ref)
    x = torch.randn(7, 3, 4)  # (T, B, S) for ncps
    y_ref, _ = ref(x)
    y, _ = model(x.transpose(0, 1))
    assert _maxdiff(y.transpose(0, 1), y_ref) <= 1e-6


def test_fully_connected_roles_and_float64() -> None:
    ref = ncps_torch.LTC(3, 6).double()  # int units -> FullyConnected(6), all motor
    model = from_ncps(ref)
    assert model.cell.gleak.dtype == torch.float64
    assert model.cell.wiring.roles == ("motor",) * 6
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    assert _maxdiff(model(x)[0], ref(x)[0]) <= 1e-12


def test_wiring_from_ncps_requires_built_wiring() -> None:
    with pytest.raises(ValueError, match=r"not built.*call wiring.build\(input_dim\)"):
        wiring_from_ncps(ncps_wirings.NCP(3, 2, 1, 2, 1, 1, 1))


def test_unsupported_models_raise() -> None:
    ref = ncps_torch.LTC(3, ncps_wirings.AutoNCP(8, 2), mixed_memory=True)
    with pytest.raises(ValueError, match="mixed_memory=True"):
        from_ncps(ref)
    with pytest.raises(
        ValueError, match="from_ncps supports ncps.torch.LTC, ncps.torch.LTCCell and ncps.torch.CfC"
    ):
        from_ncps(torch.nn.LSTM(3, 4))
    with pytest.raises(ValueError, match="bare ncps CfCCell cannot be converted"):
        from_ncps(ncps_torch.CfCCell(3, 4))
    edited = ncps_torch.LTC(3, ncps_wirings.AutoNCP(8, 2))
    with torch.no_grad():
        edited.rnn_cell.sparsity_mask.zero_()
    with pytest.raises(ValueError, match="sparsity_mask does not equal"):
        from_ncps(edited)


def _cfc_available() -> bool:
    try:
        return hasattr(importlib.import_module("ltc_control.cells.cfc_ncps"), "cfc_from_ncps")
    except ImportError:
        return False


@pytest.mark.skipif(not _cfc_available(), reason="ltc_control.cells.cfc_ncps.cfc_from_ncps is missing")
@pytest.mark.parametrize("units", [8, "wired"])
def test_cfc_conversion_is_delegated_and_exact(units: object) -> None:
    torch.manual_seed(2)
    ref = ncps_torch.CfC(4, ncps_wirings.AutoNCP(10, 2, seed=1) if units == "wired" else 8)
    model = from_ncps(ref)
    assert isinstance(model, SequenceModel)
    x = torch.randn(3, 6, 4)
    y_ref, _ = ref(x)
    y, _ = model(x)
    assert y.shape == y_ref.shape
    assert _maxdiff(y, y_ref) <= 1e-5
