"""Fast LTC paths: a fused C kernel over the sparse synapse list, and a pure-PyTorch edge-list fallback.

Why this is fast. The reference LTC (and ``ncps``) evaluates every solver unfold as a handful of dense tensor
ops over a masked ``(B, N, N)`` synapse tensor, so one batch-1 step of the 19-neuron lane-keeping NCP costs
tens of PyTorch dispatches for about 540 synapse evaluations. Here:

* the wiring's adjacency is turned once into an edge list (``src -> dst``), so the cost grows with the number
  of synapses, not with ``N ** 2``;
* all ``K`` unfolds of all ``T`` steps run inside one C call (``csrc/ltc_kernel.c``), the batch cut into
  chunks of 16 (float32) / 8 (float64) SIMD lanes; the backward pass is a hand-written BPTT through the
  unfolds that replays the per-unfold states stored by the forward pass (``T * K * N * B`` values, far less
  than the ``(B, N, N)`` intermediates autograd keeps for the reference);
* batch 1 without gradients vectorises over synapses instead of samples;
* without an autograd graph, ``LTCCell.forward`` / ``forward_sequence`` hand the whole step or sequence to
  the ``forward_step`` / ``forward_sequence`` hooks of :class:`FusedCImplementation`: the finiteness and
  ``dt > 0`` checks, the input mapping, the solver and the readout are one ctypes call on cached pointers (the
  cache follows ``LTCCell``'s effective parameters, which change whenever a parameter is updated in place),
  and a float ``dt`` travels in a per-thread C scalar instead of a new tensor.

Implementations registered into ``ltc_control.cells.ltc`` (``cell.implementation_name`` says which one ran):

* ``"fused-c"`` (priority 20): the compiled kernel, CPU tensors in float32 / float64.
* ``"torch-edges"`` (priority 10): pure PyTorch over the edge list (``index_select`` + ``index_add``), any
  device and dtype. ``"auto"`` picks it on CUDA and when the kernel cannot be built (no compiler, failed
  build); in that last case one :class:`LTCKernelUnavailableWarning` per process names the cause and the fix.

Building. The kernel is C99 with the GCC/Clang vector extensions (no torch headers), compiled lazily on first
use with the system C compiler (``$LTC_CONTROL_CC``, else ``$CC``, else ``cc``/``gcc``/``clang`` on ``PATH``)
into ``$LTC_CONTROL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ltc_control`` or ``~/.cache/ltc_control``), with
``-O3 -march=native`` unless ``$LTC_CONTROL_CFLAGS`` says otherwise. The file name carries a hash of the
sources, the compiler flags, the compiler, the torch version and the CPU, so a changed source or machine
rebuilds. The build writes to a private temporary file and ``os.replace``-s it into place, so concurrent
builds from several processes never expose a half-written library. ``LTC_CONTROL_DISABLE_KERNEL=1`` forces the
PyTorch path without a warning.

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
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

__all__ = [
    "PARAM_NAMES",
    "EdgeList",
    "FusedCImplementation",
    "LTCControlStep",
    "TorchEdgesImplementation",
    "LTCKernelUnavailableWarning",
    "kernel_available",
    "kernel_status",
    "load_kernel",
    "ltc_sequence",
    "ltc_sequence_kernel",
    "ltc_sequence_torch",
]

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

_CSRC = Path(__file__).resolve().parent / "csrc"
_SOURCES = ("ltc_kernel.c", "ltc_kernel_body.h")
_ABI = 6
# First flag set that compiles wins: -march=native vectorises the batch lanes with the CPU's widest units; the
# plain -O3 set is the fallback for compilers that reject it.
_FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"),
    ("-O3", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"),
)


class LTCKernelUnavailableWarning(RuntimeWarning):
    """The compiled LTC kernel could not be built or loaded; the pure-PyTorch fast path is used instead."""


# ---------------------------------------------------------------------------------------------- build + load
class _Kernel:
    """The loaded shared library with typed entry points for float32 and float64."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.path = path
        p, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
        self.forward: dict[torch.dtype, Any] = {}
        self.backward: dict[torch.dtype, Any] = {}
        self.lanes: dict[torch.dtype, int] = {}
        self.forward_packed: dict[torch.dtype, Any] = {}
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


