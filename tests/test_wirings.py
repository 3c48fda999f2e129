"""Wirings: validation, immutability, exact JSON round trip, seeded builders, the lane-keeping preset."""

from __future__ import annotations

import json
import pickle

import ncps.wirings as ncps_wirings
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltc_control.wirings import NCP, AutoNCP, FullyConnected, Random, Wiring, lane_keeping_ncp


def _all_builders(seed: int) -> list[Wiring]:
    return [
        NCP(5, 4, 2, 3, 2, 3, 2, input_size=6, seed=seed),
        AutoNCP(16, 3, input_size=5, sparsity=0.4, seed=seed),
        FullyConnected(6, input_size=4, output_size=2, seed=seed),
        FullyConnected(5, input_size=3, self_connections=False, seed=seed),
        Random(9, input_size=4, output_size=3, sparsity=0.6, seed=seed),
        lane_keeping_ncp(seed=seed),
    ]


# ------------------------------------------------------------------ data model
def test_from_matrices_basic_properties() -> None:
    adj = np.array([[0, 1, 0], [-1, 0, 1], [0, 0, 1]])
    sens = np.array([[1, 0, -1], [0, 1, 0]])
    w = Wiring.from_matrices(adj, sens, output_size=1)
    assert (w.units, w.input_size, w.output_size) == (3, 2, 1)
    assert w.adjacency.dtype == np.int8 and w.sensory_adjacency.dtype == np.int8
    assert w.num_recurrent_synapses == 4 and w.num_sensory_synapses == 3 and w.num_synapses == 7
    assert w.roles == ("motor", "hidden", "hidden")
    assert w.names == ("motor_0", "hidden_0", "hidden_1")
    np.testing.assert_array_equal(w.layer_indices("hidden"), [1, 2])
    np.testing.assert_array_equal(w.adjacency, adj)


def test_wiring_is_immutable_and_copies_input() -> None:
    adj = np.ones((3, 3), dtype=np.int64)
    w = Wiring.from_matrices(adj, np.ones((2, 3)))
    adj[0, 0] = 0  # the caller's array is not shared
    assert w.adjacency[0, 0] == 1
    with pytest.raises(ValueError, match="read-only"):
        w.adjacency[0, 0] = -1
    with pytest.raises(ValueError, match="read-only"):
        w.sensory_adjacency[0, 0] = 0
    with pytest.raises(AttributeError, match="immutable"):
        w.roles = ("motor",) * 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("adj", "sens", "kwargs", "pattern"),
    [
        (np.array([[0, 2], [1, 0]]), np.ones((1, 2)), {}, r"adjacency values must be in \{-1, 0, 1\}.*got 2"),
        (np.zeros((2, 2)), np.array([[0.5, 1]]), {}, r"sensory_adjacency values must be in \{-1, 0, 1\}"),
        (np.zeros((2, 2)), np.array([[np.nan, 1]]), {}, r"sensory_adjacency values must be in"),
        (np.zeros((2, 3)), np.ones((1, 3)), {}, r"adjacency must be square \(N, N\), got shape \(2, 3\)"),
        (
            np.zeros((3, 3)),
            np.ones((2, 4)),
            {},
            r"sensory_adjacency must have shape \(S, N\) with N = 3.*\(2, 4\)",
        ),
        (np.zeros(3), np.ones((2, 3)), {}, r"adjacency must be a 2-D array \(N, N\), got .*shape \(3,\)"),
        (np.zeros((0, 0)), np.ones((1, 0)), {}, r"at least 1 neuron"),
        (np.zeros((2, 2)), np.ones((0, 2)), {}, r"at least 1 input"),
        (
            np.zeros((2, 2)),
            np.ones((1, 2)),
            {"output_size": 3},
            r"output_size must be in \[1, N = 2\], got 3",
        ),
        (
            np.zeros((2, 2)),
            np.ones((1, 2)),
            {"output_size": 0},
            r"output_size must be in \[1, N = 2\], got 0",
        ),
        (np.zeros((2, 2)), np.ones((1, 2)), {"roles": ["motor"]}, r"roles must have length N = 2, got 1"),
        (
            np.zeros((2, 2)),
            np.ones((1, 2)),
            {"roles": ["motor", "glia"]},
            r"unknown neuron role\(s\) \['glia'\]",
        ),
        (
            np.zeros((2, 2)),
            np.ones((1, 2)),
            {"roles": ["inter", "motor"]},
            r"motor neurons must be exactly the first",
        ),
        (
            np.zeros((2, 2)),
            np.ones((1, 2)),
            {"names": ["a", "a"]},
            r"neuron names must be unique, duplicates: \['a'\]",
        ),
        (np.zeros((2, 2)), np.ones((1, 2)), {"names": ["a"]}, r"names must have length N = 2, got 1"),
        (np.array([["a", "b"], ["c", "d"]]), np.ones((1, 2)), {}, r"adjacency must be numeric"),
    ],
)
def test_from_matrices_rejects_bad_input(
    adj: np.ndarray, sens: np.ndarray, kwargs: dict, pattern: str
) -> None:
    with pytest.raises(ValueError, match=pattern):
        Wiring.from_matrices(adj, sens, **kwargs)


