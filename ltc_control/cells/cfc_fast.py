"""Fast CfC sequence and step paths: a hand-written BPTT over the layers of a
:class:`~ltc_control.cells.cfc_plan.Plan`, the C forward kernel where it applies
(:mod:`ltc_control.cells.cfc_kernel`), and cached no-grad steps.

``CfCCell`` and ``WiredCfCCell`` (:mod:`ltc_control.cells.cfc`) run ``forward_sequence`` here
(:func:`cfc_sequence` / :func:`cfc_states`), and ``forward(x, h, dt)`` too when gradients are off
(:func:`cfc_step`, on weights cached on the cell by :func:`cached_plan`, keyed on every parameter's and
buffer's identity and version counter). Their step-by-step ``forward`` with gradients on stays the slow,
obviously-correct reference (ncps' arithmetic, module by module); ``tests/test_cfc.py`` holds every path here
equal to it and to ncps. The backward (:class:`_CfCSequence`) is ``once_differentiable`` (no double backward).
How the paths are made fast and what was measured is in ``docs/fast_paths.md``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltc_control.cells.cfc_kernel import (
    LAYER_META,
    CfCKernelUnavailableWarning,
    kernel_run,
    kernel_status,
    load_kernel,
    pack,
    use_kernel,
)
from ltc_control.cells.cfc_plan import Plan, PlanLayer, cell_layout

if TYPE_CHECKING:
    from ltc_control.cells.cfc import CfCCell, WiredCfCCell


# the kernel's public names are re-exported for code written against this module
__all__ = [
    "CfCKernelUnavailableWarning",
    "Plan",
    "cached_plan",
    "cfc_plan",
    "cfc_sequence",
    "cfc_states",
    "cfc_step",
    "kernel_status",
    "load_kernel",
    "supports",
]

_VERSION = operator.attrgetter("_version")


def cfc_plan(cell: CfCCell | WiredCfCCell) -> Plan:
    """The effective weights of ``cell`` (computed with autograd, so gradients reach the parameters); each
    cell lays out its own (``CfCCell.plan`` / ``WiredCfCCell.plan``)."""
    return cell.plan()


# ------------------------------------------------------------------------------------------- forward
@dataclass
class _Saved:
    """What the backward pass needs beyond the inputs and the states (lists over time, one per layer)."""

    f: list[list[Tensor]]  # gated: tanh([ff1, ff2]); pure: the heads' pre-activation
    s: list[list[Tensor]]  # gated: the gate; pure: the exponential
    bb_pre: list[list[list[Tensor]]]  # backbone pre-activations, per layer and stage
    bb_out: list[list[list[Tensor]]]  # backbone outputs, per layer and stage
    stacked: list[tuple[Tensor, Tensor]] | None = None  # per layer (f, s) as (T, B, .) (the kernel's output)

    def f_s(self, l_id: int) -> tuple[Tensor, Tensor]:
        """``f`` and ``s`` of layer ``l_id`` over all steps, ``(T, B, .)``."""
        if self.stacked is not None:
            return self.stacked[l_id]
        return torch.stack(self.f[l_id]), torch.stack(self.s[l_id])


def _times(ts: Tensor | float, batch: int, like: Tensor) -> Tensor | None:
    """``ts`` as the loop uses it: ``None`` for exactly 1.0 (``x * 1.0 == x``), a tensor otherwise (a
    tensor operand dispatches faster than a Python scalar, and gives the same float result)."""
    if isinstance(ts, Tensor):
        return ts
    if ts == 1.0:
        return None
    return torch.full((1, batch, 1), float(ts), dtype=like.dtype, device=like.device)


_Spec = tuple[Any, ...]


def _prepare(
    plan: Plan, batch: int, like: Tensor, hoisted: bool, starts: list[int] | None = None
) -> tuple[Tensor, Tensor, list[_Spec]]:
    """Loop-invariant tensors: the transposed block-diagonal recurrent weight ``(N, sum of widths)``, every
    layer's first bias concatenated, and one tuple per layer for :func:`_layers_step` (with ``hoisted``,
    layer 0's input part is left to the caller). With ``starts`` (see :func:`cell_layout`) the state is
    read and written in the cell's own order, layer ``l`` at ``starts[l]:starts[l] + n_l``; otherwise in
    layer order."""
    layers = plan.layers
    single = len(layers) == 1
    wrec_t = layers[0].wh.t() if single else torch.block_diag(*[lay.wh for lay in layers]).t()
    if starts is not None and plan.inv_perm is not None:
        wrec_t = wrec_t[plan.inv_perm]  # row i: the cell's neuron i (layer position inv_perm[i])
    bias = layers[0].b0 if single else torch.cat([lay.b0 for lay in layers])
    specs: list[_Spec] = []
    o0 = 0
    so = 0
    for l_id, lay in enumerate(layers):
        if starts is not None:
            so = starts[l_id]
        n = lay.n
        pure = None
        if lay.mode == "pure":
            assert lay.A is not None and lay.w_tau is not None
            pure = (-lay.A, lay.A, torch.abs(lay.w_tau))
        specs.append(
            (
                None if single else (o0, o0 + lay.width0),
                None if single and so == 0 else (so, so + n),
                n,
                None if (l_id == 0 and hoisted) else lay.wu.t(),
                [(w.t(), b) for w, b in lay.mlp],
                None if lay.head is None else (lay.head[0].t(), lay.head[1]),
                lay.act,
                torch.ones(batch, n, dtype=like.dtype, device=like.device) if lay.mode == "default" else None,
                pure,
            )
        )
        o0 += lay.width0
        so += n
    return wrec_t, bias, specs


def _layers_step(
    specs: list[_Spec],
    r: Tensor,
    x: Tensor | None,
    st: Tensor,
    ts_t: Tensor | None,
    neg_ts_t: Tensor | None,
    save: _Saved | None,
) -> None:
    """One step of every layer: ``r`` holds each layer's recurrent part (plus bias, plus layer 0's input part
    when hoisted); the new layer-ordered state is written into ``st (B, N)``."""
    u = x
    for l_id, (ws, ss, n, wu_t, mlp_t, head_t, act, one, pure) in enumerate(specs):
        p = r if ws is None else r[:, ws[0] : ws[1]]
        if wu_t is not None:
            assert u is not None
            p = torch.addmm(p, u, wu_t)
        if head_t is not None:
            z = act(p)
            if save is not None:
                save.bb_pre[l_id][0].append(p)
                save.bb_out[l_id][0].append(z)
            for k, (w_t, b) in enumerate(mlp_t):
                a = torch.addmm(b, z, w_t)
                z = act(a)
                if save is not None:
                    save.bb_pre[l_id][k + 1].append(a)
                    save.bb_out[l_id][k + 1].append(z)
            p = torch.addmm(head_t[1], z, head_t[0])
        dst = st if ss is None else st[:, ss[0] : ss[1]]
        if pure is not None:
            # -A * exp(-ts * (|w_tau| + |pre|)) * pre + A
            arg = pure[2] + torch.abs(p)
            e = torch.exp(torch.neg(arg) if neg_ts_t is None else neg_ts_t * arg)
            torch.add(pure[0] * e * p, pure[1], out=dst)
            if save is not None:
                save.f[l_id].append(p)
                save.s[l_id].append(e)
        else:
            f = torch.tanh(p[:, : 2 * n])
            z = p[:, 2 * n : 3 * n]
            if ts_t is not None:
                z = z * ts_t
            gate = torch.sigmoid(z + p[:, 3 * n :])
            if save is not None:
                save.f[l_id].append(f)
                save.s[l_id].append(gate)
            if one is None:  # no_gate: ff1 + t * ff2
                torch.add(f[:, :n], gate * f[:, n:], out=dst)
            else:  # default: ff1 * (1 - t) + t * ff2
                torch.add(f[:, :n] * (one - gate), gate * f[:, n:], out=dst)
        u = dst


def _run(
    plan: Plan,
    x_tb: Tensor,
    hold: Tensor,
    ts: Tensor | float,
    resets: Tensor | None,
    save: _Saved | None,
) -> Tensor:
    """Runs the sequence ``x_tb (T, B, S)`` from the layer-ordered state ``hold (B, N)``, without a graph.

    Args:
        plan: effective weights.
        x_tb: inputs, time-major.
        hold: initial state in layer order.
        ts: elapsed times ``(T, B, 1)`` or one float.
        resets: ``(T, B, 1)`` episode starts (1: reset to zeros before the step) or ``None``.
        save: filled with what the backward pass needs, or ``None``.

    Returns:
        The layer-ordered states after every step, ``(T, B, N)``.
    """
    layers = plan.layers
    steps, batch = int(x_tb.shape[0]), int(x_tb.shape[1])
    first = layers[0]
    # layer 0's input part hoisted out of the loop: one matmul over all T steps, with every layer's bias
    wrec_t, bias, specs = _prepare(plan, batch, x_tb, hoisted=True)
    xp = F.linear(x_tb, first.wu, first.b0)
    if len(layers) > 1:
        xp = torch.cat([xp, bias[first.width0 :].expand(steps, batch, -1)], dim=2)
    tsv = _times(ts, batch, x_tb)
    neg_ts = None if tsv is None else -tsv
    every = tsv is not None and tsv.shape[0] > 1
    keep = None if resets is None else 1.0 - resets
    states = torch.empty(steps, batch, sum(plan.sizes), dtype=x_tb.dtype, device=x_tb.device)
    if save is not None:
        save.f = [[] for _ in layers]
        save.s = [[] for _ in layers]
        save.bb_pre = [[[] for _ in range(len(lay.mlp) + 1)] for lay in layers]
        save.bb_out = [[[] for _ in range(len(lay.mlp) + 1)] for lay in layers]
    for t in range(steps):
        if keep is not None:
            hold = keep[t] * hold
        k = t if every else 0
        st = states[t]
        _layers_step(
            specs,
            torch.addmm(xp[t], hold, wrec_t),
            None,
            st,
            None if tsv is None else tsv[k],
            None if neg_ts is None else neg_ts[k],
            save,
        )
        hold = st
    return states


# ------------------------------------------------------------------------------------------- backward
def _act_grad(act: Callable[[Tensor], Tensor], pre: Tensor) -> Tensor:
    """Elementwise derivative of ``act`` at ``pre``, exactly as autograd computes it."""
    with torch.enable_grad():
        a = pre.detach().requires_grad_(True)
        out = act(a)
        (g,) = torch.autograd.grad(out, a, torch.ones_like(out))
    return g


def _coefficients(lay: PlanLayer, f: Tensor, s: Tensor, ts: Tensor | None) -> Tensor:
    """``d h' / d pre`` per head, ``(T, B, H n)``, so that the backward loop's step is one ``g * K``."""
    n = lay.n
    if lay.mode == "pure":
        assert lay.A is not None
        return -lay.A * s * (1.0 - (torch.abs(f) if ts is None else ts * torch.abs(f)))
    f1, f2 = f[..., :n], f[..., n:]
    ds = s * (1.0 - s)
    if lay.mode == "no_gate":
        k1 = 1.0 - f1 * f1
        kz = f2 * ds
    else:
        k1 = (1.0 - s) * (1.0 - f1 * f1)
        kz = (f2 - f1) * ds
    k2 = s * (1.0 - f2 * f2)
    return torch.cat([k1, k2, kz if ts is None else kz * ts, kz], dim=-1)


class _CfCSequence(torch.autograd.Function):
    """A CfC sequence with a hand-written backward pass through time (BPTT).

    The forward loop runs without an autograd graph. The backward loop costs one broadcast multiply and one
    small matmul per layer and step plus one block-diagonal matmul per step: every elementwise derivative
    (``tanh'``, ``sigmoid'``, the gate mixing, the backbone activations) is computed for all steps at once
    after the forward loop, and every weight gradient is one matmul over all ``T * B`` rows.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        plan: Plan,
        ts: Tensor | float,
        resets: Tensor | None,
        x_tb: Tensor,
        hold0: Tensor,
        *weights: Tensor,
    ) -> Tensor:
        plan = plan.with_tensors(weights)
        saved = _Saved([], [], [], [])
        with torch.no_grad():
            states = kernel_forward_saving(plan, x_tb, hold0, ts, resets, saved)
            if states is None:
                states = _run(plan, x_tb, hold0, ts, resets, saved)
        ctx.plan, ctx.ts, ctx.resets, ctx.saved = plan, ts, resets, saved
        ctx.save_for_backward(x_tb, hold0, states)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_states: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        plan: Plan = ctx.plan
        saved: _Saved = ctx.saved
        resets: Tensor | None = ctx.resets
        x_tb, hold0, states = ctx.saved_tensors
        g_states = g_states.contiguous()
        layers = plan.layers
        single = len(layers) == 1
        steps, batch = int(states.shape[0]), int(states.shape[1])
        tsv = _times(ctx.ts, batch, states)
        n_off = [0]
        w_off = [0]
        for lay in layers:
            n_off.append(n_off[-1] + lay.n)
            w_off.append(w_off[-1] + lay.width0)
        coef = [
            _coefficients(lay, *saved.f_s(i), tsv).view(steps, batch, lay.heads, lay.n)
            for i, lay in enumerate(layers)
        ]
        dact = [
            [_act_grad(lay.act, torch.stack(pre)) for pre in saved.bb_pre[i]] if lay.act is not None else []
            for i, lay in enumerate(layers)
        ]
        wh_blk = layers[0].wh if single else torch.block_diag(*[lay.wh for lay in layers])
        keep = None if resets is None else 1.0 - resets
        # gradients of every layer's first affine map (written in place, step by step, backwards)
        g0_all = torch.empty(steps, batch, w_off[-1], dtype=states.dtype, device=states.device)
        g_heads = [
            torch.empty(steps, batch, lay.heads * lay.n, dtype=states.dtype, device=states.device)
            if lay.head is not None
            else None
            for lay in layers
        ]
        g_mlp: list[list[list[Tensor]]] = [[[] for _ in lay.mlp] for lay in layers]
        g_new: list[list[Tensor]] = [[] for _ in layers]  # pure mode: gradients of the new states
        specs = [
            (n_off[i], n_off[i + 1], w_off[i], w_off[i + 1], lay.heads, lay.n, lay.mode == "pure")
            for i, lay in enumerate(layers)
        ]
        carry: Tensor | None = None
        for t in range(steps - 1, -1, -1):
            gs = g_states[t] if carry is None else g_states[t] + carry
            g_u: Tensor | None = None
            g0_t = g0_all[t]
            for l_id in range(len(layers) - 1, -1, -1):
                n0, n1, w0, w1, heads, n, pure = specs[l_id]
                lay = layers[l_id]
                g = gs if single else gs[:, n0:n1]
                if g_u is not None:
                    g = g + g_u
                if pure:
                    g_new[l_id].append(g)
                dst = g0_t if single else g0_t[:, w0:w1]
                g_head = g_heads[l_id]
                if g_head is None:
                    torch.mul(g.unsqueeze(1), coef[l_id][t], out=dst.view(batch, heads, n))
                else:
                    gp = g_head[t]
                    torch.mul(g.unsqueeze(1), coef[l_id][t], out=gp.view(batch, heads, n))
                    assert lay.head is not None
                    gz = gp @ lay.head[0]
                    for k in range(len(lay.mlp) - 1, -1, -1):
                        ga = gz * dact[l_id][k + 1][t]
                        g_mlp[l_id][k].append(ga)
                        gz = ga @ lay.mlp[k][0]
                    torch.mul(gz, dact[l_id][0][t], out=dst)
                if l_id > 0:
                    g_u = dst @ lay.wu
            carry = g0_t @ wh_blk
            if keep is not None:
                carry = carry * keep[t]
        assert carry is not None
        rows = steps * batch
        g0_flat = g0_all.view(rows, -1)
        prev = torch.cat([hold0.unsqueeze(0), states[:-1]])
        if keep is not None:
            prev = keep * prev
        hold = prev.reshape(rows, -1)
        grads: list[Tensor] = []
        for l_id, lay in enumerate(layers):
            g = g0_flat[:, w_off[l_id] : w_off[l_id + 1]]
            if l_id == 0:
                u = x_tb.reshape(rows, -1)
            else:
                u = states[..., n_off[l_id - 1] : n_off[l_id]].reshape(rows, -1)
            grads += [g.t() @ u, g.t() @ hold[:, n_off[l_id] : n_off[l_id + 1]], g.sum(0)]
            g_head = g_heads[l_id]
            if g_head is not None:
                zs = [torch.stack(o).reshape(rows, -1) for o in saved.bb_out[l_id]]
                for k in range(len(lay.mlp)):
                    ga = torch.stack(g_mlp[l_id][k][::-1]).reshape(rows, -1)
                    grads += [ga.t() @ zs[k], ga.sum(0)]
                gh = g_head.view(rows, -1)
                grads += [gh.t() @ zs[-1], gh.sum(0)]
            if lay.mode == "pure":
                assert lay.A is not None and lay.w_tau is not None
                gn = torch.stack(g_new[l_id][::-1])
                f_l, s_l = saved.f_s(l_id)
                pe = f_l * s_l
                c_w = lay.A * pe if tsv is None else lay.A * pe * tsv
                g_wtau = (gn * c_w).sum((0, 1)).unsqueeze(0) * torch.sign(lay.w_tau)
                g_a = (gn * (1.0 - pe)).sum((0, 1)).unsqueeze(0)
                grads += [g_wtau, g_a]
        g_x = None
        if ctx.needs_input_grad[3]:
            g_x = g0_all[..., : layers[0].width0] @ layers[0].wu
        g_h0 = carry if ctx.needs_input_grad[4] else None
        return (None, None, None, g_x, g_h0, *grads)


