"""Configuration of imitation training: demonstrations, behaviour cloning, DAgger, closed-loop evaluation.

:class:`TrainConfig` composes the per-concern configs (the YAML presets in ``experiments/configs`` load into
it); :class:`TrainResult` is what :func:`ltc_control.agents.imitation.train` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltc_control.agents.collection import EnvSpec
from ltc_control.agents.experts import ExpertConfig, NoiseConfig
from ltc_control.policy import PolicyConfig

__all__ = [
    "SMALL_ENV_KWARGS",
    "SMALL_IMAGE_SHAPE",
    "BCConfig",
    "ClosedLoopEvalConfig",
    "DaggerConfig",
    "DemoConfig",
    "TrainConfig",
    "TrainResult",
]


#: Camera and roads of the small demo preset (``lane_keeping_small.yaml``, the default ``TrainConfig()``).
SMALL_IMAGE_SHAPE: tuple[int, int, int] = (32, 64, 3)
SMALL_ENV_KWARGS: dict[str, Any] = {"image_height": 32, "image_width": 64, "road_length": 250.0}


@dataclass(frozen=True)
class DemoConfig:
    """Noisy-expert demonstrations collected before training.

    Attributes:
        dir: dataset folder; empty: ``<run_dir>/data``. An existing dataset is reused (episodes it already
            holds are not collected again). A Minari dataset (an id in ``$MINARI_DATASETS_PATH``,
            ``minari:<id>`` or its folder) is trained on as it is: nothing is collected, the road split uses
            its episodes' road seeds (``seed_start``/``num_roads`` are ignored), ``dagger.rounds`` must be
            0.
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
        if self.num_roads < 1 or self.episodes_per_road < 1 or self.episodes_per_chunk < 1:
            raise ValueError(
                "demos.num_roads, demos.episodes_per_road and demos.episodes_per_chunk must be >= 1"
            )
        if self.seed_start < 0 or self.max_steps < 0:
            raise ValueError(
                f"demos.seed_start and demos.max_steps must be >= 0, got {self.seed_start}, {self.max_steps}"
            )
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
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"bc.{name} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "curve_alpha", "min_delta"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"bc.{name} must be a finite number >= 0, got {getattr(self, name)}")
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
        if self.max_steps < 0:
            raise ValueError(f"dagger.max_steps must be >= 0 (0 = the env's limit), got {self.max_steps}")


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

    def __post_init__(self) -> None:
        if self.num_roads < 0 or self.seed_start < 0:
            raise ValueError(
                f"eval.num_roads and eval.seed_start must be >= 0, got {self.num_roads}, {self.seed_start}"
            )
        if self.max_steps < 0:
            raise ValueError(f"eval.max_steps must be >= 0 (0 = the env's limit), got {self.max_steps}")
        bad = [v for v in self.noise_levels if not (math.isfinite(v) and v >= 0)]
        if bad or (self.num_roads and not self.noise_levels):
            raise ValueError(
                f"eval.noise_levels must be finite variances >= 0 (at least one), got {bad or []}"
            )
        if len(set(self.noise_levels)) != len(self.noise_levels):
            raise ValueError(f"eval.noise_levels must be distinct, got {list(self.noise_levels)}")
        if not (math.isfinite(self.completion_tolerance) and self.completion_tolerance >= 0):
            raise ValueError(f"eval.completion_tolerance must be >= 0, got {self.completion_tolerance}")


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
