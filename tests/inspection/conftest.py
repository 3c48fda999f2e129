"""Fixtures for the inspection tests: a hand-built two-neuron LTC and a recorded lane-keeping NCP trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltc_control.cells.ltc import LTCCell
from ltc_control.inspection.recorder import record
from ltc_control.inspection.trace import Trace
from ltc_control.wirings import Wiring, lane_keeping_ncp


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Batch-1 control loops run far faster on one thread on a shared 2-core machine; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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


@pytest.fixture(scope="session")
def ncp_trace() -> Trace:
    """120 recorded steps of the paper's 19-neuron NCP driven by smooth inputs, with synthetic road info."""
    torch.manual_seed(0)
    cell = LTCCell(lane_keeping_ncp(seed=0))
    steps = 120
    t = np.arange(steps)
    theta = 0.03 * t
    curvature = 0.05 * np.sin(0.05 * t)
    inputs = torch.tensor(np.sin(0.05 * t[:, None] + np.linspace(0, np.pi, 32)[None, :]), dtype=torch.float32)
    with record(cell, metadata={"source": "conftest"}) as trace:
        h = cell.initial_state(1)
        for k in range(steps):
            with torch.no_grad():
                y, h = cell(inputs[k : k + 1], h, dt=1 / 30)
            trace.log(
                info={
                    "curvature": curvature[k],
                    "lateral_offset": 0.2 * np.cos(0.07 * k),
                    "position": np.array([30 * np.cos(theta[k]), 30 * np.sin(theta[k])]),
                },
                action=np.tanh(y[0].numpy()),
            )
        trace.set_road(np.stack([30 * np.cos(theta), 30 * np.sin(theta)], axis=1))
    return trace.trace
