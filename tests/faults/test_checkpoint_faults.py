"""Fault injection on the checkpoint format: truncation at random offsets, bit flips, missing files, wrong
types and schema violations each raise CheckpointError (or its not-found subclass) naming the file, and never
return a policy (issue #15 item 5 and the fault-injection suite)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltc_control.checkpoint import CheckpointError, CheckpointNotFoundError, load_checkpoint, save_checkpoint
from ltc_control.config import from_dict
from ltc_control.errors import ExpectedError
from ltc_control.policy import Policy, PolicyConfig

RNG = random.Random(15)
CASES: dict[str, int] = {}  # kind -> cases tried (reported in docs/cli.md)


def _policy(kind: str) -> Policy:
    torch.manual_seed(0)
    extra = {"cfc_wired": True, "cfc_polarity": "constrain"} if kind == "cfc" else {}
    cfg = from_dict(
        PolicyConfig,
        {
            "observation": "vector",
            "vector_size": 3,
            "controller": {"kind": kind, "wiring": {"preset": "auto_ncp", "units": 6}, **extra},
        },
    )
    return Policy(cfg)


@pytest.fixture(scope="module", params=["ltc", "cfc"])
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp(f"ck_{request.param}") / "ck"
    policy = _policy(request.param)
    opt = torch.optim.Adam(policy.parameters())
    save_checkpoint(d, policy, {"step": 1}, optimizer=opt, extra_state={"epoch": 1})
    return d


@pytest.fixture
def ck(saved: Path, tmp_path: Path) -> Path:
    d = tmp_path / "ck"
    shutil.copytree(saved, d)
    return d


def _edit_json(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((d / "model.json").read_text())
    edit(doc)
    (d / "model.json").write_text(json.dumps(doc))


def _rewrite_weights(d: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Change the weights and re-record their sha256, as a writer that is not save_checkpoint would."""
    path = d / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=meta)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _edit_json(d, lambda doc: doc["weights"].__setitem__("sha256", digest))


def _fails(d: Path, kind: str, match: str = "", cls: type[Exception] = CheckpointError) -> None:
    CASES[kind] = CASES.get(kind, 0) + 1
    with pytest.raises(cls, match=match) as info:
        load_checkpoint(d)
    assert isinstance(info.value, ExpectedError)
    assert "\n" not in str(info.value)


def test_intact_checkpoint_loads(ck: Path) -> None:
    policy, meta = load_checkpoint(ck)
    assert meta == {"step": 1} and isinstance(policy, Policy)


@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
def test_truncation_at_random_offsets(ck: Path, name: str) -> None:
    data = (ck / name).read_bytes()
    for offset in [0, 1, len(data) - 2, *RNG.sample(range(2, len(data) - 2), 6)]:
        (ck / name).write_bytes(data[:offset])
        _fails(ck, "truncation", name)
    (ck / name).write_bytes(data)


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.safetensors"])
def test_bit_flips_in_hashed_files(ck: Path, name: str) -> None:
    from ltc_control.checkpoint import load_trainer_state

    data = bytearray((ck / name).read_bytes())
    for _ in range(8):
        pos, bit = RNG.randrange(len(data)), RNG.randrange(8)
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        (ck / name).write_bytes(bytes(flipped))
        CASES["bit flip"] = CASES.get("bit flip", 0) + 1
        with pytest.raises(CheckpointError, match=rf"{name}.*sha256"):
            load_checkpoint(ck) if name == "model.safetensors" else load_trainer_state(ck)
    (ck / name).write_bytes(bytes(data))


def test_bit_flips_in_model_json_never_load_silently(ck: Path) -> None:
    data = bytearray((ck / "model.json").read_bytes())
    original, _ = load_checkpoint(ck)
    for _ in range(12):
        pos, bit = RNG.randrange(len(data)), RNG.randrange(7)  # ASCII stays ASCII
        flipped = bytearray(data)
        flipped[pos] ^= 1 << bit
        (ck / "model.json").write_bytes(bytes(flipped))
        CASES["bit flip"] = CASES.get("bit flip", 0) + 1
        try:
            policy, _ = load_checkpoint(ck)
        except CheckpointError as exc:
            assert "\n" not in str(exc)
            continue
        # a flip in a free-text field (date, version string, metadata) may load: the model is the same one
        for (k, a), b in zip(original.state_dict().items(), policy.state_dict().values()):
            assert torch.equal(a, b), k


