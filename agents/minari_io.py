"""Minari interchange for demonstration datasets: export ours to Minari, read a Minari dataset for training.

``export_minari(DIR, "ltc/lane-keeping-expert-v0")`` writes every episode of one of our dataset folders
(``docs/datasets.md``) as a Minari dataset under ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``),
``arrow`` storage, images stored losslessly (Minari's JPEG encoding is turned off). Per episode:

- ``observations``: the uint8 camera frames, ``T + 1`` of them as Minari requires; our format keeps no
  observation after the last action, so observation ``T`` is a copy of observation ``T - 1`` (the episode
  metadata says so: ``final_observation_is_copy``);
- ``actions``: the executed actions (expert + noise, or the learner's in DAgger);
- ``rewards``: NaN: our format does not record rewards (recompute them from the infos if needed);
- ``terminations`` / ``truncations``: on the last step, terminated when the episode ended in a lane
  departure (``completed`` false), truncated otherwise (end of road or step cap);
- ``infos``: ``expert_action`` (our ``labels``, the training target) and every stored info key
  (``lateral_offset``, ``heading_error``, ``curvature``, ``curvature_ahead``, ``speed``, ``distance``,
  ``steering``...), ``T + 1`` rows with the last one repeated like the observation;
- episode metadata: ``seed`` (the road seed), ``road_seed``, ``key``, ``source``, ``completed``.

:class:`MinariDemoDataset` reads a Minari dataset (an id in the local Minari store, or a dataset folder) into
the same in-memory arrays as :class:`~ltc_control.agents.datasets.DemoDataset`, so its training windows
(``iter_windows``) are the same windows, in the same order, as those of the dataset it was exported from.
:func:`open_demos` opens either format from one string. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.agents.datasets import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    DatasetError,
    DemoDataset,
)

__all__ = [
    "MINARI_PREFIX",
    "LABEL_INFO_KEY",
    "MinariDemoDataset",
    "export_main",
    "export_minari",
    "is_minari_source",
    "minari_data_path",
    "minari_road_seeds",
    "open_demos",
]

#: ``minari:<id-or-path>`` names a Minari source explicitly (a bare id or path works too).
MINARI_PREFIX = "minari:"
#: The info key holding the expert's clean action (our ``labels``).
LABEL_INFO_KEY = "expert_action"
_META_KEY = "ltc_control"
_ID_RE = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_.\w]+-v\d+$")
_INSTALL = "Minari datasets need the minari package: pip install 'ltc-control[minari]'"


def _import_minari() -> Any:
    try:
        import minari
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(_INSTALL) from exc
    return minari


def _strip(source: str | os.PathLike[str]) -> str:
    text = os.fspath(source)
    return text[len(MINARI_PREFIX) :] if text.startswith(MINARI_PREFIX) else text


def minari_data_path(source: str | os.PathLike[str]) -> Path | None:
    """The ``data`` folder (holding ``metadata.json``) of a Minari source, or None when it is not one.

    Args:
        source: ``minari:<id>``, a dataset id in the local Minari store (``$MINARI_DATASETS_PATH``), a
            Minari dataset folder, or its ``data`` sub-folder.
    """
    text = _strip(source)
    path = Path(text)
    for candidate in (path, path / "data"):
        if (candidate / "metadata.json").is_file() and not (candidate / MANIFEST_NAME).is_file():
            return candidate
    if _ID_RE.fullmatch(text):
        from minari.storage.datasets_root_dir import get_dataset_path

        data = Path(get_dataset_path(text)) / "data"
        if (data / "metadata.json").is_file():
            return data
    return None


def is_minari_source(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a Minari dataset (not one of our dataset folders)."""
    text = os.fspath(source)
    if text.startswith(MINARI_PREFIX):
        return True
    if (Path(text) / MANIFEST_NAME).is_file():
        return False
    try:
        return minari_data_path(text) is not None
    except ImportError:
        return False


