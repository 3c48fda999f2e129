"""The ``ltc-control evaluate`` command: :class:`EvaluateConfig`, its parser and :func:`evaluate_main`.

Also holds the argument helpers the other closed-loop commands share (:func:`parse_seeds`,
:func:`parse_floats`, :func:`check_agent_argument`, :func:`agent_label`, :func:`prepare_run_dir`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltc_control import runs
from ltc_control.agents.episode import check_agent_env, resolve_env
from ltc_control.agents.evaluation import evaluate
from ltc_control.agents.perturbations import Perturbation
from ltc_control.config import make_parser, parse_args_and_config, to_dict, to_yaml, yaml_load
from ltc_control.errors import InputError
from ltc_control.outputs import claim_output

#: The journal of finished episodes in an evaluation's folder (``--resume`` continues from it).
JOURNAL_NAME = ".evaluation.partial.jsonl"

__all__ = [
    "JOURNAL_NAME",
    "EvaluateConfig",
    "add_output_arguments",
    "open_run_dir",
    "agent_label",
    "build_eval_parser",
    "check_agent_argument",
    "evaluate_main",
    "parse_floats",
    "parse_seeds",
    "prepare_run_dir",
]


def parse_seeds(text: str) -> list[int]:
    """Parse a seed list: ``"1000-1019"``, ``"1,2,5"`` or a mix (``"1-3,10"``); ranges are inclusive."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ValueError(
                f"bad seed list entry {part!r} in {text!r}; use e.g. '1000-1019' or '1,2,3' (inclusive)"
            ) from None
    if not seeds:
        raise ValueError(f"empty seed list {text!r}; use e.g. '1000-1019'")
    return seeds


def parse_floats(text: str, what: str = "noise levels") -> list[float]:
    """Parse ``"0,0.1,0.2"`` into floats (a clear error names the bad entry)."""
    values: list[float] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"bad entry {part!r} in {what} {text!r}; use comma-separated numbers") from None
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {part!r}")
        values.append(value)
    if not values:
        raise ValueError(f"empty {what} {text!r}")
    return values


@dataclass(frozen=True)
class EvaluateConfig:
    """Closed-loop evaluation on held-out roads with Gaussian image noise: ltc-control evaluate.

    Attributes:
        env: Gymnasium env id (None = the checkpoint's training env, else LTC/LaneKeeping-v0).
        seeds: road seeds, inclusive ranges and/or a comma-separated list, e.g. "1000-1019" or "1,2,5".
        noise: Gaussian noise variances on images scaled to [0, 1], comma-separated, e.g. "0,0.1,0.2,0.3".
        workers: worker processes (0 = run in this process).
        out: output folder; None = a new run folder runs/<env>__evaluate-<agent>__<first seed>__<time>.
        max_steps: step cap per episode (None = the env's own limit).
        noise_seed: noise seed shared by every evaluated model.
        brightness: additive brightness offset on the [0, 1] image scale.
        blur: Gaussian blur sigma in pixels (0 = none).
        occlusion: number of black occlusion patches per image.
        occlusion_size: occlusion patch side as a fraction of min(height, width).
        camera_offset: lateral camera offset in metres (passed to envs that have a camera_offset option).
        completion_tolerance: metres from the road's end that count as completing it.
        device: torch device for checkpoint policies.
        env_kwargs: env constructor arguments, e.g. {road_length: 80}; they override the checkpoint's training
            env kwargs key by key.
        progress: show a progress bar.
    """

    env: str | None = None
    seeds: str = "1000-1019"
    noise: str = "0,0.1,0.2,0.3"
    workers: int = 2
    out: str | None = None
    max_steps: int | None = None
    noise_seed: int = 0
    brightness: float = 0.0
    blur: float = 0.0
    occlusion: int = 0
    occlusion_size: float = 0.15
    camera_offset: float = 0.0
    completion_tolerance: float = 1.0
    device: str = "cpu"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        parse_seeds(self.seeds)
        parse_floats(self.noise)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or null, got {self.max_steps}")
        self.perturbation()

    def perturbation(self) -> Perturbation:
        """The extra perturbations (noise variance filled in per level by :func:`evaluate`)."""
        return Perturbation(
            seed=self.noise_seed,
            brightness=self.brightness,
            blur_sigma=self.blur,
            occlusion_patches=self.occlusion,
            occlusion_size=self.occlusion_size,
            camera_offset=self.camera_offset,
        )


