"""Write a recorded rollout (:class:`~ltc_control.inspection.trace.Trace`) as a Rerun recording (``.rrd``).

``record_rerun(trace, "out.rrd")`` writes one recording that ``rerun out.rrd`` opens with a ready-made layout.
Every entity is indexed by the same two timelines: ``step`` (the control step, a sequence) and ``sim_time``
(the env's simulated time in seconds, ``info["time"]``; the cumulative ``dt`` when the env reports no time;
a trace of several episodes is laid end to end so the timeline never runs backwards).

Entities (present when the trace, or the arguments, hold the data):

=================================  ===================================================================
``/camera/dash``                   the policy's observation (uint8 ``(H, W, 3)``, kept losslessly)
``/camera/chase``                  the env's chase view (``chase`` argument; JPEG-compressed)
``/camera/saliency``               saliency overlay on the dash frame (``saliency`` argument)
``/steering/policy``               the policy's steering (first action component)
``/steering/expert``               the expert's steering (``expert_steering`` or ``info["expert_steering"]``)
``/lateral_error``                 ``info["lateral_offset"]`` in metres
``/speed``                         ``info["speed"]`` in m/s
``/neurons/state/<layer>/<name>``  every neuron's state, one scalar series per neuron, grouped by layer
``/neurons/tau/<layer>/<name>``    every neuron's liquid time constant (LTC traces only)
``/map/road``, ``/map/path``       road centre line and the driven path (static line strips, metres)
``/map/car``                       the car's position at each step
``/wiring``                        the wiring as a graph (static nodes and directed edges; node colours
                                   follow each neuron's state step by step)
``/metadata``                      the trace metadata as a JSON text document
=================================  ===================================================================

Rerun (``pip install 'ltc-control[rerun]'``) is imported only when a recording is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.inspection.trace import Trace

__all__ = ["APPLICATION_ID", "TIMELINES", "record_rerun", "rerun_available", "neuron_entity", "sim_time"]

APPLICATION_ID = "ltc_control"
#: The two index columns of every temporal entity.
TIMELINES: tuple[str, str] = ("step", "sim_time")

_INSTALL = "Rerun recordings need the rerun-sdk package: pip install 'ltc-control[rerun]'"


def rerun_available() -> bool:
    """Whether ``rerun-sdk`` can be imported."""
    try:
        import rerun  # noqa: F401
    except ImportError:
        return False
    return True


def _import_rerun() -> Any:
    try:
        import rerun as rr
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(_INSTALL) from exc
    return rr


def neuron_entity(quantity: str, role: str, name: str) -> str:
    """Entity path of one neuron's series, e.g. ``/neurons/state/command/command_2``."""
    return f"/neurons/{quantity}/{_part(role)}/{_part(name)}"