def _cache_dir() -> Path:
    env = os.environ.get("LTC_CONTROL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ltc_control"


def _compiler() -> list[str]:
    """The compiler command: $LTC_CONTROL_CC, else $CC, else the first of cc/gcc/clang on PATH."""
    for var in ("LTC_CONTROL_CC", "CC"):
        value = os.environ.get(var)
        if value:
            return shlex.split(value)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError("no C compiler found on PATH (looked for cc, gcc, clang)")


def _cpu_fingerprint() -> str:
    # -march=native output is only valid on the CPU that built it; a shared home directory must not reuse it
    # on another CPU model.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    return platform.processor() or "unknown"


def _source_hash(
    compiler: Sequence[str],
    flags: Sequence[str],
    sources: Sequence[str] = _SOURCES,
    abi: int = _ABI,
) -> str:
    """Cache key of a kernel library: its sources, the compiler and flags, torch, the platform and the CPU."""
    h = hashlib.sha256()
    for name in sources:
        h.update((_CSRC / name).read_bytes())
    for part in (
        " ".join(compiler),
        " ".join(flags),
        torch.__version__,
        platform.machine(),
        platform.system(),
        _cpu_fingerprint(),
        str(abi),
    ):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:20]


def _flag_sets() -> tuple[tuple[str, ...], ...]:
    """Compiler flag sets to try in order; ``$LTC_CONTROL_CFLAGS`` replaces the optimisation flags (e.g.
    ``"-O2"`` without ``-march=native`` for a cache shared by different CPUs)."""
    custom = os.environ.get("LTC_CONTROL_CFLAGS")
    if custom:
        return ((*shlex.split(custom), "-fPIC", "-shared", "-std=c99"),)
    return _FLAG_SETS


def _try_load(path: Path) -> _Kernel | None:
    try:
        lib = ctypes.CDLL(str(path))
        if int(lib.ltc_kernel_abi()) != _ABI:
            return None
        return _Kernel(lib, path)
    except (OSError, AttributeError):
        return None


_L = TypeVar("_L")


def build_cached_library(
    name: str, sources: Sequence[str], abi: int, load: Callable[[Path], _L | None], what: str
) -> _L:
    """Loads ``<cache>/<name>_<hash>.so`` or compiles ``csrc/<sources[0]>`` into it; used by every C kernel.

    Tries each flag set of :func:`_flag_sets` in order. The build writes to a private temporary file and
    ``os.replace``-s it into place, so concurrent builds from several processes never expose a half-written
    library; a corrupt or foreign file under the name is rebuilt. ``load(path)`` returns the loaded kernel or
    ``None`` (wrong ABI, missing symbol).

    Raises:
        FileNotFoundError: no compiler.
        RuntimeError: every flag set failed (the message holds each command and its error).
    """
    compiler = _compiler()
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for flags in _flag_sets():
        target = cache / f"{name}_{_source_hash(compiler, flags, sources, abi)}.so"
        if target.exists():
            kernel = load(target)
            if kernel is not None:
                return kernel
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}_", suffix=".so.tmp", dir=cache)
        os.close(fd)
        tmp = Path(tmp_name)
        cmd = [*compiler, *flags, "-o", str(tmp), str(_CSRC / sources[0]), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError):
                raise FileNotFoundError(f"C compiler {compiler[0]!r} not found ({exc})") from exc
            errors.append(f"{' '.join(cmd)}: {exc}")
            continue
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            errors.append(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()[-800:]}")
            continue
        os.replace(tmp, target)
        kernel = load(target)
        if kernel is not None:
            return kernel
        errors.append(f"built {target} but could not load it")
    raise RuntimeError(f"compiling the {what} failed:\n" + "\n".join(errors))


def _build() -> _Kernel:
    """Loads the cached library or compiles it; raises RuntimeError/FileNotFoundError naming the cause."""
    return build_cached_library("ltc_kernel", _SOURCES, _ABI, _try_load, "LTC kernel")


