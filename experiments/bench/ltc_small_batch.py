"""Small batches in the fused LTC kernel: sample by sample over the synapses vs over the batch lanes.

The C kernel vectorises a batch over L lanes (16 float32). A batch of a few sequences, as RecurrentPPO's
minibatches are (sb3-contrib splits a minibatch at episode starts and pads the pieces into a few sequences),
fills one or two lanes and computes the rest as copies. Batches up to the kernel's small-batch limit (8 for
float32, 6 for float64) therefore run sample by sample, each vectorised over its synapses (the same states bit
for bit). This probe measures both paths on the same cell, side by side in one process (interleaved rounds,
medians of CPU time: the machine is shared):

* ``kernel``: the dense 16-neuron LTC (6 inputs, ``LtcPolicy``'s default circuit) and the 19-neuron
  lane-keeping NCP (32 inputs), forward + backward of T = 64 steps (``train``) and a no-grad step
  (``step``), at several batch sizes; ``lanes`` is the path with the limit at 0, ``small`` with the limit at
  the batch size.
* ``rl`` (with ``--rl``): ``RecurrentPPO(LtcPolicy)`` with its defaults on a task (a suite task's PPO
  settings, or an ``rl_benchmark`` config with ``policies: defaults``), training steps per CPU-second with
  the limit at 0 (the kernel as it was before this path, for every batch above 1) and at its default, and
  RecurrentPPO's default LSTM policy beside them; also the batch sizes the kernel saw in training.

Usage::

    .venv/bin/python experiments/bench/ltc_small_batch.py [--rounds 5] [--min-time 0.3] \\
        [--rl experiments/configs/rl_acrobot_novel.yaml --rl PendulumNoVel-v1 --rl-steps 8192] \\
        [--write experiments/results/ltc_small_batch.md]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_common import emit_report, median_of, provenance_lines, time_call

#: workload name -> (wiring builder name, inputs, description)
CELLS: dict[str, str] = {
    "dense16": "dense 16-neuron LTC, 6 inputs, 1 motor (LtcPolicy's default circuit)",
    "ncp19": "19-neuron lane-keeping NCP, 32 inputs",
}
BATCHES = (1, 2, 4, 8)


def _cell(name: str) -> tuple[Any, int]:
    from ltc_control.cells.ltc import LTCCell
    from ltc_control.wirings import FullyConnected, lane_keeping_ncp

    if name == "dense16":
        return LTCCell(FullyConnected(16, input_size=6, output_size=1)), 6
    return LTCCell(lane_keeping_ncp()), 32


def _call(cell: Any, x: Any, grad: bool) -> Callable[[], None]:
    import torch

    def run() -> None:
        with torch.set_grad_enabled(grad):
            y, h = cell.forward_sequence(x)
            if grad:
                (y.square().mean() + h.square().mean()).backward()

    return run


def kernel_rows(rounds: int, min_time: float) -> list[dict[str, Any]]:
    """One row per (cell, mode, batch): median CPU ms per call on each path and the ratio."""
    import torch

    from ltc_control.cells.ltc_fused import load_kernel

    kernel = load_kernel()
    if kernel is None:
        raise SystemExit("the compiled LTC kernel is unavailable here; nothing to compare")
    default = kernel.set_small_batch_limit(torch.float32, None)
    rows = []
    torch.manual_seed(0)
    try:
        for name in CELLS:
            cell, inputs = _cell(name)
            for mode, steps in (("train", 64), ("step", 1)):
                for b in BATCHES:
                    fn = _call(cell, torch.randn(b, steps, inputs), mode == "train")
                    samples: dict[str, list[float]] = {"lanes": [], "small": []}
                    for _ in range(rounds):
                        for path, limit in (("lanes", 0), ("small", b)):
                            kernel.set_small_batch_limit(torch.float32, limit)
                            samples[path].append(time_call(fn, min_time)[1])
                    cpu = {p: median_of(s) for p, s in samples.items()}
                    rows.append(
                        {
                            "part": "kernel",
                            "cell": name,
                            "mode": mode,
                            "batch": b,
                            "lanes_cpu_ms": 1e3 * cpu["lanes"],
                            "small_cpu_ms": 1e3 * cpu["small"],
                            "speedup_cpu": cpu["lanes"] / cpu["small"],
                            "default_path": "small" if b <= default else "lanes",
                        }
                    )
    finally:
        kernel.set_small_batch_limit(torch.float32, None)
    return rows


SUITE = Path(__file__).resolve().parents[1] / "configs" / "rl_novel_suite.yaml"


def rl_config(spec: str) -> Any:
    """The :mod:`rl_bench` config named by ``spec``: a config file with ``policies: defaults``, or a task
    (``env_id``) of the defaults suite (``experiments/configs/rl_novel_suite.yaml``, its PPO settings)."""
    from rl_bench_config import BenchmarkConfig
    from rl_suite import SuiteConfig

    from ltc_control.config import load_yaml

    if spec.endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise SystemExit(f"--rl: no such config file: {path}")
        config = load_yaml(BenchmarkConfig, path)
        if config.policies != "defaults":
            raise SystemExit(f"--rl: {path} sets policies={config.policies!r}; this probe runs the defaults")
        return config
    suite = load_yaml(SuiteConfig, SUITE)
    tasks = {t.env_id: t for t in suite.tasks}
    if spec not in tasks:
        raise SystemExit(f"--rl: {spec!r} is neither a config file nor a suite task; tasks: {sorted(tasks)}")
    return suite.benchmark(tasks[spec])


def rl_rows(spec: str, steps: int, rounds: int) -> list[dict[str, Any]]:
    """``RecurrentPPO(LtcPolicy)`` with its defaults on one task: training steps per CPU-second with the
    small-batch path off (limit 0) and at its default, and RecurrentPPO's default LSTM policy beside them,
    interleaved; and the kernel's batch sizes in training."""
    import torch
    from rl_bench import make_model

    from ltc_control.cells import ltc_fused

    torch.set_num_threads(1)
    config = rl_config(spec)
    kernel = ltc_fused.load_kernel()
    if kernel is None:
        raise SystemExit("the compiled LTC kernel is unavailable here; nothing to compare")
    batches: collections.Counter[int] = collections.Counter()
    original = ltc_fused._FusedLTCFunction.forward

    def counting(ctx: Any, kernel_: Any, edges: Any, unfolds: int, eps: float, x: Any, *rest: Any) -> Any:
        if any(ctx.needs_input_grad[4:]):
            batches[int(x.shape[0])] += 1
        return original(ctx, kernel_, edges, unfolds, eps, x, *rest)

    samples: dict[str, list[float]] = {"lanes": [], "small": [], "lstm": []}
    try:
        for r in range(rounds):
            for path, limit in (("lanes", 0), ("small", None), ("lstm", None)):
                kernel.set_small_batch_limit(torch.float32, limit)
                model = make_model(config, "lstm" if path == "lstm" else "ltc", seed=r)
                if path == "small" and r == 0:
                    ltc_fused._FusedLTCFunction.forward = staticmethod(counting)  # type: ignore[method-assign,assignment]
                cpu0, wall0 = time.process_time(), time.perf_counter()
                model.learn(total_timesteps=steps)
                cpu = time.process_time() - cpu0
                ltc_fused._FusedLTCFunction.forward = staticmethod(original)  # type: ignore[method-assign,assignment]
                samples[path].append(model.num_timesteps / cpu)
                print(
                    f"  {config.env_id} round {r} {path}: {model.num_timesteps / cpu:.0f} steps/CPU-s "
                    f"({time.perf_counter() - wall0:.1f} s wall)",
                    flush=True,
                )
                model.get_env().close()
    finally:
        ltc_fused._FusedLTCFunction.forward = staticmethod(original)  # type: ignore[method-assign,assignment]
        kernel.set_small_batch_limit(torch.float32, None)
    rate = {p: median_of(s) for p, s in samples.items()}
    total = sum(batches.values())
    shares = ", ".join(f"{b}: {100 * n / total:.0f}%" for b, n in sorted(batches.items())[:8])
    return [
        {
            "part": "rl",
            "env_id": config.env_id,
            "source": spec,
            "ppo": f"{config.ppo.n_envs} envs x {config.ppo.n_steps}, minibatch {config.ppo.batch_size}",
            "steps": steps,
            "rounds": rounds,
            "lanes_steps_per_cpu_s": rate["lanes"],
            "small_steps_per_cpu_s": rate["small"],
            "lstm_steps_per_cpu_s": rate["lstm"],
            "speedup_cpu": rate["small"] / rate["lanes"],
            "ltc_vs_lstm_before": rate["lanes"] / rate["lstm"],
            "ltc_vs_lstm": rate["small"] / rate["lstm"],
            "train_batch_sizes": shares,
        }
    ]


