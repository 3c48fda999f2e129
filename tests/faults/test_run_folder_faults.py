"""Fault injection on a run folder (what ``train --resume`` and ``evaluate --resume`` read back):
truncated, bit-flipped, missing, mistyped and schema-violating config.yaml, metrics.csv, resume checkpoint,
trainer state, lock file and evaluation journal. Each gives exit status 2 with one line naming the file, and
no result is written (no best checkpoint, no final metrics); a damaged journal line reruns its episode."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ltc_control.agents.imitation import train
from ltc_control.agents.imitation_config import TrainConfig
from ltc_control.agents.imitation_trainer import _Trainer
from ltc_control.cli import main as cli_main
from ltc_control.config import from_dict
from tests.faults.helpers import write_stripe_dataset

RNG = random.Random(9)
CASES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Any:
    yield
    print(f"\nrun-folder fault cases tried: {sum(CASES.values())} {CASES}")


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training run interrupted in its third epoch (checkpoints/last after epoch 2, metrics.csv, config)."""
    base = tmp_path_factory.mktemp("run")
    data = write_stripe_dataset(base / "data")
    cfg = from_dict(
        TrainConfig,
        {
            "name": "faults",
            "out_dir": str(base / "runs"),
            "workers": 0,
            "env": {"kwargs": {"image_height": 16, "image_width": 32}},
            "demos": {"dir": str(data), "num_roads": 5},
            "policy": {"image_shape": [16, 32, 3]},
            "bc": {"epochs": 4, "batch_size": 8, "window": 8, "stride": 4, "log_every": 1, "device": "cpu"},
            "eval": {"num_roads": 0},
        },
    )
    original = _Trainer.train_epoch
    calls = {"n": 0}

    def interrupting(self: _Trainer, data: Any, epoch_seed: int) -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, data, epoch_seed)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_Trainer, "train_epoch", interrupting)
        result = train(cfg, progress=False)
    assert result.interrupted
    return result.run_dir


@pytest.fixture
def run(interrupted_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / interrupted_run.name
    shutil.copytree(interrupted_run, dest)
    return dest


def _resume_fails(run: Path, capsys: pytest.CaptureFixture[str], kind: str, *needles: str) -> None:
    CASES[kind] = CASES.get(kind, 0) + 1
    try:
        rc = cli_main(["train", "--resume", str(run), "--no-progress"])
    except SystemExit as exc:  # config value errors exit through argparse, also in one line
        rc = int(exc.code or 0)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert not (run / "final_metrics.json").exists() and not (run / "checkpoints" / "best").exists()
    assert not (run / ".lock").exists()


def test_intact_run_resumes(run: Path) -> None:
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "final_metrics.json").is_file()


def test_config_truncated_at_random_offsets(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (run / "config.yaml").read_bytes()
    for offset in [0, *RNG.sample(range(1, len(data) - 2), 7)]:
        (run / "config.yaml").write_bytes(data[:offset])
        _resume_fails(run, capsys, "truncation", "config.yaml")


def test_config_bit_flips(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = bytearray((run / "config.yaml").read_bytes())
    tried = 0
    while tried < 8:
        flipped = bytearray(data)
        pos = RNG.randrange(len(data))
        if chr(data[pos]) in " \n":  # a flip in indentation may only change a comment-free layout
            continue
        flipped[pos] ^= 1 << RNG.randrange(7)
        (run / "config.yaml").write_bytes(bytes(flipped))
        _resume_fails(run, capsys, "bit flip", "config")
        tried += 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t.replace("seed: 0\n", "seed: zero\n", 1), "seed"),
        (lambda t: t.replace("workers: 0\n", "workers: [0]\n", 1), "workers"),
        (lambda t: t.replace("name: faults\n", "", 1), "incomplete"),
        (lambda t: t + "surprise: 1\n", "surprise"),
        (lambda t: t.replace("seed: 0\n", "seed: 1\n", 1), "differs from the config"),
        (lambda t: "- just\n- a list\n", "mapping"),
    ],
)
def test_config_wrong_types_and_schema(
    run: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[str], str], needle: str
) -> None:
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(edit(text))
    _resume_fails(run, capsys, "wrong type" if needle in ("seed", "workers") else "schema", needle)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("config.yaml", "not a training run folder"),
        ("checkpoints/last/model.safetensors", "model.safetensors"),
        ("checkpoints/last/trainer_state.json", "trainer_state.json"),
        ("checkpoints/last/model.json", "model.json"),
    ],
)
def test_missing_files(run: Path, capsys: pytest.CaptureFixture[str], name: str, needle: str) -> None:
    (run / name).unlink()
    _resume_fails(run, capsys, "missing file", needle)


