"""Export speed: batch-1 control-step latency of the exported ONNX policy (onnxruntime, CPU) against
``Policy.act``, side by side in one process.

For each policy (vector observations into the lane-keeping NCP-19 LTC; the ConvHead + NCP-19 on the env's
64x128 camera and on the small 32x64 camera) it exports the control step (``ltc_control.export``, parity
checked), then times, in interleaved rounds:

* ``Policy.act``: ``policy.act(obs, state)`` with one torch thread (the LTC's native ``fused-c`` step);
* ``ORT tuned``: ``session.run`` on a session from :func:`ltc_control.export.onnx_session` (1 intra-op
  thread, sequential execution, all graph optimisations);
* ``ORT tuned + IO binding``: the same session through ``run_with_iobinding`` (inputs bound once, in place;
  the loop rebinds the state each step as a control loop must);
* ``ORT default``: ``InferenceSession`` with default options (all cores, default optimisation level);
* ``ORT tuned, reference LTC solver``: the tuned session on an export with ``ltc_solver="reference"`` (the
  cell's reference solver op for op, ~15 graph nodes per unfold, instead of the default
  :class:`~ltc_control.export.LTCMatmulStep`, 7);
* ``torch.export``: ``torch.export.load(policy.pt2).module()`` called under ``no_grad``.

Each cell is the median over rounds of the CPU time (``process_time``) per call, and of the wall time per
call; the state is carried from call to call. Before timing, it checks that the ORT and torch.export steps
match ``Policy.act`` on a few steps.

Usage:
    OMP_NUM_THREADS=1 python experiments/bench/export_speed.py [--calls 2000] [--rounds 7]
        [--markdown experiments/results/export_speed.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ltc_control._version import __version__
from ltc_control.controllers import ControllerConfig
from ltc_control.export import export_policy, onnx_session
from ltc_control.policy import Policy, PolicyConfig

COLUMNS = (
    "Policy.act",
    "ORT tuned",
    "ORT tuned + IO binding",
    "ORT default",
    "ORT tuned, reference LTC solver",
    "torch.export",
)


def _policies() -> dict[str, tuple[Policy, np.ndarray[Any, Any], int]]:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ctrl = ControllerConfig(kind="ltc")
    out: dict[str, tuple[Policy, np.ndarray[Any, Any], int]] = {
        "vector NCP-19 (D=32)": (
            Policy(PolicyConfig(observation="vector", vector_size=32, controller=ctrl)).eval(),
            rng.standard_normal((1, 32)).astype(np.float32),
            1,
        )
    }
    for h, w, div in ((64, 128, 10), (32, 64, 5)):
        out[f"camera {h}x{w} + NCP-19"] = (
            Policy(PolicyConfig(image_shape=(h, w, 3), controller=ctrl)).eval(),
            rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8),
            div,
        )
    return out


def _runners(policy: Policy, obs: np.ndarray, folder: Path) -> dict[str, Callable[[], Any]]:
    """One zero-argument step function per column; each carries its own state."""
    dt = np.ones(1, np.float32)
    box: dict[str, Any] = {"act": policy.reset(1), "ort": np.zeros((1, policy.state_size), np.float32)}
    box["iob"] = box["ort"].copy()
    box["def"] = box["ort"].copy()
    box["pt2"] = torch.zeros(1, policy.state_size)

    def act() -> None:
        _, box["act"] = policy.act(obs, box["act"])

    tuned = onnx_session(folder / "policy.onnx")

    def ort_tuned() -> None:
        _, box["ort"] = tuned.run(None, {"observation": obs, "state": box["ort"], "dt": dt})

    binding = tuned.io_binding()
    binding.bind_cpu_input("observation", obs)
    binding.bind_cpu_input("dt", dt)
    binding.bind_output("action")
    binding.bind_output("next_state")

    def ort_iobinding() -> None:
        binding.bind_cpu_input("state", box["iob"])
        tuned.run_with_iobinding(binding)
        box["iob"] = binding.get_outputs()[1].numpy()

    default = ort.InferenceSession(str(folder / "policy.onnx"), providers=["CPUExecutionProvider"])

    def ort_default() -> None:
        _, box["def"] = default.run(None, {"observation": obs, "state": box["def"], "dt": dt})

    module = torch.export.load(str(folder / "policy.pt2")).module()
    obs_t, dt_t = torch.from_numpy(obs), torch.from_numpy(dt)

    def pt2() -> None:
        with torch.no_grad():
            _, box["pt2"] = module(obs_t, box["pt2"], dt_t)

    reference = onnx_session(folder.parent / (folder.name + "-reference") / "policy.onnx")
    box["ref"] = box["ort"].copy()

    def ort_reference() -> None:
        _, box["ref"] = reference.run(None, {"observation": obs, "state": box["ref"], "dt": dt})

    return dict(zip(COLUMNS, (act, ort_tuned, ort_iobinding, ort_default, ort_reference, pt2)))


def _check(runners: dict[str, Callable[[], Any]], policy: Policy, obs: np.ndarray, folder: Path) -> float:
    """Largest |difference| of ORT / torch.export states to Policy.act over 20 steps from zeros."""
    sess = onnx_session(folder / "policy.onnx")
    module = torch.export.load(str(folder / "policy.pt2")).module()
    h_a, h_o, h_e = (
        policy.reset(1),
        np.zeros((1, policy.state_size), np.float32),
        torch.zeros(1, policy.state_size),
    )
    worst = 0.0
    dt = np.ones(1, np.float32)
    for _ in range(20):
        a_a, h_a = policy.act(obs, h_a)
        a_o, h_o = sess.run(None, {"observation": obs, "state": h_o, "dt": dt})
        with torch.no_grad():
            a_e, h_e = module(torch.from_numpy(obs), h_e, torch.from_numpy(dt))
        worst = max(worst, float(np.abs(a_a - a_o).max()), float(np.abs(h_a.numpy() - h_o).max()))
        worst = max(worst, float(np.abs(a_a - a_e.numpy()).max()), float((h_a - h_e).abs().max()))
    return worst


def _time(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    c1, w1 = time.process_time(), time.perf_counter()
    return (c1 - c0) / calls * 1e6, (w1 - w0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per round for the vector policy")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (policy, obs, div) in _policies().items():
            folder = Path(tmp) / name.split()[0] / name.split()[1]
            result = export_policy(policy, folder)
            export_policy(
                policy, folder.parent / (folder.name + "-reference"), "onnx", ltc_solver="reference"
            )
            parity = max(
                max(r["max_abs_action"], r["max_abs_state"])
                for r in result.manifest["parity"]["results"].values()
            )
            runners = _runners(policy, obs, folder)
            check = _check(runners, policy, obs, folder)
            calls = max(50, args.calls // div)
            for fn in runners.values():
                _time(fn, max(20, calls // 10))  # warm-up
            cpu: dict[str, list[float]] = {c: [] for c in COLUMNS}
            wall: dict[str, list[float]] = {c: [] for c in COLUMNS}
            for _ in range(args.rounds):
                for col, fn in runners.items():
                    c, w = _time(fn, calls)
                    cpu[col].append(c)
                    wall[col].append(w)
            med_cpu = {c: statistics.median(v) for c, v in cpu.items()}
            med_wall = {c: statistics.median(v) for c, v in wall.items()}
            rows.append((name, calls, med_cpu, med_wall, parity, check))
            print(name, {c: round(v, 1) for c, v in med_cpu.items()}, f"parity {parity:.2g}", flush=True)
    load1 = os.getloadavg()
    lines = [
        "## Batch-1 step latency, exported ONNX (onnxruntime) vs Policy.act (CPU-us per call)",
        "",
        f"- date: {started}; machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average at start {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}, at end {load1[0]:.2f} "
        "(shared machine: absolute numbers are noisy; the columns of one row come from interleaved rounds "
        "in one process)",
        f"- python {platform.python_version()}, torch {torch.__version__} (1 thread), onnxruntime "
        f"{ort.__version__}, numpy {np.__version__}, ltc_control {__version__}; float32; "
        f"{args.rounds} interleaved rounds, median",
        "- parity: export-time check (1,000 synthetic steps, irregular dt) and 20 steps against `Policy.act` "
        "before timing, both <= 1e-5",
        "",
        "CPU time (process_time) per call:",
        "",
        "| policy | N | "
        + " | ".join(f"**{c}**" if c in ("Policy.act", "ORT tuned") else c for c in COLUMNS)
        + " | ORT tuned / act | parity |",
        "|---|---:|" + "---:|" * len(COLUMNS) + "---:|---:|",
    ]
    for name, calls, med_cpu, _, parity, check in rows:
        ratio = med_cpu["ORT tuned"] / med_cpu["Policy.act"]
        lines.append(
            f"| {name} | {calls} | "
            + " | ".join(f"{med_cpu[c]:.1f}" for c in COLUMNS)
            + f" | {ratio:.2f} | {max(parity, check):.1g} |"
        )
    lines += [
        "",
        "Wall time per call:",
        "",
        "| policy | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name, _, _, med_wall, _, _ in rows:
        lines.append(f"| {name} | " + " | ".join(f"{med_wall[c]:.1f}" for c in COLUMNS) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