def test_roles_define_output_size_and_layer_indices() -> None:
    roles = ["motor", "motor", "command", "inter", "inter"]
    w = Wiring.from_matrices(np.zeros((5, 5)), np.ones((2, 5)), roles=roles)
    assert w.output_size == 2
    np.testing.assert_array_equal(w.layer_indices("inter"), [3, 4])
    assert w.layer_indices("command").tolist() == [2]
    assert w.layer_sizes() == {"motor": 2, "command": 1, "inter": 2}
    with pytest.raises(ValueError, match="unknown role 'sensory'"):
        w.layer_indices("sensory")


# ------------------------------------------------------------------ serialisation
@pytest.mark.parametrize("seed", [0, 5])
def test_json_round_trip_is_exact(seed: int) -> None:
    for w in _all_builders(seed):
        text = json.dumps(w.to_dict())
        back = Wiring.from_dict(json.loads(text))
        assert back == w
        assert back.to_dict() == w.to_dict()
        np.testing.assert_array_equal(back.adjacency, w.adjacency)
        np.testing.assert_array_equal(back.sensory_adjacency, w.sensory_adjacency)
        assert (back.roles, back.names, back.output_size, back.builder) == (
            w.roles,
            w.names,
            w.output_size,
            w.builder,
        )
        assert dict(back.builder_args) == dict(w.builder_args)
        assert hash(back) == hash(w)
        assert pickle.loads(pickle.dumps(w)) == w


def test_from_dict_rejects_bad_documents() -> None:
    d = lane_keeping_ncp(seed=0).to_dict()
    with pytest.raises(ValueError, match=r"unknown wiring key\(s\) \['colour'\]; valid keys are"):
        Wiring.from_dict({**d, "colour": "red"})
    missing = {k: v for k, v in d.items() if k != "adjacency"}
    with pytest.raises(ValueError, match=r"missing key\(s\) \['adjacency'\]"):
        Wiring.from_dict(missing)
    with pytest.raises(ValueError, match="unsupported wiring format 'v0'"):
        Wiring.from_dict({**d, "format": "v0"})
    with pytest.raises(ValueError, match="expects a mapping"):
        Wiring.from_dict([1, 2])  # type: ignore[arg-type]
    corrupt = json.loads(json.dumps(d))
    corrupt["adjacency"][0][0] = 3
    with pytest.raises(ValueError, match=r"adjacency values must be in \{-1, 0, 1\}"):
        Wiring.from_dict(corrupt)
    ragged = {**d, "sensory_adjacency": [[1, 0], [1]]}
    with pytest.raises(ValueError, match="sensory_adjacency"):
        Wiring.from_dict(ragged)


