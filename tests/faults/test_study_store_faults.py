"""Fault injection on the study store: a trial's ``result.json`` (the record that marks a trial finished).

Truncation at random offsets, bit flips, wrong types, another trial's result and a missing file: a damaged
record is a :class:`StudyStoreError` naming the file (and what to do), never a silently reused or mixed
result; a missing one means the trial has not finished.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ltc_control.agents.study.trials import RESULT_NAME, Trial, load_result, run_trial, spec_hash
from ltc_control.errors import ExpectedError, StudyStoreError

SPEC = {"kind": "train", "model": "ncp_ltc", "seed": 0, "torch_threads": 1}
TRIAL = Trial("train", "ncp_ltc", 0, 0.01, SPEC, spec_hash(SPEC))
RESULT = {
    "val_mse": 0.0041,
    "test_mse": 0.0012,
    "id": TRIAL.id,
    "kind": "train",
    "model": "ncp_ltc",
    "seed": 0,
    "lr": 0.01,
    "wall_seconds": 104.5,
    "cpu_seconds": 66.25,
    "host": "vm",
}


def _write(folder: Path, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_NAME
    path.write_text(json.dumps({**doc, "sha256": spec_hash(doc)}, indent=1) + "\n")
    return path


def _expect_store_error(folder: Path, expected_id: str | None = TRIAL.id) -> str:
    with pytest.raises(StudyStoreError) as info:
        load_result(folder, expected_id)
    assert isinstance(info.value, ExpectedError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(folder / RESULT_NAME) in message and "delete the folder" in message
    return message


def test_intact_result_loads_and_a_missing_one_is_unfinished(tmp_path):
    _write(tmp_path / "t", RESULT)
    assert load_result(tmp_path / "t", TRIAL.id) == RESULT
    assert load_result(tmp_path / "missing", TRIAL.id) is None


def test_truncation_at_random_offsets(tmp_path):
    path = _write(tmp_path / "t", RESULT)
    data = path.read_bytes()
    offsets = random.Random(0).sample(range(len(data.rstrip())), 25)
    for offset in offsets:
        path.write_bytes(data[:offset])
        _expect_store_error(tmp_path / "t")


def test_bit_flips(tmp_path):
    path = _write(tmp_path / "t", RESULT)
    data = path.read_bytes()
    rng = random.Random(1)
    for _ in range(40):
        pos, bit = rng.randrange(len(data.rstrip())), rng.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        path.write_bytes(bytes(flipped))
        try:
            doc = load_result(tmp_path / "t", TRIAL.id)
        except StudyStoreError as exc:
            assert str(path) in str(exc)
            continue
        # a flip inside insignificant whitespace leaves the same record
        assert doc == RESULT


@pytest.mark.parametrize(
    "change",
    [
        {"seed": "0"},
        {"lr": None},
        {"wall_seconds": True},
        {"kind": "tune"},
        {"model": 3},
        {"id": ["x"]},
    ],
)
def test_wrong_types_and_values(tmp_path, change):
    _write(tmp_path / "t", {**RESULT, **change})
    _expect_store_error(tmp_path / "t")


def test_missing_key_and_not_an_object(tmp_path):
    doc = dict(RESULT)
    del doc["cpu_seconds"]
    _write(tmp_path / "a", doc)
    assert "cpu_seconds" in _expect_store_error(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / RESULT_NAME).write_text("[1, 2, 3]\n")
    _expect_store_error(tmp_path / "b")


def test_edited_value_without_a_new_digest(tmp_path):
    path = _write(tmp_path / "t", RESULT)
    doc = json.loads(path.read_text())
    doc["test_mse"] = 0.0001  # a "better" number edited in by hand
    path.write_text(json.dumps(doc))
    assert "sha256" in _expect_store_error(tmp_path / "t")


def test_another_trials_result_is_refused(tmp_path):
    _write(tmp_path / "t", {**RESULT, "id": spec_hash({"other": 1})})
    assert "belongs to trial" in _expect_store_error(tmp_path / "t")


def test_run_trial_refuses_a_damaged_record_instead_of_reusing_it(tmp_path):
    folder = tmp_path / "trials" / TRIAL.folder
    path = _write(folder, RESULT)
    assert run_trial(TRIAL, str(tmp_path)) == RESULT  # intact: reused, nothing recomputed
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(StudyStoreError):
        run_trial(TRIAL, str(tmp_path))
    assert path.read_bytes()[:40] == path.read_bytes()  # nothing written over it
