"""Plumbing shared by the recorder and the perturbations: find the cell, route every step via ``forward``.

Both tools attach ``nn.Module`` forward hooks to the cell. A cell's fused ``forward_sequence`` /
``state_sequence`` fast paths would bypass ``forward`` (and so the hooks), so while a tool is active the cell
instance gets the base class's step-by-step loop for both; the class (and every other instance) is untouched.
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
    """``forward_sequence`` through the base class's step loop, calling the module so forward hooks run."""

    def forward_sequence(
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        ys, hs = cell.step_loop(x, h0, dt, episode_starts, step=cell)  # cell(...): the hooks run
        return torch.stack(ys, dim=1), hs[-1]

    return forward_sequence


def _hooked_states(cell: RecurrentCell) -> Callable[..., Tensor]:
    """``state_sequence`` (every step's state; fused in LTC and CfC cells) through the hooked step loop."""

    def state_sequence(
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> Tensor:
        return torch.stack(cell.step_loop(x, h0, dt, episode_starts, step=cell)[1], dim=1)

    return state_sequence


_ROUTED = ("forward_sequence", "state_sequence")


@contextlib.contextmanager
def stepwise(cell: nn.Module) -> Iterator[None]:
    """Make ``cell.forward_sequence`` and ``cell.state_sequence`` loop over ``cell.forward`` (so hooks see
    every step) meanwhile."""
    depth = int(getattr(cell, _DEPTH_ATTR, 0))
    if depth == 0:
        if not isinstance(cell, RecurrentCell):
            raise TypeError(f"Expected a RecurrentCell; got {type(cell).__name__}.")
        cell.forward_sequence = _hooked_sequence(cell)  # type: ignore[method-assign]
        cell.state_sequence = _hooked_states(cell)  # type: ignore[method-assign]
    setattr(cell, _DEPTH_ATTR, depth + 1)
    try:
        yield
    finally:
        depth = int(getattr(cell, _DEPTH_ATTR, 1)) - 1
        setattr(cell, _DEPTH_ATTR, depth)
        if depth == 0:
            for name in _ROUTED:
                if name in vars(cell):
                    delattr(cell, name)
            delattr(cell, _DEPTH_ATTR)


def step_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """``(x, h, dt)`` of a ``cell.forward`` call, whether passed by position or keyword."""
    x = args[0] if len(args) > 0 else kwargs.get("x")
    h = args[1] if len(args) > 1 else kwargs.get("h")
    dt = args[2] if len(args) > 2 else kwargs.get("dt", 1.0)
    return x, h, dt
