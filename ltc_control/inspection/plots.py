"""Figures drawn from a :class:`~ltc_control.inspection.trace.Trace` (matplotlib, Agg; PNG, SVG or PDF).

Every ``plot_*`` function takes a trace and an output path whose suffix picks the format, writes the file
atomically and returns its path. The matching ``*_figure`` functions return the matplotlib ``Figure``
for callers that want to compose or restyle. Figures are built on ``matplotlib.figure.Figure`` directly (no
pyplot state), so they are safe in scripts, tests and worker threads alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ltc_control.inspection.analysis import correlations, lipschitz_profile, pca
from ltc_control.inspection.trace import Trace
from ltc_control.runs import atomic_open

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "LAYER_COLORS",
    "PLOTS",
    "new_figure",
    "save_figure",
    "neuron_traces_figure",
    "tau_heatmap_figure",
    "activity_on_road_figure",
    "wiring_graph_figure",
    "pca_figure",
    "lipschitz_figure",
    "correlation_figure",
    "plot_neuron_traces",
    "plot_tau_heatmap",
    "plot_activity_on_road",
    "plot_wiring_graph",
    "plot_pca",
    "plot_lipschitz",
    "plot_correlations",
    "plot_all",
]

LAYER_COLORS: dict[str, str] = {
    "sensory": "#7f7f7f",
    "inter": "#1f77b4",
    "command": "#ff7f0e",
    "motor": "#d62728",
    "hidden": "#2ca02c",
}
_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free matplotlib ``Figure`` of ``width`` x ``height`` inches with constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` atomically to ``path``; the suffix (``.png``, ``.svg``, ``.pdf``) chooses the format.

    Args:
        fig: a matplotlib figure.
        path: destination file; parent folders are created.

    Returns:
        The path written.
    """
    out = Path(path)
    fmt = _FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"Unsupported figure suffix {out.suffix!r} in {out}; use one of {sorted(_FORMATS)}.")
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=110)
    return out


def _time_axis(trace: Trace) -> np.ndarray:
    return np.arange(trace.num_steps)


def _layer_order(trace: Trace) -> list[int]:
    """Neuron indices grouped by layer, input side first (inter, command, motor)."""
    order: list[int] = []
    for role in trace.layers:
        order.extend(int(i) for i in trace.layer_indices(role))
    return order


def _require(trace: Trace, what: str, ok: bool, fix: str) -> None:
    if not ok:
        raise ValueError(f"This trace has no {what}; {fix}")


