"""RL fine-tuning (``experiments/finetune_lane_keeping_rl.py``) interrupted by SIGINT / SIGTERM at a random
point and resumed with ``--resume`` ends with the same weights and metrics as an uninterrupted run (issue
#15's interruption contract for RL fine-tuning)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ltc_control.checkpoint import save_checkpoint
from ltc_control.policy import Policy, PolicyConfig
from tests.faults.helpers import FAULT_SEED as _SEED
from tests.faults.helpers import ROOT, cli_env, default_sigint, interrupted_status

SCRIPT = str(ROOT / "experiments" / "finetune_lane_keeping_rl.py")
OPTIONS = [
    "--env_kwargs",
    "{road_length: 20.0}",
    "--timesteps",
    "160",
    "--value_warmup_steps",
    "32",
    "--n_envs",
    "2",
    "--n_steps",
    "16",
    "--batch_size",
    "16",
    "--n_epochs",
    "2",
    "--learning_rate",
    "0.001",
    "--eval_seeds",
    "9001",
    "--eval_max_steps",
    "30",
    "--name",
    "ft",
]


def _command(root: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        SCRIPT,
        "--checkpoint",
        str(root / "src"),
        *OPTIONS,
        "--out_dir",
        str(root / name),
        "--checkpoint_out",
        str(root / name / "policy"),
        *extra,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=300)


def _final(root: Path, name: str) -> dict[str, object]:
    record = json.loads((root / name / "ft.json").read_text())
    return {
        "weights": (root / name / "policy" / "model.safetensors").read_bytes(),
        "after": record["after"],
        "before": record["before"],
        "env_steps": record["env_steps"],
        "episodes": [(e["r"], e["l"]) for e in record["ep_info"]],  # "t" is wall time
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    root = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    save_checkpoint(root / "src", Policy(PolicyConfig(observation="image", image_shape=(16, 32, 3))), {})
    done = _run(_command(root, "reference"))
    assert done.returncode == 0, done.stderr
    assert not (root / "reference" / "policy.resume").exists()  # removed once the run finished
    return root, _final(root, "reference")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_finetune_interrupted_and_resumed_gives_the_same_weights(
    reference: tuple[Path, dict[str, object]], sig: int
) -> None:
    root, expected = reference
    name = f"run_{int(sig)}"
    state = root / name / "policy.resume"
    proc = subprocess.Popen(
        _command(root, name),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    # A random point in training, counted in resume points rather than seconds (on an idle machine the whole
    # run takes about a second): the k-th of its 6 snapshots (one per rollout, each written by an atomic
    # rename, so each has its own inode), then a short random delay. k <= 3 leaves 3 rollouts of training.
    rng = random.Random(_SEED + int(sig))
    target, seen, last = rng.randint(1, 3), 0, None
    deadline = time.monotonic() + 240
    while seen < target and proc.poll() is None and time.monotonic() < deadline:
        try:
            info = (state / "model.json").stat()
            stamp = (info.st_ino, info.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.05))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    print(f"finetune: exit status {proc.returncode} after the signal at resume point {seen} (+ jitter)")
    # the signal must land while the run trains (a test that passes without an interrupt would prove nothing)
    assert proc.returncode == interrupted_status(sig), err
    assert "Traceback" not in err and "--resume" in err and state.is_dir()
    # The CLI's refusals do not depend on which signal stopped the run: checked once (3 fewer interpreter
    # starts for the other signal, about 10 s of the suite).
    contract = sig == signal.SIGTERM
    if contract:
        refused = _run(_command(root, name))  # the interrupted run's state is not silently discarded
        assert refused.returncode == 2 and "--resume to continue it" in refused.stderr
        other = _run(_command(root, name, "--resume", "--seed", "5"))
        assert other.returncode == 2 and "made with another config" in other.stderr and "seed" in other.stderr
    resumed = _run(_command(root, name, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert _final(root, name) == expected
    assert not state.exists()
    if contract:
        again = _run(_command(root, name))
        assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr
