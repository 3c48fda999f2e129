"""Shared fixtures for the core-library tests (wirings, LTC cell, sequence model, ncps interop)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from ltc_control.cells import base as cell_base
from ltc_control.wirings import NCP, Wiring


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n auto`` in pyproject's addopts) each worker process gets its share of the cores
    for torch's intra-op threads; otherwise every worker would start one thread per core."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture
def tiny_ncp() -> Wiring:
    """A 6-neuron NCP (1 motor, 2 command, 3 inter) on 3 inputs: small enough for float64 gradcheck."""
    return NCP(
        inter=3,
        command=2,
        motor=1,
        sensory_fanout=2,
        inter_fanout=1,
        recurrent_command_synapses=2,
        motor_fanin=2,
        input_size=3,
        seed=7,
    )


@pytest.fixture(autouse=True)
def _validation_on() -> Iterator[None]:
    """Every test starts with value validation on and cannot leak a switched-off setting to the next one."""
    cell_base.set_validation(True)
    yield
    cell_base.set_validation(True)


BENCH_DIR = Path(__file__).resolve().parents[1] / "experiments" / "bench"


@pytest.fixture
def load_bench() -> Callable[[str], ModuleType]:
    """Imports a module of ``experiments/bench/`` by its file name (e.g. ``"ltc_speed"``); the folder goes on
    ``sys.path`` as ``ltc-control bench`` does, so spawned workers can import it too."""

    def load(name: str) -> ModuleType:
        if str(BENCH_DIR) not in sys.path:
            sys.path.insert(0, str(BENCH_DIR))
        return importlib.import_module(name)

    return load