def kernel_forward_saving(
    plan: Plan,
    x_tb: Tensor,
    hold0: Tensor,
    ts: Tensor | float,
    resets: Tensor | None,
    saved: _Saved,
) -> Tensor | None:
    """The training forward on the kernel: layer-ordered states ``(T, B, N)`` with ``saved.stacked`` filled,
    or ``None`` where the kernel does not apply (no kernel, not CPU float32/float64, a backbone)."""
    if any(lay.head is not None for lay in plan.layers):
        return None
    extra = [t for t in (ts, resets) if isinstance(t, Tensor)]
    if any(t.dtype != x_tb.dtype or t.device.type != "cpu" for t in (x_tb, hold0, *extra)):
        return None
    if plan.layers[0].wu.dtype != x_tb.dtype or load_kernel() is None:
        return None
    packed = pack(plan.with_tensors([t.detach() for t in plan.tensors()]), x_tb, layer_order=True)
    kernel = load_kernel()
    if packed is None or kernel is None:
        return None
    b, t = int(x_tb.shape[1]), int(x_tb.shape[0])
    save = (
        torch.empty(b, t, int(packed.meta[0]), dtype=x_tb.dtype),
        torch.empty(b, t, int(hold0.shape[1]), dtype=x_tb.dtype),
    )
    ts_bt = ts.transpose(0, 1).reshape(b, t).contiguous() if isinstance(ts, Tensor) else ts
    res = None if resets is None else resets.transpose(0, 1).reshape(b, t).contiguous()
    out = kernel_run(kernel, packed, x_tb.transpose(0, 1).contiguous(), hold0.contiguous(), ts_bt, res, save)
    meta = packed.meta.tolist()
    stacked = []
    for l_id, lay in enumerate(plan.layers):
        m = meta[8 + LAYER_META * l_id :]
        width = lay.n if lay.mode == "pure" else 2 * lay.n
        stacked.append(
            (
                save[0][..., m[8] : m[8] + width].transpose(0, 1),
                save[1][..., m[9] : m[9] + lay.n].transpose(0, 1),
            )
        )
    saved.stacked = stacked
    return out.transpose(0, 1)


