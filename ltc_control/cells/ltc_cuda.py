"""Fused LTC on CUDA: the whole sequence (all steps, all unfolds) in one kernel launch, compiled at run time.

One launch runs the forward pass of a whole batch and one runs its BPTT backward
(``csrc/ltc_kernel_cuda.cu``): one thread block per sample, one thread per neuron summing its own incoming
synapses (sorted by postsynaptic neuron), the presynaptic gradient gathered through a second index sorted by
presynaptic neuron. No atomics: results are deterministic. Why this layout is fast: ``docs/fast_paths.md``.

Building. The kernel source is compiled with NVRTC, which ships with the CUDA build of PyTorch: no nvcc, host
compiler or CUDA toolkit is needed. The binary is cached in the same directory as the CPU kernel
(``$LTC_CONTROL_CACHE_DIR``, default ``~/.cache/ltc_control``), keyed by the source, the GPU architecture and
the NVRTC version, and written atomically; a cached file that no longer loads (damaged, truncated) is
recompiled and replaced. If anything fails (no NVRTC, a driver too old for the binary, a
private PyTorch helper that moved), one :class:`LTCCudaKernelUnavailableWarning` names the cause and CUDA
tensors run on the pure-PyTorch ``"torch-edges"`` path instead (same numbers, slower).
``LTC_CONTROL_DISABLE_CUDA_KERNEL=1`` forces that path without a warning.

Registered into ``ltc_control.cells.ltc`` as ``"fused-cuda"`` (priority 30: ``"auto"`` picks it for CUDA
tensors in float32/float64 when it builds). ``cell.implementation_name`` reports which path ran.

Limits: each block accumulates its sample's parameter gradients in float64 (in shared memory when the
``4 E + 4 ES + 3 N`` accumulators fit the GPU's per-block opt-in limit, else in global memory, which is much
slower), and the batch sum is taken afterwards from ``B * (4 E + 4 ES + 3 N)`` float64 values (deterministic,
but memory grows with the batch); a wiring whose per-block working set (``(9 N + S)`` reals) exceeds 48 KiB
falls back to ``"torch-edges"``.

The same source also compiles as C++ on the CPU with real threads standing in for a block (``tests/csrc``),
which is how the test suite checks the kernel's logic without a GPU; a GPU run checks it for real
(``experiments/bench/ltc_speed_cuda.py``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ltc_control.cells.kernels import cache_dir, load_cached_binary
from ltc_control.cells.ltc_edges import (
    PARAM_NAMES,
    EdgeCache,
    EdgeList,
    PerDeviceCache,
    canonical_dt_starts,
    dt_strides,
    param_list,
    reduce_to,
)

__all__ = [
    "CsrEdges",
    "CudaKernels",
    "FusedCudaImplementation",
    "LTCCudaKernelUnavailableWarning",
    "compile_cuda_kernels",
    "cuda_kernel_status",
    "fits_shared_memory",
    "gather_edge_parameters",
    "load_cuda_kernels",
    "ltc_sequence_cuda",
]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "ltc_kernel_cuda.cu"
_NAMES: dict[torch.dtype, tuple[str, str]] = {
    torch.float32: ("ltc_cuda_forward_f32", "ltc_cuda_backward_f32"),
    torch.float64: ("ltc_cuda_forward_f64", "ltc_cuda_backward_f64"),
}
#: Threads per block at most (the kernels' __launch_bounds__; wider wirings loop over their synapses).
_MAX_THREADS = 256
#: Shared memory a block may use without opting in to more (every CUDA GPU has at least this).
_SHARED_LIMIT = 48 * 1024
#: A launcher: ``launcher(grid=(gx, gy, gz), block=(bx, by, bz), args=[...], shared_mem=bytes)``, where args
#: are tensors (passed as pointers), Python ints (C int) and floats (C double), in the kernel's order.
Launcher = Callable[..., None]


class LTCCudaKernelUnavailableWarning(RuntimeWarning):
    """The CUDA LTC kernel could not be compiled or loaded; CUDA tensors use the PyTorch edge-list path."""


@dataclass(frozen=True)
class CudaKernels:
    """The forward and backward launchers per dtype, and the block size to use.

    Attributes:
        forward: dtype -> launcher of the forward kernel.
        backward: dtype -> launcher of the backward kernel.
        where: where the kernels came from (for messages).
        block_threads: threads per block; ``None`` picks a multiple of 32 covering ``max(N, S, E, ES)`` (at
            most 256). Tests set small odd values to exercise the strided loops.
        max_shared: dynamic shared memory a block may use (bytes): the backward kernel keeps the parameter
            gradient accumulators there when they fit, else in global memory.
    """

    forward: dict[torch.dtype, Launcher]
    backward: dict[torch.dtype, Launcher]
    where: str
    block_threads: int | None = None
    max_shared: int = 48 * 1024

    def threads(self, units: int, inputs: int, synapses: int = 0) -> int:
        """Threads per block for ``units`` neurons, ``inputs`` input features and up to ``synapses`` synapses
        of one kind (recurrent or sensory): one thread per synapse or neuron, up to 256."""
        if self.block_threads is not None:
            return int(self.block_threads)
        need = max(units, inputs, synapses, 1)
        return min(_MAX_THREADS, -(-need // 32) * 32)


# ---------------------------------------------------------------------------------------------- building
def _nvrtc_version(lib: Any) -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        return "unknown"
    return f"{major.value}.{minor.value}"


def _nvrtc_compile(source: bytes, arch: str, lib: Any) -> bytes:
    """Compiles ``source`` for ``sm_<arch>`` with NVRTC; returns the CUBIN. Raises RuntimeError with NVRTC's
    log on failure."""
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source, b"ltc_kernel_cuda.cu", 0, None, None)
    if rc != 0:
        raise RuntimeError(f"nvrtcCreateProgram failed with code {rc}")
    try:
        opts = [f"--gpu-architecture=sm_{arch}".encode(), b"-default-device"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        if rc != 0:
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(
                f"NVRTC could not compile {_SOURCE.name}:\n{log.value.decode(errors='replace')}"
            )
        if lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)) != 0:
            raise RuntimeError("nvrtcGetCUBINSize failed")
        binary = ctypes.create_string_buffer(size.value)
        if lib.nvrtcGetCUBIN(prog, binary) != 0:
            raise RuntimeError("nvrtcGetCUBIN failed")
        return binary.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def compile_cuda_kernels(device: torch.device | str | int | None = None) -> CudaKernels:
    """Compiles (or loads from the cache) the CUDA kernels for ``device``'s architecture.

    Raises:
        RuntimeError: CUDA is unavailable, or NVRTC / the module load failed (the message names the cause).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available in this PyTorch build or on this machine")
    from torch.cuda import _utils as cuda_utils  # private helpers: guarded by the caller's fallback

    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    arch = f"{major}{minor}"
    get_lib = getattr(cuda_utils, "_get_gpu_rtc_library", None) or cuda_utils._get_nvrtc_library
    lib = get_lib()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        source + f"\0{arch}\0{_nvrtc_version(lib)}\0{torch.version.cuda}".encode()
    ).hexdigest()[:20]
    cache = cache_dir()
    target = cache / f"ltc_kernel_cuda_sm{arch}_{key}.cubin"
    names = [n for pair in _NAMES.values() for n in pair]

    def load(binary: bytes) -> Any:
        with torch.cuda.device(index):
            return cuda_utils._cuda_load_module(binary, names)

    kernels = load_cached_binary(target, lambda: _nvrtc_compile(source, arch, lib), load)
    assert isinstance(kernels, dict)
    max_shared = _SHARED_LIMIT
    optin = int(getattr(torch.cuda.get_device_properties(index), "shared_memory_per_block_optin", 0))
    if optin > _SHARED_LIMIT:
        try:
            for name in names:
                kernels[name].set_shared_memory_config(optin)
            max_shared = optin
        except Exception:  # noqa: BLE001 - an older helper without this method: stay at the default limit
            max_shared = _SHARED_LIMIT
    return CudaKernels(
        forward={dt: kernels[f] for dt, (f, _) in _NAMES.items()},
        backward={dt: kernels[b] for dt, (_, b) in _NAMES.items()},
        where=f"NVRTC sm_{arch} ({target})",
        max_shared=max_shared,
    )


