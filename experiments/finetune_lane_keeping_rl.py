"""Lane keeping by RL: fine-tune an imitation-trained policy with RecurrentPPO, compare closed-loop metrics.

Usage::

    .venv/bin/python experiments/finetune_lane_keeping_rl.py --checkpoint runs/<run>/checkpoints/best \\
        --set 'env_kwargs={road_length: 250.0}' --timesteps 4096

Writes ``experiments/results/<name>.md`` (default ``rl_lane_keeping_finetune``), and under
``runs/rl_finetune/`` the JSON record and the fine-tuned ``Policy`` checkpoint (``--checkpoint_out``), which
``ltc-control rollout|evaluate|inspect`` read like any other. Library code:
:mod:`ltc_control.agents.sb3_finetune`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ltc_control.config import parse_config


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the config and run the fine-tuning."""
    from ltc_control.agents.sb3_finetune import FinetuneConfig, finetune

    config = parse_config(FinetuneConfig, argv, description=__doc__)
    finetune(config)
    print(open(f"{config.out_dir}/{config.name}.md").read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
