"""The study's outputs: ``<results_dir>/<name>.md`` (tables), ``<name>.csv`` (per model, seed and condition)
and plots ``<name>_*.png``, all read back from the finished trial folders (nothing is recomputed here).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.agents.study.config import StudyConfig
from ltc_control.agents.study.runner import plan_tuning, select_lr, study_dir
from ltc_control.agents.study.stats import (
    Interval,
    condition_summary,
    fmt_number,
    paired_difference,
    seed_interval,
)
from ltc_control.agents.study.trials import Trial, eval_trial, load_result, train_trial
from ltc_control.runs import atomic_write_bytes, atomic_write_text

__all__ = ["ModelData", "StudyData", "gather", "write_report"]


@dataclass
class ModelData:
    """The finished results of one model."""

    name: str
    label: str
    lr: float | None
    candidates: dict[float, float | None] = field(default_factory=dict)
    train: dict[int, dict[str, Any]] = field(default_factory=dict)
    eval: dict[int, dict[str, Any]] = field(default_factory=dict)

    def episodes(self, seed: int, condition: str) -> list[dict[str, Any]]:
        return [r for r in self.eval[seed]["episodes"] if r["condition"] == condition]

    def per_seed(self, condition: str, key: str) -> list[float]:
        return [condition_summary(self.episodes(s, condition))[key] for s in sorted(self.eval)]

    def scalar(self, key: str, source: str = "train") -> list[float]:
        src = self.train if source == "train" else self.eval
        return [float(v[key]) if v.get(key) is not None else math.nan for _, v in sorted(src.items())]


@dataclass
class StudyData:
    """Everything the report shows."""

    config: StudyConfig
    models: list[ModelData]
    conditions: list[str]
    noise_levels: list[float]
    trials_done: int
    trials_total: int
    timing: dict[str, Any]


def _shift_text(s: Any) -> str:
    parts = []
    if s.brightness:
        parts.append(f"brightness {s.brightness:+g}")
    if s.blur_sigma:
        parts.append(f"Gaussian blur {s.blur_sigma:g} px")
    if s.occlusion_patches:
        parts.append(f"{s.occlusion_patches} black patches of {100 * s.occlusion_size:g}% of the image side")
    if s.noise_variance:
        parts.append(f"noise variance {s.noise_variance:g}")
    return ", ".join(parts) or "no change"


def gather(config: StudyConfig) -> StudyData:
    """Read every finished trial of the study from disk."""
    root = study_dir(config)
    tuning = plan_tuning(config)
    models = []
    done = 0
    cpu = wall = 0.0
    for p in (root / "trials").glob("*/result.json"):
        doc = json.loads(p.read_text())
        cpu += float(doc.get("cpu_seconds") or 0.0)
        wall += float(doc.get("wall_seconds") or 0.0)
    for m in config.models:
        cands = {t.lr: load_result(root / "trials" / t.folder, t.id) for t in tuning[m.name]}
        done += sum(r is not None for r in cands.values())
        md = ModelData(m.name, m.display, None, {lr: (r or {}).get("val_mse") for lr, r in cands.items()})
        if all(r is not None for r in cands.values()):
            md.lr = select_lr(config, {lr: r for lr, r in cands.items() if r is not None})
            for seed in range(config.seeds):
                t: Trial = train_trial(config, m.name, seed, md.lr)
                tr = load_result(root / "trials" / t.folder, t.id)
                if tr is None:
                    continue
                if seed != config.tuning.seed:
                    done += 1
                md.train[seed] = tr
                et = eval_trial(config, t)
                er = load_result(root / "trials" / et.folder, et.id)
                if er is not None:
                    md.eval[seed] = er
                    done += 1
        models.append(md)
    timing_path = root / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    timing["trial_cpu_seconds"] = cpu
    timing["trial_wall_seconds"] = wall
    total = sum(len(v) for v in tuning.values()) + len(config.models) * (2 * config.seeds - 1)
    return StudyData(
        config=config,
        models=models,
        conditions=[c["name"] for c in config.conditions()],
        noise_levels=[float(v) for v in config.evaluation.noise_levels],
        trials_done=done,
        trials_total=total,
        timing=timing,
    )


# ------------------------------------------------------------------------------------------------- tables
def _breaking_point(md: ModelData, levels: list[float]) -> str:
    """Smallest noise variance at which fewer than half of the test episodes (all seeds) are completed."""
    if not md.eval:
        return "n/a"
    for v in sorted(levels):
        rate = np.mean(md.per_seed(f"noise{v:g}", "completion"))
        if rate < 0.5:
            return f"{v:g}"
    return f"> {max(levels):g}"


def _grid(md: ModelData, condition: str, key: str, seeds: list[int], roads: list[int]) -> np.ndarray:
    out = np.full((len(seeds), len(roads)), np.nan)
    for i, s in enumerate(seeds):
        for r in md.episodes(s, condition):
            if r["road"] in roads:
                v = r.get(key)
                out[i, roads.index(r["road"])] = float(v) if v is not None else np.nan
    return out


def _paired(md: ModelData, ref: ModelData, condition: str, metric: str, roads: list[int]) -> Interval:
    seeds = sorted(set(md.eval) & set(ref.eval))
    if not seeds:
        return Interval(math.nan, math.nan, math.nan, 0)
    if metric == "departures_per_km":
        return paired_difference(
            _grid(md, condition, "departures", seeds, roads),
            _grid(ref, condition, "departures", seeds, roads),
            _grid(md, condition, "km", seeds, roads),
            _grid(ref, condition, "km", seeds, roads),
        )
    key = {"completion": "completed"}.get(metric, metric)
    return paired_difference(
        _grid(md, condition, key, seeds, roads), _grid(ref, condition, key, seeds, roads)
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def headline_table(data: StudyData) -> str:
    """Means over seeds with 95% intervals: the README table."""
    levels = data.noise_levels
    hi = [v for v in levels if v > 0]
    cols = ["model", "seeds", "test MSE", "completed (clean)", "dep./km clean"]
    picks = [v for v in (0.1, 0.2, 0.3) if v in hi] or hi[-1:]
    cols += [f"dep./km @{v:g}" for v in picks]
    cols += [
        "breaking point (noise var.)",
        "mean abs lat. clean (m)",
        "SSIM @0.3",
        "PC1 share",
        "ctrl. params",
    ]
    rows = []
    for md in data.models:
        if not md.train:
            rows.append([md.label, "0"] + ["n/a"] * (len(cols) - 2))
            continue
        row = [md.label, str(len(md.eval))]
        row.append(seed_interval(md.scalar("test_mse")).fmt(2))
        row.append(seed_interval(md.per_seed("noise0", "completion")).fmt(pct=True) if md.eval else "n/a")
        for cond in ["noise0"] + [f"noise{v:g}" for v in picks]:
            row.append(seed_interval(md.per_seed(cond, "departures_per_km")).fmt(2) if md.eval else "n/a")
        row.append(_breaking_point(md, levels))
        row.append(seed_interval(md.per_seed("noise0", "mean_abs_lateral_m")).fmt(2) if md.eval else "n/a")
        ssim = [e.get("saliency_ssim", {}).get("0.3") for _, e in sorted(md.eval.items())]
        row.append(seed_interval([v for v in ssim if v is not None]).fmt(2))
        row.append(seed_interval(md.scalar("pc1_share", "eval")).fmt(2) if md.eval else "n/a")
        row.append(f"{int(md.scalar('controller_parameters')[0]):,}")
        rows.append(row)
    return _table(cols, rows)


def _condition_table(data: StudyData, metric: str, digits: int = 2, pct: bool = False) -> str:
    header = ["model"] + data.conditions
    rows = []
    for md in data.models:
        row = [md.label]
        for c in data.conditions:
            row.append(seed_interval(md.per_seed(c, metric)).fmt(digits, pct=pct) if md.eval else "n/a")
        rows.append(row)
    return _table(header, rows)


def _paired_table(data: StudyData, metric: str, conditions: list[str], pct: bool = False) -> str:
    ref = next(m for m in data.models if m.name == data.config.reference)
    ev = data.config.evaluation
    roads = list(range(ev.seed_start, ev.seed_start + ev.num_roads))
    rows = []
    for md in data.models:
        if md is ref:
            continue
        row = [md.label]
        for c in conditions:
            iv = _paired(md, ref, c, metric, roads)
            if pct and math.isfinite(iv.value):
                row.append(f"{100 * iv.value:+.0f} pp [{100 * iv.lo:+.0f}, {100 * iv.hi:+.0f}]")
            else:
                row.append("n/a" if not math.isfinite(iv.value) else _signed_interval(iv))
        rows.append(row)
    return _table(["model - " + ref.label] + conditions, rows)


def _notes(data: StudyData, root: Path) -> list[str]:
    """Facts worth a sentence: conditions that separate nothing, and the run's own notes file."""
    lines = []
    evald = [m for m in data.models if m.eval]
    flat = [
        c
        for c in data.conditions[1:]
        if evald and all(v == 0 for m in evald for v in m.per_seed(c, "departures_per_km"))
    ]
    if flat:
        lines.append(
            f"- No model left the road under {', '.join(f'`{c}`' for c in flat)}: at this preset's "
            "strength these "
            "conditions separate nothing."
        )
    notes = root / "notes.md"
    if notes.is_file():
        lines += [line for line in notes.read_text().splitlines() if line.strip()]
    return ["## Notes", "", *lines, ""] if lines else []


