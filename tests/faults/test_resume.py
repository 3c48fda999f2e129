"""Interrupting long commands with SIGINT / SIGTERM at a random point and resuming them gives the same final
files as an uninterrupted run with the same seed (issue #15 item 1 and the interruption contract)."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from ltc_control.cli import main as cli_main
from tests.faults.helpers import FAULT_SEED as _SEED
from tests.faults.helpers import (
    csv_without,
    interrupt_cli,
    interrupted_status,
    write_stripe_dataset,
)

TRAIN_YAML = """\
name: synthetic
out_dir: runs
workers: 0
env: {kwargs: {image_height: 16, image_width: 32}}
demos: {dir: DATA, num_roads: 5, val_fraction: 0.2}
policy: {image_shape: [16, 32, 3]}
bc: {epochs: 6, batch_size: 8, window: 8, stride: 4, patience: 0, log_every: 1, device: cpu, num_threads: 1}
eval: {num_roads: 0}
"""
TIMING = {"time", "epoch/seconds", "final/train_seconds", "final/wall_seconds"}


def _train_setup(root: Path, data: Path) -> Path:
    root.mkdir()
    (root / "cfg.yaml").write_text(TRAIN_YAML.replace("DATA", str(data)))
    return root


def _run_dir(root: Path) -> Path:
    (run,) = sorted((root / "runs").iterdir())
    return run


def _final_files(run: Path) -> dict[str, object]:
    final = json.loads((run / "final_metrics.json").read_text())
    return {
        "best": (run / "checkpoints/best/model.safetensors").read_bytes(),
        "last": (run / "checkpoints/last/model.safetensors").read_bytes(),
        "final": {k: v for k, v in final.items() if "seconds" not in k},
        "metrics": csv_without(run / "metrics.csv", TIMING),
    }


def _first_difference(a: list, b: list) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"row {i}: {x} != {y}"
    return f"{len(a)} rows != {len(b)} rows"


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    base = tmp_path_factory.mktemp("train")
    data = write_stripe_dataset(base / "data")
    root = _train_setup(base / "reference", data)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli_main(["train", "--config", "cfg.yaml", "--no-progress"]) == 0
    return data, _final_files(_run_dir(root))


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["sigint"])  # SIGTERM: the collect and DAgger tests
def test_train_interrupted_and_resumed_is_bit_identical(
    tmp_path: Path, train_reference: tuple[Path, dict[str, object]], sig: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, reference = train_reference
    root = _train_setup(tmp_path / "run", data)
    rng = random.Random(_SEED * 100 + int(sig))
    started = lambda: (root / "runs").is_dir() and any((root / "runs").glob("*/metrics.csv"))  # noqa: E731
    rc, err = interrupt_cli(["train", "--config", "cfg.yaml", "--no-progress"], root, sig, started, rng, 0.8)
    print(f"train: exit status {rc} after the signal")
    assert rc in (0, interrupted_status(sig)), err
    run = _run_dir(root)
    assert "Traceback" not in err
    if rc != 0 and not (run / "final_metrics.json").exists():  # else the signal came after the run ended
        assert "best checkpoint" not in err and "--resume" in err
        if "the last finished epoch is saved" in err:  # stopped in the training loop: no best checkpoint yet
            assert not (run / "checkpoints/best").exists()
        monkeypatch.chdir(root)
        assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
    got = _final_files(run)
    assert got["metrics"] == reference["metrics"], _first_difference(got["metrics"], reference["metrics"])
    assert got == reference
    assert not (run / ".lock").exists()


def test_train_interrupted_before_its_first_resume_point(
    tmp_path: Path,
    train_reference: tuple[Path, dict[str, object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two timings a random delay rarely hits: Ctrl-C while the run sets up (its folder exists, nothing is
    trained) and at the first resume point (metric rows logged, no checkpoint yet). Both
    print the --resume line, and the resumed run equals an uninterrupted one (no row kept twice)."""
    from ltc_control.agents import imitation, imitation_trainer

    data, reference = train_reference
    original = imitation._Trainer

    def set_up_then_interrupted(*args: object, **kwargs: object) -> object:
        original(*args, **kwargs)
        raise KeyboardInterrupt

    def no_resume_point(self: object) -> None:
        raise KeyboardInterrupt

    for name, target, attr, replacement in (
        ("setup", imitation, "_Trainer", set_up_then_interrupted),
        ("first_epoch", imitation_trainer._Trainer, "save_state", no_resume_point),
    ):
        root = _train_setup(tmp_path / name, data)
        monkeypatch.chdir(root)
        with monkeypatch.context() as patch:
            patch.setattr(target, attr, replacement)
            assert cli_main(["train", "--config", "cfg.yaml", "--no-progress"]) == 130
        out, err = capsys.readouterr()
        run = _run_dir(root)
        assert "ltc-control train --resume" in out + err and run.name in out + err, name
        assert not (run / "checkpoints" / "last").exists()
        if name == "first_epoch":
            assert len(csv_without(run / "metrics.csv", TIMING)) > 0  # rows of the unfinished epoch
        assert cli_main(["train", "--resume", str(run), "--no-progress"]) == 0
        got = _final_files(run)
        assert got["metrics"] == reference["metrics"], _first_difference(got["metrics"], reference["metrics"])
        assert got == reference, name


