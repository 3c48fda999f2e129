"""``ltc-control study``: run (or resume) the NCP study and write its table, CSV and plots."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "study_main"]

_EPILOG = """\
Every --set KEY=VALUE override (dotted, value parsed as YAML) changes the config, e.g.
  --set seeds=5 --set evaluation.num_roads=10 --set 'tuning.lr_controller=[0.001, 0.003]'
Keys: name, out_dir, results_dir, seeds, workers, torch_threads, env.{id,kwargs}, expert.*, demos.*,
test_demos.{seed_start,num_roads}, policy.* (shared camera / perception / action head),
bc.* (training budget), dagger.*, tuning.{lr_controller,seed}, models (list of {name, label, controller}),
reference, evaluation.* (seed_start, num_roads, noise_levels, shifts, randomized_visuals,
noise_seed, max_steps, num_envs, saliency_frames, saliency_noise, inference_steps). Unknown keys are errors.

Resuming: run the same command again; finished trials are read back, interrupted ones restart cleanly.
Trial folders: <out_dir>/<name>/trials/<kind>-<model>-s<seed>-lr<lr>-<id>/ (id = hash of the trial's config).
Cluster: --backend ray --address auto (on a node of the cluster) or ray://HEAD:10001; the study folder must be
on a filesystem all nodes share (see docs/study.md).
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``ltc-control study`` argument parser (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="ltc-control study",
        description="Train and evaluate every controller of the NCP study under the same data, budget and "
        "learning-rate choice; write <results_dir>/<name>.md, .csv and plots.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="YAML",
        help="study preset (experiments/configs/ncp_study_small.yaml or ncp_study.yaml); default: the "
        "built-in "
        "small preset",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override applied after --config, value parsed as YAML (repeatable)",
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where trials run: local worker processes (default, no extra service) or Ray tasks",
    )
    parser.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster address ('auto', 'ray://head:10001'); default: start a local Ray instance "
        "(--backend ray only)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="trials at once (overrides the config's 'workers'; with a Ray cluster: default all its CPUs)",
    )
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        metavar="C",
        help="CPUs Ray reserves per trial (default 1; --backend ray only)",
    )
    parser.add_argument(
        "--max-trials",
        type=int,
        default=None,
        metavar="N",
        help="start at most N trials in this call, then stop (a partial run; rerun to continue)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the table, CSV and plots from the trials finished so far",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="run the trials but do not write the report",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def study_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ltc-control study``.

    Returns:
        0 when every trial finished, 1 when some failed or are missing, 2 on a config error, 130 on Ctrl-C.
    """
    import dataclasses

    from ltc_control.agents.study.config import StudyConfig
    from ltc_control.config import ConfigError, apply_overrides, load_yaml

    parser = build_parser()
    ns = parser.parse_args(None if argv is None else list(argv))
    try:
        config = load_yaml(StudyConfig, ns.config) if ns.config is not None else StudyConfig()
        config = apply_overrides(config, ns.overrides)
        if ns.workers is not None:
            config = dataclasses.replace(config, workers=ns.workers)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        # one line under the CLI contract (docs/cli.md): ltc-control study: error: <message>
        raise ConfigError(str(exc).splitlines()[0]) from exc
    if ns.address is not None and ns.backend != "ray":
        raise ConfigError("--address is only used with --backend ray")
    from ltc_control.agents.study.report import write_report
    from ltc_control.agents.study.runner import run_study, study_dir

    t0 = time.time()
    if not ns.report_only:
        from ltc_control.agents.study.backends import make_backend

        backend = make_backend(ns.backend, config.workers, ns.address, ns.cpus_per_trial)
        try:
            state = run_study(config, backend, progress=not ns.no_progress, max_trials=ns.max_trials)
        except KeyboardInterrupt:
            backend.terminate()
            print(
                f"\ninterrupted; rerun the same command to resume (finished trials are kept in "
                f"{study_dir(config) / 'trials'})",
                file=sys.stderr,
            )
            return 130
        finally:
            backend.close()
        if state.failed:
            print(
                f"{len(state.failed)} trial(s) failed: see their log.txt under {study_dir(config)}/trials",
                file=sys.stderr,
            )
    if not ns.no_report:
        paths = write_report(config, started=t0)
        for p in paths:
            print(p)
    return 0
