"""Demonstration datasets: a chunked, compressed, atomic on-disk format, a window loader, collection.

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.agents.experts import ExpertConfig, NoiseConfig, NoisyAgent, SteeringNoise, make_expert
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
    "summarize",
    "format_summary",
    "EnvSpec",
    "CollectConfig",
    "EpisodeTask",
    "collect",
    "run_tasks",
    "expert_tasks",
    "run_labelled_episode",
    "make_env",
    "env_dt",
    "dataset_main",
]

FORMAT_NAME = "ltc-control-demos"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_INFO_PREFIX = "info__"


class DatasetError(RuntimeError):
    """A dataset folder or file is missing, corrupt, truncated or inconsistent (the message names it)."""


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
        raise DatasetError(f"{path}: not an {FORMAT_NAME} manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format version {manifest.get('version')!r}, this code reads version {FORMAT_VERSION}"
        )
    for key in ("chunks", "image_shape", "action_size", "info_keys"):
        if key not in manifest:
            raise DatasetError(f"{path}: manifest lacks the {key!r} entry; the file is damaged")
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
            if metadata:
                self.manifest["metadata"].setdefault("appends", []).append(json.loads(json.dumps(metadata)))
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
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(path, buffer.getvalue())
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


def _load_chunk(root: Path, chunk: Mapping[str, Any], info_keys: Mapping[str, Any], verify: bool) -> dict:
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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{path}: cannot read the chunk ({type(exc).__name__}: {exc}); {fix}") from exc
    needed = ["images", "labels", "actions", "episode_lengths"] + [_INFO_PREFIX + k for k in info_keys]
    missing = [n for n in needed if n not in arrays]
    if missing:
        raise DatasetError(f"{path}: chunk lacks arrays {missing}; {fix}")
    lengths = arrays["episode_lengths"]
    expected = [int(e["length"]) for e in chunk["episodes"]]
    n = int(chunk["num_steps"])
    if lengths.tolist() != expected or any(arrays[k].shape[0] != n for k in needed if k != "episode_lengths"):
        raise DatasetError(f"{path}: array lengths disagree with the manifest (truncated?); {fix}")
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
            arrays = _load_chunk(self.root, chunk, info_keys, verify)
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


def summarize(root: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """Statistics of a dataset folder from its manifest (and, with ``verify``, a full read of every chunk).

    Returns:
        A dict with ``episodes``, ``steps``, ``chunks``, ``roads``, ``completed``, ``sources`` (episodes per
        source), ``image_shape``, ``action_size``, ``info_keys``, ``bytes`` and ``metadata``; with ``verify``
        also         ``label_mean``, ``label_std``, ``label_abs_max`` and ``action_minus_label_std``.
    """
    root = Path(root)
    m = read_manifest(root)
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
        "bytes": int(
            sum((root / c["file"]).stat().st_size for c in m["chunks"] if (root / c["file"]).exists())
        ),
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
    """Human-readable text of ``summarize``'s result."""
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


# ------------------------------------------------------------------------------------------------ collection
DEFAULT_INFO_KEYS = (
    "lateral_offset",
    "heading_error",
    "curvature",
    "curvature_ahead",
    "speed",
    "distance",
    "steering",
)