# ------------------------------------------------------------------ builders
def test_builders_are_seeded() -> None:
    for a, b, c in zip(_all_builders(3), _all_builders(3), _all_builders(4)):
        assert a == b
        if a.builder == "FullyConnected":
            # Only polarities are random here.
            assert not np.array_equal(a.adjacency, c.adjacency) or not np.array_equal(
                a.sensory_adjacency, c.sensory_adjacency
            )
        else:
            assert not np.array_equal(a.adjacency, c.adjacency)
        assert a.to_dict()["builder_args"]["seed"] == 3


def test_builders_do_not_touch_global_numpy_state() -> None:
    np.random.seed(11)  # noqa: NPY002 - the legacy global state is what must stay untouched
    expected = np.random.rand()  # noqa: NPY002
    np.random.seed(11)  # noqa: NPY002
    lane_keeping_ncp(seed=1)
    Random(5, 3)
    assert np.random.rand() == expected  # noqa: NPY002


def test_lane_keeping_preset_matches_paper_and_ncps() -> None:
    counts = []
    for seed in range(6):
        w = lane_keeping_ncp(seed=seed)
        assert (w.input_size, w.units, w.output_size) == (32, 19, 1)
        assert w.layer_sizes() == {"motor": 1, "command": 6, "inter": 12}
        motor, command, inter = (w.layer_indices(r) for r in ("motor", "command", "inter"))
        assert motor.tolist() == [0] and command.tolist() == list(range(1, 7))
        adj, sens = w.adjacency, w.sensory_adjacency
        # Layer structure: sensory -> inter -> command (recurrent) -> motor; nothing else.
        assert np.count_nonzero(sens[:, np.r_[motor, command]]) == 0
        assert np.count_nonzero(sens[:, inter]) == 32 * 6  # fan-out 6 from every input
        assert (np.count_nonzero(sens, axis=1) == 6).all()
        assert (
            np.count_nonzero(adj[np.ix_(inter, inter)]) == 0
            and np.count_nonzero(adj[np.ix_(inter, motor)]) == 0
        )
        assert (np.count_nonzero(adj[np.ix_(inter, command)], axis=1) >= 4).all()
        assert np.count_nonzero(adj[motor, :]) == 0
        assert np.count_nonzero(adj[np.ix_(command, motor)]) == 6  # motor fan-in 6
        assert 1 <= np.count_nonzero(adj[np.ix_(command, command)]) <= 6
        assert set(np.unique(adj[adj != 0])) <= {-1, 1}
        counts.append(w.num_synapses)
        # ncps' NCP built the same way: totals agree up to the random duplicate/fill-in synapses.
        ref = ncps_wirings.NCP(12, 6, 1, 6, 4, 6, 6, seed=seed)
        ref.build(32)
        ref_count = int(np.abs(ref.adjacency_matrix).sum() + np.abs(ref.sensory_adjacency_matrix).sum())
        assert abs(w.num_synapses - ref_count) <= 6
    assert all(246 <= c <= 258 for c in counts), counts
    assert abs(np.mean(counts) - 252) <= 3


def test_ncp_polarity_is_balanced() -> None:
    signs = np.concatenate([lane_keeping_ncp(seed=s).sensory_adjacency.ravel() for s in range(10)])
    signs = signs[signs != 0]
    assert abs(float(np.mean(signs > 0)) - 0.5) < 0.05  # uniform on {-1, +1}, as in ncps' NCP


def test_ncp_reaches_every_neuron_with_sparse_fanout() -> None:
    # With fan-out 1 from 2 inputs most inter neurons would be unreached; ncps' rule gives each one an input.
    w = NCP(inter=8, command=6, motor=2, sensory_fanout=1, inter_fanout=1, recurrent_command_synapses=0,
            motor_fanin=1, input_size=2, seed=0)  # fmt: skip
    inter, command = w.layer_indices("inter"), w.layer_indices("command")
    assert (np.count_nonzero(w.sensory_adjacency[:, inter], axis=0) >= 1).all()
    assert (np.count_nonzero(w.adjacency[np.ix_(inter, command)], axis=0) >= 1).all()
    assert (np.count_nonzero(w.adjacency[np.ix_(command, w.layer_indices("motor"))], axis=1) >= 1).all()


