"""Shared pieces of the fault tests: running ``ltc-control`` in a subprocess and interrupting it."""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ltc_control.agents.datasets import DatasetWriter, Episode

ROOT = Path(__file__).resolve().parents[2]
#: seeds the random point at which the resume tests send their signal (``LTC_FAULT_SEED=<n>`` moves it)
FAULT_SEED = int(os.environ.get("LTC_FAULT_SEED", "7"))
H, W = 16, 32


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MUJOCO_GL", "egl")
    env["OMP_NUM_THREADS"] = "1"
    return env


def cli_command(args: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from ltc_control.cli import console_main; raise SystemExit(console_main())",
        *args,
    ]


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``ltc-control ARGS`` to completion in ``cwd``."""
    return subprocess.run(
        cli_command(args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def interrupt_cli(
    args: Sequence[str],
    cwd: Path,
    sig: int,
    started: Callable[[], bool],
    rng: random.Random,
    max_delay: float,
    timeout: float = 120,
) -> tuple[int, str]:
    """Start ``ltc-control ARGS``, wait until ``started()`` holds, then a random delay, then send ``sig``.

    Returns:
        ``(exit status, stdout + stderr)``; the process may have finished before the signal (status 0).
    """
    proc = subprocess.Popen(
        cli_command(args),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # a backgrounded test run ignores SIGINT; the child must not
    )
    deadline = time.monotonic() + timeout
    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, max_delay))
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def default_sigint() -> None:
    """``preexec_fn`` of interrupted subprocesses: SIGINT back to its default. A test run started in the
    background of a non-interactive shell ignores SIGINT, and an ignored signal is inherited, which would turn
    every SIGINT test into a run that is never interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupted_status(sig: int) -> int:
    return 130 if sig == signal.SIGINT else 143


def stripe_episode(road: int, length: int = 48, source: str = "expert") -> Episode:
    """A learnable synthetic demo: a bright stripe whose column encodes the label."""
    rng = np.random.default_rng(road)
    t = np.arange(length)
    labels = (0.8 * np.sin(t / 7.0 + road)).astype(np.float32)
    images = rng.integers(0, 40, size=(length, H, W, 3), dtype=np.uint8)
    cols = np.round((labels + 1) / 2 * (W - 3)).astype(int)
    for k, c in enumerate(cols):
        images[k, :, c : c + 3, :] = 255
    return Episode(
        images=images,
        labels=labels[:, None],
        actions=labels[:, None],
        info={"lateral_offset": np.zeros(length, np.float32)},
        road_seed=road,
        key=f"{source}/road{road}/ep0",
        source=source,
    )


def write_stripe_dataset(root: Path, roads: int = 5, per_chunk: int = 2) -> Path:
    with DatasetWriter(root, episodes_per_chunk=per_chunk) as writer:
        for road in range(roads):
            writer.add(stripe_episode(road))
    return root


def csv_without(path: Path, drop: Sequence[str]) -> list[dict[str, str]]:
    """CSV rows without the (timing) columns ``drop``."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]
