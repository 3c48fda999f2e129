"""Neuron-level inspection of a lane-keeping policy: record a rollout, draw every plot, write one HTML page.

The same as ``ltc-control inspect`` (options from ``InspectConfig``; ``--config preset.yaml`` and
``--set key=value`` work too), plus ``--untrained`` to inspect a freshly initialised policy when no checkpoint
is at hand (a smoke test of the pipeline, not a meaningful analysis).

Usage:
    python experiments/inspect_policy.py runs/<run>/checkpoints/best --out runs/<run>/inspection
    python experiments/inspect_policy.py CKPT --out insp --ablation --ablation_seeds 1000 1001
    python experiments/inspect_policy.py insp/trace.npz --out insp_replot    # re-draw from a saved trace
    python experiments/inspect_policy.py --untrained --policy_seed 0 --out insp_untrained --steps 200
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ltc_control.agents.inspect import InspectConfig, inspect_main, inspect_policy
from ltc_control.config import make_parser, parse_args_and_config


def main(argv: Sequence[str] | None = None) -> int:
    """Run the inspection; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--untrained" not in args:
        return inspect_main(args, prog="experiments/inspect_policy.py")
    parser = make_parser(InspectConfig, prog="experiments/inspect_policy.py --untrained")
    parser.add_argument("--untrained", action="store_true", help="inspect a freshly initialised policy")
    parser.add_argument("--policy_seed", type=int, default=0, help="torch seed of the untrained policy")
    cfg, ns = parse_args_and_config(InspectConfig, args, parser)
    import torch

    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(ns.policy_seed)
    result = inspect_policy(
        Policy(PolicyConfig()), cfg.out, env_id=cfg.env, seed=cfg.seed, steps=cfg.steps, config=cfg
    )
    print(f"wrote {result.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