def check_agent_argument(parser: argparse.ArgumentParser, agent: str) -> None:
    """Exit through ``parser.error`` unless ``agent`` is ``expert[:kind]`` or a checkpoint folder."""
    if not (agent == "expert" or agent.startswith("expert:")) and not Path(agent).is_dir():
        parser.error(f"checkpoint {agent!r} is not a directory; pass a checkpoint folder or 'expert'")


def agent_label(spec: str) -> str:
    """A short name for an agent spec (checkpoint folder name or ``expert``), for run-folder names."""
    if spec == "expert" or spec.startswith("expert:"):
        return spec.replace(":", "-")
    return Path(spec).resolve().name or "policy"


def prepare_run_dir(
    out: str | os.PathLike[str] | None,
    env_id: str,
    preset: str,
    seed: int,
    config: Mapping[str, Any],
    argv: Sequence[str],
    root: str | os.PathLike[str] = "runs",
) -> Path:
    """Create the output folder of a command and write its records (config, command line, git, versions).

    Args:
        out: an explicit folder (created if needed), or None for a new ``ltc_control.runs`` run folder.
        env_id: env id (part of the run-folder name).
        preset: the command and agent, e.g. ``"evaluate-expert"``.
        seed: first seed (part of the run-folder name).
        config: the resolved configuration.
        argv: the command line.
        root: parent of new run folders.

    Returns:
        The folder.
    """
    if out is None:
        return runs.create_run_dir(Path(root), env_id, preset, seed, config=dict(config), argv=list(argv))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    _write_records(folder, config, argv)
    return folder


def _write_records(folder: Path, config: Mapping[str, Any], argv: Sequence[str]) -> None:
    runs.atomic_write_text(folder / "config.yaml", to_yaml(dict(config)))
    runs.atomic_write_text(folder / "command.txt", " ".join(argv) + "\n")
    info = runs.git_info()
    runs.atomic_write_text(folder / "git.txt", "".join(f"{k}: {v}\n" for k, v in info.items()))
    runs.atomic_write_json(folder / "versions.json", runs.versions())


_NOT_COMPARED = ("progress", "workers", "out", "device")  # options a resumed run may change


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    doc = yaml_load(to_yaml(dict(config))) or {}
    return {k: v for k, v in doc.items() if k not in _NOT_COMPARED}


@contextmanager
def open_run_dir(
    out: str | os.PathLike[str] | None,
    env_id: str,
    preset: str,
    seed: int,
    config: Mapping[str, Any],
    argv: Sequence[str],
    *,
    overwrite: bool = False,
    resume: bool | None = False,
    root: str | os.PathLike[str] = "runs",
) -> Iterator[Path]:
    """The output folder of a command under the CLI contract (``docs/cli.md``), with its run records.

    ``out`` (or a new run folder under ``root``) is claimed with :func:`ltc_control.outputs.claim_output`:
    refused when it holds results unless ``overwrite`` / ``resume``, locked while the command runs, and
    removed again if the command fails with an expected error. ``resume`` needs the options the folder's
    ``config.yaml`` records.

    Args:
        out: the folder, or None for a new ``<root>/<env>__<preset>__<seed>__<time>`` folder.
        env_id: env id (part of a new folder's name).
        preset: the command and agent, e.g. ``"evaluate-expert"``.
        seed: first seed (part of a new folder's name).
        config: the resolved configuration (written to ``config.yaml``).
        argv: the command line.
        overwrite: replace the results in ``out``.
        resume: continue the results in ``out`` (None: the command cannot resume).
        root: parent of new run folders.

    Yields:
        The folder, locked, with ``config.yaml``, ``command.txt``, ``git.txt`` and ``versions.json``.
    """
    if out is None:
        if resume:
            raise InputError("--resume needs --out FOLDER: the folder of the run to continue")
        base = Path(root)
        folder = base / runs.run_dir_name(env_id, preset, seed)
        n = 0
        while folder.exists():
            n += 1
            folder = base / f"{runs.run_dir_name(env_id, preset, seed)}-{n}"
    else:
        folder = Path(out)
    with claim_output(folder, overwrite=overwrite, resume=resume) as claimed:
        saved = claimed / "config.yaml"
        if resume and saved.is_file():
            previous = yaml_load(saved.read_text(encoding="utf-8"))
            if not isinstance(previous, Mapping) or _comparable(previous) != _comparable(config):
                raise InputError(
                    f"--resume: the options differ from those of the run in {claimed} ({saved}); resume with "
                    "the same options, or pass --overwrite to start again"
                )
        _write_records(claimed, config, argv)
        yield claimed