# ------------------------------------------------------------------------------------------- dataset collect
COLLECT = [
    "dataset",
    "collect",
    "--num_roads",
    "8",
    "--episodes_per_chunk",
    "2",
    "--workers",
    "0",
    "--max_steps",
    "100",
    "--env.kwargs",
    "{image_height: 16, image_width: 32, road_length: 40.0}",
    "--no-progress",
]


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_collect_interrupted_and_resumed_gives_identical_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main([*COLLECT, "--out", "reference"]) == 0
    rng = random.Random(_SEED + 3)
    out = tmp_path / "data"
    rc, err = interrupt_cli(
        [*COLLECT, "--out", str(out)],
        tmp_path,
        signal.SIGTERM,
        lambda: (out / "manifest.json").is_file(),
        rng,
        1.0,
    )
    print(f"collect: exit status {rc} after the signal")
    assert rc in (0, 143), err
    assert "Traceback" not in err and not (out / ".lock").exists()
    if rc != 0:
        assert cli_main([*COLLECT, "--out", str(out), "--resume"]) == 0
    assert _folder_bytes(out) == _folder_bytes(tmp_path / "reference")


# -------------------------------------------------------------------------------------------------- evaluate
EVALUATE = [
    "evaluate",
    "expert",
    "--seeds",
    "1000-1002",
    "--noise",
    "0,0.1",
    "--workers",
    "0",
    "--max_steps",
    "30",
    "--env_kwargs",
    "{image_height: 16, image_width: 32, road_length: 12.0}",
    "--no-progress",
]


def _evaluation(folder: Path) -> dict[str, object]:
    doc = json.loads((folder / "evaluation.json").read_text())
    doc.pop("elapsed_s")
    return {
        "json": doc,
        "summary": (folder / "summary.csv").read_text(),
        "episodes": (folder / "episodes.csv").read_text(),
    }


def test_evaluate_interrupted_and_resumed_gives_identical_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main([*EVALUATE, "--out", "reference"]) == 0
    out = tmp_path / "eval"
    journal = out / ".evaluation.partial.jsonl"
    rc, err = interrupt_cli(
        [*EVALUATE, "--out", str(out)],
        tmp_path,
        signal.SIGINT,
        journal.is_file,
        random.Random(_SEED + 4),
        1.0,
    )
    print(f"evaluate: exit status {rc} after the signal")
    assert rc in (0, 130), err
    assert "Traceback" not in err and not (out / ".lock").exists()
    if rc != 0 and not journal.exists():
        # the signal came after the report was saved (then the journal deleted): nothing to resume
        assert "--resume" not in err
    elif rc != 0:
        assert journal.is_file()  # marks the folder unfinished until the whole report is written
        assert "--resume" in err
        assert cli_main([*EVALUATE, "--out", str(out)]) == 2  # refused without --resume
        assert cli_main([*EVALUATE, "--out", str(out), "--resume"]) == 0
    assert _evaluation(out) == _evaluation(tmp_path / "reference")
    assert not journal.exists()


