"""The recurrent-cell contract shared by LTC, CfC and the baselines.

Every cell is an ``nn.Module`` with

* ``input_size`` (S), ``state_size`` (width of the state tensor), ``output_size`` (M), ``num_neurons``,
  ``neuron_names`` and ``neuron_roles`` (length ``num_neurons``, for inspection);
* ``initial_state(batch, device=None, dtype=None) -> (B, state_size)`` zeros;
* ``forward(x (B, S), h (B, state_size), dt=1.0) -> (y (B, M), h' (B, state_size))`` with ``y = readout(h')``;
* ``readout(h) -> y``;
* ``forward_sequence(x (B, T, S), h0=None, dt=None, episode_starts=None) -> (y (B, T, M), h_T)``, by default a
  Python loop over ``forward``; fast paths override it.

``dt`` is the elapsed time of one input step in the cell's time unit: a float, a ``(B,)`` or a ``(B, 1)``
tensor, always > 0. ``episode_starts[b, t] = 1`` resets sample ``b`` to the initial state *before* step ``t``:
``h = (1 - d) * h + d * h_init``.

Validation is cheap by design (shape checks are plain Python; value checks are one fused reduction each) and
the value checks can be switched off globally for benchmarks with :func:`set_validation` (on by default).
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

_VALIDATE: bool = True
_DT_CACHE: list[tuple[tuple[object, ...], Tensor] | None] = [None]


def set_validation(enabled: bool) -> None:
    """Switches the value checks of every cell on or off (process-wide; on by default).

    Off skips the checks that need a device reduction (non-finite input, ``dt <= 0``); shape checks stay on
    because they cost no tensor operation. Use it only for benchmarks or trusted inner loops.

    Args:
        enabled: ``True`` to validate values, ``False`` to skip.
    """
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Whether value checks are on (see :func:`set_validation`)."""
    return _VALIDATE


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_validation` that restores the previous setting on exit."""
    previous = _VALIDATE
    set_validation(enabled)
    try:
        yield
    finally:
        set_validation(previous)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


class RecurrentCell(nn.Module):
    """Base class of every recurrent cell (see the module docstring for the contract).

    Subclasses call ``super().__init__(input_size, state_size, output_size, ...)`` and implement
    :meth:`forward` and :meth:`readout`; they may override :meth:`forward_sequence` with a fused path.

    Args:
        input_size: number of input features ``S`` (>= 1).
        state_size: width of the state tensor (>= 1; an LSTM stores ``[h, c]`` as ``2 * hidden``).
        output_size: number of outputs ``M`` (>= 1).
        num_neurons: neurons shown to inspection tools (default ``state_size``).
        neuron_names: names of those neurons (default ``"neuron_<i>"``).
        neuron_roles: roles of those neurons (default ``"hidden"``).
    """

    input_size: int
    state_size: int
    output_size: int
    num_neurons: int
    neuron_names: list[str]
    neuron_roles: list[str]

    def __init__(
        self,
        input_size: int,
        state_size: int,
        output_size: int,
        num_neurons: int | None = None,
        neuron_names: Sequence[str] | None = None,
        neuron_roles: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("input_size", input_size),
            ("state_size", state_size),
            ("output_size", output_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        n = state_size if num_neurons is None else int(num_neurons)
        if n < 1:
            raise ValueError(f"num_neurons must be a positive integer, got {num_neurons!r}")
        names = [f"neuron_{i}" for i in range(n)] if neuron_names is None else [str(s) for s in neuron_names]
        roles = ["hidden"] * n if neuron_roles is None else [str(r) for r in neuron_roles]
        if len(names) != n or len(roles) != n:
            raise ValueError(
                f"neuron_names and neuron_roles must have num_neurons = {n} entries, got {len(names)} names "
                f"and {len(roles)} roles"
            )
        self.input_size = int(input_size)
        self.state_size = int(state_size)
        self.output_size = int(output_size)
        self.num_neurons = n
        self.neuron_names = names
        self.neuron_roles = roles

    # ------------------------------------------------------------------ contract
    def _default_device_dtype(
        self, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> tuple[torch.device | str | None, torch.dtype]:
        if device is None or dtype is None:
            p: Tensor | None = next(iter(self.parameters()), None)
            if p is None:
                p = next(iter(self.buffers()), None)
            if device is None and p is not None:
                device = p.device
            if dtype is None:
                dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
        assert dtype is not None
        return device, dtype

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """Returns the initial state, zeros of shape ``(batch, state_size)``.

        Args:
            batch: batch size ``B`` (>= 1).
            device: device of the state (default: the cell's parameters' device).
            dtype: dtype of the state (default: the cell's parameters' dtype).
        """
        if isinstance(batch, bool) or not hasattr(batch, "__index__") or operator.index(batch) < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        batch = operator.index(batch)
        device, dtype = self._default_device_dtype(device, dtype)
        return torch.zeros(batch, self.state_size, device=device, dtype=dtype)

    def forward(self, x: Tensor, h: Tensor, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """Advances the state by one input step.

        Args:
            x: input ``(B, S)``.
            h: state ``(B, state_size)``.
            dt: elapsed time of this step: float, ``(B,)`` or ``(B, 1)``; > 0.

        Returns:
            ``(y (B, M), h' (B, state_size))`` with ``y = readout(h')``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, h, dt)")

    def readout(self, h: Tensor) -> Tensor:
        """Maps a state ``(..., state_size)`` to outputs ``(..., M)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement readout(h)")

    def forward_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Runs the cell over a batch-first sequence (default: a Python loop over :meth:`forward`).

        Args:
            x: inputs ``(B, T, S)``.
            h0: initial state ``(B, state_size)``; default :meth:`initial_state`.
            dt: elapsed time per step: ``None`` (1.0), a float, or a tensor ``(B, T)`` / ``(B, T, 1)``; > 0.
            episode_starts: ``(B, T)`` (bool or 0/1 float); 1 resets the state to the initial state before
                step t.

        Returns:
            ``(y (B, T, M), h_T (B, state_size))``.
        """
        ys, hs = self.step_loop(x, h0, dt, episode_starts)
        return torch.stack(ys, dim=1), hs[-1]

    def state_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> Tensor:
        """Every step's state ``(B, T, state_size)`` (after each step); arguments as :meth:`forward_sequence`,
        whose outputs are ``readout`` of these states. For callers that read every neuron (a critic or gSDE
        on the actor's state). Default: :meth:`step_loop`; the LTC and CfC cells override it with their fused
        paths.
        """
        return torch.stack(self.step_loop(x, h0, dt, episode_starts)[1], dim=1)

    def step_loop(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
        step: Callable[[Tensor, Tensor, float | Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """The reference sequence loop: every step's ``(outputs, states)`` as lists of ``(B, M)`` /
        ``(B, state_size)``; arguments as :meth:`forward_sequence`. ``step`` is the per-step call (default
        :meth:`forward`; the inspection tools pass the module itself so forward hooks run).
        """
        x, h, dt_seq, resets = self._prepare_sequence(x, h0, dt, episode_starts)
        h_init = self.initial_state(x.shape[0], device=x.device, dtype=h.dtype)
        step_fn = self.forward if step is None else step
        ys, hs = [], []
        for t in range(x.shape[1]):
            if resets is not None:
                d = resets[:, t]
                h = (1.0 - d) * h + d * h_init
            step_dt: float | Tensor = (
                1.0 if dt_seq is None else (dt_seq[:, t] if isinstance(dt_seq, Tensor) else dt_seq)
            )
            y, h = step_fn(x[:, t], h, step_dt)
            ys.append(y)
            hs.append(h)
        return ys, hs

    # ------------------------------------------------------------------ validation helpers
    def check_step(self, x: Tensor, h: Tensor, dt: float | Tensor) -> Tensor:
        """Validates one step's arguments (input, state, ``dt``) and returns ``dt`` as a ``(B, 1)`` tensor.

        Args:
            x: input ``(B, input_size)``.
            h: state ``(B, state_size)``.
            dt: elapsed time, a float or a tensor of shape ``()``, ``(B,)`` or ``(B, 1)``.

        Returns:
            ``dt`` as ``(B, 1)`` on ``x``'s device in ``h``'s dtype.
        """
        if torch.compiler.is_compiling():
            # torch.export / ONNX export: the signature fixes the shapes, and int(x.shape[0]) would
            # specialise the symbolic batch size; only the (B,) -> (B, 1) reshape of dt remains.
            return dt.reshape(-1, 1) if isinstance(dt, Tensor) else dt  # type: ignore[return-value]
        self._check_input(x)
        self._check_state(h, int(x.shape[0]))
        return self._as_dt(dt, int(x.shape[0]), x.device, h.dtype)

    def _check_input(self, x: Tensor, name: str = "x") -> None:
        """Checks ``x`` is a ``(B, input_size)`` tensor with finite values (value check switchable)."""
        if not isinstance(x, Tensor):
            raise ValueError(
                f"{name} must be a torch.Tensor of shape (B, {self.input_size}), got {type(x).__name__}"
            )
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ValueError(
                f"{name} must have shape (B, input_size={self.input_size}), got {_shape(x)}"
                + (" (for a sequence (B, T, S) use forward_sequence / SequenceModel)" if x.dim() == 3 else "")
            )
        if _VALIDATE and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf); all inputs must be finite")

    def _check_state(self, h: Tensor, batch: int, name: str = "h") -> None:
        """Checks ``h`` is a ``(batch, state_size)`` tensor."""
        if not isinstance(h, Tensor):
            raise ValueError(
                f"{name} must be a torch.Tensor of shape ({batch}, {self.state_size}), got {type(h).__name__}"
            )
        if h.dim() != 2 or h.shape[0] != batch or h.shape[1] != self.state_size:
            raise ValueError(
                f"{name} (state) must have shape (B={batch}, state_size={self.state_size}), got {_shape(h)}; "
                f"use cell.initial_state({batch}) for a fresh state"
            )

    @staticmethod
    def _as_dt(dt: float | Tensor, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Turns ``dt`` (float, ``()``, ``(B,)`` or ``(B, 1)``) into a ``(B, 1)`` tensor.

        Rejects ``dt <= 0``, NaN and inf (value checks switchable by :func:`set_validation`).
        """
        if isinstance(dt, Tensor):
            if dt.dim() == 0:
                dt = dt.reshape(1, 1).expand(batch, 1)
            elif dt.dim() == 1 and dt.shape[0] == batch:
                dt = dt.unsqueeze(1)
            elif dt.dim() == 2 and dt.shape[0] == batch and dt.shape[1] == 1:
                pass
            else:
                raise ValueError(
                    f"dt must be a float or a tensor of shape (B={batch},) or ({batch}, 1), got {_shape(dt)}"
                )
            if dt.dtype != dtype or dt.device != device:
                dt = dt.to(device=device, dtype=dtype)
            if _VALIDATE and not bool(((dt > 0) & (dt < math.inf)).all()):
                bad = dt[~((dt > 0) & (dt < math.inf))].flatten()[:3].tolist()
                raise ValueError(f"dt must be finite and > 0 for every sample, got values such as {bad}")
            return dt
        if isinstance(dt, bool) or not isinstance(dt, int | float):
            raise ValueError(
                f"dt must be a float or a tensor of shape (B={batch},) or ({batch}, 1), got {dt!r}"
            )
        if not (dt > 0 and math.isfinite(dt)):
            raise ValueError(f"dt must be finite and > 0, got {dt}")
        if torch.is_grad_enabled():
            return torch.full((batch, 1), float(dt), device=device, dtype=dtype)
        # Control loops pass the same float dt every step: reuse one tensor (no graph, so sharing is safe).
        key = (float(dt), batch, device, dtype, torch.is_inference_mode_enabled())
        if _DT_CACHE[0] is not None and _DT_CACHE[0][0] == key:
            return _DT_CACHE[0][1]
        out = torch.full((batch, 1), float(dt), device=device, dtype=dtype)
        _DT_CACHE[0] = (key, out)
        return out

    def _prepare_sequence(
        self,
        x: Tensor,
        h0: Tensor | None,
        dt: float | Tensor | None,
        episode_starts: Tensor | None,
    ) -> tuple[Tensor, Tensor, float | Tensor | None, Tensor | None]:
        """Validates sequence inputs.

        Returns:
            ``(x, h0, dt, resets)``: ``dt`` is None, a float or ``(B, T, 1)``; ``resets`` is None or
            ``(B, T, 1)`` in the state dtype.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[2] != self.input_size:
            got = _shape(x) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"x must have shape (B, T, input_size={self.input_size}) (batch-first), got {got}"
            )
        b, t = int(x.shape[0]), int(x.shape[1])
        if t < 1 or b < 1:
            raise ValueError(f"x must have B >= 1 and T >= 1, got shape {_shape(x)}")
        if _VALIDATE and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains non-finite values (NaN or inf); all inputs must be finite")
        if h0 is None:
            h = self.initial_state(b, device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        else:
            self._check_state(h0, b, name="h0")
            h = h0
        dt_out: float | Tensor | None
        if dt is None:
            dt_out = None
        elif isinstance(dt, Tensor):
            if dt.dim() == 0:
                dt = dt.reshape(1, 1, 1).expand(b, t, 1)
            elif dt.dim() == 2 and _shape(dt) == (b, t):
                dt = dt.unsqueeze(-1)
            elif not (dt.dim() == 3 and _shape(dt) == (b, t, 1)):
                raise ValueError(
                    f"dt must be a float or a tensor of shape (B, T) = ({b}, {t}), got {_shape(dt)}"
                )
            dt = dt.to(device=h.device, dtype=h.dtype)
            if _VALIDATE and not bool(((dt > 0) & (dt < math.inf)).all()):
                raise ValueError("dt must be finite and > 0 at every (batch, time) position")
            dt_out = dt
        else:
            if isinstance(dt, bool) or not isinstance(dt, int | float) or not (dt > 0 and math.isfinite(dt)):
                raise ValueError(f"dt must be a finite float > 0 or a (B, T) tensor, got {dt!r}")
            dt_out = float(dt)
        resets: Tensor | None = None
        if episode_starts is not None:
            if not isinstance(episode_starts, Tensor) or _shape(episode_starts) not in ((b, t), (b, t, 1)):
                got = (
                    _shape(episode_starts)
                    if isinstance(episode_starts, Tensor)
                    else type(episode_starts).__name__
                )
                raise ValueError(f"episode_starts must be a tensor of shape (B, T) = ({b}, {t}), got {got}")
            resets = episode_starts.reshape(b, t, 1).to(device=h.device, dtype=h.dtype)
        return x, h, dt_out, resets
