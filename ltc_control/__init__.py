"""ltc-control: liquid time-constant neural circuit policies for control and autonomous driving.

Main API::

    from ltc_control import LTCCell, SequenceModel, lane_keeping_ncp
    model = SequenceModel(LTCCell(lane_keeping_ncp(seed=0)))
    y, h = model(x)          # x: (B, T, 32) -> y: (B, T, 1), h: (B, 19)

Names are imported on first access, so ``import ltc_control.envs`` does not import torch.

Importing the package (any of its modules) sets two rendering defaults before anything can import MuJoCo:
``MUJOCO_GL=egl`` when no ``DISPLAY`` is present and ``MUJOCO_GL`` is unset (offscreen rendering on headless
machines; MuJoCo reads it once, at its own import, so a module that imports MuJoCo first, such as the
HalfCheetah benchmark env, would otherwise fix it to "no GL" for the whole process), and ``LP_NUM_THREADS=0``
unless set (Mesa's CPU renderer then rasterises on the calling thread, which is fork-safe: see
:mod:`ltc_control.envs`).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "0")

from ltc_control._version import __version__

if TYPE_CHECKING:
    from ltc_control.cells.base import RecurrentCell, set_validation
    from ltc_control.cells.baselines import CTRNNCell, GRUCell, LSTMCell
    from ltc_control.cells.cfc import CfCCell, WiredCfCCell
    from ltc_control.cells.ltc import LTCCell, register_implementation
    from ltc_control.interop import from_ncps
    from ltc_control.sequence import SequenceModel
    from ltc_control.wirings import NCP, AutoNCP, FullyConnected, Random, Wiring, lane_keeping_ncp

# Every public name is imported on first access: ``import ltc_control.envs`` (and each env worker process)
# must not pay for importing torch, since the environments use none of it.
_LAZY: dict[str, str] = {
    "RecurrentCell": "ltc_control.cells.base",
    "set_validation": "ltc_control.cells.base",
    "LTCCell": "ltc_control.cells.ltc",
    "register_implementation": "ltc_control.cells.ltc",
    "from_ncps": "ltc_control.interop",
    "SequenceModel": "ltc_control.sequence",
    "NCP": "ltc_control.wirings",
    "AutoNCP": "ltc_control.wirings",
    "FullyConnected": "ltc_control.wirings",
    "Random": "ltc_control.wirings",
    "Wiring": "ltc_control.wirings",
    "lane_keeping_ncp": "ltc_control.wirings",
    "CfCCell": "ltc_control.cells.cfc",
    "WiredCfCCell": "ltc_control.cells.cfc",
    "LSTMCell": "ltc_control.cells.baselines",
    "GRUCell": "ltc_control.cells.baselines",
    "CTRNNCell": "ltc_control.cells.baselines",
}

__all__ = [
    "NCP",
    "AutoNCP",
    "FullyConnected",
    "LTCCell",
    "Random",
    "RecurrentCell",
    "SequenceModel",
    "Wiring",
    "__version__",
    "from_ncps",
    "lane_keeping_ncp",
    "register_implementation",
    "set_validation",
    "CfCCell",
    "WiredCfCCell",
    "LSTMCell",
    "GRUCell",
    "CTRNNCell",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'ltc_control' has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AttributeError(
            f"ltc_control.{name} is unavailable: {module_name} could not be imported ({exc})"
        ) from exc
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
