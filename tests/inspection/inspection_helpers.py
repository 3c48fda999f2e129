"""Shared builders for the inspection tests (a module with a unique name, importable from the test files)."""

from __future__ import annotations

import numpy as np
import torch

from ltc_control.cells.ltc import LTCCell
from ltc_control.wirings import Wiring


def two_neuron_ltc(sigma: float = 0.0) -> LTCCell:
    """Neuron 0 (motor) <- +1 synapse from neuron 1 (command) <- +1 sensory synapse; neuron 0 -| neuron 1.

    Raw (clamp-constrained) parameters: gleak = (0.5, 0.25), cm = (0.8, 0.6), vleak = 0, w[1,0] = 2,
    w[0,1] = 1, sensory_w[0,1] = 1, all sigmas = ``sigma``, all mus = 0.5; no input/output mappings.
    With sigma = 0 every sigmoid is 1/2, so the conductances do not depend on the state:
    tau_0 = 0.8 / (0.5 + 2/2) = 0.8 / 1.5, tau_1 = 0.6 / (0.25 + 1/2 + 1/2) = 0.48.
    """
    wiring = Wiring.from_matrices(
        np.array([[0, -1], [1, 0]], dtype=np.int8),
        np.array([[0, 1]], dtype=np.int8),
        roles=["motor", "command"],
        names=["motor_0", "command_0"],
        output_size=1,
    )
    cell = LTCCell(
        wiring,
        ode_unfolds=6,
        epsilon=0.0,
        constraint="clamp",
        input_mapping="none",
        output_mapping="none",
        implementation="reference",
    ).double()
    with torch.no_grad():
        cell.gleak.copy_(torch.tensor([0.5, 0.25], dtype=torch.float64))
        cell.cm.copy_(torch.tensor([0.8, 0.6], dtype=torch.float64))
        cell.vleak.zero_()
        cell.w.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64))
        cell.sigma.fill_(sigma)
        cell.mu.fill_(0.5)
        cell.sensory_w.copy_(torch.tensor([[0.0, 1.0]], dtype=torch.float64))
        cell.sensory_sigma.fill_(sigma)
        cell.sensory_mu.fill_(0.5)
    return cell
