"""CfC speed benchmark: our CfC (wired and dense, converted from ncps with the same weights) against ncps'
CfC; run through ``ltc-control bench ltc --cfc-only`` (or ``python experiments/bench/ltc_speed.py
--cfc-only``). Same method as the LTC benchmark (interleaved rounds, medians, ratios in one process)."""

from __future__ import annotations

import datetime as _dt
import functools
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

from bench_common import LTC_CONFIGS, build_wiring, median_of, ncps_cfc_model, time_call, version_of

#: CfC benchmark models -> what they are (all on ``ncp19``'s sizes, input 32; see :func:`_build_cfc_models`)
CFC_MODELS: dict[str, str] = {
    "ncps-cfc": "ncps.torch.CfC on an ncps NCP (inter/command/motor sizes and fan-outs of the config)",
    "cfc": "ours: cfc_from_ncps of ncps-cfc (WiredCfCCell, ncps_compatible=True), the fast paths",
    "cfc-loop": "the same converted cell on the step-by-step reference (the pre-fast-path implementation)",
    "cfc-sparse": "ours: WiredCfCCell on the same wiring with its true sparsity (the controllers' default)",
    "ncps-cfc-dense": "ncps.torch.CfC(32, units=N) dense, backbone 128 x 1 (ncps defaults)",
    "cfc-dense": "ours: cfc_from_ncps of ncps-cfc-dense (CfCCell), the fast paths",
}


