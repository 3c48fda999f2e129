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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

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

__all__ = ["ActionHeadConfig", "Policy", "PolicyConfig"]


@dataclass(frozen=True)
class ActionHeadConfig:
    """Map motor outputs ``y (B, T, A)`` to actions: ``tanh(scale * y + bias)`` (or without tanh).

    Args:
        squash: ``"tanh"`` keeps actions in [-1, 1] (the env's action space); ``"none"`` leaves them affine.
        init_scale: initial per-action scale.
        init_bias: initial per-action bias.
        learnable: train scale and bias (else they are fixed buffers).
    """

    squash: Literal["tanh", "none"] = "tanh"
    init_scale: float = 1.0
    init_bias: float = 0.0
    learnable: bool = True


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
        return torch.tanh(a) if self.config.action_head.squash == "tanh" else a

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

        Args:
            obs: one observation (``(H, W, C)`` image or ``(D,)`` vector) or a batch (``(B, H, W, C)`` /
                ``(B, D)``).
            state: state ``(B, state_size)`` from :meth:`reset` or the previous call; None = fresh state.
            dt: elapsed time since the previous step; default ``config.controller.dt``.

        Returns:
            ``(action, state)``: float32 numpy ``(A,)`` for a single observation or ``(B, A)`` for a batch,
            and the new state tensor (keep it for the next call).
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
