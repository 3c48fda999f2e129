"""End-to-end study runs: resumption after a killed process, and the Ray backend (same results as local)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltc_control.agents.study.backends import make_backend
from ltc_control.agents.study.config import StudyConfig
from ltc_control.agents.study.runner import run_study, study_dir
from ltc_control.config import apply_overrides, load_yaml
from tests.faults.helpers import default_sigint

REPO = Path(__file__).resolve().parents[2]


def _results(root: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((root / "trials").glob("*/result.json")):
        doc = json.loads(p.read_text())
        for key in (
            "wall_seconds",
            "cpu_seconds",
            "train_seconds",
            "host",
            "inference_us",
            "lockstep",
            "env_steps_per_second",
            "sha256",  # the record's digest covers the timing fields above
        ):
            doc.pop(key, None)
        out[p.parent.name] = doc
    return out


@pytest.mark.parametrize("sig", ["sigkill", "sigterm", "sigint"])
def test_killed_study_resumes_without_recomputing(tiny_preset: Path, sig: str) -> None:
    """SIGKILL to the whole process group, SIGTERM and SIGINT to the study process (``kill [-INT] PID``): the
    resumed study recomputes no finished trial and ends with the results of an uninterrupted study (timings
    aside). (Ctrl-C in a terminal also reaches the workers; they ignore it once started, but one still
    starting up may print its own traceback.)"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MUJOCO_GL": "egl"}
    cmd = [
        sys.executable,
        "-m",
        "ltc_control.cli",
        "study",
        "--config",
        str(tiny_preset),
        "--workers",
        "1",
        "--no-progress",
        "--no-report",
    ]
    root = tiny_preset.parent / "runs" / "tiny"
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,  # an ignored SIGINT (a backgrounded test run) would be inherited
    )
    try:
        deadline = time.monotonic() + 120
        while not list((root / "trials").glob("*/result.json")):
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in 120 s"
            time.sleep(0.2)
        time.sleep(0.2)  # the next trial is starting (a fresh worker process: seconds to import torch)
    finally:
        if sig == "sigkill":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM if sig == "sigterm" else signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    if sig != "sigkill":
        assert proc.returncode == (143 if sig == "sigterm" else 130), err
        assert "Traceback" not in err and "rerun the same command to resume" in err, err
        gone_by = time.monotonic() + 10  # no worker process outlives the study (the resource tracker may
        while time.monotonic() < gone_by:  # take a moment to see its pipe close)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (root / "trials").glob("*/result.json")}
    assert finished and len(finished) < 3
    cfg = load_yaml(StudyConfig, tiny_preset)
    backend = make_backend("local", 1)
    try:
        state = run_study(cfg, backend, progress=False, log=lambda _: None)
    finally:
        backend.close()
    assert not state.failed
    assert state.ran_now == 3 - len(finished)  # 2 tuning trials + 1 eval; the finished ones are read back
    after = {p.parent.name: p.stat().st_mtime_ns for p in (root / "trials").glob("*/result.json")}
    assert len(after) == 3
    for name, mtime in finished.items():
        assert after[name] == mtime  # never recomputed
        assert (root / "trials" / name / "log.txt").read_text().count(" start ") == 1
    timing = json.loads((root / "timing.json").read_text())
    assert timing["total_seconds"] > 0
    # the report reads the finished trials
    from ltc_control.agents.study.report import write_report

    paths = write_report(cfg)
    text = paths[0].read_text()
    assert "Headline" in text and "ncp_ltc" in text
    if sig == "sigterm":  # the same results as an uninterrupted study (once: a study takes ~15 s)
        ref_cfg = apply_overrides(cfg, [f"out_dir={tiny_preset.parent / 'reference'}"])
        backend = make_backend("local", 1)
        try:
            run_study(ref_cfg, backend, progress=False, log=lambda _: None)
        finally:
            backend.close()
        assert _results(study_dir(ref_cfg)) == _results(root)


def test_ray_backend_matches_local(tiny_preset: Path) -> None:
    """The same trials through Ray tasks give the same results as through local worker processes."""
    ray = pytest.importorskip("ray")
    cfg = apply_overrides(load_yaml(StudyConfig, tiny_preset), ["tuning.lr_controller=[0.01]"])
    local_cfg = apply_overrides(cfg, [f"out_dir={tiny_preset.parent / 'local'}"])
    ray_cfg = apply_overrides(cfg, [f"out_dir={tiny_preset.parent / 'ray'}"])
    backend = make_backend("local", 2)
    try:
        run_study(local_cfg, backend, progress=False, log=lambda _: None)
    finally:
        backend.close()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "MUJOCO_GL": "egl"}},
    )
    try:
        backend = make_backend("ray", 2)
        state = run_study(ray_cfg, backend, progress=False, log=lambda _: None)
        assert not state.failed, state.failed
    finally:
        ray.shutdown()
    local, remote = _results(study_dir(local_cfg)), _results(study_dir(ray_cfg))
    assert set(local) == set(remote) and len(local) == 2
    assert local == remote
