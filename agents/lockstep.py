"""Batched closed-loop evaluation: many episodes driven in lockstep by one policy call per step.

:func:`run_episode` (``ltc_control.agents.episode``) drives one episode with one batch-1 policy call per
control step. :func:`run_lockstep` keeps ``num_envs`` environments in one process, steps them back to back
and makes **one** perception and controller call per step for all of them: the camera frames of the active
episodes are stacked into a batch ``(B, H, W, 3)``, the recurrent states into ``(B, state_size)``. When an
episode ends, its slot takes the next episode of the queue (its env is reset and its state row zeroed), so
the batch stays full until the queue runs dry.

Every episode follows exactly the protocol of :func:`run_episode`: ``env.reset(seed=road_seed)``, the
perturbation of step ``t`` seeded by ``(noise seed, road seed, t)``, the action clipped to the action space,
the same ``max_steps`` cap and the same per-step records, so :func:`episode_metrics` gives the same numbers.
The only difference is numerical: a batched convolution may round differently from a batch-1 one (actions
agree to float32 tolerance; ``tests/study/test_lockstep.py`` holds the two paths equal).

Episodes with different env settings (e.g. the randomised-visuals env next to the plain one) are given as
separate :class:`EpisodeJob` ``env_key`` groups: each group runs in lockstep with its own envs.

Example:
    >>> from ltc_control.agents.lockstep import EpisodeJob, run_lockstep
    >>> jobs = [EpisodeJob(seed=s) for s in range(100_000, 100_008)]
    >>> results = run_lockstep(policy, "LTC/LaneKeeping-v0", jobs, env_kwargs={"road_length": 100.0})
    ... # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ltc_control.agents.episode import EpisodeResult, info_float, info_xy, make_env, torch_threads
from ltc_control.agents.perturbations import Perturbation

__all__ = ["EpisodeJob", "LockstepStats", "replay_lockstep", "run_lockstep", "run_lockstep_parallel"]


@dataclass(frozen=True)
class EpisodeJob:
    """One closed-loop episode to drive.

    Attributes:
        seed: road seed for ``env.reset(seed=seed)`` (also seeds the perturbation).
        perturbation: what is done to each camera frame (noise variance, brightness, blur, occlusion).
        env_kwargs: extra env keyword arguments for this episode (merged over the common ones); episodes
            with equal extra arguments share envs and run in lockstep together.
        tag: free label carried into the result (e.g. the condition name).
    """

    seed: int
    perturbation: Perturbation = field(default_factory=Perturbation)
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    tag: str = ""

    def __post_init__(self) -> None:
        if int(self.seed) < 0:
            raise ValueError(f"EpisodeJob.seed must be >= 0, got {self.seed}")

    @property
    def env_key(self) -> str:
        """Canonical text of ``env_kwargs``: the group this episode runs in."""
        return repr(sorted((str(k), repr(v)) for k, v in self.env_kwargs.items()))


@dataclass
class LockstepStats:
    """Counters of a :func:`run_lockstep` call.

    Attributes:
        env_steps: environment steps taken (all episodes).
        policy_calls: batched policy calls made.
        seconds: wall-clock time of the call.
        policy_seconds: time spent in the policy calls (perception + controller + action head).
        env_seconds: time spent in ``env.step`` / ``env.reset`` (physics and camera rendering).
        perturb_seconds: time spent perturbing the frames.
    """

    env_steps: int = 0
    policy_calls: int = 0
    seconds: float = 0.0
    policy_seconds: float = 0.0
    env_seconds: float = 0.0
    perturb_seconds: float = 0.0

    def add(self, other: LockstepStats) -> None:
        """Accumulate ``other`` into this one."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Slot:
    """One env and the per-step records of the episode it is driving."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.job: EpisodeJob | None = None
        self.index = -1
        self.obs: Any = None
        self.info: Mapping[str, Any] = {}
        self.step = 0
        self.rec: dict[str, list[Any]] = {}
        self.states: list[np.ndarray] = []
        self.start_distance = 0.0
        self.road_length = float("nan")

    def start(self, job: EpisodeJob, index: int) -> None:
        self.job, self.index, self.step = job, index, 0
        self.obs, self.info = self.env.reset(seed=int(job.seed))
        sd = info_float(self.info, "distance")
        self.start_distance = 0.0 if math.isnan(sd) else sd
        self.road_length = info_float(self.info, "road_length")
        self.rec = {k: [] for k in ("lat", "steer", "act", "speed", "dist", "pos", "rew", "dep")}
        self.states = []

    def result(self, terminated: bool, truncated: bool) -> EpisodeResult:
        assert self.job is not None
        r = self.rec
        road_length = self.road_length
        if math.isnan(road_length):
            road_length = info_float(self.info, "road_length")
        return EpisodeResult(
            seed=int(self.job.seed),
            lateral_error=np.asarray(r["lat"], dtype=np.float64),
            steering=np.asarray(r["steer"], dtype=np.float64),
            actions=np.stack(r["act"]).astype(np.float32),
            speed=np.asarray(r["speed"], dtype=np.float64),
            distance=np.asarray(r["dist"], dtype=np.float64),
            positions=np.asarray(r["pos"], dtype=np.float64).reshape(-1, 2),
            rewards=np.asarray(r["rew"], dtype=np.float64),
            lane_departure=np.asarray(r["dep"], dtype=bool),
            start_distance=self.start_distance,
            road_length=road_length,
            terminated=terminated,
            truncated=truncated,
            noise_variance=self.job.perturbation.noise_variance,
        )


def _state_rows(state: Any) -> np.ndarray:
    return np.asarray(state.detach().float().cpu().numpy())


def _run_group(
    policy: Any,
    env_factory: Callable[[], Any],
    jobs: Sequence[tuple[int, EpisodeJob]],
    num_envs: int,
    max_steps: int | None,
    record_states: bool,
    out: dict[int, EpisodeResult],
    states_out: dict[int, np.ndarray],
    stats: LockstepStats,
    on_episode: Callable[[int, EpisodeResult], None] | None,
) -> None:
    import torch

    queue = list(jobs)
    n_slots = min(num_envs, len(queue))
    slots: list[_Slot] = []
    try:
        t0 = time.perf_counter()
        for _ in range(n_slots):
            slots.append(_Slot(env_factory()))
        space = slots[0].env.action_space
        shape = tuple(space.shape) if getattr(space, "shape", None) is not None else None
        low = np.asarray(space.low, dtype=np.float32).reshape(-1) if hasattr(space, "low") else None
        high = np.asarray(space.high, dtype=np.float32).reshape(-1) if hasattr(space, "high") else None
        state = policy.reset(n_slots)
        zero_row = policy.reset(1)[0]
        active: list[int] = []
        for k, slot in enumerate(slots):
            index, job = queue.pop(0)
            slot.start(job, index)
            active.append(k)
        stats.env_seconds += time.perf_counter() - t0
        while active:
            t0 = time.perf_counter()
            frames = []
            for k in active:
                cur = slots[k].job
                assert cur is not None
                frames.append(cur.perturbation.apply(slots[k].obs, cur.seed, slots[k].step))
            seen = np.stack(frames)
            t1 = time.perf_counter()
            stats.perturb_seconds += t1 - t0
            idx = torch.as_tensor(active, dtype=torch.long)
            full = len(active) == n_slots
            with torch.no_grad():
                actions, new_state = policy.act(seen, state if full else state.index_select(0, idx))
            if full:
                state = new_state
            else:
                state = state.clone()
                state.index_copy_(0, idx, new_state)
            t2 = time.perf_counter()
            stats.policy_seconds += t2 - t1
            stats.policy_calls += 1
            actions = np.asarray(actions, dtype=np.float32).reshape(len(active), -1)
            if not np.all(np.isfinite(actions)):
                raise ValueError(f"the policy returned a non-finite action in a lockstep batch: {actions}")
            rows = _state_rows(new_state) if record_states else None
            still: list[int] = []
            for j, k in enumerate(active):
                slot = slots[k]
                action = actions[j]
                if shape is not None and action.shape != (int(np.prod(shape)),):
                    raise ValueError(
                        f"the policy returned actions of width {action.shape[0]}, but the env's action space "
                        f"has shape {shape}; make the policy's output size match the env"
                    )
                if low is not None and high is not None:
                    action = np.clip(action, low, high)
                env_action = action.reshape(shape) if shape is not None else action
                obs, reward, terminated, truncated, info = slot.env.step(env_action)
                terminated, truncated = bool(terminated), bool(truncated)
                if max_steps is not None and slot.step + 1 >= max_steps and not terminated:
                    truncated = True
                r = slot.rec
                r["lat"].append(info_float(info, "lateral_offset"))
                r["steer"].append(float(action[0]))
                r["act"].append(action)
                r["speed"].append(info_float(info, "speed"))
                r["dist"].append(info_float(info, "distance"))
                r["pos"].append(info_xy(info))
                r["rew"].append(float(reward))
                r["dep"].append(bool(info.get("lane_departure", False)))
                if rows is not None:
                    slot.states.append(rows[j])
                slot.obs, slot.info = obs, info
                slot.step += 1
                stats.env_steps += 1
                if terminated or truncated:
                    res = slot.result(terminated, truncated)
                    out[slot.index] = res
                    if record_states:
                        states_out[slot.index] = np.stack(slot.states)
                    if on_episode is not None:
                        on_episode(slot.index, res)
                    if queue:
                        index, job = queue.pop(0)
                        slot.start(job, index)
                        state = state.clone()
                        state[k] = zero_row
                        still.append(k)
                else:
                    still.append(k)
            active = still
            stats.env_seconds += time.perf_counter() - t2
    finally:
        for slot in slots:
            slot.env.close()


def run_lockstep(
    policy: Any,
    env_id: str,
    jobs: Sequence[EpisodeJob],
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    num_envs: int = 16,
    max_steps: int | None = None,
    states: dict[int, np.ndarray] | None = None,
    threads: int = 1,
    stats: LockstepStats | None = None,
    on_episode: Callable[[int, EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Drive ``jobs`` in lockstep with one batched policy call per control step.

    Args:
        policy: an ``ltc_control.policy.Policy`` (``act(obs (B, H, W, 3), state (B, S))`` and ``reset(B)``).
        env_id: Gymnasium env id.
        jobs: the episodes (road seed, perturbation, per-episode env arguments).
        env_kwargs: env keyword arguments common to every episode.
        num_envs: environments (batch rows) kept per env group; a finished episode's slot takes the next one.
        max_steps: per-episode step cap (None: until the env ends the episode).
        states: when given, filled with job index -> that episode's recurrent states after every step
            ``(T, state_size)`` (for PCA and Lipschitz profiles).
        threads: torch intra-op threads for the policy calls.
        stats: counters to add this call's numbers to (env steps, policy calls, time split).
        on_episode: called with ``(job index, result)`` when an episode ends (progress bars).

    Returns:
        One :class:`EpisodeResult` per job, in job order.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if not jobs:
        raise ValueError("run_lockstep() needs at least one EpisodeJob")
    groups: dict[str, list[tuple[int, EpisodeJob]]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.env_key, []).append((i, job))
    out: dict[int, EpisodeResult] = {}
    states_out: dict[int, np.ndarray] = states if states is not None else {}
    record_states = states is not None
    local = LockstepStats()
    start = time.perf_counter()
    if hasattr(policy, "eval"):
        policy.eval()
    with torch_threads(threads):
        for group in groups.values():
            kwargs = {**dict(env_kwargs or {}), **dict(group[0][1].env_kwargs)}

            def factory(kw: dict[str, Any] = kwargs) -> Any:
                return make_env(env_id, kw)

            _run_group(
                policy, factory, group, num_envs, max_steps, record_states, out, states_out, local, on_episode
            )
    local.seconds = time.perf_counter() - start
    if stats is not None:
        stats.add(local)
    return [out[i] for i in range(len(jobs))]


def _parallel_worker(
    checkpoint: str,
    env_id: str,
    jobs: list[EpisodeJob],
    env_kwargs: dict[str, Any],
    num_envs: int,
    max_steps: int | None,
    threads: int,
) -> tuple[list[EpisodeResult], LockstepStats]:
    import torch

    from ltc_control.checkpoint import load_checkpoint

    torch.set_num_threads(max(1, threads))
    policy, _ = load_checkpoint(checkpoint)
    stats = LockstepStats()
    results = run_lockstep(
        policy,
        env_id,
        jobs,
        env_kwargs=env_kwargs,
        num_envs=num_envs,
        max_steps=max_steps,
        threads=threads,
        stats=stats,
    )
    return results, stats


def run_lockstep_parallel(
    checkpoint: str,
    env_id: str,
    jobs: Sequence[EpisodeJob],
    *,
    workers: int = 2,
    env_kwargs: Mapping[str, Any] | None = None,
    num_envs: int = 16,
    max_steps: int | None = None,
    threads: int = 1,
) -> tuple[list[EpisodeResult], LockstepStats]:
    """:func:`run_lockstep` split over ``workers`` spawned processes (each loads ``checkpoint`` itself).

    Jobs are dealt round-robin to the workers, each of which drives its share in lockstep.

    Returns:
        The results in job order and the summed counters (``seconds`` = this call's wall time).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    start = time.perf_counter()
    shares = [list(range(k, len(jobs), workers)) for k in range(workers)]
    shares = [s for s in shares if s]
    out: dict[int, EpisodeResult] = {}
    total = LockstepStats()
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(shares), mp_context=ctx) as pool:
        futures = [
            (
                share,
                pool.submit(
                    _parallel_worker,
                    str(checkpoint),
                    env_id,
                    [jobs[i] for i in share],
                    dict(env_kwargs or {}),
                    num_envs,
                    max_steps,
                    threads,
                ),
            )
            for share in shares
        ]
        for share, fut in futures:
            results, stats = fut.result()
            total.add(stats)
            out.update(zip(share, results))
    total.seconds = time.perf_counter() - start
    return [out[i] for i in range(len(jobs))], total


