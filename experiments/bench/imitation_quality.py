"""Imitation quality benchmark: does the trained policy drive held-out roads without leaving the lane?

Trains a preset (default: the small demo preset) end to end with :func:`ltc_control.agents.imitation.train`,
then evaluates on the same held-out roads (20 by default, each 250 m at the env's default 4.5 m/s) side by
side: the privileged expert, an untrained policy (same architecture, same seed, no training) and the trained
policy. Writes a Markdown report (default ``experiments/results/imitation_quality.md``) with the machine,
date, versions and timings.

Usage (long: run it in the background):
    nohup .venv/bin/python experiments/bench/imitation_quality.py > /tmp/imitation_quality.log 2>&1 &
    .venv/bin/python experiments/bench/imitation_quality.py --config experiments/configs/lane_keeping.yaml \
        --results experiments/results/imitation_quality_dagger.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _row(name: str, report: object, seconds: float | None) -> str:
    level = report.levels[0]  # type: ignore[attr-defined]
    return (
        f"| {name} | {level.completion_rate.value * 100:.0f}% ({level.episodes} roads) "
        f"| {level.distance_before_departure_m.value:.1f} | {level.crashes_per_km.value:.2f} "
        f"| {level.mean_abs_lateral_m.value:.3f} | {level.max_abs_lateral_m.value:.3f} "
        f"| {level.steering_smoothness.value:.4f} | {'' if seconds is None else f'{seconds:.0f}'} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "experiments/configs/lane_keeping_small.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--roads", type=int, default=20, help="held-out roads to evaluate on")
    parser.add_argument("--results", type=Path, default=REPO / "experiments/results/imitation_quality.md")
    parser.add_argument("--out-dir", default="runs/bench", help="parent of the run folder")
    parser.add_argument("--threshold", type=float, default=0.8, help="completion rate the policy must reach")
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip the expert and untrained-policy rows (saves time)"
    )
    args = parser.parse_args(argv)

    import torch

    from ltc_control import __version__
    from ltc_control.agents.evaluation import evaluate
    from ltc_control.agents.imitation import train
    from ltc_control.agents.imitation_config import TrainConfig
    from ltc_control.checkpoint import save_checkpoint
    from ltc_control.config import apply_overrides, load_yaml
    from ltc_control.policy import Policy

    cfg = apply_overrides(load_yaml(TrainConfig, args.config), args.overrides)
    seeds = list(range(cfg.eval.seed_start, cfg.eval.seed_start + args.roads))
    # The benchmark evaluates every agent itself on the same roads, so the run's own evaluation is skipped.
    cfg = dataclasses.replace(cfg, out_dir=args.out_dir, eval=dataclasses.replace(cfg.eval, num_roads=0))
    road_length = float(cfg.env.kwargs.get("road_length", 300.0))

    t0 = time.perf_counter()
    result = train(cfg, argv=[sys.executable, *sys.argv])
    wall = time.perf_counter() - t0
    if result.interrupted:
        print("training was interrupted; no benchmark written", file=sys.stderr)
        return 130

    def run_eval(agent: object, tag: str) -> tuple[object, float]:
        t = time.perf_counter()
        report = evaluate(
            agent,  # type: ignore[arg-type]
            cfg.env.id,
            seeds,
            noise_levels=(0.0,),
            workers=cfg.workers,
            env_kwargs=cfg.env.kwargs,
            completion_tolerance=cfg.eval.completion_tolerance,
            out_dir=result.run_dir / f"eval_{tag}",
        )
        return report, time.perf_counter() - t

    torch.manual_seed(cfg.seed)
    untrained_dir = save_checkpoint(result.run_dir / "checkpoints" / "untrained", Policy(cfg.policy))
    trained_report, trained_eval_s = run_eval(str(result.best_checkpoint), "trained")
    baseline_rows = []
    if not args.no_baselines:
        expert_report, expert_s = run_eval("expert", "expert")
        untrained_report, untrained_s = run_eval(str(untrained_dir), "untrained")
        baseline_rows = [
            _row("privileged expert (Stanley)", expert_report, expert_s),
            _row("untrained policy (same architecture)", untrained_report, untrained_s),
        ]

    level = trained_report.levels[0]  # type: ignore[attr-defined]
    passed = level.completion_rate.value >= args.threshold
    m = result.metrics
    lines = [
        f"# Imitation quality: {cfg.name}",
        "",
        f"Preset `{os.path.relpath(args.config, REPO)}`"
        + (f" with overrides `{' '.join(args.overrides)}`" if args.overrides else "")
        + f"; controller `{cfg.policy.controller.kind}`, camera {cfg.policy.image_shape[0]}x"
        f"{cfg.policy.image_shape[1]}, DAgger rounds {cfg.dagger.rounds}.",
        f"Held-out roads: seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} roads of {road_length:.0f} m at the "
        f"env's default speed), never used for training or validation (training roads "
        f"{cfg.demos.seed_start}..{cfg.demos.seed_start + cfg.demos.num_roads - 1}).",
        "",
        f"Machine: {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs), "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, ltc-control {__version__}, torch threads {torch.get_num_threads()}.",
        "",
        "| agent | completed without departure | distance before departure (m) | departures / km "
        "| mean abs lateral (m) | max abs lateral (m, mean over roads) | mean abs delta steering "
        "| eval time (s) |",
        "|---|---|---|---|---|---|---|---|",
        *baseline_rows,
        _row(
            f"trained policy ({cfg.policy.controller.kind}, best checkpoint)", trained_report, trained_eval_s
        ),
        "",
        f"Training run `{result.run_dir}`: collect + train {wall:.0f} s (of which epochs "
        f"{m.get('train_seconds', 0):.0f} s), evaluation of the trained policy on {len(seeds)} roads "
        f"{trained_eval_s:.0f} s, so collect + train + evaluate {wall + trained_eval_s:.0f} s; best "
        f"validation MSE {m.get('val_loss', float('nan')):.5f}."
        + (
            f" DAgger: {cfg.dagger.rounds} rounds of {cfg.dagger.episodes_per_round} learner rollouts, "
            f"round {int(m.get('chosen_round', 0))} kept (best closed-loop driving on the validation roads)."
            if cfg.dagger.rounds
            else ""
        ),
        "",
        f"Result: completion {level.completion_rate.value * 100:.0f}% vs the {args.threshold * 100:.0f}% "
        f"bar: **{'PASS' if passed else 'FAIL'}**.",
        "",
    ]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    from ltc_control.runs import atomic_write_text

    atomic_write_text(args.results, "\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(m, indent=1))
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
