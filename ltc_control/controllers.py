"""Controllers: build a recurrent (or feed-forward) :class:`~ltc_control.sequence.SequenceModel` from a
config.

Kinds (``ControllerConfig.kind``), all with the same cell contract so the policy, trainers and inspection
tools treat them alike:

- ``"ltc"``: :class:`~ltc_control.cells.ltc.LTCCell` on a wiring (the NCP paper's controller by default).
- ``"cfc"``: :class:`~ltc_control.cells.cfc.WiredCfCCell` on the wiring (``cfc_wired=True``) or a dense
  :class:`~ltc_control.cells.cfc.CfCCell` with ``units`` neurons.
- ``"lstm"`` (``lstm_hidden`` units, the paper's LSTM-64), ``"gru"`` and ``"ctrnn"`` (``units`` neurons).
- ``"mlp"``: :class:`FeedForwardCell`, no recurrence (the paper's "CNN" baseline: same perception head, then a
  feed-forward map to the action). Its "state" holds the last hidden activations only for inspection; the next
  step ignores it.

Wirings come from :class:`WiringConfig`: a preset (``"lane_keeping"``, ``"ncp"``, ``"auto_ncp"``,
``"fully_connected"``, ``"random"``) with its arguments, or ``"saved"`` with a ``Wiring.to_dict()`` mapping
(checkpoints store the built wiring this way, so loading never depends on a builder's random draws).
Neuron and synapse counts come from the wiring only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ltc_control.cells.base import RecurrentCell
from ltc_control.sequence import SequenceModel
from ltc_control.wirings import NCP, AutoNCP, FullyConnected, Random, Wiring, lane_keeping_ncp

__all__ = [
    "WIRED_KINDS",
    "ControllerConfig",
    "FeedForwardCell",
    "WiringConfig",
    "build_controller",
    "build_wiring",
    "controller_summary",
    "count_parameters",
    "count_synapses",
    "resolve_wiring_config",
]

ControllerKind = Literal["ltc", "cfc", "lstm", "gru", "ctrnn", "mlp"]


@dataclass(frozen=True)
class WiringConfig:
    """Which wiring an LTC (or wired CfC) controller uses.

    The number of inputs and motor neurons always comes from the policy (perception features and action size).

    Args:
        preset: ``"lane_keeping"`` (the paper's 12 inter / 6 command NCP with fan-outs 6/4, 6 recurrent
            command synapses, motor fan-in 6; exactly ``lane_keeping_ncp`` for 32 inputs and 1 motor),
            ``"ncp"`` (the NCP fields below), ``"auto_ncp"`` (``units``, ``sparsity``),
            ``"fully_connected"`` (``units``, ``self_connections``), ``"random"`` (``units``, ``sparsity``)
            or ``"saved"`` (``saved``).
        seed: seed of the wiring builder.
        inter: NCP inter neurons.
        command: NCP command neurons.
        sensory_fanout: NCP synapses from each input to inter neurons.
        inter_fanout: NCP synapses from each inter neuron to command neurons.
        recurrent_command_synapses: NCP command -> command synapses.
        motor_fanin: NCP synapses into each motor neuron.
        units: total neurons for ``auto_ncp``, ``fully_connected`` and ``random``.
        sparsity: fraction of absent synapses for ``auto_ncp`` and ``random``, in [0, 1).
        self_connections: keep i -> i synapses in ``fully_connected``.
        saved: a ``Wiring.to_dict()`` mapping, used when ``preset == "saved"``.
    """

    preset: Literal["lane_keeping", "ncp", "auto_ncp", "fully_connected", "random", "saved"] = "lane_keeping"
    seed: int = 22222
    inter: int = 12
    command: int = 6
    sensory_fanout: int = 6
    inter_fanout: int = 4
    recurrent_command_synapses: int = 6
    motor_fanin: int = 6
    units: int = 19
    sparsity: float = 0.5
    self_connections: bool = True
    saved: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.preset == "saved" and self.saved is None:
            raise ValueError("wiring preset 'saved' needs 'saved' (a Wiring.to_dict() mapping)")
        if self.preset != "saved" and self.saved is not None:
            raise ValueError(f"wiring 'saved' is only used with preset 'saved', not {self.preset!r}")


@dataclass(frozen=True)
class ControllerConfig:
    """The controller: cell kind, wiring and cell hyper-parameters.

    Args:
        kind: ``"ltc"``, ``"cfc"``, ``"lstm"``, ``"gru"``, ``"ctrnn"`` or ``"mlp"`` (feed-forward, no
            recurrence: the paper's CNN baseline).
        wiring: wiring of ``ltc`` and wired ``cfc`` controllers (ignored by the others).
        units: neurons of ``gru``, ``ctrnn``, dense ``cfc`` and the hidden width of ``mlp``.
        lstm_hidden: hidden units of ``lstm`` (the paper's LSTM-64).
        ode_unfolds: solver sub-steps per input step of ``ltc`` and ``ctrnn`` (the paper: 6).
        ltc_constraint: ``"softplus"`` (implicit positivity of gleak, cm, w) or ``"clamp"`` (call
            ``cell.apply_constraints()`` after each optimizer step).
        ltc_input_mapping: per-input affine/linear/no scaling in front of the LTC.
        ltc_output_mapping: per-motor affine/linear/no scaling after the LTC.
        ltc_implementation: ``"auto"`` (fastest available), ``"reference"`` or a registered implementation.
        cfc_mode: CfC variant: ``"default"`` (gated), ``"no_gate"`` or ``"pure"``.
        cfc_wired: CfC on the wiring (``WiredCfCCell``) instead of a dense ``CfCCell`` with ``units`` neurons.
        cfc_polarity: how a wired CfC uses synapse polarity: ``"ignore"``, ``"init"`` or ``"constrain"``.
        cfc_backbone_units: backbone width of a dense CfC.
        cfc_backbone_layers: backbone depth of a dense CfC.
        cfc_backbone_dropout: backbone dropout of a dense CfC.
        ctrnn_tau: time constant of ``ctrnn`` neurons (in input steps).
        mlp_layers: hidden layers of ``mlp`` (ReLU).
        dt: elapsed time per input step in the cell's time unit (1.0 = one camera frame).
    """

    kind: ControllerKind = "ltc"
    wiring: WiringConfig = field(default_factory=WiringConfig)
    units: int = 64
    lstm_hidden: int = 64
    ode_unfolds: int = 6
    ltc_constraint: Literal["softplus", "clamp"] = "softplus"
    ltc_input_mapping: Literal["affine", "linear", "none"] = "affine"
    ltc_output_mapping: Literal["affine", "linear", "none"] = "affine"
    ltc_implementation: str = "auto"
    cfc_mode: Literal["default", "no_gate", "pure"] = "default"
    cfc_wired: bool = True
    cfc_polarity: Literal["ignore", "init", "constrain"] = "init"
    cfc_backbone_units: int = 128
    cfc_backbone_layers: int = 1
    cfc_backbone_dropout: float = 0.0
    ctrnn_tau: float = 1.0
    mlp_layers: int = 1
    dt: float = 1.0

    def __post_init__(self) -> None:
        for name in ("units", "lstm_hidden", "ode_unfolds", "cfc_backbone_units", "cfc_backbone_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mlp_layers < 1:
            raise ValueError(f"mlp_layers must be >= 1, got {self.mlp_layers}")
        if not self.dt > 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if not self.ctrnn_tau > 0:
            raise ValueError(f"ctrnn_tau must be > 0, got {self.ctrnn_tau}")

    @property
    def uses_wiring(self) -> bool:
        """Whether this kind of controller is built on ``wiring``."""
        return self.kind == "ltc" or (self.kind == "cfc" and self.cfc_wired)


WIRED_KINDS = ("ltc", "cfc")


# ------------------------------------------------------------------------------------------------ wirings
def build_wiring(config: WiringConfig, input_size: int, output_size: int) -> Wiring:
    """Build the wiring a :class:`WiringConfig` describes.

    Args:
        config: the wiring config.
        input_size: number of sensory inputs ``S`` (e.g. 32 perception features).
        output_size: number of motor neurons ``M`` (the action size).

    Returns:
        The wiring (its ``input_size == S`` and ``output_size == M``).

    Raises:
        ValueError: a saved wiring whose sizes do not match, or invalid builder arguments.
    """
    p = config.preset
    if p == "lane_keeping":
        if input_size == 32 and output_size == 1:
            return lane_keeping_ncp(seed=config.seed)
        # Same layer sizes and fan-outs as the paper, other input / motor counts.
        return NCP(12, 6, output_size, 6, 4, 6, 6, input_size, seed=config.seed)
    if p == "ncp":
        return NCP(
            config.inter,
            config.command,
            output_size,
            config.sensory_fanout,
            config.inter_fanout,
            config.recurrent_command_synapses,
            config.motor_fanin,
            input_size,
            seed=config.seed,
        )
    if p == "auto_ncp":
        return AutoNCP(config.units, output_size, input_size, sparsity=config.sparsity, seed=config.seed)
    if p == "fully_connected":
        return FullyConnected(
            config.units, input_size, output_size, self_connections=config.self_connections, seed=config.seed
        )
    if p == "random":
        return Random(config.units, input_size, output_size, sparsity=config.sparsity, seed=config.seed)
    if p == "saved":
        assert config.saved is not None  # checked in WiringConfig.__post_init__
        wiring = Wiring.from_dict(config.saved)
        if wiring.input_size != input_size or wiring.output_size != output_size:
            raise ValueError(
                f"saved wiring has {wiring.input_size} inputs and {wiring.output_size} motor neurons, but "
                f"the controller needs {input_size} inputs and {output_size} outputs; rebuild the wiring for "
                "these sizes or change the perception / action size"
            )
        return wiring
    raise ValueError(f"unknown wiring preset {p!r}")


def resolve_wiring_config(config: ControllerConfig, wiring: Wiring | None) -> ControllerConfig:
    """The same config with the built wiring stored inline (``preset="saved"``), for checkpoints.

    Args:
        config: the controller config.
        wiring: the wiring the controller was built with (None for unwired kinds: config returned unchanged).
    """
    if wiring is None or not config.uses_wiring:
        return config
    return dataclasses.replace(config, wiring=WiringConfig(preset="saved", saved=wiring.to_dict()))


# ----------------------------------------------------------------------------------------------- cells
class FeedForwardCell(RecurrentCell):
    """A feed-forward controller behind the cell contract (no recurrence: the paper's "CNN" baseline).

    ``forward(x, h, dt)`` ignores ``h`` and ``dt`` (after checking their shapes): the new "state" is the last
    hidden layer's activation ``(B, hidden)``, kept so inspection tools can read it, and ``y = readout(h')``.

    Args:
        input_size: input features ``S``.
        hidden: width of each hidden layer.
        output_size: outputs ``M``.
        layers: number of hidden layers (Linear + ReLU).
    """

    def __init__(self, input_size: int, hidden: int, output_size: int, layers: int = 1) -> None:
        names = [f"hidden_{i}" for i in range(hidden)]
        super().__init__(input_size, hidden, output_size, hidden, names, ["hidden"] * hidden)
        mods: list[nn.Module] = []
        width = input_size
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*mods)
        self.out = nn.Linear(hidden, output_size)

    def readout(self, h: Tensor) -> Tensor:
        """``(..., hidden)`` -> ``(..., M)``."""
        return self.out(h)

    def forward(self, x: Tensor, h: Tensor | None = None, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """One step: ``x (B, S)`` -> ``(y (B, M), hidden activations (B, hidden))``; ``h``, ``dt`` unused."""
        self._check_input(x)
        if h is not None:
            self._check_state(h, x.shape[0])
        h_new = self.net(x)
        return self.readout(h_new), h_new

    def forward_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """All steps at once (no recurrence): ``(B, T, S)`` -> ``(y (B, T, M), h_T (B, hidden))``."""
        x, _, _, _ = self._prepare_sequence(x, h0, dt, episode_starts)
        hs = self.net(x)
        return self.readout(hs), hs[:, -1]


def build_controller(config: ControllerConfig, input_size: int, output_size: int) -> SequenceModel:
    """Build the controller a :class:`ControllerConfig` describes.

    Args:
        config: controller config.
        input_size: input features ``S`` (perception features or the vector observation size).
        output_size: outputs ``M`` (motor neurons = action size).

    Returns:
        A :class:`SequenceModel`; ``model.cell`` is the cell and ``model.wiring`` its wiring (or None).

    Example:
        >>> model = build_controller(ControllerConfig(kind="ltc"), 32, 1)
        >>> count_synapses(model), model.state_size
        (252, 19)
    """
    kind = config.kind
    cell: RecurrentCell
    if config.uses_wiring:
        wiring = build_wiring(config.wiring, input_size, output_size)
        if kind == "ltc":
            from ltc_control.cells.ltc import LTCCell

            cell = LTCCell(
                wiring,
                ode_unfolds=config.ode_unfolds,
                constraint=config.ltc_constraint,
                input_mapping=config.ltc_input_mapping,
                output_mapping=config.ltc_output_mapping,
                implementation=config.ltc_implementation,
            )
        else:
            from ltc_control.cells.cfc import WiredCfCCell

            cell = WiredCfCCell(wiring, mode=config.cfc_mode, polarity=config.cfc_polarity)
    elif kind == "cfc":
        from ltc_control.cells.cfc import CfCCell

        cell = CfCCell(
            input_size,
            config.units,
            output_size,
            mode=config.cfc_mode,
            backbone_units=config.cfc_backbone_units,
            backbone_layers=config.cfc_backbone_layers,
            backbone_dropout=config.cfc_backbone_dropout,
        )
    elif kind == "lstm":
        from ltc_control.cells.baselines import LSTMCell

        cell = LSTMCell(input_size, config.lstm_hidden, output_size)
    elif kind == "gru":
        from ltc_control.cells.baselines import GRUCell

        cell = GRUCell(input_size, config.units, output_size)
    elif kind == "ctrnn":
        from ltc_control.cells.baselines import CTRNNCell

        cell = CTRNNCell(
            input_size, config.units, output_size, tau=config.ctrnn_tau, unfolds=config.ode_unfolds
        )
    elif kind == "mlp":
        cell = FeedForwardCell(input_size, config.units, output_size, layers=config.mlp_layers)
    else:  # pragma: no cover - Literal-checked by the config loader
        raise ValueError(f"unknown controller kind {kind!r}; valid: ltc, cfc, lstm, gru, ctrnn, mlp")
    return SequenceModel(cell)


# ---------------------------------------------------------------------------------------------- counts
def _cell(model: nn.Module) -> nn.Module:
    return model.cell if isinstance(model, SequenceModel) else model


def count_parameters(model: nn.Module, effective: bool = False) -> int:
    """Trainable parameters of a controller (or any module).

    Args:
        model: a :class:`SequenceModel`, a cell or any module.
        effective: for an LTC, count only the synapse parameters the wiring uses (the paper's convention:
            3 per neuron + 4 per synapse, plus the input/output mappings), not the masked-out entries of the
            dense ``(N, N)`` / ``(S, N)`` matrices. Other cells are counted in full.

    Returns:
        The count (e.g. 1,065 + 2*32 + 2 = 1,131 effective for the lane-keeping LTC with affine mappings).
    """
    cell = _cell(model)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if effective and hasattr(cell, "sparsity_mask") and hasattr(cell, "sensory_sparsity_mask"):
        mask, smask = cell.sparsity_mask, cell.sensory_sparsity_mask
        assert isinstance(mask, Tensor) and isinstance(smask, Tensor)
        n_syn = int(torch.count_nonzero(mask))
        n_sens = int(torch.count_nonzero(smask))
        for name in ("sigma", "mu", "w", "erev"):
            p = getattr(cell, name)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                total -= p.numel() - n_syn
        for name in ("sensory_sigma", "sensory_mu", "sensory_w", "sensory_erev"):
            p = getattr(cell, name)
            if isinstance(p, nn.Parameter) and p.requires_grad:
                total -= p.numel() - n_sens
    return int(total)


def count_synapses(model: nn.Module) -> int | None:
    """Synapses of a wired controller, from its wiring only (recurrent + sensory); None when unwired."""
    wiring = getattr(_cell(model), "wiring", None)
    return None if wiring is None else int(wiring.num_synapses)


def controller_summary(model: nn.Module) -> dict[str, Any]:
    """Counts for reports: kind of cell, neurons, synapses (wiring only), parameters (all and effective).

    Args:
        model: a :class:`SequenceModel` or a cell.

    Returns:
        ``{"cell": name, "neurons": int, "state_size": int, "synapses": int | None, "parameters": int,
        "effective_parameters": int}``.
    """
    cell = _cell(model)
    return {
        "cell": type(cell).__name__,
        "neurons": int(getattr(cell, "num_neurons", 0)),
        "state_size": int(getattr(cell, "state_size", 0)),
        "synapses": count_synapses(model),
        "parameters": count_parameters(model),
        "effective_parameters": count_parameters(model, effective=True),
    }