def replay_lockstep(policy: Any, frames: Sequence[np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Open loop: feed recorded frame sequences through the policy with one batched call per step.

    The same batching as :func:`run_lockstep` (all sequences still running at step ``t`` in one call, states
    carried per row) on fixed inputs, so its actions can be compared with a batch-1 run on the same frames
    (closed loops can drift apart once a last-bit difference flips a rendered pixel).

    Args:
        policy: the policy.
        frames: one uint8 ``(T_i, H, W, 3)`` array per episode.
        threads: torch intra-op threads.

    Returns:
        One float32 ``(T_i, A)`` action array per episode.
    """
    import torch

    n = len(frames)
    lengths = [len(f) for f in frames]
    out: list[list[np.ndarray]] = [[] for _ in range(n)]
    state = policy.reset(n)
    with torch_threads(threads), torch.no_grad():
        for t in range(max(lengths, default=0)):
            rows = [i for i in range(n) if t < lengths[i]]
            idx = torch.as_tensor(rows, dtype=torch.long)
            obs = np.stack([frames[i][t] for i in rows])
            actions, new_state = policy.act(obs, state.index_select(0, idx))
            state = state.clone()
            state.index_copy_(0, idx, new_state)
            for j, i in enumerate(rows):
                out[i].append(np.asarray(actions[j], dtype=np.float32))
    return [np.stack(a) if a else np.zeros((0, policy.action_size), np.float32) for a in out]