def _build_cfc_models(config: str, mode: str = "default") -> dict[str, dict[str, Any]]:
    """The CfC benchmark models of :data:`CFC_MODELS` on an NCP config, each with ``train(x)``,
    ``forward(x)``, ``step()`` callables and its ``model`` (ours converted from ncps: same weights)."""
    import torch
    from ncps.torch import CfC

    from ltc_control.cells.cfc import WiredCfCCell
    from ltc_control.cells.cfc_ncps import cfc_from_ncps
    from ltc_control.sequence import SequenceModel

    wiring = build_wiring(config)
    if not {"inter", "command", "motor"} <= set(wiring.roles):
        raise ValueError(f"the CfC benchmark needs an NCP config (inter/command/motor roles), got {config!r}")
    torch.manual_seed(0)
    ncps_wired = ncps_cfc_model(wiring)
    if mode != "default":
        ncps_wired = CfC(wiring.input_size, ncps_wired.wiring, mode=mode, batch_first=True)
    ncps_dense = CfC(wiring.input_size, wiring.units, mode=mode, batch_first=True)
    ours_wired = cfc_from_ncps(ncps_wired)
    ours_dense = cfc_from_ncps(ncps_dense)
    assert isinstance(ours_wired.cell, WiredCfCCell)
    sparse = SequenceModel(WiredCfCCell(ours_wired.cell.wiring, mode=mode))  # type: ignore[arg-type]
    loop_cell = ours_wired.cell
    x1 = torch.randn(1, wiring.input_size)

    def loop_step_fn(h: Any, x: Any = x1) -> Any:
        # the pre-fast-path forward: validation, then the reference step (with or without gradients)
        ts = loop_cell.check_step(x, h, 1.0)
        new = loop_cell.reference_step(x, h, ts)
        return loop_cell.readout(new), new

    def loop_run(x: Any) -> Any:
        h = loop_cell.initial_state(x.shape[0])
        ys = []
        for t in range(x.shape[1]):
            y, h = loop_step_fn(h, x[:, t])
            ys.append(y)
        return torch.stack(ys, dim=1)

    runs: dict[str, tuple[Any, Callable[[Any], Any], Callable[[Any], Any]]] = {
        "ncps-cfc": (ncps_wired, lambda x: ncps_wired(x)[0], lambda h: ncps_wired.rnn_cell(x1, h, 1.0)),
        "cfc": (ours_wired, lambda x: ours_wired(x)[0], lambda h: ours_wired.cell(x1, h, 1.0)),
        "cfc-loop": (ours_wired, loop_run, loop_step_fn),
        "cfc-sparse": (sparse, lambda x: sparse(x)[0], lambda h: sparse.cell(x1, h, 1.0)),
        "ncps-cfc-dense": (ncps_dense, lambda x: ncps_dense(x)[0], lambda h: ncps_dense.rnn_cell(x1, h, 1.0)),
        "cfc-dense": (ours_dense, lambda x: ours_dense(x)[0], lambda h: ours_dense.cell(x1, h, 1.0)),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (model, run, step_fn) in runs.items():
        params = list(model.parameters())
        h_c = [torch.zeros(1, wiring.units)]

        def train(x: Any, run: Callable[[Any], Any] = run, params: list[Any] = params) -> None:
            for p in params:
                p.grad = None
            run(x).square().mean().backward()

        def forward(x: Any, run: Callable[[Any], Any] = run) -> None:
            with torch.no_grad():
                run(x)

        def step(step_fn: Callable[[Any], Any] = step_fn, h_c: list[Any] = h_c) -> None:
            with torch.no_grad():
                _, h_c[0] = step_fn(h_c[0])

        out[name] = {"train": train, "forward": forward, "step": step, "run": run}
    return out


def run_cfc_benchmark(
    configs: Sequence[str] = ("ncp19",),
    batch: int = 32,
    steps: int = 64,
    repeats: int = 5,
    min_time: float = 0.2,
    mode: str = "default",
    progress: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Measures our CfC paths against ncps' CfC (wired and dense, same weights), interleaved in one process.

    Args:
        configs: NCP configs (keys of :data:`LTC_CONFIGS` with inter/command/motor roles).
        batch: batch size of the sequence benchmarks (B).
        steps: sequence length (T).
        repeats: interleaved rounds; every figure is the median over them.
        min_time: minimum seconds per timed measurement.
        mode: CfC mode of every model (``default``, ``no_gate``, ``pure``).
        progress: show a tqdm progress bar.
        threads: torch intra-op threads (``None``: torch's default); 1 by default, see
            :func:`run_ltc_benchmark`.

    Returns:
        A JSON-serialisable dict with ``meta`` and one entry per config (per-model medians, ratios against
        ncps and the largest output difference against ncps).
    """
    import torch
    from tqdm import tqdm

    from ltc_control.cells import cfc_fast

    if threads is not None:
        torch.set_num_threads(int(threads))
    cfc_fast.load_kernel()
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
            "cfc_kernel": cfc_fast.kernel_status(),
            "batch": batch,
            "steps": steps,
            "repeats": repeats,
            "mode": mode,
            "dtype": "float32",
        },
        "models": dict(CFC_MODELS),
        "configs": {},
    }
    bar = tqdm(total=len(configs) * repeats, desc="cfc bench", disable=not progress)
    for config in configs:
        models = _build_cfc_models(config, mode)
        torch.manual_seed(0)
        x = torch.randn(batch, steps, 32)
        with torch.no_grad():
            outs = {name: fns["run"](x) for name, fns in models.items()}
        diffs = {
            "cfc_vs_ncps": float((outs["cfc"] - outs["ncps-cfc"]).abs().max()),
            "cfc_loop_vs_ncps": float((outs["cfc-loop"] - outs["ncps-cfc"]).abs().max()),
            "cfc_dense_vs_ncps": float((outs["cfc-dense"] - outs["ncps-cfc-dense"]).abs().max()),
        }
        samples: dict[str, dict[str, list[tuple[float, float]]]] = {
            m: {k: [] for k in ("train", "forward", "step")} for m in models
        }
        for fns in models.values():  # warm-up
            fns["train"](x[:2, :2])
            fns["step"]()
        for _ in range(repeats):
            for name, fns in models.items():
                for kind in ("train", "forward"):
                    samples[name][kind].append(time_call(functools.partial(fns[kind], x), min_time))
                samples[name]["step"].append(time_call(fns["step"], min_time))
            bar.update(1)
        entry: dict[str, Any] = {"description": LTC_CONFIGS[config], "max_abs_diff": diffs, "models": {}}
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
            rec["samples_wall_cpu_s"] = smp
            entry["models"][name] = rec
        entry["ratios"] = {}
        for clock in ("wall", "cpu"):
            m = {k: v[clock] for k, v in entry["models"].items()}
            entry["ratios"][clock] = {
                f"{ours}_vs_{ref}": {
                    "train": m[ours]["train_seq_per_s"] / m[ref]["train_seq_per_s"],
                    "forward": m[ours]["forward_seq_per_s"] / m[ref]["forward_seq_per_s"],
                    "step": m[ref]["step_us"] / m[ours]["step_us"],
                }
                for ours, ref in (
                    ("cfc", "ncps-cfc"),
                    ("cfc-loop", "ncps-cfc"),
                    ("cfc-sparse", "ncps-cfc"),
                    ("cfc", "cfc-loop"),
                    ("cfc-dense", "ncps-cfc-dense"),
                )
            }
        result["configs"][config] = entry
    bar.close()
    return result


def format_cfc_markdown(result: dict[str, Any]) -> str:
    """Renders :func:`run_cfc_benchmark`'s result as a Markdown report."""
    meta = result["meta"]
    load = [round(v, 2) for v in meta["load_average_1_5_15"] or []]
    lines = [
        f"# CfC speed: our CfC paths vs ncps {meta['ncps']} CfC (mode `{meta['mode']}`)",
        "",
        f"- date: {meta['date_utc']}; machine: {meta['platform']}, {meta['processor']}, "
        f"{meta['cpu_count']} CPUs (load average at start {load}: the machine is shared,"
        " absolute numbers are noisy; ratios come from interleaved rounds in one process)",
        f"- python {meta['python']}, torch {meta['torch']} ({meta['torch_threads']} intra-op threads for "
        f"every model), ncps {meta['ncps']}; {meta['dtype']}",
        f"- workload: batch {meta['batch']} x {meta['steps']} steps, 32 inputs; median of {meta['repeats']} "
        "interleaved rounds",
        "- train = forward + backward (mean-square loss) per second; forward = no-grad sequences per second; "
        "step = one batch-1 step with the state carried in, no grad (`cell(x, h, 1.0)`, input validation on)",
        "- wall = wall-clock throughput; CPU = per CPU-second of this process, steadier on a shared machine",
        "- CfC C kernel (no-grad steps of every cell; the forward of backbone-free sequences, with and "
        f"without gradients): {meta['cfc_kernel']}",
        "",
        "Models:",
        "",
    ]
    lines += [f"- `{k}`: {v}" for k, v in result["models"].items()]
    lines.append("")
    for config, e in result["configs"].items():
        d = e["max_abs_diff"]
        lines += [
            f"## {config}: {e['description']}",
            "",
            f"max |y - y_ncps| over the benchmark batch: cfc {d['cfc_vs_ncps']:.1e}, cfc-loop "
            f"{d['cfc_loop_vs_ncps']:.1e}, cfc-dense {d['cfc_dense_vs_ncps']:.1e}",
            "",
            "| model | train seq/s (wall) | forward seq/s (wall) | step us (wall) "
            "| train seq/CPU-s | forward seq/CPU-s | step CPU-us |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, v in e["models"].items():
            w, c = v["wall"], v["cpu"]
            lines.append(
                f"| {name} | {w['train_seq_per_s']:.1f} | {w['forward_seq_per_s']:.1f} | {w['step_us']:.1f} "
                f"| {c['train_seq_per_s']:.1f} | {c['forward_seq_per_s']:.1f} | {c['step_us']:.1f} |"
            )
        lines += [
            "",
            "| speed-up (CPU clock; wall in brackets) | train | forward | batch-1 step |",
            "|---|---:|---:|---:|",
        ]
        rc, rw = e["ratios"]["cpu"], e["ratios"]["wall"]
        for pair, r in rc.items():
            w = rw[pair]
            lines.append(
                f"| {pair.replace('_vs_', ' vs ')} | **{r['train']:.2f}x** ({w['train']:.2f}x) "
                f"| **{r['forward']:.2f}x** ({w['forward']:.2f}x) | **{r['step']:.2f}x** ({w['step']:.2f}x) |"
            )
        lines.append("")
    return "\n".join(lines)
