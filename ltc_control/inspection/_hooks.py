"""Plumbing shared by the recorder and the perturbations: find the cell, route every step via ``forward``.

Both tools attach ``nn.Module`` forward hooks to the cell. A cell's fused ``forward_sequence`` fast path would
bypass ``forward`` (and so the hooks), so while a tool is active the cell instance gets the base class's
step-by-step loop as its ``forward_sequence``; the class (and every other instance) is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ltc_control.cells.base import RecurrentCell

__all__ = ["find_cell", "step_arguments", "stepwise"]


def find_cell(target: Any) -> RecurrentCell:
    """The recurrent cell inside ``target``.

    Args:
        target: a ``Policy`` (``policy.controller.cell``), a ``SequenceModel`` (``.cell``), a ``PolicyAgent``
            (``.policy``) or a cell.

    Raises:
        TypeError: no recurrent cell was found.
    """
    seen: set[int] = set()
    obj = target
    for _ in range(4):
        if isinstance(obj, RecurrentCell):
            return obj
        if id(obj) in seen:
            break
        seen.add(id(obj))
        for attr in ("controller", "cell", "policy"):
            inner = getattr(obj, attr, None)
            if inner is not None:
                obj = inner
                break
        else:
            break
    if isinstance(obj, RecurrentCell):
        return obj
    raise TypeError(
        f"Cannot find a recurrent cell in {type(target).__name__}; pass a Policy (policy.controller.cell), a "
        "SequenceModel or a cell from ltc_control.cells."
    )


_DEPTH_ATTR = "_ltc_inspection_stepwise_depth"


def _hooked_sequence(cell: RecurrentCell) -> Callable[..., tuple[Tensor, Tensor]]:
    """The base class's sequence loop, but calling the module (``cell(...)``) so forward hooks run."""

    def forward_sequence(
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        x, h, dt_seq, resets = cell._prepare_sequence(x, h0, dt, episode_starts)
        h_init = cell.initial_state(x.shape[0], device=x.device, dtype=h.dtype)
        ys = []
        for t in range(x.shape[1]):
            if resets is not None:
                d = resets[:, t]
                h = (1.0 - d) * h + d * h_init
            step_dt: float | Tensor = (
                1.0 if dt_seq is None else (dt_seq[:, t] if isinstance(dt_seq, Tensor) else dt_seq)
            )
            y, h = cell(x[:, t], h, step_dt)
            ys.append(y)
        return torch.stack(ys, dim=1), h

    return forward_sequence


@contextlib.contextmanager
def stepwise(cell: nn.Module) -> Iterator[None]:
    """Make ``cell.forward_sequence`` loop over ``cell.forward`` (so hooks see every step) meanwhile."""
    depth = int(getattr(cell, _DEPTH_ATTR, 0))
    if depth == 0:
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"Expected a RecurrentCell; got {type(cell).__name__}.")
        cell.forward_sequence = _hooked_sequence(cell)  # type: ignore[method-assign]
    setattr(cell, _DEPTH_ATTR, depth + 1)
    try:
        yield
    finally:
        depth = int(getattr(cell, _DEPTH_ATTR, 1)) - 1
        setattr(cell, _DEPTH_ATTR, depth)
        if depth == 0:
            del cell.forward_sequence
            delattr(cell, _DEPTH_ATTR)


def step_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(x, h, dt)`` of a ``cell.forward`` call, whether passed by position or keyword."""
    x = args[0] if len(args) > 0 else kwargs.get("x")
    h = args[1] if len(args) > 1 else kwargs.get("h")
    dt = args[2] if len(args) > 2 else kwargs.get("dt", 1.0)
    return x, h, dt
