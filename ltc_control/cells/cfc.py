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
wired cell, of ``ncps.torch.WiredCfCCell`` (``layer_<l>.ff1`` ...).
:func:`~ltc_control.cells.cfc_ncps.cfc_from_ncps` converts a trained ``ncps.torch.CfC``.

``forward_sequence`` and gradient-free ``forward`` calls run the fast paths of
:mod:`ltc_control.cells.cfc_fast` (a C forward kernel, a hand-written BPTT, cached no-grad weights). The
step-by-step ``forward`` with gradients enabled is the reference they are tested against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ltc_control.cells import cfc_fast
from ltc_control.cells.base import RecurrentCell
from ltc_control.cells.cfc_layers import (
    ACTIVATIONS,
    POLARITY_MODES,
    CfCMode,
    PolarityMode,
    WiredCfCLayer,
    add_heads,
    cfc_update,
    check_layered,
    check_mode,
    check_positive_int,
    wiring_layers,
    xavier_2d_,
)
from ltc_control.cells.cfc_plan import Plan, PlanLayer, fast_activation, heads_of
from ltc_control.wirings import Wiring

if TYPE_CHECKING:
    pass


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

    def plan(self) -> Plan:
        """The effective weights laid out for the fast paths (see :mod:`ltc_control.cells.cfc_plan`)."""
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
        check_positive_int("input_size", input_size)
        check_positive_int("units", units)
        if output_size is not None:
            check_positive_int("output_size", output_size)
        check_mode(mode)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown backbone activation {activation!r}; valid ones are {sorted(ACTIVATIONS)}."
            )
        if backbone_layers < 0:
            raise ValueError(f"backbone_layers must be >= 0, got {backbone_layers}.")
        if backbone_layers > 0:
            check_positive_int("backbone_units", backbone_units)
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

        act = ACTIVATIONS[activation]
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
        add_heads(self, features, units, mode)
        for m in self.modules():
            if m is not self:
                xavier_2d_(m)
        xavier_2d_(self)
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
        return cfc_update(
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

    def plan(self) -> Plan:
        """The effective weights laid out for the fast paths (:mod:`ltc_control.cells.cfc_plan`), computed
        with autograd so gradients reach the parameters."""
        s = self.input_size
        w, b = heads_of(self, self.mode)
        if self.backbone is None:
            lay = PlanLayer(self.units, self.mode, w[:, :s], w[:, s:], b, w_tau=self.w_tau, A=self.A)
        else:
            linears = [m for m in self.backbone if isinstance(m, nn.Linear)]
            first = linears[0]
            lay = PlanLayer(
                self.units,
                self.mode,
                first.weight[:, :s],
                first.weight[:, s:],
                first.bias,
                mlp=[(m.weight, m.bias) for m in linears[1:]],
                head=(w, b),
                act=fast_activation(self.backbone[1], first.weight.dtype, first.weight.device),
                w_tau=self.w_tau,
                A=self.A,
            )
        return Plan([lay], None, None)


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
        check_mode(mode)
        if polarity not in POLARITY_MODES:
            raise ValueError(f"Unknown polarity mode {polarity!r}; valid ones are {list(POLARITY_MODES)}.")
        if ncps_compatible and polarity == "constrain":
            raise ValueError(
                "polarity='constrain' cannot be combined with ncps_compatible=True (ncps has no sign "
                "constraint); use polarity='init' or 'ignore'."
            )
        if output_size is not None:
            check_positive_int("output_size", output_size)
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
        check_layered(wiring, layers, adjacency, sensory)

        self._layer_indices = [idx.copy() for idx in layers]
        self.layer_sizes = [int(idx.size) for idx in layers]
        perm = np.concatenate(layers)
        self.perm: Tensor
        self.inv_perm: Tensor
        self.register_buffer("perm", torch.as_tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer(
            "inv_perm", torch.as_tensor(np.argsort(perm), dtype=torch.long), persistent=False
        )

        self._layers: list[WiredCfCLayer] = []
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
            layer = WiredCfCLayer(
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

    def plan(self) -> Plan:
        """The effective weights laid out for the fast paths (:mod:`ltc_control.cells.cfc_plan`): one plan
        layer per wiring layer, computed with autograd so gradients reach the parameters."""
        layers = []
        for layer in self._layers:
            w, b = heads_of(layer, layer.mode, layer._synaptic, layer.gate_mask)
            k = layer.in_features
            layers.append(
                PlanLayer(layer.units, layer.mode, w[:, :k], w[:, k:], b, w_tau=layer.w_tau, A=layer.A)
            )
        return Plan(layers, self.perm, self.inv_perm)
