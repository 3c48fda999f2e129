"""The pieces both CfC cells are built from: the activation, the CfC update of one (sub-)cell, the heads, one
masked layer of a wired cell, and the argument checks (the equations are in :mod:`ltc_control.cells.cfc`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltc_control.wirings import Wiring

if TYPE_CHECKING:
    pass


CfCMode = Literal["default", "no_gate", "pure"]


PolarityMode = Literal["ignore", "init", "constrain"]


MODES: tuple[str, ...] = ("default", "no_gate", "pure")


POLARITY_MODES: tuple[str, ...] = ("ignore", "init", "constrain")


class LeCunTanh(nn.Module):
    """LeCun's scaled tanh, ``1.7159 * tanh(0.666 * x)`` (ncps' ``LeCun`` activation, same constants)."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation elementwise; any shape."""
        return 1.7159 * torch.tanh(0.666 * x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "lecun_tanh": LeCunTanh,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown CfC mode {mode!r}; valid modes are {list(MODES)}.")


def cfc_update(
    mode: str,
    z: Tensor,
    ts: Tensor | float,
    ff1: nn.Linear,
    ff1_weight: Tensor,
    ff2: nn.Linear | None,
    ff2_weight: Tensor | None,
    time_a: nn.Linear | None,
    time_b: nn.Linear | None,
    gate_weights: tuple[Tensor, Tensor] | None,
    w_tau: Tensor | None,
    A: Tensor | None,
) -> Tensor:
    """The closed-form update shared by the dense and the wired cells.

    Args:
        mode: ``"default"``, ``"no_gate"`` or ``"pure"``.
        z: backbone features ``(B, F)``.
        ts: elapsed time, a float or a tensor ``(B, 1)`` broadcasting over neurons.
        ff1: first head (its bias is used).
        ff1_weight: the effective (possibly masked / signed) weight of ``ff1``, ``(N, F)``.
        ff2: second head and its effective weight (``None`` in pure mode).
        time_a: time-constant heads (``None`` in pure mode); ``gate_weights`` their effective weights,
            or ``None`` to use the modules' own weights.
        time_b: see ``time_a``.
        gate_weights: see ``time_a``.
        w_tau: pure mode's ``(1, N)`` time-constant offset.
        A: pure mode's ``(1, N)`` asymptote.

    Returns:
        The new state ``(B, N)``.
    """
    pre1 = F.linear(z, ff1_weight, ff1.bias)
    if mode == "pure":
        assert w_tau is not None and A is not None
        return -A * torch.exp(-ts * (torch.abs(w_tau) + torch.abs(pre1))) * pre1 + A
    assert ff2 is not None and ff2_weight is not None and time_a is not None and time_b is not None
    f1 = torch.tanh(pre1)
    f2 = torch.tanh(F.linear(z, ff2_weight, ff2.bias))
    if gate_weights is None:
        t_a = time_a(z)
        t_b = time_b(z)
    else:
        t_a = F.linear(z, gate_weights[0], time_a.bias)
        t_b = F.linear(z, gate_weights[1], time_b.bias)
    t_interp = torch.sigmoid(t_a * ts + t_b)
    if mode == "no_gate":
        return f1 + t_interp * f2
    return f1 * (1.0 - t_interp) + t_interp * f2


def xavier_2d_(module: nn.Module) -> None:
    # ncps initialises every trainable 2-D parameter of a CfC cell (also pure mode's (1, N) w_tau and A) with
    # Xavier-uniform; doing the same keeps freshly built models statistically comparable to ncps ones.
    for p in module.parameters(recurse=False):
        if p.dim() == 2 and p.requires_grad:
            nn.init.xavier_uniform_(p)


def add_heads(module: nn.Module, features: int, units: int, mode: str) -> None:
    """The CfC heads in ncps' names: ``ff1`` always; ``ff2``, ``time_a``, ``time_b`` (gated modes) or
    ``w_tau``, ``A`` (pure mode); the others are set to ``None``."""
    gated = mode != "pure"
    heads: dict[str, nn.Module | nn.Parameter | None] = {
        "ff1": nn.Linear(features, units),
        "ff2": nn.Linear(features, units) if gated else None,
        "time_a": nn.Linear(features, units) if gated else None,
        "time_b": nn.Linear(features, units) if gated else None,
        "w_tau": None if gated else nn.Parameter(torch.zeros(1, units)),
        "A": None if gated else nn.Parameter(torch.ones(1, units)),
    }
    for name, value in heads.items():
        setattr(module, name, value)


class WiredCfCLayer(nn.Module):
    """One layer of a :class:`WiredCfCCell`: a backbone-free CfC over ``concat(layer input, own state)``.

    The effective weights are ``W * mask`` (``|W| * sign * mask`` with polarity constrained), so masked
    entries never influence the output and receive exactly zero gradient.
    """

    def __init__(
        self,
        in_features: int,
        units: int,
        mode: str,
        synapse_mask: np.ndarray,
        gate_mask: np.ndarray,
        sign: np.ndarray,
        constrain: bool,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.in_features = in_features
        self.units = units
        self.constrain = constrain
        features = in_features + units
        self.ff1: nn.Linear
        self.ff2: nn.Linear | None
        self.time_a: nn.Linear | None
        self.time_b: nn.Linear | None
        self.w_tau: nn.Parameter | None
        self.A: nn.Parameter | None
        add_heads(self, features, units, mode)
        for m in self.modules():
            xavier_2d_(m)
        # (units, in + units): row j = the synapses into neuron j, as F.linear wants them.
        self.ff_mask: Tensor
        self.gate_mask: Tensor
        self.sign: Tensor
        self.register_buffer("ff_mask", torch.as_tensor(synapse_mask, dtype=torch.float32))
        self.register_buffer("gate_mask", torch.as_tensor(gate_mask, dtype=torch.float32))
        self.register_buffer("sign", torch.as_tensor(sign, dtype=torch.float32))

    def _synaptic(self, w: Tensor) -> Tensor:
        if self.constrain:
            return torch.abs(w) * self.sign * self.ff_mask
        return w * self.ff_mask

    def forward(self, u: Tensor, h: Tensor, ts: Tensor | float) -> Tensor:
        """New layer state ``(B, units)`` from layer input ``u (B, in)`` and old state ``h (B, units)``."""
        z = torch.cat([u, h], dim=1)
        gates = None
        if self.time_a is not None and self.time_b is not None:
            gates = (self.time_a.weight * self.gate_mask, self.time_b.weight * self.gate_mask)
        return cfc_update(
            self.mode,
            z,
            ts,
            self.ff1,
            self._synaptic(self.ff1.weight),
            self.ff2,
            None if self.ff2 is None else self._synaptic(self.ff2.weight),
            self.time_a,
            self.time_b,
            gates,
            self.w_tau,
            self.A,
        )


def wiring_layers(wiring: Wiring) -> list[np.ndarray]:
    """The neuron indices of each CfC layer of ``wiring``, in processing order.

    NCP-style wirings (roles ``inter`` / ``command`` / ``motor``) give up to three layers, inter -> command ->
    motor (empty ones dropped), as ncps' ``NCP.get_neurons_of_layer``; any other wiring (roles ``hidden`` /
    ``motor``) is one layer holding every neuron in wiring order, as ncps' generic ``Wiring``.

    Args:
        wiring: the wiring.

    Returns:
        One ascending ``int64`` index array per layer; together they cover ``range(wiring.units)`` once.
    """
    roles = np.asarray(wiring.roles)
    if np.isin(roles, ["inter", "command"]).any():
        unknown = sorted(set(roles.tolist()) - {"inter", "command", "motor"})
        if unknown:
            raise ValueError(
                f"An NCP-style wiring may only have roles inter/command/motor, found also {unknown}."
            )
        layers = [np.flatnonzero(roles == r) for r in ("inter", "command", "motor")]
        return [idx.astype(np.int64) for idx in layers if idx.size > 0]
    return [np.arange(wiring.units, dtype=np.int64)]


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def check_layered(
    wiring: Wiring, layers: list[np.ndarray], adjacency: np.ndarray, sensory: np.ndarray
) -> None:
    """Reject synapses a layered CfC cannot express (they would be silently dropped, as ncps does)."""
    layer_of = np.empty(wiring.units, dtype=np.int64)
    for l_id, idx in enumerate(layers):
        layer_of[idx] = l_id
    src, dst = np.nonzero(adjacency)
    bad = [(int(s), int(d)) for s, d in zip(src, dst) if layer_of[d] - layer_of[s] not in (0, 1)]
    sens_dst = np.nonzero(sensory)[1]
    bad_sensory = sorted({int(d) for d in sens_dst if layer_of[d] != 0})
    if bad or bad_sensory:
        names = list(wiring.names)
        parts = []
        if bad:
            shown = ", ".join(f"{names[s]}->{names[d]}" for s, d in bad[:5])
            parts.append(f"{len(bad)} synapse(s) that skip or go back a layer ({shown})")
        if bad_sensory:
            parts.append(
                f"sensory synapses into non-first-layer neurons ({[names[d] for d in bad_sensory[:5]]})"
            )
        raise ValueError(
            "WiredCfCCell runs layer by layer (inter -> command -> motor, each also reading itself), but the "
            f"wiring has {' and '.join(parts)}. Use a strictly layered wiring (NCP/AutoNCP, or a one-layer "
            "generic wiring), "
            "or LTCCell, which accepts any adjacency."
        )
