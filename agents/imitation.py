"""Behaviour cloning and DAgger for camera-to-steering lane-keeping policies.

The pipeline that :func:`train` runs (and ``ltc-control train`` / ``experiments/train_lane_keeping.py`` call):

1. collect noisy-expert demonstrations on ``demos.num_roads`` road seeds (``ltc_control.agents.collection``;
   resumable, several worker processes);
2. split the roads by seed into training and validation roads;
3. behaviour cloning with truncated BPTT on ``(B, T)`` windows (T = 16 by default) that never cross an
   episode; Adam with separate learning rates for the perception head and the controller; gradient-norm
   clipping; optional curve weighting ``w = exp(alpha |y|)`` (Lechner et al. 2020); validation loss on the
   held-out roads, early stopping, checkpoints (``ltc_control.checkpoint``) every epoch;
4. DAgger rounds (optional): roll the learner out on training roads (per step the expert's action is executed
   with probability ``beta``), let the expert label every visited state from the privileged ``info``, append
   those episodes to the dataset and train again; the round whose policy drives the validation roads best in
   closed loop is kept;
5. closed-loop evaluation of the best checkpoint on held-out road seeds (``ltc_control.agents.evaluation``).

Everything lands in a run folder (``ltc_control.runs``): resolved config, command line, git commit, metrics
CSV + TensorBoard, the dataset, checkpoints and the evaluation report. The resume point (``checkpoints/last``
with the optimizer and trainer state) is written at every epoch and round boundary; Ctrl-C / SIGTERM exit
cleanly and ``train(config, resume=run_dir)`` (``--resume RUN_DIR``) continues from that point, giving the
same files bit for bit as an uninterrupted run.

Under ``torchrun`` (``WORLD_SIZE > 1``) the trainer runs data-parallel with DistributedDataParallel (gloo on
CPU, nccl on GPU): rank 0 collects and writes, every rank trains on its share of each epoch's windows.

Modules: :mod:`.imitation_config` (the configs), :mod:`.imitation_trainer` (one run's state and steps), this
module (the pipeline) and :mod:`.imitation_cli` (``ltc-control train``).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ltc_control.agents.datasets import MANIFEST_NAME, read_manifest
from ltc_control.agents.episode import check_env
from ltc_control.agents.evaluation import evaluate
from ltc_control.agents.imitation_config import TrainConfig, TrainResult
from ltc_control.agents.imitation_trainer import _copy_checkpoint, _seeds_of, _setup_dist, _Trainer
from ltc_control.agents.minari_io import is_minari_source, open_demos
from ltc_control.checkpoint import checkpoint_info, load_checkpoint
from ltc_control.config import ConfigError, from_dict, load_yaml, to_yaml, yaml_load
from ltc_control.errors import ExpectedError, RunFolderError
from ltc_control.locking import FolderLock
from ltc_control.runs import atomic_write_json, atomic_write_text, create_run_dir

__all__ = ["check_train_config", "load_run_config", "select_round", "train"]


def select_round(scores: dict[int, dict[str, float]]) -> int:
    """The DAgger round to keep, from closed-loop scores on the validation roads.

    Highest completion rate first, then the distance before a departure in whole metres (finishing 250.05 m
    or 250.03 m down the same road is the same result), then the smallest mean absolute lateral error, then
    the later round (trained on more data).

    Args:
        scores: round -> ``{"completion_rate", "distance_before_departure_m", "mean_abs_lateral_m"}``.
    """
    if not scores:
        raise ValueError("select_round needs at least one scored round")

    def key(r: int) -> tuple[float, float, float, int]:
        s = scores[r]
        lateral = s.get("mean_abs_lateral_m", math.inf)
        return (s["completion_rate"], math.floor(s["distance_before_departure_m"]), -lateral, r)

    return max(scores, key=key)


def check_train_config(config: TrainConfig) -> None:
    """Check what the config validation alone cannot, before any work starts (issue: errors hours late).

    Builds the env once from ``env.id`` / ``env.kwargs`` (when the run will use it: to collect, for DAgger or
    the closed-loop evaluation) and compares its observation and action shapes with the policy's; an existing
    dataset at ``demos.dir`` must hold images of the policy's shape; a Minari ``demos.dir`` rules out DAgger.

    Raises:
        InputError / ConfigError / DatasetError: the message names the key and the fix.
    """
    pol = config.policy
    obs_shape = tuple(pol.image_shape) if pol.observation == "image" else (pol.vector_size,)
    demos = config.demos.dir
    minari = bool(demos) and is_minari_source(demos)
    if minari and config.dagger.rounds:
        raise ConfigError(
            f"demos.dir={demos!r} is a Minari dataset, which DAgger rounds cannot append their learner "
            "episodes to; set dagger.rounds=0, or train from our format (collect with 'ltc-control dataset "
            "collect')"
        )
    existing = minari or (bool(demos) and (Path(demos) / MANIFEST_NAME).is_file())
    if not existing or config.dagger.rounds or config.eval.num_roads:
        # the env will be used (collection, DAgger, closed-loop evaluation): build it once now
        check_env(
            config.env.id,
            config.env.kwargs,
            observation_shape=obs_shape,
            action_size=pol.action_size,
            what="env (env.id / env.kwargs)",
        )
    if demos and not minari and (Path(demos) / MANIFEST_NAME).is_file():
        manifest = read_manifest(config.demos.dir)
        shape = manifest.get("image_shape")
        if pol.observation == "image" and shape is not None and tuple(shape) != obs_shape:
            raise ConfigError(
                f"demos.dir {config.demos.dir} holds images {tuple(shape)} but policy.image_shape is "
                f"{obs_shape}; use a dataset of the policy's camera size or another demos.dir"
            )


def load_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    """The config of a training run folder, which must be complete (as ``train`` wrote it).

    A ``config.yaml`` with keys missing would silently resume with defaults in their place, so every key
    must be present with the value it loads as.

    Raises:
        RunFolderError: no such folder / no ``config.yaml``, or an incomplete one (the message names it).
        ConfigError: invalid YAML, unknown keys, wrong types.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunFolderError(
            f"{run_dir} is not a training run folder (no config.yaml); pass the folder 'ltc-control train' "
            "printed"
        )
    config = load_yaml(TrainConfig, path)
    written = yaml_load(path.read_text(encoding="utf-8"))
    if written != yaml_load(to_yaml(config)):
        raise RunFolderError(
            f"{path} is incomplete or was edited (it differs from the config it loads as, e.g. a key is "
            "missing); restore it, or pass changes with --set on --resume"
        )
    last = Path(run_dir) / "checkpoints" / "last"
    if (last / "model.json").is_file():
        trained = (checkpoint_info(last).get("metadata") or {}).get("train_config")
        try:
            same = from_dict(TrainConfig, trained) == config if isinstance(trained, dict) else True
        except ConfigError:
            same = False
        if not same:
            raise RunFolderError(
                f"{path} differs from the config {last} was trained with (edited or damaged); restore it, "
                "or pass changes with --set on --resume"
            )
    return config


