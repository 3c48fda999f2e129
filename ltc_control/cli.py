"""The ``ltc-control`` command line.

Each sub-command lives next to the code it drives and is imported lazily, so ``ltc-control --help`` stays
fast and an installed user needs no checkout of ``experiments/``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# sub-command -> (module, function, one-line help); each function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "ltc_control.agents.demo",
        "demo_main",
        "train a small lane-keeping policy, roll it out, plot neurons",
    ),
    "train": ("ltc_control.agents.imitation", "train_main", "train a policy by behaviour cloning / DAgger"),
    "dataset": ("ltc_control.agents.datasets", "dataset_main", "collect or summarise demonstration datasets"),
    "evaluate": (
        "ltc_control.agents.evaluation",
        "evaluate_main",
        "closed-loop evaluation with noise robustness",
    ),
    "rollout": ("ltc_control.agents.rollout", "rollout_main", "run a policy and write an mp4 video"),
    "inspect": (
        "ltc_control.inspection.report",
        "inspect_main",
        "record a rollout and write neuron plots + HTML",
    ),
    "export": (
        "ltc_control.agents.export",
        "export_main",
        "export a checkpoint's control step to ONNX / torch.export (with a parity check)",
    ),
    "bench": (
        "ltc_control.bench",
        "bench_main",
        "speed benchmarks (LTC vs ncps / LSTM, env steps per second)",
    ),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: ltc-control <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'ltc-control <command> --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ltc-control`` console script.

    Args:
        argv: command-line arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from ltc_control import __version__

        print(__version__)
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"ltc-control: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr
        )
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
