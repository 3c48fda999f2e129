"""Export a :class:`~ltc_control.policy.Policy`'s control step to ONNX and ``torch.export`` (issue #17).

What is exported is **one control step**, with the recurrent state outside, like :meth:`Policy.act`::

    observation (B, H, W, C) uint8 | (B, D) float32,  state (B, state_size) float32,  dt (B,) float32
        -> action (B, A) float32,  next_state (B, state_size) float32

The preprocessing (uint8 -> [0, 1], per-image standardisation), the perception head, the controller's ODE
solver (all ``ode_unfolds`` sub-steps of the LTC / CT-RNN, the closed form of the CfC) and the action head are
inside the graph; the time loop stays with the caller, who starts from zeros (``initial_state``) and feeds
``next_state`` back. The batch size is dynamic. The LTC is exported as :class:`LTCMatmulStep` (its reference
step as matrix products over the wiring's synapses, effective parameters frozen into constants; or, with
``ltc_solver="reference"``, through the cell's own reference solver op for op), so the graph needs no custom
operator and no native kernel.

Files written by :func:`export_policy` into the output folder (atomically: everything is written and checked
in a temporary sibling folder, which is renamed into place only when the parity check passed):

- ``policy.onnx`` (format ``"onnx"``): for onnxruntime or any ONNX runtime;
- ``policy.pt2`` (format ``"torch-export"``): ``torch.export.load("policy.pt2").module()(obs, state, dt)``;
- ``export.json``: input/output names, shapes and dtypes, the action's meaning, the state layout, the
  controller, the env id and kwargs the policy was trained on (when known), the source's hash, and the parity
  measured at export time (max |difference| of actions and states against the PyTorch policy).

Parity: every exported file is loaded back and run over a :class:`ParityTrace` (observations, irregular
``dt``, episode starts, and the PyTorch policy's own actions and states at every step), carrying its *own*
state from step to step; the export fails unless every action and state stays within ``tolerance`` (1e-5)
of the PyTorch policy's. ``ltc-control export`` records the trace as a closed-loop rollout in the policy's
lane-keeping env (this core module imports no env: the caller hands the trace over); without a trace a
synthetic one (random frames or vectors, irregular ``dt``) is used.

Example:
    >>> result = export_policy(policy, "exported/ncp")                      # doctest: +SKIP
    >>> sess = onnx_session("exported/ncp/policy.onnx")                     # doctest: +SKIP
    >>> action, state = sess.run(None, {"observation": frame[None], "state": state, "dt": dt})  # +SKIP

Needs the ``export`` extra (``onnx``, ``onnxruntime``, ``onnxscript``) for the ONNX format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltc_control._version import __version__
from ltc_control.cells.ltc import LTCCell
from ltc_control.export_step import (
    ExportError,
    LTCMatmulStep,
    PolicyStep,
    example_inputs,
    export_program,
    tracing_context,
)
from ltc_control.policy import Policy

__all__ = [
    "DEFAULT_OPSET",
    "EXPORT_FORMATS",
    "EXPORT_JSON",
    "ONNX_FILE",
    "PT2_FILE",
    "ExportError",
    "ExportResult",
    "ParityTrace",
    "LTCMatmulStep",
    "PolicyStep",
    "check_parity",
    "env_of_metadata",
    "export_policy",
    "load_for_export",
    "onnx_session",
    "record_trace",
    "supported_opsets",
    "synthetic_trace",
]

EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torch-export")
ONNX_FILE = "policy.onnx"
PT2_FILE = "policy.pt2"
EXPORT_JSON = "export.json"
FORMAT = "ltc-control-export"
FORMAT_VERSION = 1
DEFAULT_OPSET = 18
#: the lowest opset the dynamo ONNX exporter writes as asked (below it, it silently writes another one)
MIN_OPSET = 17
DEFAULT_TOLERANCE = 1e-5
INPUT_NAMES = ("observation", "state", "dt")
OUTPUT_NAMES = ("action", "next_state")


def supported_opsets() -> range:
    """ONNX opsets :func:`export_policy` accepts: 17 up to the installed ``onnx``'s newest."""
    try:
        import onnx
    except ImportError:  # pragma: no cover - the export extra is missing
        return range(MIN_OPSET, 24)
    return range(MIN_OPSET, int(onnx.defs.onnx_opset_version()) + 1)


