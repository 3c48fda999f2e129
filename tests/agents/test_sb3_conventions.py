"""The sb3 conventions users rely on, for every liquid policy class and variant (issue #16, part 3).

Variants: ``LtcPolicy`` with an NCP wiring, with a dense (fully connected) wiring and with no policy kwargs at
all (the documented defaults), its CfC variant (``controller={"kind": "cfc", ...}``) and ``CnnLtcPolicy`` on
a tiny camera env. For each: learning-rate and clip-range schedules (also through ``save`` / ``load``),
``VecNormalize`` (statistics saved and loaded), the ``model.save`` / ``RecurrentPPO.load`` round trip (same
actions, same recurrent state, training continues), ``evaluate_policy`` with episode starts,
``predict(state=..., episode_start=...)`` on a batch of envs, TensorBoard logging, ``CallbackList`` (with
``CheckpointCallback`` and ``EvalCallback``), ``SubprocVecEnv`` and ``DummyVecEnv``.

Every model is tiny (a few dozen env steps), so the whole file runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecNormalize,
    VecTransposeImage,
)

from ltc_control.agents.sb3 import CnnLtcPolicy, LtcPolicy
from ltc_control.agents.sb3_envs import CueMemoryEnv

SMALL_NCP = {
    "preset": "ncp",
    "inter": 6,
    "command": 4,
    "sensory_fanout": 2,
    "inter_fanout": 2,
    "recurrent_command_synapses": 3,
    "motor_fanin": 3,
}
SMALL_LTC = {"kind": "ltc", "ode_unfolds": 3, "wiring": SMALL_NCP}
DENSE_LTC = {"kind": "ltc", "ode_unfolds": 2, "wiring": {"preset": "fully_connected", "units": 10}}
SMALL_CFC = {"kind": "cfc", "wiring": SMALL_NCP}
SMALL_PERCEPTION = {
    "channels": (4, 8, 4),
    "kernels": (3, 3, 3),
    "strides": (2, 2, 1),
    "features_per_channel": 2,
}


class CameraEnv(gym.Env):  # type: ignore[type-arg]
    """A tiny seeded camera env: random uint8 frames, reward = the first action entry, 5-step episodes."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, shape=(24, 32, 3), dtype=np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._t = 0

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        self._t = 0
        return self._frame(), {}

    def step(self, action):  # type: ignore[override]
        self._t += 1
        return self._frame(), float(np.asarray(action).reshape(-1)[0]), self._t >= 5, False, {}


def _cue_env() -> gym.Env:  # type: ignore[type-arg]
    return CueMemoryEnv(delay=3, continuous=True)


# name -> (policy class, policy kwargs, env factory)
VARIANTS: dict[str, tuple[type[LtcPolicy], dict[str, Any] | None, Callable[[], gym.Env]]] = {  # type: ignore[type-arg]
    "ltc_ncp": (LtcPolicy, {"controller": SMALL_LTC}, _cue_env),
    "ltc_dense_lr_scale": (LtcPolicy, {"controller": DENSE_LTC, "controller_lr_scale": 3.0}, _cue_env),
    "ltc_defaults": (LtcPolicy, None, _cue_env),
    "ltc_state_readout": (LtcPolicy, {"controller": SMALL_LTC, "action_readout": "state"}, _cue_env),
    "cfc": (LtcPolicy, {"controller": SMALL_CFC, "critic": "shared"}, _cue_env),
    "cnn_ltc": (
        CnnLtcPolicy,
        {"controller": SMALL_LTC, "features_extractor_kwargs": {"perception": SMALL_PERCEPTION}},
        CameraEnv,
    ),
}
ALL = pytest.mark.parametrize("variant", list(VARIANTS))


def _venv(variant: str, n_envs: int = 2, seed: int = 0, **kwargs: Any) -> VecEnv:
    return make_vec_env(VARIANTS[variant][2], n_envs=n_envs, seed=seed, **kwargs)


