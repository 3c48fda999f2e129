"""Environment speed: LTC/LaneKeeping-v0 camera steps per second against Gymnasium's CarRacing-v3, same run.

Measures, in one process on this machine, steps/s (median of ``--repeats`` timed blocks of ``--steps``
steps after a warm-up) for the lane-keeping env with camera observations at 64x64, 96x96 and the default
64x128, as a single env and vectorised over 2 ``AsyncVectorEnv`` workers, and the same for ``CarRacing-v3``
(96x96). The lane-keeping env is driven by a simple centre-line follower reading ``info`` (so episodes last,
as with an expert), CarRacing by random actions; episode resets are included in the timing. Also reports the
reset time.

Usage::

    python experiments/bench/env_speed.py [--steps 300] [--repeats 5] [--write FILE.md]
    ltc-control bench env ...   # the same, from a checkout
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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import ltc_control.envs  # noqa: E402, F401  (registers the LTC/ ids)


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


class SingleRunner:
    """One env stepped in timed blocks; episode resets happen inside the blocks and are also timed alone."""

    def __init__(self, make: Callable[[], gym.Env], lane: bool) -> None:
        self.env = make()
        self.lane = lane
        self.seed = 0
        self.env.action_space.seed(0)
        _, self.info = self.env.reset(seed=self.seed)
        self.resets: list[float] = []
        self.block(20)  # warm-up: renderer creation, first compile

    def _act(self) -> Any:
        return follower(self.info) if self.lane else self.env.action_space.sample()

    def block(self, steps: int) -> tuple[float, float]:
        """Step ``steps`` times; return (steps per wall-clock second, steps per CPU second (this process))."""
        t0 = time.perf_counter()
        c0 = time.process_time()
        for _ in range(steps):
            _, _, term, trunc, self.info = self.env.step(self._act())
            if term or trunc:
                self.seed += 1
                r0 = time.perf_counter()
                _, self.info = self.env.reset(seed=self.seed)
                self.resets.append(time.perf_counter() - r0)
        return steps / (time.perf_counter() - t0), steps / max(time.process_time() - c0, 1e-9)

    def time_resets(self, n: int = 3) -> None:
        for _ in range(n):
            self.seed += 1
            r0 = time.perf_counter()
            _, self.info = self.env.reset(seed=self.seed)
            self.resets.append(time.perf_counter() - r0)

    def close(self) -> None:
        self.env.close()


class VectorRunner:
    """An ``AsyncVectorEnv`` of ``workers`` copies stepped in timed blocks (env-steps/s: vector steps x n)."""

    def __init__(self, make: Callable[[], gym.Env], lane: bool, workers: int = 2) -> None:
        self.venv = gym.vector.AsyncVectorEnv([make for _ in range(workers)])
        self.lane = lane
        self.workers = workers
        self.venv.action_space.seed(0)
        _, self.infos = self.venv.reset(seed=list(range(workers)))
        self.block(10)

    def _act(self) -> Any:
        if not self.lane:
            return self.venv.action_space.sample()
        items = {k: v for k, v in self.infos.items() if not k.startswith("_")}
        return np.stack([follower({k: v[i] for k, v in items.items()}) for i in range(self.workers)])

    def block(self, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            _, _, _, _, self.infos = self.venv.step(self._act())
        return steps * self.workers / (time.perf_counter() - t0)

    def close(self) -> None:
        self.venv.close()


def measure(
    makers: dict[str, tuple[Callable[[], gym.Env], bool]], steps: int, repeats: int, vector: bool
) -> dict[str, dict[str, float]]:
    """Median steps/s per configuration, timing blocks interleaved round-robin.

    Interleaving makes every configuration sample the same background load, so the ratios stay meaningful on
    a shared machine even when the absolute numbers move.
    """
    out: dict[str, dict[str, float]] = {name: {} for name in makers}
    singles = {name: SingleRunner(make, lane) for name, (make, lane) in makers.items()}
    rates: dict[str, list[float]] = {name: [] for name in makers}
    cpu_rates: dict[str, list[float]] = {name: [] for name in makers}
    for _ in tqdm(range(repeats), desc="single-env blocks"):
        for name, runner in singles.items():
            wall, cpu = runner.block(steps)
            rates[name].append(wall)
            cpu_rates[name].append(cpu)
    for name, runner in singles.items():
        runner.time_resets()
        out[name]["single"] = statistics.median(rates[name])
        out[name]["single_cpu"] = statistics.median(cpu_rates[name])
        out[name]["reset_ms"] = 1000 * statistics.median(runner.resets)
        runner.close()
    if vector:
        vecs = {name: VectorRunner(make, lane) for name, (make, lane) in makers.items()}
        vrates: dict[str, list[float]] = {name: [] for name in makers}
        for _ in tqdm(range(repeats), desc="2-worker blocks"):
            for name, vrunner in vecs.items():
                vrates[name].append(vrunner.block(steps // 2))
        for name, vrunner in vecs.items():
            out[name]["vector"] = statistics.median(vrates[name])
            vrunner.close()
    return out


def _versions() -> str:
    import mujoco

    parts = [
        f"python {platform.python_version()}",
        f"mujoco {mujoco.__version__}",
        f"gymnasium {gym.__version__}",
    ]
    parts.append(f"numpy {np.__version__}")
    try:
        with warnings.catch_warnings():  # Box2D's SWIG types trigger DeprecationWarnings on import
            warnings.simplefilter("ignore", DeprecationWarning)
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
    parser = argparse.ArgumentParser(
        prog="ltc-control bench env", description=(__doc__ or "").split("\n\n")[0]
    )
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

    makers: dict[str, tuple[Callable[[], gym.Env], bool]] = {
        f"LTC/LaneKeeping-v0|{h}x{w}": (_lane_maker(h, w), True) for h, w in [(64, 64), (96, 96), (64, 128)]
    }
    if not args.no_carracing:
        makers["CarRacing-v3|96x96"] = (_carracing_maker, False)
    load_before = os.getloadavg()
    res = measure(makers, args.steps, args.repeats, vector=not args.no_vector)
    load_after = os.getloadavg()

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Environment speed: LTC/LaneKeeping-v0 vs CarRacing-v3",
        "",
        f"- Date: {now}",
        f"- Machine: {_machine()}",
        f"- Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "(a shared machine: absolute numbers move with other users' jobs; ratios are measured side by side)",
        f"- Versions: {_versions()}",
        f"- Command: `{' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}`",
        f"- Method: median of {args.repeats} blocks of {args.steps} steps after warm-up (vector: "
        f"{args.steps // 2} vector steps), blocks of all configurations interleaved round-robin so they "
        "share the same background load; resets included; vector = `AsyncVectorEnv` with 2 workers, "
        "env-steps/s (vector steps x 2). 'per CPU-s' = steps per second of this process's CPU time (what one "
        "free core would give). LaneKeeping driven by a centre-line follower from `info`, CarRacing by "
        "random actions.",
        "",
        "| env | obs (H x W) | steps/s, 1 env | steps per CPU-s, 1 env | steps/s, 2 workers | reset (ms) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key, r in res.items():
        name, size = key.split("|")
        vec_s = f"{r['vector']:.0f}" if "vector" in r else "-"
        lines.append(
            f"| {name} | {size} | {r['single']:.0f} | {r['single_cpu']:.0f} | {vec_s} | {r['reset_ms']:.1f} |"
        )
    if not args.no_carracing:
        car, lk = res["CarRacing-v3|96x96"], res["LTC/LaneKeeping-v0|96x96"]
        lines += [
            "",
            f"- Ratio at 96x96, 1 env: {lk['single'] / car['single']:.2f}x CarRacing-v3 wall-clock "
            f"({lk['single_cpu'] / car['single_cpu']:.2f}x per CPU-second).",
        ]
        if "vector" in lk and "vector" in car:
            lines.append(
                f"- Ratio at 96x96, LaneKeeping with 2 workers vs CarRacing 1 env: "
                f"{lk['vector'] / car['single']:.2f}x; vs CarRacing with 2 workers: "
                f"{lk['vector'] / car['vector']:.2f}x."
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
