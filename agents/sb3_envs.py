"""Partially observed benchmark envs in the style of the RL Zoo's "NoVel" tasks, and a tiny memory task.

- :class:`MaskVelocity`: a Gymnasium ``ObservationWrapper`` that keeps only the position-like entries of the
  observation (velocities removed), so a policy must infer velocities from the history: a memory task.
- :func:`make_novel_env`: ``"PendulumNoVel-v1"`` -> ``Pendulum-v1`` with ``thetadot`` removed, etc.
- :class:`PendulumPixels`: ``Pendulum-v1`` seen as a small grayscale frame (``"PendulumPixels-v1"``): one
  frame shows the angle, not the angular velocity, so the image task is partially observed too.
- :class:`CueMemoryEnv`: a seconds-fast memory task for tests (a cue shown only at the first step decides
  which action pays at the last step).

No sb3 import here (Gymnasium only), so the wrappers are usable outside RL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "NOVEL_MASKS",
    "PIXEL_TASKS",
    "CueMemoryEnv",
    "HalfCheetahV5",
    "MaskVelocity",
    "PendulumPixels",
    "make_novel_env",
    "novel_base_id",
]

#: Observation entries kept for each base env (positions / angles only; velocities dropped).
#: Pendulum-v1: [cos, sin, thetadot] -> [cos, sin]. Acrobot-v1: the cos / sin of both joint angles.
#: InvertedPendulum-v5: [cart x, pole angle, their velocities] -> [cart x, pole angle]. Reacher-v5: the two
#: joint velocities (entries 6, 7) dropped; cos / sin of the joints, the target and fingertip - target kept.
#: InvertedDoublePendulum-v5: [cart x, sin of both hinges, cos of both hinges] kept; the 3 velocities and the
#: cart's constraint force (entry 8) dropped.
#: MuJoCo v5 envs (default observation, x excluded):
#: ``qpos[1:]`` first, then ``qvel``: the kept entries are the ``nq - 1`` positions (``nq - 2`` for Swimmer /
#: HalfCheetah-like planar bodies is not needed: their ``qpos`` excludes only x).
NOVEL_MASKS: dict[str, tuple[int, ...]] = {
    "Pendulum-v1": (0, 1),
    "CartPole-v1": (0, 2),
    "MountainCarContinuous-v0": (0,),
    "MountainCar-v0": (0,),
    "Acrobot-v1": (0, 1, 2, 3),
    "LunarLander-v3": (0, 1, 4, 6, 7),
    "HalfCheetah-v5": tuple(range(8)),
    "InvertedPendulum-v5": (0, 1),
    "Reacher-v5": (0, 1, 2, 3, 4, 5, 8, 9),
    "Hopper-v5": tuple(range(5)),
    "Walker2d-v5": tuple(range(8)),
    "Swimmer-v5": tuple(range(3)),
    "InvertedDoublePendulum-v5": (0, 1, 2, 3, 4),
    "Ant-v5": tuple(range(13)),
}

#: Image tasks: id -> (base env id, frame side in pixels). 40 px: a small side that RecurrentPPO's default
#: CNN (sb3's NatureCNN: 8x8 stride 4, 4x4 stride 2, 3x3) accepts with a margin (it needs >= 36).
PIXEL_TASKS: dict[str, tuple[str, int]] = {"PendulumPixels-v1": ("Pendulum-v1", 40)}


class MaskVelocity(gym.ObservationWrapper):  # type: ignore[type-arg]
    """Keeps only the observation entries listed in ``keep`` (velocities removed).

    Args:
        env: env with a 1-D ``Box`` observation space.
        keep: indices of the entries to keep; default :data:`NOVEL_MASKS` for the env's id.

    Raises:
        ValueError: a non-1-D-Box observation space, no known mask for the env (pass ``keep``), indices out of
            range or repeated.
    """

    def __init__(self, env: gym.Env, keep: Sequence[int] | None = None) -> None:  # type: ignore[type-arg]
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(
                f"MaskVelocity needs a 1-D Box observation space, got {space}; flatten the observation first"
            )
        if keep is None:
            env_id = env.spec.id if env.spec is not None else None
            if env_id not in NOVEL_MASKS:
                raise ValueError(
                    f"no velocity mask known for env {env_id!r}; pass keep=[indices of position entries] "
                    f"(known: {', '.join(sorted(NOVEL_MASKS))})"
                )
            keep = NOVEL_MASKS[env_id]
        idx = np.asarray(list(keep), dtype=np.int64)
        n = int(space.shape[0])
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n or len(set(idx.tolist())) != idx.size:
            raise ValueError(f"keep must be distinct indices in [0, {n}), got {list(keep)}")
        self.keep = idx
        self.observation_space = spaces.Box(
            low=space.low[idx].astype(space.dtype),
            high=space.high[idx].astype(space.dtype),
            shape=(idx.size,),
            dtype=space.dtype,  # type: ignore[arg-type]
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Full observation ``(D,)`` -> kept entries ``(len(keep),)``."""
        return np.asarray(observation)[self.keep]


