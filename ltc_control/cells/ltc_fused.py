"""Whole-sequence LTC functions over the synapse edge list: the fused C kernel (``csrc/ltc_kernel.c``) with
its hand-written BPTT backward as an autograd function, and the pure-PyTorch twin.

:func:`ltc_sequence` runs all ``K`` unfolds of all ``T`` steps of a batch in one C call when the kernel is
available (CPU, float32 / float64), else on PyTorch (``index_select`` + ``index_add``, any device and dtype).
The kernel is built on first use (:mod:`ltc_control.cells.kernels`); when that fails one
:class:`LTCKernelUnavailableWarning` per process names the cause and the fix, and :func:`kernel_status`
repeats it.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ltc_control.cells.kernels import LazyKernel, build_cached_library
from ltc_control.cells.ltc_edges import PARAM_NAMES, EdgeList, dt_strides, reduce_to

__all__ = [
    "KERNEL_ABI",
    "KERNEL_SOURCES",
    "LTCKernel",
    "LTCKernelUnavailableWarning",
    "kernel_available",
    "kernel_status",
    "load_kernel",
    "ltc_sequence",
    "ltc_sequence_kernel",
    "ltc_sequence_torch",
    "ptr_or_none",
]

#: the kernel's sources in ``csrc/`` (the first is compiled) and the ABI version its library reports
KERNEL_SOURCES = ("ltc_kernel.c", "ltc_kernel_body.h")
KERNEL_ABI = 7


class LTCKernelUnavailableWarning(RuntimeWarning):
    """The compiled LTC kernel could not be built or loaded; the pure-PyTorch fast path is used instead."""


# ---------------------------------------------------------------------------------------------- build + load
class LTCKernel:
    """The loaded shared library with typed entry points for float32 and float64."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.path = path
        p, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
        self.forward: dict[torch.dtype, Any] = {}
        self.backward: dict[torch.dtype, Any] = {}
        self.lanes: dict[torch.dtype, int] = {}
        self.forward_packed: dict[torch.dtype, Any] = {}
        self._small_batch_setters: dict[torch.dtype, Any] = {}
        for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
            self.lanes[dtype] = int(getattr(lib, f"ltc_kernel_lanes_{suffix}")())
            fwd = getattr(lib, f"ltc_forward_{suffix}")
            fwd.argtypes = [i64p, p, p, p, p, p, p, p, ctypes.c_double, p, p, p]
            fwd.restype = ctypes.c_int
            bwd = getattr(lib, f"ltc_backward_{suffix}")
            bwd.argtypes = [i64p, p, p, p, p, p, p, ctypes.c_double, p, p, p, p, p, p, p]
            bwd.restype = ctypes.c_int
            self.forward[dtype] = fwd
            self.backward[dtype] = bwd
            packed = getattr(lib, f"ltc_forward_packed_{suffix}")
            packed.argtypes = [i64p, p, ctypes.c_double]
            packed.restype = ctypes.c_int
            self.forward_packed[dtype] = packed
            setter = getattr(lib, f"ltc_kernel_set_small_batch_{suffix}")
            setter.argtypes = [ctypes.c_int64]
            setter.restype = ctypes.c_int64
            self._small_batch_setters[dtype] = setter

    def set_small_batch_limit(self, dtype: torch.dtype, limit: int | None) -> int:
        """Sets the largest batch that runs sample by sample (vectorised over synapses, not batch lanes) and
        returns the previous limit; ``None`` restores the default, 0 turns that path off, values above the
        lane count are clamped to it. Process-wide (benchmarks and tests compare the two paths with it); a
        forward and its backward may take different paths (the stored states are laid out alike)."""
        if dtype not in self._small_batch_setters:
            raise ValueError(f"the LTC kernel has no {dtype} entry points (float32 / float64 only)")
        return int(self._small_batch_setters[dtype](-1 if limit is None else max(0, int(limit))))


def _try_load(path: Path) -> LTCKernel | None:
    try:
        lib = ctypes.CDLL(str(path))
        if int(lib.ltc_kernel_abi()) != KERNEL_ABI:
            return None
        return LTCKernel(lib, path)
    except (OSError, AttributeError):
        return None


def _build() -> LTCKernel:
    """Loads the cached library or compiles it; raises RuntimeError/FileNotFoundError naming the cause."""
    return build_cached_library("ltc_kernel", KERNEL_SOURCES, KERNEL_ABI, _try_load, "LTC kernel")


