"""The immutable :class:`Wiring`: sparse connectivity with polarity, neuron roles and names.

A wiring is data, not a layer. It holds two integer matrices with values in {-1, 0, +1}:

* ``adjacency[i, j]`` (shape ``(N, N)``) is the synapse from neuron ``i`` to neuron ``j`` (+1 excitatory,
  -1 inhibitory, 0 none), the same convention as ``ncps``;
* ``sensory_adjacency[k, j]`` (shape ``(S, N)``) is the synapse from input feature ``k`` to neuron ``j``.

Motor neurons are the first ``output_size`` state entries (as in ``ncps``). Both matrices are stored as
read-only ``int8`` numpy arrays, so a wiring can be shared between cells without anyone mutating it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

#: Neuron roles a wiring may use. Generic (non-NCP) wirings call their non-motor neurons ``"hidden"``.
VALID_ROLES: tuple[str, ...] = ("motor", "command", "inter", "hidden")

_DICT_KEYS = (
    "format",
    "builder",
    "builder_args",
    "adjacency",
    "sensory_adjacency",
    "roles",
    "names",
    "output_size",
)
_FORMAT = "ltc_control.wiring/1"


def _as_polarity_matrix(value: Any, name: str, ndim_shape: str) -> np.ndarray:
    """Converts ``value`` to a read-only int8 matrix, checking it is 2-D with entries in {-1, 0, 1}."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(
            f"{name} must be a 2-D array {ndim_shape} with values in {{-1, 0, 1}}: {exc}"
        ) from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array {ndim_shape}, got an array of shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric with values in {{-1, 0, 1}}, got dtype {arr.dtype}")
    if arr.size:
        as_float = arr.astype(np.float64)
        bad = ~np.isin(as_float, (-1.0, 0.0, 1.0))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} values must be in {{-1, 0, 1}} (polarity), got {arr[idx].item()!r} at index {idx} "
                f"({int(bad.sum())} invalid entries)"
            )
    out = np.array(arr, dtype=np.int8, copy=True)
    out.setflags(write=False)
    return out


