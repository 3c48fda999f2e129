"""The module that :mod:`ltc_control.export` traces: one control step of a policy as plain tensor ops.

:class:`PolicyStep` wraps a :class:`~ltc_control.policy.Policy` as ``(observation, state, dt) -> (action,
next_state)`` with the preprocessing inside; :class:`LTCMatmulStep` is the LTC's reference step rewritten as
matrix products over the wiring's synapses (fewer graph nodes, same numbers to float tolerance).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ltc_control.cells import base as cell_base
from ltc_control.cells.ltc import LTCCell
from ltc_control.perception import standardize
from ltc_control.policy import Policy

__all__ = [
    "LTC_SOLVERS",
    "ExportError",
    "LTCMatmulStep",
    "PolicyStep",
    "example_inputs",
    "export_program",
    "tracing_context",
]

LTC_SOLVERS = ("matmul", "reference")


class ExportError(ValueError):
    """An export that cannot be done: unloadable source, unsupported format/opset, failed parity check."""


class LTCMatmulStep(nn.Module):
    """The LTC step of :func:`ltc_control.cells.ltc.reference_step` rewritten as matrix products over the
    wiring's synapses: the export's default LTC solver (``ltc_solver="matmul"``).

    The reference broadcasts every unfold over all ``N x N`` neuron pairs (about 15 graph nodes per unfold).
    Here the effective parameters are frozen into constants indexed by synapse ``e = (i, j)`` (only the ``E``
    synapses of the wiring, so masked entries cost nothing), and one unfold is::

        sig = sigmoid(v @ S - sigma_mu)                   # (B, E)
        v   = (cm_t v + a + sig @ W_erev) / (c + sig @ W)

    (``S[i, e] = sigma_ij``, ``sigma_mu[e] = sigma_ij mu_ij``, ``W[e, j] = w_ij``, ``W_erev[e, j] = w_ij
    erev_ij``)

    with ``a = gleak vleak + (sensory numerator)``, ``c = cm_t + gleak + (sensory denominator) + epsilon``
    computed once per input step (the sensory synapses the same way); 7 graph nodes per unfold. Same
    arithmetic as the reference up to the order of the sums (float32 rounding, ~1e-7).

    Args:
        cell: the LTC cell (its effective parameters are copied; later changes to the cell are not seen).
    """

    input_w: Tensor | None
    input_b: Tensor | None
    output_w: Tensor | None
    output_b: Tensor | None
    cm: Tensor
    gleak: Tensor
    gleak_vleak: Tensor

    def __init__(self, cell: LTCCell) -> None:
        super().__init__()
        with torch.no_grad():
            p = {k: v.detach().to(torch.float32).clone() for k, v in cell.effective_parameters().items()}
            maps = {k: getattr(cell, k, None) for k in ("input_w", "input_b", "output_w", "output_b")}
        self.unfolds = int(cell.ode_unfolds)
        self.epsilon = float(cell.epsilon)
        self.output_size = int(cell.output_size)
        self.state_size = int(cell.state_size)
        for k, t in maps.items():
            self.register_buffer(k, None if t is None else t.detach().to(torch.float32).clone())
        self.register_buffer("cm", p["cm"])
        self.register_buffer("gleak", p["gleak"])
        self.register_buffer("gleak_vleak", p["gleak"] * p["vleak"])
        self._synapses("rec", p["sparsity_mask"], p["sigma"], p["mu"], p["w"], p["erev"])
        self._synapses(
            "sens",
            p["sensory_sparsity_mask"],
            p["sensory_sigma"],
            p["sensory_mu"],
            p["sensory_w"],
            p["sensory_erev"],
        )

    def _synapses(self, name: str, mask: Tensor, sigma: Tensor, mu: Tensor, w: Tensor, erev: Tensor) -> None:
        pre, post = torch.nonzero(mask != 0, as_tuple=True)
        e = int(pre.numel())
        setattr(self, f"{name}_count", e)
        n_pre, n_post = mask.shape
        spread = torch.zeros(n_pre, e)
        spread[pre, torch.arange(e)] = sigma[pre, post]
        w_e = w[pre, post]
        gather = torch.zeros(e, n_post)
        gather_erev = torch.zeros(e, n_post)
        gather[torch.arange(e), post] = w_e
        gather_erev[torch.arange(e), post] = w_e * erev[pre, post]
        self.register_buffer(f"{name}_spread", spread)
        self.register_buffer(f"{name}_sigma_mu", sigma[pre, post] * mu[pre, post])
        self.register_buffer(f"{name}_w", gather)
        self.register_buffer(f"{name}_w_erev", gather_erev)

    def _terms(self, name: str, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(sum_e s_e erev_e, sum_e s_e)`` into each postsynaptic neuron, ``(B, N)`` each (None: none)."""
        if getattr(self, f"{name}_count") == 0:
            return None
        sig = torch.sigmoid(x @ getattr(self, f"{name}_spread") - getattr(self, f"{name}_sigma_mu"))
        return sig @ getattr(self, f"{name}_w_erev"), sig @ getattr(self, f"{name}_w")

    def forward(self, x: Tensor, v: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, S)`` raw inputs, ``v (B, N)``, ``dt (B,)`` -> ``(y (B, M), v' (B, N))``."""
        if self.input_w is not None:
            x = x * self.input_w
        if self.input_b is not None:
            x = x + self.input_b
        cm_t = self.cm / (dt.reshape(-1, 1) / self.unfolds)
        a = self.gleak_vleak
        c = cm_t + self.gleak + self.epsilon
        sens = self._terms("sens", x)
        if sens is not None:
            a = a + sens[0]
            c = c + sens[1]
        for _ in range(self.unfolds):
            rec = self._terms("rec", v)
            if rec is None:
                v = (cm_t * v + a) / c
            else:
                v = (cm_t * v + (a + rec[0])) / (c + rec[1])
        y = v[:, : self.output_size] if self.output_size < self.state_size else v
        if self.output_w is not None:
            y = y * self.output_w
        if self.output_b is not None:
            y = y + self.output_b
        return y, v


class PolicyStep(nn.Module):
    """One control step of a :class:`Policy` as a pure function ``(observation, state, dt) -> (action,
    next_state)``: the module that is exported.

    It runs the policy's own modules (perception head, controller cell, action head) on a float32 CPU copy in
    eval mode (the LTC as :class:`LTCMatmulStep` or its ``"reference"`` solver, the CfC through its
    step-by-step reference path, never a native kernel); image observations arrive as raw uint8 frames
    ``(B, H, W, C)`` and are scaled and standardised here exactly as :meth:`Policy.act` does.

    Args:
        policy: the policy (copied; the original is left unchanged).
        ltc_solver: how LTC cells are exported: ``"matmul"`` (:class:`LTCMatmulStep`, the fast default) or
            ``"reference"`` (the cell's own reference solver, op for op).
    """

    def __init__(self, policy: Policy, ltc_solver: str = "matmul") -> None:
        super().__init__()
        if not isinstance(policy, Policy):
            raise ExportError(f"export needs an ltc_control.policy.Policy, got {type(policy).__name__}")
        p = copy.deepcopy(policy).to(device="cpu", dtype=torch.float32).eval()
        for m in p.modules():
            if isinstance(m, LTCCell):
                m.implementation = "reference"
        for prm in p.parameters():
            prm.requires_grad_(False)
        if ltc_solver not in LTC_SOLVERS:
            raise ExportError(f"unknown ltc_solver {ltc_solver!r}; choose from {', '.join(LTC_SOLVERS)}")
        self.policy = p
        self.ltc_solver = ltc_solver
        cell = p.controller.cell
        self.ltc: LTCMatmulStep | None = (
            LTCMatmulStep(cell) if isinstance(cell, LTCCell) and ltc_solver == "matmul" else None
        )
        cfg = p.config
        self.image = cfg.observation == "image"
        self.standardize = bool(cfg.perception.standardize)

    def forward(self, observation: Tensor, state: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """``observation (B, H, W, C) uint8 | (B, D)``, ``state (B, S)``, ``dt (B,)`` -> ``(action (B, A),
        next_state (B, S))``."""
        p = self.policy
        if self.image:
            assert p.perception is not None
            x = observation.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            if self.standardize:
                x = standardize(x)
            feats = p.perception(x)
        else:
            feats = observation.to(torch.float32)
        if self.ltc is not None:
            y, next_state = self.ltc(feats, state, dt)
        else:
            y, next_state = p.controller.cell(feats, state, dt)
        return p.action_head(y), next_state


@contextlib.contextmanager
def tracing_context() -> Iterator[None]:
    """What tracing the step needs: gradients enabled (the cells' step-by-step reference paths, not the
    no-grad native fast paths), value checks off (they branch on tensor values; the cells' ``check_step`` also
    skips its batch-size check while exporting), and the exporters' chatter silenced."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with torch.enable_grad(), cell_base.validation(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def example_inputs(policy: Policy, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    cfg = policy.config
    if cfg.observation == "image":
        obs = torch.zeros((batch, *cfg.image_shape), dtype=torch.uint8)
    else:
        obs = torch.zeros((batch, cfg.vector_size), dtype=torch.float32)
    return obs, torch.zeros(batch, policy.state_size), torch.full((batch,), float(cfg.controller.dt))


def export_program(step: PolicyStep, example: tuple[Tensor, Tensor, Tensor]) -> Any:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = {"observation": {0: batch}, "state": {0: batch}, "dt": {0: batch}}
    with tracing_context():
        return torch.export.export(step, example, dynamic_shapes=dynamic)
