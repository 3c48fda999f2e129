"""``ltc-control demo``: the main job on built-in defaults, end to end.

1. Train a small camera-to-steering lane-keeping policy (19-neuron NCP-LTC behind the NCP paper's CNN
   head) by behaviour cloning of a privileged expert, and evaluate it on held-out roads
   (:func:`agents.imitation.train`).
2. Roll the trained policy out on a held-out road to an mp4 with the camera, a chase view, the steering and
   every neuron's activity (:func:`agents.rollout.rollout`).
3. Record a rollout and write the neuron plots and an HTML report
   (:func:`ltc_control.inspection.inspect_policy`).

Everything lands in one run folder (printed at the end). The training options are those of
``ltc-control train`` (``--config``, ``--set key=value``, generated flags); the demo adds a few of its own.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ltc_control.agents.imitation import train
from ltc_control.agents.imitation_config import TrainConfig
from ltc_control.agents.inspect import InspectConfig, inspect_policy
from ltc_control.agents.rollout import RolloutConfig, rollout
from ltc_control.config import make_parser, parse_args_and_config

__all__ = ["DemoResult", "demo", "demo_main"]


@dataclasses.dataclass
class DemoResult:
    """What :func:`demo` wrote.

    Attributes:
        run_dir: the training run folder; the video and the inspection report are inside it.
        checkpoint: the trained policy's checkpoint folder.
        video: the rollout mp4 (None when skipped).
        report: the inspection HTML page (None when skipped).
        metrics: training and closed-loop numbers.
        seconds: wall-clock time of each stage.
    """

    run_dir: Path
    checkpoint: Path
    video: Path | None
    report: Path | None
    metrics: dict[str, Any]
    seconds: dict[str, float]


def demo(
    config: Any = None,
    *,
    video_steps: int = 600,
    inspect_steps: int = 400,
    saliency_frames: int = 100,
    skip_video: bool = False,
    skip_inspect: bool = False,
    progress: bool = True,
    argv: Sequence[str] | None = None,
) -> DemoResult:
    """Train, roll out to video and inspect a small lane-keeping policy.

    Args:
        config: a :class:`~ltc_control.agents.imitation_config.TrainConfig` (default: the small preset).
        video_steps: control steps of the rollout video (at 30 Hz, 600 steps are 20 s of driving).
        inspect_steps: control steps of the recorded rollout behind the neuron plots.
        saliency_frames: frames used for saliency maps and the saliency SSIM.
        skip_video: do not write the rollout video.
        skip_inspect: do not write the inspection report.
        progress: show progress bars.
        argv: the command line recorded in the run folder.

    Returns:
        The :class:`DemoResult`.
    """
    cfg = config if config is not None else TrainConfig()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    result = train(cfg, progress=progress, argv=argv)
    seconds["train"] = time.perf_counter() - t0
    if result.interrupted:
        raise KeyboardInterrupt(
            f"training interrupted; resume with: ltc-control train --resume {result.run_dir}"
        )
    run_dir = Path(result.run_dir)
    checkpoint = Path(result.best_checkpoint)
    # A held-out road: the first evaluation seed is never used for training or validation.
    road_seed = int(cfg.eval.seed_start)

    video: Path | None = None
    if not skip_video:
        t0 = time.perf_counter()
        rollout_cfg = RolloutConfig(
            env=cfg.env.id,
            env_kwargs=dict(cfg.env.kwargs),
            seed=road_seed,
            episodes=1,
            max_steps=video_steps,
            video=str(run_dir / "rollout.mp4"),
            out=str(run_dir),
            progress=progress,
        )
        rolled = rollout(str(checkpoint), rollout_cfg)
        video = rolled.video
        seconds["rollout"] = time.perf_counter() - t0

    report: Path | None = None
    if not skip_inspect:
        t0 = time.perf_counter()
        inspect_cfg = InspectConfig(
            env_kwargs=dict(cfg.env.kwargs),
            saliency_frames=saliency_frames,
            formats=("png",),
            threads=1,
            progress=progress,
        )
        inspected = inspect_policy(
            str(checkpoint),
            run_dir / "inspection",
            env_id=cfg.env.id,
            seed=road_seed,
            steps=inspect_steps,
            config=inspect_cfg,
        )
        report = Path(inspected.html)
        seconds["inspect"] = time.perf_counter() - t0

    return DemoResult(
        run_dir=run_dir,
        checkpoint=checkpoint,
        video=video,
        report=report,
        metrics=dict(result.metrics),
        seconds=seconds,
    )


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control demo [train options] [--video-steps N] [--inspect-steps N] [--skip-...]``.

    Returns:
        0 on success, 130 when interrupted.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(
        TrainConfig,
        prog="ltc-control demo",
        description=(
            "Train a small lane-keeping NCP-LTC policy from a privileged expert, evaluate it on held-out "
            "roads, write a rollout mp4 and neuron-inspection plots + an HTML report into one run folder."
        ),
    )
    parser.add_argument("--video-steps", type=int, default=600, help="control steps of the rollout video")
    parser.add_argument(
        "--inspect-steps", type=int, default=400, help="control steps behind the neuron plots"
    )
    parser.add_argument("--saliency-frames", type=int, default=100, help="frames for saliency maps and SSIM")
    parser.add_argument("--skip-video", action="store_true", help="do not write the rollout video")
    parser.add_argument("--skip-inspect", action="store_true", help="do not write the inspection report")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cfg, ns = parse_args_and_config(TrainConfig, args, parser)
    for name in ("video_steps", "inspect_steps", "saliency_frames"):
        if getattr(ns, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be >= 2, got {getattr(ns, name)}")
    try:
        res = demo(
            cfg,
            video_steps=ns.video_steps,
            inspect_steps=ns.inspect_steps,
            saliency_frames=ns.saliency_frames,
            skip_video=ns.skip_video,
            skip_inspect=ns.skip_inspect,
            progress=not ns.no_progress,
            argv=["ltc-control", "demo", *args],
        )
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    print(f"run folder:       {res.run_dir}")
    print(f"checkpoint:       {res.checkpoint}")
    if res.video is not None:
        print(f"rollout video:    {res.video}")
    if res.report is not None:
        print(f"inspection page:  {res.report}")
    print("stage seconds:    " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()))
    print(json.dumps(res.metrics, indent=1, default=str))
    return 0