class LazyKernel(Generic[_L]):
    """A compiled C kernel built on first use, once per process (shared by the LTC and CfC kernels).

    ``LTC_CONTROL_DISABLE_KERNEL=1`` disables it without a warning. A failed build is remembered for the
    rest of the process and issues one warning of class ``warning`` with ``message(exc)``; :attr:`status`
    says where the kernel was loaded from or why it is unavailable.
    """

    def __init__(
        self, build: Callable[[], _L], warning: type[Warning], message: Callable[[Exception], str]
    ) -> None:
        self._build, self._warning, self._message = build, warning, message
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forgets the kernel so that the next :meth:`load` rebuilds/reloads it (tests of the fallback)."""
        self.kernel: _L | None = None
        self.tried = False
        self.status = "not built yet (built lazily on first use)"

    def load(self) -> _L | None:
        """The kernel (built on the first call), or ``None`` when it is unavailable."""
        if self.tried:
            return self.kernel
        with self._lock:
            if self.tried:
                return self.kernel
            if os.environ.get("LTC_CONTROL_DISABLE_KERNEL", "") not in ("", "0"):
                self.status = "disabled by LTC_CONTROL_DISABLE_KERNEL"
            else:
                try:
                    self.kernel = self._build()
                    self.status = f"loaded {getattr(self.kernel, 'path', self.kernel)}"
                except Exception as exc:  # noqa: BLE001 - any build failure must degrade to the PyTorch path
                    self.status = f"unavailable: {exc}"
                    warnings.warn(self._message(exc), self._warning, stacklevel=4)
            self.tried = True
            return self.kernel


_LAZY: LazyKernel[_Kernel] = LazyKernel(
    lambda: _build(),
    LTCKernelUnavailableWarning,
    lambda exc: (
        "ltc_control: the compiled LTC kernel is unavailable, so the fast LTC runs on its pure-PyTorch path "
        f"(slower, same numbers). Cause: {exc}. Fix: install a C compiler (e.g. 'apt-get install gcc') or "
        "point LTC_CONTROL_CC at one; set LTC_CONTROL_DISABLE_KERNEL=1 to silence this warning."
    ),
)


def load_kernel() -> _Kernel | None:
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


# ---------------------------------------------------------------------------------------------- kernel path
def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _dt_strides(dt: Tensor, batch: int, steps: int) -> tuple[int, int]:
    """Element strides of a ``dt``/``starts`` tensor broadcast to ``(B, T)`` (0 = broadcast)."""
    sb, st = dt.stride()
    return (sb if dt.shape[0] == batch and batch > 1 else 0), (
        st if dt.shape[1] == steps and steps > 1 else 0
    )


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
        kernel: _Kernel,
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
        dsb, dst = _dt_strides(dt, b, t)
        ssb, sst = _dt_strides(starts, b, t) if starts is not None else (0, 0)
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
            _ptr(starts),
            float(epsilon),
            states.data_ptr(),
            None,
            _ptr(vstore),
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
            _ptr(starts),
            float(epsilon),
            states.data_ptr(),
            vstore.data_ptr(),
            gstates.data_ptr(),
            gx.data_ptr(),
            gh0.data_ptr(),
            _ptr(gdt),
            gp,
        )
        if rc != 0:
            raise MemoryError("the LTC kernel could not allocate its scratch memory")
        if gdt is not None:
            gdt = _reduce_to(gdt, dt.shape)
        needs = ctx.needs_input_grad
        out: list[Tensor | None] = [None, None, None, None]
        out.append(gx if needs[4] else None)
        out.append(gh0 if needs[5] else None)
        out.append(gdt)
        out.append(None)
        out.extend(g if needs[8 + i] else None for i, g in enumerate(gparams))
        return tuple(out)


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sums a ``(B, T)`` gradient down to a broadcast ``dt`` shape ``(1 | B, 1 | T)``."""
    if grad.shape[0] != shape[0]:
        grad = grad.sum(0, keepdim=True)
    if grad.shape[1] != shape[1]:
        grad = grad.sum(1, keepdim=True)
    return grad


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
    kernel: _Kernel | None = None,
) -> Tensor:
    """Runs the LTC over a sequence with the compiled kernel (CPU, float32/float64), differentiable.

    Args:
        x: mapped inputs ``(B, T, S)`` (after the input mapping).
        h0: initial state ``(B, N)``.
        dt: elapsed time per step, ``(B, T)``, ``(1, T)``, ``(B, 1)`` or ``(1, 1)``, > 0 (broadcast to ``(B,
        T)``).
        starts: episode-start flags ``(B, T)`` / broadcastable like ``dt`` (1 resets the state to zero
        before the
            step) or ``None``.
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


# ---------------------------------------------------------------------------------------------- registry glue
class _EdgeCache:
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


class _PerDeviceCache(Generic[_L]):
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


def _param_list(params: Any) -> list[Tensor]:
    try:
        return [params[k] for k in PARAM_NAMES]
    except KeyError as exc:
        raise ValueError(
            f"effective parameters lack {exc.args[0]!r}; expected the keys of "
            f"LTCCell.effective_parameters(): "
            f"{list(PARAM_NAMES)} plus sparsity_mask and sensory_sparsity_mask"
        ) from None


class FusedCImplementation:
    """``LTCCell`` implementation ``"fused-c"``: the compiled kernel (CPU, float32/float64).

    ``available(device)`` builds the kernel on first use and is ``False`` off the CPU or when the build fails
    (then ``"auto"`` picks ``"torch-edges"``). Sequences run in one kernel call with a hand-written backward;
    a step without gradients is one ctypes call on cached parameter pointers.
    """

    dtypes = (torch.float32, torch.float64)

    def __init__(self) -> None:
        self._edges = _EdgeCache()
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

    def _kernel(self) -> _Kernel:
        kernel = load_kernel()
        if kernel is None:
            raise RuntimeError(f"the compiled LTC kernel is unavailable ({kernel_status()})")
        return kernel

    def _prepare_step(self, params: Any) -> tuple[Any, ...]:
        """Caches, for one effective-parameter dict, the contiguous tensors and their pointer array."""
        kernel = self._kernel()
        edges = self._edge_list(params)
        plist = [p.detach().contiguous() for p in _param_list(params)]
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
        plist = _param_list(params)
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
            or any(p.requires_grad for p in _param_list(params))
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
        plist = _param_list(params)
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
            pp = (ctypes.c_void_p * 15)(*[p.data_ptr() for p in keep], *[_ptr(m) for m in mkeep])
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
                dsb, dst = _dt_strides(dt, b, steps)
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
            ssb, sst = _dt_strides(reset, b, steps)
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


def canonical_dt_starts(dt: Tensor, reset: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The ``(B, T)`` forms of an implementation's ``dt`` and ``reset`` arguments (``(B, T, 1)`` squeezed)."""
    dt2 = dt.reshape(dt.shape[0], dt.shape[1]) if dt.dim() == 3 else dt
    if reset is not None and reset.dim() == 3:
        reset = reset.reshape(reset.shape[0], reset.shape[1])
    return dt2, reset


