"""Fault injection on the dataset format: truncation, bit flips, missing files, wrong types and schema
violations each raise DatasetError naming the file and never give a partial dataset (issue #15 item 6 and the
fault-injection suite)."""

from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ltc_control.agents.dataset_cli import dataset_main
from ltc_control.agents.datasets import DatasetError, DemoDataset, summarize_dataset
from ltc_control.errors import ExpectedError
from tests.faults.helpers import write_stripe_dataset

RNG = random.Random(6)
CASES: dict[str, int] = {}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stripe_dataset(tmp_path_factory.mktemp("ds") / "data", roads=3, per_chunk=2)


@pytest.fixture
def ds(saved: Path, tmp_path: Path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(saved, d)
    return d


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Any:
    yield
    print(f"\ndataset fault cases tried: {sum(CASES.values())} {CASES}")


def _fails(d: Path, kind: str, match: str = "", verify: bool = True) -> None:
    """Both the loader and the summary refuse the damaged dataset with a one-line DatasetError."""
    CASES[kind] = CASES.get(kind, 0) + 1
    with pytest.raises(DatasetError, match=match) as info:
        DemoDataset(d, verify=verify)
    assert isinstance(info.value, ExpectedError) and "\n" not in str(info.value)


def _edit_manifest(d: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads((d / "manifest.json").read_text())
    edit(doc)
    (d / "manifest.json").write_text(json.dumps(doc))


def _rewrite_chunk(d: Path, edit: Callable[[dict[str, np.ndarray]], None], rehash: bool = True) -> None:
    """Change chunk 0's arrays (and, like a foreign writer would, its recorded sha256)."""
    path = d / "chunk_000000.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    edit(arrays)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())
    if rehash:
        import hashlib

        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        _edit_manifest(d, lambda m: m["chunks"][0].__setitem__("sha256", digest))


def test_intact_dataset_loads(ds: Path) -> None:
    assert DemoDataset(ds).num_episodes == 3


@pytest.mark.parametrize("name", ["manifest.json", "chunk_000000.npz"])
def test_truncation_at_random_offsets(ds: Path, name: str) -> None:
    data = (ds / name).read_bytes()
    for offset in [0, 1, len(data) - 2, *RNG.sample(range(2, len(data) - 2), 6)]:
        (ds / name).write_bytes(data[:offset])
        _fails(ds, "truncation", name)
    (ds / name).write_bytes(data)


def test_truncated_chunk_without_checksum_is_still_caught(ds: Path) -> None:
    data = (ds / "chunk_000000.npz").read_bytes()
    for offset in RNG.sample(range(1, len(data) - 1), 6):
        (ds / "chunk_000000.npz").write_bytes(data[:offset])
        _fails(ds, "truncation", "chunk_000000.npz", verify=False)


def test_bit_flips_in_chunks(ds: Path) -> None:
    data = bytearray((ds / "chunk_000001.npz").read_bytes())
    for _ in range(8):
        flipped = bytearray(data)
        flipped[RNG.randrange(len(data))] ^= 1 << RNG.randrange(8)
        (ds / "chunk_000001.npz").write_bytes(bytes(flipped))
        _fails(ds, "bit flip", r"chunk_000001.npz.*checksum")


def test_bit_flips_in_the_manifest_never_load_silently(ds: Path) -> None:
    data = bytearray((ds / "manifest.json").read_bytes())
    reference = DemoDataset(ds)
    for _ in range(12):
        flipped = bytearray(data)
        flipped[RNG.randrange(len(data))] ^= 1 << RNG.randrange(7)
        (ds / "manifest.json").write_bytes(bytes(flipped))
        CASES["bit flip"] = CASES.get("bit flip", 0) + 1
        try:
            loaded = DemoDataset(ds)
        except DatasetError as exc:
            assert "\n" not in str(exc)
            continue
        # a flip inside free text (metadata, a source name, a key that stays unique) may load: same data
        assert np.array_equal(loaded.images, reference.images) and np.array_equal(
            loaded.labels, reference.labels
        )


def test_missing_files(ds: Path) -> None:
    (ds / "chunk_000001.npz").unlink()
    _fails(ds, "missing file", r"chunk_000001.npz.*missing")
    CASES["missing file"] += 1
    with pytest.raises(DatasetError, match=r"chunk_000001.npz.*missing"):
        summarize_dataset(ds)  # without --verify too
    (ds / "manifest.json").unlink()
    _fails(ds, "missing file", "no dataset manifest")


def test_summary_cli_reports_a_deleted_chunk(ds: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ds / "chunk_000001.npz").unlink()
    assert dataset_main(["summary", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "chunk_000001.npz" in err and "missing" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.__setitem__("chunks", "chunk_000000.npz"), "'chunks' must be a list"),
        (lambda m: m.__setitem__("image_shape", [16, 32]), "image_shape"),
        (lambda m: m.__setitem__("image_shape", [16, 32, "3"]), "image_shape"),
        (lambda m: m.__setitem__("action_size", 1.5), "action_size"),
        (lambda m: m.__setitem__("info_keys", ["lateral_offset"]), "info_keys"),
        (lambda m: m.__setitem__("metadata", None), "metadata"),
        (lambda m: m["chunks"][0].__setitem__("num_steps", "96"), "num_steps"),
        (lambda m: m["chunks"][0]["episodes"][0].__setitem__("length", -1), "length"),
        (lambda m: m["chunks"][0]["episodes"][0].__setitem__("completed", "yes"), "completed"),
        (lambda m: m["chunks"][0]["episodes"][0].__setitem__("road_seed", None), "road_seed"),
        (lambda m: m["chunks"][0].__setitem__("sha256", 5), "sha256"),
        (lambda m: m["chunks"][0].__setitem__("episodes", {}), "episodes"),
        (lambda m: m.__setitem__("version", 2), "version"),
    ],
)
def test_wrong_types(ds: Path, edit: Callable[[dict[str, Any]], None], match: str) -> None:
    _edit_manifest(ds, edit)
    _fails(ds, "wrong type", match)


def _duplicate_key(m: dict[str, Any]) -> None:
    m["chunks"][1]["episodes"][0]["key"] = m["chunks"][0]["episodes"][0]["key"]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("chunks"), "missing entries"),
        (lambda m: m.__setitem__("extra", 1), "unknown entries"),
        (lambda m: m["chunks"][0].__setitem__("file", "../elsewhere/chunk_000000.npz"), "no paths"),
        (lambda m: m["chunks"][0].__setitem__("file", "/etc/passwd"), "no paths"),
        (lambda m: m["chunks"][1].__setitem__("file", "chunk_000000.npz"), "listed twice"),
        (_duplicate_key, "appears twice"),
        (lambda m: m["chunks"][0].__setitem__("num_steps", 95), "add up"),
        (lambda m: m["chunks"][0]["episodes"][0].pop("source"), "exactly"),
        (lambda m: m.__setitem__("image_shape", [32, 16, 3]), "images"),
        (lambda m: m.__setitem__("action_size", 2), "labels"),
    ],
)
def test_schema_violations(ds: Path, edit: Callable[[dict[str, Any]], None], match: str) -> None:
    _edit_manifest(ds, edit)
    _fails(ds, "schema", match)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda a: a.__setitem__("images", a["images"][:, :8]), r"'images'.*wrong image size"),
        (lambda a: a.__setitem__("images", a["images"].astype(np.float32)), "'images'"),
        (lambda a: a.__setitem__("labels", np.full_like(a["labels"], np.nan)), "NaN"),
        (lambda a: a.pop("actions"), "lacks arrays"),
        (
            lambda a: a.__setitem__("episode_lengths", a["episode_lengths"][::-1].copy() + 1),
            "episode lengths",
        ),
    ],
)
def test_chunk_array_violations(ds: Path, edit: Callable[[dict[str, np.ndarray]], None], match: str) -> None:
    _rewrite_chunk(ds, edit)
    _fails(ds, "schema", match)


def test_a_chunk_that_is_not_a_zip(ds: Path) -> None:
    (ds / "chunk_000000.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    _fails(ds, "wrong type", "chunk_000000.npz", verify=False)
    with zipfile.ZipFile(ds / "chunk_000000.npz", "w") as zf:
        zf.writestr("images.npy", b"\x93NUMPY garbage")
    _fails(ds, "wrong type", "chunk_000000.npz", verify=False)