# ------------------------------------------------------------------------------------------- entry points
def supports(cell: CfCCell | WiredCfCCell, dt: float | Tensor | None) -> bool:
    """Whether :func:`cfc_sequence` can run ``cell`` (else use the step-by-step loop): not with active
    backbone dropout (training mode), nor when a gradient with respect to ``dt`` is wanted."""
    if cell.training and getattr(cell, "backbone_dropout", 0.0) > 0.0:
        return False
    return not (isinstance(dt, Tensor) and dt.requires_grad and torch.is_grad_enabled())


def cfc_states(
    cell: CfCCell | WiredCfCCell,
    x: Tensor,
    h: Tensor,
    dt: float | Tensor | None,
    resets: Tensor | None,
) -> Tensor:
    """Every step's state of a CfC cell on validated inputs (``RecurrentCell._prepare_sequence``'s output).

    With gradients enabled the effective weights are built with autograd and the loop runs in
    :class:`_CfCSequence` (hand-written BPTT); without, on the cached weights of :func:`cached_plan`.

    Returns:
        ``(B, T, N)`` in the cell's state order, equal to the step-by-step reference up to float rounding.
    """
    if not supports(cell, dt):
        raise ValueError("cfc_states cannot run this cell/dt (see cfc_fast.supports); use the step loop.")
    grad = torch.is_grad_enabled()
    plan = cfc_plan(cell) if grad else cached_plan(cell)
    x_tb = x.transpose(0, 1)
    hold = h if plan.perm is None else h[:, plan.perm]
    ts: Tensor | float = 1.0 if dt is None else (dt.transpose(0, 1) if isinstance(dt, Tensor) else dt)
    res = None if resets is None else resets.transpose(0, 1)
    weights = plan.tensors()
    if grad and (x.requires_grad or h.requires_grad or any(w.requires_grad for w in weights)):
        states = _CfCSequence.apply(plan, ts, res, x_tb, hold, *weights)
    else:
        with torch.no_grad():
            hs = _kernel_sequence(cell, plan, x, h, dt, resets)
            if hs is not None:
                return hs
            states = _run(plan, x_tb, hold, ts, res, None)
    hs = states.transpose(0, 1)
    return (hs if plan.inv_perm is None else hs[..., plan.inv_perm]).contiguous()


