"""The CfC C forward kernel (``csrc/cfc_kernel.c``, float32 / float64, CPU): loading it and calling it on a
packed :class:`~ltc_control.cells.cfc_plan.Plan`.

It runs the no-grad batch-1 step of every CfC cell and the forward of backbone-free cells (wired cells, dense
cells with ``backbone_layers=0``), also writing what the hand-written BPTT needs. Built lazily with the LTC
kernel's compiler, flags and cache (:mod:`ltc_control.cells.kernels`); if that fails, one
:class:`CfCKernelUnavailableWarning` and the PyTorch paths run (same numbers);
``LTC_CONTROL_DISABLE_KERNEL=1`` switches it off; :func:`kernel_status` says which.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ltc_control.cells import kernels
from ltc_control.cells.cfc_plan import LeCunConstants, Plan, cell_layout

# ------------------------------------------------------------------------------------------- C kernel
_CSRC = Path(__file__).resolve().parent / "csrc"


_SOURCES = ("cfc_kernel.c", "cfc_kernel_body.h")


_ABI = 2


LAYER_META = 10


MAX_WIDTH = 4096  # csrc/cfc_kernel.c's CFC_MAX_WIDTH: wider layers run the PyTorch paths


_MODE_CODES = {"default": 0, "no_gate": 1, "pure": 2}


class CfCKernelUnavailableWarning(RuntimeWarning):
    """The compiled CfC kernel could not be built or loaded; the PyTorch paths run instead (same numbers)."""


class CfCKernel:
    """The loaded CfC kernel: ``forward[dtype](meta, B, T, w, x, h0, ts, ts_scalar, resets, out, save_f,
    save_s)`` (see csrc/cfc_kernel.c)."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.path = path
        p = ctypes.c_void_p
        self.forward: dict[torch.dtype, Any] = {}
        for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
            fn = getattr(lib, f"cfc_forward_{suffix}")
            i64 = ctypes.c_int64
            fn.argtypes = [p, i64, i64, p, p, p, p, ctypes.c_double, p, p, p, p]
            fn.restype = ctypes.c_int
            self.forward[dtype] = fn


def _try_load(path: Path) -> CfCKernel | None:
    try:
        lib = ctypes.CDLL(str(path))
        if int(lib.cfc_kernel_abi()) != _ABI:
            return None
        return CfCKernel(lib, path)
    except (OSError, AttributeError):
        return None


def _build() -> CfCKernel:
    """Loads the cached library or compiles it (the LTC kernel's compiler, flags and cache directory)."""
    return kernels.build_cached_library("cfc_kernel", _SOURCES, _ABI, _try_load, "CfC kernel")


def _message(exc: Exception) -> str:
    return (
        "ltc_control: the compiled CfC kernel is unavailable, so no-grad CfC steps and sequences run on the "
        f"PyTorch path (slower, same numbers). Cause: {exc}. Fix: install a C compiler (e.g. "
        "'apt-get install gcc') or point LTC_CONTROL_CC at one; set LTC_CONTROL_DISABLE_KERNEL=1 to silence "
        "this warning."
    )


_LAZY: kernels.LazyKernel[CfCKernel] = kernels.LazyKernel(
    lambda: _build(), CfCKernelUnavailableWarning, _message
)


def load_kernel() -> CfCKernel | None:
    """The compiled CfC kernel, built on first use; ``None`` when unavailable.

    The first failure issues one :class:`CfCKernelUnavailableWarning` naming the cause and the fix, and is
    remembered for the process (:func:`kernel_status`). ``LTC_CONTROL_DISABLE_KERNEL=1`` disables this kernel
    too, without a warning.
    """
    return _LAZY.load()


def kernel_status() -> str:
    """A one-line description of the CfC kernel's state (path loaded, or why it is unavailable)."""
    return _LAZY.status


def _reset_kernel_for_tests() -> None:
    """Forgets the loaded kernel so that the next use rebuilds/reloads it (fallback tests only)."""
    _LAZY.reset()


_ACT_CODES: dict[str, int] = {"LeCunTanh": 1, "Tanh": 2, "ReLU": 3, "SiLU": 4, "GELU": 5}


def _act_code(act: Any) -> int | None:
    """The kernel's code for a backbone activation module, ``None`` if the kernel has no such activation."""
    if act is None:
        return 0
    if isinstance(act, LeCunConstants):
        act = act.module
    if type(act).__name__ == "GELU" and getattr(act, "approximate", "none") != "none":
        return None
    return _ACT_CODES.get(type(act).__name__)


