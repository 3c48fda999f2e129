"""Demonstration datasets: a chunked, compressed, atomic on-disk format, its writer, a window loader.

Format (version 1, documented in ``docs/datasets.md``)::

    DIR/
      manifest.json          format name + version, image shape, action size, info keys, metadata, chunk list
      chunk_000000.npz       compressed numpy archive holding a few whole episodes
      chunk_000001.npz
      ...

Every chunk is written to a temporary file and moved into place with ``os.replace``; the manifest is
rewritten the same way after each chunk, so an interrupted collection leaves every listed chunk complete and
readable, and a resumed collection (``resume=True``) skips the episodes the manifest already lists. A chunk
holds these arrays
(N = steps in the chunk, E = episodes in it, A = action size):

- ``images``: uint8 ``(N, H, W, 3)``, the camera frame the agent saw at each step;
- ``labels``: float32 ``(N, A)``, the expert's clean action at that state (the training target);
- ``actions``: float32 ``(N, A)``, the action actually executed (expert + noise, or the learner's in DAgger);
- ``episode_lengths``: int64 ``(E,)``; episodes are stored back to back in order;
- ``info__<key>``: float32 ``(N,)`` or ``(N, K)``, privileged state from the env's ``info`` at that step.

The loader (``DemoDataset``) yields ``(B, T)`` windows that never cross an episode boundary, shuffled with a
seeded generator; ``split_road_seeds`` splits by road seed so that validation roads are never trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.agents.dataset_schema import DatasetError, check_chunk_arrays, check_manifest
from ltc_control.runs import atomic_write_bytes

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "DatasetError",
    "Episode",
    "DatasetWriter",
    "DemoDataset",
    "WindowBatch",
    "read_manifest",
    "split_road_seeds",
    "summarize_dataset",
    "format_summary",
]

FORMAT_NAME = "ltc-control-demos"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_INFO_PREFIX = "info__"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Episode:
    """One recorded episode.

    Attributes:
        images: uint8 ``(T, H, W, 3)`` camera frames.
        labels: float32 ``(T, A)`` expert (clean) actions at each visited state.
        actions: float32 ``(T, A)`` executed actions.
        info: privileged per-step values, each float32 ``(T,)`` or ``(T, K)``.
        road_seed: the seed of the road that was driven.
        key: unique name of the episode inside a dataset (collection resumes by key).
        source: ``"expert"`` for noisy-expert demos, ``"dagger_<round>"`` for learner rollouts.
        completed: True if the episode reached the end of the road without a lane departure.
    """

    images: np.ndarray
    labels: np.ndarray
    actions: np.ndarray
    info: dict[str, np.ndarray] = field(default_factory=dict)
    road_seed: int = 0
    key: str = ""
    source: str = "expert"
    completed: bool = False

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"Episode.images must be uint8 (T, H, W, 3), got {self.images.dtype} {self.images.shape}; "
                "store the env's camera frames unchanged"
            )
        t = self.images.shape[0]
        if t == 0:
            raise ValueError("Episode has no steps; drop empty episodes before writing")
        for name in ("labels", "actions"):
            arr = getattr(self, name)
            if arr.ndim == 1:
                arr = arr[:, None]
                setattr(self, name, arr)
            if arr.ndim != 2 or arr.shape[0] != t:
                raise ValueError(f"Episode.{name} must be (T={t}, A), got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Episode.{name} contains NaN or inf; check the expert / env outputs")
        if self.labels.shape != self.actions.shape:
            raise ValueError(
                f"Episode.labels {self.labels.shape} and actions {self.actions.shape} must match"
            )
        clean: dict[str, np.ndarray] = {}
        for name, value in self.info.items():
            arr = np.asarray(value, dtype=np.float32)
            if arr.shape[:1] != (t,) or arr.ndim > 2:
                raise ValueError(f"Episode.info[{name!r}] must be (T={t},) or (T, K), got {arr.shape}")
            clean[name] = arr
        self.info = clean
        if not self.key:
            self.key = f"{self.source}/road{self.road_seed}"

    @property
    def length(self) -> int:
        """Number of steps T."""
        return int(self.images.shape[0])


def read_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``DIR/manifest.json``.

    Raises:
        DatasetError: the folder or manifest is missing, not JSON, or not this format/version.
    """
    root = Path(root)
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(
            f"{path}: no dataset manifest here; collect one with 'ltc-control dataset collect --out {root}'"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: corrupt manifest ({exc}); delete the folder and collect again") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DatasetError(f"{path}: not an {FORMAT_NAME} manifest (format={found!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format version {manifest.get('version')!r}, this code reads version {FORMAT_VERSION}"
        )
    check_manifest(manifest, path)
    return manifest


class DatasetWriter:
    """Appends episodes to a dataset folder, one compressed chunk per ``episodes_per_chunk`` episodes.

    Creating a writer on a folder that already holds a dataset appends to it (image shape, action
    size and info keys must match). ``close()`` (or leaving the ``with`` block) flushes the last
    partial chunk; an exception inside the block still flushes the episodes finished so far.

    Args:
        root: dataset folder (created if missing).
        episodes_per_chunk: episodes per ``.npz`` chunk.
        metadata: JSON-serialisable description of how the data was made (stored in the manifest; on
            append, the new metadata is recorded under ``metadata["appends"]``).
        verify: compute the SHA-256 of each chunk (the loader checks it).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        episodes_per_chunk: int = 4,
        metadata: Mapping[str, Any] | None = None,
        verify: bool = True,
    ) -> None:
        if episodes_per_chunk < 1:
            raise ValueError(f"episodes_per_chunk must be >= 1, got {episodes_per_chunk}")
        self.root = Path(root)
        self.episodes_per_chunk = episodes_per_chunk
        self.verify = verify
        self._buffer: list[Episode] = []
        if (self.root / MANIFEST_NAME).exists():
            self.manifest = read_manifest(self.root)
            meta = json.loads(json.dumps(dict(metadata or {})))
            first = {k: v for k, v in self.manifest["metadata"].items() if k != "appends"}
            appends = self.manifest["metadata"].get("appends", [])
            if meta and meta != first and meta not in appends:  # a resumed writer adds nothing new
                self.manifest["metadata"].setdefault("appends", []).append(meta)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "image_shape": None,
                "action_size": None,
                "info_keys": None,
                "metadata": json.loads(json.dumps(dict(metadata or {}))),
                "chunks": [],
            }

    @property
    def keys(self) -> set[str]:
        """Keys of the episodes already written (resume skips these)."""
        done = {ep["key"] for chunk in self.manifest["chunks"] for ep in chunk["episodes"]}
        return done | {ep.key for ep in self._buffer}

    @property
    def num_episodes(self) -> int:
        """Episodes written or buffered."""
        return sum(len(c["episodes"]) for c in self.manifest["chunks"]) + len(self._buffer)

    def _check(self, episode: Episode) -> None:
        m = self.manifest
        shape = list(episode.images.shape[1:])
        info_keys = {k: list(v.shape[1:]) for k, v in sorted(episode.info.items())}
        if m["image_shape"] is None:
            m["image_shape"], m["action_size"], m["info_keys"] = shape, episode.labels.shape[1], info_keys
            return
        if shape != m["image_shape"]:
            raise ValueError(
                f"episode images are {shape} but dataset {self.root} holds {m['image_shape']}; "
                "use a new folder for a different camera size"
            )
        if episode.labels.shape[1] != m["action_size"]:
            raise ValueError(f"episode action size {episode.labels.shape[1]} != dataset's {m['action_size']}")
        if info_keys != m["info_keys"]:
            raise ValueError(f"episode info keys/shapes {info_keys} != dataset's {m['info_keys']}")

    def add(self, episode: Episode) -> None:
        """Buffer one episode; writes a chunk once ``episodes_per_chunk`` are buffered."""
        if episode.key in self.keys:
            raise ValueError(f"episode key {episode.key!r} is already in {self.root}; keys must be unique")
        self._check(episode)
        self._buffer.append(episode)
        if len(self._buffer) >= self.episodes_per_chunk:
            self.flush()

    def flush(self) -> None:
        """Write the buffered episodes as one chunk, then the manifest (both atomically)."""
        if not self._buffer:
            return
        episodes, self._buffer = self._buffer, []
        index = len(self.manifest["chunks"])
        name = f"chunk_{index:06d}.npz"
        while (self.root / name).exists() and any(c["file"] == name for c in self.manifest["chunks"]):
            index += 1
            name = f"chunk_{index:06d}.npz"
        arrays: dict[str, np.ndarray] = {
            "images": np.concatenate([e.images for e in episodes]),
            "labels": np.concatenate([e.labels for e in episodes]),
            "actions": np.concatenate([e.actions for e in episodes]),
            "episode_lengths": np.array([e.length for e in episodes], dtype=np.int64),
        }
        for key in self.manifest["info_keys"]:
            arrays[_INFO_PREFIX + key] = np.concatenate([e.info[key] for e in episodes])
        path = self.root / name
        atomic_write_bytes(path, _npz_bytes(arrays))
        entry = {
            "file": name,
            "num_steps": int(arrays["images"].shape[0]),
            "sha256": _sha256(path) if self.verify else None,
            "episodes": [
                {
                    "key": e.key,
                    "road_seed": int(e.road_seed),
                    "source": e.source,
                    "length": e.length,
                    "completed": bool(e.completed),
                }
                for e in episodes
            ],
        }
        self.manifest["chunks"].append(entry)
        atomic_write_bytes(self.root / MANIFEST_NAME, json.dumps(self.manifest, indent=1).encode())

    def close(self) -> None:
        """Flush the last partial chunk."""
        self.flush()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` (what ``np.savez_compressed`` writes) with fixed zip timestamps: the same arrays
    always give the same bytes, so a resumed collection writes chunks identical to an uninterrupted one."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)
    return buffer.getvalue()


def _load_chunk(root: Path, chunk: Mapping[str, Any], manifest: Mapping[str, Any], verify: bool) -> dict:
    """Load and check one chunk; every failure names the file."""
    path = root / chunk["file"]
    fix = "delete it and its manifest entry (or the folder) and collect again with --resume"
    if not path.is_file():
        raise DatasetError(f"{path}: chunk listed in the manifest is missing; {fix}")
    if verify and chunk.get("sha256") and _sha256(path) != chunk["sha256"]:
        raise DatasetError(f"{path}: checksum mismatch, the chunk is corrupt or truncated; {fix}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read the chunk ({type(exc).__name__}: {exc}); {fix}") from exc
    check_chunk_arrays(arrays, chunk, manifest, path)
    return arrays


def split_road_seeds(seeds: Iterable[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split road seeds (not episodes) into train and validation sets.

    Args:
        seeds: road seeds present in a dataset (duplicates are merged).
        val_fraction: share of roads for validation, in [0, 1); at least one road goes to each side when there
            are two or more roads and ``val_fraction > 0``.
        seed: seed of the shuffle.

    Returns:
        ``(train_seeds, val_seeds)``, each sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(int(s) for s in seeds))
    if val_fraction == 0.0 or len(unique) < 2:
        return unique, []
    order = np.random.default_rng(seed).permutation(len(unique))
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    val = sorted(unique[i] for i in order[:n_val])
    train = sorted(unique[i] for i in order[n_val:])
    return train, val


@dataclass
class WindowBatch:
    """A batch of ``(B, T)`` windows, each inside one episode.

    Attributes:
        images: uint8 ``(B, T, H, W, 3)``.
        labels: float32 ``(B, T, A)`` expert actions (targets).
        actions: float32 ``(B, T, A)`` executed actions.
        episode_starts: float32 ``(B, T)``: 1 where the window's step is the first step of its episode.
        index: int64 ``(B,)`` global index of each window's first step.
    """

    images: np.ndarray
    labels: np.ndarray
    actions: np.ndarray
    episode_starts: np.ndarray
    index: np.ndarray


class DemoDataset:
    """All (or a selection of) the episodes of a dataset folder, loaded into memory.

    Args:
        root: dataset folder.
        road_seeds: keep only episodes on these roads (``None``: all).
        sources: keep only episodes whose ``source`` is in this set (``None``: all).
        verify: check each chunk's SHA-256 against the manifest.

    Raises:
        DatasetError: missing/corrupt manifest or chunk (the message names the file and the fix).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        road_seeds: Iterable[int] | None = None,
        sources: Iterable[str] | None = None,
        verify: bool = True,
    ) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        keep_seeds = None if road_seeds is None else {int(s) for s in road_seeds}
        keep_sources = None if sources is None else set(sources)
        info_keys = self.manifest["info_keys"] or {}
        images, labels, actions = [], [], []
        info: dict[str, list[np.ndarray]] = {k: [] for k in info_keys}
        self.episodes: list[dict[str, Any]] = []
        for chunk in self.manifest["chunks"]:
            wanted = [
                (keep_seeds is None or e["road_seed"] in keep_seeds)
                and (keep_sources is None or e["source"] in keep_sources)
                for e in chunk["episodes"]
            ]
            if not any(wanted):
                continue
            arrays = _load_chunk(self.root, chunk, self.manifest, verify)
            offset = 0
            for meta, want in zip(chunk["episodes"], wanted):
                n = int(meta["length"])
                if want:
                    sl = slice(offset, offset + n)
                    images.append(arrays["images"][sl])
                    labels.append(arrays["labels"][sl])
                    actions.append(arrays["actions"][sl])
                    for k in info_keys:
                        info[k].append(arrays[_INFO_PREFIX + k][sl])
                    self.episodes.append(dict(meta))
                offset += n
        a = int(self.manifest["action_size"] or 1)
        shape = tuple(self.manifest["image_shape"] or (0, 0, 3))
        self.images = np.concatenate(images) if images else np.zeros((0, *shape), np.uint8)
        self.labels = np.concatenate(labels) if labels else np.zeros((0, a), np.float32)
        self.actions = np.concatenate(actions) if actions else np.zeros((0, a), np.float32)
        self.info = {
            k: (np.concatenate(v) if v else np.zeros((0, *info_keys[k]), np.float32)) for k, v in info.items()
        }
        lengths = np.array([e["length"] for e in self.episodes], dtype=np.int64)
        self.episode_lengths = lengths
        self.episode_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        """Total number of steps."""
        return int(self.images.shape[0])

    @property
    def num_episodes(self) -> int:
        """Number of episodes loaded."""
        return len(self.episodes)

    @property
    def road_seeds(self) -> list[int]:
        """Sorted unique road seeds of the loaded episodes."""
        return sorted({int(e["road_seed"]) for e in self.episodes})

    def window_starts(self, window: int, stride: int | None = None) -> np.ndarray:
        """Global start indices of every ``window``-step window that stays inside one episode.

        Windows start at ``0, stride, 2 stride, ...`` within each episode, plus one window ending at the
        episode's last step so the end is covered; episodes shorter than ``window`` contribute none.

        Args:
            window: steps per window (T).
            stride: steps between window starts (default ``window // 2``).
        """
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        stride = max(1, window // 2) if stride is None else stride
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        starts: list[np.ndarray] = []
        for offset, length in zip(self.episode_offsets, self.episode_lengths):
            if length < window:
                continue
            local = np.arange(0, length - window + 1, stride, dtype=np.int64)
            if local[-1] != length - window:
                local = np.append(local, length - window)
            starts.append(offset + local)
        return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)

    def gather(self, starts: np.ndarray, window: int) -> WindowBatch:
        """The windows beginning at global indices ``starts`` (each must lie inside one episode)."""
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(window, dtype=np.int64)[None, :]
        first_steps = np.zeros(len(self), dtype=bool)
        first_steps[self.episode_offsets] = True
        return WindowBatch(
            images=self.images[idx],
            labels=self.labels[idx],
            actions=self.actions[idx],
            episode_starts=first_steps[idx].astype(np.float32),
            index=np.asarray(starts, dtype=np.int64),
        )

    def iter_windows(
        self,
        batch_size: int,
        window: int,
        *,
        stride: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[WindowBatch]:
        """Yield batches of ``(B, T)`` windows.

        The order depends only on ``(seed, epoch)``; with ``world_size > 1`` every rank sees the same
        permutation and takes its own strided share, so the ranks run the same number of batches (the
        permutation is cut to a multiple of ``world_size``).

        Args:
            batch_size: windows per batch on this rank.
            window: steps per window (T).
            stride: steps between window starts (default ``window // 2``).
            shuffle: permute the windows (seeded by ``seed`` and ``epoch``).
            seed: base seed.
            epoch: epoch number (changes the permutation).
            drop_last: drop a last incomplete batch.
            rank: this process's rank.
            world_size: number of data-parallel processes.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = self.window_starts(window, stride)
        if shuffle:
            starts = starts[np.random.default_rng([seed, epoch]).permutation(len(starts))]
        if world_size > 1:
            starts = starts[: len(starts) - len(starts) % world_size][rank::world_size]
        n = len(starts)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            yield self.gather(starts[i : i + batch_size], window)

    def num_batches(
        self,
        batch_size: int,
        window: int,
        *,
        stride: int | None = None,
        drop_last: bool = False,
        world_size: int = 1,
    ) -> int:
        """How many batches ``iter_windows`` yields with these arguments."""
        n = len(self.window_starts(window, stride))
        if world_size > 1:
            n = (n - n % world_size) // world_size
        return n // batch_size if drop_last else math.ceil(n / batch_size)


def summarize_dataset(root: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Statistics of a dataset folder from its manifest (and, with ``verify``, a full read of every chunk).

    Returns:
        A dict with ``episodes``, ``steps``, ``chunks``, ``roads``, ``completed``, ``sources`` (episodes per
        source), ``image_shape``, ``action_size``, ``info_keys``, ``bytes`` and ``metadata``; with ``verify``
        also ``label_mean``, ``label_std``, ``label_abs_max`` and ``action_minus_label_std``.
    """
    root = Path(root)
    m = read_manifest(root)
    absent = [c["file"] for c in m["chunks"] if not (root / c["file"]).is_file()]
    if absent:
        raise DatasetError(
            f"{root / absent[0]}: chunk listed in the manifest is missing ({len(absent)} of "
            f"{len(m['chunks'])} chunks); delete its manifest entry (or the folder) and collect again "
            "with --resume"
        )
    episodes = [e for c in m["chunks"] for e in c["episodes"]]
    sources: dict[str, int] = {}
    for e in episodes:
        sources[e["source"]] = sources.get(e["source"], 0) + 1
    out: dict[str, Any] = {
        "path": str(root),
        "episodes": len(episodes),
        "steps": int(sum(e["length"] for e in episodes)),
        "chunks": len(m["chunks"]),
        "roads": len({e["road_seed"] for e in episodes}),
        "completed": int(sum(bool(e["completed"]) for e in episodes)),
        "sources": sources,
        "image_shape": m["image_shape"],
        "action_size": m["action_size"],
        "info_keys": sorted(m["info_keys"] or {}),
        "bytes": int(sum((root / c["file"]).stat().st_size for c in m["chunks"])),
        "metadata": m.get("metadata", {}),
    }
    if verify and episodes:
        ds = DemoDataset(root, verify=True)
        out["label_mean"] = float(ds.labels.mean())
        out["label_std"] = float(ds.labels.std())
        out["label_abs_max"] = float(np.abs(ds.labels).max())
        out["action_minus_label_std"] = float((ds.actions - ds.labels).std())
    return out


def format_summary(summary: Mapping[str, Any]) -> str:
    """Human-readable text of :func:`summarize_dataset`'s result."""
    lines = [
        f"dataset {summary['path']}",
        f"  episodes  {summary['episodes']} on {summary['roads']} roads "
        f"({summary['completed']} completed without departure), sources {summary['sources']}",
        f"  steps     {summary['steps']} in {summary['chunks']} chunks, "
        f"{summary['bytes'] / 1e6:.1f} MB on disk",
        f"  images    uint8 {tuple(summary['image_shape'] or ())}; actions {summary['action_size']}",
        f"  info      {', '.join(summary['info_keys'])}",
    ]
    if "label_mean" in summary:
        lines.append(
            f"  labels    mean {summary['label_mean']:+.4f} std {summary['label_std']:.4f} "
            f"max|y| {summary['label_abs_max']:.4f}; "
            f"executed-label noise std {summary['action_minus_label_std']:.4f}"
        )
    return "\n".join(lines)
