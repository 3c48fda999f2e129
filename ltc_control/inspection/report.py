"""Inspection reports drawn from a recorded trace and its policy: figures, summary numbers and one HTML page.

Everything here works from a recorded :class:`~ltc_control.inspection.trace.Trace` (and, for saliency, the
policy that produced it); recording a rollout in an env is the closed-loop pipeline's job
(``ltc-control inspect``). :func:`report_from_trace` re-draws a report from a saved ``trace.npz``; the
pipeline writes into its output folder:

- ``trace.npz``: the recorded :class:`~ltc_control.inspection.trace.Trace` (every neuron, every step);
- ``figures/<name>.png|svg``: the plots of :mod:`ltc_control.inspection.plots`, the saliency samples and the
  saliency SSIM under noise (image policies, :func:`write_saliency_outputs`), the ablation bar chart;
- ``saliency.mp4``: camera frames beside their VisualBackprop overlays;
- ``summary.json``: the numbers quoted on the page;
- ``index.html``: one self-contained page (images embedded as base64, :func:`write_html_report`).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.inspection.analysis import correlations, lipschitz_profile, pca
from ltc_control.inspection.perturbation import AblationTable
from ltc_control.inspection.plots import PLOTS, activity_on_road_figure, new_figure, plot_all, save_figure
from ltc_control.inspection.saliency import (
    overlay_saliency,
    policy_saliency,
    saliency_robustness,
    write_saliency_video,
)
from ltc_control.inspection.trace import Trace
from ltc_control.runs import atomic_write_text
from ltc_control.video import file_codec, plays_in_browser

__all__ = [
    "InspectionResult",
    "analysis_summary",
    "draw_neuron_maps",
    "output_semantics",
    "report_from_trace",
    "write_html_report",
    "write_inspection_page",
    "write_json",
    "write_saliency_outputs",
]


@dataclass
class InspectionResult:
    """What an inspection wrote (the ``ltc-control inspect`` pipeline or :func:`report_from_trace`).

    Attributes:
        out_dir: the output folder.
        html: the report page.
        trace: the recorded trace file.
        trace_data: the recorded :class:`Trace`.
        figures: figure name -> written files.
        skipped: figure name -> why it was not drawn.
        summary: the numbers of ``summary.json``.
        video: the saliency mp4, or None.
        ablation: the ablation table, or None.
    """

    out_dir: Path
    html: Path
    trace: Path
    trace_data: Trace
    figures: dict[str, list[Path]]
    skipped: dict[str, str]
    summary: dict[str, Any]
    video: Path | None = None
    ablation: AblationTable | None = None


# ------------------------------------------------------------------------------------------------ figures
def _saliency_samples_figure(frames: np.ndarray, maps: dict[str, np.ndarray], count: int = 6) -> Any:
    """A grid: camera frames, then one row of overlays per saliency method."""
    picks = np.linspace(0, frames.shape[0] - 1, min(count, frames.shape[0])).astype(int)
    rows = 1 + len(maps)
    h, w = frames.shape[1:3]
    fig = new_figure(2.2 * len(picks) * w / max(h, w) + 1.0, 2.2 * rows * h / max(h, w) + 0.8)
    axes = fig.subplots(rows, len(picks), squeeze=False)
    for col, t in enumerate(picks):
        axes[0, col].imshow(frames[t])
        axes[0, col].set_title(f"step {t}", fontsize=8)
        for row, (name, m) in enumerate(maps.items(), start=1):
            axes[row, col].imshow(overlay_saliency(frames[t], m[t]))
            if col == 0:
                axes[row, col].set_ylabel(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("camera", fontsize=8)
    fig.suptitle("Where the policy looks (saliency overlays)")
    return fig


def _ssim_figure(ssims: Mapping[float, np.ndarray], method: str) -> Any:
    fig = new_figure(8, 3.5)
    ax = fig.subplots()
    for variance, values in ssims.items():
        ax.plot(values, lw=1.0, label=f"noise variance {variance:g}: mean SSIM {values.mean():.3f}")
    ax.set_ylim(min(0.0, min(float(v.min()) for v in ssims.values())), 1.02)
    ax.set_xlabel("frame")
    ax.set_ylabel("SSIM(clean, noisy saliency)")
    ax.set_title(f"Attention robustness ({method}): SSIM of saliency maps under image noise")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------------ HTML
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
figure {{ margin: 1.5em 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ color: #555; font-size: 0.9em; }} table {{ border-collapse: collapse; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }} th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }} .note {{ color: #a33; }}
</style></head>
<body>
<h1>{title}</h1>
<p>Figures embedded: <span id="figure-count">{count}</span>; decoded by this browser:
<span id="images-loaded">not checked</span>.</p>
{body}
<script>
window.addEventListener("load", function () {{
  var imgs = document.querySelectorAll("figure img");
  var ok = 0;
  imgs.forEach(function (im) {{ if (im.complete && im.naturalWidth > 0) ok += 1; }});
  document.getElementById("images-loaded").textContent = String(ok);
}});
</script>
</body></html>
"""


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for v in row:
            text = f"{v:.4g}" if isinstance(v, float) else str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html_report(
    path: str | os.PathLike[str],
    title: str,
    figures: Sequence[tuple[str, Path, str]],
    summary: Mapping[str, Any],
    tables: Sequence[tuple[str, AblationTable]] = (),
    video: Path | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write one self-contained HTML page (PNG figures embedded as base64 data URIs) atomically.

    Args:
        path: the ``.html`` file.
        title: page title.
        figures: ``(id, png_path, caption)`` for each figure, in order.
        summary: key -> value rows of the summary table.
        tables: ``(heading, table)`` perturbation tables to include (ablations, chosen perturbations).
        video: an mp4 next to the page: shown in a ``<video controls>`` player when it is H.264 (browsers
            play it; the file stays separate, only referenced), else linked.
        notes: extra remarks (e.g. plots skipped and why).

    Returns:
        The path written.
    """
    parts = ["<h2>Summary</h2>", _table([(k, v) for k, v in summary.items()], ("quantity", "value"))]
    if notes:
        parts.append("<ul>" + "".join(f'<li class="note">{html.escape(n)}</li>' for n in notes) + "</ul>")
    parts.append("<h2>Figures</h2>")
    for fig_id, png, caption in figures:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        parts.append(
            f'<figure id="fig-{html.escape(fig_id)}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption><b>{html.escape(fig_id)}</b>: '
            f"{html.escape(caption)}</figcaption></figure>"
        )
    for heading, table in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        header = ["perturbation", "role"] + table.metrics
        rows = [[r["perturbation"], r["role"]] + [float(r[m]) for m in table.metrics] for r in table.rows]
        parts.append(_table(rows, header))
    if video is not None:
        name = html.escape(video.name)
        link = f'<a href="{name}">{name}</a>'
        parts.append("<h2>Saliency video</h2>")
        try:
            playable = plays_in_browser(file_codec(video))
        except (OSError, ValueError):  # missing or unreadable: the link still says where it should be
            playable = False
        if playable:
            parts.append(
                f'<video controls preload="metadata" src="{name}" style="max-width: 100%">{link}</video>'
            )
        parts.append(
            f"<p>{link} (camera frames beside their saliency overlays; in the same folder as this page).</p>"
        )
    page = _PAGE.format(title=html.escape(title), count=len(figures), body="\n".join(parts))
    out = Path(path)
    atomic_write_text(out, page)
    return out


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (numpy values converted)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------------------ sections
def draw_neuron_maps(
    trace: Trace, fig_dir: Path, formats: Sequence[str], neurons: Sequence[str]
) -> tuple[dict[str, list[Path]], dict[str, str], dict[str, str]]:
    """Draw the activity of each of ``neurons`` along the driven trajectory.

    Args:
        trace: the recorded trace (with the road and the car positions).
        fig_dir: folder of the figure files.
        formats: figure file formats.
        neurons: neuron names or indices.

    Returns:
        ``(figures, skipped, captions)``: figure name -> written files, figure name -> why it was not drawn,
        figure name -> caption.

    Raises:
        KeyError: an unknown neuron (the message names the valid neurons).
    """
    figures: dict[str, list[Path]] = {}
    skipped: dict[str, str] = {}
    captions: dict[str, str] = {}
    for neuron in neurons:
        index = trace.neuron_index(neuron)  # KeyError names the valid neurons
        name = f"activity_on_road_{trace.neuron_names[index]}"
        try:
            fig = activity_on_road_figure(trace, neuron=index)
        except ValueError as exc:
            skipped[name] = str(exc)
            continue
        figures[name] = [save_figure(fig, fig_dir / f"{name}.{f}") for f in formats]
        captions[name] = f"{trace.neuron_names[index]} state along the driven trajectory."
    return figures, skipped, captions


def analysis_summary(trace: Trace) -> dict[str, Any]:
    """The analysis numbers quoted on the page: PC1 share, largest step change, steering correlation, tau."""
    summary: dict[str, Any] = {}
    result_pca = pca(trace.state)
    summary["PC1 share of hidden variance"] = float(result_pca.explained_variance_ratio[0])
    lip = lipschitz_profile(trace.state, episode=trace.episode)
    summary["largest step-to-step change (neuron)"] = (
        f"{lip.max():.4g} ({trace.neuron_names[int(np.argmax(lip))]})"
    )
    corr, labels = correlations(trace)
    if "steering" in labels:
        c = corr[:, labels.index("steering")]
        best = int(np.argmax(np.abs(c)))
        summary["neuron most correlated with steering"] = f"{trace.neuron_names[best]} (r = {c[best]:+.3f})"
    if trace.tau is not None:
        summary["tau range (time units)"] = f"{trace.tau.min():.4g} .. {trace.tau.max():.4g}"
    return summary


def write_saliency_outputs(
    policy: Any,
    trace: Trace,
    out: Path,
    *,
    num_frames: int,
    method: str,
    video: bool,
    noise: Sequence[float],
    noise_seed: int,
    formats: Sequence[str],
    figures: dict[str, list[Path]],
    captions: dict[str, str],
    summary: dict[str, Any],
) -> Path | None:
    """Saliency of the recorded frames: sample overlays, the saliency video and the SSIM under noise.

    Adds its figures, captions and numbers to ``figures``, ``captions`` and ``summary``.

    Args:
        policy: the image policy that produced the trace.
        trace: the recorded trace (with its observations).
        out: the output folder (``saliency.mp4``; figures go to ``out/figures``).
        num_frames: frames used (the first ones of the trace).
        method: ``"visual_backprop"`` or ``"gradient"``: the saliency of the video and the SSIM measure.
        video: write the saliency mp4.
        noise: Gaussian noise variances of the SSIM measure (empty: skip it).
        noise_seed: seed of that noise.
        formats: figure file formats.
        figures: figure name -> written files (updated).
        captions: figure name -> caption (updated).
        summary: the summary numbers (updated).

    Returns:
        The saliency video, or None.
    """
    fig_dir = out / "figures"
    frames = trace.observations[:num_frames] if trace.observations is not None else None
    if frames is None or frames.shape[0] == 0:
        return None
    maps = {"VisualBackprop": policy_saliency(policy, frames, "visual_backprop")}
    if trace.state.shape[1] == int(policy.controller.cell.state_size):
        before = np.vstack([np.zeros((1, trace.state.shape[1])), trace.state[:-1]])[: frames.shape[0]]
        maps["input gradient"] = policy_saliency(policy, frames, "gradient", states=before)
    fig = _saliency_samples_figure(frames, maps)
    figures["saliency_samples"] = [save_figure(fig, fig_dir / f"saliency_samples.{f}") for f in formats]
    captions["saliency_samples"] = "Camera frames with VisualBackprop and input-gradient saliency overlays."
    video_path: Path | None = None
    if video:
        main_maps = maps["VisualBackprop" if method == "visual_backprop" else "input gradient"]
        video_path, codec = write_saliency_video(frames, main_maps, out / "saliency.mp4", fps=30.0)
        summary["saliency video codec"] = codec
    if noise:
        ssims = saliency_robustness(
            policy, frames, noise, seed=noise_seed, num_frames=num_frames, method=method
        )
        fig = _ssim_figure(ssims, method)
        figures["saliency_ssim"] = [save_figure(fig, fig_dir / f"saliency_ssim.{f}") for f in formats]
        captions["saliency_ssim"] = (
            f"SSIM between clean and noisy saliency over {frames.shape[0]} frames "
            "(C1=(0.01 L)^2, C2=(0.03 L)^2, L=255)."
        )
        for variance, values in ssims.items():
            summary[f"saliency SSIM, noise variance {variance:g}"] = float(values.mean())
    return video_path


def write_inspection_page(
    path: Path,
    title: str,
    figures: Mapping[str, Sequence[Path]],
    captions: Mapping[str, str],
    summary: Mapping[str, Any],
    tables: Sequence[tuple[str, AblationTable]] = (),
    video: Path | None = None,
    notes: list[str] | None = None,
) -> Path:
    """The HTML page of an inspection: every figure that has a PNG file, the summary, tables and notes.

    Args:
        path: the page to write.
        title: page title.
        figures: figure name -> written files (those without a ``.png`` are not shown).
        captions: figure name -> caption (default: the name).
        summary: the numbers shown as a table.
        tables: ``(heading, table)`` perturbation tables to include.
        video: an mp4 to embed, or None.
        notes: remarks shown at the top (a note is added when no PNG figure exists).

    Returns:
        The page path.
    """
    notes = list(notes or [])
    pngs = [
        (name, next(p for p in paths if p.suffix == ".png"), captions.get(name, name))
        for name, paths in figures.items()
        if any(p.suffix == ".png" for p in paths)
    ]
    if not pngs:
        notes.append("no PNG figures were written (formats without png): the page shows no images")
    return write_html_report(path, title, pngs, summary, tables=tables, video=video, notes=notes)


def output_semantics(policy: Any) -> str:
    """How the recorded motor column becomes the action, for this policy's cell and action head."""
    cell = policy.controller.cell
    if hasattr(cell, "output_w") and hasattr(cell, "wiring"):
        readout = "readout = output_w * v[:M] + output_b (motor neurons; mapping as configured)"
    else:
        readout = f"readout = {type(cell).__name__}.readout(h)"
    squash = getattr(getattr(getattr(policy, "config", None), "action_head", None), "squash", None)
    limit = getattr(getattr(getattr(policy, "config", None), "action_head", None), "mean_limit", None)
    if squash == "tanh" and limit is not None:
        head = f"action = tanh(bound_mean(action_scale * readout + action_bias, {limit:g}))"
    elif squash == "tanh":
        head = "action = tanh(action_scale * readout + action_bias)"
    elif squash == "none":
        head = "action = action_scale * readout + action_bias"
    else:
        head = "action = the policy's action head applied to the readout"
    return f"{head}; {readout}"


def report_from_trace(
    trace_or_path: Trace | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "svg"),
) -> InspectionResult:
    """Re-draw every trace plot and the HTML page from a saved trace (no policy, no env).

    Args:
        trace_or_path: a :class:`Trace` or a ``trace.npz`` written by :meth:`Trace.save`.
        out_dir: output folder (``figures/``, ``index.html``, ``summary.json``).
        formats: figure formats.

    Returns:
        The :class:`InspectionResult` (no video, no ablation).
    """
    trace = trace_or_path if isinstance(trace_or_path, Trace) else Trace.load(trace_or_path)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    trace_path = trace.save(out / "trace.npz")
    figures, skipped = plot_all(trace, out / "figures", formats=formats)
    captions = {name: caption for name, (_, caption) in PLOTS.items()}
    summary: dict[str, Any] = {
        "cell": trace.metadata.get("cell", ""),
        "neurons": trace.num_neurons,
        "steps recorded": trace.num_steps,
        "PC1 share of hidden variance": float(pca(trace.state).explained_variance_ratio[0]),
    }
    if trace.tau is not None:
        summary["tau range (time units)"] = f"{trace.tau.min():.4g} .. {trace.tau.max():.4g}"
    write_json(out / "summary.json", {"summary": summary, "skipped": skipped, "metadata": trace.metadata})
    pngs = [
        (name, next(p for p in paths if p.suffix == ".png"), captions.get(name, name))
        for name, paths in figures.items()
        if any(p.suffix == ".png" for p in paths)
    ]
    page = write_html_report(
        out / "index.html",
        f"Neuron inspection: {trace.metadata.get('source', 'saved trace')}",
        pngs,
        summary,
        notes=[f"{name} not drawn: {why}" for name, why in skipped.items()],
    )
    return InspectionResult(out, page, trace_path, trace, figures, skipped, summary)