def _signed_interval(iv: Interval) -> str:
    def s(x: float) -> str:
        text = fmt_number(x, 2)
        return text if text.startswith("-") or text == "0" else "+" + text

    return f"{s(iv.value)} [{s(iv.lo)}, {s(iv.hi)}]"


def _mse_paired(data: StudyData) -> str:
    ref = next(m for m in data.models if m.name == data.config.reference)
    rows = []
    for md in data.models:
        if md is ref:
            continue
        seeds = sorted(set(md.train) & set(ref.train))
        if not seeds:
            rows.append([md.label, "n/a"])
            continue
        d = [float(md.train[s]["test_mse"]) - float(ref.train[s]["test_mse"]) for s in seeds]
        rows.append([md.label, seed_interval(d).fmt(2)])
    return _table(["model - " + ref.label, "test MSE difference (paired by seed, t interval)"], rows)


def _cost_table(data: StudyData) -> str:
    header = [
        "model",
        "chosen lr (val. MSE per candidate)",
        "ctrl. params",
        "effective",
        "synapses",
        "neurons",
        "train CPU time (s)",
        "train wall time (s)",
        "inference per step (us, batch 1)",
        "Lipschitz mean",
        "SSIM @0.1/0.2/0.3",
    ]
    rows = []
    for md in data.models:
        cands = ", ".join(
            f"{lr:g}: {v:.4f}" if v is not None else f"{lr:g}: n/a" for lr, v in md.candidates.items()
        )
        if not md.train:
            rows.append([md.label, cands] + ["n/a"] * (len(header) - 2))
            continue
        t0 = next(iter(md.train.values()))
        ssim = []
        for k in ("0.1", "0.2", "0.3"):
            ssim.append(
                seed_interval(
                    [
                        e.get("saliency_ssim", {}).get(k)
                        for e in md.eval.values()
                        if e.get("saliency_ssim", {}).get(k) is not None
                    ]
                ).fmt(2)
            )
        rows.append(
            [
                md.label,
                f"**{md.lr:g}** ({cands})",
                f"{t0['controller_parameters']:,}",
                f"{t0['controller_effective_parameters']:,}",
                str(t0["synapses"]) if t0.get("synapses") is not None else "dense",
                str(t0["neurons"]),
                seed_interval(md.scalar("cpu_seconds")).fmt(3),
                seed_interval(md.scalar("train_seconds")).fmt(3),
                seed_interval(md.scalar("inference_us", "eval")).fmt(3) if md.eval else "n/a",
                seed_interval(md.scalar("lipschitz_mean", "eval")).fmt(2) if md.eval else "n/a",
                " / ".join(ssim),
            ]
        )
    return _table(header, rows)


