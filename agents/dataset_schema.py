"""The schema of the demonstration-dataset format (``docs/datasets.md``), checked before any use.

:func:`check_manifest` validates ``manifest.json`` completely (types, shapes, chunk file names that stay
inside the folder, episode lengths that add up, unique episode keys and chunk files) and
:func:`check_chunk_arrays` validates one loaded chunk against it (array names, dtypes, shapes, lengths and
finite labels). Every failure is a :class:`DatasetError` naming the file, the entry and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.errors import ExpectedError

__all__ = ["DatasetError", "check_chunk_arrays", "check_manifest"]

_TOP_LEVEL = {"format", "version", "image_shape", "action_size", "info_keys", "metadata", "chunks"}
_CHUNK_KEYS = {"file", "num_steps", "sha256", "episodes"}
_EPISODE_KEYS = {"key", "road_seed", "source", "length", "completed"}
_CHUNK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.npz$")
INFO_PREFIX = "info__"


class DatasetError(ExpectedError, RuntimeError):
    """A dataset folder or file is missing, corrupt, truncated or inconsistent (the message names it)."""


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_manifest(manifest: Any, path: Path) -> None:
    """Validate a parsed ``manifest.json`` (format and version are checked by the caller).

    Raises:
        DatasetError: naming ``path`` and the first entry that breaks the schema.
    """
    fix = "the manifest was edited or damaged; restore it or collect the dataset again"

    def bad(what: str) -> DatasetError:
        return DatasetError(f"{path}: {what}; {fix}")

    missing = sorted(_TOP_LEVEL - set(manifest))
    unknown = sorted(set(manifest) - _TOP_LEVEL)
    if missing or unknown:
        raise bad(f"missing entries {missing}" if missing else f"unknown entries {unknown}")
    chunks = manifest["chunks"]
    if not isinstance(chunks, list):
        raise bad(f"'chunks' must be a list, got {type(chunks).__name__}")
    if not isinstance(manifest["metadata"], dict):
        raise bad("'metadata' must be a mapping")
    shape, action_size, info_keys = manifest["image_shape"], manifest["action_size"], manifest["info_keys"]
    if chunks or shape is not None:
        if not (isinstance(shape, list) and len(shape) == 3 and all(_int(v) and v > 0 for v in shape)):
            raise bad(f"'image_shape' must be [height, width, channels] of positive ints, got {shape!r}")
        if shape[2] != 3:
            raise bad(f"'image_shape' must have 3 (RGB) channels, got {shape!r}")
        if not (_int(action_size) and action_size >= 1):
            raise bad(f"'action_size' must be an int >= 1, got {action_size!r}")
        if not isinstance(info_keys, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(_int(d) and d > 0 for d in v)
            for k, v in info_keys.items()
        ):
            raise bad(f"'info_keys' must map names to lists of positive ints, got {info_keys!r}")
    files: set[str] = set()
    keys: set[str] = set()
    for i, chunk in enumerate(chunks):
        where = f"chunks[{i}]"
        if not isinstance(chunk, dict) or set(chunk) != _CHUNK_KEYS:
            raise bad(f"{where} must be a mapping with exactly {sorted(_CHUNK_KEYS)}")
        name = chunk["file"]
        if not (isinstance(name, str) and _CHUNK_NAME.match(name) and Path(name).name == name):
            raise bad(f"{where}.file {name!r} is not a chunk file name in the dataset folder (no paths)")
        if name in files:
            raise bad(f"{where}.file {name!r} is listed twice")
        files.add(name)
        if not (_int(chunk["num_steps"]) and chunk["num_steps"] >= 1):
            raise bad(f"{where}.num_steps must be an int >= 1, got {chunk['num_steps']!r}")
        digest = chunk["sha256"]
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise bad(f"{where}.sha256 must be 64 hex digits or null")
        episodes = chunk["episodes"]
        if not isinstance(episodes, list) or not episodes:
            raise bad(f"{where}.episodes must be a non-empty list")
        total = 0
        for j, ep in enumerate(episodes):
            ew = f"{where}.episodes[{j}]"
            if not isinstance(ep, dict) or set(ep) != _EPISODE_KEYS:
                raise bad(f"{ew} must be a mapping with exactly {sorted(_EPISODE_KEYS)}")
            if not (isinstance(ep["key"], str) and ep["key"] and isinstance(ep["source"], str)):
                raise bad(f"{ew}: 'key' and 'source' must be strings")
            if not (_int(ep["road_seed"]) and _int(ep["length"]) and ep["length"] >= 1):
                raise bad(f"{ew}: 'road_seed' must be an int and 'length' an int >= 1")
            if not isinstance(ep["completed"], bool):
                raise bad(f"{ew}: 'completed' must be true or false")
            if ep["key"] in keys:
                raise bad(f"{ew}: episode key {ep['key']!r} appears twice (keys must be unique)")
            keys.add(ep["key"])
            total += ep["length"]
        if total != chunk["num_steps"]:
            raise bad(f"{where}: episode lengths add up to {total}, not num_steps={chunk['num_steps']}")


def check_chunk_arrays(
    arrays: Mapping[str, np.ndarray], chunk: Mapping[str, Any], manifest: Mapping[str, Any], path: Path
) -> None:
    """Validate a loaded chunk against its manifest entry: names, dtypes, shapes, lengths, finite labels.

    Raises:
        DatasetError: naming the chunk file and the array.
    """
    fix = "delete it and its manifest entry (or the folder) and collect again with --resume"
    info_keys = manifest["info_keys"] or {}
    needed = ["images", "labels", "actions", "episode_lengths"] + [INFO_PREFIX + k for k in info_keys]
    missing = [n for n in needed if n not in arrays]
    if missing:
        raise DatasetError(f"{path}: chunk lacks arrays {missing}; {fix}")
    n, a = int(chunk["num_steps"]), int(manifest["action_size"])
    expected: dict[str, tuple[tuple[int, ...], str]] = {
        "images": ((n, *manifest["image_shape"]), "uint8"),
        "labels": ((n, a), "float32"),
        "actions": ((n, a), "float32"),
        "episode_lengths": ((len(chunk["episodes"]),), "int64"),
    }
    for k, dims in info_keys.items():
        expected[INFO_PREFIX + k] = ((n, *dims), "float32")
    for name, (shape, dtype) in expected.items():
        arr = arrays[name]
        if tuple(arr.shape) != shape or arr.dtype != np.dtype(dtype):
            raise DatasetError(
                f"{path}: array {name!r} is {arr.dtype}{tuple(arr.shape)}, the manifest says {dtype}{shape} "
                f"(wrong image size or truncated?); {fix}"
            )
    if arrays["episode_lengths"].tolist() != [int(e["length"]) for e in chunk["episodes"]]:
        raise DatasetError(f"{path}: episode lengths disagree with the manifest (truncated?); {fix}")
    for name in ("labels", "actions"):
        if not bool(np.isfinite(arrays[name]).all()):
            raise DatasetError(f"{path}: array {name!r} holds NaN or inf; the chunk is damaged; {fix}")
