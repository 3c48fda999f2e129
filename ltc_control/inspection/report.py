"""One-command neuron inspection: a recorded rollout, every plot, saliency, ablations and one HTML page.

``ltc-control inspect CHECKPOINT --out DIR`` (:func:`inspect_main`) and ``experiments/inspect_policy.py`` both
call :func:`inspect_policy`, which writes into ``DIR``:

- ``trace.npz``: the recorded :class:`~ltc_control.inspection.trace.Trace` (every neuron, every step);
- ``figures/<name>.png|svg``: the plots of :mod:`ltc_control.inspection.plots`, the saliency samples and the
  saliency SSIM under noise (image policies), the ablation bar chart (when asked);
- ``saliency.mp4``: camera frames beside their VisualBackprop overlays;
- ``ablation.csv``: the single-neuron ablation table (when asked);
- ``summary.json``: the numbers quoted on the page;
- ``index.html``: one self-contained page (images embedded as base64) to open in any browser.

The env and the closed-loop code (``ltc_control.envs``, ``ltc_control.agents.evaluation``) are imported lazily
inside the functions that drive the car, so importing this module never pulls them in.
"""

from __future__ import annotations

import base64
import html
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ltc_control.inspection.analysis import correlations, lipschitz_profile, pca
from ltc_control.inspection.perturbation import (
    AblationTable,
    ablation_table,
    parse_synapse,
    perturbation_effect,
)
from ltc_control.inspection.plots import PLOTS, activity_on_road_figure, new_figure, plot_all, save_figure
from ltc_control.inspection.recorder import record
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
    "InspectConfig",
    "InspectionResult",
    "closed_loop_evaluator",
    "inspect_main",
    "inspect_policy",
    "record_rollout",
    "report_from_trace",
    "write_html_report",
]


@dataclass(frozen=True)
class InspectConfig:
    """Options of ``ltc-control inspect`` and ``experiments/inspect_policy.py``.

    Args:
        out: output folder (created; files inside are replaced atomically).
        env: Gymnasium env id of the recorded rollout.
        env_kwargs: keyword arguments of the env (e.g. ``{road_length: 200}``); when empty and the checkpoint
            records its training env (``metadata.train_config.env.kwargs``), those are used.
        seed: road seed of the recorded rollout.
        steps: maximum control steps of the recorded rollout (it ends earlier if the env ends the episode).
        saliency_frames: frames used for saliency maps, the video and the SSIM measure (the paper uses 200).
        saliency_method: saliency for the video and the SSIM measure.
        noise: Gaussian noise variances (images scaled to [0, 1]) for the saliency SSIM measure.
        noise_seed: seed of that noise (the same for every model).
        video: write the saliency mp4.
        ablation: also run the single-neuron ablation table (one closed-loop evaluation per neuron).
        ablation_seeds: road seeds of each ablation evaluation.
        ablation_steps: control steps per ablation episode.
        ablation_value: clamp value of each ablated neuron (0 = silenced).
        clamp: neurons to hold at a value for one extra closed-loop comparison, e.g. ``{command_2: 0.5}``
            (evaluated on ``ablation_seeds`` / ``ablation_steps``; written to ``perturbation.csv``).
        cut: synapses to remove for that comparison, ``"pre->post"`` or ``"sensory:K->post"``.
        map_neurons: extra neurons (names or indices) to draw along the driven trajectory, beside the motor
            neuron.
        formats: figure file formats.
        device: torch device of the policy.
        threads: torch CPU threads while inspecting (0 = leave torch's setting; 1 is much faster for these
            batch-1 control loops on a busy machine); restored afterwards.
        progress: show progress bars.
    """

    out: str = "inspection"
    env: str = "LTC/LaneKeeping-v0"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    steps: int = 600
    saliency_frames: int = 200
    saliency_method: Literal["visual_backprop", "gradient"] = "visual_backprop"
    noise: tuple[float, ...] = (0.1, 0.2, 0.3)
    noise_seed: int = 0
    video: bool = True
    ablation: bool = False
    ablation_seeds: tuple[int, ...] = (1000, 1001)
    ablation_steps: int = 450
    ablation_value: float = 0.0
    clamp: dict[str, float] = field(default_factory=dict)
    cut: tuple[str, ...] = ()
    map_neurons: tuple[str, ...] = ()
    formats: tuple[str, ...] = ("png", "svg")
    device: str = "cpu"
    threads: int = 0
    progress: bool = True


