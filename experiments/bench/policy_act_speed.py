"""Policy.act speed: CPU time per batch-1 control step, fast path against the general path.

For each policy (vector observations into the lane-keeping NCP-19 LTC; the lane-keeping ConvHead + NCP-19 on
48x96 and 32x64 camera frames) it times, interleaved in one process with one torch thread:

* ``act``: ``Policy.act(obs, state)`` (the fast path for these calls), also inside ``torch.no_grad()`` as
  ``PolicyAgent`` calls it;
* ``general``: ``Policy.act_general(obs, state)``, the pre-fast-path ``act`` kept verbatim as the fallback
  (``obs[:, None]`` through ``forward`` under ``no_grad`` with ``eval()`` / ``train()`` around it);
* ``networks``: only the network calls ``act`` makes, called directly under ``no_grad``: ``controller(x, h,
  dt)`` and ``action_head`` for vectors; image conversion, standardisation, ``perception``, ``controller`` and
  ``action_head`` for frames (the floor of any ``act``; ``act - networks`` is the overhead around them).

``act`` and ``general`` run in eval mode and in training mode (the mode ``act`` must switch off and restore).
Before timing it checks that both paths give bit-identical actions and states over a run with the state
carried and episode resets, and that the policy comes back in its mode.

Usage:
    OMP_NUM_THREADS=1 python experiments/bench/policy_act_speed.py [--calls 2000] [--rounds 7]
        [--markdown experiments/results/policy_act_speed.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltc_control._version import __version__
from ltc_control.controllers import ControllerConfig
from ltc_control.perception import frames_to_float, standardize
from ltc_control.policy import Policy, PolicyConfig


def _policies() -> dict[str, tuple[Policy, np.ndarray]]:
    """The benchmarked policies (default LTC controller = lane-keeping NCP-19) and one observation each."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ctrl = ControllerConfig(kind="ltc")
    out: dict[str, tuple[Policy, np.ndarray]] = {
        "vector NCP-19 (D=32)": (
            Policy(PolicyConfig(observation="vector", vector_size=32, controller=ctrl)),
            rng.standard_normal(32).astype(np.float32),
        )
    }
    for h, w in ((48, 96), (32, 64)):
        out[f"camera {h}x{w} + NCP-19"] = (
            Policy(PolicyConfig(image_shape=(h, w, 3), controller=ctrl)),
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        )
    return out


def _check_identical(policy: Policy, obs: np.ndarray, steps: int = 120) -> None:
    """Fast and general path: bit-identical actions and states, state carried, a reset midway, both modes."""
    rng = np.random.default_rng(1)
    for training in (False, True):
        policy.train(training)
        s_fast: torch.Tensor | None = None
        s_gen: torch.Tensor | None = None
        for t in range(steps):
            if t == steps // 2:
                s_fast = s_gen = None  # episode reset
            o = obs if obs.dtype == np.uint8 else obs + rng.standard_normal(obs.shape).astype(obs.dtype)
            a_fast, s_fast = policy.act(o, s_fast)
            a_gen, s_gen = policy.act_general(o, s_gen)
            if not (np.array_equal(a_fast, a_gen) and torch.equal(s_fast, s_gen)):
                raise AssertionError(f"fast and general act differ at step {t} (training={training})")
        if policy.training is not training:
            raise AssertionError("act did not restore the policy's mode")
    policy.eval()


def _network_step(policy: Policy, obs: np.ndarray) -> Callable[[list[Any]], None]:
    """Only the networks of one act call (no checks, no mode switch), state in ``st[0]``."""
    cfg = policy.config
    dt = cfg.controller.dt
    if policy.perception is None:
        x = torch.from_numpy(obs[None, None])

        def vec(st: list[Any]) -> None:
            with torch.no_grad():
                y, st[0] = policy.controller(x, st[0], dt)
                policy.action_head(y)

        return vec
    frames = torch.from_numpy(obs[None, None])
    head = policy.perception

    def img(st: list[Any]) -> None:
        with torch.no_grad():
            feats = head(standardize(frames_to_float(frames))).view(1, 1, -1)
            y, st[0] = policy.controller(feats, st[0], dt)
            policy.action_head(y)

    return img


