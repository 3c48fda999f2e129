"""LSTM / GRU sequence speed: the cells' fused path (torch's ``torch.lstm`` / ``torch.gru`` over the whole
sequence) against the base class's step loop, on the same cell, side by side in one process (interleaved
rounds, medians, ratios of CPU time; the machine is shared, so absolute numbers are noisy).

Workloads (:data:`WORKLOADS`): ``ppo``: short sequences as in a RecurrentPPO minibatch (sb3-contrib splits
its samples at episode starts and pads them), an LSTM-64 reading 6 observations as a separate critic does on
AcrobotNoVel-v1; ``controller``: an imitation-style batch (32 x 64 steps, 32 inputs). Every sequence restarts
at its first step only, as in RecurrentPPO's training batches (the fused path's condition).

Usage::

    .venv/bin/python experiments/bench/gated_seq_speed.py [--rounds 7] [--min-time 0.5] \\
        [--write experiments/results/gated_seq_speed.md]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_common import emit_report, median_of, provenance_lines, time_call

#: workload name -> (batch, steps, inputs, hidden, description)
WORKLOADS: dict[str, tuple[int, int, int, int, str]] = {
    "ppo": (16, 16, 6, 64, "16 sequences x 16 steps, 6 inputs, 64 units (a PPO minibatch's LSTM critic)"),
    "controller": (32, 64, 32, 64, "32 sequences x 64 steps, 32 inputs, 64 units (an imitation batch)"),
}


def _callables(kind: str, batch: int, steps: int, inputs: int, hidden: int) -> dict[str, Any]:
    import torch

    from ltc_control.cells.base import RecurrentCell
    from ltc_control.cells.baselines import GRUCell, LSTMCell

    torch.manual_seed(0)
    cell = (LSTMCell if kind == "lstm" else GRUCell)(inputs, hidden, 8)
    x = torch.randn(batch, steps, inputs)
    starts = torch.zeros(batch, steps)
    starts[:, 0] = 1.0

    def fused(grad: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.set_grad_enabled(grad):
                y, h = cell.forward_sequence(x, None, None, starts)
                if grad:
                    (y.square().mean() + h.square().mean()).backward()

        return run

    def loop(grad: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.set_grad_enabled(grad):
                y, h = RecurrentCell.forward_sequence(cell, x, None, None, starts)
                if grad:
                    (y.square().mean() + h.square().mean()).backward()

        return run

    y_f, h_f = cell.forward_sequence(x, None, None, starts)
    y_l, h_l = RecurrentCell.forward_sequence(cell, x, None, None, starts)
    diff = max(float((y_f - y_l).abs().max()), float((h_f - h_l).abs().max()))
    return {
        "fused": {"train": fused(True), "forward": fused(False)},
        "loop": {"train": loop(True), "forward": loop(False)},
        "max_abs_diff": diff,
    }


def run_benchmark(rounds: int = 7, min_time: float = 0.5) -> list[dict[str, Any]]:
    """One row per (cell, workload, mode): median CPU and wall time per call of each path, and the ratio."""
    import torch

    torch.set_num_threads(1)
    rows = []
    for kind in ("lstm", "gru"):
        for name, (b, t, f, h, _) in WORKLOADS.items():
            calls = _callables(kind, b, t, f, h)
            for mode in ("train", "forward"):
                samples: dict[str, list[tuple[float, float]]] = {"fused": [], "loop": []}
                for _ in range(rounds):  # interleaved: both paths see the same load
                    for path in ("fused", "loop"):
                        samples[path].append(time_call(calls[path][mode], min_time))
                cpu = {p: median_of([c for _, c in s]) for p, s in samples.items()}
                wall = {p: median_of([w for w, _ in s]) for p, s in samples.items()}
                rows.append(
                    {
                        "cell": kind,
                        "workload": name,
                        "mode": mode,
                        "fused_cpu_ms": 1e3 * cpu["fused"],
                        "loop_cpu_ms": 1e3 * cpu["loop"],
                        "fused_wall_ms": 1e3 * wall["fused"],
                        "loop_wall_ms": 1e3 * wall["loop"],
                        "speedup_cpu": cpu["loop"] / cpu["fused"],
                        "max_abs_diff": calls["max_abs_diff"],
                    }
                )
    return rows


def markdown(rows: list[dict[str, Any]], cli: list[str]) -> str:
    """The report: provenance, the workloads, one table row per (cell, workload, mode)."""
    lines = [
        "# LSTM / GRU sequences: fused kernel vs step loop",
        "",
        *provenance_lines(__file__, cli),
        "- One torch thread; medians of interleaved rounds; train = forward + backward of a mean-square",
        "  loss; forward = no grad. Every sequence restarts at its first step only (RecurrentPPO-like).",
        "",
        *(f"- `{k}`: {v[4]}" for k, v in WORKLOADS.items()),
        "",
        "| cell | workload | mode | fused (CPU ms) | step loop (CPU ms) | speed-up (CPU) | max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['workload']} | {r['mode']} | {r['fused_cpu_ms']:.2f} "
            f"| {r['loop_cpu_ms']:.2f} | **{r['speedup_cpu']:.1f}x** | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median over them)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per timing sample")
    parser.add_argument("--write", type=Path, help="save the Markdown report there (+ .jsonl rows)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or not args.min_time > 0:
        parser.error("--rounds must be >= 1 and --min-time > 0")
    rows = run_benchmark(args.rounds, args.min_time)
    emit_report(markdown(rows, list(sys.argv[1:] if argv is None else argv)), rows, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