@pytest.mark.parametrize(("units", "outputs", "sparsity"), [(16, 3, 0.5), (30, 4, 0.2), (10, 1, 0.75)])
def test_autoncp_layer_sizes_match_ncps(units: int, outputs: int, sparsity: float) -> None:
    ours = AutoNCP(units, outputs, input_size=7, sparsity=sparsity, seed=2)
    ref = ncps_wirings.AutoNCP(units, outputs, sparsity_level=sparsity, seed=2)
    ref.build(7)
    assert ours.layer_sizes() == {
        "motor": len(ref.get_neurons_of_layer(2)),
        "command": len(ref.get_neurons_of_layer(1)),
        "inter": len(ref.get_neurons_of_layer(0)),
    }
    # Every input has the same fan-out; only the random fill-in of unreached inter neurons may differ.
    n_inter = len(ref.get_neurons_of_layer(0))
    fanout = max(int(n_inter * (1 - sparsity)), 1)
    assert (np.count_nonzero(ours.sensory_adjacency, axis=1) >= fanout).all()
    ref_sens = int(np.abs(ref.sensory_adjacency_matrix).sum())
    assert abs(ours.num_sensory_synapses - ref_sens) <= n_inter
    # Both builders must land in the range the construction rules allow: fixed fan-outs, plus at most
    # `recurrent` command synapses and a fill-in of `mean fan-in` per unreached command neuron.
    n_cmd = len(ref.get_neurons_of_layer(1))
    density = 1 - sparsity
    inter_fanout = motor_fanin = max(int(n_cmd * density), 1)
    recurrent = max(int(n_cmd * density * 2), 1)
    low = n_inter * inter_fanout + outputs * motor_fanin + 1
    high = low - 1 + recurrent + n_cmd * max(int(n_inter * inter_fanout / n_cmd), 1) + n_cmd
    ref_rec = int(np.abs(ref.adjacency_matrix).sum())
    assert low <= ours.num_recurrent_synapses <= high
    assert low <= ref_rec <= high


def test_fully_connected_and_random_counts() -> None:
    fc = FullyConnected(7, input_size=3, output_size=2, seed=1)
    assert fc.num_recurrent_synapses == 49 and fc.num_sensory_synapses == 21 and fc.output_size == 2
    assert fc.roles[:2] == ("motor", "motor") and set(fc.roles[2:]) == {"hidden"}
    assert 0.5 < float(np.mean(fc.adjacency > 0)) < 0.85  # polarity drawn from {-1, +1, +1}
    nsc = FullyConnected(7, input_size=3, self_connections=False)
    assert np.count_nonzero(np.diag(nsc.adjacency)) == 0 and nsc.num_recurrent_synapses == 42
    r = Random(10, input_size=6, output_size=3, sparsity=0.7, seed=9)
    assert r.num_recurrent_synapses == round(100 * 0.3) and r.num_sensory_synapses == round(60 * 0.3)
    assert Random(4, 2, sparsity=0.0).num_synapses == 16 + 8


