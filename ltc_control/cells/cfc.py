"""Closed-form continuous-time (CfC) cells (Hasani et al. 2022), with ncps 1.0.1's equations.

Two cells live here, both behind the project's :class:`~ltc_control.cells.base.RecurrentCell` contract:

* :class:`CfCCell`: a dense CfC of ``units`` neurons with a shared backbone MLP and an optional linear readout
  ``fc`` (ncps puts that projection in its ``CfC`` wrapper as ``proj_size``; here it belongs to the cell so a
  cell is a complete controller).
* :class:`WiredCfCCell`: one CfC sub-cell per wiring layer (inter -> command -> motor), each masked by the
  wiring.

The update of one CfC (sub-)cell for input ``u (B, S)``, state ``h (B, N)`` and elapsed time ``ts``::

    z       = backbone(concat(u, h))              # identity when backbone_layers == 0
    ff1     = tanh(ff1(z)); ff2 = tanh(ff2(z))
    t       = sigmoid(time_a(z) * ts + time_b(z))
    default: h' = ff1 * (1 - t) + t * ff2
    no_gate: h' = ff1 + t * ff2
    pure:    h' = -A * exp(-ts * (|w_tau| + |ff1(z)|)) * ff1(z) + A     (ff1 without tanh)

The paper writes the gate as ``sigmoid(-f * t)``; ncps (and this module) use ``sigmoid(time_a * ts + time_b)``
with a free-signed learned ``time_a``, which absorbs the minus sign. Keeping ncps' sign lets weights copy 1:1.

Parameter names and shapes are those of ``ncps.torch.CfCCell`` (``backbone.<i>.weight``, ``ff1``, ``ff2``,
``time_a``, ``time_b``, ``w_tau (1, N)``, ``A (1, N)``) and of its ``CfC`` wrapper (``fc``), and, for the
wired cell, of ``ncps.torch.WiredCfCCell`` (``layer_<l>.ff1`` ...). :func:`cfc_from_ncps` converts a trained
``ncps.torch.CfC``.

Speed: ``forward_sequence`` and gradient-free ``forward`` calls run the fast paths of
:mod:`ltc_control.cells.cfc_fast` (a C forward kernel, a hand-written BPTT, cached no-grad weights; about 5x
ncps' CfC for training, forward and batch-1 steps on the wired 19-neuron NCP, about 2x for the dense CfC). The
step-by-step ``forward`` with gradients enabled is the reference they are tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltc_control.cells import cfc_fast
from ltc_control.cells.base import RecurrentCell
from ltc_control.wirings import Wiring

if TYPE_CHECKING:
    from ltc_control.sequence import SequenceModel

CfCMode = Literal["default", "no_gate", "pure"]
PolarityMode = Literal["ignore", "init", "constrain"]

_MODES: tuple[str, ...] = ("default", "no_gate", "pure")
_POLARITY_MODES: tuple[str, ...] = ("ignore", "init", "constrain")


class LeCunTanh(nn.Module):
    """LeCun's scaled tanh, ``1.7159 * tanh(0.666 * x)`` (ncps' ``LeCun`` activation, same constants)."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation elementwise; any shape."""
        return 1.7159 * torch.tanh(0.666 * x)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "lecun_tanh": LeCunTanh,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"Unknown CfC mode {mode!r}; valid modes are {list(_MODES)}.")


