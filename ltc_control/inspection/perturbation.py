"""Perturb a trained policy and measure what changes: clamp or silence neurons, cut synapses, ablation tables.

Neuron clamps are forward hooks on the cell (registered first, so every other hook, the recorder included,
sees the clamped state): after each step the chosen entries of the new state are overwritten and the readout
is recomputed from the clamped state, so the motor output, the action head and the next step all see the
clamp. Within one input step the ODE solver's sub-steps still start from the clamped value and evolve
(the clamp acts at control-step resolution). "Silencing" clamps a neuron to its initial state 0.

Synapse cuts zero entries of an LTC's ``sparsity_mask`` / ``sensory_sparsity_mask`` buffers (restored on
exit), which removes the synapse's conductance exactly as if the wiring lacked it.

The closed loop that turns a perturbed policy into metrics is injected (``evaluate_fn``), so this module does
not import the env or the agents; the inspection pipeline's ``closed_loop_evaluator`` (agents layer) builds
one from the closed-loop episode runner.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltc_control.inspection._hooks import find_cell, stepwise
from ltc_control.runs import atomic_write_text

__all__ = [
    "AblationTable",
    "ablate_synapses",
    "ablation_table",
    "clamp_neurons",
    "parse_synapse",
    "perturbation_effect",
    "silence_neurons",
]

NeuronRef = int | str
Synapse = tuple[NeuronRef, NeuronRef] | tuple[str, int, NeuronRef]


def _neuron_index(cell: Any, neuron: NeuronRef) -> int:
    names = list(cell.neuron_names)
    if isinstance(neuron, str) and neuron not in names and neuron.strip().isdigit():
        neuron = int(neuron)  # indices arrive as strings from YAML / the command line
    if isinstance(neuron, str):
        if neuron not in names:
            raise KeyError(f"Unknown neuron {neuron!r}; valid names: {', '.join(names)}.")
        return names.index(neuron)
    index = int(neuron)
    if not 0 <= index < int(cell.num_neurons):
        raise KeyError(f"Neuron index {index} out of range [0, {cell.num_neurons}).")
    return index


@contextlib.contextmanager
def clamp_neurons(target: Any, values: Mapping[NeuronRef, float]) -> Iterator[dict[int, float]]:
    """Hold chosen neurons at fixed values during every step of ``target``'s cell.

    Args:
        target: a Policy, SequenceModel, PolicyAgent or cell.
        values: neuron (index or name) -> clamp value (state units).

    Yields:
        The resolved ``{index: value}`` mapping.
    """
    cell = find_cell(target)
    resolved = {_neuron_index(cell, k): float(v) for k, v in values.items()}
    if any(not math.isfinite(v) for v in resolved.values()):
        raise ValueError(f"Clamp values must be finite; got {resolved}.")
    if not resolved:
        yield resolved
        return
    index = torch.tensor(sorted(resolved), dtype=torch.long)
    fixed = torch.tensor([resolved[i] for i in sorted(resolved)], dtype=torch.float64)

    def hook(_module: Any, _args: Any, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        _y, h = output
        h = h.clone()
        h[:, index.to(h.device)] = fixed.to(device=h.device, dtype=h.dtype)
        return cell.readout(h), h

    handle = cell.register_forward_hook(hook, prepend=True)
    try:
        with stepwise(cell):
            yield resolved
    finally:
        handle.remove()


def silence_neurons(
    target: Any, neurons: Iterable[NeuronRef]
) -> contextlib.AbstractContextManager[dict[int, float]]:
    """Clamp the given neurons to 0 (the initial state) for the duration (see :func:`clamp_neurons`)."""
    return clamp_neurons(target, {n: 0.0 for n in neurons})


@contextlib.contextmanager
def ablate_synapses(target: Any, synapses: Iterable[Synapse]) -> Iterator[list[tuple[str, int, int]]]:
    """Cut synapses of a wired cell (LTC) by zeroing their mask entries; restored on exit.

    Args:
        target: a Policy, SequenceModel, PolicyAgent or LTC cell.
        synapses: ``(pre, post)`` neuron pairs (indices or names) for recurrent synapses, or
            ``("sensory", k, post)`` for input ``k`` -> neuron ``post``.

    Yields:
        The resolved list of ``(kind, pre, post)``.
    """
    cell = find_cell(target)
    mask = getattr(cell, "sparsity_mask", None)
    sensory_mask = getattr(cell, "sensory_sparsity_mask", None)
    if not isinstance(mask, Tensor) or not isinstance(sensory_mask, Tensor):
        raise TypeError(
            f"{type(cell).__name__} has no sparsity masks; synapse ablation needs a wired LTC cell "
            "(neuron clamps work for every cell)."
        )
    resolved: list[tuple[str, int, int]] = []
    for syn in synapses:
        if len(syn) == 3 and syn[0] == "sensory":
            k, post = int(syn[1]), _neuron_index(cell, syn[2])
            if not 0 <= k < sensory_mask.shape[0]:
                raise KeyError(f"Sensory input {k} out of range [0, {sensory_mask.shape[0]}).")
            if sensory_mask[k, post] == 0:
                raise KeyError(f"There is no synapse from input {k} to neuron {post}; nothing to cut.")
            resolved.append(("sensory", k, post))
        elif len(syn) == 2:
            pre, post = _neuron_index(cell, syn[0]), _neuron_index(cell, syn[1])
            if mask[pre, post] == 0:
                raise KeyError(f"There is no synapse {pre} -> {post} in the wiring; nothing to cut.")
            resolved.append(("recurrent", pre, post))
        else:
            raise ValueError(f"A synapse is (pre, post) or ('sensory', k, post); got {syn!r}.")
    saved = (mask.detach().clone(), sensory_mask.detach().clone())
    try:
        with torch.no_grad():
            for kind, pre, post in resolved:
                (sensory_mask if kind == "sensory" else mask)[pre, post] = 0.0
        yield resolved
    finally:
        with torch.no_grad():
            mask.copy_(saved[0])
            sensory_mask.copy_(saved[1])


# ------------------------------------------------------------------------------------------- ablation table
#: metrics reported by the ablation table, with whether larger is better
ABLATION_METRICS: dict[str, bool] = {
    "distance_m": True,
    "departures": False,
    "completion_rate": True,
    "mean_abs_lateral_m": False,
    "max_abs_lateral_m": False,
    "steering_smoothness": False,
}


@dataclass
class AblationTable:
    """One row per perturbation (the first is the unperturbed baseline) of closed-loop metrics.

    Attributes:
        rows: ``{"perturbation": label, "neuron": name or "", "role": role or "", <metric>: value, ...}``.
        metrics: the metric names, in column order.
        value: the clamp value used for single-neuron rows.
    """

    rows: list[dict[str, Any]]
    metrics: list[str]
    value: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> dict[str, Any]:
        """The unperturbed row."""
        return self.rows[0]

    def delta(self, metric: str) -> np.ndarray:
        """``metric`` of each perturbed row minus the baseline's."""
        base = float(self.baseline[metric])
        return np.array([float(r[metric]) - base for r in self.rows[1:]])

    def to_csv(self) -> str:
        """CSV text (metrics and their change from baseline)."""
        out = io.StringIO()
        columns = ["perturbation", "neuron", "role"] + self.metrics + [f"delta_{m}" for m in self.metrics]
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        base = self.baseline
        for row in self.rows:
            full = dict(row)
            for m in self.metrics:
                full[f"delta_{m}"] = float(row[m]) - float(base[m])
            writer.writerow({k: full.get(k, "") for k in columns})
        return out.getvalue()

    def to_markdown(self, digits: int = 3) -> str:
        """A Markdown table of the rows (metric value and change from the baseline)."""
        header = "| perturbation | role | " + " | ".join(self.metrics) + " |"
        sep = "|---|---|" + "---|" * len(self.metrics)
        lines = [header, sep]
        base = self.baseline
        for row in self.rows:
            cells = []
            for m in self.metrics:
                v, d = float(row[m]), float(row[m]) - float(base[m])
                cells.append(f"{v:.{digits}f}" if row is base else f"{v:.{digits}f} ({d:+.{digits}f})")
            lines.append(f"| {row['perturbation']} | {row['role']} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the CSV atomically to ``path``."""
        out = Path(path)
        atomic_write_text(out, self.to_csv())
        return out

    def plot(self, path: str | os.PathLike[str], metric: str = "mean_abs_lateral_m") -> Path:
        """Bar chart of each single-neuron ablation's change in ``metric`` (PNG/SVG by suffix)."""
        from ltc_control.inspection.plots import LAYER_COLORS, new_figure, save_figure

        if metric not in self.metrics:
            raise ValueError(f"Unknown metric {metric!r}; choose one of {self.metrics}.")
        rows = self.rows[1:]
        fig = new_figure(max(6.0, 0.32 * len(rows) + 2), 4)
        ax = fig.subplots()
        ax.bar(
            range(len(rows)),
            self.delta(metric),
            color=[LAYER_COLORS.get(str(r["role"]), "#333333") for r in rows],
        )
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(range(len(rows)), [str(r["perturbation"]) for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel(f"change in {metric}")
        ax.set_title(
            f"Closed-loop effect of clamping each neuron to {self.value:g} "
            f"(baseline {self.baseline[metric]:.3g})"
        )
        return save_figure(fig, path)


def parse_synapse(text: str) -> Synapse:
    """Parse ``"pre->post"`` (neuron names or indices) or ``"sensory:K->post"`` into a synapse reference.

    Example:
        >>> parse_synapse("inter_3->command_1"), parse_synapse("sensory:5->inter_2")
        (('inter_3', 'command_1'), ('sensory', 5, 'inter_2'))
    """
    if "->" not in text:
        raise ValueError(f"A synapse is written 'pre->post' or 'sensory:K->post'; got {text!r}.")
    pre, post = (part.strip() for part in text.split("->", 1))

    def ref(token: str) -> NeuronRef:
        return int(token) if token.lstrip("-").isdigit() else token

    if pre.startswith("sensory:"):
        k = pre.split(":", 1)[1]
        if not k.isdigit():
            raise ValueError(f"Sensory input index must be an integer in {text!r}.")
        return ("sensory", int(k), ref(post))
    return (ref(pre), ref(post))


def perturbation_effect(
    policy: Any,
    evaluate_fn: Callable[[Any], Mapping[str, float]],
    clamp: Mapping[NeuronRef, float] | None = None,
    cut: Iterable[Synapse] = (),
    label: str | None = None,
) -> AblationTable:
    """Closed-loop metrics without and with one combined perturbation (clamped neurons and cut synapses).

    Args:
        policy: the policy.
        evaluate_fn: deterministic closed-loop evaluation (see :func:`ablation_table`).
        clamp: neuron -> value to hold during the rollout.
        cut: synapses to remove (see :func:`ablate_synapses`).
        label: row label (default: a description of the perturbation).

    Returns:
        A two-row :class:`AblationTable` (baseline, perturbed).
    """
    clamp = dict(clamp or {})
    cuts = list(cut)
    if not clamp and not cuts:
        raise ValueError("Nothing to perturb: give neurons to clamp and/or synapses to cut.")
    base = dict(evaluate_fn(policy))
    metrics = [m for m in base if isinstance(base[m], int | float | np.floating | np.integer)]
    with contextlib.ExitStack() as stack:
        resolved = stack.enter_context(clamp_neurons(policy, clamp))
        removed = stack.enter_context(ablate_synapses(policy, cuts)) if cuts else []
        result = dict(evaluate_fn(policy))
    cell = find_cell(policy)
    parts = [f"clamp {cell.neuron_names[i]}={v:g}" for i, v in resolved.items()]
    parts += [
        f"cut {'input ' + str(a) if kind == 'sensory' else cell.neuron_names[a]}->{cell.neuron_names[b]}"
        for kind, a, b in removed
    ]
    rows = [
        {"perturbation": "baseline", "neuron": "", "role": "", **{m: float(base[m]) for m in metrics}},
        {
            "perturbation": label or ", ".join(parts),
            "neuron": ",".join(cell.neuron_names[i] for i in resolved),
            "role": "",
            **{m: float(result[m]) for m in metrics},
        },
    ]
    return AblationTable(rows=rows, metrics=metrics, value=float("nan"))


def ablation_table(
    policy: Any,
    evaluate_fn: Callable[[Any], Mapping[str, float]],
    neurons: Sequence[NeuronRef] | None = None,
    value: float = 0.0,
    progress: bool = True,
) -> AblationTable:
    """Closed-loop metrics of the policy as is and with each chosen neuron clamped in turn.

    Args:
        policy: the trained policy (any target :func:`clamp_neurons` accepts).
        evaluate_fn: runs the closed loop with the (perturbed) policy and returns metrics, at least the keys
            it reports consistently (e.g. those of :data:`ABLATION_METRICS`); it must be deterministic (fixed
            road and noise seeds) so that rows differ only by the perturbation.
        neurons: which neurons (default: every neuron of the cell).
        value: the clamp value (0 = silence).
        progress: show a tqdm bar (one closed-loop evaluation per row).

    Returns:
        The :class:`AblationTable` (row 0 = baseline).
    """
    cell = find_cell(policy)
    chosen = (
        list(range(int(cell.num_neurons))) if neurons is None else [_neuron_index(cell, n) for n in neurons]
    )
    rows: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(chosen) + 1, desc="ablation", disable=not progress, leave=False)
    try:
        base = dict(evaluate_fn(policy))
        bar.update(1)
        metrics = [m for m in base if isinstance(base[m], int | float | np.floating | np.integer)]
        if not metrics:
            raise ValueError(f"evaluate_fn returned no numeric metrics: {base}")
        rows.append(
            {"perturbation": "baseline", "neuron": "", "role": "", **{m: float(base[m]) for m in metrics}}
        )
        for index in chosen:
            with clamp_neurons(policy, {index: value}):
                result = dict(evaluate_fn(policy))
            missing = [m for m in metrics if m not in result]
            if missing:
                raise ValueError(f"evaluate_fn stopped reporting {missing}; it must return the same metrics.")
            name = cell.neuron_names[index]
            rows.append(
                {
                    "perturbation": f"clamp {name}={value:g}",
                    "neuron": name,
                    "role": cell.neuron_roles[index],
                    **{m: float(result[m]) for m in metrics},
                }
            )
            bar.update(1)
    finally:
        bar.close()
    return AblationTable(rows=rows, metrics=metrics, value=float(value))
