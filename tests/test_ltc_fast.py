"""The fast LTC paths (compiled kernel ``fused-c`` and pure-PyTorch ``torch-edges``) against the reference.

Parity is checked on outputs, final states and the gradients of every parameter, the inputs and the initial
state, across wirings, batch sizes (1, a full 16-lane chunk plus a partial one), sequence lengths (1 and
more), scalar / per-sample dt and episode resets, in float64 (tight) and float32 (1e-5 relative to the
largest value).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from ltc_control.cells import kernels, ltc_fast, ltc_fused
from ltc_control.cells.ltc import LTCCell
from ltc_control.cells.ltc_fast import EdgeList, LTCKernelUnavailableWarning
from ltc_control.wirings import AutoNCP, FullyConnected, Wiring, lane_keeping_ncp

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kernel() -> ltc_fused.LTCKernel:
    """The compiled kernel, built once for this module (into the user cache; a second run only loads it)."""
    k = ltc_fast.load_kernel()
    if k is None:
        pytest.skip(f"no C compiler here: {ltc_fast.kernel_status()}")
    return k


def _kernel_params(cell: LTCCell) -> list[torch.Tensor]:
    """The cell's effective parameters in the kernel's argument order."""
    effective = cell.effective_parameters()
    return [effective[k] for k in ltc_fast.PARAM_NAMES]


WIRINGS = {
    "lane_keeping_ncp": lambda: lane_keeping_ncp(seed=3),
    "fully_connected_8": lambda: FullyConnected(8, input_size=5, output_size=2, seed=1),
    "auto_ncp_12": lambda: AutoNCP(12, 2, input_size=4, seed=5),
}


def _pair(wiring: Wiring, impl: str, dtype: torch.dtype, seed: int = 0) -> tuple[LTCCell, LTCCell]:
    torch.manual_seed(seed)
    ref = LTCCell(wiring, implementation="reference").to(dtype)
    # perturb every parameter so that no symmetry (ones, zeros) hides an indexing error
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fast = LTCCell(wiring, implementation=impl).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
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
    y, h_t = cell.forward_sequence(x, h0, dt=dt, episode_starts=starts)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(123)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum() + (
        h_t * torch.randn(h_t.shape, generator=gen, dtype=y.dtype)
    ).sum()
    loss.backward()
    out = {"y": y.detach(), "h_T": h_t.detach(), "grad_x": x.grad, "grad_h0": h0.grad}
    for name, p in cell.named_parameters():
        out[f"grad_{name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    return out


@pytest.mark.parametrize("impl", ["fused-c", "torch-edges"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("wiring_name", list(WIRINGS))
def test_sequence_outputs_and_gradients_match_reference(
    kernel: object, impl: str, dtype: torch.dtype, wiring_name: str
) -> None:
    wiring = WIRINGS[wiring_name]()
    ref, fast = _pair(wiring, impl, dtype)
    gen = torch.Generator().manual_seed(1)
    cases: list[tuple[int, int, object, bool]] = [
        (1, 1, 1.0, False),  # batch 1, one step
        (3, 5, 0.25, True),  # scalar dt, resets
        (17, 4, "per_sample", True),  # a full 16-lane chunk + a partial one, per-sample dt
    ]
    for b, t, dt_kind, with_starts in cases:
        x = torch.randn(b, t, wiring.input_size, generator=gen, dtype=dtype)
        h0 = 0.3 * torch.randn(b, wiring.units, generator=gen, dtype=dtype)
        dt: object = (
            (torch.rand(b, t, generator=gen, dtype=dtype) + 0.2) if dt_kind == "per_sample" else dt_kind
        )
        starts = (torch.rand(b, t, generator=gen) < 0.3).to(dtype) if with_starts else None
        expected = _run(ref, x, h0, dt, starts)
        actual = _run(fast, x, h0, dt, starts)
        assert fast.implementation_name == impl
        for key, value in expected.items():
            _assert_close(actual[key], value, f"{impl} {wiring_name} B={b} T={t} {key}")


@pytest.mark.parametrize("impl", ["fused-c", "torch-edges"])
def test_single_step_with_and_without_grad_matches_reference(kernel: object, impl: str) -> None:
    wiring = lane_keeping_ncp(seed=4)
    ref, fast = _pair(wiring, impl, torch.float32, seed=2)
    gen = torch.Generator().manual_seed(9)
    for b in (1, 5):
        x = torch.randn(b, 32, generator=gen)
        h = 0.2 * torch.randn(b, 19, generator=gen)
        dt = torch.rand(b, generator=gen) + 0.05
        with torch.no_grad():
            y_r, h_r = ref(x, h, dt)
            # a control loop: state carried in over several steps, cache reused between calls
            y_f, h_f = fast(x, h, dt)
            for _ in range(3):
                y_r, h_r = ref(x, h_r, 1 / 30)
                y_f, h_f = fast(x, h_f, 1 / 30)
        _assert_close(y_f, y_r, f"{impl} no-grad step y B={b}")
        _assert_close(h_f, h_r, f"{impl} no-grad step h B={b}")
        # with gradients, one step through autograd
        ref.zero_grad()
        fast.zero_grad()
        y_r, h_r = ref(x, h, dt)
        y_f, h_f = fast(x, h, dt)
        (y_r.sum() + h_r.square().sum()).backward()
        (y_f.sum() + h_f.square().sum()).backward()
        _assert_close(h_f.detach(), h_r.detach(), f"{impl} grad-mode step h")
        for (name, p_r), p_f in zip(ref.named_parameters(), fast.parameters()):
            assert p_r.grad is not None and p_f.grad is not None, name
            _assert_close(p_f.grad, p_r.grad, f"{impl} step grad {name}")


def test_no_grad_step_sees_parameter_updates(kernel: object) -> None:
    """The cached parameter pointers must follow in-place optimizer updates."""
    ref, fast = _pair(lane_keeping_ncp(seed=1), "fused-c", torch.float32)
    x, h = torch.randn(1, 32), torch.zeros(1, 19)
    with torch.no_grad():
        fast(x, h)
        for model in (ref, fast):
            model.w.add_(0.5)
            model.sensory_mu.mul_(0.9)
        _assert_close(fast(x, h)[1], ref(x, h)[1], "after in-place update")


@pytest.fixture
def small_batch_limit(kernel: ltc_fused.LTCKernel) -> Iterator[ltc_fused.LTCKernel]:
    """The kernel, with both dtypes' small-batch limits restored to their defaults afterwards."""
    yield kernel
    for dtype in (torch.float32, torch.float64):
        kernel.set_small_batch_limit(dtype, None)