_LOCK = threading.Lock()
_LOADED: dict[int, CudaKernels | None] = {}
_STATUS = ["not built yet (compiled with NVRTC on first use of a CUDA tensor)"]


def load_cuda_kernels(device: torch.device | str | int | None = None) -> CudaKernels | None:
    """The kernels for ``device`` (compiled on first use), or ``None`` when they are unavailable.

    The first failure issues one :class:`LTCCudaKernelUnavailableWarning` naming the cause; it is remembered
    per device for the rest of the process (:func:`cuda_kernel_status` repeats it).
    """
    if os.environ.get("LTC_CONTROL_DISABLE_CUDA_KERNEL", "") not in ("", "0"):
        _STATUS[0] = "disabled by LTC_CONTROL_DISABLE_CUDA_KERNEL"
        return None
    if not torch.cuda.is_available():
        _STATUS[0] = "unavailable: CUDA is not available"
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    if index in _LOADED:
        return _LOADED[index]
    with _LOCK:
        if index in _LOADED:
            return _LOADED[index]
        try:
            kernels: CudaKernels | None = compile_cuda_kernels(torch.device("cuda", index))
            _STATUS[0] = f"loaded {kernels.where}"  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - any failure must degrade to the PyTorch path
            kernels = None
            _STATUS[0] = f"unavailable: {exc}"
            warnings.warn(
                "ltc_control: the CUDA LTC kernel is unavailable, so LTCs on CUDA tensors run on the "
                f"pure-PyTorch edge-list path (slower, same numbers). Cause: {exc}. It needs the CUDA build "
                "of PyTorch with its NVRTC library; set LTC_CONTROL_DISABLE_CUDA_KERNEL=1 to silence this.",
                LTCCudaKernelUnavailableWarning,
                stacklevel=3,
            )
        _LOADED[index] = kernels
        return kernels