@pytest.mark.parametrize("name", ["model.json", "model.safetensors", "trainer_state.json"])
def test_missing_files(ck: Path, name: str) -> None:
    from ltc_control.checkpoint import load_trainer_state

    (ck / name).unlink()
    CASES["missing file"] = CASES.get("missing file", 0) + 1
    with pytest.raises(CheckpointNotFoundError, match=name):
        load_checkpoint(ck) if name != "trainer_state.json" else load_trainer_state(ck)


def test_missing_folder(tmp_path: Path) -> None:
    _fails(tmp_path / "nowhere", "missing file", "not found", CheckpointNotFoundError)


@pytest.mark.parametrize(
    "key", ["format", "format_version", "weights", "policy_config", "metadata", "trainer_state", "versions"]
)
def test_missing_top_level_key(ck: Path, key: str) -> None:
    _edit_json(ck, lambda doc: doc.pop(key))
    _fails(ck, "schema", "model.json")


def test_unknown_top_level_key(ck: Path) -> None:
    _edit_json(ck, lambda doc: doc.__setitem__("weights_override", {}))
    _fails(ck, "schema", r"unknown keys \['weights_override'\]")


@pytest.mark.parametrize(
    ("key", "value"),
    [("weights", []), ("policy_config", "ltc"), ("metadata", 3), ("format_version", "1"), ("summary", None)],
)
def test_wrong_types(ck: Path, key: str, value: Any) -> None:
    _edit_json(ck, lambda doc: doc.__setitem__(key, value))
    _fails(ck, "wrong type", "model.json")


def test_wrong_types_inside_the_policy_config(ck: Path) -> None:
    for path, value in [
        (("controller", "kind"), "transformer"),
        (("action_size",), "one"),
        (("vector_size",), 4),
    ]:

        def edit(doc: dict[str, Any], path: tuple[str, ...] = path, value: Any = value) -> None:
            node = doc["policy_config"]
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = value

        original = (ck / "model.json").read_bytes()
        _edit_json(ck, edit)
        _fails(ck, "wrong type", "model.json")
        (ck / "model.json").write_bytes(original)


def _wiring(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["policy_config"]["controller"]["wiring"]["saved"]


@pytest.mark.parametrize("change", ["drop", "add", "flip"])
def test_edited_wiring_does_not_load(ck: Path, change: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        adj = _wiring(doc)["adjacency"]
        cells = [(i, j) for i in range(len(adj)) for j in range(len(adj)) if adj[i][j] != 0]
        empty = [(i, j) for i in range(len(adj)) for j in range(len(adj)) if adj[i][j] == 0]
        i, j = (empty if change == "add" else cells)[0]
        adj[i][j] = {"drop": 0, "add": 1, "flip": -adj[i][j]}[change]

    _edit_json(ck, edit)
    _fails(ck, "schema", "model.json")


def test_nan_in_weights_is_caught_at_load(ck: Path) -> None:
    def edit(t: dict[str, torch.Tensor]) -> None:
        name = next(k for k, v in t.items() if v.is_floating_point() and "mask" not in k and v.numel() > 1)
        t[name] = t[name].clone()
        t[name].view(-1)[0] = float("nan")

    _rewrite_weights(ck, edit)
    _fails(ck, "schema", "NaN or inf")


def test_nan_initial_state_is_caught_at_the_call(ck: Path) -> None:
    policy, _ = load_checkpoint(ck)
    state = policy.reset(batch=1)
    state = state.clone() if isinstance(state, torch.Tensor) else state
    state[0, 0] = float("nan")
    CASES["schema"] = CASES.get("schema", 0) + 1
    with pytest.raises(ValueError, match="NaN or inf"):
        policy(torch.zeros(1, 2, 3), state=state)


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Any:
    yield
    print(f"\ncheckpoint fault cases tried: {sum(CASES.values())} {CASES}")
