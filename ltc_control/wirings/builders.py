"""Seeded wiring builders: NCP, AutoNCP, FullyConnected, Random and the lane-keeping preset.

The NCP construction follows ``ncps.wirings.NCP`` (sensory -> inter -> command -> motor layers, fan-outs
drawn without replacement, polarity uniform on {-1, +1}, neurons left unreached by the random draw get
``mean fan-in`` inputs of their own, recurrent command synapses drawn with replacement so duplicates
collapse), so synapse counts are comparable with ncps. Each builder uses its own ``numpy.random.Generator``
seeded from ``seed``: the same seed gives the same matrices, and no global random state is touched.
"""

from __future__ import annotations

import numpy as np

from ltc_control.wirings.wiring import Wiring


def _check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """Checks ``low <= value <= high`` for an integer, raising a ValueError that states the allowed range."""
    rng_text = f"in [{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer {rng_text}, got {value!r}")
    v = int(value)
    if v < low or (high is not None and v > high):
        raise ValueError(f"{name} must be {rng_text}{why}, got {v}")
    return v


def _check_sparsity(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    v = float(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {v}")
    return v


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _polarity(rng: np.random.Generator, excitatory_bias: bool = False) -> int:
    # ncps draws NCP polarities from [-1, 1] and dense/random ones from [-1, 1, 1] (2/3 excitatory).
    return int(rng.choice((-1, 1, 1))) if excitatory_bias else int(rng.choice((-1, 1)))


def NCP(  # noqa: N802 - named like the ncps class it mirrors
    inter: int,
    command: int,
    motor: int,
    sensory_fanout: int,
    inter_fanout: int,
    recurrent_command_synapses: int,
    motor_fanin: int,
    input_size: int,
    seed: int = 22222,
) -> Wiring:
    """Builds a Neural Circuit Policy wiring: sensory -> inter -> command (recurrent) -> motor.

    Neuron order: motor ``[0, M)``, command ``[M, M+C)``, inter ``[M+C, N)``.

    Args:
        inter: number of inter neurons (layer 2), >= 1.
        command: number of command neurons (layer 3), >= 1.
        motor: number of motor neurons (outputs), >= 1.
        sensory_fanout: synapses from each input to distinct inter neurons, in [1, inter].
        inter_fanout: synapses from each inter neuron to distinct command neurons, in [1, command].
        recurrent_command_synapses: random command -> command synapses drawn (duplicates collapse), >= 0.
        motor_fanin: synapses into each motor neuron from distinct command neurons, in [1, command].
        input_size: number of input features (sensory neurons), >= 1.
        seed: seed of the builder's own random generator.

    Returns:
        The wiring (builder ``"NCP"``).

    Raises:
        ValueError: a count or fan-out outside its allowed range (the message names it and the range).
    """
    inter = _check_int("inter", inter, 1)
    command = _check_int("command", command, 1)
    motor = _check_int("motor", motor, 1)
    input_size = _check_int("input_size", input_size, 1)
    sensory_fanout = _check_int(
        "sensory_fanout", sensory_fanout, 1, inter, " (at most the number of inter neurons)"
    )
    inter_fanout = _check_int(
        "inter_fanout", inter_fanout, 1, command, " (at most the number of command neurons)"
    )
    recurrent_command_synapses = _check_int("recurrent_command_synapses", recurrent_command_synapses, 0)
    motor_fanin = _check_int(
        "motor_fanin", motor_fanin, 1, command, " (at most the number of command neurons)"
    )
    seed = _check_seed(seed)
    return _build_ncp(
        inter,
        command,
        motor,
        sensory_fanout,
        inter_fanout,
        recurrent_command_synapses,
        motor_fanin,
        input_size,
        seed,
        builder="NCP",
        builder_args={
            "inter": inter,
            "command": command,
            "motor": motor,
            "sensory_fanout": sensory_fanout,
            "inter_fanout": inter_fanout,
            "recurrent_command_synapses": recurrent_command_synapses,
            "motor_fanin": motor_fanin,
            "input_size": input_size,
            "seed": seed,
        },
    )


def _build_ncp(
    n_inter: int,
    n_command: int,
    n_motor: int,
    sensory_fanout: int,
    inter_fanout: int,
    recurrent_command_synapses: int,
    motor_fanin: int,
    input_size: int,
    seed: int,
    builder: str,
    builder_args: dict[str, object],
) -> Wiring:
    rng = np.random.default_rng(seed)
    n = n_inter + n_command + n_motor
    adj = np.zeros((n, n), dtype=np.int8)
    sens = np.zeros((input_size, n), dtype=np.int8)
    motor_ids = np.arange(0, n_motor)
    command_ids = np.arange(n_motor, n_motor + n_command)
    inter_ids = np.arange(n_motor + n_command, n)
    sensory_ids = np.arange(input_size)

    # sensory -> inter: each input reaches sensory_fanout distinct inter neurons.
    unreached = set(inter_ids.tolist())
    for src in sensory_ids:
        for dest in rng.choice(inter_ids, size=sensory_fanout, replace=False):
            unreached.discard(int(dest))
            sens[src, dest] = _polarity(rng)
    fanin = int(np.clip(int(input_size * sensory_fanout / n_inter), 1, input_size))
    for dest in sorted(unreached):
        for src in rng.choice(sensory_ids, size=fanin, replace=False):
            sens[src, dest] = _polarity(rng)

    # inter -> command.
    unreached = set(command_ids.tolist())
    for src in inter_ids:
        for dest in rng.choice(command_ids, size=inter_fanout, replace=False):
            unreached.discard(int(dest))
            adj[src, dest] = _polarity(rng)
    # ncps clips this fan-in to the command count although it samples inter neurons; clip to what exists.
    fanin = int(np.clip(int(n_inter * inter_fanout / n_command), 1, min(n_command, n_inter)))
    for dest in sorted(unreached):
        for src in rng.choice(inter_ids, size=fanin, replace=False):
            adj[src, dest] = _polarity(rng)

    # command -> command recurrence, drawn with replacement (duplicates collapse, as in ncps).
    for _ in range(recurrent_command_synapses):
        rsrc = int(rng.choice(command_ids))
        rdest = int(rng.choice(command_ids))
        adj[rsrc, rdest] = _polarity(rng)

    # command -> motor: each motor neuron gets motor_fanin distinct command inputs.
    unreached = set(command_ids.tolist())
    for dest in motor_ids:
        for src in rng.choice(command_ids, size=motor_fanin, replace=False):
            unreached.discard(int(src))
            adj[src, dest] = _polarity(rng)
    fanout = int(np.clip(int(n_motor * motor_fanin / n_command), 1, n_motor))
    for csrc in sorted(unreached):
        for mdest in rng.choice(motor_ids, size=fanout, replace=False):
            adj[csrc, mdest] = _polarity(rng)

    roles = ["motor"] * n_motor + ["command"] * n_command + ["inter"] * n_inter
    return Wiring(adj, sens, roles=roles, output_size=n_motor, builder=builder, builder_args=builder_args)


def AutoNCP(  # noqa: N802 - named like the ncps class it mirrors
    units: int,
    outputs: int,
    input_size: int,
    sparsity: float = 0.5,
    seed: int = 22222,
) -> Wiring:
    """Builds an NCP wiring from a neuron budget, with ncps' ``AutoNCP`` layer-size and fan-out rules.

    ``command = max(int(0.4 * (units - outputs)), 1)``, ``inter = units - outputs - command``; with
    ``density = 1 - sparsity``: sensory fan-out ``max(int(inter * density), 1)``, inter fan-out and motor
    fan-in ``max(int(command * density), 1)``, recurrent command synapses
    ``max(int(2 * command * density), 1)``.

    Args:
        units: total number of neurons ``N`` (>= 3).
        outputs: number of motor neurons, in [1, units - 2] (one command and one inter neuron remain).
        input_size: number of input features, >= 1.
        sparsity: fraction of absent synapses between consecutive layers, in [0, 1).
        seed: seed of the builder's own random generator.

    Raises:
        ValueError: a parameter outside its allowed range (named in the message).
    """
    units = _check_int("units", units, 3)
    outputs = _check_int(
        "outputs", outputs, 1, units - 2, " (units - 2: one command and one inter neuron remain)"
    )
    input_size = _check_int("input_size", input_size, 1)
    sparsity = _check_sparsity("sparsity", sparsity)
    seed = _check_seed(seed)
    density = 1.0 - sparsity
    inter_and_command = units - outputs
    command = max(int(0.4 * inter_and_command), 1)
    inter = inter_and_command - command
    return _build_ncp(
        inter,
        command,
        outputs,
        max(int(inter * density), 1),
        max(int(command * density), 1),
        max(int(command * density * 2), 1),
        max(int(command * density), 1),
        input_size,
        seed,
        builder="AutoNCP",
        builder_args={
            "units": units,
            "outputs": outputs,
            "input_size": input_size,
            "sparsity": sparsity,
            "seed": seed,
        },
    )


def FullyConnected(  # noqa: N802 - named like the ncps class it mirrors
    units: int,
    input_size: int,
    output_size: int | None = None,
    self_connections: bool = True,
    seed: int = 1111,
) -> Wiring:
    """Builds a dense wiring: every input reaches every neuron, every neuron every neuron.

    Polarities are drawn from {-1, +1, +1} (2/3 excitatory), as ncps does.

    Args:
        units: number of neurons ``N``, >= 1.
        input_size: number of input features ``S``, >= 1.
        output_size: number of motor neurons (the first ``M``), in [1, units]; default ``units``.
        self_connections: keep the ``i -> i`` synapses.
        seed: seed of the builder's own random generator (polarities).

    Raises:
        ValueError: a parameter outside its allowed range.
    """
    units = _check_int("units", units, 1)
    input_size = _check_int("input_size", input_size, 1)
    output_size = units if output_size is None else _check_int("output_size", output_size, 1, units)
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    adj = rng.choice(np.array([-1, 1, 1], dtype=np.int8), size=(units, units))
    if not self_connections:
        np.fill_diagonal(adj, 0)
    sens = rng.choice(np.array([-1, 1, 1], dtype=np.int8), size=(input_size, units))
    return Wiring(
        adj,
        sens,
        output_size=output_size,
        builder="FullyConnected",
        builder_args={
            "units": units,
            "input_size": input_size,
            "output_size": output_size,
            "self_connections": bool(self_connections),
            "seed": seed,
        },
    )


def Random(  # noqa: N802 - named like the ncps class it mirrors
    units: int,
    input_size: int,
    output_size: int | None = None,
    sparsity: float = 0.5,
    seed: int = 1111,
) -> Wiring:
    """Builds a random sparse wiring.

    It has ``round(N*N*(1-sparsity))`` recurrent and ``round(S*N*(1-sparsity))`` sensory synapses, positions
    drawn without replacement, polarities from {-1, +1, +1}.

    Args:
        units: number of neurons ``N``, >= 1.
        input_size: number of input features ``S``, >= 1.
        output_size: number of motor neurons (the first ``M``), in [1, units]; default ``units``.
        sparsity: fraction of absent synapses, in [0, 1).
        seed: seed of the builder's own random generator.

    Raises:
        ValueError: a parameter outside its allowed range.
    """
    units = _check_int("units", units, 1)
    input_size = _check_int("input_size", input_size, 1)
    output_size = units if output_size is None else _check_int("output_size", output_size, 1, units)
    sparsity = _check_sparsity("sparsity", sparsity)
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    pol = np.array([-1, 1, 1], dtype=np.int8)

    def draw(rows: int) -> np.ndarray:
        total = rows * units
        count = int(np.round(total * (1.0 - sparsity)))
        flat = np.zeros(total, dtype=np.int8)
        flat[rng.choice(total, size=count, replace=False)] = rng.choice(pol, size=count)
        return flat.reshape(rows, units)

    adj = draw(units)
    sens = draw(input_size)
    return Wiring(
        adj,
        sens,
        output_size=output_size,
        builder="Random",
        builder_args={
            "units": units,
            "input_size": input_size,
            "output_size": output_size,
            "sparsity": sparsity,
            "seed": seed,
        },
    )


def lane_keeping_ncp(seed: int = 22222) -> Wiring:
    """The NCP paper's lane-keeping controller wiring.

    32 sensory inputs, 12 inter, 6 command, 1 motor neuron; sensory fan-out 6, inter fan-out 4, 6 recurrent
    command synapses, motor fan-in 6 (about 252 synapses).

    Args:
        seed: seed of the builder's random generator.
    """
    return NCP(
        inter=12,
        command=6,
        motor=1,
        sensory_fanout=6,
        inter_fanout=4,
        recurrent_command_synapses=6,
        motor_fanin=6,
        input_size=32,
        seed=seed,
    )
