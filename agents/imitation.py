"""Behaviour cloning and DAgger for camera-to-steering lane-keeping policies.

The pipeline that :func:`train` runs (and ``ltc-control train`` / ``experiments/train_lane_keeping.py`` call):

1. collect noisy-expert demonstrations on ``demos.num_roads`` road seeds (``ltc_control.agents.datasets``;
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
CSV + TensorBoard, the dataset, checkpoints and the evaluation report. Ctrl-C saves the last checkpoint and
the trainer state and exits cleanly; ``train(config, resume=run_dir)`` (``--resume RUN_DIR``) continues.

Under ``torchrun`` (``WORLD_SIZE > 1``) the trainer runs data-parallel with DistributedDataParallel (gloo on
CPU, nccl on GPU): rank 0 collects and writes, every rank trains on its share of each epoch's windows.
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ltc_control.agents.collection import CollectConfig, EnvSpec, EpisodeTask, expert_tasks, run_tasks
from ltc_control.agents.datasets import DemoDataset, WindowBatch, split_road_seeds
from ltc_control.agents.evaluation import evaluate
from ltc_control.agents.experts import ExpertConfig, NoiseConfig
from ltc_control.policy import PolicyConfig

__all__ = [
    "BCConfig",
    "DaggerConfig",
    "DemoConfig",
    "ClosedLoopEvalConfig",
    "TrainConfig",
    "TrainResult",
    "curve_weighted_mse",
    "select_round",
    "train",
    "train_main",
]


# --------------------------------------------------------------------------------------------------- configs
#: Camera and roads of the small demo preset (``lane_keeping_small.yaml``, the default ``TrainConfig()``).
SMALL_IMAGE_SHAPE: tuple[int, int, int] = (32, 64, 3)
SMALL_ENV_KWARGS: dict[str, Any] = {"image_height": 32, "image_width": 64, "road_length": 250.0}


@dataclass(frozen=True)
class DemoConfig:
    """Noisy-expert demonstrations collected before training.

    Attributes:
        dir: dataset folder; empty: ``<run_dir>/data``. An existing dataset is reused (episodes it already
            holds are not collected again).
        seed_start: first road seed of the training + validation roads.
        num_roads: number of roads (training and validation together).
        val_fraction: share of those roads (by seed) kept for validation.
        episodes_per_road: noisy-expert episodes per road.
        max_steps: cap on steps per episode (0: until the env ends the episode).
        noise: steering noise on the executed action (labels stay the expert's clean action).
        episodes_per_chunk: episodes per ``.npz`` chunk.
    """

    dir: str = ""
    seed_start: int = 0
    num_roads: int = 10
    val_fraction: float = 0.2
    episodes_per_road: int = 1
    max_steps: int = 0
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    episodes_per_chunk: int = 4

    def __post_init__(self) -> None:
        if self.num_roads < 1 or self.episodes_per_road < 1:
            raise ValueError("demos.num_roads and demos.episodes_per_road must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"demos.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning with truncated BPTT.

    Attributes:
        epochs: maximum epochs of the first (pure behaviour-cloning) round.
        batch_size: windows per gradient step (per process under DDP).
        window: steps per training window (truncated-BPTT length; the paper: 16).
        stride: steps between window starts inside an episode.
        lr_perception: Adam learning rate of the convolutional head (lower than the controller's, as in
            the paper).
        lr_controller: Adam learning rate of the controller and the action head.
        weight_decay: Adam weight decay.
        grad_clip: gradient-norm clip (the paper: 10; 0 disables).
        curve_alpha: curve weighting ``w = exp(alpha |y|)`` of the squared error (0: plain MSE).
        patience: stop a round after this many epochs without a validation improvement (0: never).
        min_delta: smallest validation-loss decrease that counts as an improvement.
        max_batches_per_epoch: cap on gradient steps per epoch (0: every window once).
        log_every: gradient steps between training-loss log rows.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        num_threads: torch intra-op threads (0: leave torch's default).
    """

    epochs: int = 6
    batch_size: int = 16
    window: int = 16
    stride: int = 8
    lr_perception: float = 5e-4
    lr_controller: float = 5e-3
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    curve_alpha: float = 0.0
    patience: int = 3
    min_delta: float = 0.0
    max_batches_per_epoch: int = 0
    log_every: int = 10
    device: str = "auto"
    num_threads: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "window", "stride", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"bc.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_perception", "lr_controller"):
            if not getattr(self, name) > 0:
                raise ValueError(f"bc.{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "curve_alpha", "min_delta"):
            if getattr(self, name) < 0:
                raise ValueError(f"bc.{name} must be >= 0, got {getattr(self, name)}")
        if self.patience < 0 or self.max_batches_per_epoch < 0 or self.num_threads < 0:
            raise ValueError("bc.patience, bc.max_batches_per_epoch and bc.num_threads must be >= 0")


@dataclass(frozen=True)
class DaggerConfig:
    """DAgger rounds after the behaviour-cloning round.

    Attributes:
        rounds: number of DAgger rounds (0: behaviour cloning only).
        episodes_per_round: learner rollouts per round, on training roads (cycling through them).
        beta: probability of executing the expert's action at a step in round 1 (mixture policy).
        beta_decay: beta is multiplied by this each further round (``beta_i = beta * decay^(i-1)``).
        epochs_per_round: maximum training epochs per round (early stopping still applies).
        max_steps: cap on steps per learner rollout (0: until the env ends it).
        select_by_closed_loop: keep the round whose policy drives the validation roads best (else the last).
    """

    rounds: int = 0
    episodes_per_round: int = 8
    beta: float = 0.5
    beta_decay: float = 0.5
    epochs_per_round: int = 4
    max_steps: int = 0
    select_by_closed_loop: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 0 or self.episodes_per_round < 1 or self.epochs_per_round < 1:
            raise ValueError("dagger.rounds must be >= 0, episodes_per_round and epochs_per_round >= 1")
        if not (0.0 <= self.beta <= 1.0 and 0.0 <= self.beta_decay <= 1.0):
            raise ValueError("dagger.beta and dagger.beta_decay must be in [0, 1]")


@dataclass(frozen=True)
class ClosedLoopEvalConfig:
    """Closed-loop evaluation of the final policy on held-out roads.

    Attributes:
        num_roads: number of held-out roads (0: skip evaluation).
        seed_start: first held-out road seed (must not overlap the training/validation roads).
        noise_levels: image-noise variances to evaluate at (the protocol: 0, 0.1, 0.2, 0.3).
        max_steps: cap on steps per episode (0: until the env ends it).
        completion_tolerance: metres before the road's end that count as completed.
    """

    num_roads: int = 10
    seed_start: int = 100_000
    noise_levels: tuple[float, ...] = (0.0,)
    max_steps: int = 0
    completion_tolerance: float = 1.0


@dataclass(frozen=True)
class TrainConfig:
    """Lane-keeping training run: expert demonstrations, behaviour cloning, DAgger, evaluation.

    The defaults are the small demo preset ``experiments/configs/lane_keeping_small.yaml``.

    Attributes:
        name: preset name (used in the run folder's name).
        seed: seed of the policy's initialisation and the window shuffling.
        out_dir: parent folder of run folders.
        workers: worker processes for collection and evaluation.
        env: the environment (id and constructor arguments: camera size, road length, speed...).
        expert: the privileged expert that produces labels.
        demos: demonstration collection.
        policy: the policy (perception head + controller + action head).
        bc: behaviour cloning.
        dagger: DAgger rounds.
        eval: final closed-loop evaluation.
    """

    name: str = "lane_keeping_small"
    seed: int = 0
    out_dir: str = "runs"
    workers: int = 2
    env: EnvSpec = field(default_factory=lambda: EnvSpec(kwargs=dict(SMALL_ENV_KWARGS)))
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(image_shape=SMALL_IMAGE_SHAPE))
    bc: BCConfig = field(default_factory=BCConfig)
    dagger: DaggerConfig = field(default_factory=DaggerConfig)
    eval: ClosedLoopEvalConfig = field(default_factory=ClosedLoopEvalConfig)

    def __post_init__(self) -> None:
        train_roads = range(self.demos.seed_start, self.demos.seed_start + self.demos.num_roads)
        eval_roads = range(self.eval.seed_start, self.eval.seed_start + self.eval.num_roads)
        overlap = set(train_roads) & set(eval_roads)
        if overlap:
            raise ValueError(
                f"eval roads {self.eval.seed_start}..{eval_roads.stop - 1} overlap the training/validation "
                f"roads {train_roads.start}..{train_roads.stop - 1} (e.g. seed {min(overlap)}); "
                "move eval.seed_start"
            )
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.policy.observation == "image":
            kw = self.env.kwargs
            camera = (int(kw.get("image_height", 64)), int(kw.get("image_width", 128)))
            if tuple(self.policy.image_shape[:2]) != camera:
                raise ValueError(
                    f"policy.image_shape {tuple(self.policy.image_shape)} does not match the env camera "
                    f"{camera[0]}x{camera[1]} (env.kwargs image_height/image_width, env default 64x128); "
                    "set both to the same size"
                )


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder.
        best_checkpoint: checkpoint folder of the selected policy (``load_checkpoint`` reads it).
        last_checkpoint: checkpoint folder of the latest weights (what ``--resume`` continues from).
        metrics: final numbers: ``val_loss``, training time, and with evaluation ``eval/<metric>``.
        interrupted: True when training stopped on Ctrl-C (resume with ``--resume RUN_DIR``).
        policy: the trained policy (the best weights), in memory.
    """

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, float]
    interrupted: bool = False
    policy: Any = None


# ---------------------------------------------------------------------------------------------------- helpers
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
        from datetime import timedelta

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


def _seeds_of(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


# -------------------------------------------------------------------------------------------------- training
class _Trainer:
    """State and loops of one training run (see :func:`train`)."""

    def __init__(self, config: TrainConfig, run_dir: Path, dist: _Dist, progress: bool) -> None:
        from ltc_control.policy import Policy

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
        }
        self.logger: Any = None
        if dist.main:
            from ltc_control.runs import MetricsLogger

            self.logger = MetricsLogger(run_dir)

    # ------------------------------------------------------------------------------------------ persistence
    def save(self, name: str = "last", with_state: bool = False) -> Path:
        """Write ``checkpoints/<name>`` (rank 0); ``with_state`` adds the optimizer and trainer state."""
        from ltc_control.checkpoint import save_checkpoint
        from ltc_control.config import to_dict

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
        from ltc_control.checkpoint import load_checkpoint, load_trainer_state

        last = self.ckpt_dir / "last"
        if not (last / "model.json").is_file():
            return False
        loaded, _ = load_checkpoint(last)
        self.policy.load_state_dict(loaded.state_dict())
        trainer_state = load_trainer_state(last)
        if trainer_state is None or trainer_state.get("extra") is None:
            raise RuntimeError(
                f"{last} has no trainer state; it was not written by this trainer's resume logic"
            )
        if trainer_state.get("optimizer") is not None:
            self.optimizer.load_state_dict(trainer_state["optimizer"])
        extra = dict(trainer_state["extra"])
        extra["round_scores"] = {int(k): v for k, v in json.loads(extra["round_scores"]).items()}
        extra["best_val"] = float(extra["best_val"])
        for key in ("round", "epoch", "step", "bad_epochs"):
            extra[key] = int(extra[key])
        extra["round_done"] = bool(extra["round_done"])
        extra["train_seconds"] = float(extra["train_seconds"])
        self.state.update(extra)
        return True

    def log(self, metrics: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.log(self.state["step"], metrics)

    # ------------------------------------------------------------------------------------------------ data
    def data_dir(self) -> Path:
        return Path(self.cfg.demos.dir) if self.cfg.demos.dir else self.run_dir / "data"

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
        if self.dist.main:
            from ltc_control.config import to_dict

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
            if stats["new_episodes"]:
                self.log(
                    {
                        "dagger/round": round_,
                        "dagger/beta": beta,
                        "dagger/episodes": stats["new_episodes"],
                        "dagger/steps": stats["steps"],
                        "dagger/completed_fraction": stats["completed"] / stats["new_episodes"],
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
        from tqdm import tqdm

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
        from ltc_control.checkpoint import load_checkpoint

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


def _new_run_dir(config: TrainConfig, argv: Sequence[str] | None) -> Path:
    from ltc_control.runs import create_run_dir

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
        A :class:`TrainResult`. On Ctrl-C the last checkpoint and trainer state are saved first and the
        result has ``interrupted=True``.
    """
    from ltc_control.config import load_yaml

    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a training run folder (no config.yaml); pass the folder train() printed"
            )
        if config is None:
            config = load_yaml(TrainConfig, run_dir / "config.yaml")
    config = config if config is not None else TrainConfig()
    dist = _setup_dist(config.bc.device)
    try:
        if config.bc.num_threads:
            torch.set_num_threads(config.bc.num_threads)
        if resume is None:
            run_dir = dist.broadcast(_new_run_dir(config, argv) if dist.main else None)
        trainer = _Trainer(config, run_dir, dist, progress)
        return _run(trainer, resumed=resume is not None)
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
                if round_ > 0:
                    trainer.collect_dagger(round_, trainer.ckpt_dir / f"round{round_ - 1}")
                train_data = DemoDataset(trainer.data_dir(), road_seeds=train_seeds)
                val_data = DemoDataset(trainer.data_dir(), road_seeds=val_seeds, sources=["expert"])
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
        interrupted = True
        trainer.save_state()
        if dist.main:
            print(
                f"\ninterrupted: saved {trainer.ckpt_dir / 'last'}; continue with "
                f"'ltc-control train --resume {trainer.run_dir}'",
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
        from ltc_control.checkpoint import load_checkpoint

        policy, meta = load_checkpoint(best)
        trainer.policy.load_state_dict(policy.state_dict())
        metrics["chosen_round"] = float(chosen)
        if meta.get("best_val") is not None:
            metrics["val_loss"] = float(meta["best_val"])
        metrics["wall_seconds"] = time.perf_counter() - t_start
        if cfg.eval.num_roads and dist.main:
            metrics.update(_final_eval(trainer, best))
        if dist.main:
            from ltc_control.runs import atomic_write_json

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


# ------------------------------------------------------------------------------------------------------- CLI
def train_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control train [--config YAML] [--set key=value ...] [--resume RUN_DIR]``.

    Returns:
        0 on success, 130 when interrupted (after saving), 2 on a config error.
    """
    from ltc_control.config import apply_overrides, load_yaml, make_parser, parse_args_and_config

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
        saved = ns.resume / "config.yaml"
        if not saved.is_file():
            parser.error(f"{ns.resume} is not a training run folder (no config.yaml)")
        config = apply_overrides(load_yaml(TrainConfig, saved), ns.overrides)
    result = train(
        config, resume=ns.resume, progress=not ns.no_progress, argv=["ltc-control", "train", *args]
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {result.run_dir}")
        print(f"best checkpoint: {result.best_checkpoint}")
        print(json.dumps(result.metrics, indent=1))
    return 130 if result.interrupted else 0
