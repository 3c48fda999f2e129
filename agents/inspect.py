"""The inspection pipeline: record a rollout of a policy in an env, then write every plot, saliency, optional
closed-loop ablations and one HTML page (``ltc-control inspect``).

``ltc-control inspect CHECKPOINT --out DIR`` (:func:`inspect_main`) and ``experiments/inspect_policy.py`` both
call :func:`inspect_policy`, which writes into ``DIR``: ``trace.npz``, ``figures/``, ``saliency.mp4``,
``ablation.csv`` (when asked), ``perturbation.csv`` (with ``clamp``/``cut``), ``summary.json`` and
``index.html`` (see :mod:`ltc_control.inspection.report`, which draws the report from the recorded trace).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ltc_control.agents.episode import PolicyAgent, make_env, resolve_env, run_episode
from ltc_control.checkpoint import load_checkpoint
from ltc_control.config import make_parser, parse_args_and_config
from ltc_control.inspection.perturbation import (
    AblationTable,
    ablation_table,
    parse_synapse,
    perturbation_effect,
)
from ltc_control.inspection.plots import PLOTS, plot_all
from ltc_control.inspection.recorder import record
from ltc_control.inspection.report import (
    InspectionResult,
    analysis_summary,
    draw_neuron_maps,
    output_semantics,
    report_from_trace,
    write_inspection_page,
    write_json,
    write_saliency_outputs,
)
from ltc_control.inspection.trace import Trace
from ltc_control.outputs import claim_output

__all__ = [
    "InspectConfig",
    "build_inspect_parser",
    "closed_loop_evaluator",
    "inspect_main",
    "inspect_policy",
    "record_rollout",
]


@dataclass(frozen=True)
class InspectConfig:
    """Options of ``ltc-control inspect`` and ``experiments/inspect_policy.py``.

    Args:
        out: output folder (created; files inside are replaced atomically).
        env: Gymnasium env id of the recorded rollout; empty: the env the checkpoint was trained in
            (``metadata.train_config.env``), else ``LTC/LaneKeeping-v0``.
        env_kwargs: keyword arguments of the env (e.g. ``{road_length: 200}``); they override the checkpoint's
            training env kwargs key by key (used when the env is the training env), as in ``rollout`` and
            ``evaluate``.
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
        rerun: also write ``recording.rrd``, a Rerun recording of the rollout (camera with the
            VisualBackprop overlay, steering of the policy and the expert, lateral error, speed, every
            neuron's state and tau, the road map, the wiring graph); open it with
            ``rerun DIR/recording.rrd`` (needs ``pip install 'ltc-control[rerun]'``).
    """

    out: str = "inspection"
    env: str = ""
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
    rerun: bool = False


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
        ``(trace, episode)``: the :class:`Trace` and the :class:`~ltc_control.agents.episode.EpisodeResult`.
    """
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
    :func:`~ltc_control.agents.episode.run_episode`; the metrics are the means over the seeds of
    :data:`~ltc_control.inspection.perturbation.ABLATION_METRICS` (departures summed).

    Args:
        env: the env to drive.
        seeds: road seeds (held out from training).
        max_steps: step cap per episode.
        noise: image noise variance (None = clean).
    """
    if not seeds:
        raise ValueError("closed_loop_evaluator needs at least one road seed.")

    def evaluate(policy: Any) -> dict[str, float]:
        agent = PolicyAgent(policy, device=_device_of(policy))
        results = [run_episode(env, agent, int(s), noise=noise, max_steps=max_steps) for s in seeds]
        return _mean_metrics([r.metrics() for r in results])

    return evaluate


def _load_policy(policy_or_checkpoint: Any, device: str) -> tuple[Any, str, dict[str, Any]]:
    if isinstance(policy_or_checkpoint, str | os.PathLike):
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
    env_id: str | None = None,
    seed: int = 0,
    steps: int = 600,
    config: InspectConfig | None = None,
    env: Any = None,
) -> InspectionResult:
    """Record a rollout of a policy and write every plot, saliency, optional ablations and an HTML report.

    Args:
        policy_or_checkpoint: an ``ltc_control.policy.Policy`` or a checkpoint folder.
        out_dir: output folder.
        env_id: env of the recorded rollout (overrides ``config.env``); None / empty: ``config.env``, else the
            checkpoint's training env, else ``LTC/LaneKeeping-v0``.
        seed: road seed (overrides ``config.seed``).
        steps: step cap of the rollout (overrides ``config.steps``).
        config: every other option (:class:`InspectConfig`; its ``out``/``env``/``seed``/``steps`` are
            replaced by the arguments above).
        env: an already-built env to use instead of creating ``env_id`` (it is not closed).

    Returns:
        The :class:`InspectionResult` (paths and the numbers of the summary).
    """
    cfg = config or InspectConfig()
    cfg = dataclasses.replace(cfg, out=str(out_dir), env=env_id or cfg.env, seed=seed, steps=steps)
    if cfg.steps < 2:
        raise ValueError(
            f"steps must be >= 2 (PCA and step-to-step changes need two steps); got {cfg.steps}."
        )
    if cfg.saliency_frames < 0:
        raise ValueError(f"saliency_frames must be >= 0; got {cfg.saliency_frames}.")
    if cfg.threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = leave torch's setting); got {cfg.threads}.")
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _inspect(policy_or_checkpoint, cfg, env)
    finally:
        torch.set_num_threads(previous_threads)


def _inspect(policy_or_checkpoint: Any, cfg: InspectConfig, env: Any) -> InspectionResult:
    started = time.time()
    out = Path(cfg.out)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    policy, source, _ = _load_policy(policy_or_checkpoint, cfg.device)
    # the camera size etc. must match what the policy was trained on; the checkpoint says what that was
    env_id, env_kwargs = resolve_env(policy_or_checkpoint, cfg.env or None, cfg.env_kwargs)
    cfg = dataclasses.replace(cfg, env=env_id)
    own_env = env is None
    env = make_env(cfg.env, env_kwargs) if own_env else env
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
        maps, maps_skipped, maps_captions = draw_neuron_maps(trace, fig_dir, cfg.formats, cfg.map_neurons)
        figures.update(maps)
        skipped.update(maps_skipped)
        captions.update(maps_captions)
        summary = _rollout_summary(trace, source, cfg, env_kwargs, episode.metrics().to_dict())
        summary.update(analysis_summary(trace))
        summary["output semantics"] = output_semantics(policy)

        video_path: Path | None = None
        image_policy = getattr(policy, "perception", None) is not None and trace.observations is not None
        if image_policy:
            video_path = write_saliency_outputs(
                policy,
                trace,
                out,
                num_frames=cfg.saliency_frames,
                method=cfg.saliency_method,
                video=cfg.video,
                noise=cfg.noise,
                noise_seed=cfg.noise_seed,
                formats=cfg.formats,
                figures=figures,
                captions=captions,
                summary=summary,
            )
        else:
            notes.append("saliency not computed: the policy has no camera input")
        if cfg.rerun:
            summary["rerun recording"] = str(_write_rerun(trace, out, cfg, policy if image_policy else None))
        table, tables = _closed_loop_tables(policy, env, cfg, out, figures, captions)
    finally:
        if own_env:
            env.close()

    summary["wall time (s)"] = round(time.time() - started, 1)
    write_json(
        out / "summary.json", {"summary": summary, "skipped": skipped, "config": dataclasses.asdict(cfg)}
    )
    page = write_inspection_page(
        out / "index.html",
        f"Neuron inspection: {source} on {cfg.env} (seed {cfg.seed})",
        figures,
        captions,
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


def _rollout_summary(
    trace: Trace, source: str, cfg: InspectConfig, env_kwargs: Mapping[str, Any], metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """The first rows of the summary: what was recorded, and the episode's closed-loop metrics."""
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
    for key in ("distance_m", "departures", "mean_abs_lateral_m", "max_abs_lateral_m", "steering_smoothness"):
        summary[f"episode {key}"] = metrics.get(key)
    return summary


def _closed_loop_tables(
    policy: Any,
    env: Any,
    cfg: InspectConfig,
    out: Path,
    figures: dict[str, list[Path]],
    captions: dict[str, str],
) -> tuple[AblationTable | None, list[tuple[str, AblationTable]]]:
    """The chosen clamp/cut comparison and the single-neuron ablation table (closed loop, when asked).

    Returns:
        ``(ablation table or None, [(heading, table)] for the page)``; the ablation figure is added to
        ``figures`` / ``captions``.
    """
    table: AblationTable | None = None
    tables: list[tuple[str, AblationTable]] = []
    evaluator = closed_loop_evaluator(env, cfg.ablation_seeds, max_steps=cfg.ablation_steps)
    if cfg.clamp or cfg.cut:
        clamp: dict[int | str, float] = {str(k): float(v) for k, v in cfg.clamp.items()}
        effect = perturbation_effect(policy, evaluator, clamp=clamp, cut=[parse_synapse(c) for c in cfg.cut])
        effect.save(out / "perturbation.csv")
        tables.append(
            (
                f"Chosen perturbation (closed loop, road seeds {list(cfg.ablation_seeds)}, "
                f"{cfg.ablation_steps} steps each)",
                effect,
            )
        )
    if cfg.ablation:
        fig_dir = out / "figures"
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
    return table, tables


def build_inspect_parser(prog: str = "ltc-control inspect") -> Any:
    """The argument parser (generated from :class:`InspectConfig`) with the positional CHECKPOINT."""
    parser = make_parser(
        InspectConfig, prog=prog, description="Record a rollout of a policy and write neuron plots + HTML."
    )
    parser.add_argument(
        "checkpoint",
        help="checkpoint folder (model.json + model.safetensors), or a saved trace.npz to re-draw (no env)",
    )
    return parser


def _write_rerun(trace: Trace, out: Path, cfg: InspectConfig, image_policy: Any = None) -> Path:
    """``out/recording.rrd`` from the trace; with an image policy, its VisualBackprop maps as the overlay."""
    from ltc_control.agents.rerun_capture import expert_steering
    from ltc_control.inspection.rerun_log import record_rerun
    from ltc_control.inspection.saliency import policy_saliency

    maps = None
    if image_policy is not None and trace.observations is not None and cfg.saliency_frames > 0:
        maps = policy_saliency(image_policy, trace.observations[: cfg.saliency_frames], "visual_backprop")
    steer = expert_steering(trace) if cfg.env.startswith("LTC/") else None
    return record_rerun(trace, out / "recording.rrd", saliency=maps, expert_steering=steer)


def inspect_main(argv: Sequence[str] | None = None, prog: str = "ltc-control inspect") -> int:
    """Entry point of ``ltc-control inspect CHECKPOINT --out DIR [options]``.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).
        prog: program name for the usage line.

    Returns:
        The process exit code (0 on success; argparse exits with 2 on bad arguments).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_inspect_parser(prog)
    parser.add_argument("--overwrite", action="store_true", help="replace the results in the --out folder")
    cfg, ns = parse_args_and_config(InspectConfig, args, parser)
    source = Path(ns.checkpoint)
    bad = [f for f in cfg.formats if f not in ("png", "svg", "pdf")]
    if bad:
        parser.error(f"unsupported --formats {bad}; choose from png, svg, pdf")
    if not (source.is_dir() or (source.is_file() and source.suffix == ".npz")):
        parser.error(f"{ns.checkpoint!r} is neither a checkpoint folder nor a trace .npz file")
    with claim_output(cfg.out, overwrite=ns.overwrite, resume=None):
        if source.is_file():
            result = report_from_trace(source, cfg.out, formats=cfg.formats)
            if cfg.rerun:
                result.summary["rerun recording"] = str(_write_rerun(result.trace_data, Path(cfg.out), cfg))
        else:
            result = inspect_policy(
                source, cfg.out, env_id=cfg.env, seed=cfg.seed, steps=cfg.steps, config=cfg
            )
    print(f"recorded {result.trace_data.num_steps} steps of {result.trace_data.num_neurons} neurons")
    for key, value in result.summary.items():
        print(f"  {key}: {value}")
    print(f"wrote {result.html} ({sum(len(v) for v in result.figures.values())} figure files)")
    return 0
