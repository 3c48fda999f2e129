"""Fixtures for the inspection tests: one torch thread, and a recorded lane-keeping NCP trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltc_control.cells.ltc import LTCCell
from ltc_control.inspection.recorder import record
from ltc_control.inspection.trace import Trace
from ltc_control.wirings import lane_keeping_ncp


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Batch-1 control loops run far faster on one thread on a shared 2-core machine; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