def _new_run_dir(config: TrainConfig, argv: Sequence[str] | None) -> Path:
    return create_run_dir(config.out_dir, config.env.id, config.name, config.seed, config=config, argv=argv)


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | os.PathLike[str] | None = None,
    progress: bool = True,
    argv: Sequence[str] | None = None,
) -> TrainResult:
    """Collect demonstrations, train by behaviour cloning (+ DAgger), evaluate; see the module docstring.

    Args:
        config: the run config (default: the small demo preset, ``TrainConfig()``). Ignored with ``resume``
            unless given explicitly, in which case it replaces the run's saved config.
        resume: a run folder to continue (its ``config.yaml``, dataset, ``checkpoints/last`` and
            ``train_state.pt``).
        progress: show progress bars and per-epoch lines on stderr.
        argv: the command line recorded in the run folder (``sys.argv`` when None).

    Returns:
        A :class:`TrainResult`. On Ctrl-C / SIGTERM nothing more is saved: the resume point is the last
        finished epoch (as after a SIGKILL), and the result has ``interrupted=True``.
    """
    saved: TrainConfig | None = None
    if resume is not None:
        run_dir = Path(resume)
        saved = load_run_config(run_dir)
        if config is None:
            config = saved
    config = config if config is not None else TrainConfig()
    check_train_config(config)
    dist = _setup_dist(config.bc.device)
    try:
        if config.bc.num_threads:
            torch.set_num_threads(config.bc.num_threads)
        if resume is None:
            run_dir = dist.broadcast(_new_run_dir(config, argv) if dist.main else None)
        try:
            with FolderLock(run_dir) if dist.main else contextlib.nullcontext():
                if resume is not None and dist.main and config != saved:
                    # --set on --resume: the run goes on with the new values, and its record says so
                    atomic_write_text(run_dir / "config.yaml", to_yaml(config))
                trainer = _Trainer(config, run_dir, dist, progress)
                return _run(trainer, resumed=resume is not None)
        except KeyboardInterrupt:
            # outside the training loop (setting up, or the final evaluation): the run folder resumes from
            # its last resume point, or from the start when none was written yet
            if dist.main:
                print(f"\ninterrupted: continue with 'ltc-control train --resume {run_dir}'", file=sys.stderr)
            raise
        except ExpectedError:
            # a new run that failed on a bad file or value before producing anything to resume: no folder
            resumable = (run_dir / "checkpoints" / "last").exists() or (
                run_dir / "data" / MANIFEST_NAME
            ).exists()
            if resume is None and dist.main and not resumable:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    finally:
        if dist.initialized_here:
            torch.distributed.destroy_process_group()


