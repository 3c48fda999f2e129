"""The fused CUDA LTC kernels (``fused-cuda``), checked without and with a GPU.

Without a GPU the kernel source is compiled as C++20 (``tests/csrc/ltc_cuda_emu.cpp``): every thread block
runs on real threads with a barrier for ``__syncthreads()``, launched through the same Python glue as on the
GPU (argument arrays laid out like ``cuLaunchKernel``'s). The emulated implementation is registered for CPU
tensors and compared with the reference LTC on outputs and every gradient, over wirings, dtypes, batch sizes
(1 and more), sequence lengths (1 and more), scalar / per-sample ``dt``, episode resets, and block sizes
smaller than the wiring (strided loops) and larger (idle threads). With a GPU the same comparisons run on
CUDA with the NVRTC-compiled kernels.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ltc_control.cells import kernels, ltc_cuda
from ltc_control.cells import ltc as ltc_module
from ltc_control.cells.ltc import LTCCell, available_implementations
from ltc_control.cells.ltc_cuda import CsrEdges, CudaKernels, FusedCudaImplementation, ltc_sequence_cuda
from ltc_control.cells.ltc_fast import EdgeList
from ltc_control.wirings import NCP, AutoNCP, FullyConnected, Wiring, lane_keeping_ncp

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "ltc_control" / "cells" / "csrc" / "ltc_kernel_cuda.cu"


class _EmuLauncher:
    """Calls an emulated kernel with its arguments packed like ``cuLaunchKernel``'s kernelParams."""

    def __init__(self, fn: Any) -> None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        fn.restype = None
        self.fn = fn

    def __call__(
        self, grid: tuple[int, ...], block: tuple[int, ...], args: list[Any], shared_mem: int = 0
    ) -> None:
        values: list[Any] = []
        for a in args:
            if isinstance(a, torch.Tensor):
                values.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, int):
                values.append(ctypes.c_int(a))
            elif isinstance(a, float):
                values.append(ctypes.c_double(a))
            else:
                raise TypeError(f"unsupported kernel argument {type(a).__name__}")
        argv = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        self.fn(grid[0], block[0], shared_mem, argv)


