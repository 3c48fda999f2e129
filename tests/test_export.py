"""Export (issue #17): every controller kind to ONNX + torch.export, parity on a closed-loop lane-keeping
rollout, the CLI and its errors, and the exported policy driving the env in a process without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ltc_control import cli  # noqa: E402
from ltc_control.agents.export import closed_loop_trace  # noqa: E402
from ltc_control.cells.ltc import LTCCell  # noqa: E402
from ltc_control.checkpoint import checkpoint_info, save_checkpoint  # noqa: E402
from ltc_control.controllers import ControllerConfig, WiringConfig  # noqa: E402
from ltc_control.envs import STATE_FEATURES, LaneKeepingEnv  # noqa: E402
from ltc_control.export import (  # noqa: E402
    ExportError,
    LTCMatmulStep,
    ParityTrace,
    export_policy,
    onnx_session,
    supported_opsets,
)
from ltc_control.policy import Policy, PolicyConfig  # noqa: E402
from ltc_control.wirings import NCP, FullyConnected, Random  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DRIVE = ROOT / "experiments" / "deploy" / "drive_onnx.py"
IMAGE = (16, 32, 3)
CAMERA_ENV = {
    "id": "LTC/LaneKeeping-v0",
    "kwargs": {"image_height": IMAGE[0], "image_width": IMAGE[1], "road_length": 30.0},
}
STATE_ENV = {"id": "LTC/LaneKeepingState-v0", "kwargs": {"road_length": 60.0}}
TOL = 1e-5

LTC = ControllerConfig(kind="ltc")  # the paper's lane-keeping NCP-19: exported through the CLI below
#: the other controller kinds the project trains (the wired CfC on the lane-keeping NCP)
KINDS = {
    "cfc-wired": ControllerConfig(kind="cfc", cfc_wired=True),
    "cfc-dense": ControllerConfig(kind="cfc", cfc_wired=False, units=16, cfc_backbone_units=16),
    "lstm": ControllerConfig(kind="lstm", lstm_hidden=16),
    "gru": ControllerConfig(kind="gru", units=16),
    "ctrnn": ControllerConfig(kind="ctrnn", units=16),
    "mlp": ControllerConfig(kind="mlp", units=16),
}
#: more LTC wirings and CfC modes (slow: one export each)
MORE = {
    "ltc-fully-connected": ControllerConfig(
        kind="ltc", wiring=WiringConfig(preset="fully_connected", units=8)
    ),
    "ltc-random": ControllerConfig(kind="ltc", wiring=WiringConfig(preset="random", units=10, sparsity=0.5)),
    "ltc-auto-ncp": ControllerConfig(kind="ltc", wiring=WiringConfig(preset="auto_ncp", units=12)),
    "cfc-pure": ControllerConfig(kind="cfc", cfc_wired=False, cfc_mode="pure", units=8, cfc_backbone_units=8),
    "cfc-wired-no-gate": ControllerConfig(kind="cfc", cfc_mode="no_gate"),
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Batch-1 steps on shared cores: one thread is fastest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _camera_policy(ctrl: ControllerConfig, seed: int = 0) -> Policy:
    torch.manual_seed(seed)
    return Policy(PolicyConfig(image_shape=IMAGE, controller=ctrl)).eval()


def _check_export(policy: Policy, out: Path, env: dict) -> dict:
    """Closed-loop 1000-step parity at export, then a batch of 3 through both files against the policy."""
    trace = closed_loop_trace(policy, env, steps=1000)
    assert trace.steps == 1000 and trace.dt.min() < 0.75 < 1.25 < trace.dt.max()  # irregular dt
    assert trace.starts[1:].any(), "the rollout should span several episodes (state resets)"
    result = export_policy(policy, out, trace=trace, env=env)
    _check_manifest_parity(result.manifest)
    _check_batch(policy, out, trace.observations[:15, 0])
    return result.manifest


def _check_manifest_parity(manifest: dict) -> None:
    parity = manifest["parity"]
    assert parity["passed"] and parity["steps"] == 1000 and "closed-loop" in parity["trace"]
    for runtime in ("onnxruntime", "torch.export"):
        res = parity["results"][runtime]
        assert res["max_abs_action"] <= TOL and res["max_abs_state"] <= TOL, (runtime, res)


def _check_batch(policy: Policy, out: Path, frames: np.ndarray) -> None:
    """Dynamic batch: 3 sequences of 5 steps, per-sample dt, each runtime carrying its own state."""
    rng = np.random.default_rng(1)
    obs = frames.reshape(5, 3, *frames.shape[1:])
    dts = rng.uniform(0.3, 2.0, (5, 3)).astype(np.float32)
    sess = onnx_session(out / "policy.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "No complete tensor found in the group" (CPU weights)
        module = torch.export.load(str(out / "policy.pt2")).module()
    h_t = policy.reset(3)
    h_o = np.zeros((3, policy.state_size), np.float32)
    h_e = torch.zeros(3, policy.state_size)
    for t in range(5):
        with torch.no_grad():
            a_t, h_t = policy(torch.from_numpy(obs[t])[:, None], h_t, dt=torch.from_numpy(dts[t])[:, None])
            a_e, h_e = module(torch.from_numpy(obs[t]), h_e, torch.from_numpy(dts[t]))
        a_o, h_o = sess.run(None, {"observation": obs[t], "state": h_o, "dt": dts[t]})
        np.testing.assert_allclose(a_o, a_t[:, 0].numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(h_o, h_t.numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(a_e.numpy(), a_t[:, 0].numpy(), atol=TOL, rtol=0)
        np.testing.assert_allclose(h_e.numpy(), h_t.numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(KINDS))
def test_every_controller_kind_exports_with_closed_loop_parity(name: str, tmp_path: Path) -> None:
    policy = _camera_policy(KINDS[name])
    manifest = _check_export(policy, tmp_path / name, CAMERA_ENV)
    assert manifest["controller"]["kind"] == KINDS[name].kind
    assert [i["name"] for i in manifest["inputs"]] == ["observation", "state", "dt"]
    assert [o["name"] for o in manifest["outputs"]] == ["action", "next_state"]
    assert manifest["inputs"][0]["shape"] == ["batch", *IMAGE] and manifest["inputs"][0]["dtype"] == "uint8"
    assert manifest["inputs"][1]["shape"] == ["batch", policy.state_size]
    if name == "lstm":
        assert manifest["state"]["size"] == 32 and "[h, c]" in manifest["state"]["layout"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MORE))
def test_more_wirings_and_modes_export(name: str, tmp_path: Path) -> None:
    _check_export(_camera_policy(MORE[name]), tmp_path / name, CAMERA_ENV)


@pytest.mark.parametrize(
    "wiring, kw",
    [
        (NCP(4, 3, 2, 3, 2, 2, 2, input_size=5, seed=1), {}),
        (
            NCP(4, 3, 2, 3, 2, 0, 2, input_size=5, seed=2),
            {"input_mapping": "linear", "output_mapping": "none"},
        ),
        (FullyConnected(6, 5, 2, seed=3), {"constraint": "clamp", "input_mapping": "none"}),
        (Random(7, 5, 2, sparsity=0.7, seed=4), {"output_mapping": "linear", "ode_unfolds": 2}),
    ],
)
def test_ltc_matmul_step_matches_the_reference_solver(wiring, kw) -> None:
    torch.manual_seed(0)
    cell = LTCCell(wiring, implementation="reference", **kw)
    fast = LTCMatmulStep(cell)
    x = torch.randn(4, 5)
    v = torch.randn(4, wiring.units)
    dt = torch.tensor([0.3, 1.0, 1.7, 4.0])
    for _ in range(50):
        with torch.no_grad():
            y_ref, v_ref = cell(x, v, dt)
            y, v_new = fast(x, v, dt)
        torch.testing.assert_close(v_new, v_ref, atol=2e-6, rtol=0)
        torch.testing.assert_close(y, y_ref, atol=2e-6, rtol=0)
        v = v_ref


def test_vector_ncp_exports_with_the_reference_ltc_solver(tmp_path: Path) -> None:
    """The vector NCP-19 driving LaneKeepingState-v0, exported op for op with the reference LTC solver."""
    torch.manual_seed(0)
    probe = LaneKeepingEnv(observation="state")
    d = int(probe.observation_space.shape[0])
    probe.close()
    policy = Policy(PolicyConfig(observation="vector", vector_size=d, controller=LTC)).eval()
    trace = closed_loop_trace(policy, STATE_ENV, steps=1000)
    result = export_policy(policy, tmp_path / "ref", trace=trace, env=STATE_ENV, ltc_solver="reference")
    _check_manifest_parity(result.manifest)
    assert result.manifest["controller"]["ltc_solver"] == "reference"
    assert result.manifest["inputs"][0] == {
        "name": "observation",
        "shape": ["batch", d],
        "dtype": "float32",
        "description": result.manifest["inputs"][0]["description"],
    }


def test_bounded_mean_head_exports_with_parity(tmp_path: Path) -> None:
    """``ActionHeadConfig.mean_limit``: tanh of the bounded affine output (unchanged up to limit - 1), bad
    values refused by name, and the exported model computes the same actions with the bound active."""
    from ltc_control.policy import ActionHeadConfig, bound_mean

    with pytest.raises(ValueError, match="mean_limit needs squash 'tanh'"):
        ActionHeadConfig(squash="none", mean_limit=5.0)
    with pytest.raises(ValueError, match="finite number > 1"):
        ActionHeadConfig(mean_limit=0.5)
    torch.manual_seed(0)
    probe = LaneKeepingEnv(observation="state")
    d = int(probe.observation_space.shape[0])
    probe.close()
    head = ActionHeadConfig(mean_limit=5.0, init_scale=3.0, init_bias=4.0)
    policy = Policy(
        PolicyConfig(observation="vector", vector_size=d, controller=LTC, action_head=head)
    ).eval()
    y = torch.tensor([[-3.0], [0.0], [0.5], [2.0]])
    affine = 3.0 * y + 4.0  # -5, 4, 5.5, 10: below, at and past the knee
    torch.testing.assert_close(policy.action_head(y), torch.tanh(bound_mean(affine, 5.0)))
    assert float(policy.action_head(y)[1]) == float(torch.tanh(torch.tensor(4.0)))  # unchanged at the knee
    assert float(policy.action_head(y)[3]) < float(torch.tanh(torch.tensor(10.0)))
    trace = closed_loop_trace(policy, STATE_ENV, steps=1000)
    result = export_policy(policy, tmp_path / "bounded", trace=trace, env=STATE_ENV)
    _check_manifest_parity(result.manifest)
    assert result.manifest["action"]["mean_limit"] == 5.0


def _driving_policy() -> Policy:
    """A competent lane keeper on state vectors: a feed-forward controller with hand-set weights
    (steer = tanh(-1.0 lateral - 2.0 heading + 5.2 curvature)), so the drive test sees completed roads."""
    torch.manual_seed(0)
    probe = LaneKeepingEnv(observation="state")
    d = int(probe.observation_space.shape[0])  # STATE_FEATURES + curvature at the look-ahead distances
    probe.close()
    policy = Policy(
        PolicyConfig(
            observation="vector",
            vector_size=d,
            controller=ControllerConfig(kind="mlp", units=2, mlp_layers=1),
        )
    ).eval()
    gains = torch.zeros(d)
    gains[STATE_FEATURES.index("lateral_offset")] = -1.0
    gains[STATE_FEATURES.index("heading_error")] = -2.0
    gains[STATE_FEATURES.index("curvature")] = 5.2
    cell = policy.controller.cell
    with torch.no_grad():
        cell.net[0].weight.copy_(torch.stack([gains, -gains]))  # relu(g.x) - relu(-g.x) = g.x
        cell.net[0].bias.zero_()
        cell.out.weight.copy_(torch.tensor([[1.0, -1.0]]))
        cell.out.bias.zero_()
    return policy


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Policy]:
    """``ltc-control export`` of a camera LTC checkpoint that records its env in the metadata."""
    root = tmp_path_factory.mktemp("cli")
    policy = _camera_policy(LTC, seed=3)
    ckpt = save_checkpoint(
        root / "ckpt", policy, metadata={"env_id": CAMERA_ENV["id"], "env_kwargs": CAMERA_ENV["kwargs"]}
    )
    assert cli.main(["export", str(ckpt), "--out", str(root / "out"), "--format", "onnx,torch-export"]) == 0
    return ckpt, root / "out", policy


def test_cli_exports_the_ltc_with_closed_loop_parity(cli_export: tuple[Path, Path, Policy]) -> None:
    ckpt, out, policy = cli_export
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "policy.onnx", "policy.pt2"]
    spec = json.loads((out / "export.json").read_text())
    info = checkpoint_info(ckpt)
    assert spec["source"]["weights_sha256"] == info["weights"]["sha256"]
    assert spec["env"] == CAMERA_ENV
    assert spec["files"]["onnx"]["opset"] == 18
    assert spec["action"]["size"] == 1 and spec["action"]["semantics"][0].startswith("steering")
    assert (
        spec["state"]
        == {
            "size": 19,
            "initial": "zeros",
            "layout": spec["state"]["layout"],
        }
        and "motor neurons first" in spec["state"]["layout"]
    )
    assert spec["controller"]["ode_unfolds"] == 6 and spec["controller"]["synapses"] == 252
    parity = spec["parity"]
    assert parity["steps"] == 1000 and parity["trace"].startswith("closed-loop rollout in LTC/LaneKeeping-v0")
    assert max(v for r in parity["results"].values() for k, v in r.items() if k.startswith("max")) <= TOL
    assert not list(out.parent.glob(".out.tmp-*")) and not list(out.parent.glob(".out.old-*"))
    _check_manifest_parity(spec)
    frames = np.random.default_rng(0).integers(0, 256, (15, *IMAGE), dtype=np.uint8)
    _check_batch(policy, out, frames)


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ltc-control export: error: ")
    return err


def test_cli_errors_are_one_line_exit_2_and_leave_nothing(
    cli_export: tuple[Path, Path, Policy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = cli_export[0]
    # a checkpoint that fails to load: missing folder, corrupt weights
    err = _cli_error([str(tmp_path / "nope"), "--out", str(tmp_path / "a" / "out")], capsys)
    assert "cannot load checkpoint" in err and "not found" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ckpt.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    err = _cli_error([str(broken), "--out", str(tmp_path / "b")], capsys)
    assert "cannot load checkpoint" in err and "sha256" in err
    # an unsupported opset
    err = _cli_error([str(ckpt), "--out", str(tmp_path / "c"), "--opset", "11"], capsys)
    assert "unsupported ONNX opset 11" in err and f"{supported_opsets().start}.." in err
    err = _cli_error([str(ckpt), "--out", str(tmp_path / "c"), "--format", "tflite"], capsys)
    assert "unknown export format" in err
    # a parity check that fails: an existing output folder stays as it was
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "old.txt").write_text("old")
    err = _cli_error([str(ckpt), "--out", str(keep), "--steps", "30", "--tolerance", "1e-12"], capsys)
    assert "parity check failed" in err and "nothing was written" in err
    assert [p.name for p in keep.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "keep"]  # no temp or partial folders


def test_parity_failure_raises_before_writing(tmp_path: Path) -> None:
    policy = _camera_policy(KINDS["mlp"])
    obs = np.random.default_rng(0).integers(0, 256, (20, 1, *IMAGE), dtype=np.uint8)
    starts = np.zeros((20, 1), bool)
    starts[0] = True
    wrong = ParityTrace(
        obs,
        np.ones((20, 1), np.float32),
        starts,
        np.zeros((20, 1, 1), np.float32),
        np.zeros((20, 1, 16), np.float32),
        source="wrong on purpose",
    )
    with pytest.raises(ExportError, match="parity check failed"):
        export_policy(policy, tmp_path / "deep" / "out", formats="torch-export", trace=wrong)
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it created


def test_checkpoint_without_a_fitting_env_uses_a_synthetic_trace(tmp_path: Path) -> None:
    """A vector policy no lane-keeping env fits (and no env in its metadata): parity on synthetic inputs."""
    from ltc_control.agents.export import export_checkpoint

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(observation="vector", vector_size=5, action_size=2, controller=KINDS["gru"]))
    ckpt = save_checkpoint(tmp_path / "ckpt", policy)
    result = export_checkpoint(ckpt, tmp_path / "out", formats="onnx", steps=300)
    spec = json.loads((tmp_path / "out" / "export.json").read_text())
    assert spec == result.manifest and spec["env"] is None and list(spec["files"]) == ["onnx"]
    assert spec["parity"]["trace"].startswith("synthetic") and spec["parity"]["steps"] == 300
    assert spec["parity"]["results"]["onnxruntime"]["max_abs_action"] <= TOL
    assert spec["action"]["semantics"] == [f"output {i}: in [-1, 1] (tanh head)" for i in range(2)]


def _torch_step(policy: Policy):
    def step(obs: np.ndarray, state: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        action, h = policy.act(obs, torch.from_numpy(state), dt=float(dt[0]))
        return action, h.numpy()

    return step


@pytest.mark.parametrize("which", ["camera-ltc", "vector-driver"])
def test_exported_policy_drives_without_torch(
    which: str, cli_export: tuple[Path, Path, Policy], tmp_path: Path
) -> None:
    """drive_onnx.py (numpy + onnxruntime + env) on 5 held-out roads in a fresh process: no torch imported,
    and the same completion and lateral error as the PyTorch policy driving the same roads."""
    import importlib.util

    if which == "camera-ltc":
        _, out, policy = cli_export
        env = CAMERA_ENV
    else:
        policy, env, out = _driving_policy(), STATE_ENV, tmp_path / "driver"
        export_policy(policy, out, formats="onnx", trace=closed_loop_trace(policy, env, steps=1000), env=env)
    roads = [str(100_000 + i) for i in range(5)]
    report = tmp_path / "drive.json"
    proc = subprocess.run(
        [sys.executable, str(DRIVE), str(out), "--roads", *roads, "--json", str(report)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    exported = json.loads(report.read_text())
    assert exported["torch_imported"] is False
    spec = importlib.util.spec_from_file_location("drive_onnx", DRIVE)
    assert spec is not None and spec.loader is not None
    drive_onnx = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drive_onnx)
    for ep in exported["episodes"]:
        ref = drive_onnx.drive(
            _torch_step(policy), env["id"], env["kwargs"], ep["road_seed"], policy.state_size
        )
        assert ep["completed"] == ref["completed"] and ep["steps"] == ref["steps"]
        assert ep["mean_abs_lateral_m"] == pytest.approx(ref["mean_abs_lateral_m"], abs=1e-4)
    if which == "vector-driver":
        assert all(ep["completed"] for ep in exported["episodes"])