@pytest.mark.parametrize("limit", [0, None])
def test_kernel_gradcheck_float64(
    kernel: ltc_fused.LTCKernel, small_batch_limit: ltc_fused.LTCKernel, tiny_ncp: Wiring, limit: int | None
) -> None:
    """The hand-written backward against finite differences, including dt and the resets, on both paths:
    batch lanes (limit 0) and the small-batch path, sample by sample (the default limit covers B = 2)."""
    kernel.set_small_batch_limit(torch.float64, limit)
    torch.manual_seed(0)
    wiring = tiny_ncp
    cell = LTCCell(wiring).double()
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.1 * torch.randn_like(p))
    params = {
        k: v.detach().clone().requires_grad_(v.dtype.is_floating_point)
        for k, v in cell.effective_parameters().items()
    }
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    names = list(ltc_fast.PARAM_NAMES)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    dt = (torch.rand(2, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    starts = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    def fn(x: torch.Tensor, h0: torch.Tensor, dt: torch.Tensor, *p: torch.Tensor) -> torch.Tensor:
        return ltc_fast.ltc_sequence_kernel(x, h0, dt, starts, p, edges, 3, 1e-8)

    assert torch.autograd.gradcheck(fn, (x, h0, dt, *[params[n] for n in names]), eps=1e-6, atol=1e-7)


def _path_results(
    kernel: ltc_fused.LTCKernel, cell: LTCCell, limits: tuple[int | None, int | None], args: tuple
) -> list[torch.Tensor]:
    """Outputs and every gradient of one forward (small-batch limit ``limits[0]``) and backward
    (``limits[1]``)."""
    x, h0, dt, starts = args
    dtype = x.dtype
    cell.zero_grad()
    x = x.clone().requires_grad_(True)
    h0 = h0.clone().requires_grad_(True)
    dt = dt.clone().requires_grad_(True)
    kernel.set_small_batch_limit(dtype, limits[0])
    y, _ = cell.forward_sequence(x, h0, dt=dt, episode_starts=starts)
    kernel.set_small_batch_limit(dtype, limits[1])
    weights = torch.linspace(-1.0, 1.0, y.numel(), dtype=dtype).view_as(y)
    (y * weights).sum().backward()
    grads = [x.grad, h0.grad, dt.grad] + [p.grad for p in cell.parameters() if p.requires_grad]
    return [y.detach()] + [g.clone() for g in grads if g is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("wiring_name", list(WIRINGS))
def test_small_batch_path_equals_the_lane_path(
    kernel: ltc_fused.LTCKernel, small_batch_limit: ltc_fused.LTCKernel, dtype: torch.dtype, wiring_name: str
) -> None:
    """Batches up to the small-batch limit run sample by sample, vectorised over synapses: the same states bit
    for bit as the batch-lane path (same summation order), the same gradients of the inputs, initial states
    and dt bit for bit, the parameter gradients up to the order of their double sums (sample-major here,
    step-major there), and a forward on one path followed by a backward on the other gives them too (the
    stored unfold states are laid out alike)."""
    wiring = WIRINGS[wiring_name]()
    _, cell = _pair(wiring, "fused-c", dtype, seed=2)
    lanes = kernel.lanes[dtype]
    default = kernel.set_small_batch_limit(dtype, None)
    assert 1 <= default < lanes
    gen = torch.Generator().manual_seed(7)
    for b in (1, 3, default):
        t = 6
        args = (
            torch.randn(b, t, wiring.input_size, generator=gen, dtype=dtype),
            0.3 * torch.randn(b, wiring.units, generator=gen, dtype=dtype),
            torch.rand(b, t, generator=gen, dtype=dtype) + 0.2,
            (torch.rand(b, t, generator=gen) < 0.3).to(dtype),
        )
        lane = _path_results(kernel, cell, (0, 0), args)
        for limits in ((None, None), (0, None), (None, 0)):
            other = _path_results(kernel, cell, limits, args)
            assert torch.equal(other[0], lane[0]), f"B={b} limits {limits}: states differ"
            # the gradients of x, h0 and dt are per sample: the same arithmetic in the same order
            for i, (a, e) in enumerate(zip(other[1:4], lane[1:4], strict=True)):
                assert torch.equal(a, e), f"B={b} limits {limits}: input gradient {i} differs"
            # the parameter gradients' double sums run sample-major instead of step-major
            for a, e in zip(other[4:], lane[4:], strict=True):
                if dtype == torch.float32:
                    torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-9)
                else:
                    torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-14)


def test_small_batch_limit_setter(
    kernel: ltc_fused.LTCKernel, small_batch_limit: ltc_fused.LTCKernel
) -> None:
    """The setter returns the previous limit, clamps to [0, lanes], restores the default with None and names
    a dtype the kernel lacks."""
    for dtype in (torch.float32, torch.float64):
        default = kernel.set_small_batch_limit(dtype, 3)
        assert kernel.set_small_batch_limit(dtype, 1000) == 3
        assert kernel.set_small_batch_limit(dtype, -5) == kernel.lanes[dtype]
        assert kernel.set_small_batch_limit(dtype, None) == 0
        assert kernel.set_small_batch_limit(dtype, None) == default
    with pytest.raises(ValueError, match="float16"):
        kernel.set_small_batch_limit(torch.float16, 1)


def test_masked_synapses_get_zero_gradient(kernel: object) -> None:
    wiring = lane_keeping_ncp(seed=2)
    _, fast = _pair(wiring, "fused-c", torch.float32)
    y, _ = fast.forward_sequence(torch.randn(4, 6, 32))
    y.square().sum().backward()
    mask = fast.sparsity_mask.bool()
    smask = fast.sensory_sparsity_mask.bool()
    for name in ("w", "sigma", "mu", "erev"):
        grad = getattr(fast, name).grad
        assert float(grad[~mask].abs().max()) == 0.0, name
        assert float(grad[mask].abs().max()) > 0.0, name
    for name in ("sensory_w", "sensory_sigma", "sensory_mu", "sensory_erev"):
        grad = getattr(fast, name).grad
        assert float(grad[~smask].abs().max()) == 0.0, name
        assert float(grad[smask].abs().max()) > 0.0, name


def test_auto_picks_the_kernel_and_edge_list_counts_synapses(kernel: object) -> None:
    wiring = lane_keeping_ncp(seed=0)
    cell = LTCCell(wiring)
    assert cell.implementation_name == "fused-c"
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    assert edges.num_synapses == wiring.num_synapses
    assert edges.src.numel() == wiring.num_recurrent_synapses
    assert edges.sensory_src.numel() == wiring.num_sensory_synapses


def test_edge_list_rejects_bad_masks() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        EdgeList.from_masks(torch.full((3, 3), 0.5), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        EdgeList.from_masks(torch.ones(3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(S, N=3\)"):
        EdgeList.from_masks(torch.ones(3, 3), torch.ones(2, 4))


# The cache-mechanics tests build an unoptimised kernel: -O0 compiles in a fraction of the -O3 time.
FAST_CFLAGS = "-O0"


@pytest.fixture
def fresh_kernel_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """An empty cache dir and a forgotten kernel; restores the normal kernel afterwards."""
    monkeypatch.setenv("LTC_CONTROL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LTC_CONTROL_CFLAGS", FAST_CFLAGS)
    ltc_fused._reset_kernel_for_tests()
    yield tmp_path / "cache"
    ltc_fused._reset_kernel_for_tests()


def test_missing_compiler_falls_back_with_one_warning(
    fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LTC_CONTROL_CC", "/nonexistent/bin/cc")
    wiring = lane_keeping_ncp(seed=0)
    ref, _ = _pair(wiring, "reference", torch.float32)
    x = torch.randn(2, 3, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells = [LTCCell(wiring), LTCCell(wiring)]
        outs = []
        for cell in cells:
            cell.load_state_dict(ref.state_dict())
            outs.append(cell.forward_sequence(x)[0])
            assert cell.implementation_name == "torch-edges"
    kernel_warnings = [w for w in caught if issubclass(w.category, LTCKernelUnavailableWarning)]
    assert len(kernel_warnings) == 1, [str(w.message) for w in caught]
    message = str(kernel_warnings[0].message)
    assert "/nonexistent/bin/cc" in message and "LTC_CONTROL_CC" in message
    assert "unavailable" in ltc_fast.kernel_status()
    expected = ref.forward_sequence(x)[0]
    for out in outs:
        _assert_close(out.detach(), expected.detach(), "fallback output")
    with pytest.raises(ValueError, match="not available"):
        LTCCell(wiring, implementation="fused-c").forward_sequence(x)


def test_failed_build_falls_back(fresh_kernel_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a "compiler" that runs but fails, like a broken toolchain
    monkeypatch.setenv("LTC_CONTROL_CC", f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.warns(LTCKernelUnavailableWarning, match="exited with 3"):
        assert ltc_fast.load_kernel() is None
    assert not any(fresh_kernel_state.glob("*.so")), "a failed build must not leave a library behind"


def test_corrupt_cached_library_is_rebuilt(kernel: object, fresh_kernel_state: Path) -> None:
    compiler = kernels.compiler_command()
    key = kernels.source_hash(
        compiler, kernels.flag_sets()[0], ltc_fused.KERNEL_SOURCES, ltc_fused.KERNEL_ABI
    )
    target = fresh_kernel_state / f"ltc_kernel_{key}.so"
    fresh_kernel_state.mkdir(parents=True)
    target.write_bytes(b"not a shared library")
    k = ltc_fast.load_kernel()
    assert k is not None and k.path == target
    assert target.read_bytes()[:4] == b"\x7fELF"
    # and the rebuilt (unoptimised) kernel computes the same numbers
    ref, fast = _pair(lane_keeping_ncp(seed=0), "fused-c", torch.float64)
    x = torch.randn(3, 4, 32, dtype=torch.float64)
    _assert_close(fast.forward_sequence(x)[0].detach(), ref.forward_sequence(x)[0].detach(), "-O0 kernel")


def test_concurrent_builds_do_not_corrupt_the_cache(kernel: object, tmp_path: Path) -> None:
    """Two processes building into the same empty cache at once: both load a working kernel, one file
    remains."""
    cache = tmp_path / "cache"
    code = (
        "import torch; from ltc_control.cells import ltc_fast as f; k = f.load_kernel(); "
        "assert k is not None, f.kernel_status(); print(k.path)"
    )
    env = {**os.environ, "LTC_CONTROL_CACHE_DIR": str(cache), "LTC_CONTROL_CFLAGS": FAST_CFLAGS}
    env.pop("LTC_CONTROL_CC", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    assert [p.name for p in cache.iterdir() if p.suffix == ".so"] == [Path(paths.pop()).name]
    assert not list(cache.glob(".ltc_kernel_*")), "temporary build files must not be left behind"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_one_inference_sequence_matches_reference(kernel: object, dtype: torch.dtype) -> None:
    """Batch 1 without gradients runs the synapse-vectorised kernel branch: resets and per-step dt
    included."""
    ref, fast = _pair(lane_keeping_ncp(seed=6), "fused-c", dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 7, 32, generator=gen, dtype=dtype)
    h0 = 0.2 * torch.randn(1, 19, generator=gen, dtype=dtype)
    dt = torch.rand(1, 7, generator=gen, dtype=dtype) + 0.1
    starts = torch.tensor([[0, 0, 1, 0, 0, 1, 0]], dtype=dtype)
    with torch.no_grad():
        y_r, h_r = ref.forward_sequence(x, h0, dt=dt, episode_starts=starts)
        y_f, h_f = fast.forward_sequence(x, h0, dt=dt, episode_starts=starts)
    _assert_close(y_f, y_r, "batch-1 sequence y")
    _assert_close(h_f, h_r, "batch-1 sequence h")


def test_bench_cli_smoke(kernel: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ltc-control bench ltc`` on a tiny budget: report, JSON, and ours equal to ncps on its weights."""
    pytest.importorskip("ncps")
    from ltc_control.cli import bench_main

    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = [
        "ltc",
        "--configs",
        "ncp19",
        "--batch",
        "2",
        "--steps",
        "3",
        "--repeats",
        "1",
        "--min-time",
        "0.001",
    ]
    argv += ["--no-memory", "--slow-configs", "", "--json", str(out_json), "--markdown", str(out_md)]
    assert bench_main(argv) == 0
    import json

    result = json.loads(out_json.read_text())
    entry = result["configs"]["ncp19"]
    assert entry["synapses"] == lane_keeping_ncp().num_synapses
    assert entry["implementation"] == "fused-c"
    assert entry["max_abs_diff_vs_ncps"] < 1e-5
    assert set(entry["models"]) == {"ncps", "fused-c", "lstm", "ncps-cfc", "cfc"}
    assert entry["max_abs_diff_cfc_vs_ncps_cfc"] < 1e-5
    fused = entry["models"]["fused-c"]["cpu"]
    assert fused["forward_seq_per_s"] > 0
    assert fused["seqstep_us"] > 0 and fused["policy_act_us"] > 0
    assert entry["ratios"]["cpu"]["cfc_step_vs_ncps_cfc"] > 0
    report = out_md.read_text()
    assert "fused-c vs ncps" in report and "wired CfC" in report and "`Policy.act`" in report
    assert bench_main(["nonexistent"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_control_step_matches_cell_and_validates(kernel: object) -> None:
    """LTCControlStep == cell(x, h, dt) (float and per-sample dt, batch 1 and 3), sees parameter updates,
    rejects NaN inputs, bad shapes and dt <= 0."""
    _, cell = _pair(lane_keeping_ncp(seed=8), "fused-c", torch.float32, seed=5)
    step = ltc_fast.LTCControlStep(cell)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for b, dt in ((1, 1 / 30), (3, torch.tensor([0.1, 0.5, 1.0])), (1, 2.0)):
            x = torch.randn(b, 32, generator=gen)
            h = 0.2 * torch.randn(b, 19, generator=gen)
            y_c, h_c = cell(x, h, dt)
            y_s, h_s = step(x, h, dt)
            _assert_close(y_s, y_c, f"control step y B={b}")
            _assert_close(h_s, h_c, f"control step h B={b}")
        cell.output_b.add_(1.0)
        cell.w.mul_(1.5)
        _assert_close(step(x, h)[0], cell(x, h)[0], "after parameter update")
        _assert_close(step(x)[1], cell(x)[1], "default zero state")
    with pytest.raises(ValueError, match="non-finite"):
        step(torch.full((1, 32), float("nan")), torch.zeros(1, 19))
    with pytest.raises(ValueError, match="input_size=32"):
        step(torch.zeros(1, 31), torch.zeros(1, 19))
    with pytest.raises(ValueError, match="state_size=19"):
        step(torch.zeros(1, 32), torch.zeros(1, 18))
    with pytest.raises(ValueError, match="dt must be"):
        step(torch.zeros(1, 32), torch.zeros(1, 19), dt=0.0)
    with pytest.raises(ValueError, match="LTCCell"):
        ltc_fast.LTCControlStep(torch.nn.Linear(2, 2))


def test_cells_stepping_in_turn_keep_their_own_parameters(kernel: object) -> None:
    """One registered implementation serves every cell: alternating cells must not mix up cached pointers."""
    ref_a, fast_a = _pair(lane_keeping_ncp(seed=1), "fused-c", torch.float32, seed=10)
    ref_b, fast_b = _pair(lane_keeping_ncp(seed=2), "fused-c", torch.float32, seed=11)
    x = torch.randn(1, 32)
    h_a = h_b = torch.zeros(1, 19)
    g_a = g_b = torch.zeros(1, 19)
    with torch.no_grad():
        for _ in range(3):
            h_a, h_b = fast_a(x, h_a)[1], fast_b(x, h_b)[1]
            g_a, g_b = ref_a(x, g_a)[1], ref_b(x, g_b)[1]
    _assert_close(h_a, g_a, "cell a")
    _assert_close(h_b, g_b, "cell b")
    assert float((h_a - h_b).abs().max()) > 1e-3


def test_training_step_frees_its_memory_without_the_cyclic_gc(kernel: object) -> None:
    """The kernel's outputs and autograd graph must be freed by reference counting alone (no ctx cycles)."""
    import gc
    import weakref

    cell = LTCCell(lane_keeping_ncp(seed=0))
    params = [p.detach().clone().requires_grad_(True) for p in _kernel_params(cell)]
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    gc.disable()
    try:
        states = ltc_fast.ltc_sequence_kernel(
            torch.randn(4, 5, 32), torch.zeros(4, 19), torch.ones(1, 1), None, params, edges, 6, 1e-8
        )
        alive = weakref.ref(states)
        states.sum().backward()
        del states
        assert alive() is None, "the output survived: a reference cycle through the autograd ctx holds it"
    finally:
        gc.enable()


def test_kernel_entry_rejects_bad_arguments(kernel: object, tiny_ncp: Wiring) -> None:
    """The C kernel trusts its pointers, so its Python entry checks every shape and dtype first."""
    cell = LTCCell(tiny_ncp)
    params = _kernel_params(cell)
    edges = EdgeList.from_masks(cell.sparsity_mask, cell.sensory_sparsity_mask)
    x, h0, dt = torch.randn(2, 4, 3), torch.zeros(2, 6), torch.ones(1, 1)

    def run(**kw: object) -> None:
        args = {"x": x, "h0": h0, "dt": dt, "starts": None, "params": params} | kw
        ltc_fast.ltc_sequence_kernel(**args, edges=edges, unfolds=6, epsilon=1e-8)  # type: ignore[arg-type]

    run()  # the valid call works
    with pytest.raises(ValueError, match=r"x must be \(B, T, S=3\)"):
        run(x=torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match=r"h0 must be \(B=2, N=6\)"):
        run(h0=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="dt must be 2-D"):
        run(dt=torch.ones(3, 4))
    with pytest.raises(ValueError, match="parameter w must have shape"):
        run(params=[*params[:3], torch.ones(5, 5), *params[4:]])
    with pytest.raises(ValueError, match="one dtype"):
        run(x=x.double())
    # mixed dtypes through the cell fall back to PyTorch's promotion instead of failing
    cell64_x = cell.forward_sequence(x.double())[0]
    assert cell64_x.dtype == torch.float64


# ------------------------------------------------------------------ inference hooks (no-grad fast path)
def _mapped_pair(
    wiring: Wiring, constraint: str, in_map: str, out_map: str, seed: int = 0
) -> tuple[LTCCell, LTCCell]:
    torch.manual_seed(seed)
    kwargs = {"constraint": constraint, "input_mapping": in_map, "output_mapping": out_map}
    ref = LTCCell(wiring, implementation="reference", **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
        ref.apply_constraints()
    fast = LTCCell(wiring, implementation="fused-c", **kwargs)  # type: ignore[arg-type]
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("out_map", ["affine", "linear", "none"])
@pytest.mark.parametrize("in_map", ["affine", "linear", "none"])
@pytest.mark.parametrize("constraint", ["softplus", "clamp"])
@pytest.mark.parametrize("wiring_name", list(WIRINGS))
def test_forward_step_hook_matches_reference(
    kernel: object, wiring_name: str, constraint: str, in_map: str, out_map: str
) -> None:
    """``cell(x, h, dt)`` without gradients runs the ``forward_step`` hook (one kernel call incl. the maps and
    the readout) and equals the reference: batch 1 and 5, dt float / (B,) / (B, 1), state carried in."""
    wiring = WIRINGS[wiring_name]()
    ref, fast = _mapped_pair(wiring, constraint, in_map, out_map)
    gen = torch.Generator().manual_seed(3)
    s, n = wiring.input_size, wiring.units
    for b in (1, 5):
        x = torch.randn(b, s, generator=gen)
        h_r = h_f = 0.2 * torch.randn(b, n, generator=gen)
        dts: list[object] = [0.4, torch.rand(b, generator=gen) + 0.1, torch.rand(b, 1, generator=gen) + 0.1]
        with torch.no_grad():
            assert fast._forward_inference(x, h_f, 1.0) is not None, "the hook path must take this call"
            for dt in dts:
                y_r, h_r = ref(x, h_r, dt)  # type: ignore[arg-type]
                y_f, h_f = fast(x, h_f, dt)  # type: ignore[arg-type]
                # y and h together: float32 tolerance relative to the state's scale (y can be tiny)
                _assert_close(
                    torch.cat([y_f, h_f], 1), torch.cat([y_r, h_r], 1), f"{wiring_name} B={b} dt={dt!r}"
                )
        assert y_f.shape == (b, wiring.output_size) and h_f.shape == (b, n)
        assert fast.implementation_name == "fused-c"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maps", [("affine", "affine"), ("none", "linear"), ("linear", "none")])
def test_forward_sequence_hook_matches_reference(
    kernel: object, dtype: torch.dtype, maps: tuple[str, str]
) -> None:
    """``forward_sequence`` without gradients runs the ``forward_sequence`` hook: batch 1 and 17 (a full
    16-lane chunk plus one), float and (B, T) dt, episode resets, default and given h0."""
    wiring = lane_keeping_ncp(seed=5)
    ref, fast = _mapped_pair(wiring, "softplus", *maps, seed=1)
    ref, fast = ref.to(dtype), fast.to(dtype)
    gen = torch.Generator().manual_seed(8)
    for b, t in ((1, 6), (17, 4)):
        x = torch.randn(b, t, 32, generator=gen, dtype=dtype)
        h0 = 0.2 * torch.randn(b, 19, generator=gen, dtype=dtype)
        dt = torch.rand(b, t, generator=gen, dtype=dtype) + 0.1
        starts = (torch.rand(b, t, generator=gen) < 0.3).to(dtype)
        with torch.no_grad():
            for args in ((None, None, None), (h0, 0.5, starts), (h0, dt, None), (h0, dt, starts.bool())):
                assert fast._forward_sequence_inference(x, *args) is not None
                y_r, h_r = ref.forward_sequence(x, *args)
                y_f, h_f = fast.forward_sequence(x, *args)
                _assert_close(
                    torch.cat([y_f[:, -1], h_f], 1), torch.cat([y_r[:, -1], h_r], 1), f"B={b} y, h_T"
                )
                scale = float(h_r.abs().max())
                torch.testing.assert_close(
                    y_f, y_r, rtol=1e-5, atol=1e-5 * scale if dtype == torch.float32 else 1e-12
                )
                assert y_f.shape == (b, t, 1) and h_f.shape == (b, 19)


def test_hook_path_validates_inside_the_kernel(kernel: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN/inf inputs and dt <= 0 raise the documented ValueErrors on the hook path, detected by the kernel
    (no torch reduction runs); with validation off they are not checked."""
    from ltc_control.cells import base as cell_base

    _, cell = _pair(lane_keeping_ncp(seed=2), "fused-c", torch.float32)
    h = cell.initial_state(2)
    good = torch.zeros(2, 32)
    nan_x = good.clone()
    nan_x[1, 7] = float("nan")
    inf_x = good.clone()
    inf_x[0, 0] = float("inf")

    def no_reduction(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hook path must not check values with torch ops")

    monkeypatch.setattr(torch, "isfinite", no_reduction)
    with torch.no_grad():
        for bad in (nan_x, inf_x):
            with pytest.raises(ValueError, match="x contains non-finite values"):
                cell(bad, h, 0.1)
            with pytest.raises(ValueError, match="x contains non-finite values"):
                cell.forward_sequence(bad.unsqueeze(1).expand(2, 3, 32), h, 0.1)
        with pytest.raises(ValueError, match=r"for every sample, got values such as \[-0.5\]"):
            cell(good, h, torch.tensor([0.1, -0.5]))
        with pytest.raises(ValueError, match=r"got values such as \[nan\]"):
            cell(good, h, torch.tensor([[float("nan")], [0.1]]))
        with pytest.raises(ValueError, match=r"dt must be finite and > 0 at every \(batch, time\) position"):
            cell.forward_sequence(good.unsqueeze(1).expand(2, 3, 32), h, torch.tensor([[0.1, 0.0, 0.1]] * 2))
        with cell_base.validation(False):
            y, _ = cell(nan_x, h, 0.1)  # not checked: no error
            assert y.shape == (2, 1)
    monkeypatch.undo()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"dt must be finite and > 0, got 0.0"):
            cell(good, h, 0.0)
        with pytest.raises(ValueError, match=r"x must have shape \(B, input_size=32\), got \(2, 31\)"):
            cell(torch.zeros(2, 31), h)
        with pytest.raises(ValueError, match=r"h \(state\) must have shape \(B=2, state_size=19\)"):
            cell(good, torch.zeros(2, 18))
        with pytest.raises(ValueError, match=r"dt must be a float or a tensor of shape \(B=2,\)"):
            cell(good, h, torch.ones(3))
        with pytest.raises(ValueError, match=r"x must have shape \(B, T, input_size=32\)"):
            cell.forward_sequence(torch.zeros(2, 3, 31))


def test_hook_path_follows_parameter_changes(kernel: object) -> None:
    """The no-grad cache follows in-place updates of every parameter (maps included), re-assigned
    parameters, a changed constraint and .double(); frozen parameters under grad mode also take the hook."""
    from torch import nn

    ref, fast = _mapped_pair(lane_keeping_ncp(seed=3), "softplus", "affine", "affine", seed=4)
    x, h = torch.randn(1, 32), 0.1 * torch.randn(1, 19)

    def check(what: str) -> None:
        with torch.no_grad():
            y_r, h_r = ref(x, h, 0.3)
            y_f, h_f = fast(x, h, 0.3)
        _assert_close(torch.cat([y_f, h_f], 1), torch.cat([y_r, h_r], 1), what)

    check("initial")
    with torch.no_grad():
        for model in (ref, fast):
            model.output_b.add_(0.5)
            model.input_w.mul_(1.5)
            model.sensory_sigma.add_(0.3)
    check("in-place updates")
    new_w = torch.rand(19, 19)
    ref.w = nn.Parameter(new_w.clone())
    fast.w = nn.Parameter(new_w.clone())
    check("re-assigned w")
    ref.constraint = fast.constraint = "clamp"
    check("constraint changed")
    # tensors swapped in without __setattr__ (torch.func.functional_call) are seen by identity
    swapped = {k: v + 0.05 for k, v in fast.state_dict().items() if k in ("mu", "output_w")}
    with torch.no_grad():
        fast(x, h, 0.3)  # fill the cache with the cell's own tensors
        y_s, h_s = torch.func.functional_call(fast, swapped, (x, h, 0.3))
        y_e, h_e = torch.func.functional_call(ref, swapped, (x, h, 0.3))
    _assert_close(torch.cat([y_s, h_s], 1), torch.cat([y_e, h_e], 1), "functional_call")
    check("after functional_call")
    for p in list(ref.parameters()) + list(fast.parameters()):
        p.requires_grad_(False)
    y_f, h_f = fast(x, h, 0.3)  # grad mode on, nothing requires grad: the hook runs
    assert fast._forward_inference(x, h, 0.3) is not None
    assert not y_f.requires_grad
    _assert_close(h_f, ref(x, h, 0.3)[1], "frozen parameters")
    ref.double()
    fast.double()
    x, h = x.double(), h.double()
    check("float64")
    # a mixed-dtype call is declined by the hook and still works through the general path
    with torch.no_grad():
        assert fast._forward_inference(x.float(), h.float(), 0.3) is None
        _assert_close(fast(x.float(), h.float(), 0.3)[1], ref(x.float(), h.float(), 0.3)[1], "mixed dtypes")


def test_grad_mode_still_builds_the_graph(kernel: object) -> None:
    """With parameters that require grad the general path runs (hook skipped) and gradients match."""
    ref, fast = _pair(lane_keeping_ncp(seed=9), "fused-c", torch.float32, seed=6)
    x, h = torch.randn(1, 32), torch.zeros(1, 19)
    for cell in (ref, fast):
        y, h1 = cell(x, h, 0.2)
        assert y.requires_grad
        (y.sum() + h1.square().sum()).backward()
    for (name, p_r), p_f in zip(ref.named_parameters(), fast.parameters()):
        assert p_r.grad is not None and p_f.grad is not None, name
        _assert_close(p_f.grad, p_r.grad, f"hook-era grad {name}")


def test_hook_steps_from_several_threads_do_not_mix(kernel: object) -> None:
    """The kernel call releases the GIL and the hook's argument arrays are per thread: two threads stepping
    their own cells at once reproduce the single-threaded states exactly."""
    import threading

    cells = [_pair(lane_keeping_ncp(seed=s), "fused-c", torch.float32, seed=s)[1] for s in (1, 2)]
    xs = torch.randn(2, 300, 32)

    def run(i: int, out: dict[int, torch.Tensor]) -> None:
        h = torch.zeros(1, 19)
        with torch.no_grad():
            for t in range(xs.shape[1]):
                _, h = cells[i](xs[i, t : t + 1], h, 0.1 + 0.01 * (t % 7))
        out[i] = h

    expected: dict[int, torch.Tensor] = {}
    for i in range(2):
        run(i, expected)
    got: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=run, args=(i, got)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(2):
        assert torch.equal(got[i], expected[i]), f"thread {i} diverged"
    assert not torch.equal(got[0], got[1])


def test_small_batch_benchmark_smoke(
    kernel: ltc_fused.LTCKernel, load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """experiments/bench/ltc_small_batch.py on a tiny budget: every (cell, mode, batch) timed on both paths,
    the default path named by the kernel's limit and the limit restored; its RL tasks resolve (a suite task, a
    defaults config) or are refused with their names before anything runs."""
    bench = load_bench("ltc_small_batch")
    rows = bench.kernel_rows(rounds=1, min_time=0.001)
    default = kernel.set_small_batch_limit(torch.float32, None)
    assert {(r["cell"], r["mode"], r["batch"]) for r in rows} == {
        (c, m, b) for c in bench.CELLS for m in ("train", "step") for b in bench.BATCHES
    }
    assert all(r["speedup_cpu"] > 0 for r in rows)
    assert all(r["default_path"] == ("small" if r["batch"] <= default else "lanes") for r in rows)
    config = bench.rl_config("PendulumNoVel-v1")
    assert (config.env_id, config.policies, config.ppo.batch_size) == ("PendulumNoVel-v1", "defaults", 128)
    acrobot = bench.rl_config(str(REPO / "experiments/configs/rl_acrobot_novel.yaml"))
    assert acrobot.env_id == "AcrobotNoVel-v1"
    with pytest.raises(SystemExit, match="neither a config file nor a suite task"):
        bench.rl_config("NoSuchTask-v0")
    with pytest.raises(SystemExit, match="policies='config'"):
        bench.rl_config(str(REPO / "experiments/configs/rl_pendulum_novel_zoo.yaml"))
    with pytest.raises(SystemExit, match="no such config file"):
        bench.rl_config(str(tmp_path / "missing.yaml"))
    text = bench.markdown(rows, [])
    assert "| dense16 | train | 1 |" in text and "RecurrentPPO" not in text
