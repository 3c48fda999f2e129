"""The imitation trainer: one training run's data, model, optimiser, checkpoints and DAgger rounds.

:class:`_Trainer` holds the state of a run (resumable from its folder) and does its steps: collect the
demonstrations and the DAgger episodes (:mod:`ltc_control.agents.collection`), train and validate on
``(B, T)`` windows with truncated BPTT (optionally data-parallel, :class:`_Dist`), save checkpoints, and
score a checkpoint in closed loop (:func:`ltc_control.agents.evaluation.evaluate`). The pipeline that
drives it is :func:`ltc_control.agents.imitation.train`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ltc_control.agents.collection import CollectConfig, EpisodeTask, expert_tasks, run_tasks
from ltc_control.agents.datasets import DatasetError, DemoDataset, WindowBatch, split_road_seeds
from ltc_control.agents.evaluation import evaluate
from ltc_control.agents.imitation_config import BCConfig, TrainConfig
from ltc_control.agents.minari_io import is_minari_source, minari_road_seeds
from ltc_control.checkpoint import CheckpointError, load_checkpoint, load_trainer_state, save_checkpoint
from ltc_control.config import to_dict
from ltc_control.errors import RunFolderError
from ltc_control.policy import Policy
from ltc_control.runs import MetricsLogger

__all__ = ["curve_weighted_mse"]


def curve_weighted_mse(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """Squared error weighted toward curves, ``sum(w (pred - y)^2) / sum(w)`` with ``w = exp(alpha |y|)``.

    Args:
        pred: predictions ``(B, T, A)``.
        target: labels ``(B, T, A)``.
        alpha: curve-weighting strength (0: plain mean squared error).

    Returns:
        The scalar loss.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"policy output {tuple(pred.shape)} and labels {tuple(target.shape)} differ; the policy's action "
            "size must match the dataset's"
        )
    err = (pred - target) ** 2
    if alpha == 0.0:
        return err.mean()
    w = torch.exp(alpha * target.abs())
    return (w * err).sum() / w.sum()


@dataclass
class _Dist:
    """Data-parallel context (world size 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: Sequence[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return [float(v) for v in t.tolist()]


def _setup_dist(device: str) -> _Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world <= 1:
        return _Dist(device=torch.device(device))
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        # Rank 0 collects demonstrations while the others wait in a barrier: allow long collections.
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=6))
        here = True
    return _Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=dev, initialized_here=here)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _param_groups(policy: nn.Module, bc: BCConfig) -> list[dict[str, Any]]:
    """Adam groups: the perception head at ``lr_perception``, everything else at ``lr_controller``."""
    perception = getattr(policy, "perception", None)
    head_ids = {id(p) for p in perception.parameters()} if isinstance(perception, nn.Module) else set()
    head = [p for p in policy.parameters() if id(p) in head_ids and p.requires_grad]
    rest = [p for p in policy.parameters() if id(p) not in head_ids and p.requires_grad]
    groups = [{"params": rest, "lr": bc.lr_controller, "name": "controller"}]
    if head:
        groups.insert(0, {"params": head, "lr": bc.lr_perception, "name": "perception"})
    return groups


def _batch_tensors(
    batch: WindowBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    obs = torch.from_numpy(np.ascontiguousarray(batch.images)).to(device, non_blocking=True)
    labels = torch.from_numpy(np.ascontiguousarray(batch.labels)).to(device)
    starts = torch.from_numpy(np.ascontiguousarray(batch.episode_starts)).to(device)
    return obs, labels, starts


def _apply_constraints(policy: nn.Module) -> None:
    """Clamp-constrained LTC cells keep their parameters feasible after every optimizer step."""
    for module in policy.modules():
        fn = getattr(module, "apply_constraints", None)
        if callable(fn) and module is not policy:
            fn()


def _copy_checkpoint(src: Path, dst: Path) -> None:
    """Replace the checkpoint folder ``dst`` by a copy of ``src`` (copy next to it, then swap)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    old = dst.with_name(f".{dst.name}.old")
    if dst.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old.exists():
        shutil.rmtree(old)


