"""What the speed benchmarks share: the wiring configurations, the ncps models built on them, timing and
version helpers, atomic report writing."""

from __future__ import annotations

import shlex
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: configuration name -> description; built by build_wiring
LTC_CONFIGS: dict[str, str] = {
    "ncp19": "lane-keeping NCP (19 neurons, 32 inputs, lane_keeping_ncp())",
    "autoncp64": "AutoNCP(64, 1), sparse, 32 inputs",
    "fc64": "fully connected 64 neurons, 32 inputs",
}


def build_wiring(name: str) -> Any:
    from ltc_control.wirings import AutoNCP, FullyConnected, lane_keeping_ncp

    if name == "ncp19":
        return lane_keeping_ncp(seed=22222)
    if name == "autoncp64":
        return AutoNCP(64, 1, input_size=32, seed=0)
    if name == "fc64":
        return FullyConnected(64, input_size=32, output_size=1, seed=0)
    raise ValueError(f"unknown LTC benchmark config {name!r}; valid: {', '.join(LTC_CONFIGS)}")


def build_ncps_ltc(wiring: Any, unfolds: int) -> Any:
    """An ``ncps.torch.LTC`` on the same adjacency as ``wiring`` (batch-first, softplus constraints)."""
    import numpy as np
    from ncps.torch import LTC
    from ncps.wirings import Wiring as NcpsWiring

    nw = NcpsWiring(wiring.units)
    nw.build(wiring.input_size)
    nw.adjacency_matrix = np.asarray(wiring.adjacency, dtype=np.int32).copy()
    nw.sensory_adjacency_matrix = np.asarray(wiring.sensory_adjacency, dtype=np.int32).copy()
    nw.set_output_dim(wiring.output_size)
    return LTC(wiring.input_size, nw, batch_first=True, ode_unfolds=unfolds)


def ncps_cfc_model(wiring: Any) -> Any:
    """An ``ncps.torch.CfC`` on an ncps ``NCP`` wiring of the same layer sizes and fan-outs as ``wiring`` (an
    NCP built by :func:`build_wiring`): ncps draws its own synapses, so both CfCs are compared on ncps'."""
    from ncps.torch import CfC
    from ncps.wirings import NCP as NcpsNCP

    roles = list(wiring.roles)
    args = dict(wiring.to_dict().get("builder_args") or {})
    nw = NcpsNCP(
        inter_neurons=roles.count("inter"),
        command_neurons=roles.count("command"),
        motor_neurons=roles.count("motor"),
        sensory_fanout=int(args.get("sensory_fanout", 6)),
        inter_fanout=int(args.get("inter_fanout", 4)),
        recurrent_command_synapses=int(args.get("recurrent_command_synapses", 6)),
        motor_fanin=int(args.get("motor_fanin", 6)),
        seed=22222,
    )
    return CfC(wiring.input_size, nw, batch_first=True)


def median_of(samples: list[float]) -> float:
    return float(statistics.median(samples)) if samples else float("nan")


def time_call(fn: Callable[[], Any], min_time: float) -> tuple[float, float]:
    """Wall-clock and CPU seconds per call of ``fn`` (runs it for at least ``min_time`` wall seconds).

    CPU time is the process's (all threads), so a model that keeps two intra-op threads busy pays for both.
    """
    n = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n, (time.process_time() - cpu_start) / n


def version_of(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()`` or the machine type)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_atomic(path: Path, text: str) -> None:
    from ltc_control.atomic import atomic_write_text

    atomic_write_text(path, text)


def uptime() -> str:
    """``uptime``'s line (the machine's load when a benchmark ran), or ``"n/a"`` where there is none."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "n/a"


def provenance_lines(script: str, cli: list[str]) -> list[str]:
    """The Markdown bullets a probe's report starts with: date, machine and load, versions, the command."""
    import datetime as dt
    import platform

    from ltc_control.runs import versions

    return [
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine {platform.node()} "
        f"({platform.machine()}); `uptime` at the end: {uptime()}",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- Command: `python experiments/bench/{Path(script).name} {shlex.join(cli)}`",
    ]


def emit_report(text: str, rows: list[dict[str, Any]], write: Path | None) -> None:
    """Print a probe's Markdown report; with ``write``, save it there and its rows beside it as ``.jsonl``
    (both atomically)."""
    import json

    print(text)
    if write is not None:
        write_atomic(write, text)
        write_atomic(write.with_suffix(".jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
