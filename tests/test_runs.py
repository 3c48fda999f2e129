"""Run folders, metrics logging (ltc_control.runs) and atomic writes (ltc_control.atomic)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from ltc_control import atomic
from ltc_control.atomic import atomic_write_bytes, atomic_write_text
from ltc_control.config import load_yaml
from ltc_control.runs import MetricsLogger, create_run_dir, git_info


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    seed: int = 0


def test_run_dir_contents(tmp_path: Path) -> None:
    run = create_run_dir(
        tmp_path, "LTC/LaneKeeping-v0", "ncp ltc", 7, config=Cfg(lr=0.5), argv=["train", "--x", "a b"]
    )
    assert re.fullmatch(r"LTC-LaneKeeping-v0__ncp-ltc__7__\d{8}-\d{6}", run.name)
    assert sorted(p.name for p in run.iterdir()) == ["command.txt", "config.yaml", "git.txt", "versions.json"]
    assert load_yaml(Cfg, run / "config.yaml") == Cfg(lr=0.5)
    assert (run / "command.txt").read_text() == "train --x 'a b'\n"
    git = (run / "git.txt").read_text()
    assert re.fullmatch(r"commit: ([0-9a-f]{40}|unknown)\ndirty: (true|false|unknown)\n", git)
    vers = json.loads((run / "versions.json").read_text())
    assert vers["torch"] and vers["python"].count(".") == 2
    # same second -> a suffixed, distinct folder
    run2 = create_run_dir(tmp_path, "LTC/LaneKeeping-v0", "ncp ltc", 7, config=Cfg(), argv=[])
    assert run2 != run and run2.exists()


def test_git_info_outside_git_never_fails(tmp_path: Path) -> None:
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": "unknown"}
    info = git_info()  # the package's own checkout
    assert info["commit"] == "unknown" or len(info["commit"]) == 40


def test_metrics_csv_grows_columns_and_tensorboard(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"loss": 0.5})
        log.log(2, {"loss": 0.25, "lr": 1e-3})
        log.log(3, {"lr": 2e-3})
    with (tmp_path / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "time", "loss", "lr"]
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["loss"]) == 0.5 and rows[0]["lr"] == ""
    assert float(rows[1]["lr"]) == 1e-3 and rows[2]["loss"] == ""
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    with pytest.raises(RuntimeError, match="closed"):
        log.log(4, {"loss": 1.0})


def test_resumed_run_has_no_duplicate_points_in_csv_or_tensorboard(tmp_path: Path) -> None:
    """A resume truncates to its resume point; TensorBoard purges the interrupted process's later points."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as log:
        for step in range(1, 6):
            log.log(step, {"loss": float(step)})
    time.sleep(1.1)  # a new event file (their names carry the second)
    with MetricsLogger(tmp_path) as log:
        log.truncate(3)  # resume point after step 3: steps 4 and 5 are redone
        for step in (4, 5):
            log.log(step, {"loss": 10.0 * step})
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert [(int(r["step"]), float(r["loss"])) for r in rows] == expected
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == expected


def test_metrics_resume_and_bad_values(tmp_path: Path) -> None:
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log(1, {"a": 1.0})
    log.close()
    log2 = MetricsLogger(tmp_path, tensorboard=False)
    log2.log(2, {"b": float("nan")})
    with pytest.raises(TypeError, match="metric 'c' must be a number"):
        log2.log(3, {"c": "x"})
    log2.close()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(r["step"], r["a"], r["b"]) for r in rows] == [("1", "1.0", ""), ("2", "", "nan")]


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "f.txt"
    atomic_write_text(target, "old")
    assert target.read_text() == "old"

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["f.txt"]  # no temp file left behind


def test_atomic_open_uses_umask_mode_and_keeps_old_file_on_error(tmp_path) -> None:
    import os

    from ltc_control.atomic import atomic_open

    target = tmp_path / "sub" / "data.bin"
    old = os.umask(0o022)
    try:
        with atomic_open(target) as fh:
            fh.write(b"first")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"first"
    assert (target.stat().st_mode & 0o777) == 0o644  # not mkstemp's private 0o600

    class Boom(RuntimeError):
        pass

    try:
        with atomic_open(target, "w") as fh:
            fh.write("second, half written")
            raise Boom
    except Boom:
        pass
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.bin"]  # no temp file left behind
