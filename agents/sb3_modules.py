"""The building blocks of the liquid sb3 policies: the image feature extractor, the motor-neuron head and
the adapter that gives a liquid controller the LSTM face ``RecurrentPPO``'s rollout buffer expects.

Used by :class:`ltc_control.agents.sb3.LtcPolicy`; see that module for the design.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from ltc_control.config import from_dict
from ltc_control.perception import ConvHead, PerceptionConfig, standardize
from ltc_control.sequence import SequenceModel

__all__ = ["ControllerAdapter", "ConvHeadExtractor", "MotorHead", "StateReadoutHead", "as_config"]


# ------------------------------------------------------------------------------------------------ configs
def as_config(cls: type[Any], value: Any, name: str) -> Any:
    """A frozen config dataclass from an instance, a mapping (strict keys) or None (defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, value, path=name)
    raise ValueError(
        f"{name} must be a {cls.__name__}, a mapping of its fields or None, got {type(value).__name__}"
    )


# ---------------------------------------------------------------------------------------------- modules
class ConvHeadExtractor(BaseFeaturesExtractor):
    """The NCP paper's CNN head (:class:`~ltc_control.perception.ConvHead`) as an sb3 features extractor.

    sb3 hands it channel-first float images ``(B, C, H, W)`` (scaled to [0, 1] when the policy's
    ``normalize_images`` is on; ``VecTransposeImage`` turns the env's ``(H, W, C)`` frames channel-first).
    Each image is standardised (zero mean, unit variance, as :class:`~ltc_control.policy.Policy` does) and
    mapped
    to
    ``channels[-1] * features_per_channel`` features (32 by default).

    Args:
        observation_space: channel-first image ``Box`` ``(C, H, W)``.
        perception: the head's config (a :class:`~ltc_control.perception.PerceptionConfig` or a mapping of its
            fields); augmentation settings are ignored here (RL uses no augmentation).
    """

    def __init__(
        self, observation_space: spaces.Space, perception: PerceptionConfig | Mapping[str, Any] | None = None
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            got = getattr(observation_space, "shape", type(observation_space).__name__)
            raise ValueError(
                f"ConvHeadExtractor needs an image Box observation space (C, H, W) or (H, W, C), got {got}; "
                "use LtcPolicy (FlattenExtractor) for vector observations"
            )
        cfg = as_config(PerceptionConfig, perception, "perception")
        shape = tuple(int(v) for v in observation_space.shape)
        if shape[0] not in (1, 3):
            raise ValueError(
                f"ConvHeadExtractor expects channel-first images (C, H, W) with C in (1, 3), got {shape}; "
                "RecurrentPPO transposes (H, W, C) image spaces automatically (VecTransposeImage), a custom "
                "training loop must wrap its env in VecTransposeImage"
            )
        head = ConvHead.from_config(cfg, shape)
        super().__init__(observation_space, head.output_size)
        self.perception_config = cfg
        self.head = head

    def forward(self, observations: Tensor) -> Tensor:
        """``(B, C, H, W)`` float images -> features ``(B, features_dim)``."""
        x = observations.float()
        if self.perception_config.standardize:
            x = standardize(x)
        return cast(Tensor, self.head(x))


def _check_squash(squash: str) -> None:
    if squash not in ("tanh", "none"):
        raise ValueError(f"squash must be 'tanh' or 'none', got {squash!r}")


def check_motors_per_output(value: object, name: str = "motors_per_output") -> int:
    """``value`` as an int >= 1 (motor neurons per output); else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _squash(a: Tensor, squash: str) -> Tensor:
    return torch.tanh(a) if squash == "tanh" else a


class MotorHead(nn.Module):
    """Element-wise map from motor outputs to the distribution's inputs: ``squash(scale * y + bias)``.

    For continuous actions this is the Gaussian mean (``squash="tanh"`` keeps it in [-1, 1]); for discrete
    actions the logits (``squash="none"``). It has exactly the parameters of
    :class:`ltc_control.policy.Policy`'s action head (``action_scale``, ``action_bias``).

    With ``group`` G > 1 each output averages G consecutive motor neurons first (``LtcPolicy``'s
    ``motors_per_output``): output ``i`` reads motor neurons ``[i * G, (i + 1) * G)``.

    Args:
        size: number of outputs ``M`` (= action dimensions or logits).
        squash: ``"tanh"`` or ``"none"``.
        init_scale: initial scale.
        init_bias: initial bias.
        group: motor neurons averaged into each output (>= 1); the head's input has ``M * group`` entries.
    """

    def __init__(
        self,
        size: int,
        squash: Literal["tanh", "none"],
        init_scale: float = 1.0,
        init_bias: float = 0.0,
        group: int = 1,
    ) -> None:
        super().__init__()
        _check_squash(squash)
        self.squash = squash
        self.group = check_motors_per_output(group, "group (motor neurons per output)")
        self.scale = nn.Parameter(torch.full((size,), float(init_scale)))
        self.bias = nn.Parameter(torch.full((size,), float(init_bias)))

    def forward(self, y: Tensor) -> Tensor:
        """``(..., M * group)`` motor outputs -> ``(..., M)``."""
        m = self.scale.numel()
        if y.shape[-1] != m * self.group:
            raise ValueError(
                f"the motor head expects {m * self.group} motor outputs ({m} outputs x {self.group} motor "
                f"neurons each), got {y.shape[-1]}"
            )
        return _squash(self.affine(y), self.squash)

    def affine(self, y: Tensor) -> Tensor:
        """The map before the squash: ``scale * y + bias`` (after averaging each output's motor group)."""
        if self.group > 1:
            y = y.unflatten(-1, (self.scale.numel(), self.group)).mean(-1)
        return self.scale * y + self.bias

    @torch.no_grad()
    def center_at(self, y: Tensor) -> None:
        """Shifts the bias so that the pre-squash output at the motor outputs ``y`` ``(M * group,)`` is zero
        (``LtcPolicy(action_bias_init="center")``)."""
        self.bias.sub_(self.affine(y))

    def extra_repr(self) -> str:
        extra = f", group={self.group}" if self.group > 1 else ""
        return f"size={self.scale.numel()}, squash={self.squash!r}{extra}"


class StateReadoutHead(nn.Module):
    """Linear map from every neuron's state to the distribution's inputs: ``squash(W x + b)``.

    The head of ``LtcPolicy(action_readout="state")``: like sb3's ``action_net`` over an LSTM's whole hidden
    state, each logit (or Gaussian mean) reads all ``state_size`` neurons of the actor's controller instead
    of one motor neuron. ``W`` starts orthogonal with gain ``init_gain`` (sb3 uses 0.01 for its policies'
    ``action_net``), ``b`` at zero.

    Args:
        state_size: neurons read (the controller's ``state_size``).
        size: outputs ``M`` (= action dimensions or logits).
        squash: ``"tanh"`` or ``"none"``.
        init_gain: gain of the orthogonal initialisation of ``W``.
    """

    def __init__(
        self, state_size: int, size: int, squash: Literal["tanh", "none"], init_gain: float = 1.0
    ) -> None:
        super().__init__()
        _check_squash(squash)
        self.squash = squash
        self.linear = nn.Linear(int(state_size), int(size))
        nn.init.orthogonal_(self.linear.weight, gain=float(init_gain))
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., state_size)`` neuron states -> ``(..., M)``."""
        return _squash(self.linear(x), self.squash)

    @torch.no_grad()
    def center_at(self, x: Tensor) -> None:
        """Shifts the bias so that the pre-squash output at the neuron states ``x`` ``(state_size,)`` is zero
        (``LtcPolicy(action_bias_init="center")``)."""
        self.linear.bias.sub_(self.linear(x))

    def extra_repr(self) -> str:
        return (
            f"state_size={self.linear.in_features}, size={self.linear.out_features}, squash={self.squash!r}"
        )


class ControllerAdapter(nn.Module):
    """Presents a :class:`~ltc_control.sequence.SequenceModel` with the face ``RecurrentPPO`` expects of an
    LSTM.

    ``RecurrentPPO`` reads ``num_layers`` and ``hidden_size`` to size its state buffers and passes states as
    LSTM-style pairs ``(h, c)``, each ``(1, n_seq, hidden_size)``. The cell state ``(n_seq, state_size)``
    lives in ``h[0, :, :state_size]``; the rest of ``h`` and all of ``c`` stay zero.

    Args:
        controller: the recurrent controller.
        hidden_size: width of the LSTM-style state (>= ``controller.state_size``; actor and critic share it).
        dt: elapsed time per env step in the cell's time unit.
    """

    num_layers = 1

    def __init__(self, controller: SequenceModel, hidden_size: int, dt: float = 1.0) -> None:
        super().__init__()
        if hidden_size < controller.state_size:
            raise ValueError(
                f"hidden_size {hidden_size} is smaller than the controller's state_size "
                f"{controller.state_size}"
            )
        self.controller = controller
        self.hidden_size = int(hidden_size)
        self.dt = float(dt)

    @property
    def input_size(self) -> int:
        """Input features ``F``."""
        return self.controller.input_size

    @property
    def state_size(self) -> int:
        """Width of the cell state packed into ``h``."""
        return self.controller.state_size

    def pack(self, state: Tensor) -> Tensor:
        """Cell state ``(n_seq, state_size)`` -> ``h`` ``(1, n_seq, hidden_size)`` (zero padded)."""
        pad = self.hidden_size - state.shape[-1]
        return nn.functional.pad(state, (0, pad)).unsqueeze(0) if pad else state.unsqueeze(0)

    def unpack(self, h: Tensor) -> Tensor:
        """``h`` ``(1, n_seq, hidden_size)`` -> cell state ``(n_seq, state_size)``."""
        if h.dim() != 3 or h.shape[0] != 1 or h.shape[2] != self.hidden_size:
            raise ValueError(
                f"recurrent state must have shape (1, n_seq, {self.hidden_size}) (RecurrentPPO's (h, c) "
                "layout), "
                f"got {tuple(h.shape)}; start from model.predict(obs) with state=None"
            )
        return h[0, :, : self.state_size]

    def state_sequence(self, x: Tensor, h: Tensor, starts: Tensor) -> Tensor:
        """Every step's cell state of a batch of sequences.

        The cell's ``state_sequence``: the LTC and CfC cells' fused sequence paths (no Python loop over
        time), the base class's step loop for the other cells (the same numbers, tested).

        Args:
            x: inputs ``(n_seq, T, F)``.
            h: state before the first step ``(n_seq, state_size)``.
            starts: ``(n_seq, T)`` 0/1: 1 resets the state to the cell's initial state before that step.

        Returns:
            States ``(n_seq, T, state_size)`` (after each step).
        """
        return cast(Tensor, self.controller.cell.state_sequence(x, h, self.dt, starts))

    def forward(
        self,
        features: Tensor,
        states: tuple[Tensor, ...],
        episode_starts: Tensor,
        return_states: bool = False,
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, Tensor]]:
        """Runs the controller over flattened sequences, sb3-contrib style.

        Args:
            features: ``(n_seq * T, F)``: ``n_seq`` sequences of ``T`` steps, sequence-major (sb3's layout).
            states: ``(h, c)``, each ``(1, n_seq, hidden_size)``: the state before the first step.
            episode_starts: ``(n_seq * T,)`` 0/1: 1 resets the state to the initial state before that step.
            return_states: also return every step's cell state ``(n_seq * T, state_size)`` (for a critic that
                reads the actor's neurons, and gSDE's latent); see :meth:`state_sequence`.

        Returns:
            ``(outputs (n_seq * T, M), states_seq or None, (h', c'))``.
        """
        h = self.unpack(states[0])
        n_seq = h.shape[0]
        x = features.reshape(n_seq, -1, self.input_size)
        t = x.shape[1]
        starts = episode_starts.reshape(n_seq, t).to(dtype=x.dtype)
        if not return_states:
            y, h_t = self.controller(x, h, self.dt, episode_starts=starts)
            return y.reshape(n_seq * t, -1), None, (self.pack(h_t), torch.zeros_like(states[1]))
        cell = self.controller.cell
        hs = self.state_sequence(x, h, starts)
        y = cell.readout(hs)
        return (
            y.reshape(n_seq * t, -1),
            hs.reshape(n_seq * t, -1),
            (self.pack(hs[:, -1]), torch.zeros_like(states[1])),
        )