def check_opset(opset: int) -> None:
    ok = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in ok:
        raise ExportError(f"unsupported ONNX opset {opset!r}; supported opsets are {ok.start}..{ok.stop - 1}")


def _write_onnx(program: Any, example: tuple[Tensor, ...], path: Path, opset: int) -> None:
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here so a missing runtime fails before the parity check)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"the onnx format needs the export extra (pip install 'ltc-control[export]'): {exc}"
        ) from exc
    with tracing_context():
        onnx_program = torch.onnx.export(
            program,
            example,
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if onnx_program is None:  # pragma: no cover - dynamo=True always returns a program
        raise ExportError("the ONNX exporter returned no program")
    onnx_program.save(str(path))
    model = onnx.load(str(path))
    written = {o.domain: o.version for o in model.opset_import}.get("", None)
    if written != opset:
        raise ExportError(f"unsupported ONNX opset {opset}: the exporter wrote opset {written} instead")


# --------------------------------------------------------------------------------------------- runtimes
def onnx_session(path: str | os.PathLike[str], threads: int = 1) -> Any:
    """An onnxruntime CPU session tuned for batch-1 control steps (``threads`` intra-op threads, sequential
    execution, all graph optimisations).

    Args:
        path: the ``policy.onnx`` file.
        threads: intra-op threads (1 is fastest for one small step; more helps only large batches).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _onnx_step_fn(path: Path) -> StepFn:
    sess = onnx_session(path)

    def step(obs: np.ndarray, state: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        action, next_state = sess.run(None, {"observation": obs, "state": state, "dt": dt})
        return action, next_state

    return step


def _pt2_step_fn(path: Path) -> StepFn:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No complete tensor found in the group": CPU weights, harmless
        module = torch.export.load(str(path)).module()

    def step(obs: np.ndarray, state: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            action, next_state = module(torch.from_numpy(obs), torch.from_numpy(state), torch.from_numpy(dt))
        return action.numpy(), next_state.numpy()

    return step


# ----------------------------------------------------------------------------------------------- parity
@dataclass
class ParityTrace:
    """Inputs and the PyTorch policy's outputs over a run of control steps, to check an export against.

    Attributes:
        observations: ``(T, B, H, W, C)`` uint8 frames or ``(T, B, D)`` float32 vectors, as fed at each step.
        dt: ``(T, B)`` float32 elapsed time of each step.
        starts: ``(T, B)`` bool: True resets the state to zeros before that step (an episode began).
        actions: ``(T, B, A)`` float32: the PyTorch policy's action at each step.
        states: ``(T, B, S)`` float32: the PyTorch policy's state after each step.
        source: what produced the trace (e.g. ``"closed-loop rollout in LTC/LaneKeeping-v0, roads ..."``).
    """

    observations: np.ndarray
    dt: np.ndarray
    starts: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    source: str = "synthetic"

    def __post_init__(self) -> None:
        t = len(self.observations)
        if t < 1:
            raise ExportError("the parity trace is empty")
        for name in ("dt", "starts", "actions", "states"):
            if len(getattr(self, name)) != t:
                raise ExportError(f"parity trace: {name} has {len(getattr(self, name))} steps, expected {t}")

    @property
    def steps(self) -> int:
        """Number of control steps ``T``."""
        return len(self.observations)


def record_trace(
    policy: Policy,
    observations: np.ndarray,
    dt: np.ndarray,
    starts: np.ndarray | None = None,
    source: str = "recorded",
) -> ParityTrace:
    """The PyTorch policy's actions and states on given inputs (open loop), as a :class:`ParityTrace`.

    Args:
        policy: the policy.
        observations: ``(T, B, ...)`` observations.
        dt: ``(T, B)`` step lengths.
        starts: ``(T, B)`` episode starts (default: only the first step).
        source: description stored in ``export.json``.
    """
    obs = np.asarray(observations)
    dts = np.asarray(dt, dtype=np.float32)
    t, b = dts.shape
    st = np.zeros((t, b), dtype=bool) if starts is None else np.asarray(starts, dtype=bool)
    st[0] = True
    policy = policy.eval()
    state = policy.reset(b)
    actions, states = [], []
    with torch.no_grad():
        for i in range(t):
            if st[i].any():
                state = torch.where(torch.from_numpy(st[i])[:, None], torch.zeros_like(state), state)
            x = torch.from_numpy(np.ascontiguousarray(obs[i]))
            a, state = policy(x[:, None], state, dt=torch.from_numpy(dts[i])[:, None])
            actions.append(a[:, 0].float().numpy())
            states.append(state.float().numpy().copy())
    return ParityTrace(obs, dts, st, np.stack(actions), np.stack(states), source)


def synthetic_trace(policy: Policy, steps: int = 1000, batch: int = 1, seed: int = 0) -> ParityTrace:
    """A :class:`ParityTrace` on synthetic inputs: smoothly drifting random frames (or vectors), ``dt``
    uniform in [0.5, 1.5] x the controller's ``dt``, an episode start every 250 steps.

    Args:
        policy: the policy.
        steps: control steps.
        batch: parallel sequences.
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    cfg = policy.config
    shape: tuple[int, ...] = (
        (batch, *cfg.image_shape) if cfg.observation == "image" else (batch, cfg.vector_size)
    )
    base = rng.uniform(0, 1, shape)
    drift = rng.normal(0, 0.02, (steps, *shape)).cumsum(axis=0)
    x = base + drift + rng.normal(0, 0.05, (steps, *shape))
    if cfg.observation == "image":
        obs = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    else:
        obs = (2 * x - 1).astype(np.float32)
    dt = (rng.uniform(0.5, 1.5, (steps, batch)) * cfg.controller.dt).astype(np.float32)
    starts = np.zeros((steps, batch), dtype=bool)
    starts[::250] = True
    return record_trace(policy, obs, dt, starts, source=f"synthetic ({steps} steps, seed {seed})")


def check_parity(step: StepFn, trace: ParityTrace) -> dict[str, Any]:
    """Run ``step`` over ``trace`` carrying its own state; the largest differences to the PyTorch policy.

    Args:
        step: ``(obs, state, dt) -> (action, next_state)`` on numpy arrays (an exported runtime).
        trace: the inputs and the PyTorch policy's outputs.

    Returns:
        ``{"steps", "max_abs_action", "max_abs_state", "worst_step"}`` (worst: the step of the largest
        difference of either kind).
    """
    state = np.zeros(trace.states.shape[1:], dtype=np.float32)
    max_a = max_s = 0.0
    worst = 0
    for i in range(trace.steps):
        if trace.starts[i].any():
            state = np.where(trace.starts[i][:, None], np.float32(0.0), state).astype(np.float32)
        obs = np.ascontiguousarray(trace.observations[i])
        action, state = step(obs, state, np.ascontiguousarray(trace.dt[i], dtype=np.float32))
        da = float(np.max(np.abs(action - trace.actions[i]))) if action.size else 0.0
        ds = float(np.max(np.abs(state - trace.states[i]))) if state.size else 0.0
        if not (math.isfinite(da) and math.isfinite(ds)):
            da = ds = math.inf
        if max(da, ds) > max(max_a, max_s):
            worst = i
        max_a, max_s = max(max_a, da), max(max_s, ds)
    return {"steps": trace.steps, "max_abs_action": max_a, "max_abs_state": max_s, "worst_step": worst}


# ------------------------------------------------------------------------------------------- manifest
_LANE_KEEPING_ACTIONS = (
    "steering: normalised steering command in [-1, 1] (+ = left, fraction of the env's max_steer)",
    "throttle: speed set-point in [-1, 1] (-1 = stop, +1 = max_speed)",
)


def _state_layout(policy: Policy) -> str:
    cell = policy.controller.cell
    kind = policy.config.controller.kind
    if kind == "lstm":
        return (
            f"LSTM [h, c] concatenated: h = state[:, :{cell.num_neurons}], c = state[:, {cell.num_neurons}:]"
        )
    if kind == "mlp":
        return "feed-forward: the last hidden activations (for inspection only; the next step ignores them)"
    if policy.controller.wiring is not None:
        return "neuron states in wiring order (motor neurons first: state[:, :A] are the motor neurons)"
    return f"{kind} neuron states"


def _action_semantics(policy: Policy, env_id: str | None) -> list[str]:
    a = policy.action_size
    squash = policy.config.action_head.squash
    if env_id is not None and "LaneKeeping" in env_id and a <= 2:
        return list(_LANE_KEEPING_ACTIONS[:a])
    rng = "in [-1, 1] (tanh head)" if squash == "tanh" else "unbounded (affine head)"
    return [f"output {i}: {rng}" for i in range(a)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {"ltc_control": __version__, "torch": torch.__version__, "numpy": np.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        with contextlib.suppress(ImportError):
            out[name] = str(__import__(name).__version__)
    return out


def _manifest(
    policy: Policy,
    files: dict[str, dict[str, Any]],
    env: Mapping[str, Any] | None,
    source: Mapping[str, Any],
    parity: dict[str, Any],
    action_semantics: Sequence[str] | None,
) -> dict[str, Any]:
    cfg = policy.config
    ctrl = cfg.controller
    env_id = None if env is None else env.get("id")
    if cfg.observation == "image":
        h, w, c = cfg.image_shape
        obs_spec = {
            "name": "observation",
            "shape": ["batch", h, w, c],
            "dtype": "uint8",
            "description": "raw camera frames, channel-last, 0-255 as the env returns them; scaling to [0, 1]"
            + (" and per-image standardisation" if cfg.perception.standardize else "")
            + " happen inside the graph",
        }
    else:
        obs_spec = {
            "name": "observation",
            "shape": ["batch", cfg.vector_size],
            "dtype": "float32",
            "description": "observation vector as the env returns it",
        }
    s = policy.state_size
    summary = policy.summary()["controller"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": _versions(),
        "files": files,
        "inputs": [
            obs_spec,
            {
                "name": "state",
                "shape": ["batch", s],
                "dtype": "float32",
                "description": "recurrent state before the step: zeros at an episode start, then the "
                "previous step's next_state",
            },
            {
                "name": "dt",
                "shape": ["batch"],
                "dtype": "float32",
                "description": f"elapsed time of this step in the cell's time unit (trained with {ctrl.dt}; "
                "1.0 = one camera frame); > 0",
            },
        ],
        "outputs": [
            {"name": "action", "shape": ["batch", policy.action_size], "dtype": "float32"},
            {"name": "next_state", "shape": ["batch", s], "dtype": "float32"},
        ],
        "action": {
            "size": policy.action_size,
            "squash": cfg.action_head.squash,
            "mean_limit": cfg.action_head.mean_limit,
            "range": [-1.0, 1.0] if cfg.action_head.squash == "tanh" else None,
            "semantics": list(action_semantics) if action_semantics else _action_semantics(policy, env_id),
        },
        "state": {"size": s, "initial": "zeros", "layout": _state_layout(policy)},
        "controller": {
            "kind": ctrl.kind,
            "cell": summary["cell"],
            "neurons": summary["neurons"],
            "synapses": summary["synapses"],
            "parameters": summary["parameters"],
            "ode_unfolds": ctrl.ode_unfolds if ctrl.kind in ("ltc", "ctrnn") else None,
            "dt": ctrl.dt,
        },
        "observation": cfg.observation,
        "env": None if env is None else {"id": env.get("id"), "kwargs": dict(env.get("kwargs") or {})},
        "source": dict(source),
        "parity": parity,
    }


# ----------------------------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    """What :func:`export_policy` wrote.

    Attributes:
        directory: the output folder.
        files: format -> file path.
        manifest: the contents of ``export.json``.
    """

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f) for f in formats]
    items = [f for f in items if f]
    bad = [f for f in items if f not in EXPORT_FORMATS]
    if bad or not items:
        raise ExportError(f"unknown export format(s) {bad or items}; choose from {', '.join(EXPORT_FORMATS)}")
    return tuple(dict.fromkeys(items))


def _place(tmp: Path, dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{str(dest)!r} exists and is not a folder; choose another --out")
    if not dest.exists():
        os.rename(tmp, dest)
        return
    backup = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(dest, backup)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(backup, dest)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def export_policy(
    policy: Policy,
    out: str | os.PathLike[str],
    formats: str | Sequence[str] = EXPORT_FORMATS,
    opset: int = DEFAULT_OPSET,
    trace: ParityTrace | None = None,
    env: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    action_semantics: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    ltc_solver: str = "matmul",
) -> ExportResult:
    """Export ``policy``'s control step, check parity, and write the folder ``out`` atomically.

    Args:
        policy: the policy.
        out: output folder (replaced as a whole if it exists).
        formats: ``"onnx"`` and/or ``"torch-export"`` (a list or a comma-separated string).
        opset: ONNX opset (:func:`supported_opsets`; default 18).
        trace: the parity trace (default: :func:`synthetic_trace` over 1,000 steps).
        env: ``{"id": ..., "kwargs": {...}}`` of the env the policy was trained on (stored in export.json).
        source: what was exported (checkpoint path and hashes), stored in export.json.
        action_semantics: one line per action dimension (default: derived from the env id and action head).
        tolerance: largest allowed |difference| of actions and states to the PyTorch policy.
        ltc_solver: ``"matmul"`` (:class:`LTCMatmulStep`, fewer graph nodes, faster) or ``"reference"``
            (the LTC cell's reference solver op for op); other controller kinds ignore it.

    Returns:
        An :class:`ExportResult`.

    Raises:
        ExportError: an unknown format, an unsupported opset, a policy that fails to trace, or a parity
            check that fails (nothing is written then).
    """
    fmts = parse_formats(formats)
    if "onnx" in fmts:
        check_opset(opset)
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ExportError(f"tolerance must be a finite number >= 0, got {tolerance}")
    dest = Path(out)
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"{str(dest)!r} exists and is not a folder; choose another output folder")
    step = PolicyStep(policy, ltc_solver)
    if trace is None:
        with _threads(1):
            trace = synthetic_trace(policy)
    if trace.observations.shape[2:] != example_inputs(policy)[0].shape[1:]:
        raise ExportError(
            f"parity trace observations {trace.observations.shape[2:]} do not match the policy's "
            f"{tuple(example_inputs(policy)[0].shape[1:])}"
        )
    # small steps: one thread is fastest, and does not oversubscribe shared cores
    with _threads(1):
        return _export(step, policy, dest, fmts, opset, trace, env, source, action_semantics, tolerance)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads, restoring the previous number afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _export(
    step: PolicyStep,
    policy: Policy,
    dest: Path,
    fmts: tuple[str, ...],
    opset: int,
    trace: ParityTrace,
    env: Mapping[str, Any] | None,
    source: Mapping[str, Any] | None,
    action_semantics: Sequence[str] | None,
    tolerance: float,
) -> ExportResult:
    created: list[Path] = []
    parent = dest.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make the export private
    try:
        example = example_inputs(policy)
        try:
            program = export_program(step, example)
        except Exception as exc:
            raise ExportError(f"torch.export could not trace the policy step: {_one_line(exc)}") from exc
        files: dict[str, dict[str, Any]] = {}
        runners: dict[str, StepFn] = {}
        if "torch-export" in fmts:
            torch.export.save(program, str(tmp / PT2_FILE))
            files["torch-export"] = {"file": PT2_FILE}
            runners["torch-export"] = _pt2_step_fn(tmp / PT2_FILE)
        if "onnx" in fmts:
            try:
                _write_onnx(program, example, tmp / ONNX_FILE, opset)
            except ExportError:
                raise
            except Exception as exc:
                raise ExportError(f"ONNX export failed (opset {opset}): {_one_line(exc)}") from exc
            files["onnx"] = {"file": ONNX_FILE, "opset": opset}
            runners["onnx"] = _onnx_step_fn(tmp / ONNX_FILE)
        results: dict[str, Any] = {}
        for name, run in runners.items():
            label = "onnxruntime" if name == "onnx" else "torch.export"
            res = check_parity(run, trace)
            results[label] = res
            worst = max(res["max_abs_action"], res["max_abs_state"])
            if not worst <= tolerance:
                raise ExportError(
                    f"parity check failed: {label} differs from the PyTorch policy by "
                    f"{res['max_abs_action']:.3g} (actions) / {res['max_abs_state']:.3g} (states) over "
                    f"{trace.steps} steps (worst at step {res['worst_step']}), more than the tolerance "
                    f"{tolerance:g}; nothing was written"
                )
        for info in files.values():
            info["sha256"] = _sha256(tmp / info["file"])
        parity = {
            "passed": True,
            "tolerance": tolerance,
            "dtype": "float32",
            "steps": trace.steps,
            "batch": int(trace.dt.shape[1]),
            "trace": trace.source,
            "episodes": int(trace.starts.any(axis=1).sum()),
            "dt_range": [float(trace.dt.min()), float(trace.dt.max())],
            "results": results,
        }
        manifest = _manifest(policy, files, env, source or {}, parity, action_semantics)
        is_ltc = isinstance(step.policy.controller.cell, LTCCell)
        manifest["controller"]["ltc_solver"] = step.ltc_solver if is_ltc else None
        with (tmp / EXPORT_JSON).open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, allow_nan=False)
            fh.write("\n")
        _place(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first
            with contextlib.suppress(OSError):
                p.rmdir()
        if isinstance(exc, Exception) and not isinstance(exc, ExportError):
            raise ExportError(f"export failed: {_one_line(exc)}") from exc
        raise
    out_files = {name: dest / info["file"] for name, info in files.items()}
    return ExportResult(dest, out_files, manifest)


def env_of_metadata(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The env ``{"id", "kwargs"}`` a checkpoint's metadata names: ``env_id`` / ``env_kwargs`` (RL
    fine-tuning, sb3 exports) or ``train_config.env`` (imitation runs); None when it names none."""
    if isinstance(metadata.get("env_id"), str):
        kwargs = metadata.get("env_kwargs")
        return {"id": metadata["env_id"], "kwargs": dict(kwargs) if isinstance(kwargs, Mapping) else {}}
    train = metadata.get("train_config")
    env = train.get("env") if isinstance(train, Mapping) else None
    if isinstance(env, Mapping) and isinstance(env.get("id"), str):
        kwargs = env.get("kwargs")
        return {"id": env["id"], "kwargs": dict(kwargs) if isinstance(kwargs, Mapping) else {}}
    return None


def load_for_export(
    checkpoint: str | os.PathLike[str],
) -> tuple[Policy, dict[str, Any] | None, dict[str, Any]]:
    """Load a checkpoint folder for export: ``(policy, env or None, source)``; ``source`` holds the path and
    the sha256 of its weights and of its ``model.json``.

    Raises:
        ExportError: the checkpoint cannot be loaded (one line naming the problem).
    """
    from ltc_control.checkpoint import checkpoint_info, load_checkpoint

    path = Path(checkpoint)
    try:
        policy, metadata = load_checkpoint(path)
        info = checkpoint_info(path)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load checkpoint {str(path)!r}: {_one_line(exc)}") from exc
    source = {
        "kind": "checkpoint",
        "path": str(path),
        "weights_sha256": (info.get("weights") or {}).get("sha256"),
        "model_json_sha256": _sha256(path / "model.json") if (path / "model.json").is_file() else None,
        "created": info.get("created"),
    }
    return policy, env_of_metadata(metadata), source


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
