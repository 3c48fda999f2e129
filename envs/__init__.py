"""Gymnasium environments (MuJoCo lane keeping), registered on import under the ``LTC/`` namespace.

Ids (all take every :class:`~ltc_control.envs.lane_keeping.LaneKeepingEnv` option as a ``gymnasium.make``
kwarg):

- ``LTC/LaneKeeping-v0``: dash-camera image observation, uint8 ``(64, 128, 3)`` by default.
- ``LTC/LaneKeepingState-v0``: privileged state-vector observation, no rendering (fast tests, RL).
- ``LTC/LaneKeepingDict-v0``: ``{"image", "state"}`` dict observation.
- ``LTC/LaneKeepingRandomized-v0``: image observation with per-episode visual randomisation (training
  conditions that differ on purpose from the plain id's test conditions).

The parent package (``ltc_control/__init__.py``, run before this one) sets ``MUJOCO_GL=egl`` when no
``DISPLAY`` is present and ``MUJOCO_GL`` is unset, before MuJoCo is imported, so offscreen rendering works on
headless machines, and ``LP_NUM_THREADS=0`` (unless set): Mesa's llvmpipe rasterises on worker threads that a
forked child does not inherit, so a child of a process that has rendered would hang in its first render
(AsyncVectorEnv and SubprocVecEnv fork by default on Linux); rasterising on the calling thread is fork-safe
and, with one env per core, costs little. Export either variable yourself to override.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

from .lane_keeping import STATE_FEATURES, LaneKeepingEnv  # noqa: E402
from .road import Projection, Road, RoadGenerationConfig, Segment, wrap_angle  # noqa: E402
from .scene import CAR, CarConstants, VisualRandomization, Visuals  # noqa: E402

__all__ = [
    "CAR",
    "ENV_IDS",
    "STATE_FEATURES",
    "CarConstants",
    "LaneKeepingEnv",
    "Projection",
    "Road",
    "RoadGenerationConfig",
    "Segment",
    "VisualRandomization",
    "Visuals",
    "wrap_angle",
]

_ENTRY = "ltc_control.envs.lane_keeping:LaneKeepingEnv"

#: Every id registered by this package, with its default kwargs.
ENV_IDS: dict[str, dict[str, object]] = {
    "LTC/LaneKeeping-v0": {"observation": "image"},
    "LTC/LaneKeepingState-v0": {"observation": "state"},
    "LTC/LaneKeepingDict-v0": {"observation": "dict"},
    "LTC/LaneKeepingRandomized-v0": {"observation": "image", "randomize_visuals": True},
}

for _env_id, _kwargs in ENV_IDS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_ENTRY, kwargs=dict(_kwargs))