def test_metrics_csv_truncated_or_flipped(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (run / "metrics.csv").read_bytes()
    for offset in RNG.sample(range(1, len(data) - 2), 6):
        (run / "metrics.csv").write_bytes(data[:offset])
        _resume_fails(run, capsys, "truncation", "metrics.csv")
    digits = [i for i, b in enumerate(data) if chr(b).isdigit()]
    for pos in RNG.sample(digits, 6):
        flipped = bytearray(data)
        flipped[pos] = ord(str((int(chr(data[pos])) + 1) % 10))
        (run / "metrics.csv").write_bytes(bytes(flipped))
        _resume_fails(run, capsys, "bit flip", "metrics.csv")
    (run / "metrics.csv").write_text("step,time,loss\n1,0.1,abc\n")
    _resume_fails(run, capsys, "wrong type", "metrics.csv")


def _edit_trainer_state(run: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    last = run / "checkpoints" / "last"
    doc = json.loads((last / "trainer_state.json").read_text())
    edit(doc)
    (last / "trainer_state.json").write_text(json.dumps(doc))
    digest = hashlib.sha256((last / "trainer_state.json").read_bytes()).hexdigest()
    model = json.loads((last / "model.json").read_text())
    model["trainer_state"]["json_sha256"] = digest  # as a foreign writer would: the hash matches
    (last / "model.json").write_text(json.dumps(model))


@pytest.mark.parametrize(
    ("key", "value"),
    [("epoch", "two"), ("epoch", -1), ("round_done", "no"), ("round_scores", "{"), ("step", 2.5)],
)
def test_trainer_state_wrong_types(
    run: Path, capsys: pytest.CaptureFixture[str], key: str, value: Any
) -> None:
    _edit_trainer_state(run, lambda doc: doc["extra"].__setitem__(key, value))
    _resume_fails(run, capsys, "wrong type", "trainer_state.json")


def test_trainer_state_schema(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit_trainer_state(run, lambda doc: doc["extra"].pop("epoch"))
    _resume_fails(run, capsys, "schema", "trainer_state.json")
    _edit_trainer_state(run, lambda doc: doc.__setitem__("extra", None))
    _resume_fails(run, capsys, "schema", "trainer state")


def test_trainer_state_bit_flip_is_caught_by_its_hash(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = run / "checkpoints" / "last" / "trainer_state.json"
    data = bytearray(path.read_bytes())
    for _ in range(4):
        flipped = bytearray(data)
        flipped[RNG.randrange(len(data))] ^= 1 << RNG.randrange(7)
        path.write_bytes(bytes(flipped))
        _resume_fails(run, capsys, "bit flip", "trainer_state.json")


def test_lock_files(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
        CASES["schema"] = CASES.get("schema", 0) + 1
        assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 2
        assert f"in use by pid {live.pid}" in capsys.readouterr().err
    finally:
        live.kill()
        live.wait()
    (run / ".lock").write_bytes(b"\x00garbage")  # unreadable and fresh: maybe being written right now
    CASES["wrong type"] = CASES.get("wrong type", 0) + 1
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "unknown process" in capsys.readouterr().err
    old = time.time() - 60
    os.utime(run / ".lock", (old, old))  # unreadable and old: left by a writer that died
    assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert not (run / ".lock").exists()


EVALUATE = [
    "evaluate",
    "expert",
    "--seeds",
    "1000-1001",
    "--noise",
    "0,0.1",
    "--workers",
    "0",
    "--max_steps",
    "12",
    "--env_kwargs",
    "{image_height: 16, image_width: 32, road_length: 12.0}",
    "--no-progress",
]


def test_damaged_journal_lines_rerun_their_episodes(tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli_main([*EVALUATE, "--out", str(ref)]) == 0
    episodes = json.loads((ref / "evaluation.json").read_text())["episodes"]
    lines = []
    for ep in episodes:
        lines.append(
            json.dumps(
                {"episode": ep, "sha256": hashlib.sha256(json.dumps(ep, sort_keys=True).encode()).hexdigest()}
            )
        )
    damaged = [
        lines[0],
        lines[1].replace('"steps": 12', '"steps": 13'),  # bit-level change: fails its sha256
        lines[2][: len(lines[2]) // 2],  # torn line
        "\x00\x01 not json",
    ]
    CASES["journal"] = CASES.get("journal", 0) + 3
    out.mkdir()
    (out / ".evaluation.partial.jsonl").write_text("\n".join(damaged) + "\n")
    assert cli_main([*EVALUATE, "--out", str(out), "--resume"]) == 0
    a = json.loads((ref / "evaluation.json").read_text())
    b = json.loads((out / "evaluation.json").read_text())
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b
