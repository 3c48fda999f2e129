"""LTC speed benchmark: the fast LTC against ncps' LTC (same wiring and weights) and nn.LSTM(32, 64); with
``--cfc-only``, our CfC against ncps' CfC.

Usage::

    python experiments/bench/ltc_speed.py [--configs ncp19,autoncp64,fc64] [--repeats 5] [--no-memory] ...
    ltc-control bench ltc ...   # the same from a checkout, but writes no files unless --markdown / --json

Run as a script it writes ``experiments/results/ltc_speed.md`` and ``ltc_speed.json`` unless the caller
chose the files. It prints measured ratios only; the acceptance goals are in ``experiments/results/goals.md``.

Method. For every wiring configuration the models are built once; the ncps model and ours share
the same wiring and weights (ours is converted from the ncps model with ``ltc_control.interop.from_ncps``, and
the outputs are compared as a sanity check). Timings are medians over ``--repeats`` interleaved rounds
(each round measures every model once, in turn), so load from other processes hits all models alike; ratios
are taken between medians measured in the same process. Peak memory of forward + backward is measured in a
fresh subprocess per model as the rise of the peak resident set size (VmHWM, reset through
``/proc/self/clear_refs``; ``ru_maxrss`` where that is unsupported) over the level just before the
pass: torch's CPU allocator has no peak counter, and ``tracemalloc`` does not see torch's allocations.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench_common import (
    LTC_CONFIGS,
    build_ncps_ltc,
    build_wiring,
    median_of,
    ncps_cfc_model,
    time_call,
    version_of,
    write_atomic,
)
from cfc_speed import format_cfc_markdown, run_cfc_benchmark


def _memory_probe(config: str, model: str, batch: int, steps: int, unfolds: int) -> float:
    """Peak RSS rise (MiB) of one forward + backward pass, measured in a fresh subprocess."""
    code = (
        f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        "from ltc_speed import memory_child; "
        f"print(json.dumps(memory_child({config!r}, {model!r}, {batch}, {steps}, {unfolds})))"
    )
    # a fixed mmap threshold makes glibc return large freed blocks to the OS, so RSS follows live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=900, check=False, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {config}/{model} failed: {proc.stderr.strip()[-500:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1]))


def memory_child(config: str, model: str, batch: int, steps: int, unfolds: int) -> float:
    """Runs in the probe subprocess: builds one model, warms up on a tiny batch, then measures."""
    import torch

    torch.set_num_threads(1)
    models = _build_models(config, unfolds, which=(model,))
    fb = models[model]["train"]
    x_small = torch.randn(1, 2, 32)
    fb(x_small)  # imports, kernel load, allocator warm-up outside the measured pass
    x = torch.randn(batch, steps, 32)
    # the baseline includes x; the rise is what the pass itself holds at its peak
    if _reset_peak_rss():
        before = _status_kib("VmRSS")
        fb(x)
        return (_status_kib("VmHWM") - before) / 1024.0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fb(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); False if
    unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _build_models(config: str, unfolds: int, which: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Builds the requested models; each entry has ``train(x)``, ``forward(x)``, ``step()`` callables."""
    import torch

    from ltc_control.cells.ltc import LTCCell
    from ltc_control.interop import from_ncps

    wiring = build_wiring(config)
    out: dict[str, dict[str, Any]] = {}
    ncps_model = build_ncps_ltc(wiring, unfolds)
    ours_seq = from_ncps(ncps_model)
    cell: LTCCell = ours_seq.cell  # type: ignore[assignment]

    def seq_fns(run: Callable[[Any], Any], step: Callable[[], Any], params: Any) -> dict[str, Any]:
        def train(x: Any) -> None:
            for p in params:
                p.grad = None
            y = run(x)
            y.square().mean().backward()

        def forward(x: Any) -> None:
            with torch.no_grad():
                run(x)

        return {"train": train, "forward": forward, "step": step}

    x1 = torch.randn(1, 32)
    if "ncps" in which:
        ncell = ncps_model.rnn_cell
        h_n = [torch.zeros(1, wiring.units)]

        def ncps_step() -> None:
            with torch.no_grad():
                _, h_n[0] = ncell(x1, h_n[0], 1.0)

        out["ncps"] = seq_fns(lambda x: ncps_model(x)[0], ncps_step, list(ncps_model.parameters()))
    for impl in ("fused-c", "torch-edges", "reference"):
        if impl not in which:
            continue
        c = LTCCell(wiring, ode_unfolds=unfolds, implementation=impl)
        c.load_state_dict(cell.state_dict())
        h_o = [c.initial_state(1)]

        def our_step(c: LTCCell = c, h_o: list[Any] = h_o) -> None:
            with torch.no_grad():
                _, h_o[0] = c(x1, h_o[0], 1.0)

        def our_run(x: Any, c: LTCCell = c) -> Any:
            return c.forward_sequence(x)[0]

        out[impl] = seq_fns(our_run, our_step, list(c.parameters()))
        out[impl]["cell"] = c
        if impl == "fused-c":
            from ltc_control.cells.ltc_fast import LTCControlStep

            stepper = LTCControlStep(c)
            h_s = [c.initial_state(1)]

            def ctl_step(stepper: LTCControlStep = stepper, h_s: list[Any] = h_s) -> None:
                with torch.no_grad():
                    _, h_s[0] = stepper(x1, h_s[0], 1.0)

            out[impl]["controlstep"] = ctl_step

            # the same cell behind SequenceModel.step and a vector-observation Policy.act (the control-loop
            # entry points): Python around the cell call, the action head and the numpy conversion included
            from ltc_control.controllers import ControllerConfig
            from ltc_control.policy import Policy, PolicyConfig
            from ltc_control.sequence import SequenceModel

            seq_model = SequenceModel(c)
            h_q = [c.initial_state(1)]

            def seq_step(h_q: list[Any] = h_q, seq_model: Any = seq_model) -> None:
                with torch.no_grad():
                    _, h_q[0] = seq_model.step(x1, h_q[0], 1.0)

            policy = Policy(
                PolicyConfig(
                    observation="vector",
                    vector_size=wiring.input_size,
                    action_size=wiring.output_size,
                    controller=ControllerConfig(
                        kind="ltc",
                        wiring=_saved_wiring_config(wiring),
                        ode_unfolds=unfolds,
                        dt=1.0,
                    ),
                )
            )
            policy.controller.cell.load_state_dict(c.state_dict())
            obs = x1[0].numpy()
            st: list[Any] = [policy.reset(1)]

            def policy_act(st: list[Any] = st, policy: Any = policy, obs: Any = obs) -> None:
                _, st[0] = policy.act(obs, st[0])

            out[impl]["seqstep"] = seq_step
            out[impl]["policy_act"] = policy_act
    if "cfc" in which or "ncps-cfc" in which:
        from ltc_control.cells.cfc_ncps import cfc_from_ncps

        ncps_cfc = ncps_cfc_model(wiring)
        ours_cfc = cfc_from_ncps(ncps_cfc)
        for name, model, step_cell in (
            ("ncps-cfc", ncps_cfc, ncps_cfc.rnn_cell),
            ("cfc", ours_cfc, ours_cfc.cell),
        ):
            if name not in which:
                continue
            h_c = [torch.zeros(1, wiring.units)]

            def cfc_step(step_cell: Any = step_cell, h_c: list[Any] = h_c) -> None:
                with torch.no_grad():
                    _, h_c[0] = step_cell(x1, h_c[0], 1.0)

            def cfc_run(x: Any, model: Any = model) -> Any:
                return model(x)[0]

            out[name] = seq_fns(cfc_run, cfc_step, list(model.parameters()))
        out["_cfc"] = {"ncps": ncps_cfc, "ours": ours_cfc}
    if "lstm" in which:
        lstm = torch.nn.LSTM(32, 64, batch_first=True)
        lcell = torch.nn.LSTMCell(32, 64)
        hc = [(torch.zeros(1, 64), torch.zeros(1, 64))]

        def lstm_step() -> None:
            with torch.no_grad():
                hc[0] = lcell(x1, hc[0])

        out["lstm"] = seq_fns(lambda x: lstm(x)[0], lstm_step, list(lstm.parameters()))
    out["_meta"] = {"wiring": wiring, "ncps_model": ncps_model, "ours": cell}
    return out


