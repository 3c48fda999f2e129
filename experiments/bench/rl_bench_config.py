"""The configs of the partially observed RL benchmark (:mod:`rl_bench`): PPO hyper-parameters shared by every
model, one benchmark (env, budget, seeds, models) and one run (model, seed).

Kept apart from the training and summary code so that :mod:`rl_suite` and spawned workers import the configs
alone; :mod:`rl_bench` re-exports every name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ltc_control.controllers import ControllerConfig

__all__ = ["BenchmarkConfig", "ModelName", "PPOConfig", "RunSpec", "parse_schedule"]

ModelName = Literal["ltc", "cfc", "lstm"]


def parse_schedule(value: float | str, name: str = "value") -> tuple[float, Literal["constant", "linear"]]:
    """A rate as the RL Zoo writes it: a number (constant) or ``"lin_<number>"`` (linear decay to 0).

    Args:
        value: e.g. ``0.2``, ``"0.2"`` or ``"lin_0.2"``.
        name: the config key, for the error message.

    Returns:
        ``(initial value, "constant" | "linear")``.

    Raises:
        ValueError: anything else, or a negative value.
    """
    kind: Literal["constant", "linear"] = "constant"
    text = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("lin_"):
            kind, text = "linear", text[4:]
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(
            f"{name} must be a number or 'lin_<number>' (the RL Zoo's linear schedule), got {value!r}"
        ) from None
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{name} must be a number >= 0 or 'lin_<number>', got {value!r}")
    return rate, kind


@dataclass(frozen=True)
class PPOConfig:
    """RecurrentPPO hyper-parameters shared by every model of a benchmark.

    Args:
        n_envs: parallel envs (``DummyVecEnv``).
        n_steps: steps per env per rollout.
        batch_size: minibatch size (in steps).
        n_epochs: passes over each rollout.
        learning_rate: Adam learning rate: a number, or the RL Zoo's ``"lin_<rate>"`` (linear decay from
            ``<rate>`` to 0 over the budget).
        learning_rate_schedule: ``constant`` or ``linear`` (decays to 0 over the budget, the RL Zoo's
            ``lin_<rate>``; the same as giving ``learning_rate: lin_<rate>``).
        gamma: discount factor.
        gae_lambda: GAE lambda.
        clip_range: PPO clip range: a number, or the RL Zoo's ``"lin_<value>"`` (linear decay to 0 over the
            budget; the Zoo's CartPoleNoVel-v1 entry uses ``lin_0.2``).
        ent_coef: entropy bonus.
        vf_coef: value-loss weight.
        max_grad_norm: gradient-norm clip.
        log_std_init: initial log standard deviation of Gaussian actions (gSDE: of the noise-matrix entries).
        normalize_observations: ``VecNormalize`` the observations (running mean and std; the statistics
            are frozen and reused for the final evaluation and saved beside the run record).
        normalize_rewards: ``VecNormalize`` the rewards (divided by the running std of the discounted
            return, with ``gamma``; as the RL Zoo's ``normalize: True``). Evaluation reports raw returns.
        use_sde: generalised state-dependent exploration (gSDE) for continuous actions.
        sde_sample_freq: redraw gSDE's noise matrix every this many steps (-1: once per rollout).
        ortho_init: sb3's orthogonal initialisation (for the liquid policies: value MLP and heads only).
        activation: activation of the MLPs (``tanh``, sb3's default, or ``relu``).
    """

    n_envs: int = 8
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 10
    learning_rate: float | str = 1e-3
    learning_rate_schedule: Literal["constant", "linear"] = "constant"
    gamma: float = 0.9
    gae_lambda: float = 0.95
    clip_range: float | str = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    log_std_init: float = 0.0
    normalize_observations: bool = False
    normalize_rewards: bool = False
    use_sde: bool = False
    sde_sample_freq: int = -1
    ortho_init: bool = True
    activation: Literal["tanh", "relu"] = "tanh"

    def __post_init__(self) -> None:
        for name in ("n_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        if self.learning_rate_schedule not in ("constant", "linear"):
            raise ValueError(
                "ppo.learning_rate_schedule must be 'constant' or 'linear', got "
                f"{self.learning_rate_schedule!r}"
            )
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"ppo.activation must be 'tanh' or 'relu', got {self.activation!r}")
        if self.sde_sample_freq == 0 or self.sde_sample_freq < -1:
            raise ValueError(f"ppo.sde_sample_freq must be -1 or >= 1, got {self.sde_sample_freq}")
        if not parse_schedule(self.learning_rate, "ppo.learning_rate")[0] > 0:
            raise ValueError(f"ppo.learning_rate must be > 0, got {self.learning_rate}")
        parse_schedule(self.clip_range, "ppo.clip_range")

    def rate_text(self) -> str:
        """``"lr 0.001 (linear decay), clip 0.2"`` for the summaries."""
        lr, lr_kind = parse_schedule(self.learning_rate, "ppo.learning_rate")
        clip, clip_kind = parse_schedule(self.clip_range, "ppo.clip_range")
        linear = lr_kind == "linear" or self.learning_rate_schedule == "linear"
        return (
            f"lr {lr:g}{' (linear decay)' if linear else ''}, "
            f"clip {clip:g}{' (linear decay)' if clip_kind == 'linear' else ''}"
        )
        if not 0 < self.gamma <= 1 or not 0 < self.gae_lambda <= 1:
            raise ValueError("ppo.gamma and ppo.gae_lambda must be in (0, 1]")


#: sb3's defaults of the policy-side keys of :class:`PPOConfig`.
_SB3: dict[str, Any] = {"log_std_init": 0.0, "ortho_init": True, "activation": "tanh"}


@dataclass(frozen=True)
class BenchmarkConfig:
    """One benchmark: an env, the models, the shared budget and seeds.

    Args:
        env_id: partially observed task, e.g. ``"PendulumNoVel-v1"`` or ``"HalfCheetahNoVel-v5"``.
        timesteps: env steps per run (the same for every model).
        seeds: training seeds (each model trains once per seed).
        models: which of ``ltc``, ``cfc``, ``lstm`` to train.
        ppo: shared PPO hyper-parameters.
        ltc: the LTC controller (default: the paper-sized NCP, 12 inter / 6 command neurons).
        cfc: the CfC controller (default: wired CfC on the same NCP).
        critic: critic of the liquid policies: ``separate``, ``shared`` or ``feedforward``.
        critic_outputs: motor neurons of a separate critic controller.
        value_arch: hidden layers of the liquid policies' value MLP.
        lstm_hidden_size: hidden units of RecurrentPPO's LSTMs (actor and critic; sb3-contrib's default 256).
        lstm_net_arch: hidden layers after RecurrentPPO's LSTM (pi and vf; sb3's default is 64, 64).
        lstm_critic: the LSTM critic has its own LSTM (sb3-contrib's ``enable_critic_lstm``, its default).
        policies: ``config`` builds the policies from the fields below; ``defaults`` gives every model
            **no policy kwargs** (issue #16's protocol): ``LtcPolicy()`` for ``ltc``,
            ``LtcPolicy(controller={"kind": "cfc"})`` for ``cfc``, ``"MlpLstmPolicy"`` for ``lstm``;
            ``ltc``, ``cfc``, ``critic*``, ``value_arch`` and ``lstm_*`` are then ignored, and
            the policy-side PPO keys (``ppo.log_std_init``, ``ortho_init``, ``activation``) must keep
            their defaults (an error otherwise, so nothing is silently dropped); ``liquid_policy_kwargs``, if
            any, is an ablation: those kwargs on top of the liquid policies' defaults (LSTM untouched).
        liquid_policy_kwargs: extra keyword arguments of the liquid policies (``LtcPolicy``), e.g.
            ``action_scale_init``, ``critic_controller`` (a mapping of ``ControllerConfig`` fields) or
            ``optimizer_kwargs``. Records made with other kwargs in the same ``runs_dir`` are refused.
        diagnostics: also write training diagnostics (gradient norms per parameter group, time constants,
            synapse saturation, value error; :mod:`ltc_control.agents.sb3_diagnostics`) per rollout to
            ``<record stem>.diagnostics.csv`` beside the record.
        save_models: also save each trained model (``.zip``) beside its record.
        eval_episodes: deterministic evaluation episodes after training (seeds 10_000 + i, not trained on).
        curve_points: points of the learning curve (training-episode returns binned over the budget).
        out_dir: where the table and the plot go.
        runs_dir: where the per-run JSON records go (git-ignored ``runs/`` by default).
        name: prefix of the result files (``<name>.md``, ``<name>.csv``, ``<name>.png``).
        workers: parallel training processes.
        torch_threads: torch threads per process.
    """

    env_id: str = "PendulumNoVel-v1"
    timesteps: int = 100_000
    seeds: tuple[int, ...] = (0, 1, 2)
    models: tuple[str, ...] = ("ltc", "cfc", "lstm")
    ppo: PPOConfig = field(default_factory=PPOConfig)
    ltc: ControllerConfig = field(default_factory=lambda: ControllerConfig(kind="ltc"))
    cfc: ControllerConfig = field(default_factory=lambda: ControllerConfig(kind="cfc"))
    critic: Literal["separate", "shared", "feedforward"] = "shared"
    critic_outputs: int = 8
    value_arch: tuple[int, ...] = (64,)
    lstm_hidden_size: int = 256
    lstm_net_arch: tuple[int, ...] = (64, 64)
    lstm_critic: bool = True
    policies: Literal["config", "defaults"] = "config"
    liquid_policy_kwargs: dict[str, Any] = field(default_factory=dict)
    diagnostics: bool = False
    save_models: bool = True
    eval_episodes: int = 10
    curve_points: int = 20
    out_dir: str = "experiments/results"
    runs_dir: str = "runs/rl_benchmark"
    name: str = "rl_pendulum_novel"
    workers: int = 1
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {self.timesteps}")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        bad = [m for m in self.models if m not in ("ltc", "cfc", "lstm")]
        if bad or not self.models:
            raise ValueError(f"models must be a non-empty subset of ltc, cfc, lstm; got {list(self.models)}")
        if self.ltc.kind != "ltc" or self.cfc.kind != "cfc":
            raise ValueError("the 'ltc' config must have kind 'ltc' and the 'cfc' config kind 'cfc'")
        if self.policies not in ("config", "defaults"):
            raise ValueError(f"policies must be 'config' or 'defaults', got {self.policies!r}")
        if self.policies == "defaults":
            changed = [
                k for k in ("log_std_init", "ortho_init", "activation") if getattr(self.ppo, k) != _SB3[k]
            ]
            if changed:
                raise ValueError(
                    "policies='defaults' passes no policy-side PPO keys; keep ppo.log_std_init 0.0, "
                    f"ortho_init true, activation tanh (changed: {changed})"
                )
        if self.eval_episodes < 1 or self.curve_points < 2 or self.workers < 1 or self.torch_threads < 1:
            raise ValueError("eval_episodes, workers and torch_threads must be >= 1 and curve_points >= 2")


@dataclass(frozen=True)
class RunSpec:
    """One training run: a model on the benchmark's env with one seed."""

    model: str
    seed: int

    def file_name(self, env_id: str, timesteps: int) -> str:
        """Name of the run's JSON record."""
        return f"{env_id}__{self.model}__{self.seed}__{timesteps}.json"
