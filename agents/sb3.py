"""Liquid (LTC / CfC) recurrent actor-critic policies for sb3-contrib's ``RecurrentPPO``.

This is the only module of the project that imports stable-baselines3 / sb3-contrib (together with its
``sb3_*`` siblings). Use it like any recurrent sb3 policy::

    from sb3_contrib import RecurrentPPO
    from ltc_control.agents.sb3 import LtcPolicy

    model = RecurrentPPO(LtcPolicy, "Pendulum-v1")  # or policy_kwargs={"controller": {"kind": "cfc"}}
    model.learn(10_000)
    model.save("ppo_ltc")
    model = RecurrentPPO.load("ppo_ltc")
    action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=True)

Design (see ``docs/rl.md``):

- :class:`LtcPolicy` subclasses sb3-contrib's ``RecurrentActorCriticPolicy`` (so ``RecurrentPPO`` accepts it)
  but builds no ``nn.LSTM``: the actor is an :class:`ltc_control.sequence.SequenceModel` built by
  :func:`ltc_control.controllers.build_controller` (a dense 16-neuron LTC by default; any wiring, CfC, or the
  project's LSTM/GRU cells). Its **motor neurons are the action**: one motor neuron per action dimension (per
  logit for discrete actions), followed by the same element-wise head as :class:`ltc_control.policy.Policy`
  (``tanh(scale * y + bias)`` for actions in [-1, 1]). That is what makes an exact export to a
  :class:`~ltc_control.policy.Policy` checkpoint possible (:mod:`ltc_control.agents.sb3_checkpoint`), so the
  inspection, video and evaluation tools read a PPO-trained controller exactly like an imitation-trained one.
- The feature extractor, the motor head and the LSTM-faced controller adapter live in
  :mod:`ltc_control.agents.sb3_modules`.
- ``forward``, ``get_distribution``, ``predict_values`` and ``evaluate_actions`` are overridden to run the
  controllers over ``(n_seq, T, F)`` sequences with the cell's own ``episode_starts`` reset (no Python loop
  over time for cells with a fused sequence path, e.g. the LTC's compiled kernel).
- ``RecurrentPPO`` sizes its rollout buffer from ``policy.lstm_actor.num_layers`` / ``.hidden_size`` and keeps
  LSTM-style ``(h, c)`` pairs of shape ``(1, n_envs, hidden_size)``. ``lstm_actor`` / ``lstm_critic`` are
  :class:`ControllerAdapter` modules that present that face: the cell state is packed into the first
  ``state_size`` entries of ``h`` (zero padded to a width shared by actor and critic); ``c`` is carried as
  zeros. The buffer and the algorithm are used unchanged.
- The critic is ``"separate"`` (its own controller, default, like sb3's ``enable_critic_lstm``), ``"shared"``
  (a value MLP on the actor controller's full neuron state; both losses train the shared controller) or
  ``"feedforward"`` (a value MLP on the features, no recurrence).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from ltc_control.agents.sb3_modules import (
    ControllerAdapter,
    ConvHeadExtractor,
    MotorHead,
    StateReadoutHead,
    as_config,
    check_motors_per_output,
)
from ltc_control.cells.ltc import LTCCell, check_time_constant_factor
from ltc_control.controllers import ControllerConfig, WiringConfig, build_controller, controller_summary
from ltc_control.policy import bound_mean, check_mean_limit, check_mean_pull
from ltc_control.sequence import SequenceModel
from ltc_control.wirings import VALID_ROLES

__all__ = [
    "CENTER_STEPS",
    "DEFAULT_CONTROLLER_LR_SCALE",
    "DEFAULT_DISCRETE_DT",
    "DEFAULT_MEAN_LIMIT",
    "CnnLtcPolicy",
    "CriticMode",
    "LtcPolicy",
    "ReadoutMode",
    "SquashMode",
    "TrainingDivergedError",
    "bound_mean",
    "default_action_squash",
    "default_controller",
    "default_controller_lr_scale",
    "default_mean_limit",
]

CriticMode = Literal["separate", "shared", "feedforward"]
SquashMode = Literal["auto", "tanh", "tanh_sample", "none"]
ReadoutMode = Literal["motor", "state"]


class TrainingDivergedError(FloatingPointError):
    """A liquid policy met a non-finite (NaN or inf) action-head output: its parameters (or the controller's
    outputs) are no longer finite, so training diverged and the run cannot go on. The message names the
    parameters that are not finite; ``experiments/bench/rl_nan_probe.py`` replays a run to find the first
    non-finite gradient."""


# ----------------------------------------------------------------------------------------------- policy
def _scale_group_lrs(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook: each param group's ``lr`` times its ``lr_scale`` for this step."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


def _unscale_group_lrs(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Step post-hook: restores the groups' ``lr`` (what sb3's schedule set)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] / group.get("lr_scale", 1.0)


def _check_group_layout(
    optimizer: torch.optim.Optimizer, state_dict: dict[str, Any], default_discrete_units: int | None = None
) -> None:
    """Load pre-hook: a saved optimizer state must have this policy's groups, learning-rate scales and
    controller ``dt``.

    Otherwise torch would refuse it with "a different number of parameter groups", or, with as many groups,
    silently take the saved scales; and a model trained at another ``dt`` (no weight shape shows it) would
    run its circuit at this policy's. The error names the saved value and how to load the model with it.
    The groups carry ``controller_dt`` since 2026-12-06; a state saved before then trained at ``dt`` 1 when
    it had the default controller (``default_discrete_units``: this policy is the default controller, of that
    many neurons, with discrete actions, whose ``dt`` is now :data:`DEFAULT_DISCRETE_DT`; None otherwise).
    """
    saved_groups = state_dict.get("param_groups", [])
    mine_dt = {float(g["controller_dt"]) for g in optimizer.param_groups if "controller_dt" in g}
    saved_dt = {float(g["controller_dt"]) for g in saved_groups if "controller_dt" in g}
    if not saved_dt and default_discrete_units is not None and mine_dt != {1.0}:
        saved_dt = {1.0}  # saved before the groups said, when the discrete default controller had dt 1
    if saved_dt and mine_dt and saved_dt != mine_dt:
        dt = max(saved_dt)
        head = f"the saved model's controller ran at dt {dt:g}, this policy's at {max(mine_dt):g}. "
        if default_discrete_units is None:  # a controller the user gave: name its dt, not the default circuit
            raise ValueError(
                head + "Load it with RecurrentPPO.load(path, custom_objects={'policy_kwargs': {..., "
                f"'controller': {{..., 'dt': {dt:g}}}}}}}) (the controller it was saved with, dt {dt:g})"
            )
        raise ValueError(
            head + "Discrete-action models saved with no policy kwargs before the discrete default became dt "
            f"{DEFAULT_DISCRETE_DT:g} (2026-12-06) ran at 1. Load it with RecurrentPPO.load(path, "
            "custom_objects={'policy_kwargs': {..., 'controller': {'kind': 'ltc', 'wiring': {'preset': "
            f"'fully_connected', 'units': {default_discrete_units}}}, 'dt': {dt:g}}}}}}}) (the default "
            "circuit, keeping its other policy kwargs)"
        )
    saved = sorted(float(g.get("lr_scale", 1.0)) for g in saved_groups)
    mine = sorted(float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups)
    if saved == mine:
        return
    scale = max(saved, default=1.0)
    raise ValueError(
        f"the saved optimizer trained the controllers at controller_lr_scale {scale:g} (learning-rate scales "
        f"{saved}), this policy at {max(mine, default=1.0):g} ({mine}). Discrete-action models saved with no "
        "policy kwargs before the discrete default became 1 (2026-12-06) trained at 5. Load it with "
        "RecurrentPPO.load(path, custom_objects={'policy_kwargs': {..., 'controller_lr_scale': "
        f"{scale:g}}}}}) (keeping its other policy kwargs)"
    )


def _check_tau_scale(
    tau_scale: Mapping[str, float] | None, controller: ControllerConfig
) -> dict[str, float] | None:
    """Validates ``LtcPolicy(tau_scale=...)``: a mapping of neuron roles to finite factors > 0, for an LTC
    actor. An empty mapping is None (nothing to scale)."""
    if tau_scale is None:
        return None
    if not isinstance(tau_scale, Mapping):
        raise ValueError(
            "tau_scale must be a mapping of neuron roles to factors, e.g. {'motor': 0.1}, "
            f"got {tau_scale!r}"
        )
    out: dict[str, float] = {}
    for role, factor in tau_scale.items():
        if role not in VALID_ROLES:
            raise ValueError(f"tau_scale: unknown neuron role {role!r}; roles: {list(VALID_ROLES)}")
        out[str(role)] = check_time_constant_factor(f"tau_scale[{role!r}]", factor)
    if out and controller.kind != "ltc":
        raise ValueError(
            f"tau_scale scales LTC time constants; the actor's controller is kind {controller.kind!r} "
            "(use kind 'ltc')"
        )
    return out or None


def _motor_size(action_space: spaces.Space) -> int:
    if isinstance(action_space, spaces.Box):
        return int(np.prod(action_space.shape))
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    if isinstance(action_space, spaces.MultiDiscrete):
        return int(np.sum(action_space.nvec))
    if isinstance(action_space, spaces.MultiBinary):
        return int(np.prod(action_space.shape))
    raise ValueError(
        f"unsupported action space {type(action_space).__name__}; use Box, Discrete, MultiDiscrete or "
        "MultiBinary"
    )


#: ``dt`` of :func:`default_controller` with discrete actions: each env step advances the circuit's ODE by
#: 0.1 time units, so its effective time constants span about one env step instead of a tenth of one (a
#: circuit with memory). Chosen on the discrete tuning tasks (AcrobotNoVel-v1: 3 of 3 seeds learned, sooner
#: than at 1; the ``docs/rl.md`` section "slower neurons"); continuous actions keep 1.
DEFAULT_DISCRETE_DT = 0.1

#: env steps of zero features that :meth:`LtcPolicy.resting_state` runs (``action_bias_init="center"``): 20
#: time units at the discrete default's ``dt`` 0.1, about 14 of its median effective time constants
CENTER_STEPS = 200


def default_controller(motor_size: int, discrete: bool = False) -> ControllerConfig:
    """The actor's controller of ``LtcPolicy(controller=None)``: an LTC on a fully connected wiring of 16
    neurons, the motor neurons among them (``motor_size + 8`` neurons when the action needs more than 8).

    Chosen by the ablations on the tuning tasks (``docs/rl.md``): the paper-sized sparse NCP barely learns
    PendulumNoVel at PPO's rates, a dense 16-neuron LTC at :data:`DEFAULT_CONTROLLER_LR_SCALE` does. Pass
    ``controller=ControllerConfig()`` for the 19-neuron NCP.

    Args:
        motor_size: motor neurons (action dimensions, or logits of discrete actions).
        discrete: discrete actions (``Discrete``, ``MultiDiscrete``, ``MultiBinary``): ``dt`` is
            :data:`DEFAULT_DISCRETE_DT` (slower neurons, time constants of about one env step); else 1.
    """
    units = max(16, int(motor_size) + 8)
    wiring = WiringConfig(preset="fully_connected", units=units)
    return ControllerConfig(kind="ltc", wiring=wiring, dt=DEFAULT_DISCRETE_DT if discrete else 1.0)


#: ``controller_lr_scale`` when neither it nor ``controller`` is given and the actions are continuous
#: (``Box``): the default dense LTC trains its circuit at 5x the algorithm's rate (its parameters are large,
#: ``sigma`` 3..8, and Adam moves them by about the rate per step: ``docs/rl.md``, the PendulumNoVel
#: diagnosis). With a controller of your choice the scale is 1: at 5x the sparse NCP got no better on the
#: tuning tasks and worse on the cue-memory test task, the CfC worse. With discrete actions it is 1 too (see
#: :func:`default_controller_lr_scale`).
DEFAULT_CONTROLLER_LR_SCALE = 5.0


def default_controller_lr_scale(action_space: spaces.Space, controller_given: bool) -> float:
    """``controller_lr_scale`` of ``LtcPolicy(controller_lr_scale=None)``.

    :data:`DEFAULT_CONTROLLER_LR_SCALE` (5) for the default controller with continuous (``Box``) actions; 1
    with a controller you pass, and 1 with discrete actions (``Discrete``, ``MultiDiscrete``,
    ``MultiBinary``). With discrete actions the motor neurons are the logits; on the discrete tuning task
    AcrobotNoVel-v1 (1M steps, the RL Zoo's PPO settings) the dense LTC at 5x never swung up on 2 of 3 seeds
    (its policy lost its entropy before it first reached the goal), at 1x it learned on all 3
    (``docs/rl.md``, "Discrete actions").

    Args:
        action_space: the policy's action space.
        controller_given: whether the caller passed ``controller``.
    """
    if controller_given or not isinstance(action_space, spaces.Box):
        return 1.0
    return DEFAULT_CONTROLLER_LR_SCALE


def default_action_squash(
    action_space: spaces.Space, controller_given: bool
) -> Literal["tanh", "tanh_sample", "none"]:
    """What ``LtcPolicy(action_squash="auto")`` resolves to.

    ``"tanh_sample"`` (the Gaussian sample squashed, SAC-style) for ``Box(-1, 1)`` actions with the default
    controller: on seeds never run before, side by side with the mean-``tanh`` head on the same machine, it
    was at least as good on both continuous tuning tasks (``docs/rl.md``, "tanh after sampling?"). ``"tanh"``
    (the Gaussian mean squashed) for ``Box(-1, 1)`` with a controller you pass (the CfC variant did worse on
    PendulumNoVel with ``tanh_sample``), ``"none"`` for other boxes and discrete actions (the logits).

    Args:
        action_space: the policy's action space.
        controller_given: whether the caller passed ``controller``.
    """
    if not _is_unit_box(action_space):
        return "none"
    return "tanh" if controller_given else "tanh_sample"


#: ``mean_limit`` of ``LtcPolicy(mean_limit="auto")`` whenever the sample is squashed
#: (``action_squash="tanh_sample"``), since 2026-12-07: the pre-tanh mean is unchanged up to 4 and saturates
#: smoothly at 5 (:func:`bound_mean`). Unbounded, the default diverged on HalfCheetahNoVel-v5 at the RL Zoo's
#: 1M steps (both seeds run: the mean drifted to 26-39, a float32 tanh there is exactly 1 and PPO's ratio
#: overflowed); with 5 its pre-registered rule passed (``docs/rl.md``: the tuning tasks within their bars,
#: PendulumNoVel's seeds whose mean stayed below 4 bit for bit) and 1M steps trained to the end on 5 of 5
#: seeds.
DEFAULT_MEAN_LIMIT = 5.0


def default_mean_limit(action_squash: str) -> float | None:
    """What ``LtcPolicy(mean_limit="auto")`` resolves to for the policy's resolved ``action_squash``:
    :data:`DEFAULT_MEAN_LIMIT` with ``"tanh_sample"`` (the only squash with an unbounded pre-tanh mean),
    None otherwise."""
    return DEFAULT_MEAN_LIMIT if action_squash == "tanh_sample" else None


def _is_unit_box(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Box) and bool(np.all(space.low == -1.0) and np.all(space.high == 1.0))


def _resolve_squash(
    squash: str, action_space: spaces.Space, controller_given: bool
) -> Literal["tanh", "tanh_sample", "none"]:
    if squash not in ("auto", "tanh", "tanh_sample", "none"):
        raise ValueError(f"action_squash must be 'auto', 'tanh', 'tanh_sample' or 'none', got {squash!r}")
    is_box = isinstance(action_space, spaces.Box)
    if squash in ("tanh", "tanh_sample") and not is_box:
        raise ValueError(
            f"action_squash {squash!r} only applies to continuous (Box) actions, not "
            f"{type(action_space).__name__}; "
            "use 'auto' or 'none'"
        )
    if squash == "tanh_sample" and not _is_unit_box(action_space):
        box = cast(spaces.Box, action_space)
        raise ValueError(
            "action_squash 'tanh_sample' squashes the sampled action into [-1, 1] and needs a Box(-1, 1) "
            f"action space, got low={box.low.tolist()}, high={box.high.tolist()}; rescale the env's actions "
            "(gymnasium.wrappers.RescaleAction(env, -1, 1))"
        )
    if squash == "auto":
        return default_action_squash(action_space, controller_given)
    return cast(Literal["tanh", "tanh_sample", "none"], squash)


def _value_arch(net_arch: Any) -> list[int]:
    if net_arch is None:
        return [64]
    if isinstance(net_arch, Sequence) and not isinstance(net_arch, str | Mapping):
        if len(net_arch) == 1 and isinstance(net_arch[0], Mapping):  # RL Zoo's [dict(pi=..., vf=...)]
            return _value_arch(net_arch[0])
        if all(isinstance(v, int) and v > 0 for v in net_arch):
            return [int(v) for v in net_arch]
    if isinstance(net_arch, Mapping):
        unknown = set(net_arch) - {"pi", "vf"}
        if unknown:
            raise ValueError(f"net_arch keys must be 'pi' and 'vf', got {sorted(unknown)}")
        if net_arch.get("pi"):
            raise ValueError(
                f"net_arch pi={list(net_arch['pi'])} is not supported: the actor's motor neurons are the "
                "action "
                "(that keeps the controller exportable and inspectable); use net_arch=dict(pi=[], "
                "vf=[...]) and "
                "size the controller (wiring) instead"
            )
        return _value_arch(list(net_arch.get("vf", [])) or [])
    raise ValueError(
        f"net_arch must be a list of positive layer widths for the value head or dict(pi=[], vf=[...]), "
        f"got {net_arch!r}"
    )


class LtcPolicy(RecurrentActorCriticPolicy):
    """Recurrent actor-critic policy for ``RecurrentPPO`` whose recurrent part is an LTC / CfC controller.

    The actor: features (``features_extractor``) -> controller (motor neurons = action dimensions, or one per
    logit) -> :class:`MotorHead` -> Gaussian mean (state-independent ``log_std``) or logits. The critic: see
    ``critic``. Recurrent state is reset at episode starts, ``model.predict(obs, state, episode_start)``
    returns and takes LSTM-style ``(h, c)`` numpy pairs like any ``RecurrentPPO`` model.

    Example:
        >>> from sb3_contrib import RecurrentPPO
        >>> model = RecurrentPPO(LtcPolicy, "Pendulum-v1", n_steps=64, batch_size=64)
        >>> model.policy.controller.cell.num_neurons  # the default: a dense 16-neuron LTC, 1 motor neuron
        16

    Args:
        observation_space: observation space (vectors; images with :class:`CnnLtcPolicy`).
        action_space: ``Box``, ``Discrete``, ``MultiDiscrete`` or ``MultiBinary``.
        lr_schedule: learning-rate schedule (given by the algorithm).
        controller: the actor's controller (:class:`~ltc_control.controllers.ControllerConfig` or a mapping of
            its fields; default: :func:`default_controller`, an LTC on a dense 16-neuron wiring, motor neurons
            = actions, ``dt`` 0.1 with discrete actions). ``ControllerConfig()`` (or ``{"kind": "ltc"}``) is
            the paper-sized NCP, 12 inter / 6 command neurons.
        critic: ``"separate"`` (own controller), ``"shared"`` (value MLP on the actor controller's neuron
            states; both losses train it) or ``"feedforward"`` (value MLP on the features).
        critic_controller: the critic's controller config for ``critic="separate"`` (default: ``controller``).
        critic_outputs: motor neurons of the separate critic controller (its latent for the value MLP).
        net_arch: hidden layers of the value MLP (a list, or ``dict(pi=[], vf=[...])``; default ``[64]``).
            The actor has no MLP: its motor neurons are the action.
        activation_fn: activation of the value MLP.
        ortho_init: orthogonal init of the value MLP, value head and (non-ConvHead) features extractor, as sb3
            does; the controllers keep their own initialisation.
        use_sde: generalised state-dependent exploration (gSDE, Box actions): the Gaussian noise is
            ``latent @ eps`` with ``latent`` the actor controller's full neuron state (all ``state_size``
            entries: sensory-driven inter, command and motor neurons) and ``eps`` a noise matrix redrawn every
            ``sde_sample_freq`` steps, so exploration depends on the controller's state and is correlated in
            time. Needs every step's neuron state in training (the LTC's fused sequence path provides it).
        log_std_init: initial log standard deviation of Gaussian actions (gSDE: of the noise-matrix entries).
        full_std: gSDE: one std per (latent, action) pair (True) or per latent (False).
        use_expln: gSDE: ``expln`` instead of ``exp`` to keep the std positive.
        squash_output: must be False (use ``action_squash``).
        action_squash: ``"tanh"`` bounds the Gaussian mean to [-1, 1] (the sample is the mean plus noise,
            clipped to the bounds; the mean's gradient vanishes once it nears a bound); ``"none"`` leaves the
            mean affine (sampled actions clipped, as RecurrentPPO's own policies do); ``"tanh_sample"`` keeps
            the Gaussian (mean and gSDE noise) unbounded and squashes the *sample* with tanh, the
            log-likelihood corrected for the squash (SAC's squashed Gaussian: sb3's
            ``SquashedDiagGaussianDistribution``, or gSDE with ``squash_output``): the greedy action is
            ``tanh(mean)`` and the mean keeps its gradient at the bounds; it needs ``Box(-1, 1)`` and has no
            analytic entropy (PPO's entropy bonus uses ``-log_prob``). ``"auto"``:
            :func:`default_action_squash` (``tanh_sample`` for ``Box(-1, 1)`` with the default controller,
            ``tanh`` with one you pass, none for other boxes and discrete actions).
        action_scale_init: initial scale of the motor head (``action_readout="state"``: the gain of its
            weights' orthogonal initialisation; sb3's own policies use 0.01).
        action_bias_init: initial bias of the action head (a number; sb3's own policies start at 0), or
            ``"center"``: the bias that makes the head's output before the squash zero at the actor's resting
            state under zero features (the mean observation when observations are normalised, e.g. by
            ``VecNormalize``), i.e. after :data:`CENTER_STEPS` steps of them (the mean of the last quarter of
            them, should the circuit not settle). At the cell's init the motor neurons
            rest at random voltages, so every seed starts preferring some action whatever it observes (on
            AcrobotNoVel / LunarLanderNoVel the constant part of the logits is several times their
            state-driven spread); centring removes that constant part and keeps the state-driven one (unlike
            a small ``action_scale_init``, which shrinks both).
        action_readout: what the action head reads. ``"motor"``: one motor neuron per action output,
            element-wise (:class:`MotorHead`; the NCP's motor layer is the action, and the policy converts
            to :class:`ltc_control.policy.Policy` for export and inspection). ``"state"``: a linear map from
            every neuron of the actor's controller to each output (:class:`StateReadoutHead`, like sb3's
            ``action_net`` over an LSTM's whole hidden state); such a policy does not convert to a
            ``Policy`` (no ``to_policy``, export or motor-neuron inspection).
        motors_per_output: motor neurons per action output (``action_readout="motor"`` only): the actor's
            controller gets ``outputs * motors_per_output`` motor neurons and each output (Gaussian mean or
            logit) is the mean of its own ``motors_per_output`` consecutive ones, before the head's scale and
            bias. 1 (default): one motor neuron per output. With more than one the policy does not convert to
            a ``Policy`` (whose head is one motor neuron per output).
        input_scale_init: initial ``input_w`` (every input) of the LTC controllers' input mapping (actor and
            a separate LTC critic); None keeps the cell's init (1). The LTC's sensory synapses are sigmoids
            ``sigmoid(sigma * (x_in - mu))`` with ``mu`` in [0.3, 0.8] and ``sigma`` in [3, 8] at init:
            unit-scale, zero-centred inputs (e.g. observations normalised by ``VecNormalize``) mostly sit
            on their flat tails or switch them like steps; a small scale with ``input_bias_init`` near the
            ``mu`` range keeps them in the sigmoids' graded range.
        input_bias_init: initial ``input_b`` of the LTC controllers (needs ``ltc_input_mapping="affine"``);
            None keeps the cell's init (0).
        tau_scale: initial time constants by neuron role, e.g. ``{"motor": 0.1}`` (a motor layer 10x faster
            than the cell's init): each role's membrane capacitance ``cm`` is multiplied by its factor
            (:meth:`LTCCell.scale_time_constants`), so its time constant ``cm / conductance`` is too. Applied
            to the actor's LTC only (which must have every named role; the critic keeps the cell's init, so a
            faster motor layer changes the action path alone). None (default): the cell's init.
        mean_limit: with ``action_squash="tanh_sample"`` only: keeps the Gaussian's pre-tanh mean within
            ``[-mean_limit, mean_limit]`` (:func:`bound_mean`: unchanged up to ``mean_limit - 1``, then a
            smooth saturation), so the greedy action stays within ``tanh(mean_limit)`` and a sampled action's
            tanh inverts accurately in float32. ``"auto"`` (default): :func:`default_mean_limit`, i.e.
            :data:`DEFAULT_MEAN_LIMIT` (5) when the squash is ``"tanh_sample"`` (whether ``action_squash``
            resolved to it or you named it), None (nothing to bound) otherwise. ``None``: unbounded, the
            default before 2026-12-07 (a model saved then without ``mean_limit`` in its policy kwargs now
            loads with the bound: its greedy action moves by at most ``tanh(5) - tanh(4)`` = 6.6e-4 and only
            where its mean passed 4; for the exact old policy pass ``RecurrentPPO.load`` its policy kwargs
            plus ``"mean_limit": None`` as ``custom_objects={"policy_kwargs": ...}``, which replace the saved
            ones). Made for the HalfCheetahNoVel divergence at 1M steps (docs/rl.md, "a run that diverged"):
            the unbounded mean drifted to 26-39, where a float32 tanh is exactly 1, the stored actions'
            log-probabilities were evaluated at the clamped inverse (8.3) far from the mean, and the PPO
            ratio overflowed to inf.
        mean_pull: with a ``mean_limit``: the weight of a quadratic penalty on the pre-tanh mean's affine
            output beyond the limit, applied through the gradient only (:func:`bound_mean` ``pull``; the
            policy's actions are unchanged): a mean dimension that drifted past the limit, where the bound's
            slope vanishes, is drawn back to where PPO can still move it. 0 (default): no pull.
        controller_lr_scale: learning-rate multiplier of the controllers' parameters (the actor's and a
            separate critic's), the rest (heads, value MLP, ``log_std``, features extractor) trains with the
            algorithm's rate. None: :func:`default_controller_lr_scale`, i.e.
            :data:`DEFAULT_CONTROLLER_LR_SCALE` (5) with the default controller and ``Box`` actions, 1 with
            discrete actions or a ``controller`` you pass. The LTC's parameters (``sigma`` 3..8, ``mu``,
            ``erev``, ...) move slowly at the rates tuned for MLP/LSTM policies; the NCP paper trains them
            with a higher rate. The multiplier is applied at every optimizer step, so it survives sb3 setting
            each group's ``lr`` from the schedule.
        features_extractor_class: sb3 features extractor (``FlattenExtractor`` for vectors).
        features_extractor_kwargs: its keyword arguments.
        share_features_extractor: one extractor for actor and critic.
        normalize_images: divide image observations by 255.
        optimizer_class: optimizer class.
        optimizer_kwargs: optimizer keyword arguments (besides the learning rate).

    Raises:
        ValueError: an unsupported action space, ``use_sde=True`` with non-Box actions, unknown critic mode or
            config keys, a ``net_arch`` with actor layers, a non-finite initial value.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        controller: ControllerConfig | Mapping[str, Any] | None = None,
        critic: CriticMode = "separate",
        critic_controller: ControllerConfig | Mapping[str, Any] | None = None,
        critic_outputs: int = 8,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        action_squash: SquashMode = "auto",
        action_scale_init: float = 1.0,
        action_bias_init: float | Literal["center"] = 0.0,
        action_readout: ReadoutMode = "motor",
        motors_per_output: int = 1,
        input_scale_init: float | None = None,
        input_bias_init: float | None = None,
        tau_scale: Mapping[str, float] | None = None,
        controller_lr_scale: float | None = None,
        mean_limit: float | Literal["auto"] | None = "auto",
        mean_pull: float = 0.0,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if use_sde and not isinstance(action_space, spaces.Box):
            raise ValueError(
                f"use_sde=True (gSDE) needs continuous (Box) actions, got {type(action_space).__name__}"
            )
        if use_sde and squash_output:
            raise ValueError(
                "squash_output=True is not supported: the motor head bounds the Gaussian mean "
                "(action_squash='tanh') and sb3 clips the sampled action to the action space"
            )
        if critic not in ("separate", "shared", "feedforward"):
            raise ValueError(f"critic must be 'separate', 'shared' or 'feedforward', got {critic!r}")
        if critic == "shared" and not share_features_extractor:
            raise ValueError(
                "critic='shared' needs share_features_extractor=True (one controller, one input)"
            )
        if action_readout not in ("motor", "state"):
            raise ValueError(f"action_readout must be 'motor' or 'state', got {action_readout!r}")
        motors_per_output = check_motors_per_output(motors_per_output)
        if motors_per_output != 1 and action_readout != "motor":
            raise ValueError(
                f"motors_per_output={motors_per_output} needs action_readout='motor' (the 'state' head reads "
                "every neuron, not the motor neurons)"
            )
        if int(critic_outputs) < 1:
            raise ValueError(f"critic_outputs must be >= 1, got {critic_outputs}")
        # Plain attributes set before nn.Module.__init__ are allowed; _build (called from the base __init__)
        # reads them.
        self._default_controller = controller is None
        self._default_discrete_controller = controller is None and not isinstance(action_space, spaces.Box)
        self.motors_per_output = motors_per_output
        #: motor neurons of the actor's controller (action outputs x motors_per_output)
        self.controller_motor_size = _motor_size(action_space) * self.motors_per_output
        self.controller_config: ControllerConfig = (
            default_controller(self.controller_motor_size, discrete=not isinstance(action_space, spaces.Box))
            if controller is None
            else as_config(ControllerConfig, controller, "controller")
        )
        self.critic_mode: CriticMode = critic
        if critic_controller is None:
            # A saved wiring is sized for the actor's motor neurons; the critic gets the default builder.
            ctrl = self.controller_config
            critic_controller = (
                dataclasses.replace(ctrl, wiring=WiringConfig()) if ctrl.wiring.preset == "saved" else ctrl
            )
        self.critic_controller_config: ControllerConfig = as_config(
            ControllerConfig, critic_controller, "critic_controller"
        )
        self.critic_outputs = int(critic_outputs)
        self.value_arch = _value_arch(net_arch)
        self.motor_size = _motor_size(action_space)
        self.action_squash: Literal["tanh", "tanh_sample", "none"] = _resolve_squash(
            action_squash, action_space, controller is not None
        )
        if action_bias_init != "center":
            try:
                bias_ok = not isinstance(action_bias_init, str) and bool(np.isfinite(float(action_bias_init)))
            except (TypeError, ValueError):
                bias_ok = False
            if not bias_ok:
                raise ValueError(
                    f"action_bias_init must be a finite number or 'center', got {action_bias_init!r}"
                )
            action_bias_init = float(action_bias_init)
        self.action_bias_init: float | Literal["center"] = action_bias_init
        for name, value in (
            ("action_scale_init", action_scale_init),
            ("log_std_init", log_std_init),
            ("input_scale_init", input_scale_init),
            ("input_bias_init", input_bias_init),
        ):
            try:
                finite = value is None or bool(np.isfinite(float(value)))  # NaN / inf would poison every step
            except (TypeError, ValueError):
                finite = False
            if not finite:
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        self.action_scale_init = float(action_scale_init)
        self.action_readout: ReadoutMode = action_readout
        self.input_scale_init = None if input_scale_init is None else float(input_scale_init)
        self.input_bias_init = None if input_bias_init is None else float(input_bias_init)
        self.tau_scale = _check_tau_scale(tau_scale, self.controller_config)
        if controller_lr_scale is None:
            controller_lr_scale = default_controller_lr_scale(action_space, controller is not None)
        if not (float(controller_lr_scale) > 0 and np.isfinite(controller_lr_scale)):
            raise ValueError(f"controller_lr_scale must be a finite number > 0, got {controller_lr_scale}")
        self.controller_lr_scale = float(controller_lr_scale)
        if isinstance(mean_limit, str) and mean_limit == "auto":
            mean_limit = default_mean_limit(self.action_squash)
        elif mean_limit is not None:
            if self.action_squash != "tanh_sample":
                raise ValueError(
                    f"mean_limit bounds the pre-tanh mean of action_squash='tanh_sample'; this policy's "
                    f"action_squash is {self.action_squash!r}"
                )
        try:
            self.mean_limit: float | None = check_mean_limit(mean_limit)
        except ValueError as exc:
            raise ValueError(f"{exc}; or 'auto' (the default: 5 with action_squash 'tanh_sample')") from None
        self.mean_pull = check_mean_pull(mean_pull)
        if self.mean_pull > 0.0 and self.mean_limit is None:
            raise ValueError(
                f"mean_pull={self.mean_pull:g} draws the pre-tanh mean back within mean_limit, but this "
                "policy has no mean_limit (it needs action_squash='tanh_sample' and mean_limit 'auto' or a "
                "number)"
            )
        # sb3-contrib attributes that callers may read
        self.shared_lstm = critic == "shared"
        self.enable_critic_lstm = critic == "separate"
        self.lstm_kwargs: dict[str, Any] = {}
        # Skip RecurrentActorCriticPolicy.__init__: it would build nn.LSTMs we do not use.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            dict(pi=[], vf=self.value_arch),
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )

    # ------------------------------------------------------------------------------------------- building
    def _build_mlp_extractor(self) -> None:
        """Builds the controllers and the value MLP (``mlp_extractor``; its actor side is the identity)."""
        features_dim = self.features_dim
        actor = build_controller(self.controller_config, features_dim, self.controller_motor_size)
        critic_model: SequenceModel | None = None
        if self.critic_mode == "separate":
            critic_model = build_controller(self.critic_controller_config, features_dim, self.critic_outputs)
        hidden = max(actor.state_size, critic_model.state_size if critic_model is not None else 0)
        self.lstm_actor = ControllerAdapter(actor, hidden, self.controller_config.dt)  # type: ignore[assignment]
        critic_adapter = (
            ControllerAdapter(critic_model, hidden, self.critic_controller_config.dt)
            if critic_model is not None
            else None
        )
        self.lstm_critic = critic_adapter  # type: ignore[assignment]
        for model in (actor, critic_model):
            if model is not None:
                self._init_input_mapping(model)
        self._init_time_constants(actor)
        self.critic = None  # sb3-contrib's feed-forward critic projection; ours is the value MLP itself
        self.lstm_output_dim = hidden
        self.lstm_hidden_state_shape = (1, 1, hidden)
        if self.critic_mode == "separate":
            latent_vf = self.critic_outputs
        elif self.critic_mode == "shared":
            latent_vf = actor.state_size
        else:
            latent_vf = features_dim
        self.mlp_extractor = MlpExtractor(
            latent_vf,
            net_arch=dict(pi=[], vf=self.value_arch),
            activation_fn=self.activation_fn,
            device=self.device,
        )

    def _init_input_mapping(self, model: SequenceModel) -> None:
        """Applies ``input_scale_init`` / ``input_bias_init`` to an LTC controller's input mapping."""
        cell = model.cell
        if not isinstance(cell, LTCCell):
            return
        for name, value in (("input_w", self.input_scale_init), ("input_b", self.input_bias_init)):
            if value is None:
                continue
            param = getattr(cell, name)
            if param is None:
                raise ValueError(
                    f"{name.replace('input_w', 'input_scale_init').replace('input_b', 'input_bias_init')} "
                    f"needs the LTC's {name}; the controller's ltc_input_mapping is "
                    f"{self.controller_config.ltc_input_mapping!r} (use 'affine')"
                )
            with torch.no_grad():
                param.fill_(value)

    def _init_time_constants(self, actor: SequenceModel) -> None:
        """Applies ``tau_scale`` to the actor's LTC (its kind was checked at construction)."""
        cell = actor.cell
        if not self.tau_scale or not isinstance(cell, LTCCell):
            return
        for role, factor in self.tau_scale.items():
            try:
                cell.scale_time_constants(factor, role)
            except ValueError as exc:
                raise ValueError(f"tau_scale: {exc}") from exc

    def _build(self, lr_schedule: Schedule) -> None:
        self._build_mlp_extractor()
        m = self.motor_size
        if self.action_squash == "tanh_sample":
            self._squash_samples()
        if isinstance(self.action_dist, DiagGaussianDistribution):
            _, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=m, log_std_init=self.log_std_init
            )
        elif isinstance(self.action_dist, StateDependentNoiseDistribution):
            # gSDE's latent: the actor controller's full neuron state (the mean stays the motor head's).
            _, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=m, log_std_init=self.log_std_init, latent_sde_dim=self.controller.state_size
            )
        elif not isinstance(
            self.action_dist, CategoricalDistribution | MultiCategoricalDistribution | BernoulliDistribution
        ):
            raise ValueError(f"unsupported action distribution {type(self.action_dist).__name__}")
        bias = 0.0 if self.action_bias_init == "center" else float(self.action_bias_init)
        head_squash: Literal["tanh", "none"] = "tanh" if self.action_squash == "tanh" else "none"
        if self.action_readout == "state":
            self.action_net = StateReadoutHead(
                self.controller.state_size, m, head_squash, init_gain=self.action_scale_init
            )
            nn.init.constant_(self.action_net.linear.bias, bias)
        else:
            self.action_net = MotorHead(
                m,
                head_squash,
                init_scale=self.action_scale_init,
                init_bias=bias,
                group=self.motors_per_output,
            )
        if self.action_bias_init == "center":
            outputs, states = self.resting_state()
            self.action_net.center_at(states if self.action_readout == "state" else outputs)
        self.value_net = nn.Linear(self.mlp_extractor.latent_dim_vf, 1)
        if self.ortho_init:
            from functools import partial

            gains: dict[nn.Module, float] = {self.mlp_extractor: float(np.sqrt(2)), self.value_net: 1.0}
            extractors = (
                [self.features_extractor]
                if self.share_features_extractor
                else [self.pi_features_extractor, self.vf_features_extractor]
            )
            for ext in extractors:
                if not isinstance(ext, ConvHeadExtractor):  # keep the paper head's own init
                    gains[ext] = float(np.sqrt(2))
            for module, gain in gains.items():
                module.apply(partial(self.init_weights, gain=gain))
        self.optimizer = self.make_optimizer(lr_schedule(1))

    def _squash_samples(self) -> None:
        """``action_squash="tanh_sample"``: the Gaussian becomes its tanh-squashed form (same parameters: the
        head gives the pre-squash mean, ``log_std`` / gSDE's noise scales are built next)."""
        dist = self.action_dist
        if isinstance(dist, StateDependentNoiseDistribution):
            self.action_dist = StateDependentNoiseDistribution(
                dist.action_dim,
                full_std=dist.full_std,
                use_expln=dist.use_expln,
                squash_output=True,
                learn_features=dist.learn_features,
                epsilon=dist.epsilon,
            )
        elif type(dist) is DiagGaussianDistribution:
            self.action_dist = SquashedDiagGaussianDistribution(self.motor_size)
        else:
            raise ValueError(f"action_squash 'tanh_sample' has no squashed form of {type(dist).__name__}")

    @torch.no_grad()
    def resting_state(self, steps: int = 0) -> tuple[Tensor, Tensor]:
        """The actor controller's outputs ``(motor outputs,)`` and neuron states ``(state_size,)`` at rest
        under zero features (the mean observation when observations are normalised) for ``steps`` env steps
        (default :data:`CENTER_STEPS`) from the initial state, averaged over the last quarter of them (the
        fixed point where the circuit settles). What ``action_bias_init="center"`` centres the head on."""
        steps = int(steps) or CENTER_STEPS
        adapter = self.lstm_actor
        dtype = next(adapter.parameters()).dtype
        features = torch.zeros(steps, adapter.input_size, dtype=dtype, device=self.device)
        starts = torch.zeros(steps, dtype=dtype, device=self.device)
        starts[0] = 1.0
        h0 = torch.zeros(1, 1, adapter.hidden_size, dtype=dtype, device=self.device)
        outputs, states, _ = adapter(features, (h0, h0), starts, return_states=True)
        assert states is not None
        tail = max(1, steps // 4)
        return outputs[-tail:].mean(0), states[-tail:].mean(0)

    def make_optimizer(self, lr: float) -> torch.optim.Optimizer:
        """The policy's optimizer: ``optimizer_class`` over every parameter, with the controllers' parameters
        in their own group stepped at ``controller_lr_scale`` times the group's ``lr``.

        Args:
            lr: learning rate (sb3 sets it again from the schedule before each update).

        Returns:
            The optimizer (also used by :func:`load_policy_weights` to reset the moments).
        """
        # what the groups record besides their rates: the actor controller's dt (checked on load)
        units = self.controller_config.wiring.units if self._default_discrete_controller else None
        check = functools.partial(_check_group_layout, default_discrete_units=units)
        if self.controller_lr_scale == 1.0:  # one group (the layout of models saved before the option)
            single = self.optimizer_class(self.parameters(), lr=lr, **self.optimizer_kwargs)  # type: ignore[call-arg]
            single.param_groups[0]["controller_dt"] = float(self.controller_config.dt)
            single.register_load_state_dict_pre_hook(check)
            return cast(torch.optim.Optimizer, single)
        controllers = [m for m in (self.lstm_actor, self.lstm_critic) if m is not None]
        ctrl_ids = {id(p) for m in controllers for p in m.parameters()}
        ctrl = [p for p in self.parameters() if id(p) in ctrl_ids]
        rest = [p for p in self.parameters() if id(p) not in ctrl_ids]
        groups = [{"params": rest, "lr_scale": 1.0}, {"params": ctrl, "lr_scale": self.controller_lr_scale}]
        for group in groups:
            group["controller_dt"] = float(self.controller_config.dt)
        optimizer = self.optimizer_class(  # type: ignore[call-arg]
            [g for g in groups if g["params"]], lr=lr, **self.optimizer_kwargs
        )
        optimizer.register_step_pre_hook(_scale_group_lrs)
        optimizer.register_step_post_hook(_unscale_group_lrs)
        optimizer.register_load_state_dict_pre_hook(check)
        return cast(torch.optim.Optimizer, optimizer)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """``nn.Module.load_state_dict``; weights that do not fit a policy built on the default controller
        get a hint: models saved with no policy kwargs before 2026-12-06 used the 19-neuron NCP at 1x."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as exc:
            if not self._default_controller:
                raise
            raise RuntimeError(
                f"{exc}\n\nThis policy was built on the default controller (a dense LTC of "
                f"{self.controller_config.wiring.units} neurons). A model saved with no policy kwargs before "
                "2026-12-06 used the 19-neuron NCP at 1x: load it with RecurrentPPO.load(path, "
                "custom_objects={'policy_kwargs': {'controller': {'kind': 'ltc'}, "
                "'controller_lr_scale': 1.0}})"
            ) from exc

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        for key in ("lstm_hidden_size", "n_lstm_layers", "shared_lstm", "enable_critic_lstm", "lstm_kwargs"):
            data.pop(key, None)
        data.update(
            controller=self.controller_config,
            critic=self.critic_mode,
            critic_controller=self.critic_controller_config,
            critic_outputs=self.critic_outputs,
            net_arch=list(self.value_arch),
            action_squash=self.action_squash,
            action_scale_init=self.action_scale_init,
            action_bias_init=self.action_bias_init,
            action_readout=self.action_readout,
            motors_per_output=self.motors_per_output,
            input_scale_init=self.input_scale_init,
            input_bias_init=self.input_bias_init,
            tau_scale=None if self.tau_scale is None else dict(self.tau_scale),
            controller_lr_scale=self.controller_lr_scale,
            mean_limit=self.mean_limit,
            mean_pull=self.mean_pull,
        )
        return data

    # ------------------------------------------------------------------------------------------ properties
    @property
    def controller(self) -> SequenceModel:
        """The actor's controller; ``controller.cell`` is what the inspection tools read."""
        return cast(SequenceModel, self.lstm_actor.controller)

    @property
    def critic_controller(self) -> SequenceModel | None:
        """The separate critic's controller (None for ``"shared"`` / ``"feedforward"`` critics)."""
        return cast(SequenceModel, self.lstm_critic.controller) if self.lstm_critic is not None else None

    def greedy_output(self, latent_pi: Tensor) -> Tensor:
        """The deterministic output for the head's input (motor outputs, or every neuron's state with
        ``action_readout="state"``): the Gaussian's greedy action (``tanh`` of its mean when the sample is
        squashed, ``action_squash="tanh_sample"``) or the logits; what ``predict(deterministic=True)`` acts on
        before sb3 clips (Box) or takes the argmax (Discrete)."""
        out = self.action_net(latent_pi)
        return torch.tanh(bound_mean(out, self.mean_limit)) if self.action_squash == "tanh_sample" else out

    @property
    def motor_head(self) -> MotorHead:
        """The element-wise action head (``action_net``).

        Raises:
            ValueError: the policy reads every neuron (``action_readout="state"``), so it has no motor head.
        """
        if not isinstance(self.action_net, MotorHead):
            raise ValueError(
                "this policy has no element-wise motor head: with action_readout='state' its action_net "
                "is a StateReadoutHead, a linear map from every neuron"
            )
        return self.action_net

    def summary(self) -> dict[str, Any]:
        """Parameter / neuron / synapse counts of the actor, the critic and the whole policy."""
        out: dict[str, Any] = {"actor_controller": controller_summary(self.controller)}
        if self.critic_controller is not None:
            out["critic_controller"] = controller_summary(self.critic_controller)
        out["total_parameters"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return out

    # ---------------------------------------------------------------------------------------------- core
    def _actor(
        self, features: Tensor, states: tuple[Tensor, ...], episode_starts: Tensor, with_states: bool
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
        """``(the action head's input, every step's neuron states or None, new states)``: the head's input
        is the motor outputs, or with ``action_readout="state"`` the neuron states themselves."""
        readout_state = self.action_readout == "state"
        motor, seq, new_states = cast(
            tuple[Tensor, Tensor | None, tuple[Tensor, ...]],
            self.lstm_actor(
                features, states, episode_starts, return_states=with_states or self.use_sde or readout_state
            ),
        )
        if readout_state:
            assert seq is not None
            return seq, seq, new_states
        return motor, seq, new_states

    def _get_action_dist_from_latent(
        self, latent_pi: Tensor, latent_sde: Tensor | None = None
    ) -> Distribution:
        """The action distribution from the head's input (the motor outputs, or every neuron's state with
        ``action_readout="state"``; gSDE: and the neuron states ``latent_sde``)."""
        mean = self.action_net(latent_pi)
        # one reduction (a few microseconds): any NaN or inf entry, or a sum past float range, is not finite
        if not math.isfinite(float(mean.detach().sum())):
            raise self._diverged()
        mean = bound_mean(mean, self.mean_limit, self.mean_pull)
        dist = self.action_dist
        if isinstance(dist, StateDependentNoiseDistribution):
            if latent_sde is None:
                raise ValueError("gSDE needs the actor's neuron states (latent_sde)")
            return dist.proba_distribution(mean, self.log_std, latent_sde)
        if isinstance(dist, DiagGaussianDistribution):  # also the squashed form
            return dist.proba_distribution(mean, self.log_std)
        return dist.proba_distribution(action_logits=mean)  # categorical, multi-categorical, Bernoulli

    def _diverged(self) -> TrainingDivergedError:
        """The error for a non-finite action-head output, naming the parameters that are not finite."""
        bad = [n for n, p in self.named_parameters() if not bool(torch.isfinite(p).all())]
        where = (
            f"non-finite parameters: {', '.join(bad)}"
            if bad
            else "every parameter is finite: the controller's outputs or its inputs (observations) are not"
        )
        hint = (
            "; with action_squash='tanh_sample' an unbounded pre-tanh mean can drift until a float32 tanh is "
            "exactly 1 and the ratio overflows: this policy has mean_limit=None; the default ('auto', 5.0) "
            "bounds it"
            if self.action_squash == "tanh_sample" and self.mean_limit is None
            else ""
        )
        return TrainingDivergedError(
            f"{type(self).__name__}: the action head's output is NaN or inf ({where}); training diverged "
            "(usually one optimizer step with NaN gradients, e.g. from an overflowing PPO ratio). "
            f"experiments/bench/rl_nan_probe.py replays a run to find the first non-finite gradient{hint}"
        )

    def _critic_latent(
        self,
        vf_features: Tensor,
        vf_states: tuple[Tensor, ...],
        episode_starts: Tensor,
        actor_states_seq: Tensor | None,
        actor_new_states: tuple[Tensor, ...],
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        if self.lstm_critic is not None:
            latent, _, new_states = self.lstm_critic(vf_features, vf_states, episode_starts)
            return latent, new_states
        if self.critic_mode == "shared":
            assert actor_states_seq is not None
            return actor_states_seq, actor_new_states
        return vf_features, actor_new_states

    def _split_features(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        features = self.extract_features(obs)
        if self.share_features_extractor:
            assert isinstance(features, Tensor)
            return features, features
        pi, vf = features
        return pi, vf

    def forward(  # type: ignore[override]
        self,
        obs: Tensor,
        lstm_states: RNNStates,
        episode_starts: Tensor,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """Actor and critic on a batch of sequences (rollout collection: ``T == 1``).

        Args:
            obs: observations ``(n_seq * T, *obs_shape)``.
            lstm_states: ``RNNStates(pi=(h, c), vf=(h, c))``, each tensor ``(1, n_seq, hidden_size)``.
            episode_starts: ``(n_seq * T,)`` 0/1.
            deterministic: take the distribution's mode instead of sampling.

        Returns:
            ``(actions, values (n_seq * T, 1), log_prob (n_seq * T,), new RNNStates)``.
        """
        pi_f, vf_f = self._split_features(obs)
        shared = self.critic_mode == "shared"
        motor, seq, pi_states = self._actor(pi_f, lstm_states.pi, episode_starts, shared)
        latent_vf, vf_states = self._critic_latent(vf_f, lstm_states.vf, episode_starts, seq, pi_states)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        distribution = self._get_action_dist_from_latent(motor, seq)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob, RNNStates(pi_states, vf_states)

    def get_distribution(  # type: ignore[override]
        self, obs: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> tuple[Distribution, tuple[Tensor, ...]]:
        """The action distribution and the actor's new ``(h, c)`` (used by ``predict``)."""
        features = BaseModel.extract_features(self, obs, self.pi_features_extractor)
        motor, seq, states = self._actor(features, lstm_states, episode_starts, False)
        return self._get_action_dist_from_latent(motor, seq), states

    def predict_values(  # type: ignore[override]
        self, obs: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> Tensor:
        """Values ``(n_seq * T, 1)`` from the critic's ``(h, c)`` (for ``"shared"``: the actor's state)."""
        features = BaseModel.extract_features(self, obs, self.vf_features_extractor)
        if self.lstm_critic is not None:
            latent, _, _ = self.lstm_critic(features, lstm_states, episode_starts)
        elif self.critic_mode == "shared":
            _, seq, _ = self._actor(features, lstm_states, episode_starts, True)
            assert seq is not None
            latent = seq
        else:
            latent = features
        return cast(Tensor, self.value_net(self.mlp_extractor.forward_critic(latent)))

    def evaluate_actions(  # type: ignore[override]
        self, obs: Tensor, actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Values, log-likelihood of ``actions`` and entropy on padded training sequences."""
        pi_f, vf_f = self._split_features(obs)
        shared = self.critic_mode == "shared"
        motor, seq, pi_states = self._actor(pi_f, lstm_states.pi, episode_starts, shared)
        latent_vf, _ = self._critic_latent(vf_f, lstm_states.vf, episode_starts, seq, pi_states)
        distribution = self._get_action_dist_from_latent(motor, seq)
        log_prob = distribution.log_prob(actions)
        values = self.value_net(self.mlp_extractor.forward_critic(latent_vf))
        return values, log_prob, distribution.entropy()


class CnnLtcPolicy(LtcPolicy):
    """:class:`LtcPolicy` for image observations, with the NCP paper's CNN head as features extractor.

    Same arguments as :class:`LtcPolicy`; ``features_extractor_class`` defaults to :class:`ConvHeadExtractor`
    (pass ``features_extractor_kwargs={"perception": {...}}`` to change the head).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("features_extractor_class", ConvHeadExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
