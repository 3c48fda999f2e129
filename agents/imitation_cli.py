"""The ``ltc-control train`` command: imitation training from a preset, with overrides and resume."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ltc_control.agents.imitation import load_run_config, train
from ltc_control.agents.imitation_config import TrainConfig
from ltc_control.config import apply_overrides, make_parser, parse_args_and_config

__all__ = ["train_main"]


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control train [--config YAML] [--set key=value ...] [--resume RUN_DIR]``.

    Returns:
        0 on success, 130 when interrupted (after saving), 2 on a config error.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(TrainConfig, prog="ltc-control train")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (its config.yaml is used; "
        "--set overrides still apply)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cfg, ns = parse_args_and_config(TrainConfig, args, parser)
    config: TrainConfig | None = cfg
    if ns.resume is not None:
        if ns.config is not None:
            parser.error(
                "--resume uses the run's own config.yaml; drop --config (use --set to override keys)"
            )
        config = apply_overrides(load_run_config(ns.resume), ns.overrides)
    result = train(
        config, resume=ns.resume, progress=not ns.no_progress, argv=["ltc-control", "train", *args]
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result.run_dir}")
        if result.interrupted:
            print(f"interrupted: resume with 'ltc-control train --resume {result.run_dir}'")
        else:
            print(f"best checkpoint: {result.best_checkpoint}")
            print(json.dumps(result.metrics, indent=1))
    return 130 if result.interrupted else 0
