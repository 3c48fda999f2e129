"""``LTC/LaneKeeping-v0``: a MuJoCo car on a procedurally generated road, seen through a dash camera.

See :class:`LaneKeepingEnv` and ``docs/envs.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from .render import OffscreenRenderer
from .road import Road, RoadGenerationConfig, Segment, wrap_angle
from .scene import CAR, VisualRandomization, Visuals, build_model

__all__ = ["LaneKeepingEnv", "STATE_FEATURES"]

#: Names of the entries of the privileged state vector (``observation="state"`` / the ``"state"`` key).
STATE_FEATURES: tuple[str, ...] = (
    "lateral_offset",
    "heading_error",
    "speed",
    "yaw_rate",
    "steering",
    "curvature",
)

_OBSERVATIONS = ("image", "state", "dict")
_RENDER_CAMERAS = ("chase", "top", "dash")
_RESET_OPTIONS = ("road_seed", "road", "visuals", "initial_lateral", "initial_heading")
_START_S = 5.0  # where the car starts on the centre line (m): leaves some road behind it for the chase camera
_VIEW_MARGIN = 40.0  # road generated beyond the finish (m) so the camera and the look-ahead always see road


class LaneKeepingEnv(gym.Env[Any, NDArray[np.float32]]):
    """Lane keeping with a MuJoCo car on a road generated from the episode seed.

    **Vehicle.** A compact car (``assets/car.xml``: wheelbase 2.6 m, track 1.55 m, wheel radius 0.31 m,
    about 1,150 kg) with four wheels in frictional contact with the ground, Ackermann-steered front wheels
    driven by position servos, and rear-wheel drive through velocity servos: all motion comes from MuJoCo's
    dynamics. The steering command is rate-limited to ``max_steer_rate`` and limited to ``max_steer`` = 0.5
    rad (bicycle-model angle). Speed is held at ``target_speed`` by the drive servos; with ``throttle=True``
    the second action sets the speed set-point instead (``-1`` = stop, ``+1`` = ``max_speed``, linear in
    between).

    **Road.** Two right-hand-traffic lanes of ``lane_width`` metres; the car drives in the right lane and
    every lateral quantity is measured from that lane's centre, which is ``env.unwrapped.road``'s centre line.
    Each episode's road comes from a road seed: ``options["road_seed"]`` if given, else the ``reset`` seed
    itself (``reset(seed=k)`` always drives road ``k``, i.e. ``Road.generate(k, env.road_config)``), else a
    seed drawn from the env's generator. Roads have a 12 m straight lead-in, then arcs with curvature
    ``|k|`` in ``curvature_range`` (random direction) joined by linear curvature ramps and straights;
    ``road_segments`` (or ``options["road"]``) gives a hand-built road.

    **Observation.** ``observation="image"``: the dash camera, uint8 ``(image_height, image_width, 3)``
    (default 64 x 128: about the pixel count of CarRacing's 96 x 96 with the wide aspect of the NCP paper's
    78 x 200 camera). ``"state"``: float32 vector of :data:`STATE_FEATURES` followed by the curvature at each
    look-ahead distance (no rendering). ``"dict"``: ``{"image": ..., "state": ...}``.

    **Action.** ``Box(-1, 1, (1,))`` normalised steering (+ = left, fraction of ``max_steer``), or ``(2,)``
    with ``throttle=True``. Out-of-range values are clipped to [-1, 1]; non-finite values or a wrong size
    raise ``ValueError``. Each action is held for ``1 / control_hz`` s (``frame_skip`` physics steps).

    **Reward.** ``progress - lateral_penalty * lateral_offset**2 * dt``: metres advanced along the centre line
    this step minus a quadratic lateral-error penalty (``lateral_penalty`` in 1/(m s)).

    **Episode end.** ``terminated`` when ``|lateral_offset| > max_lateral_offset`` (default ``lane_width /
    2``: the car's centre crosses a lane line) or the car flips; ``truncated`` when ``distance >=
    road_length`` or after ``max_episode_steps`` steps (default ``1.5 x`` the steps needed to drive the road
    at ``target_speed``).

    **info** (every ``reset`` and ``step``; scalars are Python ``float``/``int``/``bool``, vectors numpy):
        - ``lateral_offset`` (m, + = left of the lane centre), ``heading_error`` (rad, + = car points left of
          the road tangent), ``front_lateral_offset`` (m, lateral offset of the front-axle midpoint).
        - ``curvature`` (1/m at the car's projection, + = left turn), ``curvature_ahead`` (float64 ``(K,)``,
          curvature at ``distance + lookahead_distances``), ``lookahead_distances`` (float64 ``(K,)``, m).
        - ``distance`` (m driven along the road since the start), ``road_s`` (m, arc length on the centre
          line; ``road_s = distance + 5``), ``road_length`` (m, the distance that ends the episode).
        - ``speed`` (m/s, forward velocity of the chassis), ``yaw_rate`` (rad/s), ``position`` (float64
          ``(2,)`` x, y in m), ``yaw`` (rad, wrapped to [-pi, pi)), ``time`` (s since reset).
        - ``steering`` (applied normalised steering after clipping and rate limit), ``steering_angle`` (rad,
          measured bicycle-equivalent angle of the front wheels), ``throttle`` (applied throttle action, 0
          without throttle), ``target_speed`` (m/s, current set-point).
        - ``lane_departure`` (bool), ``flipped`` (bool), ``road_seed`` (int, -1 for a hand-built road).
        - Car constants for experts: ``wheelbase`` (m), ``max_steer`` (rad), ``max_steer_rate`` (rad/s),
          ``front_axle`` (m, reference point to front axle), ``lane_width`` (m), ``control_dt`` (s).

    Args:
        observation: ``"image"``, ``"state"`` or ``"dict"``.
        image_height: Dash-camera image height (px).
        image_width: Dash-camera image width (px).
        render_mode: ``None`` or ``"rgb_array"`` (``render()`` returns a ``render_camera`` view).
        render_camera: ``"chase"`` (behind and above the car), ``"top"`` (top-down, follows the car) or
            ``"dash"``.
        render_height: Height of ``render()`` images (px).
        render_width: Width of ``render()`` images (px).
        control_hz: Control rate (Hz); also ``metadata["render_fps"]``.
        physics_timestep: Largest physics step (s); the actual step is ``1 / (control_hz * frame_skip)``.
        target_speed: Speed set-point (m/s); default 4.5, the NCP paper's 4.47 m/s.
        throttle: Add a second action that sets the speed set-point.
        max_speed: Set-point at throttle = +1 (m/s).
        max_steer_rate: Steering rate limit (rad/s of the bicycle-model angle).
        road_length: Distance to drive before ``truncated`` (m).
        curvature_range: ``(min, max)`` absolute arc curvature of generated roads (1/m).
        road_options: Extra :class:`~.road.RoadGenerationConfig` fields (dict), e.g. ``{"arc_length": (20,
            40)}``.
        road_segments: A fixed hand-built road used for every episode: :class:`~.road.Segment` objects or
            ``(length[, curvature_start[, curvature_end]])`` tuples.
        lane_width: Lane width (m).
        max_lateral_offset: Lane-departure threshold on ``|lateral_offset|`` (m); default ``lane_width / 2``.
        lateral_penalty: Weight of the lateral-error penalty (1/(m s)).
        max_episode_steps: Step limit; default ``ceil(1.5 * road_length / target_speed * control_hz)``.
        lookahead_distances: Distances ahead (m) for ``curvature_ahead`` and the state vector.
        initial_lateral_noise: Half-width (m) of a uniform random initial lateral offset.
        initial_heading_noise: Half-width (rad) of a uniform random initial heading error.
        randomize_visuals: Draw road/ground colours, marking style, light and a small camera jitter per
            episode.
        visual_randomization: Ranges for that (dict of :class:`~.scene.VisualRandomization` fields).
        visuals: Fixed appearance overrides (dict of :class:`~.scene.Visuals` fields), the base of
            randomisation.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    # over 120 lines: ~60 of them are the docstring of its 25 keyword arguments; the body only validates and
    # stores them, in the order they are documented
    def __init__(
        self,
        *,
        observation: str = "image",
        image_height: int = 64,
        image_width: int = 128,
        render_mode: str | None = None,
        render_camera: str = "chase",
        render_height: int = 240,
        render_width: int = 320,
        control_hz: float = 30.0,
        physics_timestep: float = 0.005,
        target_speed: float = 4.5,
        throttle: bool = False,
        max_speed: float = 10.0,
        max_steer_rate: float = 1.0,
        road_length: float = 300.0,
        curvature_range: Sequence[float] = (0.015, 0.066),
        road_options: Mapping[str, Any] | None = None,
        road_segments: Sequence[Segment | Sequence[float]] | None = None,
        lane_width: float = 3.75,
        max_lateral_offset: float | None = None,
        lateral_penalty: float = 1.0,
        max_episode_steps: int | None = None,
        lookahead_distances: Sequence[float] = (5.0, 10.0, 15.0, 20.0),
        initial_lateral_noise: float = 0.0,
        initial_heading_noise: float = 0.0,
        randomize_visuals: bool = False,
        visual_randomization: Mapping[str, Any] | None = None,
        visuals: Mapping[str, Any] | None = None,
    ) -> None:
        self._init_kwargs: dict[str, Any] = {
            k: v for k, v in locals().items() if k not in ("self", "__class__")
        }
        if observation not in _OBSERVATIONS:
            raise ValueError(f"observation must be one of {_OBSERVATIONS}, got {observation!r}.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        if render_camera not in _RENDER_CAMERAS:
            raise ValueError(f"render_camera must be one of {_RENDER_CAMERAS}, got {render_camera!r}.")
        for name, val in (
            ("image_height", image_height),
            ("image_width", image_width),
            ("render_height", render_height),
            ("render_width", render_width),
        ):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or not 8 <= val <= 2048:
                raise ValueError(f"{name} must be an int in [8, 2048] pixels, got {val!r}.")
        _positive("control_hz", control_hz)
        _positive("physics_timestep", physics_timestep)
        _positive("target_speed", target_speed)
        _positive("max_speed", max_speed)
        _positive("max_steer_rate", max_steer_rate)
        _positive("road_length", road_length)
        _positive("lane_width", lane_width)
        if not (math.isfinite(lateral_penalty) and lateral_penalty >= 0):
            raise ValueError(f"lateral_penalty must be a finite number >= 0, got {lateral_penalty!r}.")
        if initial_lateral_noise < 0 or initial_heading_noise < 0:
            raise ValueError("initial_lateral_noise and initial_heading_noise must be >= 0.")
        if target_speed > max_speed:
            raise ValueError(f"target_speed ({target_speed}) must be <= max_speed ({max_speed}) m/s.")
        look = np.asarray(lookahead_distances, dtype=np.float64).reshape(-1)
        if look.size == 0 or not np.all(np.isfinite(look)) or np.any(look < 0) or np.any(look > _VIEW_MARGIN):
            raise ValueError(
                f"lookahead_distances must be 1+ finite distances in [0, {_VIEW_MARGIN}] m, "
                f"got {lookahead_distances!r}."
            )
        if max_episode_steps is not None and (
            isinstance(max_episode_steps, bool) or int(max_episode_steps) < 1
        ):
            raise ValueError(f"max_episode_steps must be a positive int or None, got {max_episode_steps!r}.")

        self.observation_mode = observation
        self.image_shape = (int(image_height), int(image_width), 3)
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.render_size = (int(render_height), int(render_width))
        self.control_hz = float(control_hz)
        self.control_dt = 1.0 / self.control_hz
        self.frame_skip = max(1, int(round(self.control_dt / physics_timestep)))
        self.physics_timestep = self.control_dt / self.frame_skip
        self.target_speed = float(target_speed)
        self.throttle = bool(throttle)
        self.max_speed = float(max_speed)
        self.wheelbase = CAR.wheelbase
        self.track = CAR.track
        self.wheel_radius = CAR.wheel_radius
        self.max_steer = CAR.max_steer
        self.front_axle = CAR.front_axle
        self.max_steer_rate = float(max_steer_rate)
        self.road_length = float(road_length)
        self.lane_width = float(lane_width)
        self.max_lateral_offset = (
            float(max_lateral_offset) if max_lateral_offset is not None else 0.5 * lane_width
        )
        _positive("max_lateral_offset", self.max_lateral_offset)
        self.lateral_penalty = float(lateral_penalty)
        self.lookahead_distances = look
        self.lookahead_distances.setflags(write=False)
        self.max_episode_steps = (
            int(max_episode_steps)
            if max_episode_steps is not None
            else int(math.ceil(1.5 * self.road_length / self.target_speed * self.control_hz))
        )
        self.initial_lateral_noise = float(initial_lateral_noise)
        self.initial_heading_noise = float(initial_heading_noise)
        self.metadata = {**type(self).metadata, "render_fps": self.control_hz}

        road_kwargs = dict(road_options or {})
        valid = {f.name for f in fields(RoadGenerationConfig)} - {"length", "curvature_range"}
        unknown = sorted(set(road_kwargs) - valid)
        if unknown:
            raise ValueError(f"unknown road_options keys {unknown}; valid keys: {sorted(valid)}.")
        crange = tuple(float(c) for c in curvature_range)
        if len(crange) != 2:
            raise ValueError(f"curvature_range must be (min, max) in 1/m, got {curvature_range!r}.")
        self.road_config = RoadGenerationConfig(
            length=self.road_length + _START_S + _VIEW_MARGIN,
            curvature_range=(crange[0], crange[1]),
            **road_kwargs,
        )
        outer = 1.5 * self.lane_width + 1.0
        if self.road_config.curvature_range[1] * outer >= 1.0:
            raise ValueError(
                f"curvature_range max {self.road_config.curvature_range[1]} 1/m is too tight for a road "
                f"{outer:.1f} m wide on the inside of a curve; keep it below {1.0 / outer:.3f}."
            )
        self._fixed_road: Road | None = None
        if road_segments is not None:
            self._fixed_road = self._checked_road(Road.from_segments(road_segments))

        base_vis = replace(Visuals(), **_checked_visuals(visuals))
        self._base_visuals = base_vis
        self.randomize_visuals = bool(randomize_visuals)
        self._vis_random = VisualRandomization.from_mapping(
            dict(visual_randomization) if visual_randomization is not None else None
        )

        n_act = 2 if self.throttle else 1
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n_act,), dtype=np.float32)
        # Finite bounds (Gymnasium and sb3 warn on infinite ones); the state vector is clipped into them.
        k = 1.0 / (1.5 * self.lane_width + 1.0)
        lat = self.max_lateral_offset + 5.0
        spd = self.max_speed + 5.0
        head = [lat, math.pi, spd, 2.0 * math.pi, 1.0, k]
        high = np.array(head + [k] * len(self.lookahead_distances), dtype=np.float32)
        state_space = spaces.Box(-high, high, dtype=np.float32)
        self._state_space = state_space
        image_space = spaces.Box(0, 255, shape=self.image_shape, dtype=np.uint8)
        self.observation_space: spaces.Space[Any]
        if observation == "image":
            self.observation_space = image_space
        elif observation == "state":
            self.observation_space = state_space
        else:
            self.observation_space = spaces.Dict({"image": image_space, "state": state_space})

        self.road: Road | None = None
        self.visuals: Visuals = base_vis
        self.road_seed = -1
        self.model: mujoco.MjModel | None = None
        self.data: mujoco.MjData | None = None
        self._renderer: OffscreenRenderer | None = None
        self._model_key: tuple[Any, ...] | None = None
        self._reset_state()

    # ------------------------------------------------------------------ helpers
    def _reset_state(self) -> None:
        self._s = _START_S
        self._steps = 0
        self._steer = 0.0
        self._throttle = 0.0
        self._set_speed = self.target_speed
        self._last: dict[str, Any] = {}

    def _checked_road(self, road: Road) -> Road:
        need = _START_S + self.road_length + max(float(self.lookahead_distances.max()), 1.0)
        if road.length < need:
            raise ValueError(
                f"the road is {road.length:.1f} m long but the episode needs {need:.1f} m "
                f"(start {_START_S} m + road_length {self.road_length} m + look-ahead); lengthen the road "
                "or pass a smaller road_length."
            )
        return road

    def _build(self, road: Road, visuals: Visuals) -> None:
        key = (road.segments, tuple(road.points[0]), float(road.heading[0]), visuals)
        if self.model is not None and key == self._model_key:
            return
        offscreen = (
            max(self.image_shape[0], self.render_size[0]),
            max(self.image_shape[1], self.render_size[1]),
        )
        self.model = build_model(
            road,
            lane_width=self.lane_width,
            visuals=visuals,
            timestep=self.physics_timestep,
            offscreen_size=offscreen,
        )
        self.data = mujoco.MjData(self.model)
        self._model_key = key
        m = self.model
        self._jnt_qpos = {
            n: int(m.jnt_qposadr[m.joint(n).id]) for n in ("steer_fl", "steer_fr", "spin_rl", "spin_rr")
        }
        self._jnt_dof = {
            n: int(m.jnt_dofadr[m.joint(n).id])
            for n in ("spin_fl", "spin_fr", "spin_rl", "spin_rr", "steer_fl", "steer_fr")
        }
        self._act = {n: int(m.actuator(n).id) for n in ("steer_fl", "steer_fr", "drive_rl", "drive_rr")}
        self._cam = {n: int(m.camera(n).id) for n in _RENDER_CAMERAS}
        self._chassis = int(m.body("chassis").id)
        if self._renderer is not None:
            self._renderer.set_model(self.model)

    def _ensure_renderer(self) -> OffscreenRenderer:
        assert self.model is not None
        if self._renderer is None:
            h = max(self.image_shape[0], self.render_size[0])
            w = max(self.image_shape[1], self.render_size[1])
            self._renderer = OffscreenRenderer(h, w)
        self._renderer.set_model(self.model)
        return self._renderer

    @property
    def dt(self) -> float:
        """Control period (s): ``1 / control_hz`` (the ``dt`` of Gymnasium's MuJoCo envs)."""
        return self.control_dt

    def car_pose(self) -> tuple[float, float, float, float]:
        """The car's pose: ``(x, y, yaw, speed)`` in m, m, rad (wrapped to [-pi, pi)) and m/s (forward).

        The position is the chassis reference point, midway between the axles.
        """
        if self.data is None:
            raise RuntimeError("call reset() before car_pose().")
        q = self.data.qpos
        yaw = _yaw_from_quat(q[3:7])
        v = self.data.qvel
        speed = float(v[0] * math.cos(yaw) + v[1] * math.sin(yaw))
        return float(q[0]), float(q[1]), wrap_angle(yaw), speed

    def _ackermann(self, steer: float) -> tuple[float, float]:
        delta = steer * self.max_steer
        t = math.tan(delta)
        if abs(t) < 1e-9:
            return 0.0, 0.0
        half = 0.5 * self.track
        left = math.atan(self.wheelbase * t / (self.wheelbase - half * t))
        right = math.atan(self.wheelbase * t / (self.wheelbase + half * t))
        return left, right

    # ------------------------------------------------------------------ gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode on a new road.

        Args:
            seed: Seeds the env's generator (road seed, visuals, initial noise); same seed -> same episode.
            options: Optional dict: ``road_seed`` (int, use this road), ``road`` (a :class:`~.road.Road` or a
                list of segments), ``visuals`` (dict of :class:`~.scene.Visuals` fields for this episode),
                ``initial_lateral`` (m) and ``initial_heading`` (rad) to place the car exactly.

        Returns:
            ``(observation, info)``.
        """
        super().reset(seed=seed)
        opts = dict(options or {})
        unknown = sorted(set(opts) - set(_RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset options {unknown}; valid options: {list(_RESET_OPTIONS)}.")
        rng = self.np_random
        # Always draw the same values so an option does not shift the rest of the episode's randomness.
        drawn_seed = int(rng.integers(0, 2**31 - 1))
        if "road" in opts:
            road_opt = opts["road"]
            road = road_opt if isinstance(road_opt, Road) else Road.from_segments(road_opt)
            road = self._checked_road(road)
        elif "road_seed" in opts:
            road = Road.generate(_checked_seed(opts["road_seed"]), self.road_config)
        elif self._fixed_road is not None:
            road = self._fixed_road
        else:
            road = Road.generate(drawn_seed if seed is None else _checked_seed(seed), self.road_config)
        vis_rng = np.random.default_rng(int(rng.integers(0, 2**31 - 1)))
        visuals = (
            self._vis_random.sample(vis_rng, self._base_visuals)
            if self.randomize_visuals
            else self._base_visuals
        )
        if "visuals" in opts:
            visuals = replace(visuals, **_checked_visuals(opts["visuals"]))
        lat0 = float(rng.uniform(-1.0, 1.0)) * self.initial_lateral_noise
        hd0 = float(rng.uniform(-1.0, 1.0)) * self.initial_heading_noise
        if "initial_lateral" in opts:
            lat0 = _finite("initial_lateral", opts["initial_lateral"])
        if "initial_heading" in opts:
            hd0 = _finite("initial_heading", opts["initial_heading"])

        self.road = road
        self.road_seed = -1 if road.seed is None else int(road.seed)
        self.visuals = visuals
        self._build(road, visuals)
        assert self.model is not None and self.data is not None
        self._reset_state()
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        x0, y0 = road.offset_points(lat0, np.array([_START_S]))[0]
        yaw0 = float(road.heading_at(_START_S)) + hd0
        d.qpos[0:3] = (x0, y0, m.body("chassis").pos[2])
        d.qpos[3:7] = (math.cos(0.5 * yaw0), 0.0, 0.0, math.sin(0.5 * yaw0))
        v0 = self.target_speed
        d.qvel[0:2] = (v0 * math.cos(yaw0), v0 * math.sin(yaw0))
        for n in ("spin_fl", "spin_fr", "spin_rl", "spin_rr"):
            d.qvel[self._jnt_dof[n]] = v0 / self.wheel_radius
        self._apply_controls(0.0, self.target_speed)
        mujoco.mj_forward(m, d)
        self._s = road.project(d.qpos[0:2], s_hint=_START_S).s
        info = self._info()
        return self._observation(info), info

    def _apply_controls(self, steer: float, speed: float) -> None:
        assert self.data is not None
        left, right = self._ackermann(steer)
        ctrl = self.data.ctrl
        ctrl[self._act["steer_fl"]] = left
        ctrl[self._act["steer_fr"]] = right
        ctrl[self._act["drive_rl"]] = speed / self.wheel_radius
        ctrl[self._act["drive_rr"]] = speed / self.wheel_radius

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Apply one action for ``1 / control_hz`` seconds.

        Args:
            action: ``(1,)`` steering, or ``(2,)`` steering and throttle with ``throttle=True``; clipped to
                [-1, 1].

        Returns:
            ``(observation, reward, terminated, truncated, info)``.

        Raises:
            ValueError: On a wrong action size or a non-finite action.
            RuntimeError: If called before ``reset()``.
        """
        if self.model is None or self.data is None or self.road is None:
            raise RuntimeError("call reset() before step().")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        n_act = self.action_space.shape[0]  # type: ignore[index]
        if a.shape != (n_act,):
            raise ValueError(
                f"action must have {n_act} value(s) "
                f"({'steering, throttle' if self.throttle else 'steering'}), "
                f"got shape {np.shape(action)}."
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}; check the policy output for NaN/inf.")
        a = np.clip(a, -1.0, 1.0)
        if self.throttle:
            self._throttle = float(a[1])
            self._set_speed = 0.5 * (self._throttle + 1.0) * self.max_speed
        m, d = self.model, self.data
        # Rate limit applied per physics step so the servo target moves smoothly within a control period.
        max_delta = self.max_steer_rate * self.physics_timestep / self.max_steer
        target = float(a[0])
        for _ in range(self.frame_skip):
            self._steer += float(np.clip(target - self._steer, -max_delta, max_delta))
            self._apply_controls(self._steer, self._set_speed)
            mujoco.mj_step(m, d)
        self._steps += 1
        if d.warning[mujoco.mjtWarning.mjWARN_BADQACC].number > 0 or not (
            np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))
        ):
            # MuJoCo silently resets an unstable simulation; an episode must never continue from that.
            raise RuntimeError(
                "MuJoCo simulation became unstable (bad accelerations or non-finite state); this is a bug in "
                "the environment (physics_timestep too large?), please report it with the seed and actions."
            )

        s_old = self._s
        info = self._info()
        progress = self._s - s_old
        lat = info["lateral_offset"]
        reward = float(progress - self.lateral_penalty * lat * lat * self.control_dt)
        terminated = bool(info["lane_departure"] or info["flipped"])
        truncated = bool(
            not terminated and (info["distance"] >= self.road_length or self._steps >= self.max_episode_steps)
        )
        return self._observation(info), reward, terminated, truncated, info

    def _info(self) -> dict[str, Any]:
        assert self.road is not None and self.data is not None and self.model is not None
        road, d = self.road, self.data
        x, y, yaw, speed = self.car_pose()
        proj = road.project((x, y), s_hint=self._s)
        self._s = proj.s
        heading_error = wrap_angle(yaw - proj.heading)
        fx, fy = x + self.front_axle * math.cos(yaw), y + self.front_axle * math.sin(yaw)
        front = road.project((fx, fy), s_hint=self._s + self.front_axle)
        ahead = road.curvature_at(proj.s + self.lookahead_distances).astype(np.float64)
        q = d.qpos
        dl, dr = q[self._jnt_qpos["steer_fl"]], q[self._jnt_qpos["steer_fr"]]
        # Bicycle-equivalent angle: the mean of the two wheels' cotangents (exact for Ackermann geometry).
        steer_angle = _bicycle_angle(float(dl), float(dr))
        up_z = 1.0 - 2.0 * (q[4] ** 2 + q[5] ** 2)
        flipped = bool(up_z < 0.5)
        lateral = float(proj.lateral)
        info: dict[str, Any] = {
            "lateral_offset": lateral,
            "heading_error": float(heading_error),
            "front_lateral_offset": float(front.lateral),
            "curvature": float(road.curvature_at(proj.s)),
            "curvature_ahead": ahead,
            "lookahead_distances": np.array(self.lookahead_distances, dtype=np.float64),
            "distance": float(proj.s - _START_S),
            "road_s": float(proj.s),
            "road_length": self.road_length,
            "speed": speed,
            "yaw_rate": float(d.qvel[5]),
            "position": np.array([x, y], dtype=np.float64),
            "yaw": yaw,
            "time": float(d.time),
            "steering": float(self._steer),
            "steering_angle": float(steer_angle),
            "throttle": float(self._throttle),
            "target_speed": float(self._set_speed),
            "lane_departure": bool(abs(lateral) > self.max_lateral_offset),
            "flipped": flipped,
            "road_seed": int(self.road_seed),
            "wheelbase": self.wheelbase,
            "max_steer": self.max_steer,
            "max_steer_rate": self.max_steer_rate,
            "front_axle": self.front_axle,
            "lane_width": self.lane_width,
            "control_dt": self.control_dt,
        }
        self._last = info
        return info

    def _state_vector(self, info: Mapping[str, Any]) -> NDArray[np.float32]:
        head = [info[k] for k in STATE_FEATURES]
        vec = np.concatenate([np.asarray(head, dtype=np.float64), info["curvature_ahead"]]).astype(np.float32)
        return np.clip(vec, self._state_space.low, self._state_space.high)

    def _observation(self, info: Mapping[str, Any]) -> Any:
        if self.observation_mode == "state":
            return self._state_vector(info)
        image = self._render_camera("dash", self.image_shape[0], self.image_shape[1])
        if self.observation_mode == "image":
            return image
        return {"image": image, "state": self._state_vector(info)}

    def _render_camera(self, name: str, height: int, width: int) -> NDArray[np.uint8]:
        renderer = self._ensure_renderer()
        sky = self.visuals.sky_rgb
        background = (round(255 * sky[0]), round(255 * sky[1]), round(255 * sky[2]))
        return renderer.render(self.data, self._cam[name], height, width, background=background)

    def render(self) -> NDArray[np.uint8] | None:  # type: ignore[override]
        """Return an RGB view (``render_camera``) as uint8 ``(render_height, render_width, 3)``.

        Returns ``None`` when ``render_mode`` is ``None`` (Gymnasium's convention).
        """
        if self.render_mode is None:
            gym.logger.warn(
                "render() called with render_mode=None; pass render_mode='rgb_array' to gym.make."
            )
            return None
        if self.data is None:
            raise RuntimeError("call reset() before render().")
        return self._render_camera(self.render_camera, *self.render_size)

    def close(self) -> None:
        """Free the renderer (GL context); the env can be reset again afterwards."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"kwargs": self._init_kwargs, "episode": None}
        if self.data is not None and self.model is not None and self.road is not None:
            size = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION)
            sim = np.empty(size, dtype=np.float64)
            mujoco.mj_getState(self.model, self.data, sim, mujoco.mjtState.mjSTATE_INTEGRATION)
            state["episode"] = {
                "road": self.road,
                "road_seed": self.road_seed,
                "visuals": asdict(self.visuals),
                "sim": sim,
                "s": self._s,
                "steps": self._steps,
                "steer": self._steer,
                "throttle": self._throttle,
                "set_speed": self._set_speed,
                "np_random": self.np_random.bit_generator.state,
                "np_random_seed": self._np_random_seed,
            }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["kwargs"])  # type: ignore[misc]
        ep = state["episode"]
        if ep is None:
            return
        self.road = ep["road"]
        self.road_seed = ep["road_seed"]
        self.visuals = replace(Visuals(), **_checked_visuals(ep["visuals"]))
        assert self.road is not None
        self._build(self.road, self.visuals)
        assert self.model is not None and self.data is not None
        mujoco.mj_setState(self.model, self.data, ep["sim"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self.model, self.data)
        self._s, self._steps, self._steer = ep["s"], ep["steps"], ep["steer"]
        self._throttle, self._set_speed = ep["throttle"], ep["set_speed"]
        rng = np.random.default_rng()
        rng.bit_generator.state = ep["np_random"]
        self._np_random = rng
        self._np_random_seed = ep["np_random_seed"]


def _positive(name: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not (math.isfinite(float(value)) and float(value) > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _finite(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"reset option {name} must be a number, got {value!r}.") from err
    if not math.isfinite(out):
        raise ValueError(f"reset option {name} must be finite, got {value!r}.")
    return out


def _checked_seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise ValueError(f"road seeds (reset seed, options['road_seed']) must be ints >= 0, got {value!r}.")
    return int(value)


def _checked_visuals(values: Mapping[str, Any] | None) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"visuals must be a dict of Visuals fields, got {type(values).__name__}.")
    valid = {f.name for f in fields(Visuals)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown visuals keys {unknown}; valid keys: {sorted(valid)}.")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _yaw_from_quat(q: NDArray[np.float64]) -> float:
    w, x, y, z = (float(v) for v in q)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _bicycle_angle(left: float, right: float) -> float:
    tl, tr = math.tan(left), math.tan(right)
    if abs(tl) < 1e-9 or abs(tr) < 1e-9 or tl * tr <= 0:
        return 0.5 * (left + right)
    return math.atan(2.0 / (1.0 / tl + 1.0 / tr))
