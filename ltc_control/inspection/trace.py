"""`Trace`: what a recorded rollout saw, step by step and neuron by neuron, with `.npz` save/load.

A trace is a bag of aligned numpy arrays (first axis = control step) plus neuron metadata. Per-neuron
arrays have shape ``(T, N)``; arrays that a cell does not expose (the LTC's currents and time constants for
a CfC or an LSTM) are simply absent. Env information (``info`` of the env at the observation that drove the
step) is kept per key under ``info``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.runs import atomic_open

__all__ = ["NEURON_KEYS", "Trace", "TraceError", "FORMAT_VERSION"]

FORMAT_VERSION = 1

#: Per-step, per-neuron arrays ``(T, N)`` a trace may hold (only ``state`` is always present).
NEURON_KEYS: tuple[str, ...] = ("state", "sensory_current", "synaptic_current", "conductance", "tau")

# Optional non-per-step arrays a trace may carry (wiring and road geometry for the plots).
_STATIC_KEYS: tuple[str, ...] = (
    "adjacency",
    "sensory_adjacency",
    "synapse_weight",
    "sensory_weight",
    "synapse_erev",
    "road_points",
)


class TraceError(ValueError):
    """A trace file or array is missing, corrupt or inconsistent."""


def _as_float_2d(name: str, value: Any, steps: int | None, width: int | None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2:
        raise TraceError(f"Trace array {name!r} must have shape (T, N); got shape {arr.shape}.")
    if steps is not None and arr.shape[0] != steps:
        raise TraceError(
            f"Trace array {name!r} has {arr.shape[0]} steps but 'state' has {steps}; "
            "all per-step arrays must share the first axis."
        )
    if width is not None and arr.shape[1] != width:
        raise TraceError(
            f"Trace array {name!r} has {arr.shape[1]} neurons; expected {width} (one per neuron)."
        )
    return arr


@dataclass
class Trace:
    """A recorded rollout: per-step neuron activity, outputs, actions and env info.

    Attributes:
        neuron_names: name of each of the N neurons (e.g. ``"motor_0"``, ``"command_2"``).
        neuron_roles: role of each neuron (``"motor"``, ``"command"``, ``"inter"``, ``"hidden"``).
        state: ``(T, N)`` neuron state after each control step (LTC: membrane potential, dimensionless).
        output: ``(T, M)`` the cell's readout of the new state (LTC: ``output_w * v[:M] + output_b``), i.e.
            the controller output *before* the policy's action head.
        action: ``(T, A)`` the action the policy returned that step (after the tanh head), or an empty
            ``(T, 0)`` array when no action was captured.
        sensory_current: ``(T, N)`` or None; LTC only: ``sum_k s_sens (sensory_erev - v)`` at the last unfold.
        synaptic_current: ``(T, N)`` or None; LTC only: ``sum_i s (erev - v)`` at the last unfold.
        conductance: ``(T, N)`` or None; LTC only: ``gleak + sum of active synaptic conductances``.
        tau: ``(T, N)`` or None; LTC only: the liquid time constant ``cm / conductance`` in the cell's
            time unit.
        info: env info per key, each an array with first axis T (``lateral_offset (T,)``,
            ``position (T, 2)``): the info that came with the observation that drove that step (reset info
            for step 0).
        dt: ``(T,)`` elapsed time per step passed to the cell.
        episode: ``(T,)`` int episode index of each step (a recorder can span several episodes).
        adjacency, sensory_adjacency: wiring polarity matrices ``(N, N)`` and ``(S, N)`` (or None).
        synapse_weight, sensory_weight: effective synaptic weights (after constraints), same shapes, or None.
        synapse_erev: ``(N, N)`` reversal potentials (LTC) or None.
        road_points: ``(P, 2)`` road centre line in metres for map plots, or None.
        metadata: JSON-serialisable extras (cell class, checkpoint, env id, seed, output semantics...).
    """

    neuron_names: list[str]
    neuron_roles: list[str]
    state: np.ndarray
    output: np.ndarray
    action: np.ndarray
    sensory_current: np.ndarray | None = None
    synaptic_current: np.ndarray | None = None
    conductance: np.ndarray | None = None
    tau: np.ndarray | None = None
    info: dict[str, np.ndarray] = field(default_factory=dict)
    dt: np.ndarray | None = None
    episode: np.ndarray | None = None
    adjacency: np.ndarray | None = None
    sensory_adjacency: np.ndarray | None = None
    synapse_weight: np.ndarray | None = None
    sensory_weight: np.ndarray | None = None
    synapse_erev: np.ndarray | None = None
    road_points: np.ndarray | None = None
    observations: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.neuron_names = [str(n) for n in self.neuron_names]
        self.neuron_roles = [str(r) for r in self.neuron_roles]
        n = len(self.neuron_names)
        if len(self.neuron_roles) != n:
            raise TraceError(
                f"Trace has {n} neuron names but {len(self.neuron_roles)} roles; give one role per neuron."
            )
        self.state = _as_float_2d("state", self.state, None, n)
        steps = self.state.shape[0]
        self.output = _as_float_2d("output", self.output, steps, None)
        self.action = _as_float_2d("action", np.asarray(self.action).reshape(steps, -1), steps, None)
        for key in NEURON_KEYS[1:]:
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, _as_float_2d(key, value, steps, n))
        info: dict[str, np.ndarray] = {}
        for key, value in self.info.items():
            arr = np.asarray(value)
            if arr.ndim == 0 or arr.shape[0] != steps:
                raise TraceError(
                    f"Trace info {key!r} has shape {arr.shape}; its first axis must be the {steps} steps."
                )
            info[str(key)] = arr
        self.info = info
        self.dt = np.ones(steps) if self.dt is None else np.asarray(self.dt, dtype=np.float64).reshape(steps)
        self.episode = (
            np.zeros(steps, dtype=np.int64)
            if self.episode is None
            else np.asarray(self.episode, dtype=np.int64).reshape(steps)
        )
        if self.adjacency is not None:
            self.adjacency = np.asarray(self.adjacency)
            if self.adjacency.shape != (n, n):
                raise TraceError(f"Trace adjacency must be ({n}, {n}); got {self.adjacency.shape}.")
        for key in ("synapse_weight", "synapse_erev"):
            value = getattr(self, key)
            if value is not None:
                arr = np.asarray(value, dtype=np.float64)
                if arr.shape != (n, n):
                    raise TraceError(f"Trace {key} must be ({n}, {n}); got {arr.shape}.")
                setattr(self, key, arr)
        if self.sensory_adjacency is not None:
            self.sensory_adjacency = np.asarray(self.sensory_adjacency)
            if self.sensory_adjacency.ndim != 2 or self.sensory_adjacency.shape[1] != n:
                raise TraceError(
                    f"Trace sensory_adjacency must be (S, {n}); got {self.sensory_adjacency.shape}."
                )
        if self.sensory_weight is not None:
            self.sensory_weight = np.asarray(self.sensory_weight, dtype=np.float64)
        if self.road_points is not None:
            self.road_points = np.asarray(self.road_points, dtype=np.float64)
            if self.road_points.ndim != 2 or self.road_points.shape[1] != 2:
                raise TraceError(f"Trace road_points must be (P, 2); got {self.road_points.shape}.")
        if self.observations is not None:
            self.observations = np.asarray(self.observations)
            if self.observations.shape[0] != steps:
                raise TraceError(
                    f"Trace observations have {self.observations.shape[0]} steps; expected {steps}."
                )
        json.dumps(self.metadata)  # fail now, not at save time, on non-JSON metadata

    # ----------------------------------------------------------------------------------------------- queries
    @property
    def num_steps(self) -> int:
        """Number of recorded control steps T."""
        return int(self.state.shape[0])

    @property
    def num_neurons(self) -> int:
        """Number of neurons N."""
        return len(self.neuron_names)

    def layer_indices(self, role: str) -> np.ndarray:
        """Indices of the neurons with the given role (e.g. ``"motor"``), in state order."""
        return np.array([i for i, r in enumerate(self.neuron_roles) if r == role], dtype=np.int64)

    @property
    def layers(self) -> list[str]:
        """Roles present, ordered from the input side to the output (inter, command, motor; others first)."""
        order = {"sensory": 0, "hidden": 1, "inter": 2, "command": 3, "motor": 4}
        return sorted(set(self.neuron_roles), key=lambda r: (order.get(r, 1), r))

    def neuron_index(self, neuron: int | str) -> int:
        """Index of a neuron given by index or by name; raises ``KeyError`` naming the valid names."""
        if isinstance(neuron, str) and neuron not in self.neuron_names and neuron.strip().isdigit():
            neuron = int(neuron)  # an index given as text (command line, YAML)
        if isinstance(neuron, str):
            if neuron not in self.neuron_names:
                raise KeyError(f"Unknown neuron {neuron!r}; valid names: {', '.join(self.neuron_names)}.")
            return self.neuron_names.index(neuron)
        index = int(neuron)
        if not 0 <= index < self.num_neurons:
            raise KeyError(f"Neuron index {index} out of range [0, {self.num_neurons}).")
        return index

    def info_array(self, key: str) -> np.ndarray | None:
        """The info array for ``key`` or None when the env did not report it."""
        return self.info.get(key)

    @property
    def steering(self) -> np.ndarray:
        """``(T,)`` steering: the first action component (the first readout when no action was kept)."""
        if self.action.shape[1] > 0:
            return self.action[:, 0]
        return self.output[:, 0]

    # ----------------------------------------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the trace to ``path`` (``.npz``; the suffix is added when missing) atomically.

        Args:
            path: destination file.

        Returns:
            The path written.
        """
        out = Path(path)
        if out.suffix != ".npz":
            out = out.with_name(out.name + ".npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "state": self.state,
            "output": self.output,
            "action": self.action,
            "dt": np.asarray(self.dt),
            "episode": np.asarray(self.episode),
        }
        for key in NEURON_KEYS[1:] + _STATIC_KEYS + ("observations",):
            value = getattr(self, key)
            if value is not None:
                arrays[key] = np.asarray(value)
        for key, value in self.info.items():
            arrays[f"info/{key}"] = value
        header = {
            "format": "ltc_control.trace",
            "version": FORMAT_VERSION,
            "neuron_names": self.neuron_names,
            "neuron_roles": self.neuron_roles,
            "metadata": self.metadata,
        }
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        with atomic_open(out, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Trace:
        """Read a trace written by :meth:`save`.

        Args:
            path: the ``.npz`` file.

        Raises:
            FileNotFoundError: the file does not exist.
            TraceError: the file is not a readable trace (truncated, corrupt, or written by something else).
        """
        src = Path(path)
        if not src.is_file():
            raise FileNotFoundError(
                f"Trace file {src} does not exist; record one with ltc_control.inspection."
            )
        try:
            with np.load(src, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
            raise TraceError(
                f"Trace file {src} is corrupt or not an .npz archive ({type(exc).__name__}: {exc}); "
                "re-record it (Trace.save writes atomically, so a partial file was not written by it)."
            ) from exc
        if "header" not in arrays:
            raise TraceError(f"{src} is an .npz file but not an ltc_control trace (no 'header' entry).")
        try:
            header = json.loads(arrays.pop("header").tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TraceError(f"Trace file {src} has a corrupt header ({exc}); re-record it.") from exc
        if header.get("format") != "ltc_control.trace":
            raise TraceError(f"{src} is not an ltc_control trace (format={header.get('format')!r}).")
        if int(header.get("version", -1)) > FORMAT_VERSION:
            raise TraceError(
                f"{src} was written by a newer trace format (version {header.get('version')}); "
                f"this ltc_control reads up to version {FORMAT_VERSION}: upgrade ltc_control."
            )
        missing = [k for k in ("state", "output", "action") if k not in arrays]
        if missing:
            raise TraceError(f"Trace file {src} lacks the arrays {missing}; re-record it.")
        info = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("info/")}
        kwargs: dict[str, Any] = {k: v for k, v in arrays.items() if not k.startswith("info/")}
        return cls(
            neuron_names=list(header["neuron_names"]),
            neuron_roles=list(header["neuron_roles"]),
            info=info,
            metadata=dict(header.get("metadata", {})),
            **kwargs,
        )

    def to_dict(self) -> Mapping[str, Any]:
        """A shallow mapping of the per-step arrays that exist (``state``, ``tau``, ``info/<key>``...)."""
        out: dict[str, Any] = {"state": self.state, "output": self.output, "action": self.action}
        for key in NEURON_KEYS[1:]:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({f"info/{k}": v for k, v in self.info.items()})
        return out
