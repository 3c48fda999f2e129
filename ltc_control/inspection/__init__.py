"""Neuron-level inspection: recorder, plots, saliency, perturbation and reports.

Example:
    >>> from ltc_control.inspection import record, plot_all, report_from_trace   # doctest: +SKIP
    >>> with record(policy) as trace:                                             # doctest: +SKIP
    ...     run_episode(env, PolicyAgent(policy), seed=0, on_step=trace.on_step)
    >>> plot_all(trace.trace, "figures")                                          # doctest: +SKIP
    >>> report_from_trace(trace.trace, "inspection")                              # doctest: +SKIP

Modules: :mod:`~ltc_control.inspection.trace` (the :class:`Trace` file format), :mod:`.recorder`,
:mod:`.analysis` (PCA, Lipschitz profile, correlations), :mod:`.plots`, :mod:`.saliency`,
:mod:`.perturbation`, :mod:`.report` and :mod:`.rerun_log` (a trace as a Rerun recording). Nothing here
imports the env or the agents: the closed-loop pipeline (recording a rollout of a checkpoint in an env,
``ltc-control inspect``) sits above, in the agents layer, and hands this package the policy, the recorded
trace and the closed loop as functions.
"""

from ltc_control.inspection.analysis import PCAResult, correlations, lipschitz_profile, pca
from ltc_control.inspection.perturbation import (
    AblationTable,
    ablate_synapses,
    ablation_table,
    clamp_neurons,
    silence_neurons,
)
from ltc_control.inspection.plots import (
    plot_activity_on_road,
    plot_all,
    plot_correlations,
    plot_lipschitz,
    plot_neuron_traces,
    plot_pca,
    plot_tau_heatmap,
    plot_wiring_graph,
)
from ltc_control.inspection.recorder import Recording, record
from ltc_control.inspection.report import InspectionResult, report_from_trace, write_html_report
from ltc_control.inspection.rerun_log import record_rerun
from ltc_control.inspection.saliency import (
    input_gradient_saliency,
    policy_saliency,
    saliency_robustness,
    saliency_ssim,
    ssim,
    visual_backprop,
)
from ltc_control.inspection.trace import Trace, TraceError

__all__ = [
    "AblationTable",
    "InspectionResult",
    "PCAResult",
    "Recording",
    "Trace",
    "TraceError",
    "ablate_synapses",
    "ablation_table",
    "clamp_neurons",
    "correlations",
    "input_gradient_saliency",
    "lipschitz_profile",
    "pca",
    "plot_activity_on_road",
    "plot_all",
    "plot_correlations",
    "plot_lipschitz",
    "plot_neuron_traces",
    "plot_pca",
    "plot_tau_heatmap",
    "plot_wiring_graph",
    "policy_saliency",
    "record",
    "record_rerun",
    "report_from_trace",
    "saliency_robustness",
    "saliency_ssim",
    "silence_neurons",
    "ssim",
    "visual_backprop",
    "write_html_report",
]
