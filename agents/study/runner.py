"""Run a study: shared datasets, then every trial through a backend, respecting the tuning protocol.

Order of work (each arrow is a dependency, everything else runs side by side on the backend's workers):

1. the shared datasets are collected once (noisy-expert demonstrations on the training/validation roads and
   expert demonstrations on the test-demo roads), in ``<study>/data/<hash of their config>/``;
2. ``train`` trials of every model at the tuning seed, one per candidate controller learning rate;
3. once a model's candidates are all done, its learning rate is chosen on the validation roads
   (``selection.json``), then its ``train`` trials at the other seeds and the ``eval`` trial of the tuning
   seed's chosen checkpoint start;
4. each further ``train`` trial is followed by its ``eval`` trial.

Finished trials (``result.json`` present) are picked up without running anything, so rerunning the same
command after an interrupt (Ctrl-C, a killed process, a reboot) resumes where the study stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltc_control.agents.study.backends import Backend
from ltc_control.agents.study.config import StudyConfig
from ltc_control.agents.study.trials import Trial, data_dirs, data_spec, eval_trial, load_result, train_trial
from ltc_control.runs import atomic_write_json

__all__ = ["StudyState", "collect_data", "plan_tuning", "run_study", "select_lr", "study_dir"]


def study_dir(config: StudyConfig) -> Path:
    """``<out_dir>/<name>``."""
    return Path(config.out_dir) / config.name


def collect_data(config: StudyConfig, root: Path, progress: bool = True) -> tuple[Path, Path]:
    """Collect (or resume) the shared datasets; returns their folders."""
    from ltc_control.agents.collection import CollectConfig, EpisodeTask, expert_tasks, run_tasks
    from ltc_control.agents.experts import NoiseConfig
    from ltc_control.config import to_dict

    dspec = data_spec(config)
    demos_dir, test_dir = data_dirs(root, dspec)
    d = config.demos
    cc = CollectConfig(
        env=config.env,
        expert=config.expert,
        noise=d.noise,
        seed_start=d.seed_start,
        num_roads=d.num_roads,
        episodes_per_road=d.episodes_per_road,
        max_steps=d.max_steps,
        workers=config.workers,
        episodes_per_chunk=d.episodes_per_chunk,
        seed=0,
    )
    run_tasks(
        demos_dir,
        cc,
        expert_tasks(cc),
        metadata={"collect": to_dict(cc)},
        progress=progress,
        desc="collect demos",
    )
    t = config.test_demos
    tc = CollectConfig(
        env=config.env,
        expert=config.expert,
        noise=NoiseConfig(ou_sigma=0.0, burst_probability=0.0),
        seed_start=t.seed_start,
        num_roads=t.num_roads,
        workers=min(config.workers, t.num_roads),
        seed=0,
    )
    tasks = [
        EpisodeTask(road_seed=task.road_seed, key=task.key, source="expert", noise_seed=0)
        for task in expert_tasks(tc)
    ]
    run_tasks(
        test_dir,
        tc,
        tasks,
        metadata={"collect": to_dict(tc), "purpose": "offline test error"},
        progress=progress,
        desc="collect test demos",
    )
    atomic_write_json(demos_dir.parent / "data_spec.json", dspec)
    return demos_dir, test_dir


def select_lr(config: StudyConfig, results: dict[float, dict[str, Any]]) -> float:
    """The tuning rule: lowest validation MSE (ties: the smaller learning rate); NaN never wins."""

    def key(lr: float) -> tuple[float, float]:
        v = results[lr].get("val_mse")
        return (v if v is not None and math.isfinite(v) else math.inf, lr)

    return min(results, key=key)


def plan_tuning(config: StudyConfig) -> dict[str, list[Trial]]:
    """Model -> its tuning trials (one per candidate learning rate at the tuning seed)."""
    return {
        m.name: [train_trial(config, m.name, config.tuning.seed, lr) for lr in config.tuning.lr_controller]
        for m in config.models
    }


@dataclass
class StudyState:
    """What the runner knows: finished results by trial id, chosen learning rates, timings."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: dict[str, Trial] = field(default_factory=dict)
    chosen_lr: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    ran_now: int = 0

    def final_trials(self, config: StudyConfig) -> list[tuple[Trial, Trial]]:
        """``(train, eval)`` trial pairs of every model and seed at the chosen learning rates."""
        out = []
        for m in config.models:
            if m.name not in self.chosen_lr:
                continue
            for seed in range(config.seeds):
                t = train_trial(config, m.name, seed, self.chosen_lr[m.name])
                out.append((t, eval_trial(config, t)))
        return out


