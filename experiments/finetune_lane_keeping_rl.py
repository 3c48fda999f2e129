"""Lane keeping by RL: fine-tune an imitation-trained policy with RecurrentPPO, compare closed-loop metrics.

Usage::

    .venv/bin/python experiments/finetune_lane_keeping_rl.py --checkpoint runs/<run>/checkpoints/best \\
        --set 'env_kwargs={road_length: 250.0}' --timesteps 4096

Writes ``experiments/results/<name>.md`` (default ``rl_lane_keeping_finetune``), and under
``runs/rl_finetune/`` the JSON record and the fine-tuned ``Policy`` checkpoint (``--checkpoint_out``), which
``ltc-control rollout|evaluate|inspect`` read like any other. Library code:
:mod:`ltc_control.agents.sb3_finetune`.

Ctrl-C or SIGTERM stops the run (exit 130 / 143) with a resume point at the last rollout start in
``<checkpoint_out>.resume``; the same command with ``--resume`` finishes it with the same weights as an
uninterrupted run. An existing ``checkpoint_out`` is refused unless ``--overwrite``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ltc_control.config import make_parser, parse_args_and_config


def main(argv: Sequence[str] | None = None, exiting: bool = False) -> int:
    """Parse the config and run the fine-tuning (Ctrl-C / SIGTERM: exit 130 / 143, resume with --resume).

    ``exiting``: the process ends afterwards (run as a script), so a signal that comes once the work is done
    is ignored, as in the ``ltc-control`` commands."""
    from ltc_control.agents.sb3_finetune import FinetuneConfig, finetune, resume_folder
    from ltc_control.cli import Terminated, terminate_as_interrupt
    from ltc_control.errors import ExpectedError, one_line

    parser = make_parser(FinetuneConfig, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (same options) from its resume point",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace checkpoint_out / discard an interrupted run's state"
    )
    config, ns = parse_args_and_config(FinetuneConfig, argv, parser)
    try:
        with terminate_as_interrupt(then_ignore=exiting):
            finetune(config, resume=ns.resume, overwrite=ns.overwrite)
    except ExpectedError as exc:
        print(f"finetune_lane_keeping_rl.py: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(
            f"interrupted: the resume point is {resume_folder(config)}; continue with the same options and "
            "--resume",
            file=sys.stderr,
        )
        return 143 if isinstance(exc, Terminated) else 130
    print(open(f"{config.out_dir}/{config.name}.md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main(exiting=True))
