"""LTC speed on a CUDA GPU: the fused CUDA kernel against ncps' LTC, our edge-list path and nn.LSTM(32, 64).

The GPU counterpart of ``experiments/bench/ltc_speed.py`` (same workload: input width 32, 6 unfolds, float32;
training = forward + backward of a batch of 32 sequences of 64 steps; forward = the same without gradients;
single step = batch 1, state carried in, synchronised every step as a control loop reading its action is).
It adds a large batch (1024 sequences), where a GPU earns its keep. Every model is timed in the same process,
interleaved, median of repeats; peak memory is ``torch.cuda.max_memory_allocated`` over one training step.
Before timing, it checks that the fused kernel's outputs and gradients match the reference LTC on the GPU.

Usage (on a machine with a CUDA GPU; writes Markdown and JSON):
    python experiments/bench/ltc_speed_cuda.py --markdown experiments/results/ltc_speed_cuda.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

CONFIGS = ("ncp19", "fc64")
BATCHES = [32, 1024]
#: ``--device cpu`` is a dry run of this script on a machine without a GPU (numbers meaningless there)
DEVICE = ["cuda"]
FUSED = {"cuda": "fused-cuda", "cpu": "fused-c"}


def _sync() -> None:
    if DEVICE[0] == "cuda":
        torch.cuda.synchronize()


def _sync_time(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per call: as many calls as fit in ``min_time`` (at least 2), synchronised at both ends."""
    fn()
    _sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= 2 and time.perf_counter() - t0 >= min_time:
            _sync()
            if time.perf_counter() - t0 >= min_time:
                break
    return (time.perf_counter() - t0) / n


def _build(config: str, unfolds: int) -> dict[str, dict[str, Any]]:
    from bench_common import build_ncps_ltc, build_wiring

    from ltc_control.cells.ltc import LTCCell
    from ltc_control.interop import from_ncps

    dev = DEVICE[0]
    wiring = build_wiring(config)
    torch.manual_seed(0)
    ncps_model = build_ncps_ltc(wiring, unfolds).to(dev)
    ours = from_ncps(ncps_model).cell.to(dev)  # same weights
    edges = LTCCell(wiring, implementation="torch-edges", ode_unfolds=unfolds)
    edges.load_state_dict(ours.state_dict())
    edges = edges.to(dev)
    lstm = nn.LSTM(32, 64, batch_first=True).to(dev)
    head = nn.Linear(64, 1).to(dev)
    models: dict[str, dict[str, Any]] = {}

    def ltc_entry(cell: Any) -> dict[str, Any]:
        def run(x: torch.Tensor) -> torch.Tensor:
            return cell.forward_sequence(x)[0]

        h = torch.zeros(1, wiring.units, device=dev)
        x1 = torch.randn(1, 32, device=dev)

        def step() -> None:
            nonlocal h
            _, h = cell(x1, h, 1.0)

        return {"run": run, "step": step, "params": list(cell.parameters())}

    models[f"ltc-control {FUSED[dev]}"] = ltc_entry(ours)
    models["ltc-control torch-edges"] = ltc_entry(edges)

    h_n = [torch.zeros(1, wiring.units, device=dev)]
    x1 = torch.randn(1, 32, device=dev)

    def ncps_step() -> None:
        _, h_n[0] = ncps_model.rnn_cell(x1, h_n[0], 1.0)

    models["ncps LTC"] = {
        "run": lambda x: ncps_model(x)[0],
        "step": ncps_step,
        "params": list(ncps_model.parameters()),
    }
    hc = [(torch.zeros(1, 1, 64, device=dev), torch.zeros(1, 1, 64, device=dev))]
    x1s = torch.randn(1, 1, 32, device=dev)

    def lstm_step() -> None:
        out, hc[0] = lstm(x1s, hc[0])
        head(out)

    models["nn.LSTM(32, 64) cuDNN"] = {
        "run": lambda x: head(lstm(x)[0]),
        "step": lstm_step,
        "params": list(lstm.parameters()) + list(head.parameters()),
    }
    models["_pair"] = {"ours": ours, "wiring": wiring}
    return models


def _parity(ours: Any, wiring: Any) -> dict[str, float]:
    """Max relative difference of outputs and all gradients, fused path vs reference (float64, float32)."""
    from ltc_control.cells.ltc import LTCCell

    dev = DEVICE[0]
    out: dict[str, float] = {}
    for dtype in (torch.float64, torch.float32):
        ref = LTCCell(wiring, implementation="reference", ode_unfolds=ours.ode_unfolds).to(dtype).to(dev)
        fast = LTCCell(wiring, implementation=FUSED[dev], ode_unfolds=ours.ode_unfolds).to(dtype).to(dev)
        ref.load_state_dict(ours.state_dict())
        fast.load_state_dict(ours.state_dict())
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 16, wiring.input_size, generator=gen, dtype=dtype).to(dev)
        dt = (torch.rand(5, 16, generator=gen, dtype=dtype) + 0.1).to(dev)
        starts = (torch.rand(5, 16, generator=gen) < 0.2).to(dtype).to(dev)
        worst = 0.0
        grads = []
        for cell in (ref, fast):
            xi = x.clone().requires_grad_(True)
            y, h = cell.forward_sequence(xi, dt=dt, episode_starts=starts)
            (y.square().sum() + h.sum()).backward()
            grads.append([y.detach(), xi.grad] + [p.grad for p in cell.parameters()])
        for a, b in zip(grads[1], grads[0]):
            assert a is not None and b is not None, "every parameter gets a gradient"
            scale = float(b.abs().max()) or 1.0
            worst = max(worst, float((a - b).abs().max()) / scale)
        out[str(dtype).replace("torch.", "")] = worst
        assert fast.implementation_name == FUSED[dev]
    return out