def add_output_arguments(parser: argparse.ArgumentParser, resume: bool = True) -> None:
    """``--overwrite`` (and ``--resume``) of the commands that write an output folder."""
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the results in an --out folder that holds some"
    )
    if resume:
        parser.add_argument(
            "--resume", action="store_true", help="continue the interrupted run in the --out folder"
        )


def build_eval_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ltc-control evaluate`` (generated from :class:`EvaluateConfig`)."""
    parser = make_parser(EvaluateConfig, prog="ltc-control evaluate")
    parser.add_argument("agent", help="checkpoint directory (model.json + model.safetensors) or 'expert'")
    return parser


def report_complete(folder: Path) -> bool:
    """True when ``folder`` holds a whole evaluation report: ``evaluation.json`` and no journal of
    unfinished work (the report is saved before the journal is deleted)."""
    return (folder / "evaluation.json").is_file() and not (folder / JOURNAL_NAME).exists()


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ltc-control evaluate AGENT [--seeds 1000-1019] [--noise 0,0.1,0.2,0.3] ...``.

    Options come from :class:`EvaluateConfig` (``--config preset.yaml`` and ``--set key=value`` work too).
    Writes ``evaluation.json``, ``summary.csv``, ``episodes.csv``, ``crashes_per_km.png`` and the run records
    into the output folder and prints the table.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The process exit code (0 on success; argparse exits with 2 on bad arguments).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_eval_parser()
    add_output_arguments(parser)
    cfg, ns = parse_args_and_config(EvaluateConfig, args, parser)
    agent = str(ns.agent)
    check_agent_argument(parser, agent)
    seeds = parse_seeds(cfg.seeds)
    env_id, env_kwargs = resolve_env(agent, cfg.env, cfg.env_kwargs)
    check_agent_env(agent, env_id, env_kwargs)
    record = {"agent": agent, **to_dict(cfg), "env": env_id, "env_kwargs": env_kwargs}
    claimed: list[Path] = []  # the output folder, once claimed
    try:
        folder = _evaluate_into(agent, cfg, ns, seeds, env_id, env_kwargs, record, args, claimed)
    except KeyboardInterrupt:
        if claimed and report_complete(claimed[0]):
            print(
                f"\ninterrupted after the report was complete: the results in {claimed[0]} are final",
                file=sys.stderr,
            )
            return 130
        where = f"--out {cfg.out}" if cfg.out else "--out <the run folder>"
        print(
            f"\ninterrupted: finished episodes are kept; continue with the same options and {where} --resume",
            file=sys.stderr,
        )
        return 130
    print(f"\nwrote results into {folder}")
    return 0


def _evaluate_into(
    agent: str,
    cfg: EvaluateConfig,
    ns: argparse.Namespace,
    seeds: list[int],
    env_id: str,
    env_kwargs: dict[str, Any],
    record: dict[str, Any],
    args: list[str],
    claimed: list[Path],
) -> Path:
    with open_run_dir(
        cfg.out,
        env_id,
        f"evaluate-{agent_label(agent)}",
        seeds[0],
        record,
        ["ltc-control", "evaluate", *args],
        overwrite=ns.overwrite,
        resume=ns.resume,
    ) as folder:
        claimed.append(folder)
        report = evaluate(
            agent,
            env_id,
            seeds,
            noise_levels=parse_floats(cfg.noise),
            workers=cfg.workers,
            env_kwargs=env_kwargs,
            max_steps=cfg.max_steps,
            noise_seed=cfg.noise_seed,
            perturbation=cfg.perturbation(),
            device=cfg.device,
            completion_tolerance=cfg.completion_tolerance,
            progress=cfg.progress,
            journal=folder / JOURNAL_NAME,
            out_dir=folder,  # the report is saved before the journal is deleted
        )
    print(report.table())
    return folder