@pytest.mark.parametrize(
    ("builder", "kwargs", "pattern"),
    [
        (
            NCP,
            {"sensory_fanout": 7},
            r"sensory_fanout must be in \[1, 6\] \(at most the number of inter neurons\), got 7",
        ),
        (
            NCP,
            {"inter_fanout": 5},
            r"inter_fanout must be in \[1, 4\] \(at most the number of command neurons\), got 5",
        ),
        (
            NCP,
            {"motor_fanin": 5},
            r"motor_fanin must be in \[1, 4\] \(at most the number of command neurons\), got 5",
        ),
        (NCP, {"inter": 0}, r"inter must be >= 1, got 0"),
        (NCP, {"command": 0}, r"command must be >= 1, got 0"),
        (NCP, {"motor": 0}, r"motor must be >= 1, got 0"),
        (NCP, {"input_size": 0}, r"input_size must be >= 1, got 0"),
        (NCP, {"recurrent_command_synapses": -1}, r"recurrent_command_synapses must be >= 0, got -1"),
        (NCP, {"inter": 2.5}, r"inter must be an integer >= 1, got 2.5"),
        (NCP, {"seed": -3}, r"seed must be a non-negative integer, got -3"),
        (AutoNCP, {"outputs": 10}, r"outputs must be in \[1, 8\] \(units - 2.*\), got 10"),
        (AutoNCP, {"outputs": 9}, r"outputs must be in \[1, 8\] \(units - 2.*\), got 9"),
        (AutoNCP, {"units": 0}, r"units must be >= 3, got 0"),
        (AutoNCP, {"sparsity": 1.0}, r"sparsity must be in \[0, 1\), got 1.0"),
        (AutoNCP, {"sparsity": -0.1}, r"sparsity must be in \[0, 1\), got -0.1"),
        (FullyConnected, {"output_size": 11}, r"output_size must be in \[1, 10\], got 11"),
        (FullyConnected, {"units": 0}, r"units must be >= 1, got 0"),
        (Random, {"sparsity": 1.5}, r"sparsity must be in \[0, 1\), got 1.5"),
        (Random, {"input_size": 0}, r"input_size must be >= 1, got 0"),
    ],
)
def test_builders_reject_impossible_parameters(builder: object, kwargs: dict, pattern: str) -> None:
    defaults: dict[object, dict] = {
        NCP: {
            "inter": 6,
            "command": 4,
            "motor": 2,
            "sensory_fanout": 3,
            "inter_fanout": 2,
            "recurrent_command_synapses": 2,
            "motor_fanin": 2,
            "input_size": 3,
        },
        AutoNCP: {"units": 10, "outputs": 2, "input_size": 3},
        FullyConnected: {"units": 10, "input_size": 3},
        Random: {"units": 10, "input_size": 3},
    }
    with pytest.raises(ValueError, match=pattern):
        builder(**{**defaults[builder], **kwargs})  # type: ignore[operator]


def test_summary_reports_layers_and_synapses() -> None:
    w = lane_keeping_ncp(seed=0)
    text = w.summary()
    assert "32 sensory inputs" in text and "19 neurons" in text
    assert "motor 1, command 6, inter 12" in text
    assert (
        f"synapses: {w.num_synapses} total = {w.num_sensory_synapses} sensory + {w.num_recurrent_synapses}"
        in text
    )
    assert "sensory -> inter: 192" in text
    assert "command -> " in text and "motor: 6" in text


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 12), s=st.integers(1, 6), m_frac=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_round_trip_of_arbitrary_user_matrices(n: int, s: int, m_frac: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    adj = rng.integers(-1, 2, size=(n, n))
    sens = rng.integers(-1, 2, size=(s, n))
    m = max(1, round(m_frac * n))
    w = Wiring.from_matrices(adj, sens, output_size=m)
    back = Wiring.from_dict(json.loads(json.dumps(w.to_dict())))
    assert back == w and back.num_synapses == int(np.count_nonzero(adj) + np.count_nonzero(sens))
    assert back.output_size == m and back.layer_indices("motor").tolist() == list(range(m))


def test_provenance_must_be_json_serialisable() -> None:
    with pytest.raises(ValueError, match="builder_args must be JSON-serialisable"):
        Wiring(np.zeros((2, 2)), np.ones((1, 2)), builder_args={"rng": object()})
    with pytest.raises(ValueError, match="builder_args must be a mapping"):
        Wiring.from_dict({**lane_keeping_ncp(seed=0).to_dict(), "builder_args": [1]})