def _model(variant: str, env: VecEnv, **kwargs: Any) -> RecurrentPPO:
    policy, policy_kwargs, _ = VARIANTS[variant]
    args: dict[str, Any] = dict(n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    args.update(kwargs)
    return RecurrentPPO(policy, env, policy_kwargs=policy_kwargs, **args)


def _observations(variant: str, n: int, seed: int = 7) -> list[np.ndarray]:
    env = VARIANTS[variant][2]()
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(n - 1):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    return out


def _rollout(model: RecurrentPPO, observations: list[np.ndarray]) -> tuple[np.ndarray, Any]:
    """Deterministic actions over a sequence with the state carried; the actions and the final state."""
    state, start, actions = None, np.ones((1,), dtype=bool), []
    for obs in observations:
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        actions.append(action)
        start = np.zeros((1,), dtype=bool)
    return np.stack(actions), state


class _Capture(KVWriter):
    """A logger output that keeps every dumped key/value row."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append(dict(key_values))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------- schedules
@ALL
def test_learning_rate_and_clip_range_schedules(variant: str, tmp_path: Path) -> None:
    """Linear lr and clip-range schedules (the Zoo's ``lin_1e-3`` / ``lin_0.2``) reach every optimizer group
    (``controller_lr_scale`` multiplies inside the step only) and survive save / load."""
    env = _venv(variant)
    model = _model(
        variant, env, learning_rate=LinearSchedule(1e-3, 0.0, 1.0), clip_range=LinearSchedule(0.2, 0.0, 1.0)
    )
    capture = _Capture()
    model.set_logger(Logger(None, [capture]))
    rollout = 8 * 2
    model.learn(3 * rollout)
    # train/* of update k is dumped before update k + 1: the updates at progress 2/3 and 1/3 are logged
    trained = [r for r in capture.rows if "train/learning_rate" in r]
    assert len(trained) == 2
    for row, progress in zip(trained, (2 / 3, 1 / 3)):
        assert row["train/learning_rate"] == pytest.approx(1e-3 * progress)
        assert row["train/clip_range"] == pytest.approx(0.2 * progress)
    # the last update ran at progress 0: every group's lr is the schedule's (scales are applied in step only)
    assert [g["lr"] for g in model.policy.optimizer.param_groups] == pytest.approx(
        [0.0] * len(model.policy.optimizer.param_groups)
    )
    if variant == "ltc_dense_lr_scale":
        assert sorted(g["lr_scale"] for g in model.policy.optimizer.param_groups) == [1.0, 3.0]
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.lr_schedule(0.5) == pytest.approx(5e-4) and loaded.clip_range(0.5) == pytest.approx(0.1)


def test_benchmark_config_accepts_zoo_schedules(load_bench: Callable[[str], Any]) -> None:
    """The benchmark's ``ppo`` section takes the Zoo's ``lin_<value>`` for the learning rate and clip range
    (CartPoleNoVel's entry: ``lin_0.001`` / ``lin_0.2``); bad strings fail with a clear error."""
    bench = load_bench("rl_bench")
    from ltc_control.config import from_dict

    ppo = from_dict(bench.PPOConfig, {"learning_rate": "lin_0.001", "clip_range": "lin_0.2", "n_envs": 2})
    config = bench.BenchmarkConfig(env_id="CartPoleNoVel-v1", ppo=ppo, models=("ltc",), timesteps=64)
    model = bench.make_model(config, "ltc", 0)
    assert model.clip_range(1.0) == pytest.approx(0.2) and model.clip_range(0.25) == pytest.approx(0.05)
    assert model.lr_schedule(0.5) == pytest.approx(5e-4)
    const = bench.make_model(bench.BenchmarkConfig(env_id="CartPoleNoVel-v1", models=("ltc",)), "ltc", 0)
    assert const.clip_range(0.1) == pytest.approx(0.2) and const.lr_schedule(0.1) == pytest.approx(1e-3)
    for bad in ("lin_", "linear_0.2", "lin_-0.2", "0.2x"):
        with pytest.raises(ValueError, match="lin_"):
            bench.PPOConfig(clip_range=bad)


# ------------------------------------------------------------------------------------- save / load
@ALL
def test_save_load_round_trip(variant: str, tmp_path: Path) -> None:
    """``model.save`` / ``RecurrentPPO.load``: the same deterministic actions and the same recurrent state
    over a sequence, the same class and kwargs, and training continues from the loaded model."""
    model = _model(variant, _venv(variant))
    model.learn(16)
    observations = _observations(variant, 6)
    actions, state = _rollout(model, observations)
    model.save(tmp_path / "m.zip")
    loaded = RecurrentPPO.load(tmp_path / "m.zip", env=_venv(variant, seed=1), device="cpu")
    assert type(loaded.policy) is type(model.policy)
    assert loaded.policy.controller_config == model.policy.controller_config
    actions2, state2 = _rollout(loaded, observations)
    np.testing.assert_array_equal(actions, actions2)
    for a, b in zip(state, state2):
        np.testing.assert_array_equal(a, b)
    loaded.learn(16, reset_num_timesteps=False)
    assert loaded.num_timesteps == 32


@ALL
def test_vecnormalize_statistics_save_and_load(variant: str, tmp_path: Path) -> None:
    """Training under ``VecNormalize`` (observations and rewards); saved statistics plus the saved model
    evaluate exactly like the originals on a fresh normalised env."""
    if variant == "cnn_ltc":  # sb3 normalises images itself (/255); VecNormalize skips image keys
        env = VecNormalize(_venv(variant), norm_obs=False, norm_reward=True)
    else:
        env = VecNormalize(_venv(variant), norm_obs=True, norm_reward=True)
    model = _model(variant, env)
    model.learn(32)
    assert model.get_vec_normalize_env() is env
    env.save(str(tmp_path / "stats.pkl"))
    model.save(tmp_path / "m.zip")

    def evaluate(m: RecurrentPPO, stats: VecNormalize) -> list[float]:
        stats.training, stats.norm_reward = False, False
        stats.seed(3)
        rewards, _ = evaluate_policy(
            m, stats, n_eval_episodes=3, deterministic=True, return_episode_rewards=True
        )
        return list(rewards)

    fresh = VecNormalize.load(str(tmp_path / "stats.pkl"), _venv(variant))
    if env.norm_obs:
        np.testing.assert_array_equal(fresh.obs_rms.mean, env.obs_rms.mean)
        np.testing.assert_array_equal(fresh.obs_rms.var, env.obs_rms.var)
    np.testing.assert_array_equal(fresh.ret_rms.var, env.ret_rms.var)
    loaded = RecurrentPPO.load(tmp_path / "m.zip", device="cpu")
    original = VecNormalize.load(str(tmp_path / "stats.pkl"), _venv(variant))
    assert evaluate(loaded, fresh) == evaluate(model, original)


# ----------------------------------------------------------------------------------- predict / evaluate
@ALL
def test_predict_carries_state_per_env_and_resets_at_episode_start(variant: str) -> None:
    """``predict`` on a batch of two envs: ``episode_start=[1, 0]`` resets env 0 only; env 1 keeps its state
    (its action equals a single-env rollout with the state carried)."""
    model = _model(variant, _venv(variant))
    obs = _observations(variant, 3)
    batch0, batch1 = np.stack([obs[0], obs[0]]), np.stack([obs[1], obs[1]])
    _, state = model.predict(batch0, episode_start=np.ones(2, dtype=bool), deterministic=True)
    assert state[0].shape == (1, 2, model.policy.lstm_actor.hidden_size)
    a1, state1 = model.predict(batch1, state=state, episode_start=np.array([True, False]), deterministic=True)
    fresh, fresh_state = model.predict(obs[1], deterministic=True)  # env 0: a new episode
    carried, carried_state = _rollout(model, obs[:2])  # env 1: obs[0] then obs[1]
    np.testing.assert_allclose(a1[0], fresh, atol=1e-6)
    np.testing.assert_allclose(a1[1], carried[-1], atol=1e-6)
    np.testing.assert_allclose(state1[0][:, 0], fresh_state[0][:, 0], atol=1e-6)
    np.testing.assert_allclose(state1[0][:, 1], carried_state[0][:, 0], atol=1e-6)
    assert not np.allclose(state1[0][:, 0], state1[0][:, 1])


@ALL
def test_evaluate_policy_resets_the_state_at_episode_starts(variant: str) -> None:
    """``evaluate_policy`` passes episode starts to a recurrent model: its returns equal a loop that starts
    every episode from a fresh state (``state=None``)."""
    model = _model(variant, _venv(variant))
    model.learn(16)
    env = _venv(variant, n_envs=1, seed=11)
    rewards, lengths = evaluate_policy(
        model, env, n_eval_episodes=3, deterministic=True, return_episode_rewards=True
    )
    env = _venv(variant, n_envs=1, seed=11)
    obs, expected = env.reset(), []
    for _ in range(3):
        state, total, done = None, 0.0, False
        while not done:
            action, state = model.predict(obs, state=state, deterministic=True)
            obs, reward, dones, _ = env.step(action)
            total, done = total + float(reward[0]), bool(dones[0])
        expected.append(total)
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    assert all(n >= 1 for n in lengths)


# ------------------------------------------------------------------------------ logging / callbacks
@ALL
def test_tensorboard_logging(variant: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    model = _model(variant, _venv(variant), tensorboard_log=str(tmp_path))
    model.learn(32, tb_log_name="liquid")
    files = list(tmp_path.glob("liquid_*/events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 0


@ALL
def test_callback_list_with_checkpoint_and_eval(variant: str, tmp_path: Path) -> None:
    """``CallbackList([CheckpointCallback, EvalCallback, custom])``: checkpoints load and predict, the
    evaluation ran, the custom callback saw every step."""

    class Count(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.steps, self.rollouts = 0, 0

        def _on_step(self) -> bool:
            self.steps += 1
            return True

        def _on_rollout_end(self) -> None:
            self.rollouts += 1

    count = Count()
    eval_env = _venv(variant, n_envs=1, seed=5)
    if variant == "cnn_ltc":  # the training env is transposed by RecurrentPPO; EvalCallback wants the same
        eval_env = VecTransposeImage(eval_env)
    evaluation = EvalCallback(eval_env, n_eval_episodes=2, eval_freq=8, log_path=str(tmp_path), verbose=0)
    checkpoints = CheckpointCallback(save_freq=8, save_path=str(tmp_path), name_prefix="ckpt")
    model = _model(variant, _venv(variant))
    model.learn(32, callback=CallbackList([checkpoints, evaluation, count]))
    assert count.steps == 16 and count.rollouts == 2  # 32 steps over 2 envs, 16-step rollouts
    saved = sorted(tmp_path.glob("ckpt_*_steps.zip"))
    assert len(saved) == 2
    obs = _observations(variant, 1)[0]
    action, _ = RecurrentPPO.load(saved[-1], device="cpu").predict(obs, deterministic=True)
    assert np.all(np.isfinite(action))
    assert len(evaluation.evaluations_results) == 2 and np.isfinite(evaluation.last_mean_reward)
    assert (tmp_path / "evaluations.npz").is_file()


# ------------------------------------------------------------------------------------- vectorised envs
@ALL
@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_vectorised_envs(variant: str, vec_env_cls: type[VecEnv]) -> None:
    kwargs: dict[str, Any] = {"start_method": "fork"} if vec_env_cls is SubprocVecEnv else {}
    env = _venv(variant, n_envs=3, vec_env_cls=vec_env_cls, vec_env_kwargs=kwargs)
    try:
        model = _model(variant, env, batch_size=12)
        model.learn(48)
        assert model.num_timesteps == 48
        obs = env.reset()
        actions, state = model.predict(obs, episode_start=np.ones(3, dtype=bool), deterministic=True)
        assert actions.shape == (3, *model.action_space.shape) and state[0].shape[1] == 3
    finally:
        env.close()
