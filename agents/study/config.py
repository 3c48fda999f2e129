"""The study's configuration: frozen dataclasses loaded strictly from YAML (``ltc_control.config``).

A :class:`StudyConfig` fixes everything the study compares models under: one shared demonstration dataset
(the same noisy-expert roads for training and validation), one perception head design, one training budget,
the learning rates every model is tuned over, the held-out test roads and the evaluation conditions.
Each :class:`ModelSpec` only says which controller sits between the perception head and the action head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ltc_control.agents.collection import EnvSpec
from ltc_control.agents.experts import ExpertConfig
from ltc_control.agents.imitation_config import (
    SMALL_ENV_KWARGS,
    SMALL_IMAGE_SHAPE,
    BCConfig,
    DaggerConfig,
    DemoConfig,
)
from ltc_control.controllers import ControllerConfig, WiringConfig
from ltc_control.policy import PolicyConfig

__all__ = [
    "DEFAULT_MODELS",
    "EvalSettings",
    "ModelSpec",
    "ShiftSpec",
    "StudyConfig",
    "TestDemoConfig",
    "TuningConfig",
]


@dataclass(frozen=True)
class ModelSpec:
    """One controller of the study (the perception head and the action head are shared by all).

    Attributes:
        name: short identifier (folder names, CSV rows), e.g. ``ncp_ltc``.
        label: name shown in tables and plots (default: ``name``).
        controller: the controller config (kind, wiring, sizes).
    """

    name: str
    label: str = ""
    controller: ControllerConfig = field(default_factory=ControllerConfig)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(
                f"model name {self.name!r} must be non-empty and use only letters, digits, _ and -"
            )

    @property
    def display(self) -> str:
        """The label, or the name when no label is set."""
        return self.label or self.name


def _ltc(wiring: WiringConfig) -> ControllerConfig:
    return ControllerConfig(kind="ltc", wiring=wiring)


#: The nine controllers of the NCP paper's comparison plus the CfC variants (issue #14).
DEFAULT_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("ncp_ltc", "NCP (LTC, 19 neurons)", _ltc(WiringConfig(preset="lane_keeping"))),
    ModelSpec(
        "ncp_cfc",
        "NCP (wired CfC, 19 neurons)",
        ControllerConfig(kind="cfc", cfc_wired=True, wiring=WiringConfig(preset="lane_keeping")),
    ),
    ModelSpec("cfc_dense", "CfC (dense, 64 units)", ControllerConfig(kind="cfc", cfc_wired=False, units=64)),
    ModelSpec("lstm64", "LSTM-64", ControllerConfig(kind="lstm", lstm_hidden=64)),
    ModelSpec("ctrnn64", "CT-RNN-64", ControllerConfig(kind="ctrnn", units=64)),
    ModelSpec("cnn", "CNN (feed-forward)", ControllerConfig(kind="mlp", units=64)),
    ModelSpec(
        "ltc_random",
        "LTC-19, random wiring",
        _ltc(WiringConfig(preset="random", units=19, sparsity=0.5)),
    ),
    ModelSpec(
        "ltc_fc",
        "LTC-19, fully connected",
        _ltc(WiringConfig(preset="fully_connected", units=19)),
    ),
)


@dataclass(frozen=True)
class TuningConfig:
    """The learning-rate choice every model gets (so that no model wins by being the only one tuned).

    Protocol: for each model, one trial per value of ``lr_controller`` at seed ``seed``; the value with the
    lowest validation loss (mean squared error on the validation roads' demonstrations, never the test roads)
    is kept, and the model's other seeds are trained at that value only.

    Attributes:
        lr_controller: candidate controller learning rates (the perception head keeps ``bc.lr_perception``).
        seed: the training seed the candidates are compared on.
        select_by: ``"val_mse"`` (offline validation loss).
    """

    lr_controller: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    seed: int = 0
    select_by: Literal["val_mse"] = "val_mse"

    def __post_init__(self) -> None:
        if not self.lr_controller:
            raise ValueError("tuning.lr_controller needs at least one learning rate")
        if any(not (v > 0 and math.isfinite(v)) for v in self.lr_controller):
            raise ValueError(f"tuning.lr_controller values must be finite and > 0, got {self.lr_controller}")
        if len(set(self.lr_controller)) != len(self.lr_controller):
            raise ValueError(f"tuning.lr_controller values must be distinct, got {self.lr_controller}")


@dataclass(frozen=True)
class TestDemoConfig:
    """Expert demonstrations on held-out roads for the offline test error (never trained or tuned on).

    Attributes:
        seed_start: first road seed (must not overlap the training/validation roads).
        num_roads: number of roads.
    """

    seed_start: int = 200_000
    num_roads: int = 2

    def __post_init__(self) -> None:
        if self.num_roads < 1 or self.seed_start < 0:
            raise ValueError("test_demos.num_roads must be >= 1 and test_demos.seed_start >= 0")


@dataclass(frozen=True)
class ShiftSpec:
    """A distribution shift of the camera image, evaluated besides the Gaussian noise levels.

    Attributes:
        name: condition name in tables (e.g. ``dark``, ``blur``, ``occlusion``).
        brightness: additive brightness on the [0, 1] image scale.
        blur_sigma: Gaussian blur standard deviation in pixels.
        occlusion_patches: black square patches per frame.
        occlusion_size: patch side as a fraction of ``min(H, W)``.
        noise_variance: Gaussian noise variance added on top.
    """

    name: str
    brightness: float = 0.0
    blur_sigma: float = 0.0
    occlusion_patches: int = 0
    occlusion_size: float = 0.15
    noise_variance: float = 0.0

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(f"shift name {self.name!r} must use only letters, digits, _ and -")
        if self.name.startswith("noise") or self.name == "randomized":
            raise ValueError(f"shift name {self.name!r} is reserved; pick another")


@dataclass(frozen=True)
class EvalSettings:
    """Closed-loop evaluation and inspection of every trained model on held-out test roads.

    Attributes:
        seed_start: first test road seed (must not overlap training, validation or test-demo roads).
        num_roads: number of test roads.
        noise_levels: Gaussian noise variances on the [0, 1] image scale; past 0.3 so that each model's
            breaking point shows.
        shifts: brightness / blur / occlusion conditions.
        randomized_visuals: also drive the test roads in the randomised-visuals env (``randomize_visuals``).
        noise_seed: the noise seed, the same for every model.
        max_steps: per-episode step cap (0: until the env ends the episode).
        completion_tolerance: metres before the road's end that count as completed.
        num_envs: envs driven in lockstep per evaluation (batch rows of the policy call).
        saliency_frames: clean test frames for the saliency SSIM (VisualBackprop) measure.
        saliency_noise: noise variances of the saliency SSIM measure.
        inference_steps: batch-1 policy steps timed for the inference cost per control step.
    """

    seed_start: int = 100_000
    num_roads: int = 4
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)
    shifts: tuple[ShiftSpec, ...] = (
        ShiftSpec("dark", brightness=-0.25),
        ShiftSpec("bright", brightness=0.25),
        ShiftSpec("blur", blur_sigma=1.5),
        ShiftSpec("occlusion", occlusion_patches=3, occlusion_size=0.2),
    )
    randomized_visuals: bool = True
    noise_seed: int = 0
    max_steps: int = 0
    completion_tolerance: float = 1.0
    num_envs: int = 16
    saliency_frames: int = 100
    saliency_noise: tuple[float, ...] = (0.1, 0.2, 0.3)
    inference_steps: int = 200

    def __post_init__(self) -> None:
        if self.num_roads < 1 or self.seed_start < 0:
            raise ValueError("evaluation.num_roads must be >= 1 and evaluation.seed_start >= 0")
        if not self.noise_levels or 0.0 not in self.noise_levels:
            raise ValueError(f"evaluation.noise_levels must include 0.0 (clean), got {self.noise_levels}")
        if any(v < 0 for v in self.noise_levels) or len(set(self.noise_levels)) != len(self.noise_levels):
            raise ValueError(f"evaluation.noise_levels must be distinct and >= 0, got {self.noise_levels}")
        names = [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError(f"evaluation.shifts names must be distinct, got {names}")
        for name in ("max_steps", "saliency_frames", "inference_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"evaluation.{name} must be >= 0")
        if self.num_envs < 1:
            raise ValueError("evaluation.num_envs must be >= 1")


@dataclass(frozen=True)
class StudyConfig:
    """The NCP study: every model trained and evaluated under the same data, budget and tuning.

    Attributes:
        name: study name (the study folder and the result files are named after it).
        out_dir: parent folder of study folders (``<out_dir>/<name>/``: data, trials, summary).
        results_dir: where the table, CSV and plots are written.
        seeds: training seeds per model (``0 .. seeds-1``).
        workers: trials run at once (local worker processes or Ray tasks).
        torch_threads: torch threads per trial.
        env: the environment (camera size, road length).
        expert: the privileged expert that labels demonstrations.
        demos: the shared noisy-expert demonstrations (training + validation roads).
        test_demos: expert demonstrations on held-out roads for the offline test error.
        policy: the shared policy design (camera, perception head, action head); its controller is replaced
            by each model's.
        bc: the training budget (epochs, batch, window, learning rate of the perception head); its
            ``lr_controller`` is replaced by the tuned value.
        dagger: DAgger rounds (the same for every model).
        tuning: the learning-rate choice.
        models: the controllers compared.
        reference: the model every other is compared against (paired differences).
        evaluation: closed-loop evaluation and inspection.
    """

    name: str = "ncp_study_small"
    out_dir: str = "runs/study"
    results_dir: str = "experiments/results"
    seeds: int = 3
    workers: int = 2
    torch_threads: int = 1
    env: EnvSpec = field(default_factory=lambda: EnvSpec(kwargs={**SMALL_ENV_KWARGS, "road_length": 100.0}))
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    demos: DemoConfig = field(default_factory=lambda: DemoConfig(num_roads=8, val_fraction=0.25))
    test_demos: TestDemoConfig = field(default_factory=TestDemoConfig)
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(image_shape=SMALL_IMAGE_SHAPE))
    bc: BCConfig = field(default_factory=lambda: BCConfig(epochs=5, patience=0, device="cpu"))
    dagger: DaggerConfig = field(default_factory=DaggerConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    models: tuple[ModelSpec, ...] = DEFAULT_MODELS
    reference: str = "ncp_ltc"
    evaluation: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ValueError(f"name {self.name!r} must use only letters, digits, _ and -")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.workers < 1 or self.torch_threads < 1:
            raise ValueError("workers and torch_threads must be >= 1")
        if not self.models:
            raise ValueError("models needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be distinct, got {names}")
        if self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not one of the models {names}")
        if not 0 <= self.tuning.seed < self.seeds:
            raise ValueError(f"tuning.seed {self.tuning.seed} must be one of the seeds 0..{self.seeds - 1}")
        ranges = {
            "demos (training/validation)": range(
                self.demos.seed_start, self.demos.seed_start + self.demos.num_roads
            ),
            "test_demos": range(
                self.test_demos.seed_start, self.test_demos.seed_start + self.test_demos.num_roads
            ),
            "evaluation (test roads)": range(
                self.evaluation.seed_start, self.evaluation.seed_start + self.evaluation.num_roads
            ),
        }
        items = list(ranges.items())
        for i, (a, ra) in enumerate(items):
            for b, rb in items[i + 1 :]:
                common = set(ra) & set(rb)
                if common:
                    raise ValueError(
                        f"road seeds of {a} and {b} overlap (e.g. {min(common)}); move a seed_start"
                    )
        if self.policy.observation != "image":
            raise ValueError("the study compares camera policies: policy.observation must be 'image'")
        kw = self.env.kwargs
        camera = (int(kw.get("image_height", 64)), int(kw.get("image_width", 128)))
        if tuple(self.policy.image_shape[:2]) != camera:
            raise ValueError(
                f"policy.image_shape {tuple(self.policy.image_shape)} does not match the env camera "
                f"{camera[0]}x{camera[1]} (env.kwargs image_height/image_width); set both to the same size"
            )

    def model(self, name: str) -> ModelSpec:
        """The model called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model {name!r} in the study; models: {[m.name for m in self.models]}")

    def conditions(self) -> list[dict[str, Any]]:
        """Every closed-loop condition: ``{"name", "perturbation" kwargs, "env_kwargs"}`` in table order."""
        out: list[dict[str, Any]] = []
        for v in self.evaluation.noise_levels:
            out.append(
                {"name": f"noise{v:g}", "noise_variance": float(v), "perturbation": {}, "env_kwargs": {}}
            )
        for s in self.evaluation.shifts:
            pert = {
                "brightness": s.brightness,
                "blur_sigma": s.blur_sigma,
                "occlusion_patches": s.occlusion_patches,
                "occlusion_size": s.occlusion_size,
            }
            out.append(
                {"name": s.name, "noise_variance": s.noise_variance, "perturbation": pert, "env_kwargs": {}}
            )
        if self.evaluation.randomized_visuals:
            out.append(
                {
                    "name": "randomized",
                    "noise_variance": 0.0,
                    "perturbation": {},
                    "env_kwargs": {"randomize_visuals": True},
                }
            )
        return out
