"""Baseline recurrent cells behind the project's cell contract: LSTM, GRU and CT-RNN.

All three follow :class:`~ltc_control.cells.base.RecurrentCell`: ``forward(x (B, S), h (B, state_size), dt)``
returns ``(y (B, M), h')`` with ``y = fc(hidden)``, a linear readout (the identity when ``output_size`` is
``None``).

* :class:`LSTMCell` and :class:`GRUCell` are discrete-time: they validate ``dt`` (finite, > 0, right shape)
  and otherwise ignore it, so the same training and evaluation code can drive every cell. Their gate equations
  and parameter names (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) are those of
  ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell``, so ``cell.load_state_dict(torch_cell.state_dict(),
  strict=False)`` copies a torch cell 1:1 (``strict=False`` because the readout ``fc`` is not in the torch
  cell).
* :class:`CTRNNCell` is a continuous-time RNN ``dx/dt = -x / tau + tanh(W x + U u + b)`` integrated over
  ``dt`` with ``unfolds`` sub-steps; it uses ``dt``.

Parameter counts for the NCP paper's comparison (32 inputs, 64 units, 1 output): ``CTRNNCell(32, 64, 1)`` has
6,273 parameters, the paper's figure; ``LSTMCell(32, 64, 1)`` has 25,153, i.e. the paper's 24,897 plus 256
because torch's LSTM carries two bias vectors (``bias_ih`` and ``bias_hh``) where the paper's Keras LSTM has
one.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ltc_control.cells.base import RecurrentCell

CTRNNSolver = Literal["fused", "euler"]


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _readout(hidden: int, output_size: int | None) -> nn.Module:
    return nn.Identity() if output_size is None else nn.Linear(hidden, output_size)


def _torch_rnn_init_(cell: nn.Module, hidden: int) -> None:
    # torch.nn.RNNCellBase's initialisation: every weight and bias U(-1/sqrt(H), 1/sqrt(H)).
    bound = 1.0 / math.sqrt(hidden)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        nn.init.uniform_(getattr(cell, name), -bound, bound)


class _GatedCell(RecurrentCell):
    """Shared construction of the torch-style gated cells: ``gates`` stacked weight blocks, readout ``fc``."""

    #: weight blocks stacked in ``weight_ih`` / ``weight_hh`` (LSTM 4, GRU 3)
    gates: int = 1
    #: state width in units of ``hidden`` (LSTM 2: ``[h, c]``; GRU 1)
    state_factor: int = 1

    def __init__(self, input_size: int, hidden: int, output_size: int | None = None) -> None:
        _check_positive_int("input_size", input_size)
        _check_positive_int("hidden", hidden)
        if output_size is not None:
            _check_positive_int("output_size", output_size)
        super().__init__(
            input_size,
            self.state_factor * hidden,
            hidden if output_size is None else output_size,
            hidden,
            [f"hidden_{i}" for i in range(hidden)],
            ["hidden"] * hidden,
        )
        self.hidden = hidden
        self.proj_size = output_size
        self.weight_ih = nn.Parameter(torch.empty(self.gates * hidden, input_size))
        self.weight_hh = nn.Parameter(torch.empty(self.gates * hidden, hidden))
        self.bias_ih = nn.Parameter(torch.empty(self.gates * hidden))
        self.bias_hh = nn.Parameter(torch.empty(self.gates * hidden))
        _torch_rnn_init_(self, hidden)
        self.fc = _readout(hidden, output_size)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (``type(cell)(**cell.config())`` rebuilds the architecture)."""
        return {"input_size": self.input_size, "hidden": self.hidden, "output_size": self.proj_size}

    def _fused(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """torch's fused kernel over a whole sequence: ``(hidden (B, T, hidden), final state)``."""
        raise NotImplementedError

    def _fused_sequence(
        self, x: Tensor, h0: Tensor | None, dt: float | Tensor | None, episode_starts: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """``(hidden (B, T, hidden), h_T)`` from torch's fused kernel (one call, no Python loop over time), or
        ``None`` where it does not apply: on other devices than the CPU (not checked there) and when some
        sequence restarts after its first step (a reset inside the sequence needs the step loop).
        RecurrentPPO's training batches restart only at a sequence's first step (sb3-contrib splits sequences
        at episode starts), so they take the fused path.
        """
        # where the fused path does not apply, decide before validating: the step loop validates (once)
        if isinstance(x, Tensor) and x.device.type != "cpu":
            return None
        starts = episode_starts
        if isinstance(starts, Tensor) and starts.dim() in (2, 3) and starts.shape[1] > 1:
            if bool(starts[:, 1:].any()):
                return None
        x, h, _, resets = self._prepare_sequence(x, h0, dt, episode_starts)
        if resets is not None:
            d = resets[:, 0]
            h = (1.0 - d) * h + d * self.initial_state(x.shape[0], device=h.device, dtype=h.dtype)
        return self._fused(x, h)

    def forward_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Runs the cell over a batch-first sequence; arguments and returns as the base class's.

        On the CPU, when no sequence restarts after its first step, one call of torch's fused LSTM/GRU
        kernel (per CPU-second the LSTM 4.8-5.3x, the GRU 2.0-4.0x the step loop's speed at 64 units,
        ``experiments/bench/gated_seq_speed.py``; the same numbers within float rounding, tested); otherwise
        the base class's step loop.
        """
        fused = self._fused_sequence(x, h0, dt, episode_starts)
        if fused is None:
            return super().forward_sequence(x, h0, dt, episode_starts)
        hidden, h_last = fused
        return self.fc(hidden), h_last


class LSTMCell(_GatedCell):
    """Long short-term memory cell (``torch.nn.LSTMCell``'s equations) with a linear readout.

    The state is ``[h, c]`` concatenated, ``(B, 2 * hidden)``; inspection sees the ``hidden`` units of ``h``
    (``num_neurons == hidden``, names ``hidden_<i>``, role ``"hidden"``). Gates, in torch's row order
    ``i, f, g, o``::

        i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);   h' = sigmoid(o) * tanh(c');   y = fc(h')

    ``dt`` is validated and ignored (a discrete-time cell).

    Example:
        >>> cell = LSTMCell(input_size=3, hidden=8, output_size=2)
        >>> y, h = cell(torch.randn(5, 3), cell.initial_state(5))
        >>> tuple(y.shape), tuple(h.shape)
        ((5, 2), (5, 16))

    Args:
        input_size: number of input features ``S``.
        hidden: number of LSTM units ``H``.
        output_size: width of the linear readout ``fc``; ``None`` outputs ``h`` itself.
    """

    gates = 4
    state_factor = 2

    def readout(self, h: Tensor) -> Tensor:
        """Output ``(B, output_size)`` from the state ``(B, 2 * hidden)`` (reads ``h``, not ``c``)."""
        return self.fc(h[..., : self.hidden])

    def forward(self, x: Tensor, h: Tensor, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """Advance by one step.

        Args:
            x: input ``(B, input_size)``.
            h: state ``[h, c]`` ``(B, 2 * hidden)``.
            dt: validated (finite, > 0; float, ``(B,)`` or ``(B, 1)``) and ignored.

        Returns:
            ``(y (B, output_size), [h', c'] (B, 2 * hidden))``.
        """
        self.check_step(x, h, dt)
        hx, cx = h[:, : self.hidden], h[:, self.hidden :]
        gates = x @ self.weight_ih.T + self.bias_ih + hx @ self.weight_hh.T + self.bias_hh
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        state = torch.cat([h_new, c_new], dim=1)
        return self.fc(h_new), state

    def _fused(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        hx = h[:, : self.hidden].unsqueeze(0).contiguous()
        cx = h[:, self.hidden :].unsqueeze(0).contiguous()
        params: list[Tensor] = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        hidden, h_t, c_t = torch.lstm(x, (hx, cx), params, True, 1, 0.0, self.training, False, True)
        return hidden, torch.cat([h_t[0], c_t[0]], dim=1)


class GRUCell(_GatedCell):
    """Gated recurrent unit (``torch.nn.GRUCell``'s equations) with a linear readout.

    The state is ``h`` ``(B, hidden)``; gates in torch's row order ``r, z, n``::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr);  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) * n + z * h;  y = fc(h')

    ``dt`` is validated and ignored (a discrete-time cell).

    Args:
        input_size: number of input features ``S``.
        hidden: number of GRU units ``H``.
        output_size: width of the linear readout ``fc``; ``None`` outputs ``h`` itself.
    """

    gates = 3
    state_factor = 1

    def readout(self, h: Tensor) -> Tensor:
        """Output ``(B, output_size)`` from the state ``(B, hidden)``."""
        return self.fc(h)

    def forward(self, x: Tensor, h: Tensor, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """Advance by one step.

        Args:
            x: input ``(B, input_size)``.
            h: state ``(B, hidden)``.
            dt: validated (finite, > 0; float, ``(B,)`` or ``(B, 1)``) and ignored.

        Returns:
            ``(y (B, output_size), h' (B, hidden))``.
        """
        self.check_step(x, h, dt)
        gi = x @ self.weight_ih.T + self.bias_ih
        gh = h @ self.weight_hh.T + self.bias_hh
        i_r, i_z, i_n = gi.chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h_new = (1.0 - z) * n + z * h
        return self.fc(h_new), h_new

    def _fused(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        params: list[Tensor] = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        hidden, h_t = torch.gru(
            x, h.unsqueeze(0).contiguous(), params, True, 1, 0.0, self.training, False, True
        )
        return hidden, h_t[0]

    def state_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> Tensor:
        """Every step's state ``(B, T, hidden)``; the GRU's state is its hidden vector, so the fused path of
        :meth:`forward_sequence` serves here too (the base class's step loop where it does not apply)."""
        fused = self._fused_sequence(x, h0, dt, episode_starts)
        return super().state_sequence(x, h0, dt, episode_starts) if fused is None else fused[0]


class CTRNNCell(RecurrentCell):
    """Continuous-time RNN ``dx/dt = -x / tau + tanh(W x + U u + b)`` with a linear readout.

    Each input step integrates the ODE over ``dt`` (the input ``u`` held constant) with ``unfolds`` sub-steps
    of ``h = dt / unfolds``:

    * ``solver="fused"`` (default), the semi-implicit step the LTC uses: the leak is implicit, the drive
      explicit, ``x <- (x + h * f(x)) / (1 + h / tau)`` with ``f(x) = tanh(W x + U u + b)``. Stable for any
      ``h``.
    * ``solver="euler"``: explicit Euler, ``x <- x + h * (-x / tau + f(x))``; stable only for ``h < 2 tau``.

    Both are first-order: the error against the exact solution shrinks like ``1 / unfolds``. ``tau`` is a
    fixed time constant (the same unit as ``dt``), not trained, which gives the NCP paper's CT-RNN size (6,273
    parameters at 32 inputs, 64 units, 1 output). Parameters: ``W`` (``recurrent``, ``(N, N)``, applied as
    ``x @ W.T``), ``U`` (``input_weight``, ``(N, S)``), ``b`` (``bias``, ``(N,)``), readout ``fc``.

    Args:
        input_size: number of input features ``S``.
        units: number of neurons ``N``.
        output_size: width of the linear readout ``fc``; ``None`` outputs the state.
        tau: time constant (> 0), in the unit of ``dt``.
        unfolds: solver sub-steps per input step (>= 1).
        solver: ``"fused"`` or ``"euler"``.
    """

    def __init__(
        self,
        input_size: int,
        units: int,
        output_size: int | None = None,
        tau: float = 1.0,
        unfolds: int = 6,
        solver: CTRNNSolver = "fused",
    ) -> None:
        _check_positive_int("input_size", input_size)
        _check_positive_int("units", units)
        _check_positive_int("unfolds", unfolds)
        if output_size is not None:
            _check_positive_int("output_size", output_size)
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"tau must be a finite number > 0, got {tau!r}.")
        if solver not in ("fused", "euler"):
            raise ValueError(f"Unknown CT-RNN solver {solver!r}; valid ones are ['fused', 'euler'].")
        names = [f"hidden_{i}" for i in range(units)]
        super().__init__(
            input_size, units, units if output_size is None else output_size, units, names, ["hidden"] * units
        )
        self.units = units
        self.proj_size = output_size
        self.tau = float(tau)
        self.unfolds = int(unfolds)
        self.solver: str = solver
        self.input_weight = nn.Parameter(torch.empty(units, input_size))
        self.recurrent = nn.Parameter(torch.empty(units, units))
        self.bias = nn.Parameter(torch.zeros(units))
        nn.init.xavier_uniform_(self.input_weight)
        # An orthogonal recurrent matrix keeps early gradients from vanishing or exploding over long
        # sequences.
        nn.init.orthogonal_(self.recurrent)
        self.fc = _readout(units, output_size)

    def config(self) -> dict[str, Any]:
        """Constructor arguments (``CTRNNCell(**cell.config())`` rebuilds the architecture)."""
        return {
            "input_size": self.input_size,
            "units": self.units,
            "output_size": self.proj_size,
            "tau": self.tau,
            "unfolds": self.unfolds,
            "solver": self.solver,
        }

    def readout(self, h: Tensor) -> Tensor:
        """Output ``(B, output_size)`` from the state ``(B, units)``."""
        return self.fc(h)

    def forward(self, x: Tensor, h: Tensor, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """Integrate over one input step of length ``dt``.

        Args:
            x: input ``(B, input_size)``, held constant over the step.
            h: state ``(B, units)``.
            dt: elapsed time (> 0): a float, or a tensor ``(B,)`` / ``(B, 1)`` for per-sample times.

        Returns:
            ``(y (B, output_size), h' (B, units))``.
        """
        step = self.check_step(x, h, dt) / self.unfolds  # (B, 1)
        drive_in = x @ self.input_weight.T + self.bias
        v = h
        if self.solver == "fused":
            denom = 1.0 + step / self.tau
            for _ in range(self.unfolds):
                v = (v + step * torch.tanh(drive_in + v @ self.recurrent.T)) / denom
        else:
            for _ in range(self.unfolds):
                v = v + step * (-v / self.tau + torch.tanh(drive_in + v @ self.recurrent.T))
        return self.fc(v), v
