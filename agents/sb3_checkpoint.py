"""Moving weights between the liquid sb3 policies and :class:`ltc_control.policy.Policy` checkpoints.

:func:`to_policy` / :func:`sb3_to_checkpoint` turn a trained :class:`~ltc_control.agents.sb3.LtcPolicy` (or a
``RecurrentPPO`` model using one) into an exact ``Policy`` (same actions); :func:`policy_kwargs_from_policy`
and :func:`load_policy_weights` go the other way, to fine-tune an imitation-trained policy with PPO.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import Tensor, nn

from ltc_control.agents.sb3 import LtcPolicy
from ltc_control.agents.sb3_modules import ConvHeadExtractor
from ltc_control.policy import ActionHeadConfig, Policy, PolicyConfig

__all__ = ["load_policy_weights", "policy_kwargs_from_policy", "sb3_to_checkpoint", "to_policy"]


# ------------------------------------------------------------------------------------ export / import
def _policy_of(model: Any) -> LtcPolicy:
    policy = getattr(model, "policy", model)
    if not isinstance(policy, LtcPolicy):
        raise ValueError(
            f"expected an LtcPolicy or a RecurrentPPO model using one, got {type(policy).__name__}; "
            "RecurrentPPO's "
            "own MlpLstmPolicy has no liquid controller to export"
        )
    return policy


def _policy_config(policy: LtcPolicy) -> PolicyConfig:
    _check_motor_readout(policy, "convert the sb3 policy to a Policy")
    extractor = policy.pi_features_extractor
    ctrl = policy.controller_config
    # "tanh_sample": the greedy action is tanh of the head's affine output (bounded first with mean_limit),
    # as a "tanh" head computes it
    head = ActionHeadConfig(
        squash="none" if policy.action_squash == "none" else "tanh",
        learnable=True,
        mean_limit=getattr(policy, "mean_limit", None),  # tanh_sample's bounded mean: tanh(bound_mean(...))
    )
    if isinstance(extractor, ConvHeadExtractor):
        c, h, w = extractor.head.image_shape
        if not policy.normalize_images and not extractor.perception_config.standardize:
            raise ValueError(
                "cannot export: the sb3 policy feeds raw 0-255 images to an unstandardised head, while "
                "ltc_control.policy.Policy scales frames to [0, 1]; train with normalize_images=True or a "
                "standardising head"
            )
        return PolicyConfig(
            observation="image",
            image_shape=(h, w, c),
            perception=dataclasses.replace(extractor.perception_config),
            controller=ctrl,
            action_size=policy.motor_size,
            action_head=head,
        )
    if isinstance(extractor, FlattenExtractor):
        return PolicyConfig(
            observation="vector",
            vector_size=int(extractor.features_dim),
            controller=ctrl,
            action_size=policy.motor_size,
            action_head=head,
        )
    raise ValueError(
        f"cannot export a policy whose features extractor is {type(extractor).__name__}: "
        "ltc_control.policy.Policy knows vector observations (FlattenExtractor) and the ConvHead "
        "(ConvHeadExtractor / CnnLtcPolicy)"
    )


def _check_motor_readout(policy: LtcPolicy, what: str) -> None:
    if getattr(policy, "action_readout", "motor") != "motor":
        raise ValueError(
            f"cannot {what}: its action head reads every neuron (action_readout={policy.action_readout!r}), "
            "while ltc_control.policy.Policy's head is element-wise on the motor neurons; only "
            "action_readout='motor' policies convert (export, inspection, fine-tuning from a Policy)"
        )
    if getattr(policy, "motors_per_output", 1) != 1:
        raise ValueError(
            f"cannot {what}: each action output averages {policy.motors_per_output} motor neurons "
            "(motors_per_output), while ltc_control.policy.Policy's head reads one motor neuron per output; "
            "only motors_per_output=1 policies convert (export, inspection, fine-tuning from a Policy)"
        )


def to_policy(model: Any) -> Policy:
    """The actor of a trained sb3 model as an :class:`ltc_control.policy.Policy` (same weights, eval mode).

    ``Policy.act(obs, state)`` then returns the deterministic action of ``model.predict(obs, state,
    deterministic=True)`` (for discrete actions: the logits; the action is their argmax). Its ``controller``
    is a copy of the sb3 policy's controller, so recorders, plots, saliency and video rollouts work unchanged.

    Args:
        model: a ``RecurrentPPO`` model with an :class:`LtcPolicy` / :class:`CnnLtcPolicy`, or the policy.

    Raises:
        ValueError: a policy that is not an ``LtcPolicy`` or uses a features extractor ``Policy`` cannot
    represent."""
    policy = _policy_of(model)
    cfg = _policy_config(policy)
    out = Policy(cfg)
    extractor = policy.pi_features_extractor
    state: dict[str, Tensor] = {}
    for k, v in policy.controller.state_dict().items():
        state[f"controller.{k}"] = v
    if isinstance(extractor, ConvHeadExtractor):
        for k, v in extractor.head.state_dict().items():
            state[f"perception.{k}"] = v
    state["action_scale"] = policy.motor_head.scale.detach()
    state["action_bias"] = policy.motor_head.bias.detach()
    missing, unexpected = out.load_state_dict(
        {k: v.detach().cpu().clone() for k, v in state.items()}, strict=False
    )
    # Policy may carry buffers that the sb3 policy does not (none today); weights must all be covered.
    params = {name for name, _ in out.named_parameters()}
    if params & set(missing) or unexpected:
        raise RuntimeError(
            f"export mismatch: missing {sorted(params & set(missing))}, unexpected {sorted(unexpected)}"
        )
    return out.eval()


def sb3_to_checkpoint(model: Any, directory: str | Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write the trained actor as an ``ltc_control`` checkpoint folder (safetensors + JSON, atomic).

    The folder loads with :func:`ltc_control.checkpoint.load_checkpoint` and works with
    ``ltc-control rollout|evaluate|inspect --checkpoint <folder>`` exactly like an imitation-trained policy.

    Args:
        model: a ``RecurrentPPO`` model (or its :class:`LtcPolicy`).
        directory: checkpoint folder to write (replaced if it exists).
        metadata: extra JSON-ready metadata (e.g. env id, training steps, returns).

    Returns:
        The checkpoint folder.
    """
    from ltc_control.checkpoint import save_checkpoint

    policy = _policy_of(model)
    meta: dict[str, Any] = {
        "source": "stable-baselines3 RecurrentPPO",
        "action_space": type(policy.action_space).__name__,
        "action_decoding": "argmax of the outputs"
        if isinstance(policy.action_space, spaces.Discrete)
        else "the outputs are the actions (deterministic mean)",
        "critic": policy.critic_mode,
    }
    timesteps = getattr(model, "num_timesteps", None)
    if isinstance(timesteps, int):
        meta["num_timesteps"] = timesteps
    meta.update(dict(metadata or {}))
    return save_checkpoint(directory, to_policy(policy), metadata=meta)