def markdown(rows: list[dict[str, Any]], cli: list[str]) -> str:
    """The report: provenance, the kernel table, and the RL table when measured."""
    lines = [
        "# Fused LTC kernel, small batches: sample by sample (synapse-vectorised) vs batch lanes",
        "",
        *provenance_lines(__file__, cli),
        "- One torch thread; float32; medians of interleaved rounds (CPU time); train = forward +",
        "  backward of T = 64 steps; step = one no-grad step (includes the Python call overhead).",
        *(f"- `{k}`: {v}" for k, v in CELLS.items()),
    ]
    kernel = [r for r in rows if r["part"] == "kernel"]
    if kernel:
        lines += [
            "",
            "| cell | mode | batch | lanes (CPU ms) | small (CPU ms) | speed-up (CPU) | default path |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in kernel:
            lines.append(
                f"| {r['cell']} | {r['mode']} | {r['batch']} | {r['lanes_cpu_ms']:.3f} "
                f"| {r['small_cpu_ms']:.3f} | **{r['speedup_cpu']:.2f}x** | {r['default_path']} |"
            )
    rl = [r for r in rows if r["part"] == "rl"]
    if rl:
        lines += [
            "",
            "RecurrentPPO training steps per CPU-second (rollouts + updates; medians over rounds, each",
            "round a fresh model per column, seeded by the round): `LtcPolicy()` with the small-batch path",
            "off (limit 0: the kernel before it, for every batch above 1) and on (default), and",
            "`MlpLstmPolicy` (defaults):",
            "",
            "| task (PPO) | steps x rounds | LTC, limit 0 | LTC, default | LSTM | speed-up (CPU) "
            "| LTC / LSTM before -> now | batch sizes in LTC training (share of kernel calls) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in rl:
            lines.append(
                f"| {r['env_id']} ({r['ppo']}) | {r['steps']:,} x {r['rounds']} "
                f"| {r['lanes_steps_per_cpu_s']:.0f} | {r['small_steps_per_cpu_s']:.0f} "
                f"| {r['lstm_steps_per_cpu_s']:.0f} | **{r['speedup_cpu']:.2f}x** "
                f"| {r['ltc_vs_lstm_before']:.2f}x -> **{r['ltc_vs_lstm']:.2f}x** "
                f"| {r['train_batch_sizes']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median over them)")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timing sample")
    parser.add_argument(
        "--rl",
        action="append",
        default=[],
        help="a suite task (env id) or an rl_benchmark config with policies: defaults (may repeat)",
    )
    parser.add_argument("--rl-steps", type=int, default=8192, help="training steps per RL round")
    parser.add_argument("--rl-rounds", type=int, default=2, help="RL rounds per path")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel table")
    parser.add_argument("--write", type=Path, help="save the Markdown report there (+ .jsonl rows)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or not args.min_time > 0 or args.rl_steps < 1 or args.rl_rounds < 1:
        parser.error("--rounds, --rl-steps and --rl-rounds must be >= 1 and --min-time > 0")
    for spec in args.rl:
        rl_config(spec)  # a bad task or file fails before anything runs
    rows = [] if args.no_kernel else kernel_rows(args.rounds, args.min_time)
    for spec in args.rl:
        rows += rl_rows(spec, args.rl_steps, args.rl_rounds)
    emit_report(markdown(rows, list(sys.argv[1:] if argv is None else argv)), rows, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
