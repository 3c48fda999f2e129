"""Batched lockstep evaluation equals the per-episode path: same actions (float tolerance), same metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltc_control.agents.episode import PolicyAgent, make_env, run_episode
from ltc_control.agents.lockstep import EpisodeJob, LockstepStats, replay_lockstep, run_lockstep
from ltc_control.agents.metrics import episode_metrics
from ltc_control.agents.perturbations import Perturbation
from ltc_control.policy import Policy, PolicyConfig

ENV = "LTC/LaneKeeping-v0"
KW = {"image_height": 16, "image_width": 32, "road_length": 10.0}


def test_lockstep_matches_run_episode() -> None:
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(image_shape=(16, 32, 3))).eval()
    jobs = [
        EpisodeJob(
            seed=100 + k % 3, perturbation=Perturbation(noise_variance=v, seed=1, brightness=b), tag=str(k)
        )
        for k, (v, b) in enumerate([(0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.2, 0.0), (0.2, -0.2)])
    ]
    jobs.append(EpisodeJob(seed=101, env_kwargs={"randomize_visuals": True}))  # a second env group
    stats = LockstepStats()
    states: dict[int, np.ndarray] = {}
    batched = run_lockstep(
        policy, ENV, jobs, env_kwargs=KW, num_envs=3, max_steps=60, states=states, stats=stats
    )
    assert stats.env_steps == sum(r.steps for r in batched)
    assert stats.policy_calls < stats.env_steps  # one call per step for all active episodes
    agent = PolicyAgent(policy)
    for i, job in enumerate(jobs):
        env = make_env(ENV, {**KW, **job.env_kwargs})
        try:
            ref = run_episode(env, agent, job.seed, noise=job.perturbation, max_steps=60)
        finally:
            env.close()
        got = batched[i]
        assert got.steps == ref.steps, job
        np.testing.assert_allclose(got.actions, ref.actions, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got.lateral_error, ref.lateral_error, atol=1e-6)
        m_got, m_ref = episode_metrics(got).to_dict(), episode_metrics(ref).to_dict()
        for key, value in m_ref.items():
            if isinstance(value, float):
                assert m_got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
            else:
                assert m_got[key] == value, key  # steps, departures, completed: exactly equal
        assert states[i].shape == (got.steps, policy.state_size)


def test_replay_lockstep_same_actions_on_same_frames() -> None:
    """On identical inputs the batched calls give the batch-1 actions to float32 tolerance."""
    torch.manual_seed(1)
    policy = Policy(PolicyConfig(image_shape=(16, 32, 3))).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (n, 16, 32, 3), dtype=np.uint8) for n in (7, 3, 5)]
    batched = replay_lockstep(policy, frames)
    for seq, got in zip(frames, batched):
        state = policy.reset(1)
        ref = []
        for frame in seq:
            action, state = policy.act(frame, state)
            ref.append(action)
        np.testing.assert_allclose(got, np.stack(ref), atol=1e-5, rtol=0)
