"""Converting a trained ``ncps.torch.CfC`` into this project's CfC cells with the same weights.

ncps is imported lazily (a development dependency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ltc_control.cells.cfc import CfCCell, WiredCfCCell
from ltc_control.wirings import Wiring

if TYPE_CHECKING:
    from ltc_control.sequence import SequenceModel


def cfc_from_ncps(module: nn.Module) -> SequenceModel:
    """Convert a trained ``ncps.torch.CfC`` into this library's ``SequenceModel`` with identical outputs.

    The cell is :func:`cfc_cell_from_ncps` (see there for the state order of wired models);
    ``return_sequences`` carries over. ncps is imported lazily (a development dependency).

    Args:
        module: an ``ncps.torch.CfC`` (any mode; units or a wiring; with or without ``proj_size``).

    Returns:
        ``SequenceModel(cell, return_sequences=module.return_sequences)`` on the module's device and dtype.

    Raises:
        TypeError: ``module`` is not an ``ncps.torch.CfC``.
        ValueError: the module uses ``mixed_memory=True`` (an extra LSTM this library does not model).
    """
    from ltc_control.sequence import SequenceModel

    cell = cfc_cell_from_ncps(module)
    return SequenceModel(cell, return_sequences=bool(module.return_sequences))


def cfc_cell_from_ncps(module: nn.Module) -> CfCCell | WiredCfCCell:
    """The cell of an ``ncps.torch.CfC`` as :class:`CfCCell` / :class:`WiredCfCCell`, weights copied exactly.

    Dense CfCs become a :class:`CfCCell` (``proj_size`` -> ``output_size``, the ``fc`` weights copied); wired
    ones a :class:`WiredCfCCell` with ``ncps_compatible=True`` (ncps' masks) whose state is in wiring order
    (motor neurons first): an ncps state ``h_ncps`` is ``h_ncps[:, argsort(cell.ncps_permutation())]`` here,
    and ``h[:, perm]`` is the ncps state. Generic (one-layer) ncps wirings output the whole state in ncps but
    only the ``M`` motor neurons (its first ``M`` entries) here.

    Args:
        module: an ``ncps.torch.CfC``.

    Returns:
        The converted cell, on the module's device and dtype and in its train/eval mode.

    Raises:
        TypeError: ``module`` is not an ``ncps.torch.CfC``.
        ValueError: ``mixed_memory=True``, or a wiring that cannot be expressed (named in the message).
    """
    try:
        from ncps.torch import CfC as NcpsCfC
    except ImportError as exc:  # pragma: no cover - ncps is a dev dependency
        raise ImportError(
            "converting an ncps CfC needs the 'ncps' package (pip install 'ltc-control[dev]')."
        ) from exc

    if not isinstance(module, NcpsCfC):
        raise TypeError(f"expected an ncps.torch.CfC, got {type(module).__name__}.")
    if getattr(module, "use_mixed", False):
        raise ValueError(
            "This ncps CfC uses mixed_memory=True (an LSTM memory cell beside the CfC), which ltc-control "
            "does not model; convert a CfC built with mixed_memory=False."
        )
    ncell = module.rnn_cell
    proj = None if isinstance(module.fc, nn.Identity) else int(module.fc.out_features)
    param = next(module.parameters())
    cell: CfCCell | WiredCfCCell
    if getattr(module, "wired_mode", False):
        wiring = _wiring_from_ncps(module.wiring)
        wcell = WiredCfCCell(wiring, mode=ncell._layers[0].mode, output_size=proj, ncps_compatible=True)
        if module.wiring.num_layers != wcell.num_layers:
            raise ValueError(
                f"ncps wiring has {module.wiring.num_layers} layers but the converted wiring has "
                f"{wcell.num_layers}."
            )
        for l_id, (src, dst) in enumerate(zip(ncell._layers, wcell._layers)):
            expected = np.asarray(module.wiring.get_neurons_of_layer(l_id))
            if not np.array_equal(expected, wcell._layer_indices[l_id]):
                raise ValueError(
                    f"ncps layer {l_id} neurons {expected.tolist()} do not match the converted wiring."
                )
            _copy_cfc_params(src, dst)
        cell = wcell
    else:
        ccell = CfCCell(
            int(ncell.input_size),
            int(ncell.hidden_size),
            output_size=proj,
            mode=ncell.mode,
            backbone_units=_backbone_units(ncell),
            backbone_layers=int(ncell.backbone_layers),
            backbone_dropout=_backbone_dropout(ncell),
            activation=_activation_name(ncell),
        )
        _copy_cfc_params(ncell, ccell)
        if ccell.backbone is not None:
            assert ncell.backbone is not None
            ccell.backbone.load_state_dict(ncell.backbone.state_dict())
        cell = ccell
    if proj is not None:
        cell.fc.load_state_dict(module.fc.state_dict())
    cell = cell.to(device=param.device, dtype=param.dtype)
    cell.train(module.training)
    return cell


def _copy_cfc_params(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in ("ff1", "ff2", "time_a", "time_b"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if (s is None) != (d is None):
                raise ValueError(f"ncps cell and converted cell disagree on head {name!r} (mode mismatch).")
            if s is not None and d is not None:
                d.weight.copy_(s.weight)
                d.bias.copy_(s.bias)
        for name in ("w_tau", "A"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if s is not None and d is not None:
                d.copy_(s)


def _backbone_units(ncell: Any) -> int:
    if ncell.backbone is None:
        return 128
    return int(ncell.backbone[0].out_features)


def _backbone_dropout(ncell: Any) -> float:
    if ncell.backbone is None:
        return 0.0
    for m in ncell.backbone:
        if isinstance(m, nn.Dropout):
            return float(m.p)
    return 0.0


def _activation_name(ncell: Any) -> str:
    if ncell.backbone is None:
        return "lecun_tanh"
    act = ncell.backbone[1]
    by_type = {"LeCun": "lecun_tanh", "Tanh": "tanh", "ReLU": "relu", "SiLU": "silu", "GELU": "gelu"}
    name = by_type.get(type(act).__name__)
    if name is None:
        raise ValueError(
            f"Unsupported ncps backbone activation {type(act).__name__}; known: {sorted(by_type)}."
        )
    return name


def _wiring_from_ncps(nw: Any) -> Wiring:
    """A :class:`Wiring` with the adjacency, sensory adjacency, neuron order and layers of an ncps wiring."""
    if not nw.is_built():
        raise ValueError(
            "The ncps wiring is not built (no input size); run the ncps CfC once or call wiring.build()."
        )
    units = int(nw.units)
    motors = int(nw.output_dim) if nw.output_dim is not None else units
    if nw.num_layers > 1:
        roles = ["inter"] * units
        names = [""] * units
        for l_id, role in zip(range(nw.num_layers), ("inter", "command", "motor")):
            for k, i in enumerate(nw.get_neurons_of_layer(l_id)):
                roles[i] = role
                names[i] = f"{role}_{k}"
    else:
        roles = ["motor" if i < motors else "hidden" for i in range(units)]
        names = [f"motor_{i}" if i < motors else f"hidden_{i - motors}" for i in range(units)]
    return Wiring.from_matrices(
        np.asarray(nw.adjacency_matrix),
        np.asarray(nw.sensory_adjacency_matrix),
        roles=roles,
        names=names,
        output_size=motors,
    )
