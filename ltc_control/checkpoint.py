"""Checkpoints: safetensors weights + a JSON document, written atomically, loaded without pickle.

A checkpoint is a folder::

    <dir>/model.safetensors        policy weights (Policy.state_dict(), incl. wiring masks)
    <dir>/model.json               format + version, the full PolicyConfig (wiring stored inline as a
                                   Wiring.to_dict() under controller.wiring.saved), sha256 of the weights,
                                   library / torch versions, creation time, user metadata
    <dir>/trainer_state.safetensors + trainer_state.json   (optional) optimizer state and extra resume state

``model.json`` looks like::

    {"format": "ltc-control-policy", "format_version": 1, "created": "2026-...Z",
     "versions": {"ltc_control": "0.1.0", "torch": "2.13.0", ...},
     "weights": {"file": "model.safetensors", "sha256": "...", "num_tensors": 25},
     "trainer_state": {"file": "trainer_state.safetensors", "sha256": "..."} | null,
     "summary": {...counts...}, "policy_config": {...}, "metadata": {...}}

Atomicity: everything is written into a temporary sibling folder (each file fsync-ed); then the old folder (if
any) is renamed aside, the new one renamed into place and the old one deleted. A crash while writing leaves
the previous checkpoint untouched; a crash in the microseconds between the two renames leaves it as
``.<name>.old-<id>``, which :func:`load_checkpoint` finds and loads (with a warning) when ``<dir>`` is
missing. The next successful save deletes such leftovers (and temporary folders older than an hour).

Loading verifies the weights' sha256 against ``model.json``, validates the config strictly (unknown keys are
errors), and compares every tensor's name and shape with the rebuilt policy before loading. Every failure
raises :class:`CheckpointError` (or ``FileNotFoundError``) naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ltc_control._version import __version__
from ltc_control.config import ConfigError, from_dict, to_dict
from ltc_control.errors import ExpectedError
from ltc_control.policy import Policy, PolicyConfig
from ltc_control.runs import fsync_dir

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointNotFoundError",
    "checkpoint_info",
    "load_checkpoint",
    "load_trainer_state",
    "save_checkpoint",
]

FORMAT = "ltc-control-policy"
FORMAT_VERSION = 1
MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
TRAINER_WEIGHTS = "trainer_state.safetensors"
TRAINER_JSON = "trainer_state.json"


class CheckpointError(ExpectedError, ValueError):
    """A checkpoint file is missing a part, corrupt, truncated or does not match its config (file named)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint folder or one of its files is missing (both a CheckpointError and a FileNotFoundError)."""


# ----------------------------------------------------------------------------------------------- helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON values; non-finite floats become the strings "nan"/"inf"/"-inf" (strict JSON has none)."""
    value = to_dict(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(
        f"{where} holds a {type(value).__name__}, which cannot be stored in JSON; pass numbers, strings, "
        "lists, dicts or dataclasses (tensors belong in extra_state)"
    )


def _write_json(path: Path, doc: Any) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def _versions() -> dict[str, str]:
    return {"ltc_control": __version__, "torch": torch.__version__, "numpy": np.__version__}


def _wiring_digest(policy: torch.nn.Module) -> str:
    """sha256 over every wiring in the policy (signed adjacency and sensory adjacency, in module order).

    Stored in the weights file (whose own sha256 ``model.json`` records), so a wiring edited in
    ``model.json`` -- a synapse dropped, added or its polarity flipped -- no longer matches the weights.
    """
    h = hashlib.sha256()
    for name, module in policy.named_modules():
        wiring = getattr(module, "wiring", None)
        adjacency = getattr(wiring, "adjacency", None)
        if adjacency is None:
            continue
        h.update(name.encode())
        for matrix in (adjacency, getattr(wiring, "sensory_adjacency", None)):
            if matrix is not None:
                arr = np.ascontiguousarray(np.asarray(matrix, dtype=np.int8))
                h.update(repr(arr.shape).encode())
                h.update(arr.tobytes())
    return h.hexdigest()


# Nested state (optimizer.state_dict(), extra_state) -> JSON skeleton + flat tensor dict.
def _encode_tree(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"__ndarray__": key}
    if isinstance(value, Mapping):
        items = list(value.items())
        if all(isinstance(k, str) and not k.startswith("__") for k, _ in items):
            return {k: _encode_tree(v, tensors, f"{where}.{k}") for k, v in items}
        return {
            "__items__": [[_encode_key(k, where), _encode_tree(v, tensors, f"{where}.{k}")] for k, v in items]
        }
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_tree(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode_tree(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": str(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise CheckpointError(
        f"trainer state {where} holds a {type(value).__name__}; only tensors, arrays, numbers, strings, "
        "lists, tuples and dicts can be saved"
    )


def _encode_key(key: Any, where: str) -> Any:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise CheckpointError(
            f"trainer state {where} has a {type(key).__name__} dict key; use str or int keys"
        )
    return key


def _decode_tree(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode_tree(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_decode_tree(v, tensors) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__items__" in value:
            return {k: _decode_tree(v, tensors) for k, v in value["__items__"]}
        return {k: _decode_tree(v, tensors) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------- save
def _swap_into_place(tmp: Path, dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise CheckpointError(f"{str(dest)!r} exists and is not a folder; choose another checkpoint path")
    if not dest.exists():
        os.rename(tmp, dest)
    else:
        backup = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, backup)
        try:
            os.rename(tmp, dest)
        except BaseException:
            os.rename(backup, dest)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    fsync_dir(dest.parent)


def save_checkpoint(
    directory: str | Path,
    policy: Policy,
    metadata: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically (see the module docstring for the layout).

    Args:
        directory: the checkpoint folder (replaced as a whole if it exists).
        policy: the policy to save.
        metadata: JSON-ready information (training config as a dataclass or dict, metrics, step, ...);
            returned by :func:`load_checkpoint`. Non-finite floats are stored as strings.
        optimizer: optimizer whose ``state_dict()`` goes to ``trainer_state.*`` for resuming.
        extra_state: more resume state (epoch, step, RNG states as tensors / arrays, scheduler state dicts);
            nested dicts, lists, tuples, tensors, arrays, numbers and strings.

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: metadata or state that cannot be stored (the message names the key).
    """
    if not isinstance(policy, Policy):
        raise CheckpointError(
            f"save_checkpoint needs an ltc_control.policy.Policy, got {type(policy).__name__}"
        )
    dest = Path(directory)
    dest.parent.mkdir(parents=True, exist_ok=True)
    meta = _jsonable(dict(metadata or {}), "metadata")
    config = _jsonable(policy.resolved_config(), "policy_config")
    trainer_tree: dict[str, Any] | None = None
    trainer_tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None or extra_state is not None:
        trainer_tree = {
            "optimizer": None
            if optimizer is None
            else _encode_tree(optimizer.state_dict(), trainer_tensors, "optimizer"),
            "extra": None
            if extra_state is None
            else _encode_tree(dict(extra_state), trainer_tensors, "extra"),
        }
    weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in policy.state_dict().items()}

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        # one metadata key: safetensors writes several in a random order, and a checkpoint's bytes must
        # depend on its contents only (a resumed run's files equal an uninterrupted run's)
        header = json.dumps({"format": FORMAT, "wiring_sha256": _wiring_digest(policy)}, sort_keys=True)
        save_file(weights, str(tmp / MODEL_WEIGHTS), metadata={"ltc_control": header})
        _fsync_file(tmp / MODEL_WEIGHTS)
        trainer_ref = None
        if trainer_tree is not None:
            save_file(trainer_tensors, str(tmp / TRAINER_WEIGHTS), metadata={"format": FORMAT})
            _fsync_file(tmp / TRAINER_WEIGHTS)
            _write_json(
                tmp / TRAINER_JSON, {"format": FORMAT, "format_version": FORMAT_VERSION, **trainer_tree}
            )
            trainer_ref = {
                "file": TRAINER_WEIGHTS,
                "sha256": _sha256(tmp / TRAINER_WEIGHTS),
                "json": TRAINER_JSON,
                "json_sha256": _sha256(tmp / TRAINER_JSON),
            }
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "versions": _versions(),
            "weights": {
                "file": MODEL_WEIGHTS,
                "sha256": _sha256(tmp / MODEL_WEIGHTS),
                "num_tensors": len(weights),
            },
            "trainer_state": trainer_ref,
            "summary": _jsonable(policy.summary(), "summary"),
            "policy_config": config,
            "metadata": meta,
        }
        _write_json(tmp / MODEL_JSON, doc)  # written last: a folder without it is never a checkpoint
        fsync_dir(tmp)
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(dest)
    return dest


def _remove_leftovers(dest: Path) -> None:
    """Delete folders left by saves that were killed (``.old-*`` always, ``.tmp-*`` after an hour)."""
    now = time.time()
    for p in dest.parent.glob(f".{dest.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in dest.parent.glob(f".{dest.name}.tmp-*"):
        try:
            stale = now - p.stat().st_mtime > 3600  # younger ones may belong to a save still running
        except OSError:
            continue
        if stale:
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- load
def _resolve_dir(directory: str | Path) -> Path:
    d = Path(directory)
    if d.is_dir():
        return d
    if d.exists():
        raise CheckpointError(
            f"{str(d)!r} is a file; a checkpoint is a folder with {MODEL_JSON} and {MODEL_WEIGHTS}"
        )
    backups = sorted(
        (p for p in d.parent.glob(f".{d.name}.old-*") if (p / MODEL_JSON).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    if backups:
        warnings.warn(
            f"checkpoint {str(d)!r} is missing but {str(backups[-1])!r} (left by an interrupted save) "
            "exists; loading that one",
            stacklevel=3,
        )
        return backups[-1]
    raise CheckpointNotFoundError(
        f"checkpoint folder {str(d)!r} not found (expected a folder written by save_checkpoint with "
        f"{MODEL_JSON} and {MODEL_WEIGHTS})"
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint file {str(path)!r} is missing; the checkpoint is incomplete"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is corrupt or truncated (not valid JSON: {exc})"
        ) from exc


def _load_tensors(path: Path, sha256: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"checkpoint file {str(path)!r} is missing; the checkpoint is incomplete"
        )
    if sha256 is not None and _sha256(path) != sha256:
        raise CheckpointError(
            f"checkpoint file {str(path)!r} is corrupt, truncated or was modified: its sha256 does not "
            f"match the one recorded in {MODEL_JSON}; restore it from a good copy"
        )
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for bad headers / short buffers
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupt or truncated ({exc})") from exc


#: The keys of ``model.json`` (format version 1); missing or unknown ones make the file invalid.
_TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "created": str,
    "versions": dict,
    "weights": dict,
    "trainer_state": (dict, type(None)),
    "summary": dict,
    "policy_config": dict,
    "metadata": dict,
}


def _check_document(doc: dict[str, Any], path: Path) -> None:
    """Every top-level key present with its type, no unknown ones, a weights entry with a sha256."""
    missing = sorted(set(_TOP_LEVEL) - set(doc))
    unknown = sorted(set(doc) - set(_TOP_LEVEL))
    if missing or unknown:
        parts = ([f"missing keys {missing}"] if missing else []) + (
            [f"unknown keys {unknown}"] if unknown else []
        )
        raise CheckpointError(
            f"{str(path)!r} is not a valid checkpoint document ({'; '.join(parts)}); it was edited or "
            "damaged: restore it from a good copy or save the checkpoint again"
        )
    for key, kind in _TOP_LEVEL.items():
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise CheckpointError(
                f"{str(path)!r}: key {key!r} holds a {type(doc[key]).__name__}; the file is damaged"
            )
    weights = doc["weights"]
    if not isinstance(weights.get("sha256"), str) or weights.get("file") != MODEL_WEIGHTS:
        raise CheckpointError(
            f"{str(path)!r}: 'weights' must name {MODEL_WEIGHTS!r} and its sha256; the file is damaged"
        )
    ref = doc["trainer_state"]
    if ref is not None and not all(isinstance(ref.get(k), str) for k in ("sha256", "json_sha256")):
        raise CheckpointError(f"{str(path)!r}: 'trainer_state' lacks its sha256 entries; the file is damaged")


def checkpoint_info(directory: str | Path) -> dict[str, Any]:
    """The parsed ``model.json`` of a checkpoint (format, versions, config, summary, metadata).

    Raises:
        FileNotFoundError: no such checkpoint / no ``model.json``.
        CheckpointError: ``model.json`` is not valid JSON or not an ltc-control checkpoint.
    """
    path = _resolve_dir(directory) / MODEL_JSON
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an ltc-control policy checkpoint (format != {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format_version {version!r}; this ltc-control reads <= {FORMAT_VERSION}: "
            "upgrade ltc-control"
        )
    _check_document(doc, path)
    return doc


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[Policy, dict[str, Any]]:
    """Rebuild a policy from a checkpoint folder (no pickle).

    Args:
        directory: folder written by :func:`save_checkpoint`.
        device: device to put the policy on.

    Returns:
        ``(policy, metadata)``: the policy in eval mode and the ``metadata`` mapping given to
        :func:`save_checkpoint` (use :func:`checkpoint_info` for versions and the config).

    Raises:
        FileNotFoundError: missing folder or file (named).
        CheckpointError: corrupt/truncated JSON or safetensors (named), a config with unknown keys or wrong
            types, weights whose names or shapes do not match the config.
    """
    d = _resolve_dir(directory)
    doc = checkpoint_info(d)
    json_path = d / MODEL_JSON
    try:
        config = from_dict(PolicyConfig, doc["policy_config"], "policy_config")
    except ConfigError as exc:
        raise CheckpointError(f"{str(json_path)!r}: invalid policy config: {exc}") from exc
    weights = _load_tensors(d / MODEL_WEIGHTS, doc["weights"]["sha256"])
    try:
        policy = Policy(config)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{str(json_path)!r}: cannot build the policy from its config: {exc}") from exc
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(weights[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch: " + "; ".join(mismatched[:8]))
        if missing:
            parts.append(f"missing tensors: {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected tensors: {unexpected[:8]}")
        raise CheckpointError(
            f"{str(d / MODEL_WEIGHTS)!r} does not match the policy described by {str(json_path)!r}: "
            + ", ".join(parts)
            + "; the weights and model.json come from different models"
        )
    _check_consistent(policy, weights, d, json_path)
    policy.load_state_dict(weights, strict=True)
    policy.to(device)
    policy.eval()
    meta = doc.get("metadata") or {}
    return policy, dict(meta)


def _check_consistent(policy: Policy, weights: Mapping[str, torch.Tensor], d: Path, json_path: Path) -> None:
    """The weights agree with the wiring in ``model.json`` and hold only finite numbers.

    Every persistent buffer of the rebuilt policy (wiring masks and polarity signs, fixed action scaling)
    comes from ``model.json`` alone and must equal the saved one; the wiring digest stored in the weights file
    (polarity included) must match the rebuilt wiring.
    """
    weights_path = d / MODEL_WEIGHTS
    params = {name for name, _ in policy.named_parameters()}
    differ = [
        name
        for name, buf in policy.state_dict().items()
        if name not in params and not torch.equal(buf.detach().cpu(), weights[name].to(buf.dtype))
    ]
    if differ:
        raise CheckpointError(
            f"{str(json_path)!r} describes a different circuit than {str(weights_path)!r} computes: the "
            f"buffers {differ[:6]} (wiring masks / signs) disagree; model.json was edited or comes from "
            "another model: restore it from a good copy"
        )
    try:
        from safetensors import safe_open

        with safe_open(str(weights_path), framework="pt") as fh:
            header = (fh.metadata() or {}).get("ltc_control")
        stored = json.loads(header).get("wiring_sha256") if header else None  # absent in older checkpoints
    except Exception as exc:  # noqa: BLE001 - already read once above; report it the same way
        raise CheckpointError(
            f"checkpoint file {str(weights_path)!r} is corrupt or truncated ({exc})"
        ) from exc
    if stored is not None and stored != _wiring_digest(policy):
        raise CheckpointError(
            f"the wiring in {str(json_path)!r} (synapses or polarities) differs from the one "
            f"{str(weights_path)!r} was trained with; model.json was edited: restore it from a good copy"
        )
    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(
            f"checkpoint file {str(weights_path)!r} holds NaN or inf in {bad[:6]}; the model diverged or the "
            "file was damaged: use an earlier checkpoint"
        )


def load_trainer_state(directory: str | Path) -> dict[str, Any] | None:
    """Resume state saved with ``optimizer=`` / ``extra_state=``.

    Args:
        directory: the checkpoint folder.

    Returns:
        ``{"optimizer": state_dict | None, "extra": dict | None}`` (pass ``["optimizer"]`` to
        ``optimizer.load_state_dict``), or None when the checkpoint has no trainer state.

    Raises:
        FileNotFoundError / CheckpointError: missing, corrupt or truncated trainer-state files (named).
    """
    d = _resolve_dir(directory)
    doc = checkpoint_info(d)
    ref = doc.get("trainer_state")
    if not ref:
        return None
    json_path = d / TRAINER_JSON
    if json_path.is_file() and ref.get("json_sha256") and _sha256(json_path) != ref["json_sha256"]:
        raise CheckpointError(
            f"checkpoint file {str(json_path)!r} is corrupt or was modified (sha256 mismatch)"
        )
    tree = _read_json(json_path)
    tensors = _load_tensors(d / TRAINER_WEIGHTS, ref.get("sha256"))
    try:
        return {
            "optimizer": _decode_tree(tree["optimizer"], tensors),
            "extra": _decode_tree(tree["extra"], tensors),
        }
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint file {str(json_path)!r} is malformed ({exc!r})") from exc