def policy_kwargs_from_policy(policy: Policy, **overrides: Any) -> dict[str, Any]:
    """``policy_kwargs`` for ``RecurrentPPO`` that rebuild ``policy``'s actor (perception, controller, head).

    Use with :func:`load_policy_weights` to fine-tune an imitation-trained
    :class:`~ltc_control.policy.Policy`.

    Args:
        policy: the trained policy.
        **overrides: more policy keyword arguments (``critic``, ``log_std_init``, ``net_arch``...).

    Returns:
        The keyword arguments (the wiring is stored inline, so the actor has exactly the policy's synapses).
    """
    cfg = policy.resolved_config()
    kwargs: dict[str, Any] = {
        "controller": cfg.controller,
        "action_squash": cfg.action_head.squash,
    }
    if cfg.action_head.mean_limit is not None:  # converted from a tanh_sample policy with a bounded mean
        kwargs.update(action_squash="tanh_sample", mean_limit=cfg.action_head.mean_limit)
    if cfg.observation == "image":
        kwargs["features_extractor_class"] = ConvHeadExtractor
        kwargs["features_extractor_kwargs"] = {"perception": cfg.perception}
    kwargs.update(overrides)
    return kwargs


def load_policy_weights(model: Any, policy: Policy) -> None:
    """Copy an :class:`~ltc_control.policy.Policy`'s perception, controller and action head into the sb3
    actor.

    The sb3 policy must have been built with :func:`policy_kwargs_from_policy` (same shapes). The critic's
    controller and value head are left as they are (a separate critic CNN head, if any, gets the perception
    weights too); the optimizer state is reset (its moments belonged to the old weights).

    Args:
        model: a ``RecurrentPPO`` model (or its :class:`LtcPolicy`).
        policy: the source policy.

    Raises:
        ValueError: shapes that do not match (the message names the tensor), or an sb3 policy whose head reads
            every neuron (``action_readout="state"``).
    """
    sb3_policy = _policy_of(model)
    _check_motor_readout(sb3_policy, "copy a Policy's weights into the sb3 policy")

    def copy(dst: nn.Module, src: nn.Module, what: str) -> None:
        dst_state, src_state = dst.state_dict(), src.state_dict()
        if set(dst_state) != set(src_state):
            raise ValueError(
                f"{what}: parameter names differ ({sorted(set(dst_state) ^ set(src_state))}); build the sb3 "
                "policy with policy_kwargs_from_policy(policy)"
            )
        for k, v in src_state.items():
            if dst_state[k].shape != v.shape:
                raise ValueError(
                    f"{what}.{k}: shape {tuple(v.shape)} does not match the sb3 policy's "
                    f"{tuple(dst_state[k].shape)}; build the sb3 policy with "
                    "policy_kwargs_from_policy(policy)"
                )
        dst.load_state_dict(src_state)

    copy(sb3_policy.controller, policy.controller, "controller")
    if policy.perception is not None:
        extractors = [sb3_policy.pi_features_extractor]
        if not sb3_policy.share_features_extractor:
            extractors.append(sb3_policy.vf_features_extractor)  # the critic starts from the same features
        for ext in extractors:
            if not isinstance(ext, ConvHeadExtractor):
                raise ValueError(
                    "the source policy has a ConvHead but the sb3 policy does not; use CnnLtcPolicy"
                )
            copy(ext.head, policy.perception, "perception")
    with torch.no_grad():
        sb3_policy.motor_head.scale.copy_(policy.action_scale.detach().reshape(-1))
        sb3_policy.motor_head.bias.copy_(policy.action_bias.detach().reshape(-1))
    sb3_policy.optimizer = sb3_policy.make_optimizer(sb3_policy.optimizer.param_groups[0]["lr"])
