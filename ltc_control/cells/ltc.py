"""The liquid time-constant (LTC) cell with its reference solver and an implementation registry.

Dynamics (conductance form, Hasani et al. 2021; equations and parameter names as ``ncps.torch.LTCCell``)::

    cm_j dv_j/dt = gleak_j (vleak_j - v_j) + sum_i s_ij(v_i) (erev_ij - v_j)
                   + sum_k r_kj(x_k) (sensory_erev_kj - v_j)
    s_ij(v_i)  = w_ij * sigmoid(sigma_ij * (v_i - mu_ij)) * mask_ij
    r_kj(x_k)  = sensory_w_kj * sigmoid(sensory_sigma_kj * (x_k - sensory_mu_kj)) * sensory_mask_kj

One input step of length ``dt`` is ``K = ode_unfolds`` fused semi-implicit Euler steps of size ``h = dt / K``
(input held constant over the step, sensory terms computed once)::

    v_j <- (cm_j/h v_j + gleak_j vleak_j + sum_i s_ij erev_ij + sum_k r_kj sensory_erev_kj)
           / (cm_j/h + gleak_j + sum_i s_ij + sum_k r_kj + epsilon)

The math of one input step lives in :mod:`ltc_control.cells.ltc_math` (:func:`reference_step`, a plain
function of the *effective* parameters); fast implementations plug in through the registry of
:mod:`ltc_control.cells.ltc_registry`, whose module docstring is the contract they implement.
``LTCCell(implementation="auto")`` (the default) picks, per device and dtype, the available registered
implementation with the highest priority, else ``"reference"``; ``cell.implementation_name`` reports which one
ran last.

``params`` keys (all tensors on the cell's device/dtype; effective = constraint applied):
``gleak (N)`` >= 0, ``vleak (N)``, ``cm (N)`` >= 0, ``sigma (N,N)``, ``mu (N,N)``, ``w (N,N)`` >= 0 with the
sparsity mask already multiplied in, ``erev (N,N)``, ``sensory_sigma (S,N)``, ``sensory_mu (S,N)``,
``sensory_w (S,N)`` >= 0 masked, ``sensory_erev (S,N)``, ``sparsity_mask (N,N)``,
``sensory_sparsity_mask (S,N)``. Treat the dict as read-only (it may be cached).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ltc_control.cells import base as _base
from ltc_control.cells.base import RecurrentCell
from ltc_control.cells.ltc_math import (
    Mappings,
    reference_diagnostics,
    reference_sequence,
    reference_step,
)
from ltc_control.cells.ltc_registry import (
    RESERVED,
    LTCImplementation,
    available_implementations,
    get_implementation,
    is_registered,
    register_implementation,
    registry_version,
    select_implementation,
    unregister_implementation,
)
from ltc_control.wirings import Wiring

__all__ = [
    "LTCCell",
    "LTCImplementation",
    "Mappings",
    "PARAMETER_NAMES",
    "available_implementations",
    "check_time_constant_factor",
    "get_implementation",
    "reference_diagnostics",
    "reference_sequence",
    "reference_step",
    "register_implementation",
    "unregister_implementation",
]


#: Initialisation ranges (uniform) of the raw parameters, identical to ncps 1.0.1.
INIT_RANGES: dict[str, tuple[float, float]] = {
    "gleak": (0.001, 1.0),
    "vleak": (-0.2, 0.2),
    "cm": (0.4, 0.6),
    "w": (0.001, 1.0),
    "sigma": (3.0, 8.0),
    "mu": (0.3, 0.8),
    "sensory_w": (0.001, 1.0),
    "sensory_sigma": (3.0, 8.0),
    "sensory_mu": (0.3, 0.8),
}


_POSITIVE = ("gleak", "cm", "w", "sensory_w")


#: parameters and buffers the effective parameters are computed from (the no-grad cache watches them)
_EFFECTIVE_SOURCES = (
    "gleak",
    "vleak",
    "cm",
    "sigma",
    "mu",
    "w",
    "erev",
    "sensory_sigma",
    "sensory_mu",
    "sensory_w",
    "sensory_erev",
)


_MASKS = ("sparsity_mask", "sensory_sparsity_mask")


#: every parameter an LTCCell may own, in ncps' naming (the affine maps exist only for their mapping option)
PARAMETER_NAMES: tuple[str, ...] = (*_EFFECTIVE_SOURCES, "input_w", "input_b", "output_w", "output_b")


_SOURCES_OF = operator.itemgetter(*_EFFECTIVE_SOURCES)


_MASKS_OF = operator.itemgetter(*_MASKS)


_VERSION = operator.attrgetter("_version")


_INF = math.inf


_MAPPINGS = ("affine", "linear", "none")


_CONSTRAINTS = ("softplus", "clamp")


def check_time_constant_factor(name: str, factor: Any) -> float:
    """``factor`` as a float if it is a real number (not a bool), finite and > 0; else a ValueError naming
    ``name`` (the check of :meth:`LTCCell.scale_time_constants` and of the options that lead to it)."""
    real = isinstance(factor, numbers.Real) and not isinstance(factor, bool)
    value = float(factor) if real else math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {factor!r}")
    return value


# ----------------------------------------------------------------------------------------- the cell
class LTCCell(RecurrentCell):
    """Liquid time-constant cell on a :class:`~ltc_control.wirings.Wiring` (conductance form, fused solver).

    ``N`` = ``wiring.units`` neurons, ``S`` = ``wiring.input_size`` inputs, ``M`` = ``wiring.output_size``
    motor neurons (state entries ``[0, M)``). Potentials (``v``, ``vleak``, ``erev``, ``mu``) are in one
    arbitrary potential unit; time (``dt``) in the cell's time unit; conductances (``gleak``, ``w``) and the
    capacitance ``cm`` are relative, so ``cm / conductance`` is a time constant in the time unit.

    Parameters (``nn.Parameter``; names and shapes as in ``ncps.torch.LTCCell``; init uniform in the range
    shown):

    * ``gleak (N)``: leak conductance; effective ``softplus(gleak)`` (or raw, clamped >= 0). Init (0.001, 1).
    * ``vleak (N)``: leak reversal (resting) potential. Init (-0.2, 0.2).
    * ``cm (N)``: membrane capacitance; effective ``softplus(cm)`` or raw >= 0. Init (0.4, 0.6).
    * ``w (N, N)``: maximum conductance of synapse i -> j; effective ``softplus(w) * mask``. Init (0.001, 1).
    * ``sigma (N, N)``: slope of the synaptic sigmoid (1 / potential unit). Init (3, 8).
    * ``mu (N, N)``: half-activation presynaptic potential. Init (0.3, 0.8).
    * ``erev (N, N)``: synaptic reversal potential; init = the wiring's polarity (+1 excitatory, -1
      inhibitory, 0 where there is no synapse); trainable, as in ncps.
    * ``sensory_w``, ``sensory_sigma``, ``sensory_mu``, ``sensory_erev`` ``(S, N)``: the same for input
      k -> neuron j synapses (same init ranges; ``sensory_erev`` from the sensory polarity).
    * ``input_w (S)`` (init 1), ``input_b (S)`` (init 0): input mapping ``x_in = input_w * x + input_b``
      (``"linear"``: no ``input_b``; ``"none"``: neither).
    * ``output_w (M)`` (init 1), ``output_b (M)`` (init 0): output mapping
      ``y = output_w * v[:, :M] + output_b``.

    Buffers: ``sparsity_mask (N, N)`` = ``|wiring.adjacency|``, ``sensory_sparsity_mask (S, N)``. Masked
    synapses receive exactly zero gradient and have no effect on the outputs.

    Args:
        wiring: the connectivity (immutable; never modified).
        ode_unfolds: solver sub-steps K per input step (>= 1; default 6 as in ncps and the NCP paper).
        epsilon: added to the solver denominator (>= 0; default 1e-8).
        constraint: ``"softplus"`` (default; ncps' ``implicit_param_constraints=True``) applies softplus to
            gleak, cm, w, sensory_w at run time; ``"clamp"`` uses them raw and :meth:`apply_constraints`
            clamps them to >= 0 in place (call it after every optimizer step).
        input_mapping: ``"affine"`` (default), ``"linear"`` or ``"none"``.
        output_mapping: ``"affine"`` (default), ``"linear"`` or ``"none"``.
        implementation: ``"auto"`` (default), ``"reference"`` or a registered name (see module docstring).

    Example:
        >>> import torch
        >>> from ltc_control.wirings import lane_keeping_ncp
        >>> cell = LTCCell(lane_keeping_ncp(seed=0))
        >>> h = cell.initial_state(2)
        >>> y, h = cell(torch.randn(2, 32), h, dt=1 / 30)
        >>> y.shape, h.shape
        (torch.Size([2, 1]), torch.Size([2, 19]))
    """

    sparsity_mask: Tensor
    sensory_sparsity_mask: Tensor

    def __init__(
        self,
        wiring: Wiring,
        ode_unfolds: int = 6,
        epsilon: float = 1e-8,
        constraint: Literal["softplus", "clamp"] = "softplus",
        input_mapping: Literal["affine", "linear", "none"] = "affine",
        output_mapping: Literal["affine", "linear", "none"] = "affine",
        implementation: str = "auto",
    ) -> None:
        if not isinstance(wiring, Wiring):
            raise ValueError(
                f"wiring must be an ltc_control.wirings.Wiring, got {type(wiring).__name__} "
                "(convert an ncps model with ltc_control.from_ncps)"
            )
        if isinstance(ode_unfolds, bool) or not isinstance(ode_unfolds, int) or ode_unfolds < 1:
            raise ValueError(f"ode_unfolds must be an integer >= 1, got {ode_unfolds!r}")
        if not isinstance(epsilon, int | float) or not (epsilon >= 0 and math.isfinite(epsilon)):
            raise ValueError(f"epsilon must be a finite float >= 0, got {epsilon!r}")
        if constraint not in _CONSTRAINTS:
            raise ValueError(f"constraint must be one of {list(_CONSTRAINTS)}, got {constraint!r}")
        for name, value in (("input_mapping", input_mapping), ("output_mapping", output_mapping)):
            if value not in _MAPPINGS:
                raise ValueError(f"{name} must be one of {list(_MAPPINGS)}, got {value!r}")
        super().__init__(
            wiring.input_size,
            wiring.units,
            wiring.output_size,
            neuron_names=wiring.names,
            neuron_roles=wiring.roles,
        )
        self.wiring = wiring
        self.ode_unfolds = int(ode_unfolds)
        self.epsilon = float(epsilon)
        self.constraint: str = constraint
        self.input_mapping: str = input_mapping
        self.output_mapping: str = output_mapping
        self._implementation = "auto"
        self.implementation = implementation  # validated by the setter
        # Mutated in place on every step: assigning a module attribute runs nn.Module.__setattr__ (slow).
        self._last_impl: list[str | None] = [None]
        # (device, dtype, registry version) -> (name, impl, forward_step hook, forward_sequence hook)
        self._resolved: dict[tuple[Any, ...], tuple[str, Any, Any, Any]] = {}
        # (sum of the source tensors' version counters, constraint, the source tensors and mappings it was
        # computed from, effective parameters, mappings); only used where no gradient flows
        self._eff_cache: tuple[int, str, tuple[Any, ...], dict[str, Tensor], Mappings] | None = None

        n, s, m = wiring.units, wiring.input_size, wiring.output_size
        adj = torch.tensor(wiring.adjacency, dtype=torch.get_default_dtype())
        sadj = torch.tensor(wiring.sensory_adjacency, dtype=torch.get_default_dtype())
        # Registration order follows ncps so state dicts list parameters in the same order.
        self.gleak = nn.Parameter(self._init((n,), "gleak"))
        self.vleak = nn.Parameter(self._init((n,), "vleak"))
        self.cm = nn.Parameter(self._init((n,), "cm"))
        self.sigma = nn.Parameter(self._init((n, n), "sigma"))
        self.mu = nn.Parameter(self._init((n, n), "mu"))
        self.w = nn.Parameter(self._init((n, n), "w"))
        self.erev = nn.Parameter(adj.clone())
        self.sensory_sigma = nn.Parameter(self._init((s, n), "sensory_sigma"))
        self.sensory_mu = nn.Parameter(self._init((s, n), "sensory_mu"))
        self.sensory_w = nn.Parameter(self._init((s, n), "sensory_w"))
        self.sensory_erev = nn.Parameter(sadj.clone())
        self.register_buffer("sparsity_mask", adj.abs())
        self.register_buffer("sensory_sparsity_mask", sadj.abs())
        self.input_w: nn.Parameter | None = None
        self.input_b: nn.Parameter | None = None
        self.output_w: nn.Parameter | None = None
        self.output_b: nn.Parameter | None = None
        if input_mapping in ("affine", "linear"):
            self.input_w = nn.Parameter(torch.ones(s))
        if input_mapping == "affine":
            self.input_b = nn.Parameter(torch.zeros(s))
        if output_mapping in ("affine", "linear"):
            self.output_w = nn.Parameter(torch.ones(m))
        if output_mapping == "affine":
            self.output_b = nn.Parameter(torch.zeros(m))

    @staticmethod
    def _init(shape: tuple[int, ...], name: str) -> Tensor:
        low, high = INIT_RANGES[name]
        return torch.rand(*shape) * (high - low) + low

    # ------------------------------------------------------------------ implementation selection
    @property
    def implementation(self) -> str:
        """The requested implementation (``"auto"``, ``"reference"`` or a registered name)."""
        return self._implementation

    @implementation.setter
    def implementation(self, name: str) -> None:
        if name not in RESERVED:
            if not is_registered(name):
                raise ValueError(
                    f"unknown LTC implementation {name!r}; choose 'auto' or one of "
                    f"{available_implementations()}"
                )
        self._implementation = name
        self._resolved = {}

    @property
    def implementation_name(self) -> str:
        """Name of the implementation that ran last (before any run: the one that would run here)."""
        if self._last_impl[0] is not None:
            return self._last_impl[0]
        return self._resolve(self.gleak.device, self.gleak.dtype)[0]

    def _resolve(self, device: torch.device, dtype: torch.dtype) -> tuple[str, Any, Any, Any]:
        """``(name, implementation, forward_step hook or None, forward_sequence hook or None)``."""
        key = (device, dtype, registry_version())
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        found = select_implementation(self._implementation, device, dtype)
        hooks = (getattr(found[1], "forward_step", None), getattr(found[1], "forward_sequence", None))
        out = (found[0], found[1], *(h if callable(h) else None for h in hooks))
        self._resolved = {key: out}
        return out

    # ------------------------------------------------------------------ parameters
    def effective_parameters(self) -> dict[str, Tensor]:
        """The parameters the solver uses: constraint applied to gleak/cm/w/sensory_w, masks multiplied into
        w and sensory_w (keys listed in the module docstring).

        With gradients disabled the result is cached until a parameter or mask changes in place (optimizer
        step, ``load_state_dict``), is replaced (``cell.w = nn.Parameter(...)``,
        ``torch.func.functional_call``) or the module is moved/cast (``.to()``, ``.double()``), which keeps
        control-loop steps cheap. Replacing ``param.data`` by hand bypasses this: call :meth:`clear_cache`
        afterwards.
        """
        if torch.is_grad_enabled():
            return self._compute_effective()
        return self._inference_parameters()[0]

    def _inference_parameters(self) -> tuple[dict[str, Tensor], Mappings]:
        """Cached effective parameters and mappings; only for use where no gradient flows to them."""
        params = self._parameters
        get = params.get
        # Everything the result is computed from, read from the module dicts on every call: a tensor swapped
        # in by any route (assignment, load_state_dict(assign=True), torch.func.functional_call) differs by
        # identity; an in-place update (optimizer step, load_state_dict) bumps its version counter, and as
        # counters only grow, their sum changes whenever one of them does. C-level maps: this runs on every
        # control step.
        sources = (
            _SOURCES_OF(params)
            + _MASKS_OF(self._buffers)
            + (get("input_w"), get("input_b"), get("output_w"), get("output_b"))
        )
        key = sum(map(_VERSION, sources[:13]))
        cache = self._eff_cache
        if (
            cache is not None
            and cache[0] == key
            and cache[1] == self.constraint
            and all(map(operator.is_, sources, cache[2]))
        ):
            return cache[3], cache[4]
        eff = self._compute_effective()
        maps = Mappings(sources[13], sources[14], sources[15], sources[16], self.output_size)
        self._eff_cache = (key, self.constraint, sources, eff, maps)
        return eff, maps

    def _compute_effective(self) -> dict[str, Tensor]:
        pos: Callable[[Tensor], Tensor] = F.softplus if self.constraint == "softplus" else (lambda t: t)
        return {
            "gleak": pos(self.gleak),
            "vleak": self.vleak,
            "cm": pos(self.cm),
            "sigma": self.sigma,
            "mu": self.mu,
            "w": pos(self.w) * self.sparsity_mask,
            "erev": self.erev,
            "sensory_sigma": self.sensory_sigma,
            "sensory_mu": self.sensory_mu,
            "sensory_w": pos(self.sensory_w) * self.sensory_sparsity_mask,
            "sensory_erev": self.sensory_erev,
            "sparsity_mask": self.sparsity_mask,
            "sensory_sparsity_mask": self.sensory_sparsity_mask,
        }

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles must not carry implementation objects (a fast path may hold native handles) or
        # cached tensors; both are rebuilt on first use.
        state = self.__dict__.copy()
        state["_resolved"] = {}
        state["_eff_cache"] = None
        state["_last_impl"] = [None]
        return state

    def clear_cache(self) -> None:
        """Drops the cached effective parameters and implementation choice."""
        self._eff_cache = None
        self._resolved = {}

    def _apply(self, fn: Any, recurse: bool = True) -> LTCCell:  # type: ignore[override]
        # .to()/.double()/.cuda() replace tensors: drop caches keyed on the old ones.
        self._eff_cache = None
        self._resolved = {}
        return super()._apply(fn, recurse)  # type: ignore[no-any-return]

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """With ``constraint="clamp"``, clamps gleak, cm, w, sensory_w to >= 0 in place (softplus: no-op).

        Call it after every optimizer step, like ncps' ``apply_weight_constraints``.
        """
        if self.constraint == "clamp":
            for p in (self.gleak, self.cm, self.w, self.sensory_w):
                p.clamp_(min=0.0)

    @torch.no_grad()
    def scale_time_constants(self, factor: float, role: str | None = None) -> int:
        """Multiplies the effective membrane capacitance ``cm`` of the neurons of ``role`` (every neuron when
        None) by ``factor`` in place, which multiplies their time constant ``cm / conductance`` by ``factor``
        at any conductance: ``factor < 1`` makes them faster, ``> 1`` slower. Meant for initialisation (e.g. a
        faster motor layer); ``cm`` stays a trained parameter.

        With ``constraint="softplus"`` the raw parameter is set to the softplus inverse of the scaled
        effective value, so the effective ``cm`` is exactly ``factor`` times what it was; with ``"clamp"``
        the raw value is scaled.

        Args:
            factor: a finite number > 0.
            role: a neuron role of this cell's wiring (``"motor"``, ``"command"``, ``"inter"``, ``"hidden"``),
                or None for every neuron.

        Returns:
            The number of neurons changed.

        Raises:
            ValueError: a factor that is not a finite number > 0, or a role no neuron of this wiring has.
        """
        value = check_time_constant_factor("the time-constant factor", factor)
        roles = self.wiring.roles
        if role is None:
            mask = torch.ones(len(roles), dtype=torch.bool, device=self.cm.device)
        else:
            present = sorted(set(roles))
            if role not in present:
                raise ValueError(f"no neuron of this wiring has the role {role!r}; its roles: {present}")
            mask = torch.tensor([r == role for r in roles], dtype=torch.bool, device=self.cm.device)
        if self.constraint == "softplus":
            scaled = F.softplus(self.cm[mask]) * value
            # softplus^-1(y) = y + log(1 - exp(-y)), stable for small and large y
            new = scaled + torch.log(-torch.expm1(-scaled))
        else:
            new = self.cm[mask] * value
        if not bool(torch.isfinite(new).all()):
            raise ValueError(
                f"the time-constant factor {factor!r} takes cm out of {self.cm.dtype}'s finite range; "
                "nothing was changed"
            )
        self.cm[mask] = new
        self.clear_cache()
        return int(mask.sum())

    # ------------------------------------------------------------------ maps
    def map_inputs(self, x: Tensor) -> Tensor:
        """Applies the input mapping to ``x (..., S)``."""
        w, b = self._parameters.get("input_w"), self._parameters.get("input_b")
        if w is not None and b is not None:
            return torch.addcmul(b, x, w)
        if w is not None:
            return x * w
        return x

    def readout(self, h: Tensor) -> Tensor:
        """Motor-neuron outputs ``(..., M)`` from states ``(..., N)`` through the output mapping."""
        y = h[..., : self.output_size] if self.output_size < self.state_size else h
        w, b = self._parameters.get("output_w"), self._parameters.get("output_b")
        if w is not None and b is not None:
            return torch.addcmul(b, y, w)
        if w is not None:
            return y * w
        return y

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, h: Tensor | None = None, dt: float | Tensor = 1.0) -> tuple[Tensor, Tensor]:
        """One input step.

        Args:
            x: inputs ``(B, S)``.
            h: state ``(B, N)``; ``None`` = :meth:`initial_state`.
            dt: elapsed time: float, ``(B,)`` or ``(B, 1)``; > 0.

        Returns:
            ``(y (B, M), h' (B, N))``.

        Raises:
            ValueError: wrong input width, wrong state shape, non-finite input, ``dt <= 0``.
        """
        if not torch.is_grad_enabled() or not self._needs_graph(x, h, dt):
            out = self._forward_inference(x, h, dt)
            if out is not None:
                return out
        self._check_input(x)
        batch = x.shape[0]
        if h is None:
            h = self.initial_state(batch, device=x.device, dtype=x.dtype)
        else:
            self._check_state(h, batch)
        dt_t = self._as_dt(dt, batch, h.device, h.dtype)
        name, impl = self._resolve(h.device, h.dtype)[:2]
        v = impl.step(
            self.effective_parameters(), self.map_inputs(x), h, dt_t, self.ode_unfolds, self.epsilon
        )
        self._last_impl[0] = name
        return self.readout(v), v

    def forward_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Runs a whole sequence through the selected implementation.

        Args:
            x: inputs ``(B, T, S)``.
            h0: initial state ``(B, N)`` (default zeros).
            dt: ``None`` (1.0), float, or ``(B, T)`` / ``(B, T, 1)`` tensor of step lengths (> 0).
            episode_starts: ``(B, T)`` 0/1; 1 resets the state to zeros before step t.

        Returns:
            ``(y (B, T, M), h_T (B, N))``.
        """
        if not torch.is_grad_enabled() or not self._needs_graph(x, h0, dt):
            out = self._forward_sequence_inference(x, h0, dt, episode_starts)
            if out is not None:
                return out
        states = self.state_sequence(x, h0, dt, episode_starts)
        return self.readout(states), states[:, -1]

    def state_sequence(
        self,
        x: Tensor,
        h0: Tensor | None = None,
        dt: float | Tensor | None = None,
        episode_starts: Tensor | None = None,
    ) -> Tensor:
        """Every step's state ``(B, T, N)`` (after each step), through the selected implementation's fused
        sequence when it has one; arguments as :meth:`forward_sequence`, whose outputs are ``readout`` of
        these states. For callers that read every neuron, e.g. a critic or gSDE on the actor's state.
        """
        x, h, dt_seq, resets = self._prepare_sequence(x, h0, dt, episode_starts)
        b, t = x.shape[0], x.shape[1]
        if not isinstance(dt_seq, Tensor):
            dt_seq = torch.full((1, 1, 1), 1.0 if dt_seq is None else dt_seq, device=h.device, dtype=h.dtype)
            dt_seq = dt_seq.expand(b, t, 1)
        name, impl = self._resolve(h.device, h.dtype)[:2]
        params = self.effective_parameters()
        xm = self.map_inputs(x)
        seq_fn = getattr(impl, "sequence", None)
        if seq_fn is not None:
            states = seq_fn(params, xm, h, dt_seq, resets, self.ode_unfolds, self.epsilon)
        else:
            outs = []
            v = h
            for i in range(t):
                if resets is not None:
                    v = (1.0 - resets[:, i]) * v
                v = impl.step(params, xm[:, i], v, dt_seq[:, i], self.ode_unfolds, self.epsilon)
                outs.append(v)
            states = torch.stack(outs, dim=1)
        self._last_impl[0] = name
        return states

    # ------------------------------------------------------------------ inference fast path
    def _needs_graph(self, *tensors: object) -> bool:
        """Whether, with gradients enabled, this call must build an autograd graph."""
        for t in tensors:
            if isinstance(t, Tensor) and t.requires_grad:
                return True
        return any(p is not None and p.requires_grad for p in self._parameters.values())

    def _forward_inference(self, x: Any, h: Any, dt: Any) -> tuple[Tensor, Tensor] | None:
        """One step through the implementation's ``forward_step`` hook, or ``None`` when it does not apply.

        Only canonical argument forms are handled here (``x (B, S)``, ``h`` None or ``(B, N)``, ``dt`` a
        finite float > 0 or a ``(B,)`` / ``(B, 1)`` tensor); everything else, including every shape error,
        is left to the general path, which raises the documented messages. Value checks (finite ``x``,
        ``dt > 0``) happen inside the hook.
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.input_size:
            return None
        batch = x.shape[0]
        if h is None:
            h = self.initial_state(batch, device=x.device, dtype=x.dtype)
        elif (
            not isinstance(h, Tensor) or h.dim() != 2 or h.shape[0] != batch or h.shape[1] != self.state_size
        ):
            return None
        if isinstance(dt, float) or (isinstance(dt, int) and not isinstance(dt, bool)):
            if not 0 < dt < _INF:  # NaN fails too
                return None
        elif not isinstance(dt, Tensor) or not (
            (dt.dim() == 1 and dt.shape[0] == batch)
            or (dt.dim() == 2 and dt.shape[0] == batch and dt.shape[1] == 1)
        ):
            return None
        resolved = self._resolve(h.device, h.dtype)
        hook = resolved[2]
        if hook is None:
            return None
        params, maps = self._inference_parameters()
        out = hook(params, maps, x, h, dt, self.ode_unfolds, self.epsilon, _base._VALIDATE)
        if out is not None:
            self._last_impl[0] = resolved[0]
        return out  # type: ignore[no-any-return]

    def _forward_sequence_inference(
        self, x: Any, h0: Any, dt: Any, episode_starts: Any
    ) -> tuple[Tensor, Tensor] | None:
        """A sequence through the ``forward_sequence`` hook, or ``None`` (see :meth:`_forward_inference`).

        Canonical forms: ``x (B, T, S)``, ``h0`` None or ``(B, N)``, ``dt`` None, a finite float > 0 or a
        ``(B, T)`` tensor, ``episode_starts`` None or a ``(B, T)`` tensor.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[2] != self.input_size:
            return None
        b, t = x.shape[0], x.shape[1]
        if b < 1 or t < 1:
            return None
        if h0 is None:
            h0 = self.initial_state(b, device=x.device, dtype=x.dtype if x.is_floating_point() else None)
        elif (
            not isinstance(h0, Tensor) or h0.dim() != 2 or h0.shape[0] != b or h0.shape[1] != self.state_size
        ):
            return None
        if dt is None:
            dt = 1.0
        elif isinstance(dt, float) or (isinstance(dt, int) and not isinstance(dt, bool)):
            if not 0 < dt < _INF:
                return None
        elif not isinstance(dt, Tensor) or dt.dim() != 2 or dt.shape[0] != b or dt.shape[1] != t:
            return None
        if episode_starts is not None and (
            not isinstance(episode_starts, Tensor)
            or episode_starts.dim() != 2
            or episode_starts.shape[0] != b
            or episode_starts.shape[1] != t
        ):
            return None
        resolved = self._resolve(h0.device, h0.dtype)
        hook = resolved[3]
        if hook is None:
            return None
        params, maps = self._inference_parameters()
        out = hook(params, maps, x, h0, dt, episode_starts, self.ode_unfolds, self.epsilon, _base._VALIDATE)
        if out is not None:
            self._last_impl[0] = resolved[0]
        return out  # type: ignore[no-any-return]

    def diagnostics(self, x: Tensor, h: Tensor | None = None, dt: float | Tensor = 1.0) -> dict[str, Tensor]:
        """One step with the reference math, returning what the inspection tools plot.

        Args:
            x: inputs ``(B, S)``.
            h: state ``(B, N)`` before the step (default zeros).
            dt: elapsed time: float, ``(B,)`` or ``(B, 1)``.

        Returns:
            dict of ``(B, N)`` tensors ``state`` (new state), ``sensory_current``
            (``sum_k r (sensory_erev - v)``), ``synaptic_current`` (``sum_i s (erev - v)``), ``conductance``
            (``gleak + sum s + sum r``), ``tau`` (``cm / conductance``, the liquid time constant), all at the
            last unfold's pre-update state, and ``output (B, M)``.
        """
        self._check_input(x)
        batch = x.shape[0]
        if h is None:
            h = self.initial_state(batch, device=x.device, dtype=x.dtype)
        else:
            self._check_state(h, batch)
        dt_t = self._as_dt(dt, batch, h.device, h.dtype)
        out = reference_diagnostics(
            self.effective_parameters(), self.map_inputs(x), h, dt_t, self.ode_unfolds, self.epsilon
        )
        out["output"] = self.readout(out["state"])
        return out

    @property
    def num_synapses(self) -> int:
        """Synapse count of the wiring (recurrent + sensory)."""
        return self.wiring.num_synapses

    def extra_repr(self) -> str:
        return (
            f"units={self.state_size}, input_size={self.input_size}, output_size={self.output_size}, "
            f"synapses={self.wiring.num_synapses}, ode_unfolds={self.ode_unfolds}, "
            f"constraint={self.constraint!r}, "
            f"implementation={self._implementation!r}"
        )
