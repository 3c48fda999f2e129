"""Environment speed: LTC/LaneKeeping-v0 camera steps per second against Gymnasium's CarRacing-v3, same run.

Measures, in one process on this machine, steps/s (median of ``--repeats`` timed blocks of ``--steps``
steps after a warm-up) for the lane-keeping env with camera observations at 64x64, 96x96 and the default
64x128, as a single env and vectorised over 2 ``AsyncVectorEnv`` workers, and the same for ``CarRacing-v3``
(96x96). The lane-keeping env is driven by a simple centre-line follower reading ``info`` (so episodes last,
as with an expert), CarRacing by random actions; episode resets are included in the timing. Also reports the
reset time.

Usage::

    MUJOCO_GL=egl .venv/bin/python experiments/bench/env_speed.py [--steps 300] [--repeats 5] \
        [--write experiments/results/env_speed.md]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import ltc_control.envs  # noqa: E402, F401  (registers the LTC/ ids)
import numpy as np  # noqa: E402


def follower(info: dict[str, Any]) -> np.ndarray:
    """Centre-line follower from ``info`` (curvature feed-forward + heading / front-offset feedback)."""
    kappa = float(info["curvature"])
    delta = (
        math.atan(float(info["wheelbase"]) * kappa)
        - float(info["heading_error"])
        - math.atan2(float(info["front_lateral_offset"]), float(info["speed"]) + 0.5)
    )
    return np.array([np.clip(delta / float(info["max_steer"]), -1.0, 1.0)], dtype=np.float32)


def _lane_maker(height: int, width: int) -> Callable[[], gym.Env]:
    return lambda: gym.make("LTC/LaneKeeping-v0", image_height=height, image_width=width)


def _carracing_maker() -> gym.Env:
    return gym.make("CarRacing-v3")


def time_single(make: Callable[[], gym.Env], steps: int, repeats: int, lane: bool) -> tuple[float, float]:
    """Median steps/s of one env, and median reset time (s)."""
    env = make()
    rng = np.random.default_rng(0)
    _, info = env.reset(seed=0)
    resets: list[float] = []
    seed = 1

    def act(info: dict[str, Any]) -> np.ndarray:
        return follower(info) if lane else env.action_space.sample()

    env.action_space.seed(0)
    for _ in range(20):
        _, _, term, trunc, info = env.step(act(info))
        if term or trunc:
            _, info = env.reset(seed=seed)
            seed += 1
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, term, trunc, info = env.step(act(info))
            if term or trunc:
                r0 = time.perf_counter()
                _, info = env.reset(seed=seed)
                resets.append(time.perf_counter() - r0)
                seed += 1
        rates.append(steps / (time.perf_counter() - t0))
    for _ in range(3):
        r0 = time.perf_counter()
        _, info = env.reset(seed=int(rng.integers(1_000_000)))
        resets.append(time.perf_counter() - r0)
    env.close()
    return statistics.median(rates), statistics.median(resets)


def time_vector(make: Callable[[], gym.Env], steps: int, repeats: int, lane: bool, workers: int = 2) -> float:
    """Median env-steps/s (vector steps x workers) of an ``AsyncVectorEnv``."""
    venv = gym.vector.AsyncVectorEnv([make for _ in range(workers)])
    _, infos = venv.reset(seed=list(range(workers)))
    venv.action_space.seed(0)

    def act(infos: dict[str, Any]) -> np.ndarray:
        if not lane:
            return venv.action_space.sample()
        return np.stack(
            [follower({k: v[i] for k, v in infos.items() if not k.startswith("_")}) for i in range(workers)]
        )

    for _ in range(10):
        _, _, _, _, infos = venv.step(act(infos))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, _, _, infos = venv.step(act(infos))
        rates.append(steps * workers / (time.perf_counter() - t0))
    venv.close()
    return statistics.median(rates)


def _versions() -> str:
    import mujoco

    parts = [
        f"python {platform.python_version()}",
        f"mujoco {mujoco.__version__}",
        f"gymnasium {gym.__version__}",
    ]
    parts.append(f"numpy {np.__version__}")
    try:
        import Box2D  # type: ignore[import-not-found]

        parts.append(f"box2d {getattr(Box2D, '__version__', '?')}")
    except ImportError:
        parts.append("box2d missing")
    return ", ".join(parts)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gl = os.environ.get("MUJOCO_GL", "?")
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, MUJOCO_GL={gl}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a Markdown table, optionally write it to a file (atomically)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="env steps per timed block")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed blocks per configuration (median reported)"
    )
    parser.add_argument("--no-vector", action="store_true", help="skip the 2-worker AsyncVectorEnv runs")
    parser.add_argument("--no-carracing", action="store_true", help="skip CarRacing-v3")
    parser.add_argument(
        "--write", type=Path, default=None, help="also write the Markdown report to this file"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")

    rows: list[tuple[str, str, float, float | None, float | None]] = []
    sizes = [(64, 64), (96, 96), (64, 128)]
    for h, w in sizes:
        single, reset = time_single(_lane_maker(h, w), args.steps, args.repeats, lane=True)
        vec = None if args.no_vector else time_vector(_lane_maker(h, w), args.steps, args.repeats, lane=True)
        rows.append(("LTC/LaneKeeping-v0", f"{h}x{w}", single, vec, reset))
        print(
            f"LaneKeeping {h}x{w}: {single:.0f} steps/s single, {vec or float('nan'):.0f} vector-2",
            flush=True,
        )
    car: tuple[float, float | None] | None = None
    if not args.no_carracing:
        c_single, c_reset = time_single(_carracing_maker, args.steps, args.repeats, lane=False)
        c_vec = (
            None if args.no_vector else time_vector(_carracing_maker, args.steps, args.repeats, lane=False)
        )
        rows.append(("CarRacing-v3", "96x96", c_single, c_vec, c_reset))
        car = (c_single, c_vec)
        print(
            f"CarRacing 96x96: {c_single:.0f} steps/s single, {c_vec or float('nan'):.0f} vector-2",
            flush=True,
        )

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Environment speed: LTC/LaneKeeping-v0 vs CarRacing-v3",
        "",
        f"- Date: {now}",
        f"- Machine: {_machine()}",
        f"- Versions: {_versions()}",
        f"- Command: `{' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}`",
        f"- Method: median of {args.repeats} blocks of {args.steps} steps after warm-up, resets included; "
        "vector = `AsyncVectorEnv` with 2 workers, env-steps/s (vector steps x 2). LaneKeeping driven by a "
        "centre-line follower from `info`, CarRacing by random actions.",
        "",
        "| env | obs (H x W) | steps/s, 1 env | steps/s, 2 workers | reset (ms) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, size, single, vec, reset in rows:
        vec_s = "-" if vec is None else f"{vec:.0f}"
        reset_s = "-" if reset is None else f"{1000 * reset:.1f}"
        lines.append(f"| {name} | {size} | {single:.0f} | {vec_s} | {reset_s} |")
    if car is not None:
        lk96 = next(r for r in rows if r[0] == "LTC/LaneKeeping-v0" and r[1] == "96x96")
        lines.append("")
        lines.append(f"- Ratio at 96x96, 1 env: {lk96[2] / car[0]:.2f}x CarRacing-v3 (goal >= 1.5x).")
        if car[1] is not None and lk96[3] is not None:
            lines.append(
                f"- Ratio at 96x96, LaneKeeping with 2 workers vs CarRacing 1 env: {lk96[3] / car[0]:.2f}x "
                f"(goal >= 2.5x); vs CarRacing with 2 workers: {lk96[3] / car[1]:.2f}x."
            )
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.write.with_suffix(args.write.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, args.write)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