def run_study(
    config: StudyConfig,
    backend: Backend,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    max_trials: int | None = None,
) -> StudyState:
    """Run (or resume) every trial of the study; returns the collected results.

    Args:
        config: the study.
        backend: where trials run.
        progress: show a tqdm bar (done / running / left and an ETA).
        log: called with one line per started / finished trial (default: stderr).
        max_trials: stop submitting after this many trials have been started in this call (for tests and
            partial runs; None: all).

    Returns:
        The :class:`StudyState`.
    """
    from tqdm import tqdm

    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    root = study_dir(config)
    root.mkdir(parents=True, exist_ok=True)
    collect_data(config, root, progress=progress)
    from ltc_control.config import to_dict

    atomic_write_json(root / "study_config.json", to_dict(config))
    state = StudyState()
    tuning = plan_tuning(config)
    n_total = sum(len(v) for v in tuning.values()) + len(config.models) * (2 * config.seeds - 1)
    ready: list[Trial] = [t for ts in tuning.values() for t in ts]
    running: dict[Any, Trial] = {}
    started = 0
    bar = tqdm(
        total=n_total, desc=f"study {config.name}", unit="trial", disable=not progress, dynamic_ncols=True
    )
    t_start = time.perf_counter()

    def on_done(trial: Trial, result: dict[str, Any]) -> None:
        state.results[trial.id] = result
        state.trials[trial.id] = trial
        bar.update(1)
        if trial.kind == "train" and trial.seed == config.tuning.seed and trial.model not in state.chosen_lr:
            cands = tuning[trial.model]
            if all(c.id in state.results for c in cands):
                lr = select_lr(config, {c.lr: state.results[c.id] for c in cands})
                state.chosen_lr[trial.model] = lr
                say(f"[study] {trial.model}: chose lr_controller={lr:g} on the validation roads")
                _write_selection(config, root, state, tuning)
                for seed in range(config.seeds):
                    t = train_trial(config, trial.model, seed, lr)
                    if seed == config.tuning.seed:
                        ready.insert(0, eval_trial(config, t))
                    else:
                        ready.append(t)
        elif (
            trial.kind == "train"
            and trial.model in state.chosen_lr
            and trial.lr == state.chosen_lr[trial.model]
        ):
            ready.insert(0, eval_trial(config, trial))

    def postfix() -> None:
        done = len(state.results)
        bar.set_postfix_str(f"done {done} running {len(running)} left {n_total - done - len(running)}")

    try:
        while ready or running:
            # finished trials are collected without a worker; others wait for a free slot
            progressed = True
            while progressed:
                progressed = False
                for trial in list(ready):
                    stored = load_result(root / "trials" / trial.folder, trial.id)
                    if stored is not None:
                        ready.remove(trial)
                        on_done(trial, stored)
                        progressed = True
            while ready and len(running) < backend.slots and (max_trials is None or started < max_trials):
                trial = ready.pop(0)
                running[backend.submit(trial, str(root))] = trial
                started += 1
                state.ran_now += 1
                say(f"[study] start {trial.label} -> trials/{trial.folder}")
            postfix()
            if not running:
                break
            for handle, outcome in backend.wait(list(running)):
                trial = running.pop(handle)
                if isinstance(outcome, BaseException):
                    state.failed[trial.id] = f"{type(outcome).__name__}: {outcome}"
                    say(f"[study] FAILED {trial.label}: {type(outcome).__name__}: {outcome}")
                    bar.update(1)
                    continue
                elapsed = time.perf_counter() - t_start
                say(
                    f"[study] done {trial.label} in {outcome.get('wall_seconds', 0.0):.0f} s "
                    f"(study {elapsed:.0f} s)"
                )
                on_done(trial, outcome)
            postfix()
    finally:
        bar.close()
        _add_timing(root, t_start, state.ran_now)
    atomic_write_json(
        root / "progress.json",
        {
            "done": len(state.results),
            "total": n_total,
            "failed": state.failed,
            "chosen_lr": state.chosen_lr,
            "ran_now": state.ran_now,
            "seconds_this_call": time.perf_counter() - t_start,
        },
    )
    return state


def _add_timing(root: Path, t_start: float, ran: int) -> None:
    """Accumulate this call's wall time in ``timing.json`` (a resumed study adds up its calls)."""
    path = root / "timing.json"
    doc: dict[str, Any] = (
        json.loads(path.read_text()) if path.is_file() else {"total_seconds": 0.0, "calls": []}
    )
    seconds = time.perf_counter() - t_start
    doc["calls"].append(
        {
            "ended": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "seconds": seconds,
            "trials_run": ran,
        }
    )
    doc["total_seconds"] = float(doc["total_seconds"]) + seconds
    atomic_write_json(path, doc)


def _write_selection(
    config: StudyConfig, root: Path, state: StudyState, tuning: dict[str, list[Trial]]
) -> None:
    doc: dict[str, Any] = {
        "rule": "lowest validation MSE on the validation roads' demonstrations",
        "models": {},
    }
    for name, cands in tuning.items():
        if name not in state.chosen_lr:
            continue
        doc["models"][name] = {
            "chosen_lr_controller": state.chosen_lr[name],
            "candidates": {f"{c.lr:g}": state.results[c.id].get("val_mse") for c in cands},
        }
    path = root / "selection.json"
    old = json.loads(path.read_text()) if path.is_file() else {"models": {}}
    old["models"].update(doc["models"])
    doc["models"] = old["models"]
    atomic_write_json(path, doc)