def run(repeats: int, min_time: float, unfolds: int) -> dict[str, Any]:
    from ltc_control.cells import ltc_cuda

    dev = DEVICE[0]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "CPU dry run",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "unfolds": unfolds,
        "large_batch": BATCHES[1],
        "configs": {},
    }
    for config in CONFIGS:
        models = _build(config, unfolds)
        pair = models.pop("_pair")
        if dev == "cuda":
            assert ltc_cuda.load_cuda_kernels() is not None, ltc_cuda.cuda_kernel_status()
        result["kernel"] = ltc_cuda.cuda_kernel_status()
        entry: dict[str, Any] = {"parity_max_rel_diff": _parity(pair["ours"], pair["wiring"]), "models": {}}
        samples: dict[str, dict[str, list[float]]] = {m: {} for m in models}
        for batch in BATCHES:
            x = torch.randn(batch, 64, 32, device=dev)
            for _ in range(repeats):
                for name, m in models.items():  # interleaved
                    params = m["params"]

                    def train(m: dict[str, Any] = m, params: list[Any] = params, x: Any = x) -> None:
                        for p in params:
                            p.grad = None
                        m["run"](x).square().mean().backward()

                    def forward(m: dict[str, Any] = m, x: Any = x) -> None:
                        with torch.no_grad():
                            m["run"](x)

                    s = samples[name]
                    tag = "b32" if batch == 32 else "blarge"
                    s.setdefault(f"train_seq_per_s_{tag}", []).append(batch / _sync_time(train, min_time))
                    s.setdefault(f"forward_seq_per_s_{tag}", []).append(batch / _sync_time(forward, min_time))
        for _ in range(repeats):
            for name, m in models.items():

                def step(m: dict[str, Any] = m) -> None:
                    with torch.no_grad():
                        m["step"]()
                    _sync()

                samples[name].setdefault("step_us", []).append(1e6 * _sync_time(step, min_time))
        x = torch.randn(32, 64, 32, device=dev)
        for name, m in models.items():
            cuda = dev == "cuda"
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            for p in m["params"]:
                p.grad = None
            m["run"](x).square().mean().backward()
            _sync()
            row = {k: statistics.median(v) for k, v in samples[name].items()}
            row["peak_mem_mib_b32"] = (
                (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
            )
            entry["models"][name] = row
        result["configs"][config] = entry
    return result


def profile_fused(config: str, unfolds: int, batch: int = 32) -> str:
    """Where one training step of the fused path spends its time: torch.profiler's table (CUDA time and the
    CPU time of the launches), to tell kernel time from Python/launch overhead."""
    from torch.profiler import ProfilerActivity, profile

    models = _build(config, unfolds)
    m = models[f"ltc-control {FUSED[DEVICE[0]]}"]
    x = torch.randn(batch, 64, 32, device=DEVICE[0])

    def train() -> None:
        for p in m["params"]:
            p.grad = None
        m["run"](x).square().mean().backward()

    for _ in range(3):
        train()
    _sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE[0] == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            train()
        _sync()
    key = "self_cuda_time_total" if DEVICE[0] == "cuda" else "self_cpu_time_total"
    return str(prof.key_averages().table(sort_by=key, row_limit=12))


def to_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# LTC speed on a CUDA GPU",
        "",
        f"{r['date']}; {r['gpu']}; torch {r['torch']} (CUDA {r['cuda']}), Python {r['python']}; "
        f"{r['unfolds']} unfolds, float32, input 32. Kernel: {r['kernel']}.",
        "Training = forward + backward of B sequences of 64 steps; forward = no gradients; step = batch 1, "
        "state carried, synchronised each step. Medians of interleaved repeats in one process; `x ncps` = "
        "ratio to ncps' LTC on the same wiring and weights, measured side by side.",
        "",
    ]
    for config, entry in r["configs"].items():
        par = ", ".join(f"{k} {v:.1e}" for k, v in entry["parity_max_rel_diff"].items())
        lines += [
            f"## {config}",
            "",
            "Parity, fused kernel vs reference LTC on the same device (max relative difference, outputs and "
            f"all gradients): {par}.",
            "",
            "| model | train seq/s B=32 | x ncps | forward seq/s B=32 | x ncps "
            f"| train seq/s B={r['large_batch']} | x ncps "
            "| step us (B=1) | x ncps | peak MiB (train B=32) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        base = entry["models"]["ncps LTC"]
        for name, m in entry["models"].items():
            cells = [name]
            for key in ("train_seq_per_s_b32", "forward_seq_per_s_b32", "train_seq_per_s_blarge"):
                cells += [f"{m[key]:.0f}", f"{m[key] / base[key]:.1f}x"]
            cells += [
                f"{m['step_us']:.0f}",
                f"{base['step_us'] / m['step_us']:.1f}x",
                f"{m['peak_mem_mib_b32']:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timed sample")
    parser.add_argument("--unfolds", type=int, default=6)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a dry run of the script"
    )
    parser.add_argument("--large-batch", type=int, default=1024)
    parser.add_argument("--profile", action="store_true", help="append a profiler table of the fused path")
    args = parser.parse_args(argv)
    DEVICE[0] = args.device
    BATCHES[1] = args.large_batch
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ltc_speed_cuda: no CUDA GPU here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    result = run(args.repeats, args.min_time, args.unfolds)
    text = to_markdown(result)
    if args.profile:
        table = profile_fused("ncp19", args.unfolds)
        title = "## Profile: 5 training steps of the fused path, ncp19, batch 32"
        text += f"\n{title}\n\n```\n{table}\n```\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