def _time(fns: dict[str, Callable[[], None]], calls: int, rounds: int) -> dict[str, float]:
    """Median CPU-us per call of each function, the functions interleaved round by round."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(calls // 10):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time_ns()
            for _ in range(calls):
                fn()
            per[name].append((time.process_time_ns() - t0) / calls / 1e3)
    return {k: statistics.median(v) for k, v in per.items()}


def _bench(policy: Policy, obs: np.ndarray, calls: int, rounds: int) -> dict[str, float]:
    policy.eval()
    st_a: list[Any] = [policy.reset(1)]
    st_g: list[Any] = [policy.reset(1)]
    st_n: list[Any] = [policy.reset(1)]
    net = _network_step(policy, obs)

    def act() -> None:
        st_a[0] = policy.act(obs, st_a[0])[1]

    def general() -> None:
        st_g[0] = policy.act_general(obs, st_g[0])[1]

    def act_no_grad() -> None:  # a control loop that disables gradients itself (as PolicyAgent does)
        with torch.no_grad():
            st_a[0] = policy.act(obs, st_a[0])[1]

    fns = {"act": act, "act_no_grad": act_no_grad, "general": general, "networks": lambda: net(st_n)}
    out = _time(fns, calls, rounds)
    policy.train()
    train = _time({"act": act, "general": general}, calls, rounds)
    policy.eval()
    out["act_train"], out["general_train"] = train["act"], train["general"]
    return out


def main(argv: list[str]) -> int:
    """Runs the benchmark; prints a markdown section (and writes it with ``--markdown``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="act calls per timed round (vector policy)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds (the median is reported)")
    ap.add_argument("--markdown", type=Path, default=None, help="write the markdown section here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    start = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for name, (policy, obs) in _policies().items():
        _check_identical(policy, obs)
        calls = args.calls if policy.perception is None else max(args.calls // 10, 20)
        r = _bench(policy, obs, calls, args.rounds)
        rows.append((name, calls, r))
        print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    lines = [
        "## Policy.act per call, batch 1 (CPU-us)",
        "",
        f"- date: {start}; machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (shared machine: absolute "
        f"numbers are noisy; the columns of one row come from interleaved rounds in one process); end load "
        f"{os.getloadavg()[0]:.2f}",
        f"- python {platform.python_version()}, torch {torch.__version__} (1 thread), "
        f"numpy {np.__version__}, ltc_control {__version__}; float32; "
        f"LTC implementation `{_ltc_implementation()}`",
        f"- CPU time (process_time) per call, median of {args.rounds} interleaved rounds of N calls; "
        "observations numpy (float32 vector / uint8 frame), state carried; `general` = the pre-change `act` "
        "(kept as the fallback path); `networks` = only the network calls `act` makes, action head included "
        "(floor); fast and general paths checked bit-identical (actions and states, 120 steps with a reset, "
        "both modes)",
        "",
        "| policy | N | general (eval) | **act (eval)** | act in `no_grad` (eval) | networks "
        "| act - networks | general (train) | **act (train)** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, calls, r in rows:
        lines.append(
            f"| {name} | {calls} | {r['general']:.1f} | **{r['act']:.1f}** | {r['act_no_grad']:.1f} | "
            f"{r['networks']:.1f} | "
            f"{r['act'] - r['networks']:.1f} | {r['general_train']:.1f} | **{r['act_train']:.1f}** |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    return 0


def _ltc_implementation() -> str:
    """The LTC implementation the vector policy's cell ran (``fused-c`` when the C kernel loaded)."""
    policy = Policy(PolicyConfig(observation="vector", vector_size=32))
    policy.act(np.zeros(32, np.float32))
    return str(policy.controller.cell.implementation_name)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