_LAZY: LazyKernel[LTCKernel] = LazyKernel(
    lambda: _build(),
    LTCKernelUnavailableWarning,
    lambda exc: (
        "ltc_control: the compiled LTC kernel is unavailable, so the fast LTC runs on its pure-PyTorch path "
        f"(slower, same numbers). Cause: {exc}. Fix: install a C compiler (e.g. 'apt-get install gcc') or "
        "point LTC_CONTROL_CC at one; set LTC_CONTROL_DISABLE_KERNEL=1 to silence this warning."
    ),
)


def load_kernel() -> LTCKernel | None:
    """Returns the compiled kernel, building it on first use; ``None`` when it is unavailable.

    The first failure issues one :class:`LTCKernelUnavailableWarning` (cause and fix) and is remembered for
    the rest of the process; :func:`kernel_status` repeats the reason.
    """
    return _LAZY.load()


def kernel_available() -> bool:
    """Whether the compiled kernel is (or can be) loaded; builds it on first call."""
    return load_kernel() is not None


def kernel_status() -> str:
    """A one-line description of the kernel's state (path loaded, or why it is unavailable)."""
    return _LAZY.status


def _reset_kernel_for_tests() -> None:
    """Forgets the loaded kernel so that the next use rebuilds/reloads it (tests of the fallback only)."""
    _LAZY.reset()