# ------------------------------------------------------------------------------------------------ export
def export_minari(
    src: str | os.PathLike[str],
    dataset_id: str,
    *,
    description: str | None = None,
    author: str | None = None,
    data_format: str = "arrow",
    verify: bool = True,
) -> Path:
    """Write the demonstrations of dataset folder ``src`` as the local Minari dataset ``dataset_id``.

    Args:
        src: one of our dataset folders (holds ``manifest.json``).
        dataset_id: Minari id ``(namespace/)name-v<version>``, e.g. ``ltc/lane-keeping-expert-v0``; must not
            exist yet in ``$MINARI_DATASETS_PATH``.
        description: dataset description (default: one naming the source folder and the conventions above).
        author: author recorded in the Minari metadata.
        data_format: Minari storage, ``"arrow"`` (default; needs pyarrow) or ``"hdf5"`` (needs h5py).
        verify: check our chunks' checksums while reading them.

    Returns:
        The Minari dataset folder (``$MINARI_DATASETS_PATH/<dataset_id>``).

    Raises:
        DatasetError: ``src`` is not a readable dataset or holds no episode.
        ValueError: ``dataset_id`` is malformed or already exists.
    """
    minari = _import_minari()
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage.datasets_root_dir import get_dataset_path

    parse_dataset_id(dataset_id)  # ValueError naming the expected form
    if Path(get_dataset_path(dataset_id)).exists():
        raise ValueError(
            f"Minari dataset {dataset_id!r} already exists in {get_dataset_path()}; choose another name or "
            "version (Minari datasets are never overwritten)"
        )
    data = DemoDataset(src, verify=verify)
    if data.num_episodes == 0:
        raise DatasetError(f"{src}: the dataset holds no episode; nothing to export")
    shape = tuple(int(s) for s in data.images.shape[1:])
    action_size = int(data.actions.shape[1])
    buffers: list[Any] = []
    episode_meta: list[dict[str, Any]] = []
    for k, (meta, offset, length) in enumerate(
        zip(data.episodes, data.episode_offsets, data.episode_lengths)
    ):
        sl = slice(int(offset), int(offset + length))
        n = int(length)

        def pad(arr: np.ndarray) -> np.ndarray:
            return np.concatenate([arr, arr[-1:]])

        terminal = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        completed = bool(meta.get("completed", False))
        (truncated if completed else terminal)[-1] = True
        infos: dict[str, Any] = {LABEL_INFO_KEY: pad(data.labels[sl])}
        for key, values in data.info.items():
            # Minari 0.5.4's arrow storage cannot decode a 1-D numpy info array (its shape tag is empty):
            # 1-D infos go in as lists of floats (float64 in the file, exact for our float32 values)
            column = pad(values[sl])
            infos[key] = column.tolist() if column.ndim == 1 else column
        buffers.append(
            EpisodeBuffer(
                id=k,
                seed=int(meta["road_seed"]),
                observations=pad(data.images[sl]),
                actions=data.actions[sl],
                rewards=np.full(n, np.nan, dtype=np.float64),
                terminations=terminal,
                truncations=truncated,
                infos=infos,
            )
        )
        episode_meta.append(
            {
                "road_seed": int(meta["road_seed"]),
                "key": str(meta["key"]),
                "source": str(meta["source"]),
                "completed": completed,
                "final_observation_is_copy": True,
            }
        )
    text = description or (
        f"Lane-keeping demonstrations exported by ltc-control from {Path(src).resolve()}. Actions are "
        f"the executed actions; infos['{LABEL_INFO_KEY}'] holds the expert's clean action (the imitation "
        "target). "
        "Rewards are NaN (not recorded); the last observation and info of each episode repeat the previous "
        "step's (the source format keeps no observation after the last action)."
    )
    with warnings.catch_warnings():
        # advisory notes about fields we leave empty on purpose (no env spec, permalink, e-mail)
        warnings.filterwarnings(
            "ignore", message=r".*(is set to None|env_spec is None)", category=UserWarning
        )
        dataset = _create(minari, dataset_id, buffers, shape, action_size, author, text, data_format)
    storage = dataset.storage
    storage.update_episode_metadata(episode_meta, range(len(episode_meta)))
    storage.update_metadata(
        {
            _META_KEY: {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "source": str(Path(src).resolve()),
                "image_shape": list(shape),
                "action_size": action_size,
                "info_keys": data.manifest["info_keys"],
                "metadata": data.manifest.get("metadata", {}),
            }
        }
    )
    return Path(get_dataset_path(dataset_id))


