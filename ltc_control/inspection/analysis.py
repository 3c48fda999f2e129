"""Numbers behind the plots: PCA of hidden activity, Lipschitz profiles, correlations with the steering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltc_control.inspection.trace import Trace

__all__ = ["PCAResult", "pca", "lipschitz_profile", "correlations", "pearson", "CORRELATION_TARGETS"]

#: (label, info key) pairs that neurons are correlated with; "action" means the steering command.
CORRELATION_TARGETS: tuple[tuple[str, str], ...] = (
    ("steering", "action"),
    ("curvature", "curvature"),
    ("lateral error", "lateral_offset"),
)


@dataclass(frozen=True)
class PCAResult:
    """Principal components of a ``(T, N)`` activity matrix.

    Attributes:
        components: ``(K, N)`` unit principal directions, strongest first.
        explained_variance: ``(K,)`` variance along each component.
        explained_variance_ratio: ``(K,)`` share of the total variance (sums to 1 unless all activity is
            constant).
        projections: ``(T, K)`` the centred activity projected on the components.
        mean: ``(N,)`` the per-neuron mean that was removed.
    """

    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    projections: np.ndarray
    mean: np.ndarray


def _check_2d(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a (T, N) array; got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf; record a finite rollout (check the policy's weights).")
    return arr


def pca(activity: np.ndarray) -> PCAResult:
    """PCA by SVD of the centred activity (the NCP paper's "share of variance on PC1").

    Args:
        activity: ``(T, N)`` neuron states, T >= 2.

    Returns:
        A :class:`PCAResult` with ``K = min(T, N)`` components.
    """
    x = _check_2d("activity", activity)
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 steps; got {x.shape[0]}. Record a longer rollout.")
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2 / (x.shape[0] - 1)
    total = variance.sum()
    ratio = variance / total if total > 0 else np.zeros_like(variance)
    return PCAResult(
        components=vt,
        explained_variance=variance,
        explained_variance_ratio=ratio,
        projections=centred @ vt.T,
        mean=mean,
    )


def lipschitz_profile(
    activity: np.ndarray, dt: np.ndarray | None = None, episode: np.ndarray | None = None
) -> np.ndarray:
    """Each neuron's largest step-to-step change ``max_t |x[t+1] - x[t]| / dt[t+1]``.

    Steps that cross an episode boundary are skipped (the state is reset there, which is not dynamics).

    Args:
        activity: ``(T, N)`` states.
        dt: ``(T,)`` elapsed time per step (default 1: the change per control step).
        episode: ``(T,)`` episode index per step, or None for one episode.

    Returns:
        ``(N,)`` largest absolute rate of change (state units per time unit); zeros when T < 2.
    """
    x = _check_2d("activity", activity)
    if x.shape[0] < 2:
        return np.zeros(x.shape[1])
    diff = np.abs(np.diff(x, axis=0))
    if dt is not None:
        step = np.asarray(dt, dtype=np.float64).reshape(-1)[1:]
        if np.any(step <= 0):
            raise ValueError("dt must be > 0 at every step.")
        diff = diff / step[:, None]
    if episode is not None:
        same = np.diff(np.asarray(episode).reshape(-1)) == 0
        diff = diff[same]
        if diff.shape[0] == 0:
            return np.zeros(x.shape[1])
    return diff.max(axis=0)


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``x (T, N)`` with ``y (T,)``; 0 where either side is constant."""
    xa = _check_2d("x", x)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if ya.shape[0] != xa.shape[0]:
        raise ValueError(f"y has {ya.shape[0]} steps but x has {xa.shape[0]}; they must be aligned.")
    xc = xa - xa.mean(axis=0)
    yc = ya - ya.mean()
    denom = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum())
    num = xc.T @ yc
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 1e-12 * max(1.0, float(np.abs(num).max(initial=0.0))), num / denom, 0.0)
    return np.clip(r, -1.0, 1.0)


def correlations(trace: Trace) -> tuple[np.ndarray, list[str]]:
    """Correlation of every neuron's state with steering, curvature and lateral error.

    Args:
        trace: a recorded trace; signals the env did not report are left out.

    Returns:
        ``(N, K)`` correlations and the K signal labels.
    """
    columns: list[np.ndarray] = []
    labels: list[str] = []
    for label, key in CORRELATION_TARGETS:
        signal = trace.steering if key == "action" else trace.info_array(key)
        if signal is None or np.asarray(signal).ndim != 1:
            continue
        columns.append(pearson(trace.state, signal))
        labels.append(label)
    if not columns:
        return np.zeros((trace.num_neurons, 0)), []
    return np.stack(columns, axis=1), labels