# ---------------------------------------------------------------------------------------------- kernel path
def ptr_or_none(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _dims(
    b: int,
    t: int,
    s: int,
    n: int,
    unfolds: int,
    edges: EdgeList,
    m: int,
    strides: Sequence[int],
    c0: int,
    c1: int,
) -> Any:
    return (ctypes.c_int64 * 15)(
        b, t, s, n, unfolds, edges.src.numel(), edges.sensory_src.numel(), m, *strides, c0, c1
    )


class _FusedLTCFunction(torch.autograd.Function):
    """Autograd wrapper of the C kernel: forward stores per-unfold states, backward replays them (BPTT)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        kernel: LTCKernel,
        edges: EdgeList,
        unfolds: int,
        epsilon: float,
        x: Tensor,
        h0: Tensor,
        dt: Tensor,
        starts: Tensor | None,
        *params: Tensor,
    ) -> Tensor:
        b, t, s = x.shape
        n = h0.shape[1]
        dtype = x.dtype
        need_grad = any(ctx.needs_input_grad[4:])
        x = x.contiguous()
        h0 = h0.contiguous()
        params_c = [p.contiguous() for p in params]
        states = torch.empty(b, t, n, dtype=dtype)
        lanes = kernel.lanes[dtype]
        chunks = -(-b // lanes)
        vstore = torch.empty(chunks * lanes * t * unfolds * n, dtype=dtype) if need_grad else None
        dsb, dst = dt_strides(dt, b, t)
        ssb, sst = dt_strides(starts, b, t) if starts is not None else (0, 0)
        strides = (dsb, dst, ssb, sst)
        dims = _dims(b, t, s, n, unfolds, edges, 0, strides, 0, chunks)
        pp = (ctypes.c_void_p * 15)(*[p.data_ptr() for p in params_c], None, None, None, None)
        rc = kernel.forward[dtype](
            dims,
            pp,
            edges.packed.data_ptr(),
            edges.sensory_packed.data_ptr(),
            x.data_ptr(),
            h0.data_ptr(),
            dt.data_ptr(),
            ptr_or_none(starts),
            float(epsilon),
            states.data_ptr(),
            None,
            ptr_or_none(vstore),
        )
        if rc != 0:
            raise MemoryError("the LTC kernel could not allocate its scratch memory")
        if need_grad:
            # states is an output: it must go through save_for_backward (a plain ctx attribute would make a
            # reference cycle output -> grad_fn -> ctx -> output that only the cyclic GC frees)
            ctx.save_for_backward(x, dt, states, *(params_c + ([starts] if starts is not None else [])))
            ctx.extras = (kernel, edges, unfolds, epsilon, vstore, starts is not None, strides, chunks)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gstates: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        kernel, edges, unfolds, epsilon, vstore, has_starts, strides, chunks = ctx.extras
        saved = ctx.saved_tensors
        x, dt, states = saved[0], saved[1], saved[2]
        params = list(saved[3:14])
        starts = saved[14] if has_starts else None
        b, t, s = x.shape
        n = states.shape[2]
        dtype = x.dtype
        gstates = gstates.contiguous()
        gx = torch.empty_like(x)
        gh0 = torch.empty(b, n, dtype=dtype)
        need_dt = ctx.needs_input_grad[6]
        gdt = torch.zeros(b, t, dtype=dtype) if need_dt else None
        gparams = [torch.zeros_like(p) for p in params]
        dims = _dims(b, t, s, n, unfolds, edges, 0, strides, 0, chunks)
        pp = (ctypes.c_void_p * 15)(*[p.data_ptr() for p in params], None, None, None, None)
        gp = (ctypes.c_void_p * 11)(*[g.data_ptr() for g in gparams])
        rc = kernel.backward[dtype](
            dims,
            pp,
            edges.packed.data_ptr(),
            edges.sensory_packed.data_ptr(),
            x.data_ptr(),
            dt.data_ptr(),
            ptr_or_none(starts),
            float(epsilon),
            states.data_ptr(),
            vstore.data_ptr(),
            gstates.data_ptr(),
            gx.data_ptr(),
            gh0.data_ptr(),
            ptr_or_none(gdt),
            gp,
        )
        if rc != 0:
            raise MemoryError("the LTC kernel could not allocate its scratch memory")
        if gdt is not None:
            gdt = reduce_to(gdt, dt.shape)
        needs = ctx.needs_input_grad
        out: list[Tensor | None] = [None, None, None, None]
        out.append(gx if needs[4] else None)
        out.append(gh0 if needs[5] else None)
        out.append(gdt)
        out.append(None)
        out.extend(g if needs[8 + i] else None for i, g in enumerate(gparams))
        return tuple(out)


def _check_kernel_args(
    x: Tensor, h0: Tensor, dt: Tensor, starts: Tensor | None, params: Sequence[Tensor], edges: EdgeList
) -> None:
    """The C kernel trusts its pointers: shapes, dtypes and devices are checked here, once per call."""
    if x.dim() != 3 or x.shape[2] != edges.input_size:
        raise ValueError(f"x must be (B, T, S={edges.input_size}), got {tuple(x.shape)}")
    b, t = int(x.shape[0]), int(x.shape[1])
    n = edges.units
    if b < 1 or t < 1:
        raise ValueError(f"x must have B >= 1 and T >= 1, got {tuple(x.shape)}")
    if tuple(h0.shape) != (b, n):
        raise ValueError(f"h0 must be (B={b}, N={n}), got {tuple(h0.shape)}")
    for name, v in (("dt", dt), ("starts", starts)):
        if v is not None and (v.dim() != 2 or v.shape[0] not in (1, b) or v.shape[1] not in (1, t)):
            raise ValueError(
                f"{name} must be 2-D and broadcastable to (B, T) = ({b}, {t}), got {tuple(v.shape)}"
            )
    if len(params) != len(PARAM_NAMES):
        raise ValueError(
            f"expected {len(PARAM_NAMES)} parameters ({', '.join(PARAM_NAMES)}), got {len(params)}"
        )
    s = edges.input_size
    shapes = [(n,)] * 3 + [(n, n)] * 4 + [(s, n)] * 4
    for name, p, shape in zip(PARAM_NAMES, params, shapes):
        if tuple(p.shape) != shape:
            raise ValueError(f"parameter {name} must have shape {shape}, got {tuple(p.shape)}")
    tensors = [x, h0, dt, *params] + ([starts] if starts is not None else [])
    if any(v.dtype != x.dtype for v in tensors) or x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            "the LTC kernel needs x, h0, dt, starts and all parameters in one dtype, float32 or float64; got "
            + ", ".join(sorted({str(v.dtype) for v in tensors}))
        )
    if any(v.device.type != "cpu" for v in tensors):
        raise ValueError("the LTC kernel runs on CPU tensors only; use ltc_sequence_torch for other devices")


def ltc_sequence_kernel(
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    starts: Tensor | None,
    params: Sequence[Tensor],
    edges: EdgeList,
    unfolds: int,
    epsilon: float,
    kernel: LTCKernel | None = None,
) -> Tensor:
    """Runs the LTC over a sequence with the compiled kernel (CPU, float32/float64), differentiable.

    Args:
        x: mapped inputs ``(B, T, S)`` (after the input mapping).
        h0: initial state ``(B, N)``.
        dt: elapsed time per step, ``(B, T)``, ``(1, T)``, ``(B, 1)`` or ``(1, 1)``, > 0 (broadcast to
            ``(B, T)``).
        starts: episode-start flags ``(B, T)`` / broadcastable like ``dt`` (1 resets the state to zero
            before the step) or ``None``.
        params: the 11 constrained parameters in :data:`PARAM_NAMES` order (``w`` etc. after softplus).
        edges: the wiring's :class:`EdgeList`.
        unfolds: solver unfolds ``K`` per step.
        epsilon: added to the denominator of the fused update.
        kernel: the loaded kernel (default :func:`load_kernel`).

    Returns:
        every state ``(B, T, N)``.

    Raises:
        RuntimeError: if the kernel is unavailable.
    """
    kernel = kernel or load_kernel()
    if kernel is None:
        raise RuntimeError(
            f"the compiled LTC kernel is unavailable ({kernel_status()}); use ltc_sequence_torch"
        )
    _check_kernel_args(x, h0, dt, starts, params, edges)
    return _FusedLTCFunction.apply(kernel, edges, int(unfolds), float(epsilon), x, h0, dt, starts, *params)


# ---------------------------------------------------------------------------------------------- torch path
def ltc_sequence_torch(
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    starts: Tensor | None,
    params: Sequence[Tensor],
    edges: EdgeList,
    unfolds: int,
    epsilon: float,
) -> Tensor:
    """Pure-PyTorch LTC over the edge list (any device/dtype); same arguments and result as
    :func:`ltc_sequence_kernel`.

    The sensory synapses of all ``T`` steps are evaluated in one batch of ops (they do not depend on the
    state); each unfold is then an ``index_select`` of the presynaptic states, one sigmoid over the ``E``
    synapses and one ``index_add`` that scatters numerator and denominator together (``index_select`` and
    ``index_add`` are each other's backward, both cheap, unlike advanced indexing whose backward is a slow
    accumulate-put).
    """
    gleak, vleak, cm, w, sigma, mu, erev, sw, ssigma, smu, serev = params
    b, t, _ = x.shape
    n = h0.shape[1]
    edges = edges.to(x.device)
    src, dst, ssrc, sdst = edges.src, edges.dst, edges.sensory_src, edges.sensory_dst
    flat, sflat = src * n + dst, ssrc * n + sdst

    def pick(p: Tensor, idx: Tensor) -> Tensor:
        return p.reshape(-1).index_select(0, idx)

    # per-synapse parameters (gathered once per call); sigma * (v - mu) = sigma * v - sigma * mu
    esig = pick(sigma, flat)
    esig_mu = esig * pick(mu, flat)
    w_pair = pick(w, flat).unsqueeze(-1) * torch.stack(
        [pick(erev, flat), torch.ones_like(esig)], dim=-1
    )  # (E, 2)
    ssig = pick(ssigma, sflat)
    s_sens = pick(sw, sflat) * torch.sigmoid(
        ssig * (x.index_select(2, ssrc) - pick(smu, sflat))
    )  # (B, T, ES)
    sens = torch.zeros(b, t, n, 2, dtype=x.dtype, device=x.device).index_add(
        2, sdst, s_sens.unsqueeze(-1) * torch.stack([pick(serev, sflat), torch.ones_like(ssig)], dim=-1)
    )  # (B, T, N, [num, den])
    cm_t_all = cm / (dt.expand(b, t) / unfolds).unsqueeze(-1)  # (B, T, N)
    num0_all = gleak * vleak + sens[..., 0]
    den0_all = cm_t_all + gleak + sens[..., 1] + epsilon
    zeros = torch.zeros(b, n, 2, dtype=x.dtype, device=x.device)
    states = []
    v = h0
    for step in range(t):
        if starts is not None:
            v = v * (1 - starts.expand(b, t)[:, step : step + 1])
        cm_t, num0, den0 = cm_t_all[:, step], num0_all[:, step], den0_all[:, step]
        for _ in range(unfolds):
            act = torch.sigmoid(torch.addcmul(-esig_mu, esig, v.index_select(1, src)))  # (B, E)
            acc = zeros.index_add(1, dst, act.unsqueeze(-1) * w_pair)  # (B, N, 2)
            v = torch.addcmul(num0 + acc[..., 0], cm_t, v) / (den0 + acc[..., 1])
        states.append(v)
    return torch.stack(states, dim=1)


def ltc_sequence(
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    starts: Tensor | None,
    params: Sequence[Tensor],
    edges: EdgeList,
    unfolds: int,
    epsilon: float,
) -> tuple[Tensor, str]:
    """Runs the fastest available path; returns ``(states (B, T, N), path name)``.

    The kernel path is used for CPU float32/float64 tensors when the kernel is available (its backward is
    first-order only: no double backward); otherwise the PyTorch edge-list path (same numbers to float
    tolerance).
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        kernel = load_kernel()
        if kernel is not None:
            return ltc_sequence_kernel(x, h0, dt, starts, params, edges, unfolds, epsilon, kernel), "fused-c"
    return ltc_sequence_torch(x, h0, dt, starts, params, edges, unfolds, epsilon), "torch-edges"
