"""Policy: perception + controller + action head, for training (sequences) and control loops (steps).

Image observations go ``uint8 (B, T, H, W, 3)`` -> float [0, 1] -> augmentation (training only, if enabled)
-> per-image standardisation -> :class:`~ltc_control.perception.ConvHead` -> sensory features ``(B, T, 32)``
-> controller (:class:`~ltc_control.sequence.SequenceModel`) -> motor outputs ``(B, T, A)`` -> action head
``tanh(scale * y + bias)`` -> actions in [-1, 1]. Vector observations ``(B, T, D)`` skip the perception.

Example:
    >>> policy = Policy(PolicyConfig(image_shape=(64, 128, 3)))
    >>> state = policy.reset(batch=1)
    >>> frame = np.zeros((64, 128, 3), np.uint8)
    >>> action, state = policy.act(frame, state)
    >>> action.shape
    (1,)

No env or stable-baselines3 imports: the env adapters live in ``ltc_control.agents``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from ltc_control.controllers import (
    ControllerConfig,
    build_controller,
    controller_summary,
    resolve_wiring_config,
)
from ltc_control.perception import Augment, ConvHead, PerceptionConfig, frames_to_float, standardize
from ltc_control.sequence import SequenceModel

__all__ = ["ActionHeadConfig", "Policy", "PolicyConfig", "bound_mean", "check_mean_limit", "check_mean_pull"]


class _BoundMeanPull(torch.autograd.Function):
    """:func:`bound_mean`'s value; its gradient plus a pull back towards ``[-limit, limit]``."""

    @staticmethod
    def forward(ctx: Any, mean: Tensor, limit: float, pull: float) -> Tensor:
        ctx.save_for_backward(mean)
        ctx.limit, ctx.pull = limit, pull
        return bound_mean(mean.detach(), limit)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (mean,) = ctx.saved_tensors
        limit, pull = ctx.limit, ctx.pull
        # the bound's slope written out (equal to autograd's through bound_mean up to float rounding, ~1e-7;
        # kept so that the session-18 runs of docs/rl.md replay bit for bit)
        over = mean.abs() - (limit - 1.0)
        t = torch.tanh(over.clamp(min=0.0))
        slope = torch.where(over > 0, 1.0 - t * t, torch.ones_like(mean))
        rows = max(1, mean.numel() // max(1, mean.shape[-1]))
        excess = mean - mean.clamp(-limit, limit)
        return grad * slope + excess * (pull / rows), None, None


def bound_mean(mean: Tensor, limit: float | None, pull: float = 0.0) -> Tensor:
    """``mean`` kept within ``[-limit, limit]``: unchanged where ``|mean| <= limit - 1`` (bit for bit), then
    ``limit - 1 + tanh(|mean| - limit + 1)`` with the sign (slope 1 at the join, so the gradient is
    continuous). ``None``: unchanged. The pre-tanh bound of :class:`ActionHeadConfig` ``mean_limit`` (and of
    the sb3 policies' ``mean_limit``).

    ``pull`` (> 0, training only: the value is the same) adds to the gradient that of a quadratic penalty on
    the input beyond the limit, ``pull / 2 * sum(relu(|mean| - limit) ** 2) / rows`` (``rows``: the entries
    per action dimension, e.g. a minibatch's steps), so a mean that drifted past the limit, where the bound's
    own slope vanishes (below 0.01 past ``limit + 2``), is drawn back to where it can still learn. Without a
    limit the pull is ignored."""
    if limit is None:
        return mean
    if pull > 0.0 and mean.requires_grad:
        return cast(Tensor, _BoundMeanPull.apply(mean, float(limit), float(pull)))
    knee = limit - 1.0
    over = mean.abs() - knee
    return torch.where(over > 0, torch.sign(mean) * (knee + torch.tanh(over.clamp(min=0.0))), mean)


def check_mean_pull(value: Any, name: str = "mean_pull") -> float:
    """``value`` as a mean pull (:func:`bound_mean`): a finite number >= 0.

    Raises:
        ValueError: anything else (named by ``name``).
    """
    try:
        pull = float(value)
    except (TypeError, ValueError):
        pull = math.nan
    if not (math.isfinite(pull) and pull >= 0.0) or isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return pull


def check_mean_limit(value: Any, name: str = "mean_limit") -> float | None:
    """``value`` as a mean limit (:func:`bound_mean`): None, or a finite number > 1.

    Raises:
        ValueError: anything else (named by ``name``).
    """
    if value is None:
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        limit = math.nan
    if not (math.isfinite(limit) and limit > 1.0) or isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number > 1 (or None), got {value!r}")
    return limit


@dataclass(frozen=True)
class ActionHeadConfig:
    """Map motor outputs ``y (B, T, A)`` to actions: ``tanh(scale * y + bias)`` (or without tanh).

    Args:
        squash: ``"tanh"`` keeps actions in [-1, 1] (the env's action space); ``"none"`` leaves them affine.
        init_scale: initial per-action scale.
        init_bias: initial per-action bias.
        learnable: train scale and bias (else they are fixed buffers).
        mean_limit: with ``squash="tanh"``: the value inside the tanh is bounded first,
            ``tanh(bound_mean(scale * y + bias, mean_limit))`` (:func:`bound_mean`: unchanged up to
            ``mean_limit - 1``); what a stable-baselines3 policy trained with ``mean_limit`` converts to.
            None: no bound.
    """

    squash: Literal["tanh", "none"] = "tanh"
    init_scale: float = 1.0
    init_bias: float = 0.0
    learnable: bool = True
    mean_limit: float | None = None

    def __post_init__(self) -> None:
        if self.mean_limit is not None:
            if self.squash != "tanh":
                raise ValueError(f"action_head.mean_limit needs squash 'tanh', got squash {self.squash!r}")
            check_mean_limit(self.mean_limit, "action_head.mean_limit")


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to rebuild a policy (stored in every checkpoint's ``model.json``).

    Args:
        observation: ``"image"`` (uint8 camera frames) or ``"vector"`` (float features).
        image_shape: ``(H, W, C)`` of image observations, as the env stores them (LaneKeeping-v0: 64, 128, 3).
        vector_size: length ``D`` of vector observations (used when ``observation == "vector"``).
        perception: convolutional head, standardisation and augmentation (image observations only).
        controller: recurrent controller (cell kind, wiring, hyper-parameters).
        action_size: number of actions ``A`` (1: steering; 2: steering and throttle) = motor neurons.
        action_head: the affine + tanh map from motor outputs to actions.
    """

    observation: Literal["image", "vector"] = "image"
    image_shape: tuple[int, int, int] = (64, 128, 3)
    vector_size: int = 0
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    action_size: int = 1
    action_head: ActionHeadConfig = field(default_factory=ActionHeadConfig)

    def __post_init__(self) -> None:
        if self.observation == "vector" and self.vector_size < 1:
            raise ValueError(
                "observation 'vector' needs vector_size >= 1 (the length of the observation vector)"
            )
        h, w, c = self.image_shape
        if min(h, w) < 1 or c not in (1, 3):
            raise ValueError(f"image_shape must be (H, W, C) with C in (1, 3), got {self.image_shape}")
        if self.action_size < 1:
            raise ValueError(f"action_size must be >= 1, got {self.action_size}")


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if hasattr(x, "shape") else type(x).__name__


#: methods the fast path of :meth:`Policy.act` stands in for; a subclass or instance overriding one of them
#: gets the general path
_FAST_ACT_METHODS = ("forward", "features", "preprocess", "_obs_tensor", "_check_sequence_obs")
_FAST_ACT_CLASSES: dict[type, bool] = {}
_MODULE_TRAIN = nn.Module.train
#: observations with at most this many values are checked for NaN/inf with one Python sum (no tensor call)
_SMALL_OBS = 1024


def _fast_act_allowed(policy: Policy) -> bool:
    """Whether ``policy``'s class and instance keep every method the fast ``act`` path stands in for."""
    cls = type(policy)
    ok = _FAST_ACT_CLASSES.get(cls)
    if ok is None:
        ok = all(getattr(cls, name) is getattr(Policy, name) for name in _FAST_ACT_METHODS)
        _FAST_ACT_CLASSES[cls] = ok
    if not ok:
        return False
    d = policy.__dict__
    return not any(name in d for name in _FAST_ACT_METHODS)


def _uniform_mode_modules(root: nn.Module) -> list[nn.Module] | None:
    """The modules of ``root``'s tree if all share its mode and none overrides ``train()``, else None.

    Under these conditions ``root.eval()`` / ``root.train(mode)`` only set each module's ``training`` flag,
    so the fast ``act`` path may set the flags itself (and skip them entirely in eval mode).
    """
    mode = root.training
    tree = [root]
    for m in tree:  # appending while iterating visits every module once, breadth first
        if m.training is not mode or type(m).train is not _MODULE_TRAIN:
            return None
        for child in m._modules.values():
            if child is not None:
                tree.append(child)
    return tree


def _all_finite(obs: Tensor | np.ndarray) -> bool:
    """``False`` if ``obs`` (floating point) may hold NaN or inf; integer observations are always finite.

    Small observations are summed in Python floats: any NaN or inf makes the sum non-finite, so a finite sum
    proves every value finite (a sum that overflows only sends the call to the general path, which checks
    exactly). Larger ones use one elementwise check.
    """
    if isinstance(obs, np.ndarray):
        if obs.dtype.kind != "f":
            return True
        if obs.size <= _SMALL_OBS:
            return math.isfinite(sum(obs.ravel().tolist()))
        return bool(np.isfinite(obs).all())
    if not obs.is_floating_point():
        return True
    if obs.numel() <= _SMALL_OBS:
        return math.isfinite(sum(obs.reshape(-1).tolist()))
    return bool(torch.isfinite(obs).all())


class Policy(nn.Module):
    """Perception + controller + action head (see the module docstring for the data flow).

    Attributes:
        config: the :class:`PolicyConfig` it was built from.
        perception: the :class:`ConvHead` (None for vector observations).
        augment: the train-time :class:`Augment` (identity unless enabled and in training mode).
        controller: the :class:`SequenceModel`; ``controller.cell`` is what inspection tools read.

    Args:
        config: policy config.
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        super().__init__()
        self.config = config or PolicyConfig()
        cfg = self.config
        self.perception: ConvHead | None
        if cfg.observation == "image":
            h, w, c = cfg.image_shape
            self.perception = ConvHead.from_config(cfg.perception, (c, h, w))
            input_size = self.perception.output_size
        else:
            self.perception = None
            input_size = cfg.vector_size
        self.augment = Augment(cfg.perception.augment)
        self.controller: SequenceModel = build_controller(cfg.controller, input_size, cfg.action_size)
        a = cfg.action_size
        scale = torch.full((a,), float(cfg.action_head.init_scale))
        bias = torch.full((a,), float(cfg.action_head.init_bias))
        if cfg.action_head.learnable:
            self.action_scale = nn.Parameter(scale)
            self.action_bias = nn.Parameter(bias)
        else:
            self.register_buffer("action_scale", scale)
            self.register_buffer("action_bias", bias)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        """Device of the policy's parameters."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the policy's parameters."""
        return next(self.parameters()).dtype

    @property
    def state_size(self) -> int:
        """Width of the recurrent state ``(B, state_size)``."""
        return self.controller.state_size

    @property
    def action_size(self) -> int:
        """Number of actions ``A``."""
        return self.config.action_size

    def resolved_config(self) -> PolicyConfig:
        """The config with the built wiring stored inline (what checkpoints save)."""
        ctrl = resolve_wiring_config(self.config.controller, self.controller.wiring)
        return dataclasses.replace(self.config, controller=ctrl)

    def summary(self) -> dict[str, Any]:
        """Parameter / neuron / synapse counts of perception, controller and the whole policy."""
        out: dict[str, Any] = {"controller": controller_summary(self.controller)}
        out["perception_parameters"] = self.perception.num_params if self.perception is not None else 0
        out["total_parameters"] = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return out

    # --------------------------------------------------------------------------------------- observations
    def _obs_tensor(self, obs: Tensor | np.ndarray) -> Tensor:
        if isinstance(obs, np.ndarray):
            obs = torch.from_numpy(np.ascontiguousarray(obs))
        if not isinstance(obs, Tensor):
            raise ValueError(f"obs must be a numpy array or torch tensor, got {type(obs).__name__}")
        return obs.to(self.device)

    def _check_sequence_obs(self, obs: Tensor) -> None:
        cfg = self.config
        if cfg.observation == "image":
            h, w, c = cfg.image_shape
            if obs.dim() != 5 or tuple(obs.shape[2:]) != (h, w, c):
                hint = ""
                if obs.dim() == 4 and tuple(obs.shape[1:]) == (h, w, c):
                    hint = "; for a batch of single frames use act(), or add a time axis: obs[:, None]"
                elif obs.dim() == 3 and tuple(obs.shape) == (h, w, c):
                    hint = "; for one frame use act(frame, state)"
                elif obs.dim() == 5 and tuple(obs.shape[2:]) == (c, h, w):
                    hint = (
                        "; frames are channel-last (H, W, C) as the env returns them: permute(0, 1, 3, 4, 2)"
                    )
                elif obs.dim() == 5:
                    hint = (
                        f"; the policy was built for {h}x{w}x{c} images: resize the frames or build a policy "
                        f"with PolicyConfig(image_shape={tuple(obs.shape[2:])})"
                    )
                raise ValueError(
                    f"image observations must have shape (B, T, H, W, C) = (B, T, {h}, {w}, {c}) (uint8, or "
                    f"float in [0, 1]), got {_shape(obs)}{hint}"
                )
            if obs.dtype != torch.uint8 and not obs.is_floating_point():
                raise ValueError(
                    f"image observations must be uint8 or float in [0, 1], got dtype {obs.dtype}"
                )
        else:
            d = cfg.vector_size
            if obs.dim() != 3 or obs.shape[2] != d:
                hint = (
                    "; for one step use act(obs, state), or add a time axis: obs[:, None]"
                    if (obs.dim() == 2 and obs.shape[1] == d)
                    else ""
                )
                raise ValueError(
                    f"vector observations must have shape (B, T, D) = (B, T, {d}), got {_shape(obs)}{hint}"
                )
        if obs.is_floating_point() and not bool(torch.isfinite(obs).all()):
            raise ValueError("observations contain NaN or inf; check the env / dataset that produced them")

    def preprocess(self, obs: Tensor | np.ndarray) -> Tensor:
        """Images ``(B, T, H, W, C)`` -> standardised (and, in training, augmented) ``(B*T, C, H, W)`` floats.

        This is exactly what the :class:`ConvHead` sees; saliency tools start from it.

        Args:
            obs: uint8 frames (or float frames in [0, 1]) ``(B, T, H, W, C)``.
        """
        if self.perception is None:
            raise ValueError("preprocess() is for image observations; this policy takes vectors")
        x = self._obs_tensor(obs)
        self._check_sequence_obs(x)
        t = x.shape[1]
        images = frames_to_float(x).to(self.dtype)
        images = self.augment(images, group_size=t)
        if self.config.perception.standardize:
            images = standardize(images)
        return images

    def features(self, obs: Tensor | np.ndarray) -> Tensor:
        """Controller inputs: perception features ``(B, T, F)`` (F = 32 by default), or the float vectors.

        Gradients flow (for saliency); call under ``torch.no_grad()`` when not needed.

        Args:
            obs: ``(B, T, H, W, C)`` images or ``(B, T, D)`` vectors.
        """
        x = self._obs_tensor(obs)
        self._check_sequence_obs(x)
        b, t = int(x.shape[0]), int(x.shape[1])
        if self.perception is None:
            return x.to(self.dtype)
        feats = self.perception(self.preprocess(x))
        return feats.view(b, t, -1)

    # -------------------------------------------------------------------------------------------- forward
    def action_head(self, y: Tensor) -> Tensor:
        """Motor outputs ``(..., A)`` -> actions ``(..., A)``."""
        a = self.action_scale * y + self.action_bias
        head = self.config.action_head
        return torch.tanh(bound_mean(a, head.mean_limit)) if head.squash == "tanh" else a

    def forward(
        self,
        obs: Tensor | np.ndarray,
        state: Tensor | None = None,
        episode_starts: Tensor | np.ndarray | None = None,
        dt: float | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the policy over a batch of sequences.

        Args:
            obs: uint8 images ``(B, T, H, W, C)`` exactly as the env and datasets store them (float images in
                [0, 1] are accepted too, e.g. with evaluation noise added), or float vectors ``(B, T, D)``.
            state: recurrent state ``(B, state_size)`` at the start; None = :meth:`reset` state (zeros).
            episode_starts: ``(B, T)`` 0/1 or bool; 1 resets the state before that step (an episode began).
            dt: elapsed time per step (float or ``(B, T)``); default ``config.controller.dt``.

        Returns:
            ``(actions (B, T, A), state (B, state_size))``: actions in [-1, 1] with the tanh head; the state
            after the last step (feed it back in for the next chunk).

        Raises:
            ValueError: observations of the wrong shape/dtype or non-finite (the message gives the expected
                shape and the fix), a state of the wrong shape.
        """
        feats = self.features(obs)
        if episode_starts is not None and isinstance(episode_starts, np.ndarray):
            episode_starts = torch.from_numpy(np.ascontiguousarray(episode_starts))
        if episode_starts is not None:
            episode_starts = episode_starts.to(feats.device)
        if state is not None and isinstance(state, Tensor) and state.device != feats.device:
            state = state.to(feats.device)
        y, h = self.controller(
            feats, state, self.config.controller.dt if dt is None else dt, episode_starts=episode_starts
        )
        return self.action_head(y), h

    def reset(self, batch: int = 1) -> Tensor:
        """A fresh state ``(batch, state_size)`` (zeros) on the policy's device."""
        return self.controller.initial_state(batch, device=self.device, dtype=self.dtype)

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def act(
        self, obs: Tensor | np.ndarray, state: Tensor | None = None, dt: float | None = None
    ) -> tuple[np.ndarray, Tensor]:
        """One control step without gradients, in eval mode (no augmentation, no dropout).

        The result is bit for bit that of :meth:`forward` on ``obs[:, None]`` under ``torch.no_grad()`` with
        the policy in eval mode; afterwards the policy is back in the mode it was in. Common control-loop
        calls (a numpy or CPU observation of the configured shape, a CPU policy whose modules all share one
        mode) take a fast path that skips the mode switch and the repeated checks around the networks; every
        other call, and every error, goes through the general path.

        Args:
            obs: one observation (``(H, W, C)`` image or ``(D,)`` vector) or a batch (``(B, H, W, C)`` /
                ``(B, D)``).
            state: state ``(B, state_size)`` from :meth:`reset` or the previous call; None = fresh state.
            dt: elapsed time since the previous step; default ``config.controller.dt``.

        Returns:
            ``(action, state)``: float32 numpy ``(A,)`` for a single observation or ``(B, A)`` for a batch,
            and the new state tensor (keep it for the next call).

        Raises:
            ValueError: observations of the wrong shape/dtype or non-finite, a state of the wrong shape.
        """
        if torch.is_grad_enabled():
            with torch.no_grad():
                out = self._act_fast(obs, state, dt)
        else:  # a control loop that already disabled gradients saves entering the context again
            out = self._act_fast(obs, state, dt)
        if out is not None:
            return out
        return self.act_general(obs, state, dt)

    def _act_fast(
        self, obs: Tensor | np.ndarray, state: Tensor | None, dt: float | None
    ) -> tuple[np.ndarray, Tensor] | None:
        """:meth:`act` for the common control-loop call (gradients already off), or ``None`` to decline.

        It runs exactly the tensor operations of :meth:`act_general` (same functions, same arguments, same
        order) and leaves out only work whose outcome is known: the second observation check, no-op
        conversions, and the mode switch when every module is already in eval mode. In training mode it sets
        the modules' ``training`` flags to False and back itself, which is all ``eval()`` / ``train()`` do
        when every module shares the mode and none overrides ``train``. It declines before changing anything
        whenever a check of the general path could fail or the call is unusual (a non-CPU policy, observation
        or state, a mixed-mode module tree, an overridden method, an empty batch): observation errors are
        raised by the general path, errors of the network calls (e.g. a state of the wrong shape) by the same
        calls as there, so the messages are the same. Module internals (``_modules``, ``_parameters``) are
        read directly because ``nn.Module.__getattr__`` costs about a microsecond per lookup.
        """
        if not _fast_act_allowed(self):
            return None
        scale: Tensor | None = self._parameters.get("action_scale")
        if scale is None:
            scale = self._buffers.get("action_scale")
        if scale is None or not scale.is_cpu:
            return None
        cfg = self.config
        modules = self._modules
        perception = cast("ConvHead | None", modules.get("perception"))
        if (perception is not None) != (cfg.observation == "image"):
            return None
        tail: tuple[int, ...] = cfg.image_shape if perception is not None else (cfg.vector_size,)
        k = len(tail)
        if isinstance(obs, np.ndarray):
            if not (obs.dtype.kind == "f" or (perception is not None and obs.dtype == np.uint8)):
                return None
        elif isinstance(obs, Tensor):
            if not obs.is_cpu or not (
                obs.is_floating_point() or (perception is not None and obs.dtype == torch.uint8)
            ):
                return None
        else:
            return None
        ndim = obs.ndim
        if ndim == k:
            single = True
        elif ndim == k + 1 and obs.shape[0] >= 1:
            single = False
        else:
            return None
        if tuple(obs.shape[-k:]) != tail or not _all_finite(obs):
            return None  # the general path raises its shape / "NaN or inf" error
        if state is not None and not (isinstance(state, Tensor) and state.is_cpu):
            return None
        tree = _uniform_mode_modules(self)
        if tree is None:
            return None
        if isinstance(obs, np.ndarray):
            arr = np.ascontiguousarray(obs)
            x = torch.from_numpy(arr[None, None] if single else arr[:, None])
        else:
            x = obs[None, None] if single else obs[:, None]
        dtype = scale.dtype
        training = self.training
        if training:
            for m in tree:
                m.__dict__["training"] = False
        try:
            if perception is not None:
                images = frames_to_float(x)
                if images.dtype is not dtype:
                    images = images.to(dtype)
                images = cast(Augment, modules["augment"])(images, group_size=1)
                if cfg.perception.standardize:
                    images = standardize(images)
                feats = perception(images).view(x.shape[0], 1, -1)
            else:
                feats = x if x.dtype is dtype else x.to(dtype)
            y, new_state = cast(SequenceModel, modules["controller"])(
                feats, state, cfg.controller.dt if dt is None else dt, episode_starts=None
            )
            actions = self.action_head(y)
        finally:
            if training:
                for m in tree:
                    m.__dict__["training"] = True
        if actions.dtype is torch.float32 and actions.is_cpu:
            out = actions.numpy()
            return (out[0, 0] if single else out[:, 0]), new_state
        out = actions[:, 0].to("cpu", torch.float32).numpy()
        return (out[0] if single else out), new_state

    def act_general(
        self, obs: Tensor | np.ndarray, state: Tensor | None = None, dt: float | None = None
    ) -> tuple[np.ndarray, Tensor]:
        """:meth:`act` through :meth:`forward` with the whole module switched to eval mode and back: the
        general path that :meth:`act` falls back to, and the reference its fast path is tested and timed
        against.

        Args:
            obs: as for :meth:`act`.
            state: as for :meth:`act`.
            dt: as for :meth:`act`.

        Returns:
            ``(action, new_state)`` as :meth:`act` returns them.
        """
        x = self._obs_tensor(obs)
        single_ndim = 3 if self.config.observation == "image" else 1
        if x.dim() == single_ndim:
            x, single = x.unsqueeze(0), True
        elif x.dim() == single_ndim + 1:
            single = False
        else:
            what = (
                f"{self.config.image_shape} image"
                if single_ndim == 3
                else f"({self.config.vector_size},) vector"
            )
            raise ValueError(
                f"act() takes one {what} or a batch of them, got {_shape(x)}; for sequences (B, T, ...) "
                "use forward()"
            )
        with torch.no_grad(), self._eval_mode():
            actions, new_state = self.forward(x.unsqueeze(1), state, dt=dt)
        out = actions[:, 0].detach().to("cpu", torch.float32).numpy()
        return (out[0] if single else out), new_state