def cuda_kernel_status() -> str:
    """One line: where the CUDA kernels were loaded from, or why they are unavailable."""
    return _STATUS[0]


# ---------------------------------------------------------------------------------------------- edges
@dataclass(frozen=True)
class CsrEdges:
    """An :class:`EdgeList` sorted for the kernel: synapses grouped by postsynaptic neuron (CSR ``rowptr``),
    plus the index of each neuron's outgoing synapses for the backward pass. All tensors on one device.

    Attributes:
        flat: ``(E,)`` int64 ``src * N + dst`` of each synapse in kernel order (to gather ``(N, N)``
            parameters).
        src, dst: ``(E,)`` int32 presynaptic and postsynaptic neuron in kernel order.
        rowptr: ``(N + 1,)`` int32: synapses into neuron ``j`` are ``[rowptr[j], rowptr[j + 1])``.
        outptr, outidx: ``(N + 1,)``, ``(E,)`` int32: kernel-order indices of the synapses out of neuron ``i``
            are ``outidx[outptr[i]:outptr[i + 1]]``.
        sflat, ssrc, sdst, srowptr, soutptr, soutidx: the same for the sensory synapses (``soutptr`` has
            ``S + 1`` entries, one group per input feature).
        units: ``N``; input_size: ``S``.
    """

    flat: Tensor
    src: Tensor
    dst: Tensor
    rowptr: Tensor
    outptr: Tensor
    outidx: Tensor
    sflat: Tensor
    ssrc: Tensor
    sdst: Tensor
    srowptr: Tensor
    soutptr: Tensor
    soutidx: Tensor
    units: int
    input_size: int

    @staticmethod
    def _group(
        src: Tensor, dst: Tensor, n_dst: int, n_src: int, n_cols: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        order = torch.sort(dst, stable=True).indices
        src_s, dst_s = src[order], dst[order]
        rowptr = torch.zeros(n_dst + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(torch.bincount(dst_s, minlength=n_dst), 0)
        out_order = torch.sort(src_s, stable=True).indices
        outptr = torch.zeros(n_src + 1, dtype=torch.int64)
        outptr[1:] = torch.cumsum(torch.bincount(src_s, minlength=n_src), 0)
        flat = src_s * n_cols + dst_s
        return (
            flat,
            src_s.to(torch.int32),
            dst_s.to(torch.int32),
            rowptr.to(torch.int32),
            outptr.to(torch.int32),
            out_order.to(torch.int32),
        )

    @classmethod
    def from_edge_list(cls, edges: EdgeList, device: torch.device | str = "cpu") -> CsrEdges:
        """Sorts ``edges`` (CPU) for the kernel and moves the result to ``device``."""
        n, s = edges.units, edges.input_size
        rec = cls._group(edges.src.cpu(), edges.dst.cpu(), n, n, n)
        sens = cls._group(edges.sensory_src.cpu(), edges.sensory_dst.cpu(), n, s, n)
        dev = torch.device(device)
        f, sr, ds, rp, op, oi = (t.to(dev) for t in rec)
        sf, ss, sd, srp, sop, soi = (t.to(dev) for t in sens)
        return cls(f, sr, ds, rp, op, oi, sf, ss, sd, srp, sop, soi, n, s)

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    @property
    def num_sensory_edges(self) -> int:
        return int(self.ssrc.numel())


# ---------------------------------------------------------------------------------------------- autograd
def _shared_bytes(
    kind: str, n: int, s: int, dtype: torch.dtype, edge_buffer: int = 0, accumulators: int = 0
) -> int:
    """Dynamic shared memory of a block: the per-neuron and per-input reals, ``edge_buffer`` more reals when
    the synapse scratch lives there, and ``accumulators`` float64 gradient accumulators (backward only)."""
    item = torch.empty((), dtype=dtype).element_size()
    reals = (5 * n + s if kind == "forward" else 11 * n + s) + edge_buffer
    return reals * item if not accumulators else (reals * item // 8 + 1 + accumulators) * 8


def fits_shared_memory(n: int, s: int, dtype: torch.dtype) -> bool:
    """Whether a wiring of ``n`` neurons and ``s`` inputs fits the kernels' per-block shared memory."""
    return _shared_bytes("backward", n, s, dtype) <= _SHARED_LIMIT


class _CudaLTCFunction(torch.autograd.Function):
    """One launch forward (keeping the pre-unfold states when a gradient is needed), one launch backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        kernels: CudaKernels,
        csr: CsrEdges,
        unfolds: int,
        epsilon: float,
        x: Tensor,
        h0: Tensor,
        dt: Tensor,
        starts: Tensor | None,
        *eparams: Tensor,
    ) -> Tensor:
        b, t, s = x.shape
        n = csr.units
        x = x.contiguous()
        h0 = h0.contiguous()
        eparams = tuple(p.contiguous() for p in eparams)
        gleak, vleak, cm, ew, esig, emu, eerev, sw, ssig, smu, serev = eparams
        need_grad = any(ctx.needs_input_grad[4:])
        states = torch.empty(b, t, n, dtype=x.dtype, device=x.device)
        vstore = torch.empty(b, t, unfolds, n, dtype=x.dtype, device=x.device) if need_grad else states
        dsb, dst = dt_strides(dt, b, t)
        ssb, sst = dt_strides(starts, b, t) if starts is not None else (0, 0)
        e, es = csr.num_edges, csr.num_sensory_edges
        m = max(e, es, 1)
        shared = _shared_bytes("forward", n, s, x.dtype, 2 * m)
        ebuf_shared = shared <= kernels.max_shared
        if ebuf_shared:
            ebuf = x
        else:
            shared = _shared_bytes("forward", n, s, x.dtype)
            ebuf = torch.empty(b, 2 * m, dtype=x.dtype, device=x.device)
        kernels.forward[x.dtype](
            grid=(b, 1, 1),
            block=(kernels.threads(n, s, m), 1, 1),
            args=[
                b,
                t,
                s,
                n,
                unfolds,
                e,
                es,
                dsb,
                dst,
                ssb,
                sst,
                int(starts is not None),
                int(need_grad),
                int(ebuf_shared),
                float(epsilon),
                gleak,
                vleak,
                cm,
                ew,
                esig,
                emu,
                eerev,
                csr.src,
                csr.rowptr,
                sw,
                ssig,
                smu,
                serev,
                csr.ssrc,
                csr.srowptr,
                x,
                h0,
                dt,
                starts if starts is not None else x,
                states,
                vstore,
                ebuf,
            ],
            shared_mem=shared,
        )
        if need_grad:
            ctx.save_for_backward(x, dt, states, vstore, *eparams, *([starts] if starts is not None else []))
            ctx.extras = (kernels, csr, unfolds, epsilon, starts is not None, (dsb, dst, ssb, sst))
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gstates: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        kernels, csr, unfolds, epsilon, has_starts, (dsb, dst, ssb, sst) = ctx.extras
        saved = ctx.saved_tensors
        x, dt, states, vstore = saved[:4]
        eparams = saved[4:15]
        starts = saved[15] if has_starts else None
        gleak, vleak, cm, ew, esig, emu, eerev, sw, ssig, smu, serev = eparams
        b, t, s = x.shape
        n, e, es = csr.units, csr.num_edges, csr.num_sensory_edges
        dev, dtype = x.device, x.dtype
        gstates = gstates.contiguous()
        gx = torch.empty_like(x)
        gh0 = torch.empty(b, n, dtype=dtype, device=dev)
        need_dt = ctx.needs_input_grad[6]
        gdt = torch.empty(b, t, dtype=dtype, device=dev) if need_dt else gx
        ge = torch.zeros(b, 4, e, dtype=torch.float64, device=dev)
        gs = torch.zeros(b, 4, es, dtype=torch.float64, device=dev)
        gn = torch.zeros(b, 3, n, dtype=torch.float64, device=dev)
        m = max(e, es, 1)
        # shared memory: the synapse scratch first (touched several times per unfold), then the accumulators
        shared = _shared_bytes("backward", n, s, dtype, 3 * m)
        ebuf_shared = shared <= kernels.max_shared
        if not ebuf_shared:
            shared = _shared_bytes("backward", n, s, dtype)
        with_acc = _shared_bytes("backward", n, s, dtype, 3 * m if ebuf_shared else 0, 4 * e + 4 * es + 3 * n)
        acc_shared = with_acc <= kernels.max_shared
        if acc_shared:
            shared = with_acc
        ebuf = x if ebuf_shared else torch.empty(b, 3 * m, dtype=dtype, device=dev)
        kernels.backward[dtype](
            grid=(b, 1, 1),
            block=(kernels.threads(n, s, m), 1, 1),
            args=[
                b,
                t,
                s,
                n,
                unfolds,
                e,
                es,
                dsb,
                dst,
                ssb,
                sst,
                int(has_starts),
                int(need_dt),
                int(ebuf_shared),
                int(acc_shared),
                float(epsilon),
                gleak,
                vleak,
                cm,
                ew,
                esig,
                emu,
                eerev,
                csr.src,
                csr.dst,
                csr.rowptr,
                csr.outptr,
                csr.outidx,
                sw,
                ssig,
                smu,
                serev,
                csr.ssrc,
                csr.sdst,
                csr.srowptr,
                csr.soutptr,
                csr.soutidx,
                x,
                dt,
                starts if starts is not None else x,
                states,
                vstore,
                gstates,
                gx,
                gh0,
                gdt,
                ge,
                gs,
                gn,
                ebuf,
            ],
            shared_mem=shared,
        )
        ge_sum, gs_sum, gn_sum = (g.sum(0).to(dtype) for g in (ge, gs, gn))
        needs = ctx.needs_input_grad
        grads = [*gn_sum.unbind(0), *ge_sum.unbind(0), *gs_sum.unbind(0)]
        out: list[Tensor | None] = [None, None, None, None]
        out.append(gx if needs[4] else None)
        out.append(gh0 if needs[5] else None)
        out.append(reduce_to(gdt, dt.shape) if need_dt else None)
        out.append(None)
        out.extend(g if needs[8 + i] else None for i, g in enumerate(grads))
        return tuple(out)


def _check_args(
    x: Tensor, h0: Tensor, dt: Tensor, starts: Tensor | None, params: Sequence[Tensor], csr: CsrEdges
) -> None:
    if x.dim() != 3 or x.shape[2] != csr.input_size:
        raise ValueError(f"x must be (B, T, S={csr.input_size}), got {tuple(x.shape)}")
    b, t = int(x.shape[0]), int(x.shape[1])
    if b < 1 or t < 1:
        raise ValueError(f"x must have B >= 1 and T >= 1, got {tuple(x.shape)}")
    if b > 2**31 - 1 or b * t * max(csr.units, csr.input_size) * 64 > 2**62:
        raise ValueError(f"x of shape {tuple(x.shape)} is too large for the CUDA LTC kernel")
    if tuple(h0.shape) != (b, csr.units):
        raise ValueError(f"h0 must be (B={b}, N={csr.units}), got {tuple(h0.shape)}")
    for name, v in (("dt", dt), ("starts", starts)):
        if v is not None and (v.dim() != 2 or v.shape[0] not in (1, b) or v.shape[1] not in (1, t)):
            raise ValueError(
                f"{name} must be 2-D and broadcastable to (B, T) = ({b}, {t}), got {tuple(v.shape)}"
            )
    if len(params) != len(PARAM_NAMES):
        raise ValueError(
            f"expected {len(PARAM_NAMES)} parameters ({', '.join(PARAM_NAMES)}), got {len(params)}"
        )
    tensors = [x, h0, dt, *params] + ([starts] if starts is not None else [])
    if any(v.dtype != x.dtype for v in tensors) or x.dtype not in _NAMES:
        raise ValueError(
            "the CUDA LTC kernel needs x, h0, dt, starts and all parameters in one dtype, float32 or "
            "float64; got " + ", ".join(sorted({str(v.dtype) for v in tensors}))
        )
    if any(v.device != x.device for v in tensors) or csr.src.device != x.device:
        raise ValueError("x, h0, dt, starts, the parameters and the edges must be on one device")


def ltc_sequence_cuda(
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    starts: Tensor | None,
    params: Sequence[Tensor],
    edges: EdgeList | CsrEdges,
    unfolds: int,
    epsilon: float,
    kernels: CudaKernels | None = None,
) -> Tensor:
    """Runs the LTC over a sequence with the fused CUDA kernels, differentiable (first order).

    Same arguments and result as :func:`ltc_control.cells.ltc_fast.ltc_sequence_kernel`: ``x (B, T, S)``
    mapped inputs, ``h0 (B, N)``, ``dt`` / ``starts`` broadcastable to ``(B, T)``, the 11 constrained
    parameters in :data:`PARAM_NAMES` order; returns every state ``(B, T, N)``. ``kernels`` defaults to
    :func:`load_cuda_kernels` for ``x``'s device (tests pass CPU-emulated launchers).

    Raises:
        RuntimeError: no kernels given and they are unavailable.
        ValueError: shapes, dtypes or devices that do not fit, or ``unfolds < 1``.
    """
    if unfolds < 1:
        raise ValueError(f"unfolds must be >= 1, got {unfolds}")
    if kernels is None:
        kernels = load_cuda_kernels(x.device)
        if kernels is None:
            raise RuntimeError(f"the CUDA LTC kernel is unavailable ({cuda_kernel_status()})")
    csr = edges if isinstance(edges, CsrEdges) else CsrEdges.from_edge_list(edges, x.device)
    _check_args(x, h0, dt, starts, params, csr)
    return _apply(kernels, csr, unfolds, epsilon, x, h0, dt, starts, gather_edge_parameters(params, csr))


def gather_edge_parameters(params: Sequence[Tensor], csr: CsrEdges) -> tuple[Tensor, ...]:
    """The kernels' parameter arguments: ``gleak, vleak, cm`` as they are, the ``(N, N)`` / ``(S, N)``
    synapse parameters gathered into per-synapse vectors in kernel order (differentiable: the gradient
    scatters back)."""
    gleak, vleak, cm, w, sigma, mu, erev, sw, ssigma, smu, serev = params

    def pick(p: Tensor, idx: Tensor) -> Tensor:
        return p.reshape(-1).index_select(0, idx)

    return (
        gleak,
        vleak,
        cm,
        *(pick(p, csr.flat) for p in (w, sigma, mu, erev)),
        *(pick(p, csr.sflat) for p in (sw, ssigma, smu, serev)),
    )


def _apply(
    kernels: CudaKernels,
    csr: CsrEdges,
    unfolds: int,
    epsilon: float,
    x: Tensor,
    h0: Tensor,
    dt: Tensor,
    starts: Tensor | None,
    eparams: Sequence[Tensor],
) -> Tensor:
    if starts is not None:
        starts = starts.to(x.dtype)
    return _CudaLTCFunction.apply(kernels, csr, int(unfolds), float(epsilon), x, h0, dt, starts, *eparams)


# ---------------------------------------------------------------------------------------------- registry glue
class FusedCudaImplementation:
    """``LTCCell`` implementation ``"fused-cuda"``: CUDA tensors in float32/float64 (see the module doc)."""

    dtypes = (torch.float32, torch.float64)

    def __init__(self, kernels: CudaKernels | None = None, device_types: Sequence[str] = ("cuda",)) -> None:
        """``kernels``: fixed launchers (default: compiled for each CUDA device on first use);
        ``device_types``: where the implementation reports itself available (tests run CPU-emulated
        launchers with ``("cpu",)``)."""
        self._kernels = kernels
        self._device_types = tuple(device_types)
        self._edges = EdgeCache()
        self._csr: PerDeviceCache[CsrEdges] = PerDeviceCache(CsrEdges.from_edge_list)
        # gathered per-synapse parameters for calls without autograd (control loops), keyed on the parameter
        # tensors' identities and version counters: a changed or replaced parameter misses the cache
        self._gathered: tuple[tuple[Any, ...], tuple[Tensor, ...], tuple[Tensor, ...]] | None = None

    def _get_kernels(self, device: torch.device) -> CudaKernels | None:
        return self._kernels if self._kernels is not None else load_cuda_kernels(device)

    def available(self, device: torch.device) -> bool:
        """True on CUDA devices where the kernels compile (the first call compiles them)."""
        return device.type in self._device_types and self._get_kernels(device) is not None

    def _csr_for(self, params: Any, device: torch.device) -> CsrEdges:
        edges = self._edges.get(params["sparsity_mask"], params["sensory_sparsity_mask"])
        return self._csr.get(edges, device)

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
        dt2, starts = canonical_dt_starts(dt, reset)
        plist = param_list(params)
        kernels = self._get_kernels(x_mapped.device)
        if kernels is None or not fits_shared_memory(v0.shape[-1], x_mapped.shape[-1], x_mapped.dtype):
            from ltc_control.cells.ltc_registry import get_implementation

            torch_edges = get_implementation("torch-edges")
            return torch_edges.sequence(params, x_mapped, v0, dt, reset, unfolds, eps)  # type: ignore[no-any-return]
        csr = self._csr_for(params, x_mapped.device)
        if torch.is_grad_enabled():
            return ltc_sequence_cuda(x_mapped, v0, dt2, starts, plist, csr, unfolds, eps, kernels)
        _check_args(x_mapped, v0, dt2, starts, plist, csr)
        key = (id(csr), *((id(p), p._version) for p in plist))
        hit = self._gathered
        if hit is None or hit[0] != key or any(a is not b for a, b in zip(hit[1], plist)):
            hit = (key, tuple(plist), gather_edge_parameters(plist, csr))
            self._gathered = hit
        return _apply(kernels, csr, unfolds, eps, x_mapped, v0, dt2, starts, hit[2])

    def step(self, params: Any, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float) -> Tensor:
        """New state ``(B, N)`` after one input step (``dt``: ``(B, 1)``): a sequence of length 1."""
        return self.sequence(params, x_mapped.unsqueeze(1), v, dt.reshape(-1, 1), None, unfolds, eps)[:, 0]


def _register() -> None:
    from ltc_control.cells import ltc_registry

    ltc_registry.register_implementation("fused-cuda", FusedCudaImplementation(), priority=30)


_register()