@dataclass(frozen=True)
class EnvSpec:
    """Which environment to build and with which keyword arguments.

    Attributes:
        id: Gymnasium id (registered by importing ``ltc_control.envs``).
        kwargs: keyword arguments for ``gymnasium.make`` (camera size, road length, speed, ...).
    """

    id: str = "LTC/LaneKeeping-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CollectConfig:
    """How to collect noisy-expert demonstrations.

    Attributes:
        env: the environment.
        expert: the privileged expert that labels every state.
        noise: steering noise added to the executed action (labels stay clean).
        seed_start: first road seed; roads ``seed_start .. seed_start + num_roads - 1`` are driven.
        num_roads: number of distinct roads.
        episodes_per_road: episodes per road (each with its own noise seed).
        max_steps: stop an episode after this many steps (0: run until the env ends it).
        workers: worker processes (0 or 1: collect in this process).
        episodes_per_chunk: episodes per ``.npz`` chunk on disk.
        seed: base seed of the noise generators.
        info_keys: ``info`` entries stored per step (those the env does not provide are skipped).
    """

    env: EnvSpec = field(default_factory=EnvSpec)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    seed_start: int = 0
    num_roads: int = 8
    episodes_per_road: int = 1
    max_steps: int = 0
    workers: int = 2
    episodes_per_chunk: int = 4
    seed: int = 0
    info_keys: tuple[str, ...] = DEFAULT_INFO_KEYS

    def __post_init__(self) -> None:
        for name in ("num_roads", "episodes_per_road", "episodes_per_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"CollectConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "workers", "seed_start"):
            if getattr(self, name) < 0:
                raise ValueError(f"CollectConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class EpisodeTask:
    """One episode to collect (picklable, sent to worker processes).

    Attributes:
        road_seed: seed passed to ``env.reset`` (selects the road).
        key: unique episode key in the dataset.
        source: dataset source tag.
        noise_seed: seed of the steering noise (expert episodes) or of the beta mixing (learner episodes).
        checkpoint: learner checkpoint folder for DAgger rollouts (``None``: noisy expert).
        beta: probability per step of executing the expert's action instead of the learner's.
    """

    road_seed: int
    key: str
    source: str = "expert"
    noise_seed: int = 0
    checkpoint: str | None = None
    beta: float = 0.0


def env_dt(env: Any) -> float:
    """Control period of an env in seconds (``unwrapped.dt``, else ``1 / metadata['render_fps']``)."""
    dt = getattr(env.unwrapped, "dt", None)
    if dt is None:
        fps = env.metadata.get("render_fps")
        if not fps:
            raise ValueError(
                "cannot tell the env's control period: it has neither .dt nor metadata['render_fps']"
            )
        dt = 1.0 / float(fps)
    return float(dt)


def make_env(spec: EnvSpec) -> Any:
    """Build the env described by ``spec`` (``LTC/`` ids are registered on the way)."""
    from ltc_control.agents.episode import make_env as _make_env

    return _make_env(spec.id, spec.kwargs)


def _info_arrays(infos: list[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    out = {}
    for key in keys:
        if all(key in info for info in infos):
            out[key] = np.stack([np.asarray(info[key], dtype=np.float32).reshape(-1) for info in infos])
            if out[key].shape[1] == 1:
                out[key] = out[key][:, 0]
    return out


def run_labelled_episode(
    env: Any,
    actor: Any,
    expert: Any,
    road_seed: int,
    *,
    max_steps: int = 0,
    info_keys: Sequence[str] = DEFAULT_INFO_KEYS,
    key: str = "",
    source: str = "expert",
) -> Episode:
    """Drive one episode with ``actor`` and label every visited state with ``expert``.

    Args:
        env: a lane-keeping env (image observations, uint8 ``(H, W, 3)``).
        actor: Agent protocol (``reset()``, ``act(obs, info) -> (A,)``) whose actions are executed.
        expert: an expert with ``label(info) -> float`` (the clean action stored as the target).
        road_seed: seed for ``env.reset`` (selects the road).
        max_steps: stop after this many steps (0: until the env terminates or truncates).
        info_keys: info entries stored per step.
        key: episode key in the dataset.
        source: dataset source tag.

    Returns:
        The recorded episode; ``completed`` is True when it ended without a lane departure.
    """
    obs, info = env.reset(seed=int(road_seed))
    actor.reset()
    frames: list[np.ndarray] = []
    labels: list[float] = []
    actions: list[np.ndarray] = []
    infos: list[Mapping[str, Any]] = []
    departed = False
    while True:
        image = np.asarray(obs)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"demonstrations need uint8 (H, W, 3) camera observations, the env gave {image.dtype} "
                f"{image.shape}; use an image env such as LTC/LaneKeeping-v0"
            )
        frames.append(image)
        labels.append(expert.label(info))
        infos.append(info)
        action = np.asarray(actor.act(obs, info), dtype=np.float32).reshape(-1)
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        departed = bool(info.get("lane_departure", False))
        if terminated or truncated or (max_steps and len(frames) >= max_steps):
            break
    return Episode(
        images=np.stack(frames),
        labels=np.asarray(labels, dtype=np.float32)[:, None],
        actions=np.stack(actions),
        info=_info_arrays(infos, info_keys),
        road_seed=int(road_seed),
        key=key,
        source=source,
        completed=not departed,
    )


class _MixedActor:
    """Executes the expert's action with probability ``beta`` per step, else the learner's (DAgger)."""

    def __init__(self, learner: Any, expert: Any, beta: float, seed: int) -> None:
        self.learner, self.expert, self.beta = learner, expert, beta
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.learner.reset()
        self.rng = np.random.default_rng(self.rng.integers(1 << 62))

    def act(self, obs: Any, info: Mapping[str, Any]) -> np.ndarray:
        # The learner always steps so that its recurrent state follows the frames it sees.
        learned = np.asarray(self.learner.act(obs, info), dtype=np.float32).reshape(-1)
        if self.beta > 0 and self.rng.random() < self.beta:
            return np.asarray(self.expert.act(obs, info), dtype=np.float32).reshape(-1)
        return learned


_WORKER: dict[str, Any] = {}


def _worker_init(config: CollectConfig, torch_threads: int) -> None:
    """Per-process setup: one env (renderer made inside the worker) and one expert."""
    _WORKER.clear()
    _WORKER["config"] = config
    _WORKER["env"] = make_env(config.env)
    _WORKER["expert"] = make_expert(config.expert)
    _WORKER["torch_threads"] = torch_threads
    _WORKER["policies"] = {}


def _learner_agent(checkpoint: str) -> Any:
    policies = _WORKER["policies"]
    if checkpoint not in policies:
        import torch

        from ltc_control.agents.episode import PolicyAgent
        from ltc_control.checkpoint import load_checkpoint

        torch.set_num_threads(max(1, int(_WORKER.get("torch_threads", 1))))
        policy, _ = load_checkpoint(checkpoint)
        policy.eval()
        policies.clear()
        policies[checkpoint] = PolicyAgent(policy)
    return policies[checkpoint]


def _worker_run(task: EpisodeTask) -> Episode:
    config: CollectConfig = _WORKER["config"]
    env, expert = _WORKER["env"], _WORKER["expert"]
    actor: Any
    if task.checkpoint is None:
        noise = SteeringNoise(config.noise, env_dt(env), task.noise_seed)
        actor = NoisyAgent(expert, noise)
    else:
        actor = _MixedActor(_learner_agent(task.checkpoint), expert, task.beta, task.noise_seed)
    return run_labelled_episode(
        env,
        actor,
        expert,
        task.road_seed,
        max_steps=config.max_steps,
        info_keys=config.info_keys,
        key=task.key,
        source=task.source,
    )


def expert_tasks(config: CollectConfig, source: str = "expert") -> list[EpisodeTask]:
    """The episodes a collection config asks for (deterministic keys and noise seeds)."""
    tasks = []
    for r in range(config.num_roads):
        road = config.seed_start + r
        for k in range(config.episodes_per_road):
            noise_seed = int(np.random.SeedSequence([config.seed, road, k]).generate_state(1)[0])
            tasks.append(
                EpisodeTask(
                    road_seed=road, key=f"{source}/road{road}/ep{k}", source=source, noise_seed=noise_seed
                )
            )
    return tasks


def run_tasks(
    out_dir: str | os.PathLike[str],
    config: CollectConfig,
    tasks: Sequence[EpisodeTask],
    *,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "collect",
    torch_threads: int = 1,
) -> dict[str, Any]:
    """Run episode tasks on ``config.workers`` processes and append them to the dataset at ``out_dir``.

    Tasks whose key the dataset already lists are skipped, so re-running after an interrupt resumes.
    Episodes are written in task order, ``config.episodes_per_chunk`` per chunk.

    Returns:
        ``{"new_episodes", "skipped", "completed", "steps"}`` for the tasks run now.
    """
    from tqdm import tqdm

    writer = DatasetWriter(out_dir, episodes_per_chunk=config.episodes_per_chunk, metadata=metadata)
    done = writer.keys
    todo = [t for t in tasks if t.key not in done]
    stats = {"new_episodes": 0, "skipped": len(tasks) - len(todo), "completed": 0, "steps": 0}
    if not todo:
        return stats
    bar = tqdm(total=len(todo), desc=desc, unit="ep", disable=not progress, dynamic_ncols=True)

    def record(ep: Episode) -> None:
        writer.add(ep)
        stats["new_episodes"] += 1
        stats["completed"] += int(ep.completed)
        stats["steps"] += ep.length
        bar.update(1)
        bar.set_postfix(steps=stats["steps"], clean=f"{stats['completed']}/{stats['new_episodes']}")

    try:
        if config.workers <= 1:
            _worker_init(config, torch_threads)
            try:
                for task in todo:
                    record(_worker_run(task))
            finally:
                _WORKER["env"].close()
                _WORKER.clear()
        else:
            import multiprocessing as mp

            # spawn: the MuJoCo renderer must be created inside each worker, never inherited through fork.
            ctx = mp.get_context("spawn")
            with ctx.Pool(config.workers, initializer=_worker_init, initargs=(config, torch_threads)) as pool:
                for ep in pool.imap(_worker_run, todo):
                    record(ep)
    finally:
        writer.close()
        bar.close()
    return stats


def collect(
    out_dir: str | os.PathLike[str],
    config: CollectConfig,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect noisy-expert demonstrations into ``out_dir`` (resumable).

    Args:
        out_dir: dataset folder.
        config: what to collect.
        resume: continue an existing dataset (skip episodes already written); False refuses a
            non-empty folder.
        progress: show a tqdm bar.

    Returns:
        Counts of the episodes collected now (see :func:`run_tasks`).

    Raises:
        FileExistsError: ``resume=False`` and the folder already holds a dataset.
    """
    from ltc_control.config import to_dict

    out = Path(out_dir)
    if not resume and (out / MANIFEST_NAME).exists():
        raise FileExistsError(
            f"{out} already holds a dataset; pass --resume to continue it or pick a new folder"
        )
    meta = {"collect": to_dict(config)}
    return run_tasks(
        out, config, expert_tasks(config), metadata=meta, progress=progress, desc="collect demos"
    )


def dataset_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control dataset {summary,collect}``.

    ``summary DIR [--verify]`` prints the contents of a dataset; ``collect --out DIR [--config YAML]
    [--set key=value ...] [--<field> value ...] [--resume]`` collects noisy-expert demonstrations with the
    options of :class:`CollectConfig`.

    Returns:
        The exit code (0 on success, 1 on a dataset error).
    """
    import argparse
    import sys

    from ltc_control.config import make_parser, parse_args_and_config

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: ltc-control dataset {summary,collect} ...\n\n"
            "  summary DIR [--verify]        print episodes, roads, steps and label statistics\n"
            "  collect --out DIR [options]   collect noisy-expert demonstrations (see 'collect --help')"
        )
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "summary":
        parser = argparse.ArgumentParser(prog="ltc-control dataset summary")
        parser.add_argument("dir", type=Path, help="dataset folder (holds manifest.json)")
        parser.add_argument("--verify", action="store_true", help="read every chunk and check its checksum")
        ns = parser.parse_args(rest)
        try:
            print(format_summary(summarize(ns.dir, verify=ns.verify)))
        except DatasetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if cmd == "collect":
        parser = make_parser(CollectConfig, prog="ltc-control dataset collect")
        parser.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
        parser.add_argument(
            "--resume", action="store_true", help="continue an existing dataset, skipping finished episodes"
        )
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        cfg, ns = parse_args_and_config(CollectConfig, rest, parser)
        try:
            stats = collect(ns.out, cfg, resume=ns.resume, progress=not ns.no_progress)
            print(f"collected {stats['new_episodes']} episodes ({stats['skipped']} already there)")
            print(format_summary(summarize(ns.out)))
        except (DatasetError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    print(f"ltc-control dataset: unknown sub-command {cmd!r}; valid: summary, collect", file=sys.stderr)
    return 2