def _run(trainer: _Trainer, resumed: bool) -> TrainResult:
    cfg, dist, state = trainer.cfg, trainer.dist, trainer.state
    if resumed and trainer.restore() and dist.main:
        print(f"resuming {trainer.run_dir} at round {state['round']} epoch {state['epoch']}", file=sys.stderr)
    interrupted = False
    t_start = time.perf_counter()
    try:
        trainer.collect_demos()
        train_seeds, val_seeds = trainer.road_split()
        while state["round"] <= cfg.dagger.rounds:
            round_ = state["round"]
            if not state["round_done"]:
                if round_ > 0 and state["collected_round"] < round_:
                    trainer.collect_dagger(round_, trainer.ckpt_dir / f"round{round_ - 1}")
                    state["collected_round"] = round_
                    trainer.save_state()  # the resume point moves past the collection and its log row
                source = trainer.data_source()  # our dataset folder, or a Minari dataset
                train_data = open_demos(source, road_seeds=train_seeds)
                val_data = open_demos(source, road_seeds=val_seeds, sources=["expert"])
                if dist.main:
                    print(
                        f"round {round_}: {train_data.num_episodes} training episodes "
                        f"({len(train_data)} steps) "
                        f"on roads {train_seeds}, {val_data.num_episodes} validation episodes on {val_seeds}",
                        file=sys.stderr,
                    )
                trainer.run_round(round_, train_data, val_data if val_data.num_episodes else None)
            round_ckpt = trainer.ckpt_dir / f"round{round_}"
            if dist.main and not round_ckpt.exists():
                trainer.save(round_ckpt.name)
            dist.barrier()
            if cfg.dagger.rounds and cfg.dagger.select_by_closed_loop and dist.main and val_seeds:
                if round_ not in state["round_scores"]:
                    score = trainer.closed_loop_score(round_ckpt, val_seeds)
                    state["round_scores"][round_] = score
                    trainer.log({f"round_val/{k}": v for k, v in score.items()} | {"round_val/round": round_})
            state.update(round=round_ + 1, epoch=0, best_val=math.inf, bad_epochs=0, round_done=False)
            trainer.save_state()
            dist.barrier()
    except KeyboardInterrupt:
        # Nothing is saved here: the resume point is the last one written at an epoch (or round) boundary,
        # exactly where a SIGKILL would resume, so an interrupted and resumed run equals an uninterrupted one
        # bit for bit. Saving the mid-epoch weights under the old epoch counter would rerun that epoch from
        # partly trained weights.
        interrupted = True
        if dist.main:
            print(
                f"\ninterrupted: the last finished epoch is saved in {trainer.ckpt_dir / 'last'}; continue "
                f"with 'ltc-control train --resume {trainer.run_dir}'",
                file=sys.stderr,
            )
    best = trainer.ckpt_dir / "best"
    metrics: dict[str, float] = {"train_seconds": float(state["train_seconds"])}
    if not interrupted:
        last_round = cfg.dagger.rounds
        chosen = last_round
        scores = state["round_scores"]
        if scores:
            chosen = select_round(scores)
        if dist.main:
            _copy_checkpoint(trainer.ckpt_dir / f"round{chosen}", best)
        dist.barrier()
        policy, meta = load_checkpoint(best)
        trainer.policy.load_state_dict(policy.state_dict())
        metrics["chosen_round"] = float(chosen)
        if meta.get("best_val") is not None:
            metrics["val_loss"] = float(meta["best_val"])
        metrics["wall_seconds"] = time.perf_counter() - t_start
        if cfg.eval.num_roads and dist.main:
            metrics.update(_final_eval(trainer, best))
        if dist.main:
            atomic_write_json(trainer.run_dir / "final_metrics.json", metrics)
            trainer.log({f"final/{k}": v for k, v in metrics.items()})
    if trainer.logger is not None:
        trainer.logger.close()
    return TrainResult(
        run_dir=trainer.run_dir,
        best_checkpoint=best,
        last_checkpoint=trainer.ckpt_dir / "last",
        metrics=metrics,
        interrupted=interrupted,
        policy=trainer.policy,
    )


def _final_eval(trainer: _Trainer, best: Path) -> dict[str, float]:
    cfg = trainer.cfg
    t0 = time.perf_counter()
    report = evaluate(
        str(best),
        cfg.env.id,
        _seeds_of(cfg.eval.seed_start, cfg.eval.num_roads),
        noise_levels=cfg.eval.noise_levels,
        workers=cfg.workers,
        env_kwargs=cfg.env.kwargs,
        max_steps=cfg.eval.max_steps or None,
        completion_tolerance=cfg.eval.completion_tolerance,
        out_dir=trainer.run_dir / "eval",
        progress=trainer.progress,
    )
    out: dict[str, float] = {"eval_seconds": time.perf_counter() - t0}
    for level in report.levels:
        suffix = "" if level.noise_variance == 0.0 else f"@{level.noise_variance:g}"
        out[f"eval/completion_rate{suffix}"] = float(level.completion_rate.value)
        out[f"eval/distance_before_departure_m{suffix}"] = float(level.distance_before_departure_m.value)
        out[f"eval/crashes_per_km{suffix}"] = float(level.crashes_per_km.value)
        out[f"eval/mean_abs_lateral_m{suffix}"] = float(level.mean_abs_lateral_m.value)
    if trainer.progress:
        print(report.table(), file=sys.stderr)
    return out
