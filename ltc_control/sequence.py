"""SequenceModel: runs any :class:`~ltc_control.cells.base.RecurrentCell` over batch-first sequences."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ltc_control.cells.base import RecurrentCell, validation_enabled


class SequenceModel(nn.Module):
    """Batch-first recurrent model around one cell (LTC, CfC, LSTM, ...).

    ``forward`` processes whole sequences (training, evaluation); ``step`` advances one input step for control
    loops and keeps no hidden Python state: the caller carries ``h``.

    Args:
        cell: the recurrent cell (must follow the :class:`RecurrentCell` contract).
        return_sequences: ``True`` returns outputs for every step ``(B, T, M)``; ``False`` only the last
            ``(B, M)``.

    Example:
        >>> import torch
        >>> from ltc_control import LTCCell, SequenceModel, lane_keeping_ncp
        >>> model = SequenceModel(LTCCell(lane_keeping_ncp(seed=0)))
        >>> y, h = model(torch.randn(4, 16, 32))
        >>> y.shape, h.shape
        (torch.Size([4, 16, 1]), torch.Size([4, 19]))
    """

    def __init__(self, cell: RecurrentCell, return_sequences: bool = True) -> None:
        super().__init__()
        if not isinstance(cell, RecurrentCell):
            raise ValueError(
                f"cell must be an ltc_control.cells.base.RecurrentCell (LTCCell, CfCCell, ...), got "
                f"{type(cell).__name__}; wrap ncps models with ltc_control.from_ncps"
            )
        self.cell = cell
        self.return_sequences = bool(return_sequences)

    @property
    def input_size(self) -> int:
        """Input features ``S``."""
        return self.cell.input_size

    @property
    def output_size(self) -> int:
        """Outputs ``M``."""
        return self.cell.output_size

    @property
    def state_size(self) -> int:
        """Width of the state tensor."""
        return self.cell.state_size

    @property
    def wiring(self) -> Any:
        """The cell's wiring, or ``None`` for unwired cells."""
        return getattr(self.cell, "wiring", None)

    def initial_state(
        self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Tensor:
        """The cell's initial state ``(batch, state_size)``."""
        return self.cell.initial_state(batch, device=device, dtype=dtype)

    def forward(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Runs the cell over a sequence.

        Args:
            x: inputs ``(B, T, S)`` (batch first).
            h0: initial state ``(B, state_size)``; default the cell's initial state (zeros).
            dt: elapsed time per step: ``None`` (1.0), a float, or a ``(B, T)`` tensor; > 0.
            episode_starts: optional ``(B, T)`` 0/1 (or bool) tensor; 1 resets the state to the initial state
                before that step is processed.

        Returns:
            ``(y, h_T)``: ``y`` is ``(B, T, M)`` (or ``(B, M)``, the last output, with
            ``return_sequences=False``) and ``h_T`` the final state ``(B, state_size)``.

        Raises:
            ValueError: wrong shapes (the message states expected and actual), non-finite input, ``dt <= 0``.
        """
        if not isinstance(x, Tensor):
            raise ValueError(
                f"x must be a torch.Tensor of shape (B, T, {self.input_size}), got {type(x).__name__}"
            )
        if x.dim() != 3:
            hint = " (for one step (B, S) use SequenceModel.step)" if x.dim() == 2 else ""
            raise ValueError(
                f"x must have shape (B, T, input_size={self.input_size}) (batch first), "
                f"got {tuple(x.shape)}{hint}"
            )
        if x.shape[2] != self.input_size:
            raise ValueError(
                f"x has {x.shape[2]} features in its last dimension but the cell expects "
                f"input_size={self.input_size} (shape (B, T, {self.input_size})), got {tuple(x.shape)}"
            )
        b, t = int(x.shape[0]), int(x.shape[1])
        if isinstance(dt, Tensor) and dt.dim() != 0 and tuple(dt.shape) not in ((b, t), (b, t, 1)):
            raise ValueError(
                f"dt must be a float or a tensor of shape (B, T) = ({b}, {t}), got {tuple(dt.shape)}"
            )
        if episode_starts is not None and (
            not isinstance(episode_starts, Tensor) or tuple(episode_starts.shape) not in ((b, t), (b, t, 1))
        ):
            got = (
                tuple(episode_starts.shape)
                if isinstance(episode_starts, Tensor)
                else type(episode_starts).__name__
            )
            raise ValueError(f"episode_starts must be a tensor of shape (B, T) = ({b}, {t}), got {got}")
        _check_finite_state(h0, "h0")
        y, h = self.cell.forward_sequence(x, h0, dt, episode_starts)
        if not self.return_sequences:
            y = y[:, -1]
        return y, h

    def step(self, x: Tensor, h: Tensor | None = None, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """One control step.

        Args:
            x: inputs ``(B, S)``.
            h: state ``(B, state_size)``; ``None`` starts from the initial state.
            dt: elapsed time: float, ``(B,)`` or ``(B, 1)``; > 0.

        Returns:
            ``(y (B, M), h' (B, state_size))``.
        """
        if h is None:
            if not isinstance(x, Tensor) or x.dim() != 2:
                got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"x must have shape (B, input_size={self.input_size}), got {got}")
            h = self.cell.initial_state(
                x.shape[0], device=x.device, dtype=x.dtype if x.is_floating_point() else None
            )
        else:
            _check_finite_state(h, "h")
        return self.cell(x, h, dt)

    def extra_repr(self) -> str:
        return f"return_sequences={self.return_sequences}"


def _check_finite_state(h: Any, name: str) -> None:
    """A NaN or inf in a given state would spread through every later step: reject it at the call."""
    # the sum is a cheap first test (~2 us against ~7 us for isfinite().all() on a small state); only a
    # non-finite sum (a NaN/inf, or an overflow of huge finite values) takes the exact element-wise check
    if (
        isinstance(h, Tensor)
        and validation_enabled()
        and not math.isfinite(h.sum().item())
        and not bool(torch.isfinite(h).all())
    ):
        raise ValueError(
            f"{name} (the recurrent state) contains NaN or inf; pass a finite state, e.g. policy.reset() / "
            "cell.initial_state(batch)"
        )