@pytest.fixture(scope="module")
def emu_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The kernel source compiled for the CPU emulation (skips where no C++20 compiler is found)."""
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA-kernel emulation")
    out = tmp_path_factory.mktemp("ltc_cuda_emu") / "emu.so"
    cmd = [
        cxx,
        "-std=c++20",
        "-O1",
        "-pthread",
        "-shared",
        "-fPIC",
        f'-DLTC_CUDA_SOURCE="{SOURCE}"',
        "-o",
        str(out),
        str(REPO / "tests" / "csrc" / "ltc_cuda_emu.cpp"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0 and "barrier" in proc.stderr:
        pytest.skip(f"the C++ compiler lacks <barrier> (C++20): {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    return ctypes.CDLL(str(out))


def _emu_kernels(lib: ctypes.CDLL, block_threads: int | None, max_shared: int = 48 * 1024) -> CudaKernels:
    return CudaKernels(
        forward={
            torch.float32: _EmuLauncher(lib.emu_ltc_cuda_forward_f32),
            torch.float64: _EmuLauncher(lib.emu_ltc_cuda_forward_f64),
        },
        backward={
            torch.float32: _EmuLauncher(lib.emu_ltc_cuda_backward_f32),
            torch.float64: _EmuLauncher(lib.emu_ltc_cuda_backward_f64),
        },
        where="CPU emulation",
        block_threads=block_threads,
        max_shared=max_shared,
    )


@pytest.fixture
def emu_impl(emu_lib: ctypes.CDLL) -> Iterator[dict[str, str]]:
    """Emulated implementations registered for CPU tensors: a block of 5 threads (strided loops) keeping the
    gradient accumulators in global memory, and one of 32 (idle threads) keeping them in shared memory."""
    names = {}
    for threads, max_shared in ((5, 0), (32, 1 << 20)):
        name = f"fused-cuda-emu{threads}"
        kernels = _emu_kernels(emu_lib, threads, max_shared)
        impl = FusedCudaImplementation(kernels=kernels, device_types=("cpu",))
        ltc_module.register_implementation(name, impl, priority=-100)
        names[str(threads)] = name
    yield names
    for name in names.values():
        ltc_module.unregister_implementation(name)


WIRINGS = {
    "lane_keeping_ncp": lambda: lane_keeping_ncp(seed=3),
    "fully_connected_8": lambda: FullyConnected(8, input_size=5, output_size=2, seed=1),
    "auto_ncp_12": lambda: AutoNCP(12, 2, input_size=4, seed=5),
    "tiny_ncp": lambda: NCP(
        inter=3,
        command=2,
        motor=1,
        sensory_fanout=2,
        inter_fanout=1,
        recurrent_command_synapses=2,
        motor_fanin=2,
        input_size=3,
        seed=7,
    ),
}


def _pair(wiring: Wiring, impl: str, dtype: torch.dtype, device: str = "cpu") -> tuple[LTCCell, LTCCell]:
    torch.manual_seed(0)
    ref = LTCCell(wiring, implementation="reference").to(dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fast = LTCCell(wiring, implementation=impl).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref.to(device), fast.to(device)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual, expected = actual.cpu(), expected.cpu()
    if expected.dtype == torch.float64:
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12, msg=lambda m: f"{what}: {m}")
    else:
        scale = float(expected.abs().max()) if expected.numel() else 1.0
        torch.testing.assert_close(
            actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-6), msg=lambda m: f"{what}: {m}"
        )


def _run(cell: LTCCell, x: torch.Tensor, h0: torch.Tensor, dt: object, starts: torch.Tensor | None) -> dict:
    cell.zero_grad()
    x = x.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    dt_in = dt.clone().requires_grad_(True) if isinstance(dt, torch.Tensor) else dt
    y, h_t = cell.forward_sequence(x, h0, dt=dt_in, episode_starts=starts)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(123)
    wy = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
    wh = torch.randn(h_t.shape, generator=gen, dtype=y.dtype).to(y.device)
    ((y * wy).sum() + (h_t * wh).sum()).backward()
    out = {"y": y.detach(), "h_T": h_t.detach(), "grad_x": x.grad, "grad_h0": h0.grad}
    if isinstance(dt_in, torch.Tensor):
        out["grad_dt"] = dt_in.grad
    for name, p in cell.named_parameters():
        out[f"grad_{name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    return out


def _check_against_reference(impl: str, wiring_name: str, dtype: torch.dtype, device: str) -> None:
    wiring = WIRINGS[wiring_name]()
    ref, fast = _pair(wiring, impl, dtype, device)
    gen = torch.Generator().manual_seed(1)
    cases: list[tuple[int, int, object, bool]] = [
        (1, 1, 1.0, False),  # batch 1, one step
        (3, 4, 0.25, True),  # scalar dt, resets
        (2, 3, "per_sample", True),  # per-sample dt (its gradient checked too)
    ]
    for b, t, dt_kind, with_starts in cases:
        x = torch.randn(b, t, wiring.input_size, generator=gen, dtype=dtype).to(device)
        h0 = (0.3 * torch.randn(b, wiring.units, generator=gen, dtype=dtype)).to(device)
        dt: object = (
            (torch.rand(b, t, generator=gen, dtype=dtype) + 0.2).to(device)
            if dt_kind == "per_sample"
            else dt_kind
        )
        starts = (torch.rand(b, t, generator=gen) < 0.3).to(dtype).to(device) if with_starts else None
        expected = _run(ref, x, h0, dt, starts)
        actual = _run(fast, x, h0, dt, starts)
        assert fast.implementation_name == impl
        for key, value in expected.items():
            _assert_close(actual[key], value, f"{impl} {wiring_name} {dtype} B={b} T={t} {key}")


@pytest.mark.parametrize("threads", ["5", "32"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("wiring_name", list(WIRINGS))
def test_emulated_kernel_matches_reference(
    emu_impl: dict[str, str], threads: str, dtype: torch.dtype, wiring_name: str
) -> None:
    if threads == "32" and wiring_name in ("fully_connected_8", "auto_ncp_12"):
        pytest.skip("the 32-thread block is checked on the NCPs (enough for the idle-thread case)")
    _check_against_reference(emu_impl[threads], wiring_name, dtype, "cpu")


def test_emulated_single_step_and_no_grad_match_reference(emu_impl: dict[str, str]) -> None:
    wiring = lane_keeping_ncp(seed=4)
    ref, fast = _pair(wiring, emu_impl["5"], torch.float32)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 32, generator=gen)
    h = 0.2 * torch.randn(2, 19, generator=gen)
    with torch.no_grad():
        y_r, h_r = ref(x, h, 0.1)
        y_f, h_f = fast(x, h, 0.1)
        for _ in range(3):
            y_r, h_r = ref(x, h_r, 1 / 30)
            y_f, h_f = fast(x, h_f, 1 / 30)
    _assert_close(y_f, y_r, "no-grad step y")
    _assert_close(h_f, h_r, "no-grad step h")
    y_r, h_r = ref(x, h, 0.1)
    y_f, h_f = fast(x, h, 0.1)
    (y_r.sum() + h_r.square().sum()).backward()
    (y_f.sum() + h_f.square().sum()).backward()
    for (name, p_r), p_f in zip(ref.named_parameters(), fast.parameters()):
        _assert_close(p_f.grad, p_r.grad, f"step grad {name}")  # type: ignore[arg-type]


def test_emulated_kernel_state_stays_bounded_for_extreme_inputs(emu_lib: ctypes.CDLL) -> None:
    """Inputs of 1e6 and a long dt: states stay finite and inside the reversal-potential range."""
    wiring = lane_keeping_ncp(seed=0)
    cell = LTCCell(wiring, implementation="reference")
    params = [cell.effective_parameters()[k] for k in ltc_cuda.PARAM_NAMES]
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    x = torch.tensor([1e6, -1e6]).repeat(1, 20, 16)
    h0 = torch.zeros(1, 19)
    with torch.no_grad():
        states = ltc_sequence_cuda(
            x, h0, torch.full((1, 1), 50.0), None, params, edges, 6, 1e-8, _emu_kernels(emu_lib, 7)
        )
    erev = torch.cat([params[3].flatten(), params[10].flatten(), params[1]])
    assert torch.isfinite(states).all()
    assert float(states.max()) <= float(erev.detach().max()) + 1e-4
    assert float(states.min()) >= min(float(erev.detach().min()), 0.0) - 1e-4


def test_csr_edges_group_every_synapse_once() -> None:
    wiring = AutoNCP(12, 2, input_size=4, seed=5)
    cell = LTCCell(wiring)
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    csr = CsrEdges.from_edge_list(edges)
    n = wiring.units
    dst = torch.repeat_interleave(torch.arange(n), torch.diff(csr.rowptr.long()))
    assert sorted(zip(csr.src.tolist(), dst.tolist())) == sorted(zip(edges.src.tolist(), edges.dst.tolist()))
    assert torch.equal(csr.flat, csr.src.long() * n + dst)
    # outgoing groups: every synapse exactly once, under its presynaptic neuron
    assert sorted(csr.outidx.tolist()) == list(range(csr.num_edges))
    for i in range(n):
        group = csr.outidx[csr.outptr[i] : csr.outptr[i + 1]].long()
        assert bool((csr.src[group] == i).all())
    for k in range(wiring.input_size):
        group = csr.soutidx[csr.soutptr[k] : csr.soutptr[k + 1]].long()
        assert bool((csr.ssrc[group] == k).all())


def test_bad_arguments_name_the_problem(emu_lib: ctypes.CDLL) -> None:
    wiring = lane_keeping_ncp(seed=0)
    cell = LTCCell(wiring)
    params = [cell.effective_parameters()[k] for k in ltc_cuda.PARAM_NAMES]
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    kernels = _emu_kernels(emu_lib, 8)
    x, h0, dt = torch.zeros(2, 3, 32), torch.zeros(2, 19), torch.ones(1, 1)
    with pytest.raises(ValueError, match="x must be"):
        ltc_sequence_cuda(torch.zeros(2, 3, 31), h0, dt, None, params, edges, 6, 1e-8, kernels)
    with pytest.raises(ValueError, match="h0 must be"):
        ltc_sequence_cuda(x, torch.zeros(2, 18), dt, None, params, edges, 6, 1e-8, kernels)
    with pytest.raises(ValueError, match="one dtype"):
        ltc_sequence_cuda(x.double(), h0, dt, None, params, edges, 6, 1e-8, kernels)
    with pytest.raises(ValueError, match="unfolds"):
        ltc_sequence_cuda(x, h0, dt, None, params, edges, 0, 1e-8, kernels)


def test_registered_but_not_available_on_cpu() -> None:
    assert "fused-cuda" in available_implementations()
    assert "fused-cuda" not in available_implementations("cpu")
    cell = LTCCell(lane_keeping_ncp(seed=0))
    assert cell.implementation_name != "fused-cuda"


def test_cached_binary_is_rebuilt_when_missing_or_damaged(tmp_path: Path) -> None:
    """The compiled-kernel cache: built once, reused, and a truncated / damaged file is rebuilt and replaced
    (the CUDA module loader rejects it) instead of disabling the kernel; an unwritable cache still loads."""
    built: list[int] = []

    def build() -> bytes:
        built.append(1)
        return b"GOOD-CUBIN"

    def load(binary: bytes) -> dict[str, bool]:
        if binary != b"GOOD-CUBIN":
            raise RuntimeError("CUDA error: device kernel image is invalid")
        return {"loaded": True}

    target = tmp_path / "cache" / "ltc_kernel_cuda_sm90_x.cubin"
    assert kernels.load_cached_binary(target, build, load) == {"loaded": True}
    assert len(built) == 1 and target.read_bytes() == b"GOOD-CUBIN"
    assert kernels.load_cached_binary(target, build, load) == {"loaded": True} and len(built) == 1
    target.write_bytes(b"GOOD-")  # truncated by outside damage
    assert kernels.load_cached_binary(target, build, load) == {"loaded": True} and len(built) == 2
    assert target.read_bytes() == b"GOOD-CUBIN"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp file left
    target.write_bytes(b"")  # empty
    kernels.load_cached_binary(target, build, load)
    assert len(built) == 3 and target.read_bytes() == b"GOOD-CUBIN"

    def failing_build() -> bytes:
        raise RuntimeError("NVRTC compilation failed: error in line 1")

    target.write_bytes(b"junk")
    with pytest.raises(RuntimeError, match="NVRTC compilation failed"):  # the caller warns and falls back
        kernels.load_cached_binary(target, failing_build, load)
    (tmp_path / "file").write_text("not a folder")
    blocked = tmp_path / "file" / "k.cubin"  # the cache folder cannot be created
    assert kernels.load_cached_binary(blocked, build, load) == {"loaded": True}


def test_compile_failure_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed NVRTC build degrades to the PyTorch path with one warning naming the cause."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def broken(device: object = None) -> CudaKernels:
        raise RuntimeError("NVRTC could not compile ltc_kernel_cuda.cu: test failure")

    monkeypatch.setattr(ltc_cuda, "compile_cuda_kernels", broken)
    monkeypatch.setattr(ltc_cuda, "_LOADED", {})
    monkeypatch.delenv("LTC_CONTROL_DISABLE_CUDA_KERNEL", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ltc_cuda.load_cuda_kernels("cuda:0") is None
        assert ltc_cuda.load_cuda_kernels("cuda:0") is None
    relevant = [w for w in caught if issubclass(w.category, ltc_cuda.LTCCudaKernelUnavailableWarning)]
    assert len(relevant) == 1
    assert "test failure" in str(relevant[0].message)
    assert "test failure" in ltc_cuda.cuda_kernel_status()
    assert not FusedCudaImplementation().available(torch.device("cuda", 0))
    monkeypatch.setenv("LTC_CONTROL_DISABLE_CUDA_KERNEL", "1")
    assert ltc_cuda.load_cuda_kernels("cuda:0") is None
    assert "disabled" in ltc_cuda.cuda_kernel_status()


# ------------------------------------------------------------------------------------------------ real GPU
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("wiring_name", list(WIRINGS))
def test_cuda_kernel_matches_reference_on_gpu(dtype: torch.dtype, wiring_name: str) -> None:
    assert ltc_cuda.load_cuda_kernels() is not None, ltc_cuda.cuda_kernel_status()
    _check_against_reference("fused-cuda", wiring_name, dtype, "cuda")


@cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_cuda_kernel_wide_wiring_on_gpu(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """More synapses than threads a block (strided synapse loops) on the real GPU."""
    monkeypatch.setitem(WIRINGS, "fc40", lambda: FullyConnected(40, input_size=7, output_size=2, seed=0))
    _check_against_reference("fused-cuda", "fc40", dtype, "cuda")


def test_block_size_is_capped() -> None:
    kernels = CudaKernels(forward={}, backward={}, where="test")
    assert kernels.threads(19, 32, 192) == 192
    assert kernels.threads(64, 32, 4096) == 256
    assert kernels.threads(3, 2, 1) == 32


@cuda
def test_auto_picks_fused_cuda_on_gpu() -> None:
    cell = LTCCell(lane_keeping_ncp(seed=0)).cuda()
    y, _ = cell.forward_sequence(torch.randn(4, 8, 32, device="cuda"))
    assert cell.implementation_name == "fused-cuda", ltc_cuda.cuda_kernel_status()
    assert y.device.type == "cuda" and bool(torch.isfinite(y).all())