def _part(text: str) -> str:
    """An entity path part: characters Rerun would split or reject are replaced."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in str(text)) or "_"


def sim_time(trace: Trace) -> np.ndarray:
    """``(T,)`` simulated seconds of each step, non-decreasing over the whole trace.

    Uses ``info["time"]`` (the env's clock) when present, else the cumulative ``dt`` before each step; each
    episode after the first starts one step after the previous one ended.
    """
    assert trace.dt is not None and trace.episode is not None
    dt = np.where(np.isfinite(trace.dt), trace.dt, 0.0)
    start_of_step = np.concatenate([[0.0], np.cumsum(dt)[:-1]])
    env_time = trace.info_array("time")
    if env_time is not None and env_time.ndim == 1 and np.all(np.isfinite(env_time)):
        local = np.asarray(env_time, dtype=np.float64)
    else:
        local = start_of_step.copy()
        for ep in np.unique(trace.episode):
            idx = np.flatnonzero(trace.episode == ep)
            local[idx] -= local[idx[0]]
    out = np.empty_like(local)
    offset = 0.0
    previous_end = None
    for ep in _episodes_in_order(trace.episode):
        idx = np.flatnonzero(trace.episode == ep)
        if previous_end is not None:
            offset = previous_end + float(np.median(dt[idx])) - float(local[idx[0]])
        out[idx] = local[idx] + offset
        previous_end = float(out[idx[-1]])
    return out


def _episodes_in_order(episode: np.ndarray) -> list[int]:
    _, first = np.unique(episode, return_index=True)
    return [int(episode[i]) for i in sorted(first)]


def _image_frames(frames: Any, steps: int, what: str) -> np.ndarray | None:
    if frames is None:
        return None
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        if what == "observations":
            return None  # a state-vector or dict policy: no dash camera to show
        raise ValueError(f"{what} must be uint8 (T, H, W, 3) frames; got {arr.dtype} {arr.shape}.")
    if arr.shape[0] > steps:
        raise ValueError(f"{what} has {arr.shape[0]} frames but the trace only {steps} steps.")
    return arr


def _colors(values: np.ndarray) -> np.ndarray:
    """``(T, N)`` states -> ``(T, N)`` packed RGBA (coolwarm, each neuron scaled by its largest |state|)."""
    from matplotlib import colormaps

    scale = np.nanmax(np.abs(values), axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    unit = np.clip(0.5 + 0.5 * values / scale, 0.0, 1.0)
    rgba = (colormaps["coolwarm"](np.nan_to_num(unit, nan=0.5)) * 255).round().astype(np.uint32)
    return (rgba[..., 0] << 24) | (rgba[..., 1] << 16) | (rgba[..., 2] << 8) | rgba[..., 3]


def _graph_layout(trace: Trace) -> tuple[list[str], np.ndarray, list[str], list[tuple[str, str]]]:
    """Node ids (sensory inputs then neurons), their positions by layer column, labels and directed edges."""
    assert trace.adjacency is not None
    ids: list[str] = []
    positions: list[tuple[float, float]] = []
    column = 0
    sensory_ids: list[str] = []
    if trace.sensory_adjacency is not None:
        s = trace.sensory_adjacency.shape[0]
        sensory_ids = [f"sensory_{k}" for k in range(s)]
        while any(name in trace.neuron_names for name in sensory_ids):
            sensory_ids = ["input_" + name for name in sensory_ids]
        ids.extend(sensory_ids)
        positions.extend((0.0, 40.0 * k) for k in range(s))
        column = 1
    order: list[int] = []
    for role in trace.layers:
        members = trace.layer_indices(role)
        height = 40.0 * max(len(sensory_ids) - 1, len(members) - 1, 0)
        for k, i in enumerate(members):
            order.append(int(i))
            y = height / 2.0 if len(members) == 1 else height * k / (len(members) - 1)
            positions.append((220.0 * column, y))
        column += 1
    ids.extend(trace.neuron_names[i] for i in order)
    labels = list(ids)
    edges: list[tuple[str, str]] = []
    if trace.sensory_adjacency is not None:
        for k, post in zip(*np.nonzero(trace.sensory_adjacency)):
            edges.append((sensory_ids[int(k)], trace.neuron_names[int(post)]))
    for pre, post in zip(*np.nonzero(trace.adjacency)):
        edges.append((trace.neuron_names[int(pre)], trace.neuron_names[int(post)]))
    pos = np.asarray(positions, dtype=np.float32).reshape(-1, 2)
    # positions follow `ids`: sensory first, then the neurons in layer order
    return ids, pos, labels, edges


def _blueprint(trace: Trace, have: set[str]) -> Any:
    import rerun.blueprint as rrb

    images = [
        rrb.Spatial2DView(origin=path, name=name)
        for path, name in (
            ("/camera/dash", "dash camera"),
            ("/camera/saliency", "saliency"),
            ("/camera/chase", "chase view"),
        )
        if path in have
    ]
    plots = [rrb.TimeSeriesView(origin="/steering", name="steering")] if "/steering" in have else []
    plots += [
        rrb.TimeSeriesView(origin=path, name=path.strip("/").replace("_", " "))
        for path in ("/lateral_error", "/speed")
        if path in have
    ]
    neurons = [
        rrb.TimeSeriesView(origin=f"/neurons/{q}/{_part(role)}", name=f"{role} {q}")
        for q in ("state", "tau")
        if f"/neurons/{q}" in have
        for role in trace.layers
    ]
    spatial: list[Any] = []
    if "/map" in have:
        spatial.append(rrb.Spatial2DView(origin="/map", name="road map"))
    if "/wiring" in have:
        spatial.append(rrb.GraphView(origin="/wiring", name="wiring"))
    columns: list[Any] = [rrb.Vertical(*images)] if images else []
    columns.append(rrb.Vertical(*plots, *spatial) if plots or spatial else rrb.TextDocumentView())
    columns.append(rrb.Tabs(*neurons) if neurons else rrb.TextDocumentView(origin="/metadata"))
    return rrb.Blueprint(rrb.Horizontal(*columns), collapse_panels=False)


# over 120 lines: one recording written section by section (scalars, images, map, wiring) on one stream,
# inside one try that removes the partial file; the sections share the stream, its time columns and `have`
def record_rerun(
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    chase: np.ndarray | Sequence[np.ndarray] | None = None,
    saliency: np.ndarray | None = None,
    expert_steering: np.ndarray | None = None,
    recording_id: str | None = None,
    chase_jpeg_quality: int = 85,
) -> Path:
    """Write ``trace`` as a Rerun recording that ``rerun PATH`` opens.

    Args:
        trace: the recorded rollout.
        path: the ``.rrd`` file (the suffix is added when missing; parent folders are created); written to a
            temporary name and renamed into place when complete.
        chase: ``(T', H, W, 3)`` uint8 chase-view frames of steps ``0..T'-1`` (``T' <= T``), or None.
        saliency: ``(F, h, w)`` saliency maps in ``[0, 1]`` of steps ``0..F-1``; drawn over the dash frames.
        expert_steering: ``(T,)`` the expert's steering at each step (default ``info["expert_steering"]``).
        recording_id: Rerun recording id (default: a fresh one).
        chase_jpeg_quality: JPEG quality of the chase frames (the dash frames are stored losslessly).

    Returns:
        The path written.

    Raises:
        ImportError: rerun-sdk is not installed.
        ValueError: an argument's shape does not match the trace.
    """
    rr = _import_rerun()
    from ltc_control.inspection.saliency import overlay_saliency

    out = Path(path)
    if out.suffix != ".rrd":
        out = out.with_name(out.name + ".rrd")
    out.parent.mkdir(parents=True, exist_ok=True)
    steps_n = trace.num_steps
    dash = _image_frames(trace.observations, steps_n, "observations")
    chase_arr = _image_frames(None if chase is None else np.stack(list(chase)), steps_n, "chase")
    maps = None
    if saliency is not None:
        maps = np.asarray(saliency, dtype=np.float32)
        if maps.ndim != 3:
            raise ValueError(f"saliency must be (F, h, w) maps; got shape {maps.shape}.")
        if dash is None or maps.shape[0] > dash.shape[0]:
            raise ValueError("saliency needs the dash frames of its steps in trace.observations.")
    expert = expert_steering if expert_steering is not None else trace.info_array("expert_steering")
    if expert is not None:
        expert = np.asarray(expert, dtype=np.float64).reshape(-1)
        if expert.shape[0] != steps_n:
            raise ValueError(f"expert_steering has {expert.shape[0]} steps; the trace has {steps_n}.")

    step = np.arange(steps_n, dtype=np.int64)
    seconds = sim_time(trace)

    def indexes(n: int = steps_n) -> list[Any]:
        return [rr.TimeColumn("step", sequence=step[:n]), rr.TimeColumn("sim_time", duration=seconds[:n])]

    rec = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # the .rrd appears complete or not at all
    rec.save(partial)
    try:
        rec.set_log_time_enabled(False)  # one timeline pair only: step and sim_time
        rec.set_log_tick_enabled(False)
        have: set[str] = set()

        def scalars(
            entity: str, values: np.ndarray, name: str, color: tuple[int, int, int] | None = None
        ) -> None:
            rec.log(entity, rr.SeriesLines(names=name, colors=color), static=True)
            rec.send_columns(entity, indexes=indexes(), columns=rr.Scalars.columns(scalars=values))
            have.add("/" + entity.strip("/").split("/")[0])

        # ------------------------------------------------------------------ per-step scalars
        scalars("/steering/policy", trace.steering, "policy", (80, 170, 255))
        if expert is not None:
            scalars("/steering/expert", expert, "expert", (255, 170, 60))
        for key, entity, name in (
            ("lateral_offset", "/lateral_error", "lateral error (m)"),
            ("speed", "/speed", "speed (m/s)"),
        ):
            values = trace.info_array(key)
            if values is not None and values.ndim == 1:
                scalars(entity, values.astype(np.float64), name)
        for quantity in ("state", "tau"):
            data = trace.state if quantity == "state" else trace.tau
            if data is None:
                continue
            for i, (name, role) in enumerate(zip(trace.neuron_names, trace.neuron_roles)):
                scalars(neuron_entity(quantity, role, name), data[:, i], name)
            have.add(f"/neurons/{quantity}")

        # ------------------------------------------------------------------ images
        for entity, frames in (("/camera/dash", dash), ("/camera/chase", chase_arr)):
            if frames is None:
                continue
            for t in range(frames.shape[0]):
                rec.set_time("step", sequence=int(step[t]))
                rec.set_time("sim_time", duration=float(seconds[t]))
                image = rr.Image(frames[t])
                rec.log(
                    entity,
                    image.compress(jpeg_quality=chase_jpeg_quality) if entity.endswith("chase") else image,
                )
            have.add(entity)
        if maps is not None and dash is not None:
            for t in range(maps.shape[0]):
                rec.set_time("step", sequence=int(step[t]))
                rec.set_time("sim_time", duration=float(seconds[t]))
                rec.log("/camera/saliency", rr.Image(overlay_saliency(dash[t], maps[t])))
            have.add("/camera/saliency")
        rec.reset_time()

        # ------------------------------------------------------------------ map
        position = trace.info_array("position")
        if trace.road_points is not None:
            rec.log(
                "/map/road",
                rr.LineStrips2D([trace.road_points], colors=(170, 170, 170), radii=1.5, draw_order=0.0),
                static=True,
            )
            have.add("/map")
        if position is not None and position.ndim == 2 and position.shape[1] == 2:
            finite = np.all(np.isfinite(position), axis=1)
            rec.log(
                "/map/path",
                rr.LineStrips2D([position[finite]], colors=(60, 60, 60), radii=0.15, draw_order=1.0),
                static=True,
            )
            rec.log("/map/car", rr.Points2D.from_fields(colors=(220, 40, 40), radii=1.0), static=True)
            rec.send_columns("/map/car", indexes=indexes(), columns=rr.Points2D.columns(positions=position))
            have.add("/map")

        # ------------------------------------------------------------------ wiring graph
        if trace.adjacency is not None:
            ids, positions, labels, edges = _graph_layout(trace)
            rec.log(
                "/wiring",
                rr.GraphNodes(ids, positions=positions, labels=labels, show_labels=True),
                static=True,
            )
            rec.log("/wiring", rr.GraphEdges(edges, graph_type="directed"), static=True)
            state_colors = _colors(trace.state)
            grey = np.full((steps_n, len(ids) - trace.num_neurons), 0xB4B4B4FF, dtype=np.uint32)
            by_id = {name: i for i, name in enumerate(trace.neuron_names)}
            ordered = state_colors[:, [by_id[i] for i in ids[grey.shape[1] :]]]
            colors = np.concatenate([grey, ordered], axis=1)
            rec.send_columns(
                "/wiring",
                indexes=indexes(),
                columns=rr.GraphNodes.columns(colors=colors.reshape(-1)).partition([len(ids)] * steps_n),
            )
            have.add("/wiring")

        rec.log("/metadata", rr.TextDocument(json.dumps(trace.metadata, indent=1, default=str)), static=True)
        rec.send_blueprint(_blueprint(trace, have), make_active=True, make_default=True)
    except BaseException:
        rec.disconnect()
        partial.unlink(missing_ok=True)
        raise
    rec.flush()
    rec.disconnect()
    os.replace(partial, out)
    return out