def _cfc_update(
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


def _xavier_2d_(module: nn.Module) -> None:
    # ncps initialises every trainable 2-D parameter of a CfC cell (also pure mode's (1, N) w_tau and A) with
    # Xavier-uniform; doing the same keeps freshly built models statistically comparable to ncps ones.
    for p in module.parameters(recurse=False):
        if p.dim() == 2 and p.requires_grad:
            nn.init.xavier_uniform_(p)


def _add_heads(module: nn.Module, features: int, units: int, mode: str) -> None:
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


class _FastCfC(RecurrentCell):
    """What both CfC cells share: the fast sequence path, the cached no-grad step, and their cache.

    ``forward_sequence`` runs :func:`ltc_control.cells.cfc_fast.cfc_sequence` (hand-written BPTT, see there);
    the step-by-step :meth:`forward` with gradients enabled stays the slow, obviously-correct reference that
    the tests hold the fast paths equal to. Without gradients :meth:`forward` runs the same arithmetic on
    effective weights cached across calls (:func:`~ltc_control.cells.cfc_fast.cached_plan`).
    """

    _plan_cache: tuple[Any, ...] | None = None
    _step_cache: tuple[Any, ...] | None = None

    def reference_step(self, x: Tensor, h: Tensor, ts: Tensor) -> Tensor:
        """One step of the plain PyTorch update (no validation): ``x (B, S)``, ``h (B, state_size)``, ``ts``
        the step's ``dt`` as ``(B, 1)`` (see :meth:`check_step`); returns the new state."""
        raise NotImplementedError

    def _dropout_active(self) -> bool:
        return False

    def forward(self, x: Tensor, h: Tensor, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """Advance by one input step.

        Args:
            x: input ``(B, input_size)``.
            h: state ``(B, state_size)`` (for a wired cell in wiring order, motor neurons first).
            dt: elapsed time of this step (> 0), a float or a tensor ``(B,)`` / ``(B, 1)`` for per-sample
                times.

        Returns:
            ``(y, h')``: output ``(B, output_size)`` and the new state ``(B, state_size)``.
        """
        ts = self.check_step(x, h, dt)
        if torch.is_grad_enabled() or self._dropout_active():
            new_h = self.reference_step(x, h, ts)
        else:
            new_h = cfc_fast.cfc_step(self, x, h, ts)  # type: ignore[arg-type]
        return self.readout(new_h), new_h

    def forward_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Runs the cell over a batch-first sequence on the fast path (the contract of
        :meth:`RecurrentCell.forward_sequence <ltc_control.cells.base.RecurrentCell.forward_sequence>`).

        Active backbone dropout (training mode) and a ``dt`` that requires grad fall back to the step-by-step
        loop.
        """
        if not cfc_fast.supports(self, dt):  # type: ignore[arg-type]
            return super().forward_sequence(x, h0, dt, episode_starts)
        x, h, dt_seq, resets = self._prepare_sequence(x, h0, dt, episode_starts)
        return cfc_fast.cfc_sequence(self, x, h, dt_seq, resets)  # type: ignore[arg-type]

    def state_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> Tensor:
        """Every step's state ``(B, T, state_size)`` (after each step) on the fast path; arguments as
        :meth:`forward_sequence` (of which this is the state half: ``forward_sequence``'s outputs are
        ``readout`` of these states). For callers that read the neurons, e.g. a critic on the actor's state.
        """
        if not cfc_fast.supports(self, dt):  # type: ignore[arg-type]
            return super().state_sequence(x, h0, dt, episode_starts)
        x, h, dt_seq, resets = self._prepare_sequence(x, h0, dt, episode_starts)
        return cfc_fast.cfc_states(self, x, h, dt_seq, resets)  # type: ignore[arg-type]

    def clear_cache(self) -> None:
        """Drops the cached no-grad weights (needed only after replacing ``param.data`` by hand)."""
        self._plan_cache = None
        self._step_cache = None

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # .to()/.double() replace tensors: the cache would keep the old ones alive.
        self._plan_cache = None
        self._step_cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_plan_cache"] = None
        state["_step_cache"] = None
        return state


class CfCCell(_FastCfC):
    """Dense closed-form continuous-time cell (ncps ``CfCCell`` + the ``CfC`` wrapper's ``fc`` projection).

    The state is the ``units`` neuron values ``(B, units)``; the output is ``fc(h)``, where ``fc`` is the
    identity when ``output_size`` is ``None`` (then ``output_size == units``) and a ``Linear(units,
    output_size)`` otherwise.

    Example:
        >>> cell = CfCCell(input_size=4, units=8, output_size=2, mode="default", backbone_units=16)
        >>> h = cell.initial_state(3)
        >>> y, h = cell(torch.randn(3, 4), h, dt=torch.tensor([0.5, 1.0, 2.0]))
        >>> tuple(y.shape), tuple(h.shape)
        ((3, 2), (3, 8))

    Args:
        input_size: number of input features ``S``.
        units: number of CfC neurons ``N`` (the state width).
        output_size: width of the linear readout; ``None`` reads the state out unchanged.
        mode: ``"default"`` (gated), ``"no_gate"`` or ``"pure"`` (direct closed-form solution).
        backbone_units: width of each backbone layer.
        backbone_layers: number of backbone layers (0: the heads read ``concat(x, h)`` directly).
        backbone_dropout: dropout probability after backbone layers 2..L (ncps' placement, which keeps the
            module indices ncps uses); it has no place to act with fewer than 2 layers, so a non-zero value
            there is an error.
        activation: backbone activation, one of ``lecun_tanh``, ``tanh``, ``relu``, ``silu``, ``gelu``.
    """

    def __init__(
        self,
        input_size: int,
        units: int,
        output_size: int | None = None,
        mode: CfCMode = "default",
        backbone_units: int = 128,
        backbone_layers: int = 1,
        backbone_dropout: float = 0.0,
        activation: str = "lecun_tanh",
    ) -> None:
        _check_positive_int("input_size", input_size)
        _check_positive_int("units", units)
        if output_size is not None:
            _check_positive_int("output_size", output_size)
        _check_mode(mode)
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown backbone activation {activation!r}; valid ones are {sorted(_ACTIVATIONS)}."
            )
        if backbone_layers < 0:
            raise ValueError(f"backbone_layers must be >= 0, got {backbone_layers}.")
        if backbone_layers > 0:
            _check_positive_int("backbone_units", backbone_units)
        if not 0.0 <= backbone_dropout < 1.0:
            raise ValueError(f"backbone_dropout must be in [0, 1), got {backbone_dropout}.")
        if backbone_dropout > 0.0 and backbone_layers < 2:
            raise ValueError(
                f"backbone_dropout={backbone_dropout} has no effect with backbone_layers={backbone_layers}: "
                "as in ncps, dropout follows backbone layers 2..L only. Use backbone_layers >= 2 or "
                "backbone_dropout=0."
            )
        out = units if output_size is None else output_size
        super().__init__(
            input_size, units, out, units, [f"hidden_{i}" for i in range(units)], ["hidden"] * units
        )
        self.units = units
        self.mode: str = mode
        self.backbone_units = backbone_units
        self.backbone_layers = backbone_layers
        self.backbone_dropout = backbone_dropout
        self.activation = activation
        self.proj_size = output_size

        act = _ACTIVATIONS[activation]
        self.backbone: nn.Sequential | None = None
        if backbone_layers > 0:
            layers: list[nn.Module] = [nn.Linear(input_size + units, backbone_units), act()]
            for _ in range(1, backbone_layers):
                layers += [nn.Linear(backbone_units, backbone_units), act()]
                if backbone_dropout > 0.0:
                    layers.append(nn.Dropout(backbone_dropout))
            self.backbone = nn.Sequential(*layers)
        features = backbone_units if backbone_layers > 0 else input_size + units

        self.ff1: nn.Linear
        self.ff2: nn.Linear | None
        self.time_a: nn.Linear | None
        self.time_b: nn.Linear | None
        self.w_tau: nn.Parameter | None
        self.A: nn.Parameter | None
        _add_heads(self, features, units, mode)
        for m in self.modules():
            if m is not self:
                _xavier_2d_(m)
        _xavier_2d_(self)
        self.fc: nn.Module = nn.Identity() if output_size is None else nn.Linear(units, output_size)

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (``CfCCell(**cell.config())`` rebuilds it)."""
        return {
            "input_size": self.input_size,
            "units": self.units,
            "output_size": self.proj_size,
            "mode": self.mode,
            "backbone_units": self.backbone_units,
            "backbone_layers": self.backbone_layers,
            "backbone_dropout": self.backbone_dropout,
            "activation": self.activation,
        }

    def readout(self, h: Tensor) -> Tensor:
        """Map the state ``(B, units)`` to the output ``(B, output_size)``."""
        return h if self.proj_size is None else self.fc(h)

    def _dropout_active(self) -> bool:
        return self.training and self.backbone_dropout > 0.0

    def reference_step(self, x: Tensor, h: Tensor, ts: Tensor) -> Tensor:
        """The step-by-step reference: ncps' arithmetic, module by module."""
        z = torch.cat([x, h], dim=1)
        if self.backbone is not None:
            z = self.backbone(z)
        return _cfc_update(
            self.mode,
            z,
            ts,
            self.ff1,
            self.ff1.weight,
            self.ff2,
            None if self.ff2 is None else self.ff2.weight,
            self.time_a,
            self.time_b,
            None,
            self.w_tau,
            self.A,
        )


class _WiredCfCLayer(nn.Module):
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
        _add_heads(self, features, units, mode)
        for m in self.modules():
            _xavier_2d_(m)
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
        return _cfc_update(
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


class WiredCfCCell(_FastCfC):
    """CfC constrained by a wiring: one backbone-free CfC sub-cell per layer (ncps' ``WiredCfCCell`` layout).

    Layer 0 reads the sensory input, layer ``l > 0`` the *new* state of layer ``l - 1`` (computed in the same
    step), and every layer reads its own previous state. Differences from ncps 1.0.1 (all switched off by
    ``ncps_compatible=True``, which reproduces ncps exactly):

    * **Sparsity.** ncps masks only ``ff1``/``ff2`` and makes every layer densely recurrent (an all-ones
      block), and leaves the time-constant heads ``time_a``/``time_b`` dense. Here ``ff1``, ``ff2``,
      ``time_a`` and ``time_b`` are all masked by the wiring, including the intra-layer block (an NCP's motor
      layer has no recurrence, its command layer only the wiring's recurrent command synapses). So a neuron's
      value and its time constant depend only on its presynaptic neurons (and itself where the wiring has a
      self-synapse).
    * **State order.** The state follows the wiring's neuron order, like the LTC: motor neurons first
      (``h[:, :M]``), then command, then inter. ncps stores the state layer by layer (inter, command, motor),
      i.e. ``h_ncps = h[:, perm]`` with ``perm = concat(wiring_layers(wiring))``; see
      :meth:`ncps_permutation`.
    * **Polarity.** ncps ignores the wiring's signs. ``polarity="init"`` (default) initialises each synaptic
      weight of ``ff1``/``ff2`` with the sign of its synapse (as the LTC initialises its reversal potentials
      from the polarity; training may change it). ``"constrain"`` enforces it: the effective weight is ``|W| *
      polarity``, so an excitatory synapse can only raise, an inhibitory one only lower, the pre-activation of
      ``ff1``/``ff2`` (the gate heads ``time_a``/``time_b`` stay unsigned: a time constant has no polarity).
      ``"ignore"`` keeps ncps' plain Xavier init.

    The output is the motor neurons' state ``h[:, :M]``, through a ``Linear(M, output_size)`` ``fc`` when
    ``output_size`` is given (ncps' ``proj_size``).

    Example:
        >>> from ltc_control.wirings import AutoNCP
        >>> cell = WiredCfCCell(AutoNCP(16, 2, input_size=5, seed=1), mode="default")
        >>> y, h = cell(torch.randn(4, 5), cell.initial_state(4), dt=1.0)
        >>> tuple(y.shape), tuple(h.shape)
        ((4, 2), (4, 16))

    Args:
        wiring: the connectivity; its ``input_size`` is the cell's input width.
        mode: ``"default"``, ``"no_gate"`` or ``"pure"``.
        output_size: width of an optional linear readout of the motor neurons; ``None`` outputs them directly.
        polarity: ``"ignore"``, ``"init"`` or ``"constrain"`` (see above).
        ncps_compatible: reproduce ncps' masks (dense intra-layer recurrence, unmasked gate heads) for
            parity with a converted ``ncps.torch.CfC``. Cannot be combined with ``polarity="constrain"``.
    """

    def __init__(
        self,
        wiring: Wiring,
        mode: CfCMode = "default",
        output_size: int | None = None,
        polarity: PolarityMode = "init",
        ncps_compatible: bool = False,
    ) -> None:
        _check_mode(mode)
        if polarity not in _POLARITY_MODES:
            raise ValueError(f"Unknown polarity mode {polarity!r}; valid ones are {list(_POLARITY_MODES)}.")
        if ncps_compatible and polarity == "constrain":
            raise ValueError(
                "polarity='constrain' cannot be combined with ncps_compatible=True (ncps has no sign "
                "constraint); use polarity='init' or 'ignore'."
            )
        if output_size is not None:
            _check_positive_int("output_size", output_size)
        units = int(wiring.units)
        motors = int(wiring.output_size)
        super().__init__(
            int(wiring.input_size),
            units,
            motors if output_size is None else output_size,
            units,
            list(wiring.names),
            list(wiring.roles),
        )
        self.wiring = wiring
        self.mode: str = mode
        self.polarity: str = polarity
        self.ncps_compatible = ncps_compatible
        self.proj_size = output_size
        self.motor_size = motors

        adjacency = np.asarray(wiring.adjacency, dtype=np.float64)
        sensory = np.asarray(wiring.sensory_adjacency, dtype=np.float64)
        layers = wiring_layers(wiring)
        _check_layered(wiring, layers, adjacency, sensory)

        self._layer_indices = [idx.copy() for idx in layers]
        self.layer_sizes = [int(idx.size) for idx in layers]
        perm = np.concatenate(layers)
        self.perm: Tensor
        self.inv_perm: Tensor
        self.register_buffer("perm", torch.as_tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer(
            "inv_perm", torch.as_tensor(np.argsort(perm), dtype=torch.long), persistent=False
        )

        self._layers: list[_WiredCfCLayer] = []
        prev: np.ndarray | None = None
        for l_id, idx in enumerate(layers):
            into = sensory[:, idx] if prev is None else adjacency[np.ix_(prev, idx)]
            recurrent = adjacency[np.ix_(idx, idx)]
            polarity_in = np.concatenate([into, recurrent], axis=0).T  # (units_l, in_l + units_l)
            synapses = np.abs(polarity_in)
            if ncps_compatible:
                synapses[:, into.shape[0] :] = 1.0
                gate = np.ones_like(synapses)
            else:
                gate = synapses.copy()
            sign = np.where(polarity_in < 0, -1.0, 1.0)
            layer = _WiredCfCLayer(
                into.shape[0], idx.size, mode, synapses, gate, sign, constrain=polarity == "constrain"
            )
            with torch.no_grad():
                if polarity in ("init", "constrain"):
                    # Only real synapses carry a polarity; ncps_compatible's dense non-synaptic entries keep
                    # their unbiased Xavier signs.
                    has_polarity = torch.as_tensor(polarity_in != 0)
                    for head in (layer.ff1, layer.ff2):
                        if head is not None:
                            head.weight.copy_(
                                torch.where(has_polarity, head.weight.abs() * layer.sign, head.weight)
                            )
                if not ncps_compatible:
                    # Masked entries never act; zeroing them keeps parameter dumps and weight norms honest.
                    for head in (layer.ff1, layer.ff2):
                        if head is not None:
                            head.weight.mul_(layer.ff_mask)
                    for head in (layer.time_a, layer.time_b):
                        if head is not None:
                            head.weight.mul_(layer.gate_mask)
            self.add_module(f"layer_{l_id}", layer)
            self._layers.append(layer)
            prev = idx
        self.fc: nn.Module = nn.Identity() if output_size is None else nn.Linear(motors, output_size)

    @property
    def num_layers(self) -> int:
        """Number of CfC layers (3 for an NCP, 1 for generic wirings)."""
        return len(self._layers)

    def ncps_permutation(self) -> np.ndarray:
        """``perm`` with ``h_ncps = h[:, perm]``, ``h = h_ncps[:, argsort(perm)]`` (ncps' layer order)."""
        return self.perm.cpu().numpy().copy()

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (the wiring as ``wiring.to_dict()``)."""
        return {
            "wiring": self.wiring.to_dict(),
            "mode": self.mode,
            "output_size": self.proj_size,
            "polarity": self.polarity,
            "ncps_compatible": self.ncps_compatible,
        }

    def readout(self, h: Tensor) -> Tensor:
        """Output ``(B, output_size)`` from the state ``(B, units)``: ``fc(h[:, :M])`` (the motor neurons)."""
        motors = h[..., : self.motor_size]
        return motors if self.proj_size is None else self.fc(motors)

    def reference_step(self, x: Tensor, h: Tensor, ts: Tensor) -> Tensor:
        """The step-by-step reference: layer by layer, masks applied at every step."""
        layer_states = torch.split(h[:, self.perm], self.layer_sizes, dim=1)
        inputs = x
        outs: list[Tensor] = []
        for layer, h_l in zip(self._layers, layer_states):
            inputs = layer(inputs, h_l, ts)
            outs.append(inputs)
        return torch.cat(outs, dim=1)[:, self.inv_perm]


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _check_layered(
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


# ----------------------------------------------------------------------------------------------------------
# ncps interop


def cfc_from_ncps(module: nn.Module) -> SequenceModel:
    """Convert a trained ``ncps.torch.CfC`` into this library's ``SequenceModel`` with identical outputs.

    The cell is :func:`cfc_cell_from_ncps` (see there for the state order of wired models);
    ``return_sequences`` carries over. ncps is imported lazily (a development dependency).

    Args:
        module: an ``ncps.torch.CfC`` (any mode; units or a wiring; with or without ``proj_size``).

    Returns:
        ``SequenceModel(cell, return_sequences=module.return_sequences)`` on the module's device and dtype.

    Raises:
        TypeError: ``module`` is not an ``ncps.torch.CfC``.
        ValueError: the module uses ``mixed_memory=True`` (an extra LSTM this library does not model).
    """
    from ltc_control.sequence import SequenceModel

    cell = cfc_cell_from_ncps(module)
    return SequenceModel(cell, return_sequences=bool(module.return_sequences))


def cfc_cell_from_ncps(module: nn.Module) -> CfCCell | WiredCfCCell:
    """The cell of an ``ncps.torch.CfC`` as :class:`CfCCell` / :class:`WiredCfCCell`, weights copied exactly.

    Dense CfCs become a :class:`CfCCell` (``proj_size`` -> ``output_size``, the ``fc`` weights copied); wired
    ones a :class:`WiredCfCCell` with ``ncps_compatible=True`` (ncps' masks) whose state is in wiring order
    (motor neurons first): an ncps state ``h_ncps`` is ``h_ncps[:, argsort(cell.ncps_permutation())]`` here,
    and ``h[:, perm]`` is the ncps state. Generic (one-layer) ncps wirings output the whole state in ncps but
    only the ``M`` motor neurons (its first ``M`` entries) here.

    Args:
        module: an ``ncps.torch.CfC``.

    Returns:
        The converted cell, on the module's device and dtype and in its train/eval mode.

    Raises:
        TypeError: ``module`` is not an ``ncps.torch.CfC``.
        ValueError: ``mixed_memory=True``, or a wiring that cannot be expressed (named in the message).
    """
    try:
        from ncps.torch import CfC as NcpsCfC
    except ImportError as exc:  # pragma: no cover - ncps is a dev dependency
        raise ImportError(
            "converting an ncps CfC needs the 'ncps' package (pip install 'ltc-control[dev]')."
        ) from exc

    if not isinstance(module, NcpsCfC):
        raise TypeError(f"expected an ncps.torch.CfC, got {type(module).__name__}.")
    if getattr(module, "use_mixed", False):
        raise ValueError(
            "This ncps CfC uses mixed_memory=True (an LSTM memory cell beside the CfC), which ltc-control "
            "does not model; convert a CfC built with mixed_memory=False."
        )
    ncell = module.rnn_cell
    proj = None if isinstance(module.fc, nn.Identity) else int(module.fc.out_features)
    param = next(module.parameters())
    cell: CfCCell | WiredCfCCell
    if getattr(module, "wired_mode", False):
        wiring = _wiring_from_ncps(module.wiring)
        wcell = WiredCfCCell(wiring, mode=ncell._layers[0].mode, output_size=proj, ncps_compatible=True)
        if module.wiring.num_layers != wcell.num_layers:
            raise ValueError(
                f"ncps wiring has {module.wiring.num_layers} layers but the converted wiring has "
                f"{wcell.num_layers}."
            )
        for l_id, (src, dst) in enumerate(zip(ncell._layers, wcell._layers)):
            expected = np.asarray(module.wiring.get_neurons_of_layer(l_id))
            if not np.array_equal(expected, wcell._layer_indices[l_id]):
                raise ValueError(
                    f"ncps layer {l_id} neurons {expected.tolist()} do not match the converted wiring."
                )
            _copy_cfc_params(src, dst)
        cell = wcell
    else:
        ccell = CfCCell(
            int(ncell.input_size),
            int(ncell.hidden_size),
            output_size=proj,
            mode=ncell.mode,
            backbone_units=_backbone_units(ncell),
            backbone_layers=int(ncell.backbone_layers),
            backbone_dropout=_backbone_dropout(ncell),
            activation=_activation_name(ncell),
        )
        _copy_cfc_params(ncell, ccell)
        if ccell.backbone is not None:
            assert ncell.backbone is not None
            ccell.backbone.load_state_dict(ncell.backbone.state_dict())
        cell = ccell
    if proj is not None:
        cell.fc.load_state_dict(module.fc.state_dict())
    cell = cell.to(device=param.device, dtype=param.dtype)
    cell.train(module.training)
    return cell


def _copy_cfc_params(src: nn.Module, dst: nn.Module) -> None:
    with torch.no_grad():
        for name in ("ff1", "ff2", "time_a", "time_b"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if (s is None) != (d is None):
                raise ValueError(f"ncps cell and converted cell disagree on head {name!r} (mode mismatch).")
            if s is not None and d is not None:
                d.weight.copy_(s.weight)
                d.bias.copy_(s.bias)
        for name in ("w_tau", "A"):
            s, d = getattr(src, name, None), getattr(dst, name, None)
            if s is not None and d is not None:
                d.copy_(s)


def _backbone_units(ncell: Any) -> int:
    if ncell.backbone is None:
        return 128
    return int(ncell.backbone[0].out_features)


def _backbone_dropout(ncell: Any) -> float:
    if ncell.backbone is None:
        return 0.0
    for m in ncell.backbone:
        if isinstance(m, nn.Dropout):
            return float(m.p)
    return 0.0


def _activation_name(ncell: Any) -> str:
    if ncell.backbone is None:
        return "lecun_tanh"
    act = ncell.backbone[1]
    by_type = {"LeCun": "lecun_tanh", "Tanh": "tanh", "ReLU": "relu", "SiLU": "silu", "GELU": "gelu"}
    name = by_type.get(type(act).__name__)
    if name is None:
        raise ValueError(
            f"Unsupported ncps backbone activation {type(act).__name__}; known: {sorted(by_type)}."
        )
    return name


def _wiring_from_ncps(nw: Any) -> Wiring:
    """A :class:`Wiring` with the adjacency, sensory adjacency, neuron order and layers of an ncps wiring."""
    if not nw.is_built():
        raise ValueError(
            "The ncps wiring is not built (no input size); run the ncps CfC once or call wiring.build()."
        )
    units = int(nw.units)
    motors = int(nw.output_dim) if nw.output_dim is not None else units
    if nw.num_layers > 1:
        roles = ["inter"] * units
        names = [""] * units
        for l_id, role in zip(range(nw.num_layers), ("inter", "command", "motor")):
            for k, i in enumerate(nw.get_neurons_of_layer(l_id)):
                roles[i] = role
                names[i] = f"{role}_{k}"
    else:
        roles = ["motor" if i < motors else "hidden" for i in range(units)]
        names = [f"motor_{i}" if i < motors else f"hidden_{i - motors}" for i in range(units)]
    return Wiring.from_matrices(
        np.asarray(nw.adjacency_matrix),
        np.asarray(nw.sensory_adjacency_matrix),
        roles=roles,
        names=names,
        output_size=motors,
    )
