"""Closed-loop rollouts of a policy with an mp4 video of what it sees, does and thinks.

Each video frame shows, for one control step (panels selectable):

- ``camera``: the observation the policy acted on (upscaled with crisp pixels; noisy if noise is on),
- ``chase``: the env's own ``render()`` view (chase / top-down camera of the LTC envs, CarRacing's view),
- ``telemetry``: every action component as a bar (steering of the policy and, on lane-keeping envs, the
  privileged expert's steering for comparison), lateral error and speed as numbers and scrolling plots,
  progress along the road and a lane-departure flag,
- ``neurons``: every controller neuron's activity, labelled and coloured by role (inter, command, motor...),
  with the perception's sensory features as a heat strip on top.

Works with every controller kind (LTC, CfC, LSTM, GRU, CT-RNN, MLP: the panel shows what the cell exposes) and
with any Gymnasium env whose observations the policy accepts. Frames are composed with OpenCV
(:mod:`ltc_control.video`) and streamed to the file, so long rollouts use constant memory.

Example:
    >>> from ltc_control.agents.rollout import RolloutConfig, rollout
    >>> result = rollout("runs/my_ckpt", RolloutConfig(seed=1000, video="drive.mp4"))  # doctest: +SKIP
    >>> result.codec, result.frames  # doctest: +SKIP
    ('mp4v', 812)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ltc_control import video as vid
from ltc_control.agents.episode import (
    Agent,
    AgentSpec,
    EpisodeResult,
    PolicyAgent,
    StepRecord,
    check_agent_env,
    info_float,
    make_agent,
    make_env,
    resolve_env,
    run_episode,
    torch_threads,
)
from ltc_control.agents.evaluate_cli import (
    add_output_arguments,
    agent_label,
    check_agent_argument,
    open_run_dir,
)
from ltc_control.agents.perturbations import Perturbation
from ltc_control.config import make_parser, parse_args_and_config, to_dict
from ltc_control.runs import atomic_write_json

__all__ = ["PANELS", "FrameComposer", "RolloutConfig", "RolloutResult", "rollout", "rollout_main"]

#: The panels a frame can show, in their default order.
PANELS: tuple[str, ...] = ("camera", "chase", "telemetry", "neurons")

_POLICY_COLOR = (80, 170, 255)
_EXPERT_COLOR = (255, 170, 60)
_LAT_COLOR = (255, 110, 110)
_SPEED_COLOR = (120, 230, 140)


@dataclass(frozen=True)
class RolloutConfig:
    """Closed-loop rollout of a policy with an mp4 video: ltc-control rollout.

    Attributes:
        env: Gymnasium env id (None = the checkpoint's training env, else LTC/LaneKeeping-v0); the policy's
            observation shape and action size must match it.
        seed: road seed of the first episode; episode k uses seed + k.
        episodes: number of episodes, all in one video.
        video: output mp4 path; None = no video (metrics only). The CLI writes the default name into the
            run folder; a path given explicitly is used as given (relative to the working directory).
        out: output folder of the CLI (run records, video, episodes.json); None = a new folder under runs/.
        max_steps: step cap per episode (None = the env's own limit).
        fps: frames per second of the video (None = the env's render_fps, else 30).
        width: video width in pixels.
        height: video height in pixels.
        panels: which panels to show, from camera, chase, telemetry, neurons.
        slowmo: slow-motion factor: every control step is written this many times.
        noise: Gaussian noise variance on the [0, 1] camera image the policy sees (0 = clean).
        noise_seed: seed of that noise (same protocol as ltc-control evaluate).
        expert: draw the privileged expert's steering next to the policy's (lane-keeping envs only).
        device: torch device for the policy.
        env_kwargs: env constructor arguments, e.g. {road_length: 80}; they override the checkpoint's training
            env kwargs key by key.
        progress: show a progress bar.
        rerun: also write a Rerun recording (.rrd) of the rollout here: camera and chase frames, steering
            (policy and expert), lateral error, speed, every neuron's state and tau, the road map, the wiring
            graph; open it with ``rerun FILE`` (needs ``pip install 'ltc-control[rerun]'``). None = none.
    """

    env: str | None = None
    seed: int = 1000
    episodes: int = 1
    video: str | None = "rollout.mp4"
    out: str | None = None
    max_steps: int | None = None
    fps: float | None = None
    width: int = 960
    height: int = 540
    panels: tuple[str, ...] = PANELS
    slowmo: int = 1
    noise: float = 0.0
    noise_seed: int = 0
    expert: bool = True
    device: str = "cpu"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    rerun: str | None = None

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {self.episodes}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be > 0 or null, got {self.fps}")
        if self.width < 64 or self.height < 64:
            raise ValueError(f"video size must be at least 64x64, got {self.width}x{self.height}")
        if self.slowmo < 1:
            raise ValueError(f"slowmo must be an integer >= 1, got {self.slowmo}")
        bad = [p for p in self.panels if p not in PANELS]
        if bad or not self.panels:
            raise ValueError(f"unknown panels {bad}; choose one or more of {', '.join(PANELS)}")
        if len(set(self.panels)) != len(self.panels):
            raise ValueError(f"panels must not repeat, got {list(self.panels)}")
        if self.video is not None and not str(self.video).lower().endswith(".mp4"):
            raise ValueError(f"video must be an .mp4 path, got {self.video!r}")
        if self.rerun is not None and not str(self.rerun).lower().endswith(".rrd"):
            raise ValueError(f"rerun must be an .rrd path, got {self.rerun!r}")
        Perturbation(noise_variance=self.noise, seed=self.noise_seed)


@dataclass
class RolloutResult:
    """What :func:`rollout` produced.

    Attributes:
        episodes: the :class:`EpisodeResult` of every episode.
        video: path of the mp4 (None when no video was written).
        codec: the video backend that ran (:attr:`ltc_control.video.VideoWriter.codec`): ``"h264"`` = H.264 by
            ffmpeg/libx264 (plays in browsers), ``"avc1"`` = H.264 by OpenCV, ``"mp4v"`` = MPEG-4 Part 2.
        frames: number of frames written.
        frame_size: ``(width, height)`` of the frames as composed (the file is padded to even sizes).
        fps: frames per second of the video.
        rerun: path of the Rerun recording (None when none was asked for).
    """

    episodes: list[EpisodeResult]
    video: Path | None = None
    codec: str | None = None
    frames: int = 0
    frame_size: tuple[int, int] = (0, 0)
    fps: float = 0.0
    rerun: Path | None = None

    def summary(self) -> list[dict[str, Any]]:
        """Per-episode metrics as JSON-ready dicts."""
        return [ep.metrics().to_dict() for ep in self.episodes]


class FrameComposer:
    """Composes one video frame per control step from the camera, the env's render and the agent's state.

    Args:
        size: ``(width, height)`` of the frames.
        panels: panel names (see :data:`PANELS`), laid out on a grid (2 columns when there are 2 or more).
        neuron_roles: role of each controller neuron (empty for agents without neurons).
        neuron_names: name of each controller neuron.
        action_names: label of each action component.
        history: number of steps shown in the scrolling plots.
    """

    def __init__(
        self,
        size: tuple[int, int],
        panels: Sequence[str] = PANELS,
        neuron_roles: Sequence[str] = (),
        neuron_names: Sequence[str] | None = None,
        action_names: Sequence[str] = ("steer",),
        history: int = 150,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.panels = list(panels)
        bad = [p for p in self.panels if p not in PANELS]
        if bad or not self.panels:
            raise ValueError(f"unknown panels {bad}; choose one or more of {', '.join(PANELS)}")
        self.cols = 1 if len(self.panels) == 1 else 2
        self.rows = math.ceil(len(self.panels) / self.cols)
        self.cell = (self.size[0] // self.cols, self.size[1] // self.rows)
        self.neurons = vid.NeuronPanel(neuron_roles, neuron_names)
        self.action_names = list(action_names)
        self.history = history
        self.lateral: deque[float] = deque(maxlen=history)
        self.speed: deque[float] = deque(maxlen=history)
        self.steer: deque[float] = deque(maxlen=history)
        self.expert_steer: deque[float] = deque(maxlen=history)
        self.max_lateral = 1.0
        self.max_speed = 1.0

    def new_episode(self) -> None:
        """Clear the scrolling plots (scales and neuron normalisation persist across episodes)."""
        for d in (self.lateral, self.speed, self.steer, self.expert_steer):
            d.clear()

    def compose(
        self,
        camera: Any,
        chase: np.ndarray | None,
        action: np.ndarray,
        info: Mapping[str, Any],
        header: str,
        expert_action: float | None = None,
        activity: np.ndarray | None = None,
        sensory: np.ndarray | None = None,
        departed: bool = False,
    ) -> np.ndarray:
        """Draw one frame.

        Args:
            camera: the observation the agent acted on (uint8 image, float vector or dict of those).
            chase: the env's ``render()`` image, or None.
            action: the action sent ``(A,)``.
            info: the env info the agent acted on (lateral error, speed, distance...).
            header: text for the telemetry panel's first line (episode, seed, step).
            expert_action: the expert's steering for the same state, or None.
            activity: neuron activity ``(N,)``, or None.
            sensory: sensory features ``(S,)``, or None.
            departed: the car has left the lane in this episode.

        Returns:
            RGB uint8 ``(height, width, 3)``.
        """
        lat = info_float(info, "lateral_offset")
        speed = info_float(info, "speed")
        self.lateral.append(lat)
        self.speed.append(speed)
        self.steer.append(float(action[0]) if action.size else float("nan"))
        self.expert_steer.append(float("nan") if expert_action is None else float(expert_action))
        if math.isfinite(lat):
            self.max_lateral = max(self.max_lateral, abs(lat))
        if math.isfinite(speed):
            self.max_speed = max(self.max_speed, abs(speed))
        tiles = []
        for name in self.panels:
            if name == "camera":
                tiles.append(self._camera(camera))
            elif name == "chase":
                tiles.append(self._chase(chase))
            elif name == "telemetry":
                tiles.append(self._telemetry(action, info, header, expert_action, departed))
            else:
                tiles.append(self.neurons.render(activity, self.cell, sensory=sensory))
        frame = vid.grid(tiles, self.cols)
        if frame.shape[:2] != (self.size[1], self.size[0]):
            out = np.zeros((self.size[1], self.size[0], 3), np.uint8)
            out[: frame.shape[0], : frame.shape[1]] = frame
            frame = out
        return frame

    def _camera(self, obs: Any) -> np.ndarray:
        if isinstance(obs, Mapping):
            images = [np.asarray(v) for v in obs.values() if np.asarray(v).dtype == np.uint8]
            obs = images[0] if images else np.concatenate([np.asarray(v).reshape(-1) for v in obs.values()])
        arr = np.asarray(obs)
        if arr.dtype == np.uint8 and arr.ndim in (2, 3):
            tile = vid.fit(arr, self.cell)
            vid.put_text(tile, f"policy input {arr.shape[1]}x{arr.shape[0]}", (6, 16), scale=0.42)
            return tile
        tile = np.full((self.cell[1], self.cell[0], 3), 25, np.uint8)
        vec = arr.astype(np.float64).reshape(-1)
        vid.put_text(tile, f"observation vector ({vec.size})", (6, 16), scale=0.42)
        rows = max(1, min(vec.size, (self.cell[1] - 24) // 12))
        scale = max(1e-6, float(np.max(np.abs(vec[np.isfinite(vec)])))) if np.isfinite(vec).any() else 1.0
        for i in range(rows):
            vid.draw_bar(
                tile, vec[i] / scale, (40, 24 + 12 * i, self.cell[0] - 50, 10), color=(160, 160, 220)
            )
            vid.put_text(tile, str(i), (6, 33 + 12 * i), scale=0.32)
        return tile

    def _chase(self, chase: np.ndarray | None) -> np.ndarray:
        if chase is None:
            tile = np.full((self.cell[1], self.cell[0], 3), 25, np.uint8)
            vid.put_text(tile, "no render() view", (6, 16), scale=0.42, color=(180, 180, 180))
            return tile
        return vid.fit(chase, self.cell)

    def _telemetry(
        self,
        action: np.ndarray,
        info: Mapping[str, Any],
        header: str,
        expert_action: float | None,
        departed: bool,
    ) -> np.ndarray:
        w, h = self.cell
        tile = np.full((h, w, 3), 25, np.uint8)
        vid.put_text(tile, header, (6, 16), scale=0.42)
        y = 26
        bar_w = w - 16
        for k, value in enumerate(np.asarray(action, dtype=np.float64).reshape(-1)):
            name = self.action_names[k] if k < len(self.action_names) else f"a{k}"
            vid.draw_bar(tile, value, (8, y, bar_w, 14), color=_POLICY_COLOR, label=f"{name} {value:+.2f}")
            y += 17
        if expert_action is not None:
            label = f"expert steer {expert_action:+.2f}"
            vid.draw_bar(tile, expert_action, (8, y, bar_w, 14), color=_EXPERT_COLOR, label=label)
            y += 17
        lat, speed = info_float(info, "lateral_offset"), info_float(info, "speed")
        dist, road = info_float(info, "distance"), info_float(info, "road_length")
        parts = []
        if math.isfinite(lat):
            parts.append(f"lateral {lat:+.2f} m")
        if math.isfinite(speed):
            parts.append(f"speed {speed:.2f} m/s")
        if math.isfinite(dist):
            parts.append(f"{dist:.1f}" + (f"/{road:.0f} m" if math.isfinite(road) else " m"))
        if parts:
            vid.put_text(tile, "   ".join(parts), (8, y + 12), scale=0.4)
            y += 18
        if departed:
            vid.put_text(tile, "LANE DEPARTURE", (w - 150, 16), scale=0.45, color=(255, 60, 60), thickness=2)
        plot_h = max(20, (h - y - 8) // 2 - 4)
        if plot_h >= 20:
            steer_series = {"policy": (list(self.steer), _POLICY_COLOR)}
            if expert_action is not None:
                steer_series["expert"] = (list(self.expert_steer), _EXPERT_COLOR)
            if any(math.isfinite(v) for v in self.lateral):
                m = self.max_lateral
                vid.draw_series(
                    tile,
                    {"lateral m": (list(self.lateral), _LAT_COLOR)},
                    (8, y, bar_w, plot_h),
                    -m,
                    m,
                    self.history,
                    title=f"lateral error (+-{m:.1f} m)",
                )
            else:
                vid.draw_series(
                    tile, steer_series, (8, y, bar_w, plot_h), -1.0, 1.0, self.history, "steering"
                )
                steer_series = {}
            y += plot_h + 6
            if any(math.isfinite(v) for v in self.speed):
                vid.draw_series(
                    tile,
                    {"speed m/s": (list(self.speed), _SPEED_COLOR)},
                    (8, y, bar_w, plot_h),
                    0.0,
                    self.max_speed * 1.1,
                    self.history,
                    title="speed",
                )
            elif steer_series:
                vid.draw_series(
                    tile, steer_series, (8, y, bar_w, plot_h), -1.0, 1.0, self.history, "steering"
                )
        return tile


class _SensoryProbe:
    """Captures the perception head's output (the controller's sensory input) with a forward hook."""

    def __init__(self, agent: Agent) -> None:
        self.value: np.ndarray | None = None
        self._handle: Any = None
        policy = getattr(agent, "policy", None)
        module = getattr(policy, "perception", None)
        if module is not None and hasattr(module, "register_forward_hook"):
            self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        try:
            arr = output.detach().float().cpu().numpy()
        except AttributeError:
            return
        self.value = arr.reshape(-1, arr.shape[-1])[-1] if arr.ndim >= 1 and arr.size else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def _action_names(env: Any, action_size: int) -> list[str]:
    spec_id = getattr(getattr(env, "spec", None), "id", "") or ""
    if spec_id.startswith("CarRacing"):
        return ["steer", "gas", "brake"]
    return ["steer", "throttle"][:action_size] + [f"a{k}" for k in range(2, action_size)]


class _Recorder:
    """Turns :class:`StepRecord` callbacks of one rollout into video frames.

    The chase view drawn with step ``t`` is the env's view of the state the agent acted on at step ``t``
    (rendered after ``reset`` and after each step), so every panel of a frame shows the same moment.
    """

    def __init__(
        self,
        env: Any,
        agent: Agent,
        cfg: RolloutConfig,
        composer: FrameComposer,
        writer: vid.VideoWriter | None,
        expert: Agent | None,
        probe: _SensoryProbe | None,
        bar: Any,
        capture: Any = None,
    ) -> None:
        self.env = env
        self.agent = agent
        self.cfg = cfg
        self.composer = composer
        self.writer = writer
        self.expert = expert
        self.probe = probe
        self.bar = bar
        self.capture = capture  # agents.rerun_capture.RerunCapture for --rerun, else None
        self.want_chase = ("chase" in cfg.panels and writer is not None) or capture is not None
        self.episode = 0
        self.seed = 0
        self.chase: np.ndarray | None = None
        self.departed = False

    def start(self, episode: int, seed: int) -> None:
        self.episode, self.seed = episode, seed
        self.chase, self.departed = None, False
        self.composer.new_episode()
        if self.expert is not None:
            self.expert.reset()

    def reset(self, **kwargs: Any) -> Any:
        """``env.reset`` that also captures the first chase view."""
        out = self.env.reset(**kwargs)
        if self.want_chase:
            self.chase = self.env.render()
        return out

    def __getattr__(self, name: str) -> Any:
        # the recorder stands in for the env in run_episode: everything but reset goes to the env
        return getattr(self.env, name)

    def on_step(self, rec: StepRecord) -> None:
        if self.writer is not None:
            expert_steer = None
            if self.expert is not None and "lateral_offset" in rec.prev_info:
                expert_steer = float(np.asarray(self.expert.act(rec.obs, rec.prev_info)).reshape(-1)[0])
            activity = self.agent.neuron_activity() if isinstance(self.agent, PolicyAgent) else None
            header = f"episode {self.episode + 1}/{self.cfg.episodes}  seed {self.seed}  step {rec.step}"
            if self.cfg.noise:
                header += f"  noise var {self.cfg.noise:g}"
            frame = self.composer.compose(
                rec.obs,
                self.chase,
                rec.action,
                rec.prev_info,
                header,
                expert_action=expert_steer,
                activity=activity,
                sensory=self.probe.value if self.probe is not None else None,
                departed=self.departed,
            )
            self.writer.write(frame, repeat=self.cfg.slowmo)
        if self.capture is not None:
            self.capture.on_step(rec, self.chase, self.env)
        self.departed = self.departed or bool(rec.info.get("lane_departure", False))
        if self.want_chase:
            self.chase = self.env.render()
        self.bar.update(1)


def rollout(agent: AgentSpec | Any, config: RolloutConfig | None = None) -> RolloutResult:
    """Run an agent in closed loop and write a video of it.

    Args:
        agent: a ``Policy``, a checkpoint directory, ``"expert"``, an :class:`Agent` or a factory (see
            :func:`~ltc_control.agents.episode.make_agent`).
        config: the rollout settings (defaults: :class:`RolloutConfig`).

    Returns:
        The :class:`RolloutResult` (episodes, video path, codec, frame count).
    """
    cfg = config or RolloutConfig()
    env_id, env_kwargs = resolve_env(agent, cfg.env, cfg.env_kwargs)  # a checkpoint's training env by default
    cfg = dataclasses.replace(cfg, env=env_id, env_kwargs=env_kwargs)
    agent_obj = make_agent(agent, device=cfg.device)
    make_video = cfg.video is not None
    render_mode = "rgb_array" if (make_video and "chase" in cfg.panels) or cfg.rerun else None
    env = make_env(env_id, env_kwargs, render_mode=render_mode)
    probe = _SensoryProbe(agent_obj) if make_video and "neurons" in cfg.panels else None
    writer: vid.VideoWriter | None = None
    try:
        fps = float(cfg.fps or env.metadata.get("render_fps") or 30.0)
        size = (cfg.width, cfg.height)
        shape = env.action_space.shape
        action_size = int(np.prod(shape)) if shape else 1
        policy_agent = agent_obj if isinstance(agent_obj, PolicyAgent) else None
        composer = FrameComposer(
            size,
            cfg.panels,
            neuron_roles=policy_agent.neuron_roles if policy_agent else (),
            neuron_names=policy_agent.neuron_names if policy_agent else None,
            action_names=_action_names(env, action_size),
        )
        expert = make_agent("expert") if make_video and cfg.expert and env_id.startswith("LTC/") else None
        if make_video:
            assert cfg.video is not None
            writer = vid.VideoWriter(cfg.video, fps=fps, size=size)
        limit = cfg.max_steps or getattr(getattr(env, "spec", None), "max_episode_steps", None)
        limit = limit or getattr(env.unwrapped, "max_episode_steps", None)
        total = int(limit) * cfg.episodes if limit else None
        bar = tqdm(total=total, desc="rollout", unit="step", disable=not cfg.progress, file=sys.stderr)
        capture = None
        if cfg.rerun is not None:
            from ltc_control.agents.rerun_capture import RerunCapture

            meta = {"env": cfg.env, "env_kwargs": cfg.env_kwargs, "seed": cfg.seed, "noise": cfg.noise}
            capture = RerunCapture(agent_obj, json.loads(json.dumps(meta, default=str)))
        recorder = _Recorder(env, agent_obj, cfg, composer, writer, expert, probe, bar, capture)
        perturbation = Perturbation(noise_variance=cfg.noise, seed=cfg.noise_seed)
        episodes: list[EpisodeResult] = []
        with capture if capture is not None else contextlib.nullcontext():
            for k in range(cfg.episodes):
                seed = cfg.seed + k
                recorder.start(k, seed)
                if capture is not None:
                    capture.start_episode(k)
                with torch_threads(1):
                    result = run_episode(
                        recorder,
                        agent_obj,
                        seed,
                        noise=perturbation,
                        max_steps=cfg.max_steps,
                        on_step=recorder.on_step,
                    )
                episodes.append(result)
        bar.close()
        rerun_path = None
        if capture is not None and cfg.rerun is not None:
            rerun_path = capture.write(cfg.rerun, expert=cfg.expert and env_id.startswith("LTC/"))
        path = writer.close() if writer is not None else None
        return RolloutResult(
            episodes=episodes,
            video=path,
            codec=writer.codec if writer is not None else None,
            frames=writer.frames_written if writer is not None else 0,
            frame_size=size,
            fps=fps,
            rerun=rerun_path,
        )
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if probe is not None:
            probe.close()
        env.close()


def build_rollout_parser() -> Any:
    """The argument parser of ``ltc-control rollout`` (generated from :class:`RolloutConfig`)."""
    parser = make_parser(RolloutConfig, prog="ltc-control rollout")
    parser.add_argument("agent", help="checkpoint directory (model.json + model.safetensors) or 'expert'")
    return parser


def rollout_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ltc-control rollout CHECKPOINT [--env ID] [--seed S] [--episodes N] [--video F]``.

    Options come from :class:`RolloutConfig` (``--config preset.yaml`` and ``--set key=value`` work too).
    Writes the video, ``episodes.json`` and the run records into the output folder and prints per-episode
    metrics and the codec that ran.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The process exit code (0 on success; argparse exits with 2 on bad arguments).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_rollout_parser()
    add_output_arguments(parser, resume=False)
    cfg, ns = parse_args_and_config(RolloutConfig, args, parser)
    agent = str(ns.agent)
    check_agent_argument(parser, agent)
    env_id, env_kwargs = resolve_env(agent, cfg.env, cfg.env_kwargs)
    check_agent_env(agent, env_id, env_kwargs)
    cfg = dataclasses.replace(cfg, env=env_id, env_kwargs=env_kwargs)
    record = {"agent": agent, **to_dict(cfg)}
    with open_run_dir(
        cfg.out,
        env_id,
        f"rollout-{agent_label(agent)}",
        cfg.seed,
        record,
        ["ltc-control", "rollout", *args],
        overwrite=ns.overwrite,
        resume=None,
    ) as folder:
        if cfg.video is not None and "video" not in vars(ns) and cfg.video == RolloutConfig.video:
            # no video path given: the default name goes into the run folder with the run's records
            cfg = dataclasses.replace(cfg, video=str(folder / cfg.video))
        result = rollout(agent, cfg)
        atomic_write_json(folder / "episodes.json", result.summary())
    for ep in result.episodes:
        m = ep.metrics()
        print(
            f"seed {m.seed}: {m.steps} steps, {m.total_distance_m:.1f} m, departures {m.departures}, "
            f"completed {m.completed}, mean |lateral| {m.mean_abs_lateral_m:.3f} m"
        )
    if result.video is not None:
        codec = vid.CODEC_NAMES.get(result.codec or "", result.codec)
        print(
            f"wrote {result.video}: {result.frames} frames {result.frame_size[0]}x{result.frame_size[1]} "
            f"at {result.fps:g} fps, codec {codec}"
        )
    if result.rerun is not None:
        print(f"wrote {result.rerun} (Rerun recording; open it with: rerun {result.rerun})")
    print(f"run folder: {folder}")
    return 0