@dataclass
class InspectionResult:
    """What :func:`inspect_policy` wrote.

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


# ------------------------------------------------------------------------------------------------ closed loop
def _make_env(env_id: str, env_kwargs: Mapping[str, Any] | None) -> Any:
    from ltc_control.agents.episode import make_env

    return make_env(env_id, dict(env_kwargs or {}))


def _device_of(policy: Any) -> str:
    """The policy's device, so PolicyAgent does not move a GPU policy back to the CPU."""
    param = next(iter(policy.parameters()), None) if hasattr(policy, "parameters") else None
    return str(param.device) if param is not None else "cpu"


def record_rollout(
    policy: Any,
    env: Any,
    seed: int = 0,
    steps: int | None = 600,
    keep_observations: bool = True,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> tuple[Trace, Any]:
    """Drive one episode with the policy and record every neuron.

    Args:
        policy: an ``ltc_control.policy.Policy``.
        env: a Gymnasium env (lane-keeping info keys and ``env.unwrapped.road`` are used when present).
        seed: road seed.
        steps: step cap (None = the env's own limit).
        keep_observations: keep the camera frames in the trace (needed for saliency).
        metadata: extra JSON metadata for the trace.
        progress: show a tqdm bar of the control steps.

    Returns:
        ``(trace, episode)``: the :class:`Trace` and ``agents.evaluation``'s ``EpisodeResult``.
    """
    from tqdm.auto import tqdm

    from ltc_control.agents.episode import PolicyAgent, run_episode

    agent = PolicyAgent(policy, device=_device_of(policy))
    bar = tqdm(total=steps, desc="recording rollout", unit="step", disable=not progress, leave=False)

    def on_step(step_record: Any) -> None:
        recording.on_step(step_record)
        bar.update(1)

    with record(policy, keep_observations=keep_observations, metadata=metadata or {}) as recording:
        try:
            episode = run_episode(env, agent, seed=int(seed), max_steps=steps, on_step=on_step)
        finally:
            bar.close()
        road = getattr(getattr(env, "unwrapped", env), "road", None)
        points = getattr(road, "points", None)
        if points is not None:
            recording.set_road(np.asarray(points)[:, :2])
        recording.update_metadata(seed=int(seed))
    return recording.trace, episode


def _mean_metrics(metrics: Sequence[Any]) -> dict[str, float]:
    def mean(name: str) -> float:
        values = np.array([float(getattr(m, name)) for m in metrics], dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else float("nan")

    return {
        "distance_m": mean("distance_m"),
        "departures": float(sum(int(m.departures) for m in metrics)),
        "completion_rate": mean("completed"),
        "mean_abs_lateral_m": mean("mean_abs_lateral_m"),
        "max_abs_lateral_m": mean("max_abs_lateral_m"),
        "steering_smoothness": mean("steering_smoothness"),
    }


def closed_loop_evaluator(
    env: Any, seeds: Sequence[int], max_steps: int | None = None, noise: float | None = None
) -> Callable[[Any], dict[str, float]]:
    """A deterministic closed-loop evaluation ``policy -> metrics`` for :func:`ablation_table`.

    Episodes run in this process (the clamp hooks live on this process's policy) with
    ``agents.evaluation.run_episode``; the metrics are the means over the seeds of
    :data:`~ltc_control.inspection.perturbation.ABLATION_METRICS` (departures summed).

    Args:
        env: the env to drive.
        seeds: road seeds (held out from training).
        max_steps: step cap per episode.
        noise: image noise variance (None = clean).
    """
    if not seeds:
        raise ValueError("closed_loop_evaluator needs at least one road seed.")
    from ltc_control.agents.episode import PolicyAgent, run_episode

    def evaluate(policy: Any) -> dict[str, float]:
        agent = PolicyAgent(policy, device=_device_of(policy))
        results = [run_episode(env, agent, int(s), noise=noise, max_steps=max_steps) for s in seeds]
        return _mean_metrics([r.metrics() for r in results])

    return evaluate


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


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ------------------------------------------------------------------------------------------------ main API
def _training_env_kwargs(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The env kwargs a checkpoint was trained with (``metadata.train_config.env.kwargs``), if recorded."""
    train = metadata.get("train_config")
    env = train.get("env") if isinstance(train, Mapping) else None
    kwargs = env.get("kwargs") if isinstance(env, Mapping) else None
    return dict(kwargs) if isinstance(kwargs, Mapping) else None


def _load_policy(policy_or_checkpoint: Any, device: str) -> tuple[Any, str, dict[str, Any]]:
    if isinstance(policy_or_checkpoint, str | os.PathLike):
        from ltc_control.checkpoint import load_checkpoint

        path = Path(policy_or_checkpoint)
        if not path.exists():
            raise FileNotFoundError(
                f"Checkpoint {path} does not exist; pass a folder written by ltc_control.checkpoint."
            )
        policy, metadata = load_checkpoint(path, device=device)
        return policy, str(path), dict(metadata or {})
    if not hasattr(policy_or_checkpoint, "act") or not hasattr(policy_or_checkpoint, "controller"):
        raise TypeError(
            "Expected an ltc_control Policy or a checkpoint folder; "
            f"got {type(policy_or_checkpoint).__name__}."
        )
    return policy_or_checkpoint, type(policy_or_checkpoint).__name__, {}


def inspect_policy(
    policy_or_checkpoint: Any,
    out_dir: str | os.PathLike[str],
    env_id: str = "LTC/LaneKeeping-v0",
    seed: int = 0,
    steps: int = 600,
    config: InspectConfig | None = None,
    env: Any = None,
) -> InspectionResult:
    """Record a rollout of a policy and write every plot, saliency, optional ablations and an HTML report.

    Args:
        policy_or_checkpoint: an ``ltc_control.policy.Policy`` or a checkpoint folder.
        out_dir: output folder.
        env_id: env of the recorded rollout (overrides ``config.env``).
        seed: road seed (overrides ``config.seed``).
        steps: step cap of the rollout (overrides ``config.steps``).
        config: every other option (:class:`InspectConfig`; its ``out``/``env``/``seed``/``steps`` are
            replaced by the arguments above).
        env: an already-built env to use instead of creating ``env_id`` (it is not closed).

    Returns:
        The :class:`InspectionResult` (paths and the numbers of the summary).
    """
    import dataclasses

    cfg = dataclasses.replace(config or InspectConfig(), out=str(out_dir), env=env_id, seed=seed, steps=steps)
    if cfg.steps < 2:
        raise ValueError(
            f"steps must be >= 2 (PCA and step-to-step changes need two steps); got {cfg.steps}."
        )
    if cfg.saliency_frames < 0:
        raise ValueError(f"saliency_frames must be >= 0; got {cfg.saliency_frames}.")
    if cfg.threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = leave torch's setting); got {cfg.threads}.")
    import torch

    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _inspect(policy_or_checkpoint, cfg, env)
    finally:
        torch.set_num_threads(previous_threads)


def _output_semantics(policy: Any) -> str:
    """How the recorded motor column becomes the action, for this policy's cell and action head."""
    cell = policy.controller.cell
    if hasattr(cell, "output_w") and hasattr(cell, "wiring"):
        readout = "readout = output_w * v[:M] + output_b (motor neurons; mapping as configured)"
    else:
        readout = f"readout = {type(cell).__name__}.readout(h)"
    squash = getattr(getattr(getattr(policy, "config", None), "action_head", None), "squash", None)
    if squash == "tanh":
        head = "action = tanh(action_scale * readout + action_bias)"
    elif squash == "none":
        head = "action = action_scale * readout + action_bias"
    else:
        head = "action = the policy's action head applied to the readout"
    return f"{head}; {readout}"


def _inspect(policy_or_checkpoint: Any, cfg: InspectConfig, env: Any) -> InspectionResult:
    import dataclasses

    started = time.time()
    out = Path(cfg.out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    policy, source, ckpt_metadata = _load_policy(policy_or_checkpoint, cfg.device)
    env_kwargs = dict(cfg.env_kwargs)
    trained_kwargs = _training_env_kwargs(ckpt_metadata)
    if not env_kwargs and trained_kwargs:
        # the camera size etc. must match what the policy was trained on; the checkpoint says what that was
        env_kwargs = trained_kwargs
    own_env = env is None
    env = _make_env(cfg.env, env_kwargs) if own_env else env
    try:
        trace, episode = record_rollout(
            policy,
            env,
            seed=cfg.seed,
            steps=cfg.steps,
            keep_observations=True,
            metadata={"source": source, "env": cfg.env, "env_kwargs": env_kwargs},
            progress=cfg.progress,
        )
        if trace.num_steps < 2:
            raise ValueError(
                f"The rollout on road seed {cfg.seed} ended after {trace.num_steps} step(s); the analyses "
                "need at least 2. Try another --seed or check the policy."
            )
        trace_path = trace.save(out / "trace.npz")
        figures, skipped = plot_all(trace, fig_dir, formats=cfg.formats)
        captions = {name: caption for name, (_, caption) in PLOTS.items()}
        notes = [f"{name} not drawn: {why}" for name, why in skipped.items()]
        for neuron in cfg.map_neurons:
            index = trace.neuron_index(neuron)  # KeyError names the valid neurons
            name = f"activity_on_road_{trace.neuron_names[index]}"
            try:
                fig = activity_on_road_figure(trace, neuron=index)
            except ValueError as exc:
                skipped[name] = str(exc)
                continue
            figures[name] = [save_figure(fig, fig_dir / f"{name}.{f}") for f in cfg.formats]
            captions[name] = f"{trace.neuron_names[index]} state along the driven trajectory."

        summary: dict[str, Any] = {
            "policy": source,
            "cell": trace.metadata.get("cell", ""),
            "neurons": trace.num_neurons,
            "synapses": int(np.count_nonzero(trace.adjacency) + np.count_nonzero(trace.sensory_adjacency))
            if trace.adjacency is not None and trace.sensory_adjacency is not None
            else "dense",
            "env": cfg.env,
            "env kwargs": json.dumps(env_kwargs, default=str),
            "road seed": cfg.seed,
            "steps recorded": trace.num_steps,
        }
        metrics = episode.metrics().to_dict()
        for key in (
            "distance_m",
            "departures",
            "mean_abs_lateral_m",
            "max_abs_lateral_m",
            "steering_smoothness",
        ):
            summary[f"episode {key}"] = metrics.get(key)
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
            summary["neuron most correlated with steering"] = (
                f"{trace.neuron_names[best]} (r = {c[best]:+.3f})"
            )
        if trace.tau is not None:
            summary["tau range (time units)"] = f"{trace.tau.min():.4g} .. {trace.tau.max():.4g}"
        summary["output semantics"] = _output_semantics(policy)

        video_path: Path | None = None
        image_policy = getattr(policy, "perception", None) is not None and trace.observations is not None
        frames = trace.observations[: cfg.saliency_frames] if trace.observations is not None else None
        if image_policy and frames is not None and frames.shape[0] > 0:
            maps = {"VisualBackprop": policy_saliency(policy, frames, "visual_backprop")}
            if trace.state.shape[1] == int(policy.controller.cell.state_size):
                before = np.vstack([np.zeros((1, trace.state.shape[1])), trace.state[:-1]])[: frames.shape[0]]
                maps["input gradient"] = policy_saliency(policy, frames, "gradient", states=before)
            fig = _saliency_samples_figure(frames, maps)
            figures["saliency_samples"] = [
                save_figure(fig, fig_dir / f"saliency_samples.{f}") for f in cfg.formats
            ]
            captions["saliency_samples"] = (
                "Camera frames with VisualBackprop and input-gradient saliency overlays."
            )
            if cfg.video:
                main_maps = maps[
                    "VisualBackprop" if cfg.saliency_method == "visual_backprop" else "input gradient"
                ]
                video_path, codec = write_saliency_video(frames, main_maps, out / "saliency.mp4", fps=30.0)
                summary["saliency video codec"] = codec
            if cfg.noise:
                ssims = saliency_robustness(
                    policy,
                    frames,
                    cfg.noise,
                    seed=cfg.noise_seed,
                    num_frames=cfg.saliency_frames,
                    method=cfg.saliency_method,
                )
                fig = _ssim_figure(ssims, cfg.saliency_method)
                figures["saliency_ssim"] = [
                    save_figure(fig, fig_dir / f"saliency_ssim.{f}") for f in cfg.formats
                ]
                captions["saliency_ssim"] = (
                    f"SSIM between clean and noisy saliency over {frames.shape[0]} frames "
                    "(C1=(0.01 L)^2, C2=(0.03 L)^2, L=255)."
                )
                for variance, values in ssims.items():
                    summary[f"saliency SSIM, noise variance {variance:g}"] = float(values.mean())
        elif not image_policy:
            notes.append("saliency not computed: the policy has no camera input")

        table: AblationTable | None = None
        tables: list[tuple[str, AblationTable]] = []
        evaluator = closed_loop_evaluator(env, cfg.ablation_seeds, max_steps=cfg.ablation_steps)
        if cfg.clamp or cfg.cut:
            clamp: dict[int | str, float] = {str(k): float(v) for k, v in cfg.clamp.items()}
            effect = perturbation_effect(
                policy, evaluator, clamp=clamp, cut=[parse_synapse(c) for c in cfg.cut]
            )
            effect.save(out / "perturbation.csv")
            tables.append(
                (
                    f"Chosen perturbation (closed loop, road seeds {list(cfg.ablation_seeds)}, "
                    f"{cfg.ablation_steps} steps each)",
                    effect,
                )
            )
        if cfg.ablation:
            table = ablation_table(policy, evaluator, value=cfg.ablation_value, progress=cfg.progress)
            table.save(out / "ablation.csv")
            figures["ablation"] = [
                table.plot(fig_dir / f"ablation.{f}", metric="mean_abs_lateral_m") for f in cfg.formats
            ]
            captions["ablation"] = (
                f"Change in mean |lateral error| when each neuron is clamped to {cfg.ablation_value:g} "
                f"(road seeds {list(cfg.ablation_seeds)}, {cfg.ablation_steps} steps each)."
            )
            tables.append(("Single-neuron ablations (closed loop)", table))
    finally:
        if own_env:
            env.close()

    summary["wall time (s)"] = round(time.time() - started, 1)
    _write_json(
        out / "summary.json", {"summary": summary, "skipped": skipped, "config": dataclasses.asdict(cfg)}
    )
    pngs = [
        (name, next(p for p in paths if p.suffix == ".png"), captions.get(name, name))
        for name, paths in figures.items()
        if any(p.suffix == ".png" for p in paths)
    ]
    if not pngs:
        notes.append("no PNG figures were written (formats without png): the page shows no images")
    page = write_html_report(
        out / "index.html",
        f"Neuron inspection: {source} on {cfg.env} (seed {cfg.seed})",
        pngs,
        summary,
        tables=tables,
        video=video_path,
        notes=notes,
    )
    return InspectionResult(
        out_dir=out,
        html=page,
        trace=trace_path,
        trace_data=trace,
        figures=figures,
        skipped=skipped,
        summary=summary,
        video=video_path,
        ablation=table,
    )


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
    _write_json(out / "summary.json", {"summary": summary, "skipped": skipped, "metadata": trace.metadata})
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


def build_inspect_parser(prog: str = "ltc-control inspect") -> Any:
    """The argument parser (generated from :class:`InspectConfig`) with the positional CHECKPOINT."""
    from ltc_control.config import make_parser

    parser = make_parser(
        InspectConfig, prog=prog, description="Record a rollout of a policy and write neuron plots + HTML."
    )
    parser.add_argument(
        "checkpoint",
        help="checkpoint folder (model.json + model.safetensors), or a saved trace.npz to re-draw (no env)",
    )
    return parser


def inspect_main(argv: Sequence[str] | None = None, prog: str = "ltc-control inspect") -> int:
    """Entry point of ``ltc-control inspect CHECKPOINT --out DIR [options]``.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        prog: program name for the usage line.

    Returns:
        The process exit code (0 on success; argparse exits with 2 on bad arguments).
    """
    from ltc_control.config import parse_args_and_config

    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_inspect_parser(prog)
    cfg, ns = parse_args_and_config(InspectConfig, args, parser)
    source = Path(ns.checkpoint)
    bad = [f for f in cfg.formats if f not in ("png", "svg", "pdf")]
    if bad:
        parser.error(f"unsupported --formats {bad}; choose from png, svg, pdf")
    if source.is_file() and source.suffix == ".npz":
        result = report_from_trace(source, cfg.out, formats=cfg.formats)
    elif source.is_dir():
        result = inspect_policy(source, cfg.out, env_id=cfg.env, seed=cfg.seed, steps=cfg.steps, config=cfg)
    else:
        parser.error(f"{ns.checkpoint!r} is neither a checkpoint folder nor a trace .npz file")
    print(f"recorded {result.trace_data.num_steps} steps of {result.trace_data.num_neurons} neurons")
    for key, value in result.summary.items():
        print(f"  {key}: {value}")
    print(f"wrote {result.html} ({sum(len(v) for v in result.figures.values())} figure files)")
    return 0
