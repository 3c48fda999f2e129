"""The fast LTC implementations registered into :mod:`ltc_control.cells.ltc_registry`.

* ``"fused-c"`` (:class:`FusedCImplementation`, priority 20): the compiled C kernel
  (:mod:`ltc_control.cells.ltc_fused`), CPU tensors in float32 / float64. Sequences run in one kernel call
  with a hand-written backward; without an autograd graph its ``forward_step`` / ``forward_sequence`` hooks
  run the value checks, input mapping, solver and readout of a whole step or sequence in one ctypes call on
  cached parameter pointers.
* ``"torch-edges"`` (:class:`TorchEdgesImplementation`, priority 10): pure PyTorch over the synapse edge list,
  any device and dtype. ``"auto"`` picks it on CUDA (without the CUDA kernel) and when the C kernel cannot be
  built; in that last case one :class:`LTCKernelUnavailableWarning` per process names the cause and the fix.

:class:`LTCControlStep` is a no-grad control-loop step. The kernel functions, the edge list and the kernel
status are re-exported from :mod:`~ltc_control.cells.ltc_fused` and :mod:`~ltc_control.cells.ltc_edges`; how
the kernel is built and cached is in :mod:`ltc_control.cells.kernels`, why these paths are fast in
``docs/fast_paths.md``.

Example:
    >>> import torch
    >>> from ltc_control.cells.ltc import LTCCell
    >>> from ltc_control.wirings import lane_keeping_ncp
    >>> cell = LTCCell(lane_keeping_ncp(seed=0))  # implementation="auto"
    >>> y, h_t = cell.forward_sequence(torch.randn(4, 16, 32))
    >>> cell.implementation_name in ("fused-c", "torch-edges")
    True
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch
from torch import Tensor

from ltc_control.cells.ltc_edges import (
    PARAM_NAMES,
    EdgeCache,
    EdgeList,
    PerDeviceCache,
    canonical_dt_starts,
    dt_strides,
    param_list,
)
from ltc_control.cells.ltc_fused import (
    LTCKernel,
    LTCKernelUnavailableWarning,
    kernel_available,
    kernel_status,
    load_kernel,
    ltc_sequence,
    ltc_sequence_kernel,
    ltc_sequence_torch,
    ptr_or_none,
)

# the implementations below are this module's own; the rest is re-exported for code written against it
__all__ = [
    "PARAM_NAMES",
    "EdgeList",
    "FusedCImplementation",
    "LTCControlStep",
    "LTCKernelUnavailableWarning",
    "TorchEdgesImplementation",
    "canonical_dt_starts",
    "kernel_available",
    "kernel_status",
    "load_kernel",
    "ltc_sequence",
    "ltc_sequence_kernel",
    "ltc_sequence_torch",
]


class FusedCImplementation:
    """``LTCCell`` implementation ``"fused-c"``: the compiled kernel (CPU, float32/float64).

    ``available(device)`` builds the kernel on first use and is ``False`` off the CPU or when the build fails
    (then ``"auto"`` picks ``"torch-edges"``). Sequences run in one kernel call with a hand-written backward;
    a step without gradients is one ctypes call on cached parameter pointers.
    """

    dtypes = (torch.float32, torch.float64)

    def __init__(self) -> None:
        self._edges = EdgeCache()
        # id(params dict) -> (params dict, kernel, kept tensors + S + edge tensors, dims arrays by shape,
        # pointer array) for the no-grad step. One registered instance serves every cell, so several cells
        # stepping in turn (ensembles, several policies) each keep an entry; LTCCell hands over a new dict
        # whenever a parameter changed, which misses here and rebuilds.
        self._pp_cache: dict[int, tuple[Any, ...]] = {}
        # the same per (effective parameters, mappings) for the inference hooks
        self._infer_cache: dict[int, tuple[Any, ...]] = {}
        # per-thread packed pointer arrays (mutated on every call)
        self._tls = threading.local()

    def available(self, device: torch.device) -> bool:
        """Whether the kernel can run on ``device`` (CPU only; builds the kernel on first call)."""
        return torch.device(device).type == "cpu" and load_kernel() is not None

    def _kernel(self) -> LTCKernel:
        kernel = load_kernel()
        if kernel is None:
            raise RuntimeError(f"the compiled LTC kernel is unavailable ({kernel_status()})")
        return kernel

    def _prepare_step(self, params: Any) -> tuple[Any, ...]:
        """Caches, for one effective-parameter dict, the contiguous tensors and their pointer array."""
        kernel = self._kernel()
        edges = self._edge_list(params)
        plist = [p.detach().contiguous() for p in param_list(params)]
        pp = (ctypes.c_void_p * 15)(*[p.data_ptr() for p in plist], None, None, None, None)
        keep: list[Any] = [*plist, int(params["sensory_w"].shape[0]), edges.packed, edges.sensory_packed]
        dims_cache: dict[tuple[int, int, int], Any] = {}
        cache = (params, kernel, keep, dims_cache, pp)
        if len(self._pp_cache) >= 16:
            self._pp_cache.clear()
        self._pp_cache[id(params)] = cache
        return cache

    def _edge_list(self, params: Any) -> EdgeList:
        return self._edges.get(params["sparsity_mask"], params["sensory_sparsity_mask"])

    def sequence(
        self,
        params: Any,
        x_mapped: Tensor,
        v0: Tensor,
        dt: Tensor,
        reset: Tensor | None,
        unfolds: int,
        eps: float,
    ) -> Tensor:
        """All states ``(B, T, N)`` (see ``ltc_control.cells.ltc`` for the argument contract)."""
        kernel = self._kernel()
        edges = self._edge_list(params)
        dtype = v0.dtype
        plist = param_list(params)
        if any(p.dtype != dtype for p in plist):
            # mixed precision: PyTorch's type promotion, as the reference path does it
            return _TORCH_EDGES.sequence(params, x_mapped, v0, dt, reset, unfolds, eps)
        x_mapped = x_mapped.to(dtype)
        dt2 = dt.reshape(dt.shape[0], dt.shape[1]) if dt.dim() == 3 else dt
        starts = (
            None
            if reset is None
            else (reset.reshape(reset.shape[0], reset.shape[1]) if reset.dim() == 3 else reset)
        )
        if starts is not None and starts.dtype != dtype:
            starts = starts.to(dtype)
        return ltc_sequence_kernel(x_mapped, v0, dt2.to(dtype), starts, plist, edges, unfolds, eps, kernel)

    def step(self, params: Any, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float) -> Tensor:
        """New state ``(B, N)`` after one input step (``dt``: ``(B, 1)``)."""
        if torch.is_grad_enabled() and (
            x_mapped.requires_grad
            or v.requires_grad
            or dt.requires_grad
            or any(p.requires_grad for p in param_list(params))
        ):
            states = self.sequence(params, x_mapped.unsqueeze(1), v, dt.reshape(-1, 1), None, unfolds, eps)
            return states[:, 0]
        cache = self._pp_cache.get(id(params))
        # the entry holds the dict itself, so its id cannot have been reused while it is cached
        if cache is None or cache[0] is not params:
            cache = self._prepare_step(params)
        kernel, keep, dims_cache = cache[1], cache[2], cache[3]
        # no grad here: the tensors need no detach, only the layout/dtype the kernel reads
        x_c = x_mapped if x_mapped.is_contiguous() else x_mapped.contiguous()
        v_c = v if v.is_contiguous() else v.contiguous()
        dtype = keep[0].dtype
        if v_c.dtype is not dtype or x_c.dtype is not dtype or dt.dtype is not dtype:
            if v_c.dtype is not dtype:
                # mixed precision: PyTorch's type promotion, as the reference path does it
                return _TORCH_EDGES.step(params, x_mapped, v, dt, unfolds, eps)
            x_c, dt = x_c.to(dtype), dt.to(dtype)
        b = v_c.shape[0]
        out = torch.empty_like(v_c)
        dt_stride = dt.stride(0) if b > 1 and dt.shape[0] == b else 0
        dims = dims_cache.get((b, unfolds, dt_stride))
        if dims is None:
            # building a ctypes array costs microseconds: keep one per shape
            dims = (ctypes.c_int64 * 15)(
                b, 1, keep[-3], v_c.shape[1], unfolds, keep[-2].shape[1], keep[-1].shape[1], 0, dt_stride,
                0, 0, 0, 0, -(-b // kernel.lanes[dtype])
            )  # fmt: skip
            if len(dims_cache) > 64:
                dims_cache.clear()
            dims_cache[(b, unfolds, dt_stride)] = dims
        tls = self._tls
        args = getattr(tls, "args", None)
        if args is None or tls.owner is not cache:
            args = (ctypes.c_void_p * 10)()
            args[0] = ctypes.addressof(cache[4])
            args[1] = keep[-2].data_ptr()
            args[2] = keep[-1].data_ptr()
            tls.args, tls.owner = args, cache
        args[3] = x_c.data_ptr()
        args[4] = v_c.data_ptr()
        args[5] = dt.data_ptr()
        args[7] = out.data_ptr()
        rc = kernel.forward_packed[dtype](dims, args, eps)
        if rc != 0:
            raise MemoryError("the LTC kernel could not allocate its scratch memory")
        return out

    # ------------------------------------------------------------------ inference hooks (no autograd)
    def forward_step(
        self,
        params: Any,
        maps: Any,
        x: Tensor,
        v: Tensor,
        dt: float | Tensor,
        unfolds: int,
        eps: float,
        validate: bool,
    ) -> tuple[Tensor, Tensor] | None:
        """One step with the input check, input mapping, solver and readout in one kernel call.

        See the hook contract in ``ltc_control.cells.ltc`` (``x (B, S)`` raw inputs, ``v (B, N)``, ``dt`` a
        float or ``(B,)`` / ``(B, 1)``). Returns ``(y (B, M), v_new (B, N))``, or ``None`` for dtypes the
        kernel does not take (the cell then runs its general path).

        Raises:
            ValueError: with ``validate``, non-finite ``x`` or a ``dt`` that is not finite and > 0.
        """
        return self._infer(params, maps, x, v, dt, None, 0, unfolds, eps, validate)

    def forward_sequence(
        self,
        params: Any,
        maps: Any,
        x: Tensor,
        v0: Tensor,
        dt: float | Tensor,
        reset: Tensor | None,
        unfolds: int,
        eps: float,
        validate: bool,
    ) -> tuple[Tensor, Tensor] | None:
        """A whole sequence without autograd in one kernel call: ``(y (B, T, M), h_T (B, N))`` or ``None``.

        ``x (B, T, S)`` raw inputs, ``dt`` a float or ``(B, T)``, ``reset`` ``None`` or ``(B, T)``.

        Raises:
            ValueError: with ``validate``, non-finite ``x`` or a ``dt`` that is not finite and > 0.
        """
        return self._infer(params, maps, x, v0, dt, reset, int(x.shape[1]), unfolds, eps, validate)

    def _prepare_inference(self, params: Any, maps: Any) -> tuple[Any, ...]:
        """Caches, per (effective parameters, mappings), the pointer array the kernel reads; dtype ``None``
        marks a combination the kernel cannot run (mixed dtypes, non-contiguous mappings)."""
        kernel = self._kernel()
        plist = param_list(params)
        mlist = [maps.input_w, maps.input_b, maps.output_w, maps.output_b]
        dtype = plist[0].dtype
        if (
            dtype not in kernel.lanes
            or any(p.dtype != dtype for p in plist)
            or any(m is not None and m.dtype != dtype for m in mlist)
            # the kernel reads the raw mappings in place (so in-place updates need no cache refresh): a
            # strided one would have to be copied, and the copy would go stale
            or any(m is not None and not m.is_contiguous() for m in mlist)
        ):
            entry: tuple[Any, ...] = (params, maps, None)
        else:
            edges = self._edge_list(params)
            # no gradient flows here: detached contiguous views (copies only if a layout needs it)
            keep = [p.detach().contiguous() for p in plist]
            mkeep = [None if m is None else m.detach().contiguous() for m in mlist]
            pp = (ctypes.c_void_p * 15)(*[p.data_ptr() for p in keep], *[ptr_or_none(m) for m in mkeep])
            sizes = (
                int(params["sensory_w"].shape[0]),
                edges.units,
                int(maps.output_size),
                int(edges.src.numel()),
                int(edges.sensory_src.numel()),
            )
            dims_cache: dict[tuple[int, ...], Any] = {}
            entry = (
                params,
                maps,
                dtype,
                kernel,
                ctypes.addressof(pp),
                edges,
                (keep, mkeep, pp),
                sizes,
                dims_cache,
            )
        if len(self._infer_cache) >= 16:
            self._infer_cache.clear()
        self._infer_cache[id(params)] = entry
        return entry

    def _infer(
        self,
        params: Any,
        maps: Any,
        x: Tensor,
        v: Tensor,
        dt: float | Tensor,
        reset: Tensor | None,
        steps: int,
        unfolds: int,
        eps: float,
        validate: bool,
    ) -> tuple[Tensor, Tensor] | None:
        """Shared body of the two hooks; ``steps`` 0 means one step with ``(B, S)`` / ``(B, N)`` shapes."""
        entry = self._infer_cache.get(id(params))
        # the entry holds the dict itself, so its id cannot have been reused while it is cached
        if entry is None or entry[0] is not params or entry[1] is not maps:
            entry = self._prepare_inference(params, maps)
        dtype = entry[2]
        if dtype is None or x.dtype is not dtype or v.dtype is not dtype or not x.is_cpu:
            return None
        b = v.shape[0]
        scratch = getattr(self._tls, "infer", None)
        if scratch is None:
            # per thread: the kernel call releases the GIL, so two threads must not share argument arrays
            scratch = self._tls.infer = _InferScratch()
        args = scratch.args
        if isinstance(dt, Tensor):
            if dt.dtype is not dtype or not dt.is_cpu:
                dt = dt.to("cpu", dtype)
            args[5] = dt.data_ptr()
            if steps:
                dsb, dst = dt_strides(dt, b, steps)
            else:
                dsb, dst = (dt.stride(0) if b > 1 else 0), 0
        else:
            buf = scratch.dt[dtype]
            buf[0] = dt
            args[5] = scratch.dt_addr[dtype]
            dsb = dst = 0
        if reset is not None:
            if reset.dtype is not dtype or not reset.is_cpu:
                reset = reset.to("cpu", dtype)
            ssb, sst = dt_strides(reset, b, steps)
            args[6] = reset.data_ptr()
        else:
            ssb = sst = 0
            args[6] = None
        t = steps or 1
        key = (b, t, unfolds, dsb, dst, ssb, sst, validate)
        dims = entry[8].get(key)
        if dims is None:
            s, n, m, e, es = entry[7]
            dims = (ctypes.c_int64 * 15)(
                b, t, s, n, unfolds, e, es, m, dsb, dst, ssb, sst, 0, -(-b // entry[3].lanes[dtype]),
                1 if validate else 0,
            )  # fmt: skip
            if len(entry[8]) > 64:
                entry[8].clear()
            entry[8][key] = dims
        n, m = entry[7][1], entry[7][2]
        x_c = x if x.is_contiguous() else x.contiguous()
        v_c = v if v.is_contiguous() else v.contiguous()
        if steps:
            out = torch.empty(b, t, n, dtype=dtype)
            y = torch.empty(b, t, m, dtype=dtype)
        else:
            out = torch.empty(b, n, dtype=dtype)
            y = torch.empty(b, m, dtype=dtype)
        args[0] = entry[4]
        args[1] = entry[5].packed.data_ptr()
        args[2] = entry[5].sensory_packed.data_ptr()
        args[3] = x_c.data_ptr()
        args[4] = v_c.data_ptr()
        args[7] = out.data_ptr()
        args[8] = y.data_ptr()
        rc = entry[3].forward_packed[dtype](dims, args, eps)
        if rc != 0:
            _raise_kernel_error(rc, dt, bool(steps))
        return y, (out[:, -1] if steps else out)


class _InferScratch:
    """Per-thread ctypes scratch of the inference hooks: the packed argument array and dt scalars."""

    def __init__(self) -> None:
        self.args = (ctypes.c_void_p * 10)()
        self.dt: dict[torch.dtype, Any] = {
            torch.float32: (ctypes.c_float * 1)(),
            torch.float64: (ctypes.c_double * 1)(),
        }
        self.dt_addr = {k: ctypes.addressof(v) for k, v in self.dt.items()}


def _raise_kernel_error(rc: int, dt: float | Tensor, sequence: bool) -> None:
    """Turns a kernel return code into the exception ``LTCCell`` raises for the same problem."""
    if rc == 2:
        raise ValueError("x contains non-finite values (NaN or inf); all inputs must be finite")
    if rc == 3:
        if not isinstance(dt, Tensor):
            raise ValueError(f"dt must be finite and > 0, got {dt}")
        if sequence:
            raise ValueError("dt must be finite and > 0 at every (batch, time) position")
        flat = dt.reshape(-1)
        bad = flat[~((flat > 0) & (flat < float("inf")))][:3].tolist()
        raise ValueError(f"dt must be finite and > 0 for every sample, got values such as {bad}")
    raise MemoryError("the LTC kernel could not allocate its scratch memory")


class LTCControlStep:
    """A control-loop step of an ``LTCCell`` without gradients: ``cell(x, h, dt)`` under ``torch.no_grad()``.

    ``LTCCell.forward`` itself runs a step that needs no gradient as one kernel call (validation, input
    mapping, solver and readout: the ``forward_step`` hook of :class:`FusedCImplementation`), so this wrapper
    only saves the ``nn.Module.__call__`` dispatch and the ``no_grad`` context; it is kept for code written
    against it. It reads the cell's parameters on every call (no copy), so training the cell between calls is
    seen. Off the CPU, for other dtypes or without the kernel the cell's general path runs.

    Args:
        cell: the ``LTCCell`` to step.

    Example:
        >>> import torch
        >>> from ltc_control.cells.ltc import LTCCell
        >>> from ltc_control.wirings import lane_keeping_ncp
        >>> cell = LTCCell(lane_keeping_ncp(seed=0))
        >>> step = LTCControlStep(cell)
        >>> h = cell.initial_state(1)
        >>> y, h = step(torch.randn(1, 32), h, dt=1 / 30)
        >>> y.shape, h.shape
        (torch.Size([1, 1]), torch.Size([1, 19]))
    """

    def __init__(self, cell: Any) -> None:
        from ltc_control.cells.ltc import LTCCell

        if not isinstance(cell, LTCCell):
            raise ValueError(f"LTCControlStep needs an ltc_control LTCCell, got {type(cell).__name__}")
        self.cell = cell

    def __call__(self, x: Tensor, h: Tensor | None = None, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """One step without gradients.

        Args:
            x: inputs ``(B, S)``.
            h: state ``(B, N)``; ``None`` = zeros.
            dt: elapsed time, a float or a ``(B,)`` / ``(B, 1)`` tensor; > 0.

        Returns:
            ``(y (B, M), h' (B, N))``, equal to ``cell(x, h, dt)``.

        Raises:
            ValueError: wrong shapes, non-finite ``x``, ``dt <= 0``.
        """
        cell = self.cell
        if torch.is_grad_enabled():
            with torch.no_grad():
                return cell(x, h, dt)  # type: ignore[no-any-return]
        out = cell._forward_inference(x, h, dt)
        return out if out is not None else cell.forward(x, h, dt)  # type: ignore[no-any-return]


class TorchEdgesImplementation:
    """``LTCCell`` implementation ``"torch-edges"``: pure PyTorch, any device and dtype.

    The fallback when the compiled kernel is unavailable (no compiler) and the fast path on CUDA tensors.
    Sequences run over the synapse edge list (:func:`ltc_sequence_torch`); a single step uses the dense
    reference formulation, whose handful of ops per unfold dispatch faster at small batch than the edge
    list's gather/scatter.
    """

    def __init__(self) -> None:
        self._edges = EdgeCache()
        # device copies of the index tensors (CUDA): copied once, not on every call
        self._on_device: PerDeviceCache[EdgeList] = PerDeviceCache(lambda e, d: e.to(d))

    def available(self, device: torch.device) -> bool:
        """Always ``True`` (pure PyTorch)."""
        return True

    def _edge_list(self, params: Any, device: torch.device) -> EdgeList:
        edges = self._edges.get(params["sparsity_mask"], params["sensory_sparsity_mask"])
        return edges if edges.src.device == device else self._on_device.get(edges, device)

    def sequence(
        self,
        params: Any,
        x_mapped: Tensor,
        v0: Tensor,
        dt: Tensor,
        reset: Tensor | None,
        unfolds: int,
        eps: float,
    ) -> Tensor:
        """All states ``(B, T, N)`` (see ``ltc_control.cells.ltc`` for the argument contract)."""
        edges = self._edge_list(params, x_mapped.device)
        dt2, starts = canonical_dt_starts(dt, reset)
        return ltc_sequence_torch(x_mapped, v0, dt2, starts, param_list(params), edges, unfolds, eps)

    def step(self, params: Any, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float) -> Tensor:
        """New state ``(B, N)`` after one input step (``dt``: ``(B, 1)``)."""
        from ltc_control.cells.ltc_math import reference_step

        return reference_step(params, x_mapped, v, dt, unfolds, eps)


_TORCH_EDGES = TorchEdgesImplementation()


def _register() -> None:
    from ltc_control.cells import ltc_registry

    ltc_registry.register_implementation("fused-c", FusedCImplementation(), priority=20)
    ltc_registry.register_implementation("torch-edges", _TORCH_EDGES, priority=10)


_register()
