"""The effective weights of a CfC cell laid out for the fast paths (:class:`Plan`): every (sub-)cell's heads
concatenated ``[ff1, ff2, time_a, time_b]``, masks and sign constraints applied, the first affine map split
into its input and recurrent columns. ``CfCCell.plan()`` / ``WiredCfCCell.plan()`` build one with autograd, so
gradients reach the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ltc_control.cells.cfc_layers import LeCunTanh


# --------------------------------------------------------------------------------------------- the plan
@dataclass
class PlanLayer:
    """One CfC (sub-)cell with its effective weights; heads concatenated ``[ff1, ff2, time_a, time_b]``.

    The first affine map reads ``[u, h_old]``: ``p0 = u @ wu.T + h_old @ wh.T + b0``. Without a backbone
    ``p0`` are the heads' pre-activations; with one, ``z = act(p0)``, ``z = act(z @ W.T + b)`` for every
    ``mlp`` entry, and the heads are ``z @ head_w.T + head_b``.
    """

    n: int
    mode: str
    wu: Tensor
    wh: Tensor
    b0: Tensor
    mlp: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    head: tuple[Tensor, Tensor] | None = None
    act: Callable[[Tensor], Tensor] | None = None
    w_tau: Tensor | None = None
    A: Tensor | None = None

    @property
    def heads(self) -> int:
        return 1 if self.mode == "pure" else 4

    @property
    def width0(self) -> int:
        return int(self.wu.shape[0])

    def tensors(self) -> list[Tensor]:
        out = [self.wu, self.wh, self.b0]
        for w, b in self.mlp:
            out += [w, b]
        if self.head is not None:
            out += list(self.head)
        if self.mode == "pure":
            assert self.w_tau is not None and self.A is not None
            out += [self.w_tau, self.A]
        return out

    def with_tensors(self, ts: Sequence[Tensor]) -> PlanLayer:
        it = iter(ts)
        wu, wh, b0 = next(it), next(it), next(it)
        mlp = [(next(it), next(it)) for _ in self.mlp]
        head = (next(it), next(it)) if self.head is not None else None
        w_tau, A = (next(it), next(it)) if self.mode == "pure" else (None, None)
        return PlanLayer(self.n, self.mode, wu, wh, b0, mlp, head, self.act, w_tau, A)


@dataclass
class Plan:
    """The effective weights of a CfC cell laid out for the fast paths (built by :func:`cfc_plan`).

    ``layers`` run in order within a step (layer ``l > 0`` reads layer ``l - 1``'s new state); the state is
    kept in layer order, ``perm`` maps the cell's state to it (``None``: the identity).
    """

    layers: list[PlanLayer]
    perm: Tensor | None
    inv_perm: Tensor | None

    @property
    def sizes(self) -> list[int]:
        return [lay.n for lay in self.layers]

    def tensors(self) -> list[Tensor]:
        return [t for lay in self.layers for t in lay.tensors()]

    def with_tensors(self, ts: Sequence[Tensor]) -> Plan:
        out, i = [], 0
        for lay in self.layers:
            k = len(lay.tensors())
            out.append(lay.with_tensors(ts[i : i + k]))
            i += k
        return Plan(out, self.perm, self.inv_perm)


def heads_of(
    module: Any,
    mode: str,
    synaptic: Callable[[Tensor], Tensor] | None = None,
    gate_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(W (H n, F), b (H n,))`` of a module's heads, masked / signed as the cells use them."""
    syn = synaptic if synaptic is not None else (lambda w: w)
    if mode == "pure":
        return syn(module.ff1.weight), module.ff1.bias
    gate = (lambda w: w) if gate_mask is None else (lambda w: w * gate_mask)
    w = torch.cat(
        [
            syn(module.ff1.weight),
            syn(module.ff2.weight),
            gate(module.time_a.weight),
            gate(module.time_b.weight),
        ]
    )
    b = torch.cat([module.ff1.bias, module.ff2.bias, module.time_a.bias, module.time_b.bias])
    return w, b


class LeCunConstants:
    """``LeCunTanh`` with its two constants as 0-dim tensors of the weights' dtype: the same float operations
    (a Python scalar is converted to the tensor's dtype the same way), but a tensor operand dispatches about
    twice as fast as a Python scalar. Keeps the module (its type tells the C kernel which activation it is).
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
        self.module = module
        self.inner = torch.tensor(0.666, dtype=dtype, device=device)
        self.outer = torch.tensor(1.7159, dtype=dtype, device=device)

    def __call__(self, x: Tensor) -> Tensor:
        return self.outer * torch.tanh(self.inner * x)


def fast_activation(
    module: nn.Module, dtype: torch.dtype, device: torch.device
) -> Callable[[Tensor], Tensor]:
    """The backbone activation as the loops call it (see :class:`LeCunConstants`); others unchanged."""
    if type(module) is LeCunTanh:
        return LeCunConstants(module, dtype, device)
    return module


def cell_layout(plan: Plan) -> list[int] | None:
    """Where each layer starts in the cell's own state order, if every layer is a contiguous block there
    (true for NCPs and ncps-converted wirings), else ``None``."""
    if plan.perm is None:
        return [0]
    perm = plan.perm.tolist()
    starts, off = [], 0
    for n in plan.sizes:
        block = perm[off : off + n]
        if block != list(range(block[0], block[0] + n)):
            return None
        starts.append(block[0])
        off += n
    return starts
