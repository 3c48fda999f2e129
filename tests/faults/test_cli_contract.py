"""The CLI contract of docs/cli.md: expected errors are one line with exit status 2 and leave nothing behind;
output folders holding results are refused without --overwrite; concurrent writers are locked out; config
errors surface before any work; a checkpoint runs in its training env (issue #15 items 2, 3, 4 and 7)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltc_control.checkpoint import save_checkpoint
from ltc_control.cli import main as cli_main
from ltc_control.config import from_dict
from ltc_control.locking import FolderLock
from ltc_control.policy import Policy, PolicyConfig
from tests.faults.helpers import write_stripe_dataset

ENV_KWARGS = {"image_height": 16, "image_width": 32, "road_length": 12.0}
EVAL = ["--seeds", "1000", "--noise", "0", "--workers", "0", "--max_steps", "8", "--no-progress"]


def _expect_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # a config value error exits through argparse (one line, status 2)
        rc = int(exc.code or 0)
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"ltc-control {argv[0]}: error: ")
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16x32-camera policy whose metadata records the env it was trained in (as train() writes it)."""
    torch.manual_seed(0)
    cfg = from_dict(PolicyConfig, {"image_shape": [16, 32, 3], "controller": {"kind": "cfc"}})
    meta = {"train_config": {"env": {"id": "LTC/LaneKeeping-v0", "kwargs": ENV_KWARGS}}}
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", Policy(cfg), meta)


def test_evaluate_refuses_an_out_folder_with_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "expert", "--env_kwargs", json.dumps(ENV_KWARGS), *EVAL, "--out", str(out)]
    assert cli_main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _expect_error(capsys, args, str(out), "already holds results", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert cli_main([*args, "--overwrite"]) == 0
    assert not (out / ".lock").exists()


def test_evaluate_into_a_training_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: mine\n")
    args = ["evaluate", "expert", "--env_kwargs", json.dumps(ENV_KWARGS), *EVAL, "--out", str(run)]
    _expect_error(capsys, args, "already holds results")
    assert (run / "config.yaml").read_text() == "name: mine\n" and sorted(os.listdir(run)) == ["config.yaml"]


def test_a_live_lock_refuses_a_second_writer_and_a_stale_one_is_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    args = ["evaluate", "expert", "--env_kwargs", json.dumps(ENV_KWARGS), *EVAL, "--out", str(out)]
    with FolderLock(out):  # this process holds it: nested use by this process is fine (re-entrant)
        assert cli_main([*args, "--overwrite"]) == 0
        assert (out / ".lock").is_file()
    assert not (out / ".lock").exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # another live process writes there
        (out / ".lock").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename, "created": 0}))
        _expect_error(capsys, [*args, "--overwrite"], "in use by pid", str(live.pid))
    finally:
        live.kill()
        live.wait()
    (out / ".lock").unlink()
    shutil.rmtree(out)
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = json.loads(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "created": 0}))
    (out / ".lock").write_text(json.dumps(lock))
    assert cli_main(args) == 0  # the dead writer's lock is stale
    assert (out / "evaluation.json").is_file() and not (out / ".lock").exists()