def _parse_extra(saved: dict[str, Any]) -> dict[str, Any]:
    """The trainer's resume state from its saved form (typed; raises on a malformed entry)."""
    extra = dict(saved)
    extra["round_scores"] = {int(k): dict(v) for k, v in json.loads(extra["round_scores"]).items()}
    extra["best_val"] = float(extra["best_val"])
    extra.setdefault("collected_round", 0)
    for key in ("round", "epoch", "step", "bad_epochs", "collected_round"):
        if isinstance(extra[key], bool) or int(extra[key]) != extra[key] or int(extra[key]) < 0:
            raise ValueError(f"{key} = {extra[key]!r} is not a count")
        extra[key] = int(extra[key])
    if not isinstance(extra["round_done"], bool):
        raise ValueError(f"round_done = {extra['round_done']!r} is not true/false")
    extra["train_seconds"] = float(extra["train_seconds"])
    return extra


def _seeds_of(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


# -------------------------------------------------------------------------------------------------- training
class _Trainer:
    """State and loops of one training run (see :func:`train`)."""

    def __init__(self, config: TrainConfig, run_dir: Path, dist: _Dist, progress: bool) -> None:
        self.cfg = config
        self.run_dir = run_dir
        self.dist = dist
        self.progress = progress and dist.main
        self.ckpt_dir = run_dir / "checkpoints"
        torch.manual_seed(config.seed)
        self.policy = Policy(config.policy).to(dist.device)
        self.model: nn.Module = self.policy
        if dist.world_size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.policy, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.Adam(
            _param_groups(self.policy, config.bc), weight_decay=config.bc.weight_decay
        )
        self.state: dict[str, Any] = {
            "round": 0,
            "epoch": 0,  # epochs finished in the current round
            "step": 0,
            "best_val": math.inf,
            "bad_epochs": 0,
            "round_done": False,
            "round_scores": {},  # round -> closed-loop validation score
            "train_seconds": 0.0,
            "metrics_rows": 0,  # rows of metrics.csv at the resume point
            "metrics_sha256": "",  # and their digest (a damaged metrics.csv is detected on resume)
            "collected_round": 0,  # the last DAgger round whose episodes are all collected
        }
        self.logger: Any = None
        if dist.main:
            self.logger = MetricsLogger(run_dir)

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, name: str = "last", with_state: bool = False) -> Path:
        """Write ``checkpoints/<name>`` (rank 0); ``with_state`` adds the optimizer and trainer state."""
        path = self.ckpt_dir / name
        if self.dist.main:
            meta = {
                "train_config": to_dict(self.cfg),
                "round": self.state["round"],
                "epoch": self.state["epoch"],
                "step": self.state["step"],
                "best_val": self.state["best_val"] if math.isfinite(self.state["best_val"]) else None,
            }
            extra = None
            if with_state:
                if self.logger is not None:
                    self.state["metrics_rows"] = self.logger.num_rows
                    self.state["metrics_sha256"] = self.logger.digest()
                extra = dict(self.state)
                extra["round_scores"] = json.dumps(self.state["round_scores"])
                extra["best_val"] = repr(float(self.state["best_val"]))  # keeps inf exactly
            save_checkpoint(
                path, self.policy, meta, optimizer=self.optimizer if with_state else None, extra_state=extra
            )
        return path

    def save_state(self) -> None:
        """The resume point: ``checkpoints/last`` with optimizer and trainer state."""
        self.save("last", with_state=True)

    def restore(self) -> bool:
        """Load ``checkpoints/last`` with its trainer state if present; True when something was loaded."""
        last = self.ckpt_dir / "last"
        if not last.exists() and not any(self.ckpt_dir.glob(".last.old-*")):
            # interrupted before the first epoch ended: start training from the beginning, without the
            # metric rows the interrupted process logged
            if self.logger is not None:
                self.logger.truncate(0)
            return False
        loaded, _ = load_checkpoint(last)  # a damaged or incomplete checkpoint is an error, never a restart
        self.policy.load_state_dict(loaded.state_dict())
        trainer_state = load_trainer_state(last)
        if trainer_state is None or trainer_state.get("extra") is None:
            raise CheckpointError(
                f"{last} has no trainer state; it was not written by this trainer's resume logic"
            )
        try:
            if trainer_state.get("optimizer") is not None:
                self.optimizer.load_state_dict(trainer_state["optimizer"])
            extra = _parse_extra(trainer_state["extra"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{last}/trainer_state.json holds a malformed resume state ({type(exc).__name__}: {exc}); "
                "restore the run folder from a good copy"
            ) from exc
        if "metrics_rows" in extra and self.logger is not None:
            rows = extra["metrics_rows"] = int(extra["metrics_rows"])
            digest = extra.get("metrics_sha256")
            if self.logger.num_rows < rows or (digest is not None and self.logger.digest(rows) != digest):
                raise RunFolderError(
                    f"{self.logger.csv_path} was truncated or altered after the resume point "
                    f"({self.logger.num_rows} rows, {rows} expected up to it); restore it from a good copy"
                )
            self.logger.truncate(rows)  # drop the rows logged after this resume point (rerun now)
        self.state.update(extra)
        return True

    def log(self, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log(self.state["step"], metrics)

    # ------------------------------------------------------------------------------------------------ data
    def data_dir(self) -> Path:
        return Path(self.cfg.demos.dir) if self.cfg.demos.dir else self.run_dir / "data"

    def minari_source(self) -> bool:
        """``demos.dir`` names a Minari dataset (read as is: nothing is collected into it)."""
        return bool(self.cfg.demos.dir) and is_minari_source(self.cfg.demos.dir)

    def data_source(self) -> str | Path:
        """What ``open_demos`` reads: the Minari id/folder as given, else our dataset folder."""
        return self.cfg.demos.dir if self.minari_source() else self.data_dir()

    def collect_config(self, max_steps: int) -> CollectConfig:
        d = self.cfg.demos
        return CollectConfig(
            env=self.cfg.env,
            expert=self.cfg.expert,
            noise=d.noise,
            seed_start=d.seed_start,
            num_roads=d.num_roads,
            episodes_per_road=d.episodes_per_road,
            max_steps=max_steps,
            workers=self.cfg.workers,
            episodes_per_chunk=d.episodes_per_chunk,
            seed=self.cfg.seed,
        )

    def collect_demos(self) -> None:
        if self.minari_source():
            if self.cfg.dagger.rounds:
                raise ValueError(
                    f"demos.dir={self.cfg.demos.dir!r} is a Minari dataset, which DAgger rounds cannot "
                    "append their learner episodes to; set dagger.rounds=0, or train from our format "
                    "(collect with 'ltc-control dataset collect')"
                )
            return  # train on the Minari episodes as they are
        if self.dist.main:
            cc = self.collect_config(self.cfg.demos.max_steps)
            stats = run_tasks(
                self.data_dir(),
                cc,
                expert_tasks(cc),
                metadata={"collect": to_dict(cc)},
                progress=self.progress,
                desc="collect demos",
            )
            if stats["new_episodes"]:
                print(
                    f"collected {stats['new_episodes']} expert episodes ({stats['steps']} steps, "
                    f"{stats['completed']} without departure)",
                    file=sys.stderr,
                )
        self.dist.barrier()

    def road_split(self) -> tuple[list[int], list[int]]:
        if self.minari_source():
            seeds = minari_road_seeds(self.cfg.demos.dir)  # the roads the Minari dataset holds
            ev = self.cfg.eval
            overlap = set(seeds) & set(_seeds_of(ev.seed_start, ev.num_roads))
            if overlap:
                raise ValueError(
                    f"the Minari dataset {self.cfg.demos.dir!r} holds eval roads (e.g. seed {min(overlap)}); "
                    "move eval.seed_start"
                )
        else:
            seeds = _seeds_of(self.cfg.demos.seed_start, self.cfg.demos.num_roads)
        return split_road_seeds(seeds, self.cfg.demos.val_fraction, seed=self.cfg.seed)

    def collect_dagger(self, round_: int, checkpoint: Path) -> None:
        """Roll the learner of the previous round out on training roads; the expert labels each state."""
        cfg = self.cfg.dagger
        if self.dist.main:
            train_seeds, _ = self.road_split()
            beta = cfg.beta * cfg.beta_decay ** (round_ - 1)
            tasks = []
            for k in range(cfg.episodes_per_round):
                road = train_seeds[k % len(train_seeds)]
                mix_seed = int(np.random.SeedSequence([self.cfg.seed, round_, k]).generate_state(1)[0])
                tasks.append(
                    EpisodeTask(
                        road_seed=road,
                        key=f"dagger_{round_}/road{road}/ep{k}",
                        source=f"dagger_{round_}",
                        noise_seed=mix_seed,
                        checkpoint=str(checkpoint),
                        beta=beta,
                    )
                )
            stats = run_tasks(
                self.data_dir(),
                self.collect_config(cfg.max_steps),
                tasks,
                metadata={"dagger_round": round_, "beta": beta, "checkpoint": str(checkpoint)},
                progress=self.progress,
                desc=f"dagger round {round_}",
                torch_threads=1,
            )
            # the whole round's episodes (also those collected before an interrupt): a resumed round logs
            # the same row as an uninterrupted one
            self.log(
                {
                    "dagger/round": round_,
                    "dagger/beta": beta,
                    "dagger/episodes": stats["all_episodes"],
                    "dagger/steps": stats["all_steps"],
                    "dagger/completed_fraction": stats["all_completed"] / max(1, stats["all_episodes"]),
                }
            )
        self.dist.barrier()

    # -------------------------------------------------------------------------------------------- training
    def validate(self, val: DemoDataset) -> float:
        """Mean squared error (unweighted) over the validation windows, reduced over ranks."""
        bc = self.cfg.bc
        self.model.eval()
        total, count = 0.0, 0.0
        with torch.no_grad():
            for batch in val.iter_windows(
                bc.batch_size * 4,
                bc.window,
                stride=bc.window,
                shuffle=False,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            ):
                obs, labels, starts = _batch_tensors(batch, self.dist.device)
                pred, _ = self.policy(obs, episode_starts=starts)
                total += float(((pred - labels) ** 2).sum())
                count += float(labels.numel())
        total, count = self.dist.all_sum([total, count])
        return total / count if count else math.nan

    def train_epoch(self, data: DemoDataset, epoch_seed: int) -> float:
        bc = self.cfg.bc
        self.model.train()
        n_batches = data.num_batches(
            bc.batch_size, bc.window, stride=bc.stride, drop_last=True, world_size=self.dist.world_size
        )
        if bc.max_batches_per_epoch:
            n_batches = min(n_batches, bc.max_batches_per_epoch)
        if n_batches == 0:
            raise ValueError(
                f"no training batch: the training roads give fewer than batch_size={bc.batch_size} windows "
                "of "
                f"{bc.window} steps per process; collect more or longer episodes or lower bc.batch_size"
            )
        batches = data.iter_windows(
            bc.batch_size,
            bc.window,
            stride=bc.stride,
            seed=self.cfg.seed,
            epoch=epoch_seed,
            drop_last=True,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        bar = tqdm(
            total=n_batches,
            desc=f"round {self.state['round']} epoch {self.state['epoch'] + 1}",
            unit="batch",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        losses = []
        params = [p for p in self.policy.parameters() if p.requires_grad]
        for i, batch in enumerate(batches):
            if i >= n_batches:
                break
            obs, labels, starts = _batch_tensors(batch, self.dist.device)
            pred, _ = self.model(obs, episode_starts=starts)
            loss = curve_weighted_mse(pred, labels, bc.curve_alpha)
            if not torch.isfinite(loss):
                if not bool(torch.isfinite(labels).all()):
                    raise DatasetError(
                        f"the training labels hold NaN or inf (a batch at step {self.state['step']}); the "
                        f"dataset {self.data_dir()} is damaged: check it with 'ltc-control dataset summary "
                        "--verify' and collect it again"
                    )
                raise FloatingPointError(
                    f"training loss became {float(loss)} at step {self.state['step']}; lower "
                    "bc.lr_controller / "
                    "bc.lr_perception or enable gradient clipping (bc.grad_clip)"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = (
                float(nn.utils.clip_grad_norm_(params, bc.grad_clip)) if bc.grad_clip > 0 else math.nan
            )
            self.optimizer.step()
            _apply_constraints(self.policy)
            self.state["step"] += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if self.state["step"] % bc.log_every == 0:
                self.log(
                    {"train/loss": float(np.mean(losses[-bc.log_every :])), "train/grad_norm": grad_norm}
                )
        bar.close()
        return float(np.mean(losses)) if losses else math.nan

    def run_round(self, round_: int, train: DemoDataset, val: DemoDataset | None) -> None:
        """Train until the epoch limit or early stopping; ends with the round's best-validation weights."""
        bc = self.cfg.bc
        max_epochs = bc.epochs if round_ == 0 else self.cfg.dagger.epochs_per_round
        round_best = self.ckpt_dir / f"round{round_}_best"
        while self.state["epoch"] < max_epochs:
            t0 = time.perf_counter()
            epoch_seed = round_ * 10_000 + self.state["epoch"]
            train_loss = self.train_epoch(train, epoch_seed)
            val_loss = self.validate(val) if val is not None and len(val) else train_loss
            self.state["epoch"] += 1
            self.state["train_seconds"] += time.perf_counter() - t0
            improved = val_loss < self.state["best_val"] - bc.min_delta
            if improved:
                self.state["best_val"] = val_loss
                self.state["bad_epochs"] = 0
                self.save(round_best.name)
            else:
                self.state["bad_epochs"] += 1
            self.log(
                {
                    "epoch/train_loss": train_loss,
                    "epoch/val_loss": val_loss,
                    "epoch/best_val_loss": self.state["best_val"],
                    "epoch/round": round_,
                    "epoch/seconds": time.perf_counter() - t0,
                }
            )
            if self.progress:
                print(
                    f"round {round_} epoch {self.state['epoch']}/{max_epochs}: train {train_loss:.5f} "
                    f"val {val_loss:.5f}{' *' if improved else ''}",
                    file=sys.stderr,
                )
            self.save_state()
            if bc.patience and self.state["bad_epochs"] >= bc.patience:
                break
        self.dist.barrier()
        if round_best.exists():
            best, _ = load_checkpoint(round_best)
            self.policy.load_state_dict(best.state_dict())
        self.state["round_done"] = True
        self.save_state()
        self.dist.barrier()

    def closed_loop_score(self, checkpoint: Path, seeds: list[int]) -> dict[str, float]:
        """Completion rate and distance before departure on ``seeds`` (rank 0 only)."""
        report = evaluate(
            str(checkpoint),
            self.cfg.env.id,
            seeds,
            noise_levels=(0.0,),
            workers=self.cfg.workers,
            env_kwargs=self.cfg.env.kwargs,
            max_steps=self.cfg.eval.max_steps or None,
            completion_tolerance=self.cfg.eval.completion_tolerance,
            progress=self.progress,
        )
        level = report.levels[0]
        return {
            "completion_rate": float(level.completion_rate.value),
            "distance_before_departure_m": float(level.distance_before_departure_m.value),
            "mean_abs_lateral_m": float(level.mean_abs_lateral_m.value),
        }
