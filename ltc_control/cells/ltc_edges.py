"""The data the fast LTC paths share: the parameter order, the synapse edge list, and the caches and argument
helpers of the implementations (C kernel, PyTorch edge list, CUDA kernel).

The wiring's adjacency becomes an edge list (``src -> dst``) once per wiring, so the fast paths' cost grows
with the number of synapses, not with ``N ** 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

_L = TypeVar("_L")


#: Order of the (constrained) parameter tensors every function here takes: the C kernel's argument order;
#: the names are the keys of ``LTCCell.effective_parameters()``.
PARAM_NAMES: tuple[str, ...] = (
    "gleak",
    "vleak",
    "cm",
    "w",
    "sigma",
    "mu",
    "erev",
    "sensory_w",
    "sensory_sigma",
    "sensory_mu",
    "sensory_erev",
)


# ---------------------------------------------------------------------------------------------- edge list
@dataclass(frozen=True)
class EdgeList:
    """The synapses of a wiring as index lists (the only structure the fast paths read).

    Attributes:
        src: ``(E,)`` int64 presynaptic neuron of each recurrent synapse.
        dst: ``(E,)`` int64 postsynaptic neuron.
        sensory_src: ``(ES,)`` int64 input feature of each sensory synapse.
        sensory_dst: ``(ES,)`` int64 postsynaptic neuron.
        packed: ``(2, E)`` int32 ``[src; dst]`` for the C kernel.
        sensory_packed: ``(2, ES)`` int32 ``[sensory_src; sensory_dst]`` for the C kernel.
        units: number of neurons ``N``.
        input_size: number of input features ``S``.
    """

    src: Tensor
    dst: Tensor
    sensory_src: Tensor
    sensory_dst: Tensor
    packed: Tensor
    sensory_packed: Tensor
    units: int
    input_size: int

    @classmethod
    def from_masks(cls, mask: Tensor, sensory_mask: Tensor) -> EdgeList:
        """Builds the edge list from the 0/1 sparsity masks ``(N, N)`` and ``(S, N)`` (row = source).

        Raises:
            ValueError: if a mask has the wrong shape or holds values other than 0 and 1.
        """
        if mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(f"sparsity_mask must be (N, N), got {tuple(mask.shape)}")
        if sensory_mask.dim() != 2 or sensory_mask.shape[1] != mask.shape[0]:
            raise ValueError(
                f"sensory_sparsity_mask must be (S, N={mask.shape[0]}), got {tuple(sensory_mask.shape)}"
            )
        for name, m in (("sparsity_mask", mask), ("sensory_sparsity_mask", sensory_mask)):
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(
                    f"{name} must hold only 0 and 1 (|adjacency|); the fast LTC reads it as an edge list"
                )
        src, dst = torch.nonzero(mask.detach().cpu(), as_tuple=True)
        ssrc, sdst = torch.nonzero(sensory_mask.detach().cpu(), as_tuple=True)
        return cls(
            src=src,
            dst=dst,
            sensory_src=ssrc,
            sensory_dst=sdst,
            packed=torch.stack([src, dst]).to(torch.int32).contiguous(),
            sensory_packed=torch.stack([ssrc, sdst]).to(torch.int32).contiguous(),
            units=int(mask.shape[0]),
            input_size=int(sensory_mask.shape[0]),
        )

    @property
    def num_synapses(self) -> int:
        """Recurrent plus sensory synapses."""
        return int(self.src.numel() + self.sensory_src.numel())

    def to(self, device: torch.device) -> EdgeList:
        """The same edge list with the int64 index tensors on ``device`` (the packed int32 ones stay on
        CPU)."""
        if self.src.device == device:
            return self
        return EdgeList(
            self.src.to(device),
            self.dst.to(device),
            self.sensory_src.to(device),
            self.sensory_dst.to(device),
            self.packed,
            self.sensory_packed,
            self.units,
            self.input_size,
        )


def dt_strides(dt: Tensor, batch: int, steps: int) -> tuple[int, int]:
    """Element strides of a ``dt``/``starts`` tensor broadcast to ``(B, T)`` (0 = broadcast)."""
    sb, st = dt.stride()
    return (sb if dt.shape[0] == batch and batch > 1 else 0), (
        st if dt.shape[1] == steps and steps > 1 else 0
    )


def reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sums a ``(B, T)`` gradient down to a broadcast ``dt`` shape ``(1 | B, 1 | T)``."""
    if grad.shape[0] != shape[0]:
        grad = grad.sum(0, keepdim=True)
    if grad.shape[1] != shape[1]:
        grad = grad.sum(1, keepdim=True)
    return grad


# ---------------------------------------------------------------------------------------------- registry glue
class EdgeCache:
    """Edge lists keyed on the sparsity-mask tensors (identity + version counter): built once per wiring."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int, int], tuple[Tensor, Tensor, EdgeList]] = {}

    def get(self, mask: Tensor, sensory_mask: Tensor) -> EdgeList:
        key = (id(mask), mask._version, id(sensory_mask), sensory_mask._version)
        hit = self._cache.get(key)
        # the stored tensors keep the ids alive, so an id cannot be reused by another mask while cached
        if hit is not None and hit[0] is mask and hit[1] is sensory_mask:
            return hit[2]
        edges = EdgeList.from_masks(mask, sensory_mask)
        if len(self._cache) >= 32:
            self._cache.clear()
        self._cache[key] = (mask, sensory_mask, edges)
        return edges


class PerDeviceCache(Generic[_L]):
    """Something derived from an :class:`EdgeList` for one device (a device copy, a sorted layout), built once
    per (edge list, device); at most 32 entries."""

    def __init__(self, make: Callable[[EdgeList, torch.device], _L]) -> None:
        self._make = make
        self._cache: dict[tuple[int, torch.device], tuple[EdgeList, _L]] = {}

    def get(self, edges: EdgeList, device: torch.device) -> _L:
        key = (id(edges), device)
        hit = self._cache.get(key)
        # the stored edge list keeps its id alive, so a hit with the same object is the same wiring
        if hit is None or hit[0] is not edges:
            if len(self._cache) >= 32:
                self._cache.clear()
            hit = (edges, self._make(edges, device))
            self._cache[key] = hit
        return hit[1]


def param_list(params: Any) -> list[Tensor]:
    try:
        return [params[k] for k in PARAM_NAMES]
    except KeyError as exc:
        raise ValueError(
            f"effective parameters lack {exc.args[0]!r}; expected the keys of "
            f"LTCCell.effective_parameters(): "
            f"{list(PARAM_NAMES)} plus sparsity_mask and sensory_sparsity_mask"
        ) from None


def canonical_dt_starts(dt: Tensor, reset: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The ``(B, T)`` forms of an implementation's ``dt`` and ``reset`` arguments (``(B, T, 1)`` squeezed)."""
    dt2 = dt.reshape(dt.shape[0], dt.shape[1]) if dt.dim() == 3 else dt
    if reset is not None and reset.dim() == 3:
        reset = reset.reshape(reset.shape[0], reset.shape[1])
    return dt2, reset