class PendulumPixels(gym.ObservationWrapper):  # type: ignore[type-arg]
    """``Pendulum-v1`` observed as a grayscale frame ``(size, size, 1)`` uint8 of the rod (from the state).

    The pivot is at the frame's centre, the rod (white on black, anti-aliased, sub-pixel end points) points up
    at angle 0 and turns counter-clockwise with the env's ``theta``, as Gymnasium's own renderer shows it. The
    frame is drawn from the state with OpenCV (no window, no OpenGL), so it costs microseconds; a single frame
    fixes the angle but not the angular velocity, which the policy must infer from the sequence (a memory
    task, like ``PendulumNoVel-v1``).

    Args:
        env: a ``Pendulum-v1`` env (its unwrapped env has ``state = [theta, thetadot]``).
        size: frame side in pixels (>= 16).
    """

    def __init__(self, env: gym.Env, size: int = 40) -> None:  # type: ignore[type-arg]
        if int(size) != size or size < 16:
            raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
        state = getattr(env.unwrapped, "state", None)
        if not hasattr(env.unwrapped, "max_torque") or (state is not None and np.size(state) != 2):
            spec = getattr(env, "spec", None)
            raise ValueError(
                f"PendulumPixels wraps a Pendulum-v1 env (state = [theta, thetadot]), got "
                f"{spec.id if spec is not None else type(env.unwrapped).__name__}"
            )
        super().__init__(env)
        self.size = int(size)
        self.observation_space = spaces.Box(0, 255, shape=(self.size, self.size, 1), dtype=np.uint8)

    def frame(self, theta: float) -> np.ndarray:
        """The frame ``(size, size, 1)`` uint8 for angle ``theta`` (radians, 0 = up)."""
        import cv2

        s = self.size
        img = np.zeros((s, s), dtype=np.uint8)
        centre = s / 2.0
        length = 0.4 * s
        scale = 16  # cv2's shift=4: end points in 1/16 pixel
        x = centre - length * np.sin(theta)  # theta grows counter-clockwise, as in Gymnasium's renderer
        y = centre - length * np.cos(theta)
        p0 = (int(round(centre * scale)), int(round(centre * scale)))
        p1 = (int(round(x * scale)), int(round(y * scale)))
        cv2.line(img, p0, p1, 255, max(2, s // 12), cv2.LINE_AA, shift=4)
        return img[..., None]

    def observation(self, observation: np.ndarray) -> np.ndarray:
        theta = float(np.asarray(self.env.unwrapped.state).reshape(-1)[0])  # type: ignore[attr-defined]
        return self.frame(theta)


def novel_base_id(env_id: str) -> str:
    """``"PendulumNoVel-v1"`` -> ``"Pendulum-v1"`` (ids without ``NoVel`` are returned unchanged)."""
    return env_id.replace("NoVel", "")


def make_novel_env(env_id: str, rescale_actions: bool = True, **kwargs: Any) -> gym.Env:  # type: ignore[type-arg]
    """Make a partially observed env: ``"<Base>NoVel-vN"`` masks velocities of ``"<Base>-vN"``; an id of
    :data:`PIXEL_TASKS` (``"PendulumPixels-v1"``) shows its base env as a grayscale frame.

    Args:
        env_id: e.g. ``"PendulumNoVel-v1"``, ``"HalfCheetahNoVel-v5"``; an id without ``NoVel`` is made
        plainly. rescale_actions: rescale a ``Box`` action space to [-1, 1] (the same for every model, so that
        a tanh
            action head and an unbounded Gaussian see the same scale).
        **kwargs: passed to ``gymnasium.make``.

    Returns:
        The env.
    """
    if env_id in PIXEL_TASKS:
        pixel_base, size = PIXEL_TASKS[env_id]
        env: gym.Env = PendulumPixels(_make_base(pixel_base, **kwargs), size=size)  # type: ignore[type-arg]
    else:
        env = _make_base(novel_base_id(env_id), **kwargs)
    base = novel_base_id(env_id)
    if "NoVel" in env_id:
        env = MaskVelocity(env, keep=NOVEL_MASKS.get(base))
    if rescale_actions and isinstance(env.action_space, spaces.Box):
        low, high = env.action_space.low, env.action_space.high
        if not (np.all(low == -1.0) and np.all(high == 1.0)):
            ones = np.ones(env.action_space.shape, dtype=env.action_space.dtype)
            env = gym.wrappers.RescaleAction(env, -ones, ones)
    return env


class CueMemoryEnv(gym.Env):  # type: ignore[type-arg]
    """A memory task solvable in a few thousand steps: remember a cue over a short delay.

    At ``t = 0`` the observation shows a cue ``c in {-1, +1}`` (first entry); for the next ``delay`` steps it
    is 0, and a second entry tells the agent that the answer step has come (1 at the last step). Actions:
    ``Discrete(2)`` (answer 0 means -1, 1 means +1) or ``Box(-1, 1, (1,))`` (the sign is the answer). Only the
    last step is rewarded: +1 for the right answer, -1 for the wrong one (so an agent without memory averages
    0 and a perfect one scores 1).

    Args:
        delay: steps between the cue and the answer step (>= 1).
        continuous: Box actions instead of Discrete.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, delay: int = 3, continuous: bool = False) -> None:
        if delay < 1:
            raise ValueError(f"delay must be >= 1, got {delay}")
        self.delay = int(delay)
        self.continuous = bool(continuous)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space: spaces.Space[Any] = (
            spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32) if continuous else spaces.Discrete(2)
        )
        self._cue = 1.0
        self._t = 0

    def _obs(self) -> np.ndarray:
        cue = self._cue if self._t == 0 else 0.0
        ask = 1.0 if self._t == self.delay else 0.0
        return np.array([cue, ask], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._cue = 1.0 if self.np_random.random() < 0.5 else -1.0
        self._t = 0
        return self._obs(), {"cue": self._cue}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._t < self.delay:
            self._t += 1
            return self._obs(), 0.0, False, False, {"cue": self._cue}
        if self.continuous:
            answer = 1.0 if float(np.asarray(action).reshape(-1)[0]) >= 0.0 else -1.0
        else:
            answer = 1.0 if int(np.asarray(action).reshape(-1)[0]) == 1 else -1.0
        reward = 1.0 if answer == self._cue else -1.0
        return self._obs(), reward, True, False, {"cue": self._cue}


class HalfCheetahV5(gym.Env):  # type: ignore[type-arg]
    """``HalfCheetah-v5`` dynamics, reward and observation on Gymnasium's shipped ``half_cheetah.xml``.

    :func:`make_novel_env` makes ``HalfCheetah-v5`` (with no kwargs) with this class, which reproduces
    Gymnasium's v5 env step for step (tested) without rendering and without the XML's deprecated
    ``settotalmass`` warning (which MuJoCo also appends to ``MUJOCO_LOG.TXT`` in the working directory):
    frame skip 5, reward ``x_velocity - 0.1 * |action|^2``, observation ``[qpos[1:], qvel]`` (17 entries),
    reset noise ``U(-0.1, 0.1)`` on ``qpos`` and ``0.1 * N(0, 1)`` on ``qvel``, 1000-step limit (added by
    :func:`make_novel_env`), never terminates.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        import mujoco

        xml = Path(gym.__file__).resolve().parent / "envs" / "mujoco" / "assets" / "half_cheetah.xml"
        if not xml.is_file():
            raise FileNotFoundError(f"Gymnasium's half_cheetah.xml is missing at {xml}; reinstall gymnasium")
        self._mj = mujoco
        # MuJoCo 4 deprecates the XML's settotalmass (a warning plus MUJOCO_LOG.TXT in the working directory
        # on every env): drop it and rescale after compiling, which gives bit-identical masses and inertias.
        text = xml.read_text()
        match = re.search(r'\s+settotalmass="([^"]+)"', text)
        self.model = mujoco.MjModel.from_xml_string(text.replace(match.group(0), "") if match else text)
        self.data = mujoco.MjData(self.model)
        if match:
            mujoco.mj_setTotalmass(self.model, float(match.group(1)))
            mujoco.mj_setConst(self.model, self.data)
        self.frame_skip = 5
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        self.metadata = {"render_modes": [], "render_fps": int(np.round(1.0 / self.dt))}
        self.init_qpos = self.data.qpos.ravel().copy()
        self.init_qvel = self.data.qvel.ravel().copy()
        low, high = self.model.actuator_ctrlrange.copy().astype(np.float32).T
        self.action_space = spaces.Box(low=low, high=high, dtype=np.float32)
        n = self.model.nq + self.model.nv - 1
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(n,), dtype=np.float64)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos.flat[1:], self.data.qvel.flat]).astype(np.float64)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._mj.mj_resetData(self.model, self.data)
        qpos = self.init_qpos + self.np_random.uniform(-0.1, 0.1, size=self.model.nq)
        qvel = self.init_qvel + 0.1 * self.np_random.standard_normal(self.model.nv)
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self._mj.mj_forward(self.model, self.data)
        return self._obs(), {"x_position": float(self.data.qpos[0])}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a}")
        x_before = float(self.data.qpos[0])
        self.data.ctrl[:] = a
        self._mj.mj_step(self.model, self.data, nstep=self.frame_skip)
        self._mj.mj_rnePostConstraint(self.model, self.data)
        x_after = float(self.data.qpos[0])
        x_velocity = (x_after - x_before) / self.dt
        ctrl_cost = 0.1 * float(np.sum(np.square(a)))
        reward = x_velocity - ctrl_cost
        info = {
            "x_position": x_after,
            "x_velocity": x_velocity,
            "reward_forward": x_velocity,
            "reward_ctrl": -ctrl_cost,
        }
        return self._obs(), reward, False, False, info


def _make_base(env_id: str, **kwargs: Any) -> gym.Env:  # type: ignore[type-arg]
    if env_id == "HalfCheetah-v5" and not kwargs:
        # Always the re-implementation (step for step Gymnasium's env, tested): the suite's records were made
        # with it, and it spares MuJoCo's settotalmass warning and MUJOCO_LOG.TXT on every env.
        return gym.wrappers.TimeLimit(HalfCheetahV5(), max_episode_steps=1000)
    try:
        return gym.make(env_id, **kwargs)
    except ModuleNotFoundError as exc:
        if exc.name == "imageio":
            raise ModuleNotFoundError(
                f"{env_id}: Gymnasium's MuJoCo envs import imageio, which is missing; reinstall ltc-control "
                "(pip install -e .), whose dependencies include it",
                name="imageio",
            ) from exc
        raise
