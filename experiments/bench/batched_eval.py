"""Batched lockstep evaluation vs today's per-episode `ltc-control evaluate` path, side by side.

Same checkpoint, same roads, same noise levels, the same number of worker processes; the two paths run
interleaved ``--repeats`` times so they share the machine's background load. Reported: env steps per second
of each path (median over repeats), their ratio, where the time goes in the lockstep path (policy vs env),
and the equality check: per-episode metrics of both paths (steps and departures exactly, distances and errors
to 1e-5 relative) and, in-process, the actions of every step (max absolute difference).

    python experiments/bench/batched_eval.py --checkpoint CKPT --roads 8 --noise 0,0.1,0.2,0.3 \\
        --env-kwargs '{image_height: 32, image_width: 64, road_length: 100.0}' \\
        --write experiments/results/batched_eval.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_common import cpu_model, uptime


def main(argv: list[str] | None = None) -> int:
    from ltc_control.agents.episode import PolicyAgent, make_env, run_episode, torch_threads
    from ltc_control.agents.evaluation import evaluate
    from ltc_control.agents.lockstep import (
        EpisodeJob,
        LockstepStats,
        replay_lockstep,
        run_lockstep,
        run_lockstep_parallel,
    )
    from ltc_control.agents.metrics import episode_metrics
    from ltc_control.agents.perturbations import Perturbation
    from ltc_control.checkpoint import load_checkpoint
    from ltc_control.config import yaml_load
    from ltc_control.runs import atomic_write_text, versions

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.json + model.safetensors)")
    p.add_argument("--env-id", default="LTC/LaneKeeping-v0")
    p.add_argument(
        "--env-kwargs",
        default="{image_height: 32, image_width: 64, road_length: 100.0}",
        help="env keyword arguments (YAML mapping); the camera must match the checkpoint",
    )
    p.add_argument("--roads", type=int, default=8, help="test roads (seeds 100000..)")
    p.add_argument("--noise", default="0,0.1,0.2,0.3", help="noise variances (comma separated)")
    p.add_argument("--workers", type=int, default=2, help="worker processes of both paths")
    p.add_argument("--num-envs", type=int, default=16, help="lockstep envs per worker")
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median reported)")
    p.add_argument("--max-steps", type=int, default=0, help="per-episode step cap (0: none)")
    p.add_argument("--write", type=Path, default=None, help="markdown output file")
    args = p.parse_args(argv)

    kwargs = dict(yaml_load(args.env_kwargs) or {})
    seeds = list(range(100_000, 100_000 + args.roads))
    levels = [float(x) for x in args.noise.split(",")]
    max_steps = args.max_steps or None
    jobs = [EpisodeJob(seed=s, perturbation=Perturbation(noise_variance=v)) for v in levels for s in seeds]
    load_before = uptime()

    # 1. equality, in-process: every action of every episode
    policy, _ = load_checkpoint(args.checkpoint)
    agent = PolicyAgent(policy)
    env = make_env(args.env_id, kwargs)
    t0 = time.perf_counter()
    with torch_threads(1):
        ref = [
            run_episode(env, agent, j.seed, noise=j.perturbation, max_steps=max_steps, record=True)
            for j in jobs
        ]
    t_ref1 = time.perf_counter() - t0
    env.close()
    st1 = LockstepStats()
    got = run_lockstep(
        policy, args.env_id, jobs, env_kwargs=kwargs, num_envs=args.num_envs, max_steps=max_steps, stats=st1
    )
    steps_ref1 = sum(r.steps for r in ref)
    env1 = st1.env_seconds / max(1, st1.env_steps)
    pert1 = st1.perturb_seconds / max(1, st1.env_steps)
    same_steps = sum(a.steps == b.steps for a, b in zip(got, ref))
    diffs = [
        float(np.abs(a.actions[: min(a.steps, b.steps)] - b.actions[: min(a.steps, b.steps)]).max())
        for a, b in zip(got, ref)
    ]

    def metrics_equal(a: object, b: object) -> bool:
        da, db = a.to_dict(), b.to_dict()  # type: ignore[attr-defined]
        for k, v in db.items():
            if isinstance(v, float) and da[k] is not None:
                if abs(da[k] - v) > 1e-5 * max(1.0, abs(v)):
                    return False
            elif da[k] != v:
                return False
        return True

    eq_inproc = sum(metrics_equal(episode_metrics(a), episode_metrics(b)) for a, b in zip(got, ref))
    replayed = replay_lockstep(policy, [r.frames for r in ref])  # type: ignore[misc]
    open_loop = max(float(np.abs(a - r.actions).max()) for a, r in zip(replayed, ref))

    def outcome(m: Any) -> tuple[Any, ...]:
        return (m.completed, m.departures, m.departed)

    m_got = [episode_metrics(a) for a in got]
    m_ref = [episode_metrics(b) for b in ref]
    same_outcome = sum(outcome(a) == outcome(b) for a, b in zip(m_got, m_ref))
    lat_diff = max(abs(a.mean_abs_lateral_m - b.mean_abs_lateral_m) for a, b in zip(m_got, m_ref))
    dist_diff = max(abs(a.distance_m - b.distance_m) for a, b in zip(m_got, m_ref))

    # 2. timing with workers, interleaved
    old_rates, new_rates, eq_par = [], [], []
    last_new: LockstepStats | None = None
    for _ in range(args.repeats):
        report = evaluate(
            args.checkpoint,
            args.env_id,
            seeds,
            noise_levels=levels,
            workers=args.workers,
            env_kwargs=kwargs,
            max_steps=max_steps,
            progress=False,
        )
        old_steps = sum(m.steps for m in report.episodes)
        old_rates.append(old_steps / report.elapsed_s)
        res, st = run_lockstep_parallel(
            args.checkpoint,
            args.env_id,
            jobs,
            workers=args.workers,
            env_kwargs=kwargs,
            num_envs=args.num_envs,
            max_steps=max_steps,
        )
        new_rates.append(sum(r.steps for r in res) / st.seconds)
        last_new = st
        eq_par.append(sum(metrics_equal(episode_metrics(a), m) for a, m in zip(res, report.episodes)))
    load_after = uptime()
    ratio = float(np.median(new_rates) / np.median(old_rates))
    assert last_new is not None
    v = versions()
    cpu = cpu_model()
    lines = [
        "# Batched lockstep evaluation vs the per-episode `evaluate` path",
        "",
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {platform.node()} ({cpu}, {os.cpu_count()} logical CPUs), MUJOCO_GL="
        f"{os.environ.get('MUJOCO_GL', '')}",
        f"- `uptime` before: {load_before}",
        f"- `uptime` after: {load_after}",
        f"- Versions: python {v['python']}, torch {v['torch']}, mujoco {v['mujoco']}, numpy {v['numpy']}",
        "- Command: `python experiments/bench/batched_eval.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- Workload: checkpoint `{args.checkpoint}`, env `{args.env_id}` {kwargs}, {args.roads} "
        "roads x noise "
        f"{levels} = {len(jobs)} episodes; {args.workers} worker processes on both paths; lockstep "
        f"{args.num_envs} envs per worker; torch 1 thread per worker; {args.repeats} interleaved repeats.",
        "",
        "| path | env steps/s (median) | all repeats |",
        "|---|---:|---|",
        f"| per-episode `evaluate(..., workers={args.workers})` (today's `ltc-control evaluate`) | "
        f"{np.median(old_rates):.0f} | {', '.join(f'{x:.0f}' for x in old_rates)} |",
        f"| lockstep, {args.workers} workers (`run_lockstep_parallel`) | {np.median(new_rates):.0f} | "
        f"{', '.join(f'{x:.0f}' for x in new_rates)} |",
        "",
        f"**Ratio (lockstep / per-episode): {ratio:.2f}x.**",
        "",
        "In one process (no workers, same episodes): per-episode loop "
        f"{steps_ref1 / t_ref1:.0f} env steps/s, lockstep {st1.env_steps / st1.seconds:.0f} env steps/s "
        f"({(st1.env_steps / st1.seconds) / (steps_ref1 / t_ref1):.2f}x).",
        "",
        "Where the lockstep time goes (last repeat, summed over workers): "
        f"policy calls {last_new.policy_seconds:.1f} s for {last_new.policy_calls} batched calls "
        f"({1e3 * last_new.policy_seconds / max(1, last_new.env_steps):.2f} ms per env step), env "
        "step + reset "
        f"{last_new.env_seconds:.1f} s "
        f"({1e3 * last_new.env_seconds / max(1, last_new.env_steps):.2f} ms per env "
        f"step), perturbation {last_new.perturb_seconds:.1f} s. In-process per-episode loop: "
        f"{1e3 * t_ref1 / steps_ref1:.2f} ms per env step in all.",
        "",
        "Bound: in one process the per-episode loop spends "
        f"{1e3 * t_ref1 / steps_ref1:.2f} ms per env step, of which the env itself (physics, camera "
        f"rendering, road projection; lockstep's env share) is {1e3 * env1:.2f} ms and the perturbation "
        f"{1e3 * pert1:.2f} ms. Batching can only remove policy time, so even a free policy call "
        "would give at "
        f"most {(t_ref1 / steps_ref1) / (env1 + pert1):.2f}x here; the env step, not the policy, "
        "sets the pace "
        "at this camera size.",
        "",
        "## Equality",
        "",
        f"- Open loop (the frames the per-episode run saw, replayed through the batched calls of "
        f"`replay_lockstep`): max |action difference| over all {steps_ref1} steps "
        f"**{open_loop:.1e}** (float32 "
        "rounding: oneDNN picks different convolution kernels for a batch than for one image).",
        f"- Closed loop, in-process: {same_outcome}/{len(jobs)} episodes with the same outcome (completed, "
        f"departures), {same_steps}/{len(jobs)} with the same length, {eq_inproc}/{len(jobs)} with "
        "all metrics "
        "equal to 1e-5 relative; largest difference of an episode's mean |lateral error| "
        f"{lat_diff:.4f} m, of "
        f"its distance before departure {dist_diff:.2f} m; max |action difference| {max(diffs):.2e} (median "
        f"over episodes {np.median(diffs):.2e}). With workers: {', '.join(str(x) for x in eq_par)} of "
        f"{len(jobs)} episodes with all metrics equal per repeat.",
        "- Why closed loops drift apart: the dash camera is rendered to uint8, so once a 1e-7 "
        "difference in a "
        "steering command moves the car enough to flip one pixel's rounding, the next observations "
        "differ by a "
        "whole grey level and the trajectories separate (then only statistically equal). "
        "Bit-identical episodes "
        "would need batch-invariant convolution kernels (on this CPU: oneDNN off and the per-map dense head "
        "run per image), which gives up most of the batching gain.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write is not None:
        atomic_write_text(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
