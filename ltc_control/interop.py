"""Conversion of ``ncps`` models into ltc-control models (ncps is a dev dependency, imported lazily)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ltc_control.cells.ltc import PARAMETER_NAMES, LTCCell
from ltc_control.sequence import SequenceModel
from ltc_control.wirings import VALID_ROLES, Wiring


def _import_ncps() -> Any:
    try:
        import ncps.torch as ncps_torch
    except ImportError as exc:  # pragma: no cover - ncps is a dev dependency
        raise ImportError(
            "from_ncps needs the ncps package (a dev dependency): "
            "pip install 'ltc-control[dev]' or ncps==1.0.1"
        ) from exc
    return ncps_torch


def wiring_from_ncps(ncps_wiring: Any) -> Wiring:
    """Builds a :class:`Wiring` from a *built* ``ncps.wirings.Wiring`` (matrices copied, roles preserved).

    Args:
        ncps_wiring: an ncps wiring on which ``build(input_dim)`` has been called.

    Raises:
        ValueError: the wiring is not built or its matrices are invalid.
    """
    if getattr(ncps_wiring, "sensory_adjacency_matrix", None) is None or ncps_wiring.input_dim is None:
        raise ValueError(
            "the ncps wiring is not built (unknown input size); call wiring.build(input_dim) first"
        )
    n = int(ncps_wiring.units)
    m = int(ncps_wiring.output_dim) if ncps_wiring.output_dim is not None else n
    roles: list[str] | None = None
    if hasattr(ncps_wiring, "get_type_of_neuron"):
        roles = [str(ncps_wiring.get_type_of_neuron(i)) for i in range(n)]
        if any(r not in VALID_ROLES for r in roles) or roles[:m] != ["motor"] * m or "motor" in roles[m:]:
            roles = None  # unknown role vocabulary: fall back to motor/hidden
    return Wiring(
        np.asarray(ncps_wiring.adjacency_matrix),
        np.asarray(ncps_wiring.sensory_adjacency_matrix),
        roles=roles,
        output_size=m,
        builder=f"ncps.{type(ncps_wiring).__name__}",
        builder_args={},
    )


def from_ncps(module: nn.Module) -> SequenceModel:
    """Converts an ncps model into a :class:`SequenceModel` with identical parameters.

    Supported: ``ncps.torch.LTC`` and a bare ``ncps.torch.LTCCell`` (any wiring, either
    ``implicit_param_constraints`` setting -> ``constraint="softplus"`` / ``"clamp"``, ``ode_unfolds``,
    epsilon, input/output mapping), and ``ncps.torch.CfC`` (any mode, wired or not) through
    ``ltc_control.cells.cfc_ncps.cfc_from_ncps``. The result is batch-first whatever ``batch_first`` the ncps
    model used, keeps ``return_sequences`` of an ``LTC``, and lives on the same device and dtype.

    Args:
        module: the ncps model.

    Returns:
        ``SequenceModel(LTCCell(...))`` (or the CfC conversion's result).

    Raises:
        ValueError: an unsupported model (e.g. ``mixed_memory=True``) or an inconsistent ncps wiring.
        ImportError: ncps (or the CfC module for CfC models) is not installed.
    """
    nt = _import_ncps()
    cell_types = tuple(getattr(nt, name) for name in ("CfCCell", "WiredCfCCell") if hasattr(nt, name))
    if isinstance(module, cell_types):
        raise ValueError(
            f"a bare ncps {type(module).__name__} cannot be converted on its own; convert the ncps.torch.CfC "
            "model that contains it"
        )
    if isinstance(module, nt.CfC):
        try:
            from ltc_control.cells.cfc_ncps import cfc_from_ncps
        except ImportError as exc:
            raise ImportError(
                "converting an ncps CfC needs ltc_control.cells.cfc_ncps.cfc_from_ncps, which is not "
                "available"
            ) from exc
        return cfc_from_ncps(module)  # type: ignore[no-any-return]
    return_sequences = True
    if isinstance(module, nt.LTC):
        if getattr(module, "use_mixed", False):
            raise ValueError(
                "ncps LTC with mixed_memory=True (an extra LSTM memory cell) has no ltc-control equivalent; "
                "convert a model built with mixed_memory=False"
            )
        return_sequences = bool(module.return_sequences)
        cell = module.rnn_cell
    elif isinstance(module, nt.LTCCell):
        cell = module
    else:
        raise ValueError(
            "from_ncps supports ncps.torch.LTC, ncps.torch.LTCCell and ncps.torch.CfC; "
            f"got {type(module).__name__}"
        )
    wiring = wiring_from_ncps(cell._wiring)
    constraint: Literal["softplus", "clamp"] = "softplus" if cell._implicit_param_constraints else "clamp"
    ref = cell._params["gleak"]
    ours = LTCCell(
        wiring,
        ode_unfolds=int(cell._ode_unfolds),
        epsilon=float(cell._epsilon),
        constraint=constraint,
        input_mapping=cell._input_mapping,
        output_mapping=cell._output_mapping,
    ).to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        for mask_name in ("sparsity_mask", "sensory_sparsity_mask"):
            theirs = cell._params[mask_name].detach()
            mine = getattr(ours, mask_name)
            if theirs.shape != mine.shape or not torch.equal(theirs.to(mine.dtype), mine):
                raise ValueError(
                    f"ncps {mask_name} does not equal |adjacency| of its wiring; the model was edited after "
                    "construction and cannot be converted faithfully"
                )
        # the sparsity masks are derived from the wiring and checked above instead of copied
        for name in PARAMETER_NAMES:
            target = getattr(ours, name)
            if target is None:
                continue
            source = cell._params.get(name)
            if source is None or tuple(source.shape) != tuple(target.shape):
                got = None if source is None else tuple(source.shape)
                raise ValueError(f"ncps parameter {name!r} has shape {got}, expected {tuple(target.shape)}")
            target.copy_(source.detach())
            target.requires_grad_(source.requires_grad)
    return SequenceModel(ours, return_sequences=return_sequences)
