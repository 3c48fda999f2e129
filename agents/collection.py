"""Collecting demonstrations: noisy-expert and DAgger (learner + expert) episodes, labelled by the expert.

Each episode runs through :func:`ltc_control.agents.episode.run_episode` (one episode loop for the whole
closed-loop code); a per-step callback keeps the camera frames, the expert's clean labels and the privileged
``info`` entries, and :func:`run_tasks` appends the episodes to a dataset folder
(:mod:`ltc_control.agents.datasets`) from a pool of worker processes, resumably.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ltc_control.agents.datasets import MANIFEST_NAME, DatasetWriter, Episode
from ltc_control.agents.episode import PolicyAgent, StepRecord, make_env, run_episode
from ltc_control.agents.experts import ExpertConfig, NoiseConfig, NoisyAgent, SteeringNoise, make_expert
from ltc_control.config import to_dict
from ltc_control.locking import FolderLock

__all__ = [
    "DEFAULT_INFO_KEYS",
    "CollectConfig",
    "EnvSpec",
    "EpisodeTask",
    "collect",
    "env_dt",
    "expert_tasks",
    "run_labelled_episode",
    "run_tasks",
]

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
    frames: list[np.ndarray] = []
    labels: list[float] = []
    infos: list[Mapping[str, Any]] = []

    def keep(step: StepRecord) -> None:
        # the frame the actor saw, the expert's label of that state and the info it was acted on
        image = np.asarray(step.obs)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"demonstrations need uint8 (H, W, 3) camera observations, the env gave {image.dtype} "
                f"{image.shape}; use an image env such as LTC/LaneKeeping-v0"
            )
        frames.append(image)
        labels.append(expert.label(step.prev_info))
        infos.append(step.prev_info)

    result = run_episode(env, actor, int(road_seed), max_steps=max_steps or None, on_step=keep)
    return Episode(
        images=np.stack(frames),
        labels=np.asarray(labels, dtype=np.float32)[:, None],
        actions=result.actions,
        info=_info_arrays(infos, info_keys),
        road_seed=int(road_seed),
        key=key,
        source=source,
        completed=not bool(result.lane_departure[-1]),
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


def _worker_init(config: CollectConfig, torch_threads: int, in_worker: bool = True) -> None:
    """Per-process setup: one env (renderer made inside the worker) and one expert."""
    if in_worker:  # Ctrl-C in a terminal reaches the whole group: the parent handles it and stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.clear()
    _WORKER["config"] = config
    _WORKER["env"] = make_env(config.env.id, config.env.kwargs)
    _WORKER["expert"] = make_expert(config.expert)
    _WORKER["torch_threads"] = torch_threads
    _WORKER["policies"] = {}


def _learner_agent(checkpoint: str) -> Any:
    policies = _WORKER["policies"]
    if checkpoint not in policies:
        # torch only where a learner runs: expert-only collection workers never import it
        import torch

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
        ``{"new_episodes", "skipped", "completed", "steps"}`` for the tasks run now, and ``"all_episodes"``,
        ``"all_completed"``, ``"all_steps"`` over every task (run now or before an interrupt; with
        ``finalize_totals`` after the run).
    """
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with FolderLock(out_dir):  # two collections (two trainings sharing demos.dir) never interleave
        return _run_tasks(out_dir, config, tasks, metadata, progress, desc, torch_threads)


def _run_tasks(
    out_dir: str | os.PathLike[str],
    config: CollectConfig,
    tasks: Sequence[EpisodeTask],
    metadata: Mapping[str, Any] | None,
    progress: bool,
    desc: str,
    torch_threads: int,
) -> dict[str, Any]:
    writer = DatasetWriter(out_dir, episodes_per_chunk=config.episodes_per_chunk, metadata=metadata)
    done = writer.keys
    todo = [t for t in tasks if t.key not in done]
    stats = {"new_episodes": 0, "skipped": len(tasks) - len(todo), "completed": 0, "steps": 0}
    wanted = {t.key for t in tasks}
    earlier = [e for c in writer.manifest["chunks"] for e in c["episodes"] if e["key"] in wanted]
    stats["all_episodes"] = len(earlier) + len(todo)
    stats["all_completed"] = sum(bool(e["completed"]) for e in earlier)
    stats["all_steps"] = sum(int(e["length"]) for e in earlier)
    if not todo:
        return stats
    bar = tqdm(total=len(todo), desc=desc, unit="ep", disable=not progress, dynamic_ncols=True)

    def record(ep: Episode) -> None:
        writer.add(ep)
        stats["new_episodes"] += 1
        stats["completed"] += int(ep.completed)
        stats["steps"] += ep.length
        stats["all_completed"] += int(ep.completed)
        stats["all_steps"] += ep.length
        bar.update(1)
        bar.set_postfix(steps=stats["steps"], clean=f"{stats['completed']}/{stats['new_episodes']}")

    try:
        if config.workers <= 1:
            _worker_init(config, torch_threads, in_worker=False)
            try:
                for task in todo:
                    record(_worker_run(task))
            finally:
                _WORKER["env"].close()
                _WORKER.clear()
        else:
            # spawn: the MuJoCo renderer must be created inside each worker, never inherited through fork.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(config.workers, initializer=_worker_init, initargs=(config, torch_threads)) as pool:
                for ep in pool.imap(_worker_run, todo):
                    record(ep)
        # Only a finished collection writes its last, partial chunk: after an interrupt the buffered
        # episodes are dropped and collected again on resume, so every chunk holds the same episodes as in
        # an uninterrupted collection and the files come out identical.
        writer.close()
    finally:
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
    out = Path(out_dir)
    if not resume and (out / MANIFEST_NAME).exists():
        raise FileExistsError(
            f"{out} already holds a dataset; pass --resume to continue it or pick a new folder"
        )
    meta = {"collect": to_dict(config)}
    return run_tasks(
        out, config, expert_tasks(config), metadata=meta, progress=progress, desc="collect demos"
    )
