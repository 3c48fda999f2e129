"""Trace files (round trip, corrupt files) and every plot (valid, non-empty PNG and SVG)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from ltc_control.inspection import plots
from ltc_control.inspection.analysis import correlations, lipschitz_profile, pca, pearson
from ltc_control.inspection.trace import Trace, TraceError


def test_trace_round_trip(tmp_path: Path, ncp_trace: Trace) -> None:
    path = ncp_trace.save(tmp_path / "sub" / "rollout")
    assert path.name == "rollout.npz" and not list(path.parent.glob(".*tmp"))
    back = Trace.load(path)
    assert back.neuron_names == ncp_trace.neuron_names and back.neuron_roles == ncp_trace.neuron_roles
    for key in ("state", "output", "action", "tau", "synaptic_current", "sensory_current", "adjacency"):
        np.testing.assert_array_equal(getattr(back, key), getattr(ncp_trace, key))
    np.testing.assert_array_equal(back.info["position"], ncp_trace.info["position"])
    np.testing.assert_array_equal(back.road_points, ncp_trace.road_points)
    assert back.metadata["source"] == "conftest" and back.metadata["cell"] == "LTCCell"


def test_trace_load_errors(tmp_path: Path, ncp_trace: Trace) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trace.load(tmp_path / "missing.npz")
    good = ncp_trace.save(tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(TraceError, match="corrupt"):
        Trace.load(tmp_path / "cut.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(TraceError, match="corrupt"):
        Trace.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(TraceError, match="not an ltc_control trace"):
        Trace.load(tmp_path / "other.npz")


def test_trace_validation() -> None:
    with pytest.raises(TraceError, match="roles"):
        Trace(["a", "b"], ["motor"], np.zeros((3, 2)), np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(TraceError, match="steps"):
        Trace(["a"], ["motor"], np.zeros((3, 1)), np.zeros((4, 1)), np.zeros((3, 1)))
    with pytest.raises(TraceError, match="neurons"):
        Trace(["a"], ["motor"], np.zeros((3, 1)), np.zeros((3, 1)), np.zeros((3, 1)), tau=np.ones((3, 2)))


def test_analysis_numbers() -> None:
    t = np.linspace(0, 1, 50)
    # rank-one activity: PC1 carries all the variance
    x = np.outer(np.sin(6 * t), [1.0, -2.0, 0.5])
    result = pca(x)
    assert result.explained_variance_ratio[0] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(np.abs(result.components[0]), np.array([1, 2, 0.5]) / np.sqrt(5.25))
    steps = np.array([[0.0, 0.0], [1.0, -3.0], [1.5, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(lipschitz_profile(steps), [8.5, 3.0])
    # the jump to 10 crosses an episode boundary and is not dynamics
    np.testing.assert_allclose(lipschitz_profile(steps, episode=np.array([0, 0, 0, 1])), [1.0, 3.0])
    r = pearson(np.stack([t, -t, np.ones_like(t)], axis=1), t)
    np.testing.assert_allclose(r, [1.0, -1.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        pca(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="at least 2 steps"):
        pca(np.zeros((1, 3)))


def test_correlations_of_recorded_trace(ncp_trace: Trace) -> None:
    corr, labels = correlations(ncp_trace)
    assert labels == ["steering", "curvature", "lateral error"]
    # the motor neuron is the steering readout (tanh is monotonic)
    assert corr[0, 0] > 0.97
    assert np.all(np.abs(corr) <= 1.0)


def _check_png(path: Path) -> None:
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a decodable PNG"
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 5.0, f"{path} is blank"


def _check_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter())) > 50


def test_plot_all_png_and_svg(tmp_path: Path, ncp_trace: Trace) -> None:
    written, skipped = plots.plot_all(ncp_trace, tmp_path, formats=("png", "svg"))
    assert skipped == {}
    # the single-file writers too (suffix picks the format)
    _check_png(plots.plot_lipschitz(ncp_trace, tmp_path / "single.png"))
    assert set(written) == set(plots.PLOTS)
    for paths in written.values():
        _check_png(paths[0])
        _check_svg(paths[1])


def test_plots_skip_what_a_cell_lacks(tmp_path: Path, ncp_trace: Trace) -> None:
    bare = Trace(
        ncp_trace.neuron_names, ncp_trace.neuron_roles, ncp_trace.state, ncp_trace.output, ncp_trace.action
    )
    written, skipped = plots.plot_all(bare, tmp_path, formats=("png",))
    assert set(skipped) == {"tau_heatmap", "activity_on_road", "wiring_activity", "wiring_steering"}
    assert "tau" in skipped["tau_heatmap"]
    with pytest.raises(ValueError, match="suffix"):
        plots.plot_pca(bare, tmp_path / "x.gif")
