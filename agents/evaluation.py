"""Parallel closed-loop evaluation on held-out roads at several image-noise levels (DESIGN.md section 5).

:func:`evaluate` runs many (road seed, noise level) episodes (:func:`ltc_control.agents.episode.run_episode`)
in worker processes and returns an :class:`EvalReport` that writes JSON, CSV and a plot
(:func:`plot_crashes_per_km`). The metrics come from :mod:`ltc_control.agents.metrics`, the noise protocol
from :mod:`ltc_control.agents.perturbations`, the command line from :mod:`ltc_control.agents.evaluate_cli`.

Example:
    >>> from ltc_control.agents.episode import ConstantAgent
    >>> from ltc_control.agents.evaluation import evaluate
    >>> report = evaluate(ConstantAgent([0.0]), "LTC/LaneKeeping-v0", seeds=range(1000, 1004), workers=0)
    ... # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ltc_control.agents.episode import (
    Agent,
    AgentSpec,
    ConstantAgent,
    make_agent,
    make_env,
    run_episode,
    torch_threads,
)
from ltc_control.agents.metrics import EpisodeMetrics, LevelSummary, Stat, summarize_levels
from ltc_control.agents.perturbations import Perturbation
from ltc_control.runs import atomic_write_bytes

__all__ = ["EvalReport", "evaluate", "plot_crashes_per_km"]


_WORKER: dict[str, Any] = {}


def _worker_init(spec: AgentSpec, env_id: str, env_kwargs: dict[str, Any], device: str, threads: int) -> None:
    """Remember what to build; the env and the agent are built by the first episode of the worker.

    Building them there (not in the initializer) lets a failure (a corrupt checkpoint, a bad env option)
    reach the caller as the original exception through ``future.result()`` instead of a ``BrokenProcessPool``.
    Everything is built in the worker, never in a parent that forks: MuJoCo renderers must not cross a fork.
    """
    # Ctrl-C in a terminal reaches the whole process group: the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.clear()
    _WORKER["setup"] = (spec, env_id, env_kwargs, device, threads)


def _worker_objects() -> tuple[Any, Agent]:
    if "env" not in _WORKER:
        spec, env_id, env_kwargs, device, threads = _WORKER["setup"]
        _WORKER["env"] = make_env(env_id, env_kwargs)
        _WORKER["agent"] = make_agent(spec, device=device)
        # After the agent is built: only then is torch imported (ltc_control.envs does not import it), and a
        # worker left at torch's default threads oversubscribes the cores (about 7x slower episodes).
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(max(1, threads))  # see torch_threads: batch-1 inference, shared cores
    return _WORKER["env"], _WORKER["agent"]


def _worker_episode(
    seed: int, perturbation: Perturbation, max_steps: int | None, completion_tolerance: float
) -> EpisodeMetrics:
    env, agent = _worker_objects()
    result = run_episode(env, agent, seed, noise=perturbation, max_steps=max_steps)
    return result.metrics(completion_tolerance)


@dataclass
class EvalReport:
    """The result of :func:`evaluate`.

    Attributes:
        agent: a description of the evaluated agent.
        env_id: the env id.
        env_kwargs: keyword arguments of the env.
        seeds: road seeds.
        levels: one :class:`LevelSummary` per noise level, in the order asked.
        episodes: every episode's :class:`EpisodeMetrics`, sorted by (noise, seed).
        perturbation: the perturbation settings (without the per-level noise variance).
        elapsed_s: wall time of the evaluation, seconds.
    """

    agent: str
    env_id: str
    env_kwargs: dict[str, Any]
    seeds: list[int]
    levels: list[LevelSummary]
    episodes: list[EpisodeMetrics]
    perturbation: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def level(self, noise_variance: float) -> LevelSummary:
        """The summary of one noise level."""
        for lvl in self.levels:
            if math.isclose(lvl.noise_variance, noise_variance, abs_tol=1e-12):
                return lvl
        raise KeyError(
            f"no noise level {noise_variance}; levels: {[lv.noise_variance for lv in self.levels]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "agent": self.agent,
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "seeds": self.seeds,
            "perturbation": self.perturbation,
            "confidence_interval": "95% percentile bootstrap over episodes (2000 resamples, seed 0)",
            "elapsed_s": self.elapsed_s,
            "levels": [lv.to_dict() for lv in self.levels],
            "episodes": [ep.to_dict() for ep in self.episodes],
        }

    def table(self) -> str:
        """A plain-text table of the per-level metrics (value [95% CI])."""
        headers = [
            "noise var",
            "episodes",
            "crashes/km",
            "dist before dep (m)",
            "completion",
            "mean |lat| (m)",
            "max |lat| (m)",
            "mean |d steer|",
        ]
        rows = [
            [
                f"{lv.noise_variance:g}",
                str(lv.episodes),
                lv.crashes_per_km.fmt(2),
                lv.distance_before_departure_m.fmt(1),
                lv.completion_rate.fmt(2),
                lv.mean_abs_lateral_m.fmt(3),
                lv.max_abs_lateral_m.fmt(3),
                lv.steering_smoothness.fmt(4),
            ]
            for lv in self.levels
        ]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike[str], plot: bool = True) -> dict[str, Path]:
        """Write ``evaluation.json``, ``summary.csv``, ``episodes.csv`` and ``crashes_per_km.png`` atomically.

        Args:
            out_dir: the run folder (created if missing).
            plot: also write the PNG plot.

        Returns:
            Name -> path of every file written.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "json": out / "evaluation.json",
            "summary_csv": out / "summary.csv",
            "episodes_csv": out / "episodes.csv",
        }
        atomic_write_bytes(paths["summary_csv"], _csv_bytes([lv.flat() for lv in self.levels]))
        atomic_write_bytes(paths["episodes_csv"], _csv_bytes([dataclasses.asdict(e) for e in self.episodes]))
        if plot:
            paths["plot"] = out / "crashes_per_km.png"
            self.plot(paths["plot"])
        # the report last: where evaluation.json exists, every other file of the report does too
        atomic_write_bytes(paths["json"], json.dumps(self.to_dict(), indent=2, default=str).encode())
        return paths

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Plot crashes per km (with 95% CI) against the noise variance into a PNG file."""
        return plot_crashes_per_km([self], path)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EvalReport:
        """Rebuild a report from :meth:`to_dict` output (e.g. to compare saved evaluations)."""
        try:
            levels = []
            for lv in doc["levels"]:
                fields: dict[str, Any] = {}
                for f in dataclasses.fields(LevelSummary):
                    v = lv[f.name]
                    fields[f.name] = (
                        Stat(_nan(v["value"]), _nan(v["lo"]), _nan(v["hi"]))
                        if isinstance(v, Mapping)
                        else _nan(v)
                    )
                fields["episodes"], fields["departures"] = int(fields["episodes"]), int(fields["departures"])
                levels.append(LevelSummary(**fields))
            episodes = [
                EpisodeMetrics(**{f.name: _nan(ep[f.name]) for f in dataclasses.fields(EpisodeMetrics)})
                for ep in doc["episodes"]
            ]
            return cls(
                agent=str(doc["agent"]),
                env_id=str(doc["env_id"]),
                env_kwargs=dict(doc.get("env_kwargs") or {}),
                seeds=[int(x) for x in doc["seeds"]],
                levels=levels,
                episodes=episodes,
                perturbation=dict(doc.get("perturbation") or {}),
                elapsed_s=float(doc.get("elapsed_s") or 0.0),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"not an evaluation report ({exc!r} missing or malformed); pass the contents of an "
                "evaluation.json written by ltc-control evaluate"
            ) from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalReport:
        """Read an ``evaluation.json`` written by :meth:`save`."""
        p = Path(path)
        if p.is_dir():
            p = p / "evaluation.json"
        if not p.is_file():
            raise FileNotFoundError(
                f"evaluation report {str(p)!r} does not exist; run ltc-control evaluate first"
            )
        try:
            doc = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"evaluation report {str(p)!r} is not valid JSON ({exc}); re-run the evaluation"
            ) from exc
        return cls.from_dict(doc)


def _nan(value: Any) -> Any:
    """JSON null -> NaN for float fields (``to_dict`` writes NaN as null)."""
    return float("nan") if value is None else value


def plot_crashes_per_km(reports: Sequence[EvalReport], path: str | os.PathLike[str]) -> Path:
    """Plot crashes per km (95% CI error bars) against the noise variance for one or more models.

    Args:
        reports: evaluation reports, one line each (labelled by ``report.agent``).
        path: the PNG file to write (atomically).

    Returns:
        The path written.
    """
    # A bare Figure + Agg canvas: no pyplot global state, no backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("plot_crashes_per_km() needs at least one report")
    fig = Figure(figsize=(5, 3.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for rep in reports:
        x = np.asarray([lv.noise_variance for lv in rep.levels])
        y = np.asarray([lv.crashes_per_km.value for lv in rep.levels])
        lo = np.asarray([lv.crashes_per_km.lo for lv in rep.levels])
        hi = np.asarray([lv.crashes_per_km.hi for lv in rep.levels])
        yerr = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x, y, yerr=yerr, marker="o", capsize=4, label=rep.agent)
    ax.set_xlabel("Gaussian noise variance (image in [0, 1])")
    ax.set_ylabel("lane departures per km")
    first = reports[0]
    ax.set_title(f"{first.env_id}: {len(first.seeds)} roads per level")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    target = Path(path)
    atomic_write_bytes(target, buf.getvalue())
    return target


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            )
    return buf.getvalue().encode()


def _with_camera_offset(env_id: str, kwargs: dict[str, Any], offset: float) -> dict[str, Any]:
    """Add a lateral dash-camera offset (m, + = left) to the env kwargs.

    The ``LTC/`` envs take it as ``visuals={"camera_pos_offset": (0, offset, 0)}`` (car frame); other envs get
    a ``camera_offset`` keyword, which :func:`make_env` reports clearly if the env has no such option.
    """
    if not offset:
        return kwargs
    if env_id.startswith("LTC/"):
        visuals = dict(kwargs.get("visuals") or {})
        dx, dy, dz = visuals.get("camera_pos_offset", (0.0, 0.0, 0.0))
        visuals["camera_pos_offset"] = (float(dx), float(dy) + float(offset), float(dz))
        kwargs["visuals"] = visuals
    else:
        kwargs["camera_offset"] = float(offset)
    return kwargs


def _describe(spec: AgentSpec) -> str:
    if isinstance(spec, str | os.PathLike):
        return str(spec)
    if isinstance(spec, ConstantAgent):
        return repr(spec)
    name = getattr(spec, "__qualname__", None)
    return str(name) if name else type(spec).__name__


def _run_jobs(
    agent: AgentSpec,
    env_id: str,
    kwargs: dict[str, Any],
    jobs: Sequence[tuple[float, int]],
    perts: Mapping[float, Perturbation],
    *,
    workers: int,
    max_steps: int | None,
    device: str,
    completion_tolerance: float,
    threads: int,
    on_done: Callable[[tuple[float, int], EpisodeMetrics], Any],
) -> dict[tuple[float, int], EpisodeMetrics]:
    """Run the ``(noise level, road seed)`` episodes in this process (``workers=0``) or in a spawn pool.

    Returns:
        ``(noise level, road seed)`` -> the episode's metrics; ``on_done(job, metrics)`` is called after every
        episode. An interrupt stops the workers at once (pending episodes are cancelled).
    """
    results: dict[tuple[float, int], EpisodeMetrics] = {}
    if not jobs:
        return results
    if workers == 0:
        env = make_env(env_id, kwargs)
        try:
            agent_obj = make_agent(agent, device=device)
            with torch_threads(threads):
                for lvl, s in jobs:
                    res = run_episode(env, agent_obj, s, noise=perts[lvl], max_steps=max_steps)
                    results[(lvl, s)] = res.metrics(completion_tolerance)
                    on_done((lvl, s), results[(lvl, s)])
        finally:
            env.close()
        return results
    try:
        pickle.dumps(agent)
    except Exception as exc:
        raise TypeError(
            f"the agent {_describe(agent)} cannot be sent to worker processes ({exc}); pass a checkpoint "
            "directory, 'expert', a module-level class or factory, or use workers=0"
        ) from exc
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(agent, env_id, kwargs, device, threads),
    )
    try:
        futures = {
            pool.submit(_worker_episode, s, perts[lvl], max_steps, completion_tolerance): (lvl, s)
            for lvl, s in jobs
        }
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            on_done(futures[fut], results[futures[fut]])
    except BaseException:
        # Do not wait for the queued episodes (shutdown(wait=True) would run them all): stop the workers.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def _read_journal(path: Path) -> dict[tuple[float, int], EpisodeMetrics]:
    """The episodes an interrupted evaluation finished (one JSON line each; a torn last line is ignored)."""
    done: dict[tuple[float, int], EpisodeMetrics] = {}
    if not path.is_file():
        return done
    names = [f.name for f in dataclasses.fields(EpisodeMetrics)]
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
            doc = entry["episode"]
            if entry["sha256"] != _digest(doc):
                continue  # damaged: the episode runs again
            ep = EpisodeMetrics(**{k: _nan(doc[k]) for k in names})
        except (ValueError, KeyError, TypeError):
            continue  # the line being written when the process stopped, or a damaged one
        done[(float(ep.noise_variance), int(ep.seed))] = ep
    return done


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _append_journal(path: Path, ep: EpisodeMetrics) -> None:
    doc = ep.to_dict()
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"episode": doc, "sha256": _digest(doc)}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _check_arguments(agent: AgentSpec, levels: list[float], workers: int) -> None:
    if not levels:
        raise ValueError("evaluate() needs at least one noise level, e.g. noise_levels=(0, 0.1, 0.2, 0.3)")
    if len(set(levels)) != len(levels):
        raise ValueError(f"noise levels must be distinct, got {levels}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if (
        isinstance(agent, str | os.PathLike)
        and not str(agent).startswith("expert")
        and not Path(agent).is_dir()
    ):
        raise FileNotFoundError(
            f"checkpoint {str(agent)!r} is not a directory; pass a checkpoint folder (model.json + "
            "model.safetensors) or 'expert'"
        )


def evaluate(
    agent: AgentSpec,
    env_id: str,
    seeds: Iterable[int],
    noise_levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3),
    workers: int = 2,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    noise_seed: int = 0,
    perturbation: Perturbation | None = None,
    device: str = "cpu",
    completion_tolerance: float = 1.0,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    threads: int = 1,
    journal: str | os.PathLike[str] | None = None,
) -> EvalReport:
    """Evaluate an agent in closed loop on held-out roads at several image-noise levels.

    Every (road seed, noise level) pair is one episode. With ``workers >= 1`` episodes run in that many worker
    processes (spawn context; each worker creates its own env and loads the agent itself, so checkpoints
    are loaded in the workers and no renderer crosses a fork). Results do not depend on the number of workers:
    each episode starts from ``env.reset(seed)`` and ``agent.reset()`` and its noise is seeded by (noise
    seed, road seed, step). ``workers=0`` runs everything in this process (any agent, picklable or not).

    Args:
        agent: checkpoint directory, ``"expert"``, an :class:`Agent` or a zero-argument factory (see
            :func:`make_agent`); with workers it must be picklable (a module-level class or function).
        env_id: Gymnasium env id.
        seeds: road seeds (held out from training).
        noise_levels: Gaussian noise variances on the [0, 1] image scale.
        workers: number of worker processes (0 = in-process).
        env_kwargs: env constructor arguments (e.g. a short road for tests).
        max_steps: per-episode step cap (None = the env's own limit).
        noise_seed: the noise seed shared by every model.
        perturbation: extra perturbations (brightness, blur, occlusion, camera offset) applied at every level;
            its ``noise_variance`` and ``seed`` are replaced by each level's variance and ``noise_seed``.
        device: torch device for checkpoint policies.
        completion_tolerance: metres from the road's end that count as completed.
        out_dir: when given, the report is saved there (JSON, CSV, PNG).
        progress: show a tqdm progress bar.
        threads: torch intra-op threads per episode loop (per worker); 1 is fastest for batch-1 inference.
        journal: a file that records every finished episode as it finishes; episodes it already lists are
            not run again (resuming an interrupted evaluation gives the same metrics). Deleted once the
            report is complete. None: no journal.

    Returns:
        The :class:`EvalReport`.
    """
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise ValueError("evaluate() needs at least one road seed, e.g. seeds=range(1000, 1020)")
    if any(s < 0 for s in seed_list):
        raise ValueError(f"road seeds must be >= 0, got {[s for s in seed_list if s < 0]}")
    levels = [float(v) for v in noise_levels]
    _check_arguments(agent, levels, workers)
    base = perturbation or Perturbation()
    kwargs = _with_camera_offset(env_id, dict(env_kwargs or {}), base.camera_offset)
    jobs = [(lvl, s) for lvl in levels for s in seed_list]
    perts = {lvl: dataclasses.replace(base, noise_variance=lvl, seed=noise_seed) for lvl in levels}

    start = time.perf_counter()
    journal_path = None if journal is None else Path(journal)
    done = {} if journal_path is None else _read_journal(journal_path)
    done = {job: ep for job, ep in done.items() if job in perts and job[1] in seed_list}
    todo = [job for job in jobs if job not in done]
    bar = tqdm(total=len(jobs), desc="evaluate", unit="ep", disable=not progress, file=sys.stderr)
    bar.update(len(jobs) - len(todo))

    def on_done(job: tuple[float, int], ep: EpisodeMetrics) -> None:
        if journal_path is not None:
            _append_journal(journal_path, ep)
        bar.update(1)

    try:
        results = done | _run_jobs(
            agent,
            env_id,
            kwargs,
            todo,
            perts,
            workers=workers,
            max_steps=max_steps,
            device=device,
            completion_tolerance=completion_tolerance,
            threads=threads,
            on_done=on_done,
        )
    finally:
        bar.close()
    episodes = [results[(lvl, s)] for lvl in levels for s in seed_list]
    summaries = [
        summarize_levels([results[(lvl, s)] for s in seed_list], noise_variance=lvl) for lvl in levels
    ]
    pert_dict = dataclasses.asdict(base)
    pert_dict.pop("noise_variance")
    pert_dict["seed"] = noise_seed
    report = EvalReport(
        agent=_describe(agent),
        env_id=env_id,
        env_kwargs=kwargs,
        seeds=seed_list,
        levels=summaries,
        episodes=episodes,
        perturbation=pert_dict,
        elapsed_s=time.perf_counter() - start,
    )
    if out_dir is not None:
        report.save(out_dir)
    if journal_path is not None:
        journal_path.unlink(missing_ok=True)
    return report
