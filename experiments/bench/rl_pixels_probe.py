"""Does a saved image-task policy's perception see the pendulum's angle? (``PendulumPixels-v1`` runs.)

For each saved run of an image task of the suite (``<stem>.zip`` beside its record) and for the same model at
its initialisation (rebuilt by the benchmark's own ``make_model`` with the run's seed, which reproduces its
initial weights), this script renders the task's frame at ``--angles`` evenly spaced angles, passes them
through the actor's features extractor (``CnnLtcPolicy``: the NCP paper's conv head; ``CnnLstmPolicy``: sb3's
NatureCNN) and reports:

- ``probe R2``: how well a linear read-out of the features predicts ``(cos theta, sin theta)``, fitted on the
  even-numbered angles and scored on the odd-numbered ones (R2 averaged over the two targets; 1 = the angle is
  linearly decodable, 0 = not at all);
- ``feature std``: the features' standard deviation across the angles, mean over the features, and ``dead``:
  the share of features whose std is below 1e-3 of the largest (they do not change with the frame);
- ``moved``: ``||w - w0|| / ||w0||`` of each parameter group between initialisation and the end of training
  (the groups are the policy's top-level modules: the features extractor, the recurrent actor, the critic, the
  heads).

A diagnosis of the saved runs only (nothing is trained; the task stays held out)::

    .venv/bin/python experiments/bench/rl_pixels_probe.py --tasks PendulumPixels-v1 \\
        --write experiments/results/rl_pixels_probe.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import emit_report, provenance_lines

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = ROOT / "experiments" / "configs" / "rl_novel_suite.yaml"

#: A feature whose std across the angles is below this fraction of the largest feature std counts as dead.
DEAD_TOL = 1e-3


def probe_r2(features: np.ndarray, theta: np.ndarray) -> float:
    """Held-out R2 of a least-squares linear read-out (with intercept) of ``(cos, sin)`` of ``theta`` from
    ``features`` ``(N, F)``: fitted on the even rows, scored on the odd ones, averaged over the two targets.

    Raises:
        ValueError: shapes that do not match, fewer than 8 angles, or non-finite features.
    """
    x = np.asarray(features, np.float64)
    t = np.asarray(theta, np.float64).ravel()
    if x.ndim != 2 or x.shape[0] != t.size or t.size < 8:
        raise ValueError(
            f"features must be (N >= 8, F) with N = len(theta), got {x.shape} and {t.size} angles"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or inf")
    y = np.stack([np.cos(t), np.sin(t)], axis=1)
    a = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    fit, test = slice(0, None, 2), slice(1, None, 2)
    w, *_ = np.linalg.lstsq(a[fit], y[fit], rcond=None)
    pred = a[test] @ w
    resid = ((y[test] - pred) ** 2).sum(axis=0)
    total = ((y[test] - y[test].mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1.0 - resid / total))


def frames_for(env_id: str, angles: int) -> tuple[np.ndarray, np.ndarray]:
    """``(theta (N,), frames (N, H, W, C) uint8)`` of an image task at ``angles`` evenly spaced angles."""
    from ltc_control.agents.sb3_envs import PIXEL_TASKS, PendulumPixels, make_novel_env

    if env_id not in PIXEL_TASKS:
        raise ValueError(
            f"{env_id} is not an image task of the suite (known: {', '.join(sorted(PIXEL_TASKS))})"
        )
    env: Any = make_novel_env(env_id)
    while not isinstance(env, PendulumPixels):
        env = env.env
    theta = np.linspace(-np.pi, np.pi, angles, endpoint=False)
    return theta, np.stack([env.frame(float(a)) for a in theta])


def features_of(policy: Any, frames: np.ndarray) -> np.ndarray:
    """The actor's features ``(N, F)`` of ``frames`` (sb3's own preprocessing: channel-first, scaled)."""
    import torch
    from stable_baselines3.common.policies import BaseModel

    obs, _ = policy.obs_to_tensor(frames)
    with torch.no_grad():
        out = BaseModel.extract_features(policy, obs, policy.pi_features_extractor)
    return np.asarray(out.cpu().numpy(), np.float64)


def moved(policy: Any, initial: Any) -> dict[str, float]:
    """``||w - w0|| / ||w0||`` per top-level module of the policy (shared parameters counted once)."""
    import torch

    start = dict(initial.named_parameters())
    diff: dict[str, float] = {}
    norm: dict[str, float] = {}
    for name, p in policy.named_parameters():
        group = name.split(".")[0]
        w0 = start[name].detach()
        diff[group] = diff.get(group, 0.0) + float(torch.sum((p.detach() - w0) ** 2))
        norm[group] = norm.get(group, 0.0) + float(torch.sum(w0**2))
    return {g: (diff[g] / norm[g]) ** 0.5 if norm[g] > 0 else float("nan") for g in diff}


def feature_stats(features: np.ndarray) -> tuple[float, float]:
    """``(mean std across the angles, share of dead features)`` of ``(N, F)`` features."""
    std = np.asarray(features, np.float64).std(axis=0)
    top = float(std.max()) if std.size else 0.0
    dead = float(np.mean(std <= DEAD_TOL * top)) if top > 0 else 1.0
    return float(std.mean()), dead


def probe_run(config: Any, record: dict[str, Any], angles: int) -> dict[str, Any]:
    """One saved run's row (see the module's docstring).

    Raises:
        FileNotFoundError: the record names no saved model, or the file is missing.
    """
    from rl_bench import make_model
    from sb3_contrib import RecurrentPPO

    name = f"{record['env_id']} {record['model']} seed {record['seed']}"
    path = record.get("saved", {}).get("model")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{name}: no saved model ({path!r}); run the suite with save_models: true")
    trained = RecurrentPPO.load(path, device="cpu").policy
    initial = make_model(config, record["model"], int(record["seed"])).policy
    theta, frames = frames_for(record["env_id"], angles)
    row: dict[str, Any] = {"env_id": record["env_id"], "model": record["model"], "seed": int(record["seed"])}
    row["return"] = float(record["eval_mean"])
    row["extractor"] = type(trained.pi_features_extractor).__name__
    for tag, policy in (("init", initial), ("trained", trained)):
        f = features_of(policy, frames)
        row[f"r2_{tag}"] = probe_r2(f, theta)
        row[f"feature_std_{tag}"], row[f"dead_{tag}"] = feature_stats(f)
    row["features"] = int(f.shape[1])
    row["moved"] = {k: round(v, 4) for k, v in moved(trained, initial).items()}
    return row


def main(argv: list[str] | None = None) -> int:
    import torch
    from rl_bench import _load_records
    from rl_suite import add_suite_arguments, suite_from_arguments
    from tqdm.auto import tqdm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_suite_arguments(p, DEFAULT_SUITE, tasks_required=True)
    p.add_argument("--angles", type=int, default=360, help="evenly spaced angles to render (>= 8)")
    p.add_argument("--write", type=Path, default=None, help="markdown output (+ .jsonl rows beside it)")
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else argv
    if args.angles < 8:
        p.error(f"--angles must be >= 8, got {args.angles}")
    config, tasks = suite_from_arguments(p, args)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for task in tasks:
        bench = config.benchmark(task)
        records = _load_records(bench)
        if not records:
            p.error(f"{task.env_id}: no run records in {config.runs_dir}")
        for rec in tqdm(records, desc=task.env_id, unit="run"):
            try:
                rows.append(probe_run(bench, rec, args.angles))
            except ValueError as err:
                p.error(str(err))
    emit_report(_markdown(rows, args.angles, time.perf_counter() - t0, cli), rows, args.write)
    return 0


def _num(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "n/a"


def _markdown(rows: list[dict[str, Any]], angles: int, seconds: float, cli: list[str]) -> str:
    from rl_bench import _MODEL_NAMES

    lines = [
        "# Does the perception see the angle? (image-task runs, features probed at init and after training)",
        "",
        *provenance_lines(__file__, cli),
        f"- {angles} evenly spaced angles rendered as the task's frames; the actor's features extractor's "
        "output; probe R2: a linear read-out of (cos, sin) fitted on the even angles, scored on the odd "
        f"ones; feature std: across the angles, mean over features; dead: std below {DEAD_TOL:g} of the "
        "largest; moved: ||w - w0|| / ||w0|| per parameter group (init rebuilt from the run's seed; n/a "
        f"where w0 = 0). Time {seconds:.0f} s.",
        "",
        "| task | model | seed | greedy return | extractor (features) | probe R2 init -> trained "
        "| feature std init -> trained | dead init -> trained | moved |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        mv = ", ".join(f"{k} {_num(v)}" for k, v in r["moved"].items())
        lines.append(
            f"| {r['env_id']} | {_MODEL_NAMES[r['model']]} | {r['seed']} | {r['return']:.1f} | "
            f"{r['extractor']} ({r['features']}) | {r['r2_init']:.3f} -> {r['r2_trained']:.3f} | "
            f"{r['feature_std_init']:.3g} -> {r['feature_std_trained']:.3g} | "
            f"{r['dead_init']:.2f} -> {r['dead_trained']:.2f} | {mv} |"
        )
    lines += ["", "Per task and model (mean over seeds):", ""]
    for env_id in dict.fromkeys(r["env_id"] for r in rows):
        for model in dict.fromkeys(r["model"] for r in rows if r["env_id"] == env_id):
            mine = [r for r in rows if r["env_id"] == env_id and r["model"] == model]
            groups = dict.fromkeys(g for r in mine for g in r["moved"])
            mv = ", ".join(f"{g} {_num(np.mean([r['moved'].get(g, np.nan) for r in mine]))}" for g in groups)
            lines.append(
                f"- {env_id} {_MODEL_NAMES[model]} ({len(mine)} runs): probe R2 "
                f"{np.mean([r['r2_init'] for r in mine]):.3f} at init, "
                f"{np.mean([r['r2_trained'] for r in mine]):.3f} trained; moved: {mv}"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