def _saved_wiring_config(wiring: Any) -> Any:
    from ltc_control.controllers import WiringConfig

    return WiringConfig(preset="saved", saved=wiring.to_dict())


def run_ltc_benchmark(
    configs: Sequence[str] = ("ncp19", "autoncp64", "fc64"),
    batch: int = 32,
    steps: int = 64,
    unfolds: int = 6,
    repeats: int = 5,
    min_time: float = 0.2,
    memory: bool = True,
    include_slow: Sequence[str] = ("ncp19",),
    cfc_configs: Sequence[str] = ("ncp19",),
    progress: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Measures the LTC implementations against ncps and nn.LSTM.

    Args:
        configs: wiring configurations (keys of :data:`LTC_CONFIGS`).
        batch: batch size of the sequence benchmarks (B).
        steps: sequence length (T).
        unfolds: solver unfolds K.
        repeats: interleaved rounds; every figure is the median over them.
        min_time: minimum seconds per timed measurement (repeats the call until reached).
        memory: also probe the peak memory of forward + backward in subprocesses.
        include_slow: configs on which the pure-PyTorch ``torch-edges`` and ``reference`` paths are also timed
            (they take tens of seconds per training batch on the 64-neuron wirings).
        cfc_configs: NCP configs on which a wired CfC (ncps' ``CfC`` and this library's conversion of it, same
            weights) is also timed.
        progress: show a tqdm progress bar.
        threads: torch intra-op threads for every model (``None``: leave torch's default). The default 1 is
            deliberate: on a shared machine an OpenMP team whose second thread is descheduled spins at every
            barrier (nn.LSTM training measured 65x slower with 2 threads than with 1 under load here), which
            would make the comparison meaningless; the fused kernel is single-threaded either way.

    Returns:
        A JSON-serialisable dict with ``meta`` and one entry per config (per-model medians and ratios).
    """
    import torch
    from tqdm import tqdm

    from ltc_control.cells import ltc_fast

    if threads is not None:
        torch.set_num_threads(int(threads))
    fast_models = ["ncps", "fused-c", "lstm"]
    result: dict[str, Any] = {
        "meta": {
            "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "ncps": version_of("ncps"),
            "kernel": ltc_fast.kernel_status(),
            "batch": batch,
            "steps": steps,
            "unfolds": unfolds,
            "repeats": repeats,
            "dtype": "float32",
        },
        "configs": {},
    }
    bar = tqdm(total=len(configs) * repeats, desc="ltc bench", disable=not progress)
    for config in configs:
        wanted = fast_models + (["torch-edges", "reference"] if config in include_slow else [])
        if config in cfc_configs:
            wanted += ["ncps-cfc", "cfc"]
        models = _build_models(config, unfolds, which=wanted)
        meta = models.pop("_meta")
        cfc_pair = models.pop("_cfc", None)
        wiring = meta["wiring"]
        torch.manual_seed(0)
        x = torch.randn(batch, steps, 32)
        # sanity: ours equals ncps on the same weights
        with torch.no_grad():
            y_ncps = meta["ncps_model"](x)[0]
            y_ours = models["fused-c"]["cell"].forward_sequence(x)[0]
        max_diff = float((y_ncps - y_ours).abs().max())
        cfc_diff = None
        if cfc_pair is not None:
            with torch.no_grad():
                cfc_diff = float((cfc_pair["ncps"](x)[0] - cfc_pair["ours"](x)[0]).abs().max())
        kinds = ("train", "forward", "step")
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {m: {k: [] for k in kinds} for m in models}
        for name in models:  # warm-up (kernel build/load, allocator)
            models[name]["train"](x[:2, :2])
            models[name]["step"]()
        for _ in range(repeats):
            for name, fns in models.items():
                for kind in ("train", "forward"):
                    fn = functools.partial(fns[kind], x)
                    samples[name][kind].append(time_call(fn, min_time))
                samples[name]["step"].append(time_call(fns["step"], min_time))
                for extra in ("controlstep", "seqstep", "policy_act"):
                    if extra in fns:
                        samples[name].setdefault(extra, []).append(time_call(fns[extra], min_time))
            bar.update(1)
        entry: dict[str, Any] = {
            "description": LTC_CONFIGS[config],
            "neurons": wiring.units,
            "synapses": wiring.num_synapses,
            "recurrent_synapses": wiring.num_recurrent_synapses,
            "sensory_synapses": wiring.num_sensory_synapses,
            "max_abs_diff_vs_ncps": max_diff,
            "implementation": models["fused-c"]["cell"].implementation_name,
            "models": {},
        }
        if cfc_diff is not None:
            entry["max_abs_diff_cfc_vs_ncps_cfc"] = cfc_diff
        for name, smp in samples.items():
            rec: dict[str, Any] = {}
            for clock, idx in (("wall", 0), ("cpu", 1)):
                t_train = median_of([v[idx] for v in smp["train"]])
                t_fwd = median_of([v[idx] for v in smp["forward"]])
                t_step = median_of([v[idx] for v in smp["step"]])
                rec[clock] = {
                    "train_seq_per_s": batch / t_train,
                    "forward_seq_per_s": batch / t_fwd,
                    "step_us": t_step * 1e6,
                }
                for extra in ("controlstep", "seqstep", "policy_act"):
                    if extra in smp:
                        rec[clock][f"{extra}_us"] = median_of([v[idx] for v in smp[extra]]) * 1e6
            rec["samples_wall_cpu_s"] = smp
            entry["models"][name] = rec
        entry["ratios"] = {}
        for clock in ("wall", "cpu"):
            m = {k: v[clock] for k, v in entry["models"].items()}
            entry["ratios"][clock] = {
                "train_vs_ncps": m["fused-c"]["train_seq_per_s"] / m["ncps"]["train_seq_per_s"],
                "forward_vs_ncps": m["fused-c"]["forward_seq_per_s"] / m["ncps"]["forward_seq_per_s"],
                "step_speedup_vs_ncps": m["ncps"]["step_us"] / m["fused-c"]["step_us"],
                "train_vs_lstm": m["fused-c"]["train_seq_per_s"] / m["lstm"]["train_seq_per_s"],
                "forward_vs_lstm": m["fused-c"]["forward_seq_per_s"] / m["lstm"]["forward_seq_per_s"],
                "step_vs_lstmcell": m["lstm"]["step_us"] / m["fused-c"]["step_us"],
                "controlstep_speedup_vs_ncps": m["ncps"]["step_us"] / m["fused-c"]["controlstep_us"],
                "controlstep_vs_lstmcell": m["lstm"]["step_us"] / m["fused-c"]["controlstep_us"],
            }
            if "cfc" in m and "ncps-cfc" in m:
                entry["ratios"][clock].update(
                    {
                        "cfc_train_vs_ncps_cfc": m["cfc"]["train_seq_per_s"]
                        / m["ncps-cfc"]["train_seq_per_s"],
                        "cfc_forward_vs_ncps_cfc": m["cfc"]["forward_seq_per_s"]
                        / m["ncps-cfc"]["forward_seq_per_s"],
                        "cfc_step_vs_ncps_cfc": m["ncps-cfc"]["step_us"] / m["cfc"]["step_us"],
                        "ltc_step_vs_ncps_cfc": m["ncps-cfc"]["step_us"] / m["fused-c"]["step_us"],
                    }
                )
        # CPU cost of one (sample, step) of the forward pass: grows with the synapse count
        fwd_cpu = entry["models"]["fused-c"]["cpu"]["forward_seq_per_s"]
        entry["forward_cpu_us_per_sample_step"] = 1e6 / (fwd_cpu * steps)
        if memory:
            entry["peak_memory_mib"] = {
                name: _memory_probe(config, name, batch, steps, unfolds)
                for name in ("ncps", "fused-c", "lstm")
            }
        result["configs"][config] = entry
    bar.close()
    result["meta"]["kernel"] = ltc_fast.kernel_status()
    return result


def format_ltc_markdown(result: dict[str, Any]) -> str:
    """Renders :func:`run_ltc_benchmark`'s result as a Markdown report."""
    meta = result["meta"]
    lines = [
        "# LTC speed: fast LTC (`fused-c`) vs ncps 1.0.1 LTC and nn.LSTM(32, 64)",
        "",
        f"- date: {meta['date_utc']}; machine: {meta['platform']}, {meta['processor']}, "
        f"{meta['cpu_count']} CPUs (load average at start {meta['load_average_1_5_15']}: the machine is "
        "shared, absolute numbers are noisy; ratios come from interleaved rounds in one process)",
        f"- python {meta['python']}, torch {meta['torch']} ({meta['torch_threads']} intra-op threads for "
        f"every model; the fused kernel is single-threaded), ncps {meta['ncps']}; {meta['dtype']}",
        f"- workload: batch {meta['batch']} x {meta['steps']} steps, {meta['unfolds']} unfolds, 32 inputs; "
        f"median of {meta['repeats']} interleaved rounds",
        f"- kernel: {meta['kernel']}",
        "- wall = wall-clock throughput; CPU = per CPU-second of this process (all threads), steadier on a "
        "shared machine",
        "- train = forward + backward (mean-square loss) per second; forward = no-grad sequences per second; "
        "step = one batch-1 control step with the state carried in, no grad (ours: `cell(x, h, dt)` with "
        "input validation on, which the `forward_step` hook runs inside the kernel call together with the "
        "input mapping, solver and readout; LSTM: `nn.LSTMCell(32, 64)`)",
        "- peak memory: rise of the peak RSS during one forward + backward pass, fresh subprocess per model "
        "(see `experiments/bench/ltc_speed.py`)",
        "",
    ]
    for config, e in result["configs"].items():
        m = e["models"]
        lines += [
            f"## {config}: {e['description']}",
            "",
            f"{e['neurons']} neurons, {e['synapses']} synapses ({e['recurrent_synapses']} recurrent, "
            f"{e['sensory_synapses']} sensory); implementation `{e['implementation']}`; "
            f"max |y_ours - y_ncps| = {e['max_abs_diff_vs_ncps']:.2e}",
            "",
            "| model | train seq/s (wall) | forward seq/s (wall) | step us (wall) "
            "| train seq/CPU-s | forward seq/CPU-s | step CPU-us |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in m.items():
            w, c = v["wall"], v["cpu"]
            lines.append(
                f"| {name} | {w['train_seq_per_s']:.1f} | {w['forward_seq_per_s']:.1f} | {w['step_us']:.1f} "
                f"| {c['train_seq_per_s']:.1f} | {c['forward_seq_per_s']:.1f} | {c['step_us']:.1f} |"
            )
        lines.append("")
        for clock in ("wall", "cpu"):
            r = e["ratios"][clock]
            lines += [
                f"- {clock} clock, fused-c vs ncps: train **{r['train_vs_ncps']:.1f}x**, forward "
                f"**{r['forward_vs_ncps']:.1f}x**, step **{r['step_speedup_vs_ncps']:.1f}x** faster; vs "
                f"LSTM: "
                f"train {r['train_vs_lstm']:.2f}x, forward {r['forward_vs_lstm']:.2f}x, step "
                f"{r['step_vs_lstmcell']:.2f}x (LSTMCell time / ours)",
            ]
        cw, cc = m["fused-c"]["wall"]["controlstep_us"], m["fused-c"]["cpu"]["controlstep_us"]
        rw, rc = e["ratios"]["wall"], e["ratios"]["cpu"]
        lines += [
            f"- batch-1 step through `LTCControlStep(cell)` (validation, mappings and solver in one C call): "
            f"{cw:.1f} us wall / {cc:.1f} CPU-us, **{rw['controlstep_speedup_vs_ncps']:.1f}x** (wall) / "
            f"**{rc['controlstep_speedup_vs_ncps']:.1f}x** (CPU) faster than ncps' LTCCell, "
            f"{rc['controlstep_vs_lstmcell']:.2f}x the speed of nn.LSTMCell (CPU)",
            f"- fused-c forward CPU cost per (sample, step): {e['forward_cpu_us_per_sample_step']:.3f} us",
        ]
        fc = m["fused-c"]["cpu"]
        if "seqstep_us" in fc:
            lines.append(
                f"- batch-1 control-loop entry points on the same cell (CPU-us): `SequenceModel.step` "
                f"{fc['seqstep_us']:.1f}, `Policy.act` (vector observation, tanh head, numpy action) "
                f"{fc['policy_act_us']:.1f}"
            )
        if "cfc_step_vs_ncps_cfc" in e["ratios"]["cpu"]:
            rc_ = e["ratios"]["cpu"]
            lines.append(
                f"- wired CfC (ncps' `CfC` on an ncps NCP of the same sizes; ours = `cfc_from_ncps` of it, "
                f"max |diff| {e['max_abs_diff_cfc_vs_ncps_cfc']:.1e}), CPU clock, ours vs ncps: train "
                f"{rc_['cfc_train_vs_ncps_cfc']:.2f}x, forward {rc_['cfc_forward_vs_ncps_cfc']:.2f}x, step "
                f"{rc_['cfc_step_vs_ncps_cfc']:.2f}x; the fused LTC step is "
                f"{rc_['ltc_step_vs_ncps_cfc']:.1f}x faster than ncps' CfC step"
            )
        if "peak_memory_mib" in e:
            pm = e["peak_memory_mib"]
            lines.append(
                "- peak RSS rise of one forward + backward (MiB): "
                + ", ".join(f"{k} {v:.1f}" for k, v in pm.items())
            )
        lines.append("")
    return "\n".join(lines)


def ltc_bench_main(argv: Sequence[str]) -> int:
    """``ltc-control bench ltc``: runs :func:`run_ltc_benchmark` and prints / writes the report.

    Args:
        argv: command-line options (see ``--help``).

    Returns:
        The process exit code.
    """
    parser = argparse.ArgumentParser(
        prog="ltc-control bench ltc",
        description="Fast LTC vs ncps LTC (same wiring and weights) and nn.LSTM(32, 64): training and "
        "inference "
        "throughput, batch-1 step latency, peak memory.",
    )
    parser.add_argument(
        "--configs",
        default="ncp19,autoncp64,fc64",
        help=f"comma-separated wiring configs among {', '.join(LTC_CONFIGS)} (default: all)",
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size B (default 32)")
    parser.add_argument("--steps", type=int, default=64, help="sequence length T (default 64)")
    parser.add_argument("--unfolds", type=int, default=6, help="solver unfolds K (default 6)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="interleaved rounds, medians reported (default 5)"
    )
    parser.add_argument(
        "--min-time", type=float, default=0.2, help="min seconds per measurement (default 0.2)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for all models (default 1: fair and stable on a shared machine; 0 = "
        "torch's "
        "default)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess probes")
    parser.add_argument(
        "--slow-configs",
        default="ncp19",
        help="configs on which the slow torch-edges and reference paths are also timed (default ncp19; '' = "
        "none)",
    )
    parser.add_argument(
        "--cfc-configs",
        default="ncp19",
        help="NCP configs on which wired CfC models (ncps' and ours) are also timed (default ncp19; '' = "
        "none)",
    )
    parser.add_argument(
        "--cfc-only",
        action="store_true",
        help="time only the CfC models (ours vs ncps' CfC, wired and dense; see "
        "CFC_MODELS in experiments/bench/ltc_speed.py) on the --cfc-configs; --configs, --unfolds, "
        "--slow-configs and --no-memory do not apply",
    )
    parser.add_argument(
        "--cfc-mode",
        default="default",
        choices=["default", "no_gate", "pure"],
        help="CfC mode of the --cfc-only models (default: default)",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="write the Markdown report to this file")
    parser.add_argument("--json", type=Path, default=None, help="write the raw results (JSON) to this file")
    args = parser.parse_args(list(argv))
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in LTC_CONFIGS]
    if unknown or not configs:
        parser.error(f"unknown config(s) {unknown}; valid: {', '.join(LTC_CONFIGS)}")
    for name in ("batch", "steps", "unfolds", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.min_time <= 0:
        parser.error(f"--min-time must be > 0, got {args.min_time}")
    try:
        import ncps  # noqa: F401
    except ImportError:
        print("ltc-control bench ltc: needs ncps (pip install 'ltc-control[dev]')", file=sys.stderr)
        return 2
    if args.cfc_only:
        cfc_configs = [c.strip() for c in args.cfc_configs.split(",") if c.strip()]
        if not cfc_configs or any(c not in LTC_CONFIGS for c in cfc_configs):
            parser.error(f"--cfc-only needs --cfc-configs among {', '.join(LTC_CONFIGS)}, got {cfc_configs}")
        cfc_result = run_cfc_benchmark(
            cfc_configs,
            batch=args.batch,
            steps=args.steps,
            repeats=args.repeats,
            min_time=args.min_time,
            mode=args.cfc_mode,
            threads=args.threads if args.threads > 0 else None,
        )
        return _emit(format_cfc_markdown(cfc_result), cfc_result, args.markdown, args.json)
    result = run_ltc_benchmark(
        configs,
        batch=args.batch,
        steps=args.steps,
        unfolds=args.unfolds,
        repeats=args.repeats,
        min_time=args.min_time,
        memory=not args.no_memory,
        include_slow=[c.strip() for c in args.slow_configs.split(",") if c.strip()],
        cfc_configs=[c.strip() for c in args.cfc_configs.split(",") if c.strip()],
        threads=args.threads if args.threads > 0 else None,
    )
    return _emit(format_ltc_markdown(result), result, args.markdown, args.json)


def _emit(report: str, result: dict[str, Any], markdown: Path | None, json_path: Path | None) -> int:
    """Prints the report and writes the Markdown / JSON files that were asked for."""
    print(report)
    if markdown is not None:
        write_atomic(markdown, report + "\n")
    if json_path is not None:
        write_atomic(json_path, json.dumps(result, indent=2) + "\n")
    return 0


RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(argv: Sequence[str]) -> int:
    """Runs the benchmark as a script; adds the default output files unless the caller chose them."""
    args = list(argv)
    if not any(a in ("-h", "--help") for a in args):
        if "--markdown" not in args:
            args += ["--markdown", str(RESULTS / "ltc_speed.md")]
        if "--json" not in args:
            args += ["--json", str(RESULTS / "ltc_speed.json")]
    return ltc_bench_main(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
