"""A real policy in the real env: recorder alignment, clamps, synapse cuts, ablation table, report + HTML."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ltc_control.agents.inspect import closed_loop_evaluator, inspect_main, record_rollout
from ltc_control.inspection.perturbation import (
    ablate_synapses,
    ablation_table,
    clamp_neurons,
    parse_synapse,
    perturbation_effect,
    silence_neurons,
)
from ltc_control.inspection.recorder import record
from ltc_control.inspection.trace import Trace
from ltc_control.policy import Policy, PolicyConfig

ENV_ID = "LTC/LaneKeeping-v0"


@pytest.fixture(scope="module")
def policy() -> Policy:
    torch.manual_seed(0)
    p = Policy(PolicyConfig())
    with torch.no_grad():
        # a non-trivial action head so that "motor column -> action" is a real map
        p.action_scale.fill_(1.7)
        p.action_bias.fill_(-0.05)
        p.controller.cell.output_w.fill_(2.0)
        p.controller.cell.output_b.fill_(0.1)
    return p.eval()


@pytest.fixture(scope="module")
def env():
    from ltc_control.agents.episode import make_env

    e = make_env(ENV_ID)
    yield e
    e.close()


def _actions(policy: Policy, frames: np.ndarray) -> np.ndarray:
    state = policy.reset(1)
    out = []
    for frame in frames:
        action, state = policy.act(frame, state)
        out.append(action)
    return np.stack(out)


def test_recorded_rollout_shapes_and_motor_column(policy: Policy, env) -> None:
    trace, episode = record_rollout(policy, env, seed=3, steps=40)
    cell = policy.controller.cell
    assert trace.state.shape == (40, cell.num_neurons) == (40, 19)
    assert trace.tau.shape == trace.synaptic_current.shape == (40, 19)
    assert trace.observations.shape == (40, 64, 128, 3) and trace.observations.dtype == np.uint8
    # motor column -> readout (output_w * v + output_b) -> action head tanh(scale * y + bias)
    np.testing.assert_allclose(trace.output[:, 0], 2.0 * trace.state[:, 0] + 0.1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        trace.action[:, 0], np.tanh(1.7 * trace.output[:, 0] - 0.05), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(trace.action[:, 0], episode.steering, rtol=1e-6)
    # each step carries the info the policy acted on: step t+1 sees the lateral error after step t
    np.testing.assert_allclose(trace.info["lateral_offset"][1:], episode.lateral_error[:-1])
    np.testing.assert_allclose(trace.info["position"][1:], episode.positions[:-1])
    assert trace.road_points.shape[1] == 2 and trace.metadata["seed"] == 3
    # the wrappers are gone after the block
    assert "act" not in vars(policy) and "reset" not in vars(policy) and not cell._forward_hooks


def test_clamping_the_motor_neuron_fixes_the_action(policy: Policy, env) -> None:
    obs, _ = env.reset(seed=5)
    frames = [obs]
    for _ in range(11):
        obs, *_ = env.step(np.array([0.1], dtype=np.float32))
        frames.append(obs)
    frames_arr = np.stack(frames)
    free = _actions(policy, frames_arr)
    with clamp_neurons(policy, {"motor_0": 0.3}) as resolved:
        clamped = _actions(policy, frames_arr)
    assert resolved == {0: 0.3}
    expected = np.tanh(1.7 * (2.0 * 0.3 + 0.1) - 0.05)
    np.testing.assert_allclose(clamped[:, 0], expected, rtol=1e-6)
    assert np.ptp(free[:, 0]) > 1e-4  # the unclamped policy does steer differently from frame to frame
    # silencing a command neuron changes the steering; leaving the block restores the policy exactly
    with silence_neurons(policy, ["command_0", "command_3"]):
        silenced = _actions(policy, frames_arr)
    assert np.max(np.abs(silenced - free)) > 1e-4
    np.testing.assert_array_equal(_actions(policy, frames_arr), free)
    with pytest.raises(KeyError, match="valid names"):
        with clamp_neurons(policy, {"motor_9": 0.0}):
            pass


def test_cutting_every_synapse_into_the_motor_neuron_leaves_only_the_leak(policy: Policy, env) -> None:
    cell = policy.controller.cell
    into_motor = [(int(i), 0) for i in np.flatnonzero(cell.wiring.adjacency[:, 0])]
    assert len(into_motor) == 6  # the paper's motor fan-in
    obs, _ = env.reset(seed=7)
    frames = np.stack([obs] * 5)
    mask_before = cell.sparsity_mask.clone()
    with ablate_synapses(policy, into_motor):
        with record(policy) as rec:
            _actions(policy, frames)
    assert torch.equal(cell.sparsity_mask, mask_before)
    # leak only: v <- (cm/h v + gleak vleak) / (cm/h + gleak) per unfold, from v = 0
    eff = cell.effective_parameters()
    cm, gleak, vleak = (float(eff[k][0].detach()) for k in ("cm", "gleak", "vleak"))
    h = float(policy.config.controller.dt) / cell.ode_unfolds
    v, expected = 0.0, []
    for _ in range(5):
        for _ in range(cell.ode_unfolds):
            v = (cm / h * v + gleak * vleak) / (cm / h + gleak + cell.epsilon)
        expected.append(v)
    np.testing.assert_allclose(rec.state[:, 0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rec.tau[:, 0], cm / gleak, rtol=1e-5)
    with pytest.raises(KeyError, match="no synapse"):
        with ablate_synapses(policy, [(0, 0)]):
            pass


def test_ablation_table(policy: Policy, env, tmp_path: Path) -> None:
    evaluate = closed_loop_evaluator(env, seeds=[11], max_steps=25)
    table = ablation_table(policy, evaluate, neurons=["motor_0", "inter_3"], value=0.0, progress=False)
    assert [r["perturbation"] for r in table.rows] == ["baseline", "clamp motor_0=0", "clamp inter_3=0"]
    assert table.baseline["steering_smoothness"] > 0
    # a clamped motor neuron gives one constant steering command: zero change from step to step
    assert table.rows[1]["steering_smoothness"] == 0.0
    assert table.rows[1]["role"] == "motor"
    csv_text = table.save(tmp_path / "ablation.csv").read_text()
    assert csv_text.splitlines()[0].startswith("perturbation,neuron,role,distance_m")
    assert len(csv_text.splitlines()) == 4
    assert table.delta("steering_smoothness")[0] == pytest.approx(-table.baseline["steering_smoothness"])
    png = table.plot(tmp_path / "ablation.png", metric="steering_smoothness")
    image = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.std() > 5.0


def test_inspect_cli_writes_report_that_chromium_renders(policy: Policy, tmp_path: Path) -> None:
    from ltc_control.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt", policy, {"note": "inspection test"})
    cell = policy.controller.cell
    first_sensory_target = cell.neuron_names[int(np.flatnonzero(cell.wiring.sensory_adjacency[0])[0])]
    out = tmp_path / "report"
    code = inspect_main(
        [
            str(ckpt),
            "--out",
            str(out),
            "--steps",
            "30",
            "--saliency_frames",
            "12",
            "--noise",
            "0.1",
            "0.3",
            "--formats",
            "png",  # SVG output is checked in test_inspection_trace_plots
            "--threads",
            "1",
            "--no-progress",
            "--clamp",
            "{motor_0: 0.0}",
            "--cut",
            "sensory:0->" + first_sensory_target,
            "--ablation_seeds",
            "11",
            "--ablation_steps",
            "20",
            "--map_neurons",
            "command_2",
        ]
    )
    assert code == 0
    trace = Trace.load(out / "trace.npz")
    # the camera frames are stored with the trace, so saliency can be recomputed from the file
    assert trace.num_steps == 30 and trace.observations.shape == (30, 64, 128, 3)
    figures = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert len(figures) == 11 and "activity_on_road_command_2" in figures
    for png in (out / "figures").glob("*.png"):
        image = cv2.imdecode(np.frombuffer(png.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape[0] > 100 and image.std() > 5.0, png.name
    assert (out / "saliency.mp4").stat().st_size > 0
    effect = (out / "perturbation.csv").read_text().splitlines()
    assert len(effect) == 3 and effect[2].startswith(
        f'"clamp motor_0=0, cut input 0->{first_sensory_target}"'
    )
    page = (out / "index.html").read_text()
    assert "Chosen perturbation" in page
    assert page.count("data:image/png;base64,") == 11
    for name in figures:
        assert f'id="fig-{name}"' in page
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium binary: install Debian's `chromium` to check that the report renders")
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            (out / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    loaded = re.search(r'id="images-loaded">(\d+)<', dom)
    assert loaded is not None, "the page's load script did not run"
    assert int(loaded.group(1)) == 11
    for name in figures:
        assert f'id="fig-{name}"' in dom


def test_experiment_script_untrained_then_replot(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "experiments" / "inspect_policy.py"
    spec = importlib.util.spec_from_file_location("inspect_policy_script", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first = tmp_path / "untrained"
    args = ["--untrained", "--out", str(first), "--steps", "15", "--saliency_frames", "0", "--no-video"]
    assert module.main([*args, "--formats", "png", "--threads", "1", "--no-progress"]) == 0
    trace = Trace.load(first / "trace.npz")
    assert trace.num_steps == 15 and trace.metadata["seed"] == 0
    # re-draw from the saved trace alone (no policy, no env)
    second = tmp_path / "replot"
    assert module.main([str(first / "trace.npz"), "--out", str(second), "--formats", "png"]) == 0
    assert len(list((second / "figures").glob("*.png"))) == 8
    np.testing.assert_array_equal(Trace.load(second / "trace.npz").state, trace.state)
    with pytest.raises(SystemExit):
        module.main([str(tmp_path / "missing"), "--out", str(second)])


def test_perturbation_effect_and_synapse_syntax(policy: Policy, env) -> None:
    assert parse_synapse("inter_3->command_1") == ("inter_3", "command_1")
    assert parse_synapse("sensory:5 -> 2") == ("sensory", 5, 2)
    with pytest.raises(ValueError, match="pre->post"):
        parse_synapse("inter_3 command_1")
    evaluate = closed_loop_evaluator(env, seeds=[11], max_steps=25)
    effect = perturbation_effect(policy, evaluate, clamp={"0": 0.0})  # index given as text, as from YAML
    assert [r["perturbation"] for r in effect.rows] == ["baseline", "clamp motor_0=0"]
    assert effect.rows[1]["steering_smoothness"] == 0.0 < effect.baseline["steering_smoothness"]
    # identical to the same clamp in the ablation table: the closed loop is deterministic
    table = ablation_table(policy, evaluate, neurons=[0], progress=False)
    assert table.rows[1]["mean_abs_lateral_m"] == effect.rows[1]["mean_abs_lateral_m"]
    with pytest.raises(ValueError, match="Nothing to perturb"):
        perturbation_effect(policy, evaluate)


def test_inspect_policy_bad_inputs(policy: Policy, tmp_path: Path) -> None:
    from ltc_control.agents.inspect import inspect_policy

    with pytest.raises(FileNotFoundError, match="does not exist"):
        inspect_policy(tmp_path / "no_such_checkpoint", tmp_path / "out")
    with pytest.raises(TypeError, match="Policy or a checkpoint"):
        inspect_policy(object(), tmp_path / "out")
    with pytest.raises(ValueError, match="steps must be >= 2"):
        inspect_policy(policy, tmp_path / "out", steps=1)