class TorchEdgesImplementation:
    """``LTCCell`` implementation ``"torch-edges"``: pure PyTorch, any device and dtype.

    The fallback when the compiled kernel is unavailable (no compiler) and the fast path on CUDA tensors.
    Sequences run over the synapse edge list (:func:`ltc_sequence_torch`); a single step uses the dense
    reference formulation, whose handful of ops per unfold dispatch faster at small batch than the edge
    list's gather/scatter (measured on the lane-keeping NCP at batch 1).
    """

    def __init__(self) -> None:
        self._edges = _EdgeCache()
        # device copies of the index tensors (CUDA): copied once, not on every call
        self._on_device: _PerDeviceCache[EdgeList] = _PerDeviceCache(lambda e, d: e.to(d))

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
        return ltc_sequence_torch(x_mapped, v0, dt2, starts, _param_list(params), edges, unfolds, eps)

    def step(self, params: Any, x_mapped: Tensor, v: Tensor, dt: Tensor, unfolds: int, eps: float) -> Tensor:
        """New state ``(B, N)`` after one input step (``dt``: ``(B, 1)``)."""
        from ltc_control.cells.ltc import reference_step

        return reference_step(params, x_mapped, v, dt, unfolds, eps)


_TORCH_EDGES = TorchEdgesImplementation()


def _register() -> None:
    from ltc_control.cells import ltc as _ltc

    _ltc.register_implementation("fused-c", FusedCImplementation(), priority=20)
    _ltc.register_implementation("torch-edges", _TORCH_EDGES, priority=10)


_register()
