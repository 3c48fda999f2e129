"""The ``ltc-control`` command line.

Each sub-command lives next to the code it drives and is imported lazily, so ``ltc-control --help`` stays
fast and an installed user needs no checkout of ``experiments/``.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, ModuleType

from ltc_control.errors import ExpectedError, one_line

# sub-command -> (module, function, one-line help); each function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "ltc_control.agents.demo",
        "demo_main",
        "train a small lane-keeping policy, roll it out, plot neurons",
    ),
    "train": (
        "ltc_control.agents.imitation_cli",
        "train_main",
        "train a policy by behaviour cloning / DAgger",
    ),
    "dataset": (
        "ltc_control.agents.dataset_cli",
        "dataset_main",
        "collect or summarise demonstration datasets",
    ),
    "evaluate": (
        "ltc_control.agents.evaluate_cli",
        "evaluate_main",
        "closed-loop evaluation with noise robustness",
    ),
    "rollout": ("ltc_control.agents.rollout", "rollout_main", "run a policy and write an mp4 video"),
    "inspect": (
        "ltc_control.agents.inspect",
        "inspect_main",
        "record a rollout and write neuron plots + HTML",
    ),
    "export": (
        "ltc_control.agents.export",
        "export_main",
        "export a checkpoint's control step to ONNX / torch.export (with a parity check)",
    ),
    "study": (
        "ltc_control.agents.study.cli",
        "study_main",
        "the NCP study: train and evaluate every controller under the same budget",
    ),
    "bench": (
        "ltc_control.cli",
        "bench_main",
        "benchmarks from a source checkout (LTC/CfC vs ncps, env steps/s, RL)",
    ),
}

# ----------------------------------------------------------------------------------------------- benchmarks
# The benchmarks are not part of the installed package: they live in the checkout's experiments/bench/.
#: benchmark name -> (file in experiments/bench/, function taking argv, one-line help)
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "ltc": (
        "ltc_speed.py",
        "ltc_bench_main",
        "fast LTC vs ncps LTC and nn.LSTM (training, inference, latency); --cfc-only: CfC vs ncps' CfC",
    ),
    "env": ("env_speed.py", "main", "LTC/LaneKeeping-v0 camera steps/s vs CarRacing-v3, 1 env and 2 workers"),
    "rl": ("rl_bench.py", "main", "partially observed RL: LTC-PPO vs CfC-PPO vs LSTM-PPO (--config FILE)"),
}


def bench_folder() -> Path | None:
    """The source checkout's ``experiments/bench`` folder next to this package, or None (installed wheel)."""
    import ltc_control

    folder = Path(ltc_control.__file__).resolve().parent.parent / "experiments" / "bench"
    return folder if folder.is_dir() else None


def load_benchmark(name: str) -> ModuleType:
    """Imports the module of benchmark ``name`` from :func:`bench_folder`.

    The folder goes on ``sys.path`` and the module is imported by its file name (not executed from a path),
    so worker processes started with ``spawn``, which inherit ``sys.path``, can unpickle its functions.

    Raises:
        FileNotFoundError: there is no source checkout.
    """
    folder = bench_folder()
    if folder is None:
        raise FileNotFoundError("no source checkout with experiments/bench next to the ltc_control package")
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return importlib.import_module(Path(BENCHMARKS[name][0]).stem)


def bench_main(argv: Sequence[str]) -> int:
    """Entry point of ``ltc-control bench <name> [options]``.

    Args:
        argv: arguments after ``bench`` (the benchmark name first).

    Returns:
        The process exit code (2 for an unknown benchmark or when there is no source checkout).
    """
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        width = max(len(n) for n in BENCHMARKS)
        print("usage: ltc-control bench <benchmark> [options]\n\nbenchmarks (need a source checkout):")
        for name, (_, _, help_) in BENCHMARKS.items():
            print(f"  {name.ljust(width)}  {help_}")
        return 0
    name = args[0]
    if name not in BENCHMARKS:
        print(
            f"ltc-control bench: unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    if bench_folder() is None:
        print(
            "ltc-control bench: the benchmarks live in experiments/bench/ of a source checkout, which this "
            "installation does not have; clone the repository and install it with 'pip install -e .[dev]'",
            file=sys.stderr,
        )
        return 2
    _, func, _ = BENCHMARKS[name]
    return int(getattr(load_benchmark(name), func)(args[1:]) or 0)


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: ltc-control <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'ltc-control <command> --help' for the options of a command."]
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so that every command saves its resume state the same way."""


_TERMINATED: list[bool] = [False]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _TERMINATED[0] = True
    raise Terminated(f"signal {signum}")


@contextmanager
def terminate_as_interrupt(then_ignore: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Args:
        then_ignore: after the block, ignore SIGINT and SIGTERM instead of restoring SIGTERM's handler (the
            program is about to exit: a signal that comes once the command is over must not turn a finished
            command into a traceback or a kill).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        if then_ignore:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            signal.signal(signal.SIGTERM, previous)


def run_command(name: str, func: object, argv: list[str], exiting: bool = False) -> int:
    """Run one sub-command under the CLI contract (``docs/cli.md``).

    An :class:`~ltc_control.errors.ExpectedError` prints one line to stderr and gives exit status 2; an
    interrupt (Ctrl-C: 130, SIGTERM: 143) that the command did not handle itself prints one line; anything
    else propagates with its traceback. ``exiting``: the process ends after the command (the console
    script), so SIGINT and SIGTERM are ignored once the command is over.
    """
    _TERMINATED[0] = False
    try:
        with terminate_as_interrupt(then_ignore=exiting):
            rc = int(func(argv) or 0)  # type: ignore[operator]
        return 143 if rc == 130 and _TERMINATED[0] else rc
    except ExpectedError as exc:
        print(f"ltc-control {name}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"ltc-control {name}: interrupted", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130


def console_main() -> int:
    """The ``ltc-control`` console script: :func:`main` on ``sys.argv``, then the process exits.

    Unlike a call of :func:`main` from Python, a SIGINT or SIGTERM that arrives after the command has finished
    (while the interpreter shuts down) is ignored: the command's own exit status stands.
    """
    return main(None, exiting=True)


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run ``ltc-control`` with ``argv`` (the sub-command and its options) in this process.

    Args:
        argv: command-line arguments without the program name (defaults to ``sys.argv[1:]``).
        exiting: the process exits after the command (see :func:`console_main`).

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
    return run_command(name, func, rest, exiting=exiting)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(console_main())
