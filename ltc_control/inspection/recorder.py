"""Record every neuron of a policy while it drives: ``with record(policy) as trace: ...``.

The recorder never edits the cell's code. It registers a forward hook on the cell
(``policy.controller.cell``): after every ``cell.forward(x, h, dt)`` it stores the new state and the readout,
and for an LTC it re-runs that step through ``cell.diagnostics(x, h, dt)`` (the reference math) to get the
sensory and synaptic currents, the total conductance and the liquid time constant
``tau = cm / (gleak + sum of active conductances)``. CfC and the RNN baselines have no such quantities; for
them the trace holds states and outputs only (an LSTM's neurons are
its hidden units ``h``, the first half of its ``[h, c]`` state).

Actions are captured by wrapping the policy instance's ``act`` (its class is untouched), episode boundaries by
wrapping its ``reset``. Env info reaches the trace through :meth:`Recording.on_step` (pass it as
``run_episode(..., on_step=recording.on_step)``) or :meth:`Recording.log` in a hand-written loop; each step is
paired with the info that came with the observation the policy acted on.

Example:
    >>> with record(policy) as trace:                                    # doctest: +SKIP
    ...     run_episode(env, PolicyAgent(policy), seed=0, on_step=trace.on_step)
    >>> trace.tau.shape, trace.save("rollout.npz")                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltc_control.inspection._hooks import find_cell, step_arguments, stepwise
from ltc_control.inspection.trace import NEURON_KEYS, Trace

__all__ = ["Recording", "record", "cell_metadata", "info_to_arrays"]


def _row(t: Any, index: int) -> np.ndarray:
    arr = t.detach().to("cpu", torch.float64).numpy() if isinstance(t, Tensor) else np.asarray(t, np.float64)
    if arr.ndim == 0:
        return arr.reshape(1)
    if arr.shape[0] <= index:
        raise ValueError(
            f"The recorder follows batch element {index}, but the cell was called with batch {arr.shape[0]}; "
            "record with batch_index < batch size."
        )
    return np.array(arr[index], dtype=np.float64).reshape(-1)


def _scalar_dt(dt: Any, index: int) -> float:
    if isinstance(dt, Tensor):
        flat = dt.detach().reshape(-1)
        return float(flat[index] if flat.numel() > index else flat[0])
    return float(dt)


def cell_metadata(cell: Any) -> dict[str, Any]:
    """Static arrays and facts about a cell for the trace: wiring matrices and effective synaptic weights.

    Args:
        cell: a recurrent cell (LTC, wired CfC or a baseline).

    Returns:
        A dict with any of ``adjacency``, ``sensory_adjacency``, ``synapse_weight``, ``sensory_weight``,
        ``synapse_erev`` (numpy arrays) and ``metadata`` (JSON: cell class, output semantics...).
    """
    out: dict[str, Any] = {}
    wiring = getattr(cell, "wiring", None)
    if wiring is not None:
        out["adjacency"] = np.asarray(wiring.adjacency)
        out["sensory_adjacency"] = np.asarray(wiring.sensory_adjacency)
    eff = getattr(cell, "effective_parameters", None)
    if callable(eff):
        with torch.no_grad():
            params = eff()
        if "w" in params:
            out["synapse_weight"] = params["w"].detach().cpu().double().numpy()
        if "sensory_w" in params:
            out["sensory_weight"] = params["sensory_w"].detach().cpu().double().numpy()
        if "erev" in params:
            mask = np.abs(out.get("adjacency", 1.0))
            out["synapse_erev"] = params["erev"].detach().cpu().double().numpy() * mask
    out["metadata"] = {
        "cell": type(cell).__name__,
        "state_size": int(getattr(cell, "state_size", 0)),
        "output_size": int(getattr(cell, "output_size", 0)),
        "has_diagnostics": callable(getattr(cell, "diagnostics", None)),
        "output_semantics": "cell.readout(h') (before the policy's action head)",
    }
    if hasattr(cell, "ode_unfolds"):
        out["metadata"]["ode_unfolds"] = int(cell.ode_unfolds)
    return out


def info_to_arrays(infos: list[Mapping[str, Any] | None]) -> dict[str, np.ndarray]:
    """Stack per-step env info dicts into arrays, keeping the numeric keys of consistent shape.

    Steps without info get NaN (booleans become float for that reason). Keys whose values are not numeric or
    change shape between steps are dropped.
    """
    keys: dict[str, tuple[int, ...]] = {}
    dropped: set[str] = set()
    for info in infos:
        if not info:
            continue
        for key, value in info.items():
            if key in dropped:
                continue
            try:
                arr = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                dropped.add(key)
                continue
            if key in keys and keys[key] != arr.shape:
                dropped.add(key)
                continue
            keys[key] = arr.shape
    out: dict[str, np.ndarray] = {}
    for key, shape in keys.items():
        if key in dropped:
            continue
        data = np.full((len(infos),) + shape, np.nan)
        for t, info in enumerate(infos):
            if info and key in info:
                data[t] = np.asarray(info[key], dtype=np.float64)
        out[key] = data
    return out


class Recording:
    """A live recording; behaves as the :class:`Trace` of what was recorded so far (``recording.state``...).

    Created by :func:`record`; do not build it directly.
    """

    def __init__(self, cell: Any, batch_index: int, keep_observations: bool, metadata: Mapping[str, Any]):
        self._cell = cell
        self._batch_index = int(batch_index)
        self._keep_obs = bool(keep_observations)
        self._rows: list[dict[str, np.ndarray]] = []
        self._dt: list[float] = []
        self._episode: list[int] = []
        self._actions: list[np.ndarray | None] = []
        self._infos: list[Mapping[str, Any] | None] = []
        self._observations: list[np.ndarray | None] = []
        self._episode_count = 0
        self._road_points: np.ndarray | None = None
        self._metadata = dict(metadata)
        self._closed = False
        self._final: Trace | None = None
        self._static = cell_metadata(cell)

    # ----------------------------------------------------------------------------- hook side
    def _on_forward(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self._closed:
            return
        x, h, dt = step_arguments(args, kwargs)
        cell = self._cell
        y, h_new = output
        n = int(cell.num_neurons)
        row: dict[str, np.ndarray] = {
            "state": _row(h_new, self._batch_index)[:n],
            "output": _row(y, self._batch_index),
        }
        diagnostics = getattr(cell, "diagnostics", None)
        if callable(diagnostics):
            with torch.no_grad():
                h_in = h if h is not None else cell.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
                diag = diagnostics(x.detach(), h_in.detach(), dt)
            for key in NEURON_KEYS[1:]:
                if key in diag:
                    row[key] = _row(diag[key], self._batch_index)[:n]
        self._rows.append(row)
        self._dt.append(_scalar_dt(dt, self._batch_index))
        self._episode.append(max(self._episode_count - 1, 0))
        self._actions.append(None)
        self._infos.append(None)
        self._observations.append(None)

    def _attach(self, key: str, value: Any) -> None:
        if not self._rows or self._closed:
            return
        getattr(self, key)[-1] = value

    def _on_act(self, obs: Any, action: Any) -> None:
        if isinstance(action, Tensor):
            action = action.detach().cpu().numpy()
        arr = np.asarray(action, dtype=np.float64)
        if arr.ndim > 1:
            arr = arr[self._batch_index]
        self._attach("_actions", arr.reshape(-1))
        if self._keep_obs:
            o = np.asarray(obs.detach().cpu().numpy() if isinstance(obs, Tensor) else obs)
            if o.ndim == 4:
                o = o[self._batch_index]
            self._attach("_observations", np.array(o, copy=True))

    def _on_reset(self) -> None:
        self._episode_count += 1

    # ----------------------------------------------------------------------------- user side
    def log(self, info: Mapping[str, Any] | None = None, action: Any = None, observation: Any = None) -> None:
        """Attach env info (and optionally the action / observation) to the most recent step.

        Args:
            info: the env's info that came *with the observation the policy just acted on* (the reset info
                for the first step, else the info returned by the previous ``env.step``).
            action: the action sent, when the policy's ``act`` was not wrapped (e.g. a bare cell is recorded).
            observation: the observation, kept when the recording was started with ``keep_observations``.
        """
        if not self._rows:
            raise RuntimeError("Nothing recorded yet: call the policy (one control step) before log().")
        if info is not None:
            self._infos[-1] = dict(info)
        if action is not None and self._actions[-1] is None:
            self._actions[-1] = np.asarray(action, dtype=np.float64).reshape(-1)
        if observation is not None and self._keep_obs and self._observations[-1] is None:
            self._observations[-1] = np.array(observation, copy=True)

    def on_step(self, record: Any) -> None:
        """Callback for ``run_episode(..., on_step=recording.on_step)``: pairs a step with its prev_info."""
        self.log(info=record.prev_info, action=record.action, observation=record.obs)

    def set_road(self, points: np.ndarray) -> None:
        """Store the road centre line ``(P, 2)`` in metres for the map plots."""
        self._road_points = np.asarray(points, dtype=np.float64)

    def update_metadata(self, **items: Any) -> None:
        """Add JSON-serialisable metadata (env id, seed, checkpoint...)."""
        self._metadata.update(items)

    @property
    def num_steps(self) -> int:
        """Steps recorded so far."""
        return len(self._rows)

    @property
    def trace(self) -> Trace:
        """The :class:`Trace` of what was recorded (final once the ``with`` block has exited)."""
        if self._final is not None:
            return self._final
        trace = self._build()
        if self._closed:
            self._final = trace
        return trace

    def _build(self) -> Trace:
        if not self._rows:
            raise ValueError(
                "The recording is empty: the cell was never called inside the `with record(...)` block."
            )
        cell = self._cell
        arrays: dict[str, Any] = {}
        for key in NEURON_KEYS + ("output",):
            if all(key in r for r in self._rows):
                arrays[key] = np.stack([r[key] for r in self._rows])
        have = [a for a in self._actions if a is not None]
        if have:
            width = have[0].shape[0]
            action = np.full((len(self._rows), width), np.nan)
            for t, a in enumerate(self._actions):
                if a is not None and a.shape[0] == width:
                    action[t] = a
        else:
            action = np.zeros((len(self._rows), 0))
        observations = None
        if self._keep_obs and all(o is not None for o in self._observations):
            observations = np.stack([o for o in self._observations if o is not None])
        static = {k: v for k, v in self._static.items() if k != "metadata"}
        metadata = {**self._static["metadata"], **self._metadata}
        return Trace(
            neuron_names=list(cell.neuron_names),
            neuron_roles=list(cell.neuron_roles),
            action=action,
            info=info_to_arrays(self._infos),
            dt=np.asarray(self._dt),
            episode=np.asarray(self._episode),
            road_points=self._road_points,
            observations=observations,
            metadata=metadata,
            **arrays,
            **static,
        )

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes Recording lacks: forwarding them to the trace makes `as trace` natural.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.trace, name)


@contextlib.contextmanager
def record(
    target: Any,
    batch_index: int = 0,
    keep_observations: bool = False,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[Recording]:
    """Record every control step of a policy (or a bare cell / SequenceModel).

    Args:
        target: a ``Policy`` (its ``act`` and ``reset`` are wrapped on the instance to capture actions and
            episode boundaries), a ``SequenceModel``, a ``PolicyAgent`` or a cell.
        batch_index: which batch element to record when the cell runs batched.
        keep_observations: also keep each observation the policy acted on (for saliency; uint8 frames).
        metadata: JSON-serialisable facts to store with the trace.

    Yields:
        A :class:`Recording`, usable as a :class:`Trace` (and ``.trace`` gives the Trace itself); it is
        final when the block exits.
    """
    if batch_index < 0:
        raise ValueError(f"batch_index must be >= 0; got {batch_index}.")
    cell = find_cell(target)
    recording = Recording(cell, batch_index, keep_observations, metadata or {})
    policy = getattr(target, "policy", target)  # a PolicyAgent wraps the policy
    wrapped: list[str] = []
    original_act = getattr(policy, "act", None)
    original_reset = getattr(policy, "reset", None)
    if callable(original_act) and "act" not in vars(policy):

        def act(obs: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_act(obs, *args, **kwargs)
            action = result[0] if isinstance(result, tuple) else result
            recording._on_act(obs, action)
            return result

        policy.act = act
        wrapped.append("act")
    if callable(original_reset) and "reset" not in vars(policy):

        def reset(*args: Any, **kwargs: Any) -> Any:
            recording._on_reset()
            return original_reset(*args, **kwargs)

        policy.reset = reset
        wrapped.append("reset")
    handle = cell.register_forward_hook(recording._on_forward, with_kwargs=True)
    try:
        with stepwise(cell):
            yield recording
    finally:
        handle.remove()
        for name in wrapped:
            with contextlib.suppress(AttributeError):
                delattr(policy, name)
        recording._closed = True
        if recording._rows:
            recording._final = recording._build()