def _create(
    minari: Any,
    dataset_id: str,
    buffers: list[Any],
    shape: tuple[int, ...],
    action_size: int,
    author: str | None,
    description: str,
    data_format: str,
) -> Any:
    import inspect

    import gymnasium as gym

    # Minari versions with optional JPEG encoding default it to on (lossy); the others store raw arrays
    lossless = (
        {"jpeg_encoding": False}
        if "jpeg_encoding" in inspect.signature(minari.create_dataset_from_buffers).parameters
        else {}
    )
    return minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        observation_space=gym.spaces.Box(0, 255, shape, np.uint8),
        action_space=gym.spaces.Box(-1.0, 1.0, (action_size,), np.float32),
        algorithm_name="ltc-control noisy expert / DAgger",
        author=author,
        description=description,
        data_format=data_format,
        **lossless,  # the training images must be the ones recorded
    )


# ------------------------------------------------------------------------------------------------ reading
class MinariDemoDataset(DemoDataset):
    """A Minari dataset loaded as a :class:`DemoDataset` (same arrays, same windows).

    Labels (the training targets) are ``infos["expert_action"]``; a Minari dataset without that key (one
    not written by :func:`export_minari`) is read with its executed actions as labels. Road seeds, keys and
    sources come from the episode metadata written by :func:`export_minari` (else: the reset ``seed``, else
    the episode id; ``minari/<id>/ep<k>``; ``"expert"``).

    Args:
        source: ``minari:<id>``, a local Minari dataset id, or a Minari dataset folder.
        road_seeds: keep only episodes on these roads (``None``: all).
        sources: keep only episodes whose ``source`` is in this set (``None``: all).
        verify: unused (Minari keeps no checksums); accepted so both classes take the same arguments.

    Raises:
        DatasetError: the source is not a Minari dataset, or its observations are not uint8 images.
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        *,
        road_seeds: Iterable[int] | None = None,
        sources: Iterable[str] | None = None,
        verify: bool = True,
    ) -> None:
        _import_minari()
        from minari import MinariDataset

        data_path = minari_data_path(source)
        if data_path is None:
            raise DatasetError(
                f"{_strip(source)!r} is neither a Minari dataset folder nor a dataset id in the local Minari "
                "store ($MINARI_DATASETS_PATH); export one with 'ltc-control dataset export DIR --format "
                "minari --name ID' (nothing is downloaded)"
            )
        dataset = MinariDataset(data_path)
        space = dataset.observation_space
        shape = tuple(int(s) for s in getattr(space, "shape", ()) or ())
        if getattr(space, "dtype", None) != np.uint8 or len(shape) != 3 or shape[-1] != 3:
            raise DatasetError(
                f"{data_path}: observations are {space}; training needs uint8 (H, W, 3) camera images"
            )
        self.root = data_path.parent
        self.minari_id = str(dataset.id)
        keep_seeds = None if road_seeds is None else {int(s) for s in road_seeds}
        keep_sources = None if sources is None else set(sources)
        indices = [int(i) for i in dataset.episode_indices]
        metas = list(dataset.storage.get_episode_metadata(indices))
        chosen: list[tuple[int, dict[str, Any]]] = []
        for index, meta in zip(indices, metas):
            info = {
                "key": str(meta.get("key", f"minari/{self.minari_id}/ep{index}")),
                "road_seed": int(meta.get("road_seed", meta.get("seed", index))),
                "source": str(meta.get("source", "expert")),
                "completed": bool(meta.get("completed", False)),
            }
            if (keep_seeds is None or info["road_seed"] in keep_seeds) and (
                keep_sources is None or info["source"] in keep_sources
            ):
                chosen.append((index, info))
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        actions: list[np.ndarray] = []
        infos: dict[str, list[np.ndarray]] = {}
        self.episodes = []
        # match episodes by id: the storage does not promise to return them in the order asked
        by_id = {int(ep.id): ep for ep in dataset.iterate_episodes([i for i, _ in chosen])}
        for index, meta in chosen:
            episode = by_id[index]
            n = len(episode.actions)
            act = np.asarray(episode.actions, dtype=np.float32).reshape(n, -1)
            ep_info = episode.infos if isinstance(episode.infos, Mapping) else {}
            label = ep_info.get(LABEL_INFO_KEY)
            images.append(np.asarray(episode.observations)[:n])
            labels.append(
                act if label is None else np.asarray(label, dtype=np.float32).reshape(-1, act.shape[1])[:n]
            )
            actions.append(act)
            for key, value in ep_info.items():
                arr = np.asarray(value)
                if key == LABEL_INFO_KEY or arr.dtype.kind not in "fiub" or arr.ndim > 2 or arr.shape[0] < n:
                    continue
                infos.setdefault(key, []).append(arr[:n].astype(np.float32))
            self.episodes.append({**meta, "length": n})
        a = int(np.prod(getattr(dataset.action_space, "shape", (1,)) or (1,)))
        self.images = np.concatenate(images) if images else np.zeros((0, *shape), np.uint8)
        self.labels = np.concatenate(labels) if labels else np.zeros((0, a), np.float32)
        self.actions = np.concatenate(actions) if actions else np.zeros((0, a), np.float32)
        # keep only info keys every loaded episode has (our own exports always have all)
        self.info = {k: np.concatenate(v) for k, v in infos.items() if len(v) == len(images) and images}
        extra = dataset.storage.metadata.get(_META_KEY, {})
        info_keys = extra.get("info_keys") or {k: list(v.shape[1:]) for k, v in self.info.items()}
        self.manifest = {
            "format": "minari",
            "version": FORMAT_VERSION,
            "minari_id": self.minari_id,
            "image_shape": list(shape),
            "action_size": a,
            "info_keys": {k: v for k, v in info_keys.items() if k in self.info},
            "metadata": json.loads(json.dumps(extra.get("metadata", {}), default=str)),
            "chunks": [],
        }
        lengths = np.array([e["length"] for e in self.episodes], dtype=np.int64)
        self.episode_lengths = lengths
        self.episode_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def minari_road_seeds(source: str | os.PathLike[str]) -> list[int]:
    """Sorted unique road seeds of a Minari dataset's episodes, from the episode metadata alone (no images).

    Raises:
        DatasetError: the source is not a Minari dataset.
    """
    _import_minari()
    from minari import MinariDataset

    data_path = minari_data_path(source)
    if data_path is None:
        raise DatasetError(f"{_strip(source)!r} is not a Minari dataset (id in the local store, or folder)")
    dataset = MinariDataset(data_path)
    indices = [int(i) for i in dataset.episode_indices]
    metas = dataset.storage.get_episode_metadata(indices)
    return sorted({int(m.get("road_seed", m.get("seed", i))) for i, m in zip(indices, metas)})


def open_demos(
    source: str | os.PathLike[str],
    *,
    road_seeds: Iterable[int] | None = None,
    sources: Iterable[str] | None = None,
    verify: bool = True,
) -> DemoDataset:
    """Open demonstrations from one of our dataset folders or from a Minari dataset (id or folder).

    Args:
        source: our dataset folder, ``minari:<id-or-path>``, a local Minari id or a Minari dataset folder.
        road_seeds: keep only episodes on these roads (``None``: all).
        sources: keep only episodes whose ``source`` is in this set (``None``: all).
        verify: check our chunks' checksums.
    """
    if is_minari_source(source):
        return MinariDemoDataset(source, road_seeds=road_seeds, sources=sources, verify=verify)
    return DemoDataset(source, road_seeds=road_seeds, sources=sources, verify=verify)


# ------------------------------------------------------------------------------------------------ CLI
def export_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control dataset export DIR --format minari --name ID [--author A] [--description D]``.

    Returns:
        0 on success, 1 on a dataset or naming error (printed), 2 on bad arguments (argparse).
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="ltc-control dataset export",
        description="Write a demonstration dataset in another format (Minari: into $MINARI_DATASETS_PATH).",
    )
    parser.add_argument("dir", type=Path, help="our dataset folder (holds manifest.json)")
    parser.add_argument("--format", choices=["minari"], required=True, help="target format")
    parser.add_argument(
        "--name", required=True, help="Minari dataset id, (namespace/)name-v<version>, e.g. ltc/demos-v0"
    )
    parser.add_argument("--author", default=None, help="author recorded in the Minari metadata")
    parser.add_argument("--description", default=None, help="dataset description (default: generated)")
    parser.add_argument(
        "--data_format", choices=["arrow", "parquet", "hdf5"], default="arrow", help="Minari storage backend"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip our chunks' checksum check")
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        path = export_minari(
            ns.dir,
            ns.name,
            description=ns.description,
            author=ns.author,
            data_format=ns.data_format,
            verify=not ns.no_verify,
        )
    except (DatasetError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    data = MinariDemoDataset(path)
    print(
        f"wrote Minari dataset {ns.name}: {data.num_episodes} episodes, {len(data)} steps, "
        f"roads {data.road_seeds} -> {path}"
    )
    return 0
