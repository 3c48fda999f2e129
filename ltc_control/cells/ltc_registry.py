"""The registry of LTC implementations (fast paths) that ``LTCCell`` chooses from.

The math of one input step lives in :func:`reference_step` (and :func:`reference_sequence` for whole
sequences), a plain function of the *effective* parameters. A fast implementation is any object with

``available(device: torch.device) -> bool``
    whether it can run on ``device`` (e.g. a compiled extension loaded, CUDA present).
``step(params, x_mapped, v, dt, unfolds, eps) -> v_new``
    ``params``: ``dict[str, Tensor]`` from :meth:`LTCCell.effective_parameters` (see below); ``x_mapped``:
    ``(B, S)`` inputs after the input mapping; ``v``: ``(B, N)`` state; ``dt``: ``(B, 1)`` step length (> 0);
    ``unfolds``: int K; ``eps``: float. Returns the new state ``(B, N)``; must support autograd through every
    tensor argument when gradients are enabled (or not claim availability when it cannot).
``sequence(params, x_mapped, v0, dt, reset, unfolds, eps) -> states`` (optional)
    ``x_mapped``: ``(B, T, S)``; ``v0``: ``(B, N)``; ``dt``: ``(B, T, 1)``; ``reset``: ``(B, T, 1)`` 0/1 or
    ``None``, where 1 sets the state to zero (the initial state) *before* step t (``v = (1 - d) * v``).
    Returns all states ``(B, T, N)``. Without it the cell loops over ``step``.
``dtypes`` (optional attribute)
    a collection of supported ``torch.dtype``; ``"auto"`` skips the implementation for other dtypes.

Optional inference hooks (no autograd graph): when gradients are off, or on but no tensor involved requires
grad, :meth:`LTCCell.forward` and :meth:`LTCCell.forward_sequence` hand the *whole* step to these, skipping
their own value checks, input mapping and readout (a batch-1 control step is then one native call):

``forward_step(params, maps, x, v, dt, unfolds, eps, validate) -> (y, v_new) | None``
    ``maps``: the cell's :class:`Mappings` (raw ``input_w``/``input_b``/``output_w``/``output_b``, each may
    be ``None``, and ``output_size`` M); ``x``: ``(B, S)`` *raw* inputs; ``v``: ``(B, N)``; ``dt``: a float
    (already checked finite and > 0) or a ``(B,)`` / ``(B, 1)`` tensor; ``validate``: when true the hook must
    raise ``ValueError`` for non-finite ``x`` and for ``dt`` values that are not finite and > 0 (the messages
    of :meth:`LTCCell.forward`). Returns ``y (B, M) = readout(v_new)`` and ``v_new (B, N)``, or ``None`` to
    decline (e.g. mixed dtypes); the cell then runs its general path.
``forward_sequence(params, maps, x, v0, dt, reset, unfolds, eps, validate) -> (y, h_T) | None``
    the same for ``x (B, T, S)``; ``dt`` a float or a ``(B, T)`` tensor; ``reset`` ``None`` or ``(B, T)``
    (1 zeroes the state before step t). Returns ``y (B, T, M)`` and the last state ``(B, N)``, or ``None``.

The cell hands the hooks only canonical argument forms (shapes already checked); anything else (a 0-d ``dt``,
``(B, T, 1)`` tensors, wrong shapes) goes through the general path, which is also where shape errors are
raised.

Register it with ``register_implementation("name", impl, priority=10)``. ``LTCCell(implementation="auto")``
(the default) picks, per device and dtype, the available registered implementation with the highest priority,
else ``"reference"``; ``implementation="name"`` forces one (error if unavailable);
``cell.implementation_name`` reports which one ran last. ``"auto"`` imports ``ltc_control.cells.ltc_fast`` and
``ltc_control.cells.ltc_cuda`` once (if they import) so that their implementations register themselves.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ltc_control.cells.ltc_math import Params, reference_sequence, reference_step


# ----------------------------------------------------------------------------------------- registry
@runtime_checkable
class LTCImplementation(Protocol):
    """What an LTC implementation provides (``sequence`` and ``dtypes`` are optional; see the module doc)."""

    def available(self, device: torch.device) -> bool: ...

    def step(
        self, params: Params, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float
    ) -> Tensor: ...


class _Reference:
    """The reference implementation as a registry entry."""

    def available(self, device: torch.device) -> bool:
        return True

    def step(
        self, params: Params, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float
    ) -> Tensor:
        return reference_step(params, x_mapped, v, dt, unfolds, eps)

    def sequence(
        self,
        params: Params,
        x_mapped: Tensor,
        v0: Tensor,
        dt: Tensor,
        reset: Tensor | None,
        unfolds: int,
        eps: float,
    ) -> Tensor:
        return reference_sequence(params, x_mapped, v0, dt, reset, unfolds, eps)


_REFERENCE = _Reference()


_REGISTRY: dict[str, tuple[Any, int]] = {}


_REGISTRY_VERSION = [0]


_BUILTINS_LOADED = [False]


_LOCK = threading.Lock()


#: names the registry never holds: the cell's automatic choice and the reference path
RESERVED = ("auto", "reference")


def register_implementation(name: str, impl: Any, priority: int = 0) -> None:
    """Registers (or replaces) an LTC implementation under ``name``.

    Args:
        name: registry name (not ``"auto"`` or ``"reference"``).
        impl: an object with ``available(device)`` and ``step(...)`` (optionally ``sequence(...)`` and
            ``dtypes``), or a zero-argument class/factory returning one.
        priority: ``"auto"`` prefers higher priorities among available implementations.

    Raises:
        ValueError: reserved or empty name, or ``impl`` lacks ``available``/``step``.
    """
    if not isinstance(name, str) or not name or name in RESERVED:
        raise ValueError(
            f"implementation name must be a non-empty string other than {list(RESERVED)}, got {name!r}"
        )
    if not (hasattr(impl, "available") and hasattr(impl, "step")) and callable(impl):
        impl = impl()
    if not (callable(getattr(impl, "available", None)) and callable(getattr(impl, "step", None))):
        raise ValueError(
            f"implementation {name!r} must provide available(device) and "
            "step(params, x, v, dt, unfolds, eps), "
            f"got {type(impl).__name__}"
        )
    with _LOCK:
        _REGISTRY[name] = (impl, int(priority))
        _REGISTRY_VERSION[0] += 1


def unregister_implementation(name: str) -> None:
    """Removes a registered implementation (no error if absent)."""
    with _LOCK:
        if _REGISTRY.pop(name, None) is not None:
            _REGISTRY_VERSION[0] += 1


def _load_builtins() -> None:
    if _BUILTINS_LOADED[0]:
        return
    _BUILTINS_LOADED[0] = True
    for module in ("ltc_control.cells.ltc_fast", "ltc_control.cells.ltc_cuda"):
        try:
            importlib.import_module(module)
        except ImportError:
            # The fast paths are optional (e.g. no compiler); the reference path always works.
            pass


def available_implementations(device: torch.device | str | None = None) -> list[str]:
    """Names of the registered implementations (plus ``"reference"``), optionally only those available on
    ``device``, highest priority first."""
    _load_builtins()
    names = [n for n, _ in sorted(_REGISTRY.items(), key=lambda kv: -kv[1][1])]
    if device is not None:
        dev = torch.device(device)
        names = [n for n in names if _safe_available(_REGISTRY[n][0], dev)]
    return names + ["reference"]


def get_implementation(name: str) -> Any:
    """Returns the implementation object registered as ``name`` (``"reference"`` included)."""
    if name == "reference":
        return _REFERENCE
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown LTC implementation {name!r}; registered: {available_implementations()}")
    return _REGISTRY[name][0]


def _safe_available(impl: Any, device: torch.device) -> bool:
    try:
        return bool(impl.available(device))
    except Exception:
        return False


def _supports_dtype(impl: Any, dtype: torch.dtype) -> bool:
    dtypes = getattr(impl, "dtypes", None)
    return dtypes is None or dtype in dtypes


def registry_version() -> int:
    """A counter that changes whenever an implementation is registered or removed (keys the cells' caches)."""
    return _REGISTRY_VERSION[0]


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered implementation (loads the built-in fast paths first)."""
    _load_builtins()
    return name in _REGISTRY


def select_implementation(requested: str, device: torch.device, dtype: torch.dtype) -> tuple[str, Any]:
    """``(name, implementation)`` that runs ``requested`` on ``device`` / ``dtype``.

    Args:
        requested: ``"reference"``, ``"auto"`` (the available implementation with the highest priority that
            supports ``dtype``, else the reference) or a registered name.
        device: the device of the cell's parameters.
        dtype: their dtype.

    Raises:
        ValueError: a named implementation is no longer registered or not available on ``device``.
    """
    if requested == "reference":
        return ("reference", _REFERENCE)
    if requested == "auto":
        _load_builtins()
        for name, (impl, _prio) in sorted(_REGISTRY.items(), key=lambda kv: -kv[1][1]):
            if _supports_dtype(impl, dtype) and _safe_available(impl, device):
                return (name, impl)
        return ("reference", _REFERENCE)
    if requested not in _REGISTRY:
        raise ValueError(
            f"LTC implementation {requested!r} is no longer registered; use 'auto' or 'reference'"
        )
    impl = _REGISTRY[requested][0]
    if not _safe_available(impl, device):
        raise ValueError(
            f"LTC implementation {requested!r} is not available on device {device}; use 'auto' or 'reference'"
        )
    return (requested, impl)
