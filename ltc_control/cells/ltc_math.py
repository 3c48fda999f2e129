"""The LTC's reference math: one input step, a whole sequence and the inspection diagnostics, as plain
functions of the cell's *effective* parameters (the slow, obviously-correct path the fast ones are tested
against; equations in :mod:`ltc_control.cells.ltc`).

``params`` keys (all tensors on the cell's device/dtype; effective = constraint applied):
``gleak (N)`` >= 0, ``vleak (N)``, ``cm (N)`` >= 0, ``sigma (N,N)``, ``mu (N,N)``, ``w (N,N)`` >= 0 with the
sparsity mask already multiplied in, ``erev (N,N)``, ``sensory_sigma (S,N)``, ``sensory_mu (S,N)``,
``sensory_w (S,N)`` >= 0 masked, ``sensory_erev (S,N)``, ``sparsity_mask (N,N)``,
``sensory_sparsity_mask (S,N)``. Treat the dict as read-only (it may be cached).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

Params = Mapping[str, Tensor]


class Mappings(NamedTuple):
    """The input and output mappings of an :class:`LTCCell`, as handed to the inference hooks.

    Attributes:
        input_w: ``(S,)`` input scale or ``None`` (``input_mapping="none"``).
        input_b: ``(S,)`` input offset or ``None`` (``"linear"`` / ``"none"``).
        output_w: ``(M,)`` output scale or ``None``.
        output_b: ``(M,)`` output offset or ``None``.
        output_size: number of motor neurons ``M`` (the first ``M`` state entries are read out).
    """

    input_w: Tensor | None
    input_b: Tensor | None
    output_w: Tensor | None
    output_b: Tensor | None
    output_size: int


# ----------------------------------------------------------------------------------------- reference math
def _sensory_terms(params: Params, x_mapped: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sensory activations ``r (B, S, N)`` and their reductions ``(sum r*E (B, N), sum r (B, N))``."""
    r = params["sensory_w"] * torch.sigmoid(
        params["sensory_sigma"] * (x_mapped.unsqueeze(-1) - params["sensory_mu"])
    )
    return r, (r * params["sensory_erev"]).sum(dim=1), r.sum(dim=1)


def _synaptic_activation(params: Params, v: Tensor) -> Tensor:
    """Synaptic conductances ``s (B, N, N)``, ``s[b, i, j]`` for synapse i -> j at presynaptic state ``v``."""
    return params["w"] * torch.sigmoid(params["sigma"] * (v.unsqueeze(-1) - params["mu"]))


def reference_step(
    params: Params, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float
) -> Tensor:
    """One input step: ``unfolds`` fused semi-implicit Euler steps (the slow, obviously-correct path).

    Args:
        params: effective parameters (see the module docstring).
        x_mapped: ``(B, S)`` inputs after the input mapping.
        v: ``(B, N)`` state before the step.
        dt: ``(B, 1)`` step length per sample (> 0).
        unfolds: number of solver sub-steps K.
        eps: added to the denominator to avoid a division by zero.

    Returns:
        ``(B, N)`` state after the step.
    """
    _, num_sens, den_sens = _sensory_terms(params, x_mapped)
    cm_t = params["cm"] / (dt / unfolds)
    gleak = params["gleak"]
    gleak_vleak = gleak * params["vleak"]
    erev = params["erev"]
    for _ in range(unfolds):
        s = _synaptic_activation(params, v)
        numerator = cm_t * v + gleak_vleak + ((s * erev).sum(dim=1) + num_sens)
        denominator = cm_t + gleak + (s.sum(dim=1) + den_sens)
        v = numerator / (denominator + eps)
    return v


def reference_sequence(
    params: Params,
    x_mapped: Tensor,
    v0: Tensor,
    dt: Tensor,
    reset: Tensor | None,
    unfolds: int,
    eps: float,
) -> Tensor:
    """Runs :func:`reference_step` over a sequence.

    Args:
        params: effective parameters.
        x_mapped: ``(B, T, S)`` mapped inputs.
        v0: ``(B, N)`` initial state.
        dt: ``(B, T, 1)`` step lengths.
        reset: ``(B, T, 1)`` 0/1 (1 zeroes the state before step t) or None.
        unfolds: solver sub-steps per input step.
        eps: denominator epsilon.

    Returns:
        ``(B, T, N)`` states after every step.
    """
    v = v0
    states = []
    for t in range(x_mapped.shape[1]):
        if reset is not None:
            v = (1.0 - reset[:, t]) * v
        v = reference_step(params, x_mapped[:, t], v, dt[:, t], unfolds, eps)
        states.append(v)
    return torch.stack(states, dim=1)


def reference_diagnostics(
    params: Params, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float
) -> dict[str, Tensor]:
    """Runs one input step and returns the currents and liquid time constants of its last unfold.

    Returns:
        ``state (B, N)`` new state; ``sensory_current`` ``sum_k r (sensory_erev - v)``; ``synaptic_current``
        ``sum_i s (erev - v)``; ``conductance`` ``gleak + sum s + sum r``; ``tau`` ``cm / conductance`` (all
        ``(B, N)``, evaluated at the pre-update state of the last unfold).
    """
    r, num_sens, den_sens = _sensory_terms(params, x_mapped)
    cm_t = params["cm"] / (dt / unfolds)
    gleak = params["gleak"]
    erev = params["erev"]
    s = _synaptic_activation(params, v)
    v_pre = v
    for _ in range(unfolds):
        v_pre = v
        s = _synaptic_activation(params, v)
        numerator = cm_t * v + gleak * params["vleak"] + ((s * erev).sum(dim=1) + num_sens)
        denominator = cm_t + gleak + (s.sum(dim=1) + den_sens)
        v = numerator / (denominator + eps)
    conductance = gleak + s.sum(dim=1) + den_sens
    return {
        "state": v,
        "sensory_current": (r * (params["sensory_erev"] - v_pre.unsqueeze(1))).sum(dim=1),
        "synaptic_current": (s * (erev - v_pre.unsqueeze(1))).sum(dim=1),
        "conductance": conductance,
        "tau": params["cm"] / conductance,
    }