def cfc_sequence(
    cell: CfCCell | WiredCfCCell,
    x: Tensor,
    h: Tensor,
    dt: float | Tensor | None,
    resets: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """``forward_sequence`` of a CfC cell on validated inputs: ``(y (B, T, M), h_T (B, N))`` from
    :func:`cfc_states`."""
    hs = cfc_states(cell, x, h, dt, resets)
    return cell.readout(hs), hs[:, -1]


def _kernel_sequence(
    cell: CfCCell | WiredCfCCell,
    plan: Plan,
    x: Tensor,
    h: Tensor,
    dt: float | Tensor | None,
    resets: Tensor | None,
) -> Tensor | None:
    """The no-grad sequence on the kernel, ``(B, T, N)`` in the cell's order; ``None`` where it does not apply
    (no kernel, not CPU float32/float64, or a backbone: batched matmuls beat the kernel there)."""
    if any(lay.head is not None for lay in plan.layers):
        return None
    packed = _step_prep(cell, plan, int(x.shape[0]), x)[3]
    kernel = use_kernel(packed, x, h, *(t for t in (dt, resets) if isinstance(t, Tensor)))
    if kernel is None:
        return None
    assert packed is not None
    b, t = int(x.shape[0]), int(x.shape[1])
    hk = h if packed.in_cell_order else h[:, plan.perm]
    ts = dt.reshape(b, t).contiguous() if isinstance(dt, Tensor) else dt
    res = None if resets is None else resets.reshape(b, t).contiguous()
    out = kernel_run(kernel, packed, x.contiguous(), hk.contiguous(), ts, res)
    return out if packed.in_cell_order else out[..., plan.inv_perm]


def _tensor_dicts(cell: nn.Module) -> list[dict[str, Any]]:
    """The ``_parameters`` and ``_buffers`` dicts of every module of ``cell`` that holds tensors (the module
    tree is fixed after construction; the dicts are read on every call, so replaced tensors are seen)."""
    dicts = [d for m in cell.modules() for d in (m._parameters, m._buffers)]
    return [d for d in dicts if d]


def cached_plan(cell: CfCCell | WiredCfCCell) -> Plan:
    """:func:`cfc_plan` computed without gradients and cached on the cell until a parameter or buffer changes.

    The cache key is every parameter's and buffer's identity and the sum of their version counters, so
    optimizer steps, ``load_state_dict``, parameter replacement and ``.to()`` all invalidate it. Replacing
    ``param.data`` by hand bypasses the version counter: call ``cell.clear_cache()`` afterwards.
    """
    cache = cell._plan_cache
    # the module tree is fixed after construction; its tensors are read from the module dicts every call
    dicts = cache[3] if cache is not None else _tensor_dicts(cell)
    sources = list(chain.from_iterable(map(dict.values, dicts)))
    key = (sum(map(_VERSION, sources)), torch.is_inference_mode_enabled())
    if (
        cache is not None
        and cache[0] == key
        and len(cache[1]) == len(sources)
        and all(map(operator.is_, sources, cache[1]))
    ):
        return cache[2]  # type: ignore[no-any-return]
    with torch.no_grad():
        plan = cfc_plan(cell)
        plan = plan.with_tensors([t.contiguous() for t in plan.tensors()])
    cell._plan_cache = (key, sources, plan, dicts)
    return plan


def _step_prep(cell: CfCCell | WiredCfCCell, plan: Plan, batch: int, like: Tensor) -> tuple[Any, ...]:
    """The per-(plan, batch size, dtype) constants of :func:`cfc_step`, cached on the cell."""
    prep = cell._step_cache
    if prep is None or prep[0] is not plan or prep[1] != batch or prep[2] != like.dtype:
        starts = cell_layout(plan)
        weights_dtype = plan.layers[0].wu.dtype
        packed = pack(plan, like) if like.dtype == weights_dtype else None
        prep = (
            plan,
            batch,
            like.dtype,
            packed,
            starts is not None,
            *_prepare(plan, batch, like, False, starts),
        )
        cell._step_cache = prep
    return prep


def cfc_step(cell: CfCCell | WiredCfCCell, x: Tensor, h: Tensor, ts: Tensor) -> Tensor:
    """One step without gradients on the cached plan; returns the new state ``(B, N)`` in the cell's order.

    Runs the compiled kernel (CPU, float32 / float64) when it is available, else the PyTorch loop body.

    Args:
        cell: the cell.
        x: input ``(B, S)``.
        h: state ``(B, N)`` in the cell's order.
        ts: elapsed time ``(B, 1)``.
    """
    plan = cached_plan(cell)
    batch = int(x.shape[0])
    _, _, _, packed, in_place, wrec_t, bias, specs = _step_prep(cell, plan, batch, x)
    kernel = use_kernel(packed, x, h, ts)
    if kernel is not None:
        assert packed is not None
        hk = h if packed.in_cell_order else h[:, plan.perm]
        out = kernel_run(kernel, packed, x.contiguous()[:, None], hk.contiguous(), ts.contiguous(), None)[
            :, 0
        ]
        return out if packed.in_cell_order else out[:, plan.inv_perm]
    permute = plan.perm is not None and not in_place
    hold = h[:, plan.perm] if permute else h
    new = torch.empty(batch, hold.shape[1], dtype=hold.dtype, device=hold.device)
    neg_ts = -ts if plan.layers[0].mode == "pure" else None
    _layers_step(specs, torch.addmm(bias, hold, wrec_t), x, new, ts, neg_ts, None)
    return new[:, plan.inv_perm] if permute else new