def test_expected_errors_leave_no_folder_behind(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    for cmd in ("evaluate", "rollout"):
        _expect_error(capsys, [cmd, str(broken), "--out", "out"], "model.safetensors", "corrupt")
        _expect_error(capsys, [cmd, str(broken)], "model.safetensors")
        _expect_error(capsys, [cmd, str(checkpoint), "--env", "LTC/Nope-v0", "--out", "out"], "LTC/Nope-v0")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_checkpoint_runs_in_its_training_env(
    tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["evaluate", str(checkpoint), *EVAL, "--out", str(tmp_path / "e")]) == 0
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["env_kwargs"] == ENV_KWARGS
    rollout = ["rollout", str(checkpoint), "--max_steps", "3", "--no-progress", "--panels", "camera"]
    assert cli_main([*rollout, "--width", "64", "--height", "64", "--out", str(tmp_path / "r")]) == 0
    # overridable: another camera size is the user's choice, and its mismatch is one clear line
    _expect_error(
        capsys,
        ["evaluate", str(checkpoint), *EVAL, "--env_kwargs", "{image_height: 32, image_width: 64}"],
        "(32, 64, 3)",
        "(16, 32, 3)",
    )


def test_inspect_runs_a_checkpoint_in_its_training_env_id_and_kwargs(tmp_path: Path) -> None:
    """``inspect`` takes the training env's id as well as its kwargs (here the randomised-visuals env);
    ``--env_kwargs`` overrides key by key, ``--env`` replaces the env."""
    torch.manual_seed(0)
    meta = {"train_config": {"env": {"id": "LTC/LaneKeepingRandomized-v0", "kwargs": ENV_KWARGS}}}
    ckpt = save_checkpoint(tmp_path / "ck", Policy(PolicyConfig(image_shape=(16, 32, 3))), meta)
    base = ["inspect", str(ckpt), "--steps", "3", "--saliency_frames", "0", "--no-video", "--formats", "png"]
    base += ["--no-progress", "--noise", "0.1"]

    def summary(out: str, *extra: str) -> dict[str, object]:
        assert cli_main([*base, "--out", str(tmp_path / out), *extra]) == 0
        return json.loads((tmp_path / out / "summary.json").read_text())["summary"]

    got = summary("a")
    assert got["env"] == "LTC/LaneKeepingRandomized-v0" and json.loads(got["env kwargs"]) == ENV_KWARGS
    got = summary("b", "--env_kwargs", "{road_length: 15.0}")
    assert json.loads(got["env kwargs"]) == {**ENV_KWARGS, "road_length": 15.0}
    got = summary("c", "--env", "LTC/LaneKeeping-v0", "--env_kwargs", "{image_height: 16, image_width: 32}")
    assert got["env"] == "LTC/LaneKeeping-v0"
    assert json.loads(got["env kwargs"]) == {"image_height": 16, "image_width": 32}


TRAIN = [
    "--set",
    "workers=0",
    "--set",
    "env.kwargs={image_height: 16, image_width: 32}",
    "--set",
    "policy.image_shape=[16, 32, 3]",
]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("env.id=LTC/Nope-v0", "LTC/Nope-v0"),
        ("env.kwargs={image_height: 16, image_width: 32, bogus: 1}", "bogus"),
        ("eval.num_roads=-1", "eval.num_roads"),
        ("eval.noise_levels=[-1]", "eval.noise_levels"),
        ("eval.max_steps=-5", "eval.max_steps"),
        ("bc.lr_controller=.inf", "bc.lr_controller"),
    ],
)
def test_train_config_errors_surface_before_any_work(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    override: str,
    needle: str,
) -> None:
    data = write_stripe_dataset(tmp_path / "data", roads=2)
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TRAIN, "--set", f"demos.dir={data}", "--set", "demos.num_roads=2", "--set", override]
    _expect_error(capsys, argv, needle)
    assert not (tmp_path / "runs").exists()  # no run folder, no training, no collection


def test_a_damaged_dataset_in_training_is_one_line_and_leaves_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    import io

    import numpy as np

    data = write_stripe_dataset(tmp_path / "data", roads=3)
    chunk = data / "chunk_000000.npz"
    with np.load(chunk) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"][:, :8]  # a chunk of another camera size
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    chunk.write_bytes(buf.getvalue())
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["chunks"][0]["sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (data / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    argv = [
        "train",
        *TRAIN,
        "--set",
        f"demos.dir={data}",
        "--set",
        "demos.num_roads=3",
        "--set",
        "eval.num_roads=0",
    ]
    _expect_error(capsys, argv, "chunk_000000.npz", "'images'", "wrong image size")
    assert not any((tmp_path / "runs").glob("*"))
