"""Checkpoints: save/load round trip, trainer state, corruption and interrupted saves."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ltc_control import checkpoint as ckpt_mod
from ltc_control.checkpoint import (
    CheckpointError,
    checkpoint_info,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from ltc_control.controllers import ControllerConfig
from ltc_control.policy import Policy, PolicyConfig

KINDS = ["ltc", "cfc", "lstm", "gru", "ctrnn", "mlp"]


def _vector_policy(kind: str, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    ctrl = ControllerConfig(kind=kind, units=12, lstm_hidden=12, cfc_backbone_units=8)
    return Policy(PolicyConfig(observation="vector", vector_size=6, action_size=2, controller=ctrl)).eval()


def _obs(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class TrainCfg:
    lr: float = 3e-4
    epochs: int = 2


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_identical_outputs(tmp_path: Path, kind: str) -> None:
    policy = _vector_policy(kind)
    with torch.no_grad():  # perturb every weight so a silently re-initialised tensor would show
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(tmp_path / "ck", policy, metadata={"train": TrainCfg(), "val_loss": 0.125})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"train": {"lr": 3e-4, "epochs": 2}, "val_loss": 0.125}
    assert not loaded.training
    assert loaded.resolved_config() == policy.resolved_config()
    with torch.no_grad():
        a, h = policy(_obs())
        b, g = loaded(_obs())
        a2, _ = policy(_obs(1), state=h)
        b2, _ = loaded(_obs(1), state=g)
    assert torch.equal(a, b) and torch.equal(h, g) and torch.equal(a2, b2)
    for (name, p), (name2, q) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q)


def test_image_policy_round_trip_keeps_wiring(tmp_path: Path) -> None:
    torch.manual_seed(1)
    policy = Policy(PolicyConfig(image_shape=(16, 32, 3))).eval()
    save_checkpoint(tmp_path / "img", policy)
    loaded, meta = load_checkpoint(tmp_path / "img")
    assert meta == {}
    assert loaded.controller.wiring == policy.controller.wiring
    frames = np.random.default_rng(0).integers(0, 256, (1, 3, 16, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        assert torch.equal(policy(frames)[0], loaded(frames)[0])
    info = checkpoint_info(tmp_path / "img")
    assert info["format"] == "ltc-control-policy" and info["format_version"] == 1
    assert info["versions"]["torch"] == torch.__version__
    assert info["policy_config"]["controller"]["wiring"]["preset"] == "saved"
    assert info["summary"]["controller"]["synapses"] == 252
    assert info["trainer_state"] is None and load_trainer_state(tmp_path / "img") is None


def test_trainer_state_resume_matches_uninterrupted(tmp_path: Path) -> None:
    policy = _vector_policy("ltc")
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)

    def step(p: Policy, o: torch.optim.Optimizer) -> None:
        o.zero_grad()
        p(_obs())[0].pow(2).mean().backward()
        o.step()

    step(policy, opt)
    rng = torch.Generator().manual_seed(7).get_state()
    save_checkpoint(
        tmp_path / "ck",
        policy,
        optimizer=opt,
        extra_state={"step": 1, "rng": rng, "arr": np.arange(3), "t": (1, 2.5)},
    )
    loaded, _ = load_checkpoint(tmp_path / "ck")
    loaded.train()
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-2)
    state = load_trainer_state(tmp_path / "ck")
    assert state is not None
    opt2.load_state_dict(state["optimizer"])
    extra = state["extra"]
    assert extra["step"] == 1 and torch.equal(extra["rng"], rng)
    np.testing.assert_array_equal(extra["arr"], np.arange(3))
    assert extra["t"] == (1, 2.5)
    step(policy, opt)
    step(loaded, opt2)
    for p, q in zip(policy.parameters(), loaded.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_metadata_non_finite_and_bad_types(tmp_path: Path) -> None:
    policy = _vector_policy("gru")
    save_checkpoint(tmp_path / "ck", policy, metadata={"loss": float("nan"), "n": np.int64(3)})
    _, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"loss": "nan", "n": 3}
    json.loads((tmp_path / "ck" / "model.json").read_text())  # strict JSON (no NaN literal)
    with pytest.raises(CheckpointError, match=r"metadata.obj holds a object"):
        save_checkpoint(tmp_path / "bad", policy, metadata={"obj": object()})
    assert not (tmp_path / "bad").exists()


def _saved(tmp_path: Path, kind: str = "gru") -> Path:
    return save_checkpoint(tmp_path / "ck", _vector_policy(kind))


def test_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder .*nowhere.* not found"):
        load_checkpoint(tmp_path / "nowhere")
    d = _saved(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.safetensors.*missing"):
        load_checkpoint(d)
    (d / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"model.json.*missing"):
        load_checkpoint(d)


def test_truncated_or_corrupt_weights_named(tmp_path: Path) -> None:
    d = _saved(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors.*corrupt, truncated"):
        load_checkpoint(d)
    # with a checksum that matches the damaged file, safetensors' own parse error is reported with the name
    for damaged in (data[: len(data) // 2], b"\x00" * 5):
        (d / "model.safetensors").write_bytes(damaged)
        doc = json.loads((d / "model.json").read_text())
        doc["weights"]["sha256"] = hashlib.sha256(damaged).hexdigest()
        (d / "model.json").write_text(json.dumps(doc))
        with pytest.raises(CheckpointError, match=r"model.safetensors.*corrupt or truncated"):
            load_checkpoint(d)
    # without a recorded checksum the document itself is invalid (the check cannot be switched off)
    doc["weights"]["sha256"] = None
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"model.json.*sha256"):
        load_checkpoint(d)


def test_corrupt_json_and_bad_config_named(tmp_path: Path) -> None:
    d = _saved(tmp_path)
    text = (d / "model.json").read_text()
    (d / "model.json").write_text(text[: len(text) // 3])
    with pytest.raises(CheckpointError, match=r"model.json.*corrupt or truncated"):
        load_checkpoint(d)
    doc = json.loads(text)
    doc["policy_config"]["controller"]["n_layers"] = 3
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(
        CheckpointError, match=r"model.json.*'policy_config.controller.n_layers'.*valid keys: kind"
    ):
        load_checkpoint(d)
    doc = json.loads(text)
    doc["format"] = "something-else"
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="not an ltc-control policy checkpoint"):
        load_checkpoint(d)


def test_shape_mismatch_named(tmp_path: Path) -> None:
    d = _saved(tmp_path, "gru")
    doc = json.loads((d / "model.json").read_text())
    doc["policy_config"]["controller"]["units"] = 10  # weights were saved for 12 units
    (d / "model.json").write_text(json.dumps(doc))
    with pytest.raises(
        CheckpointError, match=r"model.safetensors.*does not match.*shape mismatch: .*\(36, 6\).*\(30, 6\)"
    ):
        load_checkpoint(d)


def test_overwrite_replaces_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", _vector_policy("ltc", seed=0), metadata={"v": 1})
    newer = _vector_policy("ltc", seed=1)
    save_checkpoint(tmp_path / "ck", newer, metadata={"v": 2})
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 2}
    with torch.no_grad():
        assert torch.equal(loaded(_obs())[0], newer(_obs())[0])
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp or backup folders left


@pytest.mark.parametrize("fail_at", ["weights", "json"])
def test_interrupted_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    good = _vector_policy("ltc", seed=0)
    save_checkpoint(tmp_path / "ck", good, metadata={"v": 1})
    with torch.no_grad():
        expected = good(_obs())[0]
    real_save_file = ckpt_mod.save_file

    def crash_in_weights(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        real_save_file(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:100])  # half-written file
        raise KeyboardInterrupt("killed while writing weights")

    def crash_in_json(path: Path, doc: object) -> None:
        path.write_text('{"format": "ltc-con')
        raise OSError("disk full")

    if fail_at == "weights":
        monkeypatch.setattr(ckpt_mod, "save_file", crash_in_weights)
        err: type[BaseException] = KeyboardInterrupt
    else:
        monkeypatch.setattr(ckpt_mod, "_write_json", crash_in_json)
        err = OSError
    with pytest.raises(err):
        save_checkpoint(tmp_path / "ck", _vector_policy("ltc", seed=1), metadata={"v": 2})
    monkeypatch.undo()
    loaded, meta = load_checkpoint(tmp_path / "ck")
    assert meta == {"v": 1}
    with torch.no_grad():
        assert torch.equal(loaded(_obs())[0], expected)
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_crash_between_renames_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path / "ck", _vector_policy("mlp"), metadata={"v": 1})
    real_rename = os.rename
    calls = []

    def flaky_rename(src: str | Path, dst: str | Path) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new folder cannot be moved into place
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path / "ck", _vector_policy("mlp", seed=3), metadata={"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "ck")[1] == {"v": 1}  # the old folder was moved back
    # a process killed between the two renames leaves only the renamed-aside folder: load finds it
    os.rename(tmp_path / "ck", tmp_path / ".ck.old-1234abcd")
    with pytest.warns(UserWarning, match="interrupted save"):
        assert load_checkpoint(tmp_path / "ck")[1] == {"v": 1}
    stale_tmp = tmp_path / ".ck.tmp-old"
    stale_tmp.mkdir()
    os.utime(stale_tmp, (0, 0))
    fresh_tmp = tmp_path / ".ck.tmp-running"
    fresh_tmp.mkdir()
    save_checkpoint(tmp_path / "ck", _vector_policy("mlp"), metadata={"v": 3})
    assert sorted(os.listdir(tmp_path)) == [".ck.tmp-running", "ck"]  # leftovers removed, a running save kept