class Wiring:
    """Immutable connectivity of a neural circuit.

    Build one with a seeded builder (:func:`~ltc_control.wirings.NCP`, :func:`~ltc_control.wirings.AutoNCP`,
    :func:`~ltc_control.wirings.FullyConnected`, :func:`~ltc_control.wirings.Random`,
    :func:`~ltc_control.wirings.lane_keeping_ncp`) or from your own matrices with :meth:`from_matrices`.

    Attributes:
        adjacency: ``(N, N)`` read-only int8 array; ``adjacency[i, j]`` is the polarity of the synapse
            neuron ``i`` -> neuron ``j`` (+1 excitatory, -1 inhibitory, 0 no synapse).
        sensory_adjacency: ``(S, N)`` read-only int8 array; ``sensory_adjacency[k, j]`` is input ``k`` ->
            neuron ``j``.
        roles: length-``N`` tuple of roles from :data:`VALID_ROLES`; motor neurons come first.
        names: length-``N`` tuple of unique neuron names (e.g. ``"motor_0"``, ``"command_2"``).
        output_size: number of motor neurons ``M`` (the first ``M`` state entries are the outputs).
        builder: name of the builder that made this wiring (``"from_matrices"`` for user matrices).
        builder_args: read-only mapping of the builder's arguments (JSON-serialisable), for provenance.

    Example:
        >>> from ltc_control.wirings import lane_keeping_ncp
        >>> w = lane_keeping_ncp(seed=1)
        >>> (w.units, w.input_size, w.output_size)
        (19, 32, 1)
        >>> w2 = Wiring.from_dict(w.to_dict())
        >>> w2 == w
        True
    """

    _adjacency: np.ndarray
    _sensory_adjacency: np.ndarray
    _roles: tuple[str, ...]
    _names: tuple[str, ...]
    _output_size: int
    _builder: str
    _builder_args: Mapping[str, Any]

    __slots__ = (
        "_adjacency",
        "_sensory_adjacency",
        "_roles",
        "_names",
        "_output_size",
        "_builder",
        "_builder_args",
    )

    def __init__(
        self,
        adjacency: Any,
        sensory_adjacency: Any,
        roles: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        output_size: int | None = None,
        builder: str = "from_matrices",
        builder_args: Mapping[str, Any] | None = None,
    ) -> None:
        """Validates and freezes the matrices; prefer :meth:`from_matrices` or a builder in user code.

        Args:
            adjacency: ``(N, N)`` polarity matrix, values in {-1, 0, 1}.
            sensory_adjacency: ``(S, N)`` polarity matrix, values in {-1, 0, 1}.
            roles: ``N`` roles from :data:`VALID_ROLES`; default ``"motor"`` for the first ``output_size``
                neurons and ``"hidden"`` for the rest.
            names: ``N`` unique names; default ``f"{role}_{index within role}"``.
            output_size: number of motor neurons ``M`` (1 <= M <= N). Default: the number of ``"motor"``
                roles if roles are given, else ``N``.
            builder: provenance: the builder's name.
            builder_args: provenance: the builder's arguments (must be JSON-serialisable).

        Raises:
            ValueError: on any inconsistency (values, shapes, roles, names, output size), naming the problem.
        """
        adj = _as_polarity_matrix(adjacency, "adjacency", "(N, N)")
        sens = _as_polarity_matrix(sensory_adjacency, "sensory_adjacency", "(S, N)")
        n = adj.shape[0]
        if adj.shape[0] != adj.shape[1]:
            raise ValueError(f"adjacency must be square (N, N), got shape {adj.shape}")
        if n < 1:
            raise ValueError("adjacency must describe at least 1 neuron (N >= 1), got N = 0")
        if sens.shape[1] != n:
            raise ValueError(
                f"sensory_adjacency must have shape (S, N) with N = {n} (from adjacency), "
                f"got shape {sens.shape}"
            )
        if sens.shape[0] < 1:
            raise ValueError("sensory_adjacency must describe at least 1 input (S >= 1), got S = 0")

        if roles is not None:
            roles_t = tuple(str(r) for r in roles)
            if len(roles_t) != n:
                raise ValueError(f"roles must have length N = {n}, got {len(roles_t)}")
            bad_roles = sorted({r for r in roles_t if r not in VALID_ROLES})
            if bad_roles:
                raise ValueError(f"unknown neuron role(s) {bad_roles}; valid roles are {list(VALID_ROLES)}")
        if output_size is None:
            output_size = sum(r == "motor" for r in roles_t) if roles is not None else n
        if isinstance(output_size, bool) or not isinstance(output_size, int | np.integer):
            raise ValueError(f"output_size must be an int in [1, {n}], got {output_size!r}")
        m = int(output_size)
        if not 1 <= m <= n:
            raise ValueError(f"output_size must be in [1, N = {n}], got {m}")
        if roles is None:
            roles_t = tuple("motor" if i < m else "hidden" for i in range(n))
        else:
            motor_idx = [i for i, r in enumerate(roles_t) if r == "motor"]
            if motor_idx != list(range(m)):
                raise ValueError(
                    f"motor neurons must be exactly the first output_size = {m} neurons "
                    f"(indices 0..{m - 1}), "
                    f"got motor roles at indices {motor_idx}"
                )
        if names is None:
            counters: dict[str, int] = {}
            gen: list[str] = []
            for r in roles_t:
                gen.append(f"{r}_{counters.get(r, 0)}")
                counters[r] = counters.get(r, 0) + 1
            names_t = tuple(gen)
        else:
            names_t = tuple(str(s) for s in names)
            if len(names_t) != n:
                raise ValueError(f"names must have length N = {n}, got {len(names_t)}")
            if len(set(names_t)) != n:
                dup = sorted({s for s in names_t if names_t.count(s) > 1})
                raise ValueError(f"neuron names must be unique, duplicates: {dup}")
        args = dict(builder_args or {})
        try:
            json.dumps(args)
        except TypeError as exc:
            raise ValueError(f"builder_args must be JSON-serialisable: {exc}") from exc

        object.__setattr__(self, "_adjacency", adj)
        object.__setattr__(self, "_sensory_adjacency", sens)
        object.__setattr__(self, "_roles", roles_t)
        object.__setattr__(self, "_names", names_t)
        object.__setattr__(self, "_output_size", m)
        object.__setattr__(self, "_builder", str(builder))
        object.__setattr__(self, "_builder_args", MappingProxyType(args))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"Wiring is immutable: cannot set {key!r}; build a new wiring instead")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"Wiring is immutable: cannot delete {key!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_matrices(
        cls,
        adjacency: Any,
        sensory_adjacency: Any,
        roles: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        output_size: int | None = None,
    ) -> Wiring:
        """Builds a wiring from your own polarity matrices.

        Args:
            adjacency: ``(N, N)`` array-like, values in {-1, 0, 1}; ``[i, j]`` is neuron i -> neuron j.
            sensory_adjacency: ``(S, N)`` array-like, values in {-1, 0, 1}; ``[k, j]`` is input k -> neuron j.
            roles: optional ``N`` roles (see :data:`VALID_ROLES`); motor neurons must be the first
                ``output_size``.
            names: optional ``N`` unique neuron names.
            output_size: number of motor (output) neurons ``M``; defaults to the number of ``"motor"``
                roles, or ``N`` when no roles are given.

        Returns:
            The validated, immutable wiring.

        Raises:
            ValueError: values outside {-1, 0, 1}, shapes that disagree, bad roles/names/output size.
        """
        return cls(adjacency, sensory_adjacency, roles=roles, names=names, output_size=output_size)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable description that :meth:`from_dict` turns back into an equal wiring."""
        return {
            "format": _FORMAT,
            "builder": self._builder,
            "builder_args": json.loads(json.dumps(dict(self._builder_args))),
            "adjacency": self._adjacency.tolist(),
            "sensory_adjacency": self._sensory_adjacency.tolist(),
            "roles": list(self._roles),
            "names": list(self._names),
            "output_size": self._output_size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Wiring:
        """Rebuilds a wiring from :meth:`to_dict` output (exact round trip).

        Args:
            d: the dictionary (e.g. loaded from JSON).

        Raises:
            ValueError: if ``d`` is not a mapping, has unknown or missing keys, an unknown format, or
                invalid data.
        """
        if not isinstance(d, Mapping):
            raise ValueError(
                f"Wiring.from_dict expects a mapping (from Wiring.to_dict()), got {type(d).__name__}"
            )
        unknown = sorted(set(d) - set(_DICT_KEYS))
        if unknown:
            raise ValueError(f"unknown wiring key(s) {unknown}; valid keys are {list(_DICT_KEYS)}")
        required = ("adjacency", "sensory_adjacency", "roles", "names", "output_size")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"wiring dict is missing key(s) {missing} (required: {list(required)})")
        fmt = d.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"unsupported wiring format {fmt!r}; this version reads {_FORMAT!r}")
        builder_args = d.get("builder_args", {})
        if not isinstance(builder_args, Mapping):
            raise ValueError(f"builder_args must be a mapping, got {type(builder_args).__name__}")
        return cls(
            d["adjacency"],
            d["sensory_adjacency"],
            roles=d["roles"],
            names=d["names"],
            output_size=d["output_size"],
            builder=str(d.get("builder", "from_matrices")),
            builder_args=builder_args,
        )

    # ------------------------------------------------------------------ data
    @property
    def adjacency(self) -> np.ndarray:
        """``(N, N)`` read-only int8 polarity matrix, ``[i, j]`` = synapse neuron i -> neuron j."""
        return self._adjacency

    @property
    def sensory_adjacency(self) -> np.ndarray:
        """``(S, N)`` read-only int8 polarity matrix, ``[k, j]`` = synapse input k -> neuron j."""
        return self._sensory_adjacency

    @property
    def roles(self) -> tuple[str, ...]:
        """Role of every neuron (length ``N``)."""
        return self._roles

    @property
    def names(self) -> tuple[str, ...]:
        """Name of every neuron (length ``N``)."""
        return self._names

    @property
    def builder(self) -> str:
        """Name of the builder that made this wiring."""
        return self._builder

    @property
    def builder_args(self) -> Mapping[str, Any]:
        """Read-only builder arguments (provenance only; the matrices are the source of truth)."""
        return self._builder_args

    @property
    def units(self) -> int:
        """Number of neurons ``N`` (the state size of an LTC cell)."""
        return int(self._adjacency.shape[0])

    @property
    def input_size(self) -> int:
        """Number of input features ``S`` (sensory neurons)."""
        return int(self._sensory_adjacency.shape[0])

    @property
    def output_size(self) -> int:
        """Number of motor neurons ``M``; they are state entries ``[0, M)``."""
        return self._output_size

    @property
    def num_recurrent_synapses(self) -> int:
        """Number of neuron -> neuron synapses (non-zeros of :attr:`adjacency`)."""
        return int(np.count_nonzero(self._adjacency))

    @property
    def num_sensory_synapses(self) -> int:
        """Number of input -> neuron synapses (non-zeros of :attr:`sensory_adjacency`)."""
        return int(np.count_nonzero(self._sensory_adjacency))

    @property
    def num_synapses(self) -> int:
        """Total synapse count: recurrent + sensory."""
        return self.num_recurrent_synapses + self.num_sensory_synapses

    def layer_indices(self, role: str) -> np.ndarray:
        """Indices of the neurons with ``role`` (ascending, int64; empty if none).

        Raises:
            ValueError: if ``role`` is not one of :data:`VALID_ROLES`.
        """
        if role not in VALID_ROLES:
            raise ValueError(f"unknown role {role!r}; valid roles are {list(VALID_ROLES)}")
        return np.array([i for i, r in enumerate(self._roles) if r == role], dtype=np.int64)

    def layer_sizes(self) -> dict[str, int]:
        """Neuron count per role present in this wiring, e.g. ``{"motor": 1, "command": 6, "inter": 12}``."""
        out: dict[str, int] = {}
        for r in self._roles:
            out[r] = out.get(r, 0) + 1
        return out

    def summary(self) -> str:
        """Plain-text description: neurons per layer and synapse counts between layers."""
        lines = [
            f"Wiring '{self._builder}': {self.input_size} sensory inputs, {self.units} neurons "
            f"({', '.join(f'{k} {v}' for k, v in self.layer_sizes().items())}), {self.output_size} outputs",
            f"synapses: {self.num_synapses} total = {self.num_sensory_synapses} sensory + "
            f"{self.num_recurrent_synapses} recurrent",
        ]
        roles = np.array(self._roles)
        present = [r for r in VALID_ROLES[::-1] if (roles == r).any()]
        sens_by = {r: int(np.count_nonzero(self._sensory_adjacency[:, roles == r])) for r in present}
        lines.append("  sensory -> " + ", ".join(f"{r}: {c}" for r, c in sens_by.items() if c))
        for src in present:
            parts = []
            for dst in present:
                c = int(np.count_nonzero(self._adjacency[np.ix_(roles == src, roles == dst)]))
                if c:
                    parts.append(f"{dst}: {c}")
            if parts:
                lines.append(f"  {src} -> " + ", ".join(parts))
        exc = int((self._adjacency > 0).sum() + (self._sensory_adjacency > 0).sum())
        lines.append(f"polarity: {exc} excitatory, {self.num_synapses - exc} inhibitory")
        return "\n".join(lines)

    # ------------------------------------------------------------------ dunder
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Wiring):
            return NotImplemented
        return (
            np.array_equal(self._adjacency, other._adjacency)
            and np.array_equal(self._sensory_adjacency, other._sensory_adjacency)
            and self._roles == other._roles
            and self._names == other._names
            and self._output_size == other._output_size
            and self._builder == other._builder
            and dict(self._builder_args) == dict(other._builder_args)
        )

    def __hash__(self) -> int:
        return hash(
            (self._adjacency.tobytes(), self._sensory_adjacency.shape, self._sensory_adjacency.tobytes())
        )

    def __repr__(self) -> str:
        return (
            f"Wiring(builder={self._builder!r}, units={self.units}, input_size={self.input_size}, "
            f"output_size={self.output_size}, synapses={self.num_synapses})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # __slots__ + blocked __setattr__ defeat default pickling; rebuild through from_dict instead.
        return (Wiring.from_dict, (self.to_dict(),))