@dataclass
class Packed:
    """A plan flattened for the kernel: ``meta`` (int64) and every weight in one buffer (see cfc_kernel.c)."""

    meta: Tensor
    w: Tensor
    in_cell_order: bool  # the state is the cell's own order (else layer order: permute around the call)


def pack(plan: Plan, like: Tensor, layer_order: bool = False) -> Packed | None:
    """Packs ``plan`` (no gradients) for the kernel, or ``None`` where the kernel does not apply. The state is
    in the cell's order where the layers are contiguous blocks of it, else (or with ``layer_order``) in layer
    order."""
    act = plan.layers[0].act
    code = _act_code(act)
    if code is None or like.device.type != "cpu" or like.dtype not in (torch.float32, torch.float64):
        return None
    starts = None if layer_order else cell_layout(plan)
    if starts is None:
        starts = [sum(plan.sizes[:i]) for i in range(len(plan.layers))]
        in_cell_order = plan.perm is None
    else:
        in_cell_order = True
    n_total = sum(plan.sizes)
    meta = [
        0,
        0,
        int(plan.layers[0].wu.shape[1]),
        n_total,
        len(plan.layers),
        _MODE_CODES[plan.layers[0].mode],
        code,
        0,
    ]
    chunks: list[Tensor] = []
    off = 0
    f_off = 0
    s_off = 0
    maxw = n_total
    for l_id, lay in enumerate(plan.layers):
        parts = [lay.wu.t(), lay.wh.t(), lay.b0]
        units = 0
        if lay.head is not None:
            units = int(lay.head[0].shape[1])
            parts += [t for w, b in lay.mlp for t in (w.t(), b)]
            parts += [lay.head[0].t(), lay.head[1]]
        if lay.mode == "pure":
            assert lay.w_tau is not None and lay.A is not None
            parts += [lay.w_tau, lay.A]
        flat = torch.cat([t.reshape(-1) for t in parts]).to(like.dtype)
        in_off = -1 if l_id == 0 else starts[l_id - 1]
        meta += [lay.n, int(lay.wu.shape[1]), lay.width0, len(lay.mlp), units, starts[l_id], off, in_off]
        meta += [f_off, s_off]  # where the backward pass's values go in a save_f / save_s row
        maxw = max(maxw, lay.width0, units, lay.heads * lay.n)
        chunks.append(flat)
        off += flat.numel()
        f_off += lay.n if lay.mode == "pure" else 2 * lay.n
        s_off += lay.n
    if maxw > MAX_WIDTH:
        return None
    meta[0] = f_off
    meta[7] = maxw
    return Packed(
        torch.tensor(meta, dtype=torch.int64),
        torch.cat(chunks).contiguous(),
        in_cell_order,
    )


def kernel_run(
    kernel: CfCKernel,
    packed: Packed,
    x: Tensor,
    h: Tensor,
    ts: Tensor | float | None,
    resets: Tensor | None,
    save: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Runs the kernel on ``x (B, T, S)`` from ``h (B, N)`` (both in the kernel's state order, contiguous);
    ``ts`` is ``None`` (1.0), a float or ``(B, T)`` contiguous, ``resets`` ``(B, T)`` or ``None``; ``save``:
    contiguous ``(B, T, meta[0])`` and ``(B, T, N)`` buffers for the backward pass's values. Returns the
    states ``(B, T, N)``."""
    batch, steps = int(x.shape[0]), int(x.shape[1])
    out = torch.empty(batch, steps, int(h.shape[1]), dtype=x.dtype)
    ts_ptr = ts.data_ptr() if isinstance(ts, Tensor) else None
    rc = kernel.forward[x.dtype](
        packed.meta.data_ptr(),
        batch,
        steps,
        packed.w.data_ptr(),
        x.data_ptr(),
        h.data_ptr(),
        ts_ptr,
        1.0 if ts is None or isinstance(ts, Tensor) else float(ts),
        None if resets is None else resets.data_ptr(),
        out.data_ptr(),
        None if save is None else save[0].data_ptr(),
        None if save is None else save[1].data_ptr(),
    )
    if rc != 0:
        raise RuntimeError(f"the CfC kernel failed with code {rc} (meta {packed.meta.tolist()})")
    return out


def use_kernel(packed: Packed | None, *tensors: Tensor) -> CfCKernel | None:
    """The kernel if ``packed`` exists and every tensor is a CPU tensor of the packed dtype, else ``None``."""
    if packed is None:
        return None
    dtype = packed.w.dtype
    if any(t.dtype != dtype or t.device.type != "cpu" for t in tensors):
        return None
    return load_kernel()