# ------------------------------------------------------------------------------------------------- plots
def _plots(data: StudyData, out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    levels = data.noise_levels
    evald = [m for m in data.models if m.eval]
    if not evald:
        return paths

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        p = out / f"{stem}_{name}.png"
        atomic_write_bytes(p, buf.getvalue())
        paths.append(p)

    for metric, ylabel, name in (
        ("departures_per_km", "lane departures per km", "departures_vs_noise"),
        ("mean_abs_lateral_m", "mean |lateral error| (m)", "lateral_vs_noise"),
        ("completion", "completed roads (fraction)", "completion_vs_noise"),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        for k, md in enumerate(evald):
            ivs = [seed_interval(md.per_seed(f"noise{v:g}", metric)) for v in levels]
            x = np.array(levels) + (k - len(evald) / 2) * 0.004
            y = np.array([iv.value for iv in ivs])
            top = 1.0 if metric == "completion" else math.inf
            err = np.array(
                [[iv.value - max(0.0, iv.lo) for iv in ivs], [min(top, iv.hi) - iv.value for iv in ivs]]
            )
            ax.errorbar(
                x,
                y,
                yerr=np.nan_to_num(err),
                marker="o",
                ms=4,
                capsize=2,
                label=md.label,
                lw=2.2 if md.name == data.config.reference else 1.2,
            )
        ax.set_xlabel("Gaussian noise variance on the [0, 1] image")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{data.config.name}: mean over seeds, 95% t intervals (clipped to the metric's range)")
        save(fig, name)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for md in evald:
        keys = sorted({k for e in md.eval.values() for k in e.get("saliency_ssim", {})}, key=float)
        if not keys:
            continue
        ivs = [
            seed_interval(
                [e["saliency_ssim"].get(k) for e in md.eval.values() if e["saliency_ssim"].get(k) is not None]
            )
            for k in keys
        ]
        ax.errorbar(
            [float(k) for k in keys],
            [iv.value for iv in ivs],
            yerr=np.nan_to_num(
                np.array([[iv.value - iv.lo for iv in ivs], [iv.hi - iv.value for iv in ivs]])
            ),
            marker="o",
            capsize=2,
            label=md.label,
        )
    ax.set_xlabel("noise variance")
    ax.set_ylabel("SSIM(clean, noisy) of VisualBackprop saliency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save(fig, "ssim_vs_noise")

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    ivs = [seed_interval(md.scalar("pc1_share", "eval")) for md in evald]
    ax.bar(
        range(len(evald)),
        [iv.value for iv in ivs],
        yerr=np.nan_to_num(np.array([[iv.value - iv.lo for iv in ivs], [iv.hi - iv.value for iv in ivs]])),
        capsize=3,
    )
    ax.set_xticks(range(len(evald)), [md.label for md in evald], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("share of variance on PC1 (clean test roads)")
    ax.set_ylim(0, 1)
    save(fig, "pc1_share")

    hi = 0.3 if 0.3 in levels else max(levels)
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for md in evald:
        params = md.scalar("controller_parameters")[0]
        iv = seed_interval(md.per_seed(f"noise{hi:g}", "departures_per_km"))
        ax.errorbar(
            [params],
            [iv.value],
            yerr=[[iv.value - max(0.0, iv.lo)], [iv.hi - iv.value]] if math.isfinite(iv.lo) else None,
            marker="o",
            capsize=3,
            label=md.label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("controller parameters (log)")
    ax.set_ylabel(f"departures per km at noise variance {hi:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "params_vs_departures")
    return paths


# ------------------------------------------------------------------------------------------------- write
def _csv_rows(data: StudyData) -> list[dict[str, Any]]:
    rows = []
    for md in data.models:
        for seed, ev in sorted(md.eval.items()):
            tr = md.train.get(seed, {})
            base = {
                "model": md.name,
                "label": md.label,
                "seed": seed,
                "lr_controller": md.lr,
                "test_mse": tr.get("test_mse"),
                "val_mse": tr.get("val_mse"),
                "train_seconds": tr.get("train_seconds"),
                "controller_parameters": tr.get("controller_parameters"),
                "controller_effective_parameters": tr.get("controller_effective_parameters"),
                "synapses": tr.get("synapses"),
                "neurons": tr.get("neurons"),
                "pc1_share": ev.get("pc1_share"),
                "lipschitz_mean": ev.get("lipschitz_mean"),
                "inference_us": ev.get("inference_us"),
                **{f"saliency_ssim@{k}": v for k, v in ev.get("saliency_ssim", {}).items()},
            }
            for cond in data.conditions:
                rows.append({**base, "condition": cond, **condition_summary(md.episodes(seed, cond))})
    return rows


def _machine() -> str:
    try:
        load = os.getloadavg()
        load_txt = f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} when the report was written"
    except OSError:
        load_txt = "load n/a"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()} ({cpu}, {os.cpu_count()} logical CPUs), {load_txt}"


def write_report(config: StudyConfig, started: float | None = None) -> list[Path]:
    """Write ``<results_dir>/<name>.md``, ``.csv`` and the plots from the finished trials.

    Args:
        config: the study.
        started: unused (kept for callers that time the call).

    Returns:
        The written paths.
    """
    from ltc_control.config import to_yaml
    from ltc_control.runs import versions

    data = gather(config)
    out = Path(config.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = config.name
    rows = _csv_rows(data)
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    csv_path = out / f"{stem}.csv"
    atomic_write_text(csv_path, buf.getvalue())
    plots = _plots(data, out, stem)
    v = versions()
    ev = config.evaluation
    timing = data.timing
    wall = timing.get("total_seconds")
    conds = data.conditions
    noise_conds = [c for c in conds if c.startswith("noise")]
    shift_conds = [c for c in conds if not c.startswith("noise")]
    md = [
        f"# NCP study: `{config.name}`",
        "",
        f"- Date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; trials finished "
        f"{data.trials_done} / {data.trials_total}"
        + (
            f"; study wall time {wall / 60:.1f} min over {len(timing.get('calls', []))} call(s) of "
            "`ltc-control study`"
            if wall
            else ""
        ),
        f"- Time: the finished trials used {timing['trial_cpu_seconds'] / 60:.0f} CPU-minutes in all "
        f"({timing['trial_wall_seconds'] / 60:.0f} minutes of trial wall time across the workers), "
        "i.e. about "
        f"{timing['trial_cpu_seconds'] / 60 / max(1, config.workers):.0f} minutes of wall time on "
        f"{config.workers} otherwise idle cores (plus dataset collection and process start-up).",
        f"- Machine: {_machine()}",
        f"- Versions: python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, mujoco {v['mujoco']}, "
        f"gymnasium {v['gymnasium']}, ltc-control {v['ltc-control']}",
        f"- Command: `ltc-control study --config experiments/configs/{config.name}.yaml`",
        "",
        "## Protocol",
        "",
        f"- One shared noisy-expert dataset: {config.demos.num_roads} roads (seeds "
        f"{config.demos.seed_start}.."
        f"{config.demos.seed_start + config.demos.num_roads - 1}), "
        f"{100 * config.demos.val_fraction:.0f}% of them "
        "(by seed) for validation; camera "
        f"{config.policy.image_shape[0]}x{config.policy.image_shape[1]}, roads of "
        f"{config.env.kwargs.get('road_length', 300.0):g} m. Every model gets the same perception "
        "head (the NCP "
        "paper's conv head, 32 features), the same action head and the same budget: "
        f"{config.bc.epochs} epochs of {config.bc.window}-step windows (batch {config.bc.batch_size}, "
        f"patience {config.bc.patience}), {config.dagger.rounds} DAgger rounds, perception lr "
        f"{config.bc.lr_perception:g}.",
        f"- Learning-rate choice, the same for every model: controller learning rate in "
        f"{{{', '.join(f'{x:g}' for x in config.tuning.lr_controller)}}} trained at seed "
        f"{config.tuning.seed}; "
        "the value with the lowest MSE on the validation roads' demonstrations is kept (never the "
        "test roads); "
        f"the other seeds (0..{config.seeds - 1}) train at that value only.",
        "- Offline test error: MSE of the steering on expert demonstrations of "
        f"{config.test_demos.num_roads} "
        f"held-out roads (seeds {config.test_demos.seed_start}..).",
        f"- Closed loop: {ev.num_roads} held-out test roads (seeds "
        f"{ev.seed_start}..{ev.seed_start + ev.num_roads - 1}) "
        "under every condition: Gaussian noise variance "
        f"{', '.join(f'{x:g}' for x in ev.noise_levels)} on the "
        "[0, 1] image (noise seed "
        f"{ev.noise_seed}, the same draws for every model), "
        + ", ".join(f"`{s.name}` ({_shift_text(s)})" for s in ev.shifts)
        + (", and the randomised-visuals env (`randomized`)" if ev.randomized_visuals else "")
        + ". A departure ends the episode. Episodes run in lockstep batches (`ltc_control.agents.lockstep`).",
        "- Intervals: over seeds, mean with a 95% Student-t interval. Paired differences: model minus "
        f"{config.reference}, paired by seed and test road, 95% crossed-bootstrap interval (seeds and roads "
        "resampled independently, 4000 resamples). Breaking point: the smallest noise variance at "
        "which fewer "
        "than half of the test episodes (all seeds) are completed.",
        "- Saliency SSIM: VisualBackprop maps of the first "
        f"{ev.saliency_frames} frames of the test demonstrations, clean vs noisy (SSIM with L = "
        "255). PC1 share "
        "and Lipschitz profile (per-neuron max step-to-step change, mean over neurons): neuron "
        "activity on the "
        "clean test roads.",
        "",
        "## Headline (mean [95% interval] over seeds)",
        "",
        headline_table(data),
        "",
        "## Departures per km by condition",
        "",
        _condition_table(data, "departures_per_km"),
        "",
        "## Completed test roads by condition",
        "",
        _condition_table(data, "completion", pct=True),
        "",
        "## Mean absolute lateral error (m) by condition",
        "",
        _condition_table(data, "mean_abs_lateral_m"),
        "",
        "## Max absolute lateral error (m, mean over roads) and steering smoothness (mean |delta "
        "steering|), clean",
        "",
        _table(
            ["model", "max abs lateral (m)", "steering smoothness"],
            [
                [
                    m.label,
                    seed_interval(m.per_seed("noise0", "max_abs_lateral_m")).fmt(3) if m.eval else "n/a",
                    seed_interval(m.per_seed("noise0", "steering_smoothness")).fmt(3) if m.eval else "n/a",
                ]
                for m in data.models
            ],
        ),
        "",
        f"## Paired differences against {config.reference}: departures per km",
        "",
        _paired_table(data, "departures_per_km", noise_conds + shift_conds),
        "",
        f"## Paired differences against {config.reference}: completed roads",
        "",
        _paired_table(data, "completion", noise_conds + shift_conds, pct=True),
        "",
        f"## Paired differences against {config.reference}: offline test MSE",
        "",
        _mse_paired(data),
        "",
        "## Learning rates, sizes and costs",
        "",
        "Train CPU time: the training trial's process CPU time (one torch thread; includes loading "
        "data and the "
        "offline MSE). Wall times and the batch-1 inference time (median of 5 blocks of `Policy.act` calls, "
        "perf_counter) were taken while other trials and other users' jobs shared the 2 cores, so they carry "
        "that load; compare them within this table only. Parameters: the controller with its input/output "
        "mappings (`effective` counts only the synapses the wiring uses); the shared perception head adds "
        "the same number to every model.",
        "",
        _cost_table(data),
        "",
        *_notes(data, study_dir(config)),
        "## Plots",
        "",
        *[f"![{p.stem}]({p.name})" for p in plots],
        "",
        "## Preset",
        "",
        "```yaml",
        to_yaml(config).rstrip(),
        "```",
        "",
    ]
    md_path = out / f"{stem}.md"
    atomic_write_text(md_path, "\n".join(md))
    del started
    return [md_path, csv_path, *plots]