def test_evaluate_interrupted_while_saving_or_after_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the report is written keeps the journal (the folder stays resumable, never half-finished
    and unmarked); after the report is complete it says the results are final."""
    from ltc_control.agents.evaluation import EvalReport

    monkeypatch.chdir(tmp_path)
    assert cli_main([*EVALUATE, "--out", "reference"]) == 0
    save = EvalReport.save

    def save_then_interrupted(self: EvalReport, *args: object, **kwargs: object) -> object:
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    def interrupted(self: EvalReport) -> str:
        raise KeyboardInterrupt

    journal = tmp_path / "eval" / ".evaluation.partial.jsonl"
    with monkeypatch.context() as patch:
        patch.setattr(EvalReport, "save", save_then_interrupted)
        assert cli_main([*EVALUATE, "--out", "eval"]) == 130
    assert journal.is_file() and "--resume" in capsys.readouterr().err
    assert cli_main([*EVALUATE, "--out", "eval", "--resume"]) == 0
    assert _evaluation(tmp_path / "eval") == _evaluation(tmp_path / "reference") and not journal.exists()
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(EvalReport, "table", interrupted)
        assert cli_main([*EVALUATE, "--out", "again"]) == 130
    err = capsys.readouterr().err
    assert "report was complete" in err and "--resume" not in err
    assert _evaluation(tmp_path / "again") == _evaluation(tmp_path / "reference")
    assert not (tmp_path / "again" / ".evaluation.partial.jsonl").exists()


# ---------------------------------------------------------------------------------------------------- DAgger
DAGGER_YAML = (
    TRAIN_YAML.replace("epochs: 6", "epochs: 2")
    .replace(
        "env: {kwargs: {image_height: 16, image_width: 32}}",
        "env: {kwargs: {image_height: 16, image_width: 32, road_length: 12.0}}",
    )
    .replace("eval: {num_roads: 0}", "eval: {num_roads: 0, max_steps: 20}")
    .replace("demos: {dir: DATA,", "demos: {max_steps: 40,")
    + "dagger: {rounds: 1, episodes_per_round: 2, epochs_per_round: 1, max_steps: 30}\n"
)


def _has_metrics(runs: Path) -> Callable[[], bool]:
    return lambda: any(runs.glob("*/metrics.csv"))


def _dagger_files(run: Path, data: Path) -> dict[str, object]:
    files = _final_files(run)
    manifest = json.loads((data / "manifest.json").read_text())
    files["chunks"] = {p.name: p.read_bytes() for p in sorted(data.glob("chunk_*.npz"))}
    files["manifest_chunks"] = manifest["chunks"]
    return files


def test_dagger_interrupted_and_resumed_is_bit_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for name, sig in (("reference", None), ("interrupted", signal.SIGTERM)):
        root = tmp_path / name
        root.mkdir()
        (root / "cfg.yaml").write_text(DAGGER_YAML)  # demonstrations collected into the run folder
        monkeypatch.chdir(root)
        args = ["train", "--config", "cfg.yaml", "--no-progress"]
        if sig is None:
            assert cli_main(args) == 0
        else:
            # interrupt somewhere in behaviour cloning, the DAgger collection or the DAgger round
            rc, err = interrupt_cli(args, root, sig, _has_metrics(root / "runs"), random.Random(_SEED), 2.0)
            print(f"dagger: exit status {rc} after the signal")
            assert rc in (0, 143), err
            if rc != 0:
                assert cli_main(["train", "--resume", str(_run_dir(root)), "--no-progress"]) == 0
        results.append(_dagger_files(_run_dir(root), _run_dir(root) / "data"))
    assert results[0]["metrics"] == results[1]["metrics"], _first_difference(
        results[0]["metrics"], results[1]["metrics"]
    )
    assert results[0] == results[1]