# ------------------------------------------------------------------------------------------ neuron traces
def neuron_traces_figure(trace: Trace, max_legend: int = 12) -> Figure:
    """Neuron states over time, one panel per layer, with steering and curvature underneath.

    Args:
        trace: the recorded rollout.
        max_legend: label the lines of a layer by name when it has at most this many neurons.
    """
    layers = trace.layers
    extra = ["steering"] + (["curvature"] if trace.info_array("curvature") is not None else [])
    rows = len(layers) + len(extra)
    fig = new_figure(10, 1.6 * rows + 0.6)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    t = _time_axis(trace)
    for ax, role in zip(axes, layers):
        idx = trace.layer_indices(role)
        base = LAYER_COLORS.get(role, "#333333")
        for k, i in enumerate(idx):
            shade = 0.35 + 0.65 * (k + 1) / len(idx)
            ax.plot(t, trace.state[:, i], lw=1.0, color=base, alpha=shade, label=trace.neuron_names[i])
        ax.set_ylabel(f"{role}\nstate")
        ax.set_title(f"{role} neurons ({len(idx)})", fontsize=9, loc="left")
        if 0 < len(idx) <= max_legend:
            ax.legend(
                fontsize=6,
                ncol=1 if len(idx) <= 6 else 2,
                loc="upper left",
                bbox_to_anchor=(1.0, 1.0),
                frameon=False,
            )
    ax_s = axes[len(layers)]
    ax_s.plot(t, trace.steering, color="k", lw=1.2, label="action")
    if trace.output.shape[1] > 0:
        ax_s.plot(t, trace.output[:, 0], color="#d62728", lw=0.8, ls="--", label="motor readout")
    ax_s.set_ylabel("steering")
    ax_s.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    curvature = trace.info_array("curvature")
    if curvature is not None:
        ax_c = axes[len(layers) + 1]
        ax_c.plot(t, curvature, color="#9467bd", lw=1.2)
        ax_c.set_ylabel("curvature\n(1/m)")
    axes[-1].set_xlabel("control step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("Neuron activity during the rollout")
    return fig


# ------------------------------------------------------------------------------------------ tau heat map
def tau_heatmap_figure(trace: Trace) -> Figure:
    """The liquid time constant of every neuron over time (log colour scale), neurons grouped by layer."""
    _require(
        trace, "liquid time constants", trace.tau is not None, "only LTC cells expose tau (record an LTC)."
    )
    assert trace.tau is not None
    from matplotlib.colors import LogNorm

    order = _layer_order(trace)
    tau = np.clip(trace.tau[:, order].T, 1e-6, None)
    fig = new_figure(10, 0.22 * len(order) + 2.0)
    ax = fig.subplots()
    image = ax.imshow(
        tau,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        norm=LogNorm(vmin=float(tau.min()), vmax=float(max(tau.max(), tau.min() * 1.0001))),
    )
    ax.set_yticks(range(len(order)), [trace.neuron_names[i] for i in order], fontsize=6)
    boundary = 0
    for role in trace.layers:
        boundary += len(trace.layer_indices(role))
        if boundary < len(order):
            ax.axhline(boundary - 0.5, color="w", lw=1.0)
    ax.set_xlabel("control step")
    ax.set_title("Liquid time constant  tau = cm / (gleak + active synaptic conductance)")
    fig.colorbar(image, ax=ax, label="tau (cell time units)")
    return fig


# ------------------------------------------------------------------------------------------ road map
def activity_on_road_figure(trace: Trace, neuron: int | str | None = None, quantity: str = "state") -> Figure:
    """Top-down map of the driven trajectory coloured by one neuron's state (the NCP paper's Fig. 6).

    Args:
        trace: a trace whose info has ``position (T, 2)`` (metres); ``road_points`` adds the centre line.
        neuron: index or name; default the first motor neuron (else neuron 0).
        quantity: ``"state"`` or ``"tau"`` (LTC).
    """
    position = trace.info_array("position")
    _require(
        trace,
        "car positions (info['position'])",
        position is not None and np.asarray(position).ndim == 2,
        "record a rollout in an env whose info reports 'position'.",
    )
    assert position is not None
    if quantity not in ("state", "tau"):
        raise ValueError(f"quantity must be 'state' or 'tau'; got {quantity!r}.")
    values_all = trace.state if quantity == "state" else trace.tau
    _require(trace, quantity, values_all is not None, "only LTC cells expose tau; use quantity='state'.")
    assert values_all is not None
    motor = trace.layer_indices("motor")
    index = trace.neuron_index(neuron) if neuron is not None else (int(motor[0]) if len(motor) else 0)
    values = values_all[:, index]
    fig = new_figure(7, 6)
    ax = fig.subplots()
    if trace.road_points is not None:
        ax.plot(
            trace.road_points[:, 0], trace.road_points[:, 1], color="#bbbbbb", lw=6, solid_capstyle="round"
        )
        ax.plot(trace.road_points[:, 0], trace.road_points[:, 1], color="w", lw=0.8, ls="--")
    pos = np.asarray(position, dtype=np.float64)
    scatter = ax.scatter(pos[:, 0], pos[:, 1], c=values, cmap="coolwarm", s=10, zorder=3)
    ax.plot(pos[:1, 0], pos[:1, 1], marker="o", color="k", ms=6, zorder=4, label="start")
    if trace.road_points is not None:
        # a short drive on a long road would be a speck: frame the driven part with some road around it
        lo, hi = np.nanmin(pos, axis=0), np.nanmax(pos, axis=0)
        margin = max(10.0, 0.25 * float(np.max(hi - lo)))
        ax.set_xlim(lo[0] - margin, hi[0] + margin)
        ax.set_ylim(lo[1] - margin, hi[1] + margin)
        ax.set_aspect("equal", adjustable="box")
    else:
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{trace.neuron_names[index]} ({trace.neuron_roles[index]}) {quantity} along the drive")
    fig.colorbar(scatter, ax=ax, label=quantity)
    return fig


# ------------------------------------------------------------------------------------------ wiring graph
def _layer_columns(trace: Trace) -> tuple[list[str], dict[str, np.ndarray]]:
    columns = [r for r in trace.layers]
    members = {r: trace.layer_indices(r) for r in columns}
    return columns, members


# over 120 lines: one figure drawn top to bottom (layout, edges, nodes, labels, legend) on shared coordinates
def wiring_graph_figure(trace: Trace, color_by: str = "activity") -> Figure:
    """The wiring by layers: synapse polarity (colour), weight (line width), nodes coloured by a statistic.

    Args:
        trace: a trace with ``adjacency`` (and optionally ``sensory_adjacency``, weights).
        color_by: ``"activity"`` (mean state) or ``"steering"`` (correlation of the state with steering).
    """
    _require(
        trace,
        "wiring adjacency",
        trace.adjacency is not None,
        "wiring graphs need a wired cell (LTC / wired CfC); dense RNN baselines have none.",
    )
    assert trace.adjacency is not None
    if color_by not in ("activity", "steering"):
        raise ValueError(f"color_by must be 'activity' or 'steering'; got {color_by!r}.")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize, TwoSlopeNorm

    if color_by == "activity":
        node_value = trace.state.mean(axis=0)
        lo, hi = float(node_value.min()), float(node_value.max())
        centre = 0.0 if lo < 0.0 < hi else (lo + hi) / 2.0
        norm: Normalize = TwoSlopeNorm(
            vcenter=centre, vmin=min(lo, centre - 1e-9), vmax=max(hi, centre + 1e-9)
        )
        label = "mean state"
    else:
        corr, labels = correlations(trace)
        node_value = (
            corr[:, labels.index("steering")] if "steering" in labels else np.zeros(trace.num_neurons)
        )
        norm = Normalize(vmin=-1.0, vmax=1.0)
        label = "correlation with steering"
    cmap = "coolwarm"
    columns, members = _layer_columns(trace)
    has_sensory = trace.sensory_adjacency is not None
    n_cols = len(columns) + (1 if has_sensory else 0)
    sensory_count = trace.sensory_adjacency.shape[0] if trace.sensory_adjacency is not None else 0
    tallest = max([len(m) for m in members.values()] + [sensory_count])
    fig = new_figure(2.6 * n_cols + 1.5, max(4.0, 0.22 * tallest + 1.5))
    ax = fig.subplots()
    xy = np.zeros((trace.num_neurons, 2))
    col = 0
    sensory_xy = np.zeros((0, 2))
    if has_sensory:
        assert trace.sensory_adjacency is not None
        s = trace.sensory_adjacency.shape[0]
        sensory_xy = np.stack([np.zeros(s), np.linspace(0, 1, s) if s > 1 else np.full(s, 0.5)], axis=1)
        col = 1
    for role in columns:
        idx = members[role]
        ys = np.linspace(0, 1, len(idx)) if len(idx) > 1 else np.full(len(idx), 0.5)
        xy[idx] = np.stack([np.full(len(idx), col), ys], axis=1)
        col += 1

    def _edges(
        adj: np.ndarray,
        weight: np.ndarray | None,
        src_xy: np.ndarray,
        dst_xy: np.ndarray,
        same: bool,
        fade: float = 1.0,
    ) -> None:
        pre, post = np.nonzero(adj)
        if len(pre) == 0:
            return
        w = np.abs(weight[pre, post]) if weight is not None else np.ones(len(pre))
        w = w / max(float(w.max()), 1e-12)
        if not same:
            # many straight feed-forward edges: one LineCollection draws them ~50x faster than arrow patches
            from matplotlib.collections import LineCollection

            segments = np.stack([src_xy[pre], dst_xy[post]], axis=1)
            colors = [
                (0.75, 0.22, 0.17, fade * (0.25 + 0.5 * float(k)))
                if p > 0
                else (0.18, 0.36, 0.72, fade * (0.25 + 0.5 * float(k)))
                for p, k in zip(adj[pre, post], w)
            ]
            ax.add_collection(
                LineCollection(list(segments), colors=colors, linewidths=0.3 + 2.2 * w, zorder=1)
            )
            return
        for a, b, polarity, strength in zip(pre, post, adj[pre, post], w):
            color = "#c0392b" if polarity > 0 else "#2e5cb8"
            p, q = src_xy[a], dst_xy[b]
            rad = 0.0
            if same and p[0] == q[0]:
                rad = 0.6 if a != b else 0.0
            if same and a == b:
                ax.plot([p[0] + 0.08], [p[1]], marker="o", mfc="none", mec=color, ms=8, alpha=0.6)
                continue
            ax.annotate(
                "",
                xy=(float(q[0]), float(q[1])),
                xytext=(float(p[0]), float(p[1])),
                arrowprops={
                    "arrowstyle": "-|>" if polarity > 0 else "-[",
                    "color": color,
                    "lw": 0.3 + 2.2 * float(strength),
                    "alpha": fade * (0.25 + 0.5 * float(strength)),
                    "connectionstyle": f"arc3,rad={rad}",
                    "shrinkA": 5,
                    "shrinkB": 5,
                    "mutation_scale": 6,
                },
            )

    if has_sensory:
        assert trace.sensory_adjacency is not None
        # sensory fan-out outnumbers the recurrent synapses; fade it so the circuit stays readable
        _edges(trace.sensory_adjacency, trace.sensory_weight, sensory_xy, xy, same=False, fade=0.4)
        ax.scatter(sensory_xy[:, 0], sensory_xy[:, 1], s=25, color=LAYER_COLORS["sensory"], zorder=3)
    _edges(trace.adjacency, trace.synapse_weight, xy, xy, same=True)
    ax.scatter(
        xy[:, 0],
        xy[:, 1],
        s=170,
        c=node_value,
        cmap=cmap,
        norm=norm,
        edgecolors="k",
        linewidths=0.6,
        zorder=4,
    )
    for i, name in enumerate(trace.neuron_names):
        ax.annotate(
            name, (float(xy[i, 0]), float(xy[i, 1])), xytext=(7, 3), textcoords="offset points", fontsize=6
        )
    titles = (["sensory"] if has_sensory else []) + columns
    ax.set_xticks(range(n_cols), titles)
    ax.set_yticks([])
    ax.set_xlim(-0.5, n_cols - 0.3)
    ax.set_ylim(-0.08, 1.08)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Wiring: red excitatory (arrow), blue inhibitory (bar); width = synaptic weight")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label, shrink=0.7)
    return fig


# ------------------------------------------------------------------------------------------ PCA
def pca_figure(trace: Trace, max_components: int = 10) -> Figure:
    """Explained variance of each principal component of the hidden activity, and the PC1/PC2 trajectory."""
    result = pca(trace.state)
    k = min(max_components, len(result.explained_variance_ratio))
    fig = new_figure(11, 4.2)
    ax_bar, ax_traj = fig.subplots(1, 2)
    ratio = result.explained_variance_ratio[:k]
    ax_bar.bar(np.arange(1, k + 1), 100 * ratio, color="#1f77b4")
    ax_bar.plot(np.arange(1, k + 1), 100 * np.cumsum(ratio), color="k", marker=".", lw=1, label="cumulative")
    for i, r in enumerate(ratio):
        ax_bar.annotate(f"{100 * r:.1f}", (i + 1, 100 * r), ha="center", va="bottom", fontsize=7)
    ax_bar.set_xlabel("principal component")
    ax_bar.set_ylabel("explained variance (%)")
    ax_bar.set_ylim(0, 105)
    ax_bar.set_title(f"PC1 explains {100 * result.explained_variance_ratio[0]:.1f}% of the variance")
    ax_bar.legend(fontsize=8)
    if result.projections.shape[1] >= 2:
        sc = ax_traj.scatter(
            result.projections[:, 0], result.projections[:, 1], c=trace.steering, cmap="coolwarm", s=8
        )
        ax_traj.plot(result.projections[:, 0], result.projections[:, 1], color="#999999", lw=0.4)
        ax_traj.set_ylabel("PC2")
        fig.colorbar(sc, ax=ax_traj, label="steering")
    else:
        ax_traj.plot(result.projections[:, 0], color="#1f77b4")
        ax_traj.set_ylabel("PC1")
    ax_traj.set_xlabel("PC1")
    ax_traj.set_title("Hidden activity in PC space")
    return fig


# ------------------------------------------------------------------------------------------ Lipschitz
def lipschitz_figure(trace: Trace) -> Figure:
    """Each neuron's largest step-to-step change (its Lipschitz profile), coloured by layer."""
    profile = lipschitz_profile(trace.state, episode=trace.episode)
    order = _layer_order(trace)
    fig = new_figure(max(6.0, 0.3 * len(order) + 2), 4)
    ax = fig.subplots()
    colors = [LAYER_COLORS.get(trace.neuron_roles[i], "#333333") for i in order]
    ax.bar(range(len(order)), profile[order], color=colors)
    ax.set_xticks(range(len(order)), [trace.neuron_names[i] for i in order], rotation=90, fontsize=6)
    ax.set_ylabel("max |x[t+1] - x[t]|")
    ax.set_title("Largest step-to-step change of each neuron")
    ax.grid(axis="y", alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------ correlations
def correlation_figure(trace: Trace) -> Figure:
    """Pearson correlation of each neuron's state with steering, curvature and lateral error."""
    corr, labels = correlations(trace)
    _require(trace, "signals to correlate with", len(labels) > 0, "record actions or env info.")
    order = _layer_order(trace)
    data = corr[order]
    fig = new_figure(1.6 * len(labels) + 2.8, 0.22 * len(order) + 1.8)
    ax = fig.subplots()
    image = ax.imshow(data, cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(order)), [trace.neuron_names[i] for i in order], fontsize=6)
    for r in range(data.shape[0]):
        for c in range(data.shape[1]):
            ax.text(c, r, f"{data[r, c]:+.2f}", ha="center", va="center", fontsize=5)
    ax.set_title("Correlation of neuron state with driving signals")
    fig.colorbar(image, ax=ax, label="Pearson r")
    return fig


# ------------------------------------------------------------------------------------------ file writers
def _plotter(builder: Callable[..., Figure]) -> Callable[..., Path]:
    def write(trace: Trace, path: str | os.PathLike[str], **kwargs: object) -> Path:
        fig = builder(trace, **kwargs)
        return save_figure(fig, path)

    write.__name__ = "plot_" + builder.__name__.removesuffix("_figure")
    write.__doc__ = (
        f"Write :func:`{builder.__name__}` to ``path`` (format from the suffix) and return the path.\n\n"
        "Args:\n    trace: the recorded trace.\n    path: output file (.png, .svg or .pdf).\n"
        f"    **kwargs: options of :func:`{builder.__name__}`."
    )
    return write


plot_neuron_traces = _plotter(neuron_traces_figure)
plot_tau_heatmap = _plotter(tau_heatmap_figure)
plot_activity_on_road = _plotter(activity_on_road_figure)
plot_wiring_graph = _plotter(wiring_graph_figure)
plot_pca = _plotter(pca_figure)
plot_lipschitz = _plotter(lipschitz_figure)
plot_correlations = _plotter(correlation_figure)

#: name -> (builder, one-line caption) for every plot, in report order.
PLOTS: dict[str, tuple[Callable[..., Figure], str]] = {
    "neuron_traces": (neuron_traces_figure, "Neuron states by layer, with steering and road curvature."),
    "tau_heatmap": (tau_heatmap_figure, "Liquid time constant of every neuron over time."),
    "activity_on_road": (activity_on_road_figure, "Motor neuron state along the driven trajectory."),
    "wiring_activity": (wiring_graph_figure, "Wiring by layers; nodes coloured by mean activity."),
    "wiring_steering": (
        lambda trace: wiring_graph_figure(trace, color_by="steering"),
        "Wiring by layers; nodes coloured by correlation with steering.",
    ),
    "pca": (pca_figure, "PCA of the hidden activity: explained variance per component."),
    "lipschitz": (lipschitz_figure, "Largest step-to-step change per neuron (Lipschitz profile)."),
    "correlations": (correlation_figure, "Correlation with steering, curvature and lateral error."),
}


def plot_all(
    trace: Trace, out_dir: str | os.PathLike[str], formats: Sequence[str] = ("png", "svg")
) -> tuple[dict[str, list[Path]], dict[str, str]]:
    """Draw every plot the trace supports.

    Args:
        trace: the recorded trace.
        out_dir: folder for the files ``<name>.<format>``.
        formats: file formats to write (``png``, ``svg``, ``pdf``).

    Returns:
        ``(written, skipped)``: plot name -> paths written, and plot name -> why it was skipped (e.g. no tau
        for a CfC, no wiring for an LSTM).
    """
    bad = [f for f in formats if "." + f.lower() not in _FORMATS]
    if bad:
        raise ValueError(f"Unsupported formats {bad}; use any of {sorted(f[1:] for f in _FORMATS)}.")
    out = Path(out_dir)
    written: dict[str, list[Path]] = {}
    skipped: dict[str, str] = {}
    for name, (builder, _caption) in PLOTS.items():
        try:
            fig = builder(trace)
        except ValueError as exc:
            skipped[name] = str(exc)
            continue
        written[name] = [save_figure(fig, out / f"{name}.{fmt.lower()}") for fmt in formats]
    return written, skipped
