"""Tests of issue #16's suite (experiments/bench/rl_suite.py, experiments/configs/rl_novel_suite.yaml) and
that the liquid policies' defaults are the documented ones."""

from __future__ import annotations

import csv
import dataclasses
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

from ltc_control.agents.sb3 import (
    DEFAULT_CONTROLLER_LR_SCALE,
    DEFAULT_DISCRETE_DT,
    DEFAULT_MEAN_LIMIT,
    CnnLtcPolicy,
    LtcPolicy,
    default_controller,
    default_controller_lr_scale,
)
from ltc_control.config import load_yaml
from ltc_control.controllers import ControllerConfig

ROOT = Path(__file__).resolve().parents[2]


def _tiny_suite_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """``SuiteConfig`` keyword arguments of a tiny suite (one seed, LTC and LSTM, one evaluation episode)."""
    kwargs: dict[str, Any] = dict(
        name="tiny",
        seeds=(0,),
        models=("ltc", "lstm"),
        eval_episodes=1,
        random_episodes=1,
        curve_points=2,
        out_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
        save_models=False,
    )
    return {**kwargs, **overrides}


def _two_tasks(suite: ModuleType, ppo: Any, zoo_timesteps: int) -> tuple[Any, Any]:
    """A tuning task (PendulumNoVel) and a held-out one (CartPoleNoVel) of a tiny suite."""
    return (
        suite.SuiteTask("PendulumNoVel-v1", zoo_timesteps=zoo_timesteps, ppo=ppo),
        suite.SuiteTask("CartPoleNoVel-v1", zoo_timesteps=zoo_timesteps, ppo=ppo, held_out=True),
    )


def test_novel_suite_config_is_the_documented_one(load_bench: Callable[[str], ModuleType]) -> None:
    """Two tuning tasks and two held-out tasks (named in docs/rl.md as held out), defaults-only policies."""
    suite = load_bench("rl_suite")
    config = load_yaml(suite.SuiteConfig, ROOT / "experiments" / "configs" / "rl_novel_suite.yaml")
    ids = [t.env_id for t in config.tasks]
    assert ids[:2] == ["PendulumNoVel-v1", "HalfCheetahNoVel-v5"]
    held = [t.env_id for t in config.tasks if t.held_out]
    assert len(held) >= 2 and not {"PendulumNoVel-v1", "HalfCheetahNoVel-v5"} & set(held)
    docs = (ROOT / "docs" / "rl.md").read_text()
    for env_id in held:
        assert re.search(rf"held.out[^\n]*{re.escape(env_id)}|{re.escape(env_id)}[^\n]*held.out", docs, re.I)
    assert len(config.seeds) >= 5 and set(config.models) == {"ltc", "cfc", "lstm"}
    for task in config.tasks:
        bench = config.benchmark(task)
        assert bench.policies == "defaults" and not bench.liquid_policy_kwargs
        assert 0 < config.timesteps(task) <= task.zoo_timesteps


def test_budget_variants_of_the_suite_keep_its_settings(load_bench: Callable[[str], ModuleType]) -> None:
    """Every other ``rl_novel_*_suite.yaml`` (a task at another budget) has the suite's task, PPO settings,
    held-out flag and evaluation; only the budget fraction differs, and its records never share a file name
    with the suite's (the budget is in the name)."""
    suite = load_bench("rl_suite")
    configs = ROOT / "experiments" / "configs"
    main = load_yaml(suite.SuiteConfig, configs / "rl_novel_suite.yaml")
    by_id = {t.env_id: t for t in main.tasks}
    variants = sorted(p for p in configs.glob("rl_novel_*_suite.yaml") if p.name != "rl_novel_suite.yaml")
    assert {p.name for p in variants} >= {"rl_novel_ip300k_suite.yaml", "rl_novel_hc1m_suite.yaml"}
    for path in variants:
        config = load_yaml(suite.SuiteConfig, path)
        assert config.name != main.name and config.seeds == main.seeds, path.name
        assert (config.eval_episodes, config.random_episodes) == (main.eval_episodes, main.random_episodes)
        assert set(config.models) <= {"ltc", "cfc", "lstm"} and "lstm" in config.models, path.name
        for task in config.tasks:
            base = by_id[task.env_id]
            assert task.ppo == base.ppo and task.held_out == base.held_out, (path.name, task.env_id)
            assert task.zoo_timesteps == base.zoo_timesteps and task.fraction != base.fraction
            assert config.timesteps(task) != main.timesteps(base)
            assert config.benchmark(task).policies == "defaults" and not config.liquid_policy_kwargs


def test_liquid_policy_defaults_are_the_documented_ones() -> None:
    """The defaults in docs/rl.md's keyword table are the signature's (and CnnLtcPolicy inherits them); the
    default controller is a dense 16-neuron LTC at 5x the rate with continuous actions and 1x with discrete
    ones, a given controller (NCP, CfC) trains at 1x."""
    params = inspect.signature(LtcPolicy.__init__).parameters
    docs = (ROOT / "docs" / "rl.md").read_text()
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `?([^`|]+?)`? \|", docs, re.M)}
    expected = {
        "critic": "separate",
        "critic_outputs": 8,
        "net_arch": None,  # documented as [64]: the value MLP
        "action_squash": "auto",
        "controller_lr_scale": None,  # 5 with the default controller and Box actions, else 1
        "controller": None,  # documented as default_controller(motor_size)
        "motors_per_output": 1,
        "tau_scale": None,
        "action_bias_init": 0.0,
        "mean_limit": "auto",  # DEFAULT_MEAN_LIMIT (5) with action_squash "tanh_sample", else None
    }
    for name, default in expected.items():
        assert params[name].default == default, name
        assert name in table, f"{name} missing from docs/rl.md's keyword table"
    assert table["critic"] == '"separate"' and table["critic_outputs"] == "8" and table["net_arch"] == "[64]"
    assert table["controller_lr_scale"] == "None" and DEFAULT_CONTROLLER_LR_SCALE == 5.0
    assert table["controller"] == "default_controller(motor_size)"
    assert table["motors_per_output"] == "1"
    assert table["tau_scale"] == "None"
    assert table["action_bias_init"] == "0.0"
    assert table["mean_limit"] == '"auto"' and DEFAULT_MEAN_LIMIT == 5.0
    for motor, units in ((1, 16), (6, 16), (8, 16), (9, 17), (20, 28)):
        config = default_controller(motor)
        assert config.kind == "ltc" and config.wiring.preset == "fully_connected", motor
        assert config.wiring.units == units and config.dt == 1.0, motor
        discrete_config = default_controller(motor, discrete=True)
        assert discrete_config == dataclasses.replace(config, dt=DEFAULT_DISCRETE_DT), motor
    controller_row = next(line for line in docs.splitlines() if line.startswith("| `controller` |"))
    assert DEFAULT_DISCRETE_DT == 0.1 and "`dt` 0.1 with discrete actions" in controller_row
    ncp = ControllerConfig()
    assert ncp.kind == "ltc" and ncp.wiring.preset == "lane_keeping"  # the paper-sized NCP
    assert (ncp.wiring.inter, ncp.wiring.command) == (12, 6)
    assert inspect.signature(CnnLtcPolicy.__init__).parameters.keys() >= {"observation_space", "kwargs"}
    # resolved in a built policy: the actor, a separate critic of the same design, the optimizer's groups
    box = spaces.Box(-1.0, 1.0, (3,), np.float32)
    policy = LtcPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), box, lambda _: 1e-3)
    assert policy.controller.cell.num_neurons == 16 and policy.controller_lr_scale == 5.0
    assert policy.action_squash == "tanh_sample" and policy.mean_limit == DEFAULT_MEAN_LIMIT
    # the bound goes with the sampled squash, whatever chose it; nothing to bound for the others
    ncp = {"controller": {"kind": "ltc"}}
    given = LtcPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), box, lambda _: 1e-3, **ncp)
    assert given.action_squash == "tanh" and given.mean_limit is None
    named = LtcPolicy(
        spaces.Box(-np.inf, np.inf, (5,), np.float32), box, lambda _: 1e-3, action_squash="tanh_sample", **ncp
    )
    assert named.mean_limit == DEFAULT_MEAN_LIMIT
    unbounded = LtcPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), box, lambda _: 1e-3, mean_limit=None)
    assert unbounded.action_squash == "tanh_sample" and unbounded.mean_limit is None
    discrete = LtcPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), spaces.Discrete(3), lambda _: 1e-3)
    assert discrete.action_squash == "none" and discrete.mean_limit is None
    assert policy.critic_controller is not None and policy.critic_controller.cell.num_neurons == 16
    assert sorted(g["lr_scale"] for g in policy.optimizer.param_groups) == [1.0, 5.0]
    # Box(-1, 1) with the default controller: the sample is squashed (SAC's squashed Gaussian), with a given
    # controller the mean; other boxes: no squash
    assert policy.action_squash == "tanh_sample" and policy.action_net.squash == "none"
    assert type(policy.action_dist).__name__ == "SquashedDiagGaussianDistribution"
    assert table["action_squash"] == '"auto"'
    squash_row = next(line for line in docs.splitlines() if line.startswith("| `action_squash` |"))
    assert "`tanh_sample` for `Box(-1, 1)` with the default controller" in squash_row
    wide = spaces.Box(-2.0, 2.0, (3,), np.float32)
    obs_space = spaces.Box(-np.inf, np.inf, (5,), np.float32)
    assert LtcPolicy(obs_space, wide, lambda _: 1e-3).action_squash == "none"
    for given in ({"kind": "cfc"}, {"kind": "ltc"}):
        other = LtcPolicy(
            spaces.Box(-np.inf, np.inf, (5,), np.float32), box, lambda _: 1e-3, controller=given
        )
        assert other.controller_lr_scale == 1.0 and len(other.optimizer.param_groups) == 1
        assert other.action_squash == "tanh", given
    explicit = LtcPolicy(
        spaces.Box(-np.inf, np.inf, (5,), np.float32), box, lambda _: 1e-3, controller_lr_scale=2.0
    )
    assert explicit.controller_lr_scale == 2.0
    # discrete actions (the motor neurons are the logits): the default controller trains at 1x
    for discrete in (spaces.Discrete(3), spaces.MultiDiscrete([2, 3]), spaces.MultiBinary(2)):
        policy = LtcPolicy(spaces.Box(-np.inf, np.inf, (5,), np.float32), discrete, lambda _: 1e-3)
        assert policy.controller.cell.num_neurons == 16, discrete
        assert policy.controller_config.dt == 0.1 == policy.critic_controller_config.dt, discrete
        assert policy.lstm_actor.dt == 0.1, discrete  # what the adapter steps the ODE by
        assert policy.controller_lr_scale == 1.0 and len(policy.optimizer.param_groups) == 1, discrete
        assert default_controller_lr_scale(discrete, False) == 1.0
    assert default_controller_lr_scale(box, False) == 5.0 and default_controller_lr_scale(box, True) == 1.0


def test_t_interval(load_bench: Callable[[str], ModuleType]) -> None:
    t_interval = load_bench("rl_suite").t_interval
    mean, half = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and half == pytest.approx(2.776 * np.std([1, 2, 3, 4, 5], ddof=1) / np.sqrt(5))
    assert np.isnan(t_interval([2.0])[1])


def test_suite_smoke_writes_table_csv_and_curves(
    tmp_path: Path, load_bench: Callable[[str], ModuleType]
) -> None:
    """A two-task suite at a budget fraction (PendulumNoVel and discrete CartPoleNoVel, LTC vs LSTM, defaults
    only): records, random baselines, the normalised table (LSTM = 1), CSV and plot; a smoke banner."""
    suite = load_bench("rl_suite")
    bench = load_bench("rl_bench_config")
    ppo = bench.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1, clip_range="lin_0.2")
    tasks = _two_tasks(suite, ppo, 3200)
    config = suite.SuiteConfig(
        **_tiny_suite_kwargs(
            tmp_path, name="tiny_suite", tasks=tasks, budget_fraction=0.01, random_episodes=2
        )
    )
    assert [config.timesteps(t) for t in config.tasks] == [32, 32]
    md = suite.run_suite(config)
    assert md == tmp_path / "results" / "tiny_suite_frac0.01.md"
    text = md.read_text()
    assert "smoke run of the pipeline, not a result" in text and "CartPoleNoVel-v1 (held out)" in text
    with (tmp_path / "results" / "tiny_suite_frac0.01.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["env_id"], r["model"]) for r in rows] == [
        ("PendulumNoVel-v1", "ltc"),
        ("PendulumNoVel-v1", "lstm"),
        ("CartPoleNoVel-v1", "ltc"),
        ("CartPoleNoVel-v1", "lstm"),
    ]
    for r in rows:
        if r["model"] == "lstm" and r["normalized_mean"] != "nan":  # LSTM's mean is the normalisation's 1
            assert float(r["normalized_mean"]) == pytest.approx(1.0)
        assert float(r["steps_per_cpu_second"]) > 0
    assert (tmp_path / "results" / "tiny_suite_frac0.01.png").is_file()
    assert (tmp_path / "runs" / "CartPoleNoVel-v1__random__2.json").is_file()


def test_ablation_refuses_held_out_tasks_and_keeps_its_own_records(
    tmp_path: Path, load_bench: Callable[[str], ModuleType]
) -> None:
    """An ablation (liquid kwargs on top of the defaults) never runs on a held-out task, writes to its own
    records folder and summary, and takes LSTM-PPO's runs from the suite's own folder."""
    suite = load_bench("rl_suite")
    bench = load_bench("rl_bench_config")
    ppo = bench.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1)
    tasks = _two_tasks(suite, ppo, 32)
    common = _tiny_suite_kwargs(tmp_path, tasks=tasks)
    with pytest.raises(ValueError, match="held-out tasks \\['CartPoleNoVel-v1'\\]"):
        suite.SuiteConfig(**common, liquid_policy_kwargs={"action_scale_init": 0.1})
    with pytest.raises(ValueError, match="only_tasks names tasks not in the suite"):
        suite.SuiteConfig(**common, only_tasks=("Nope-v0",))
    config = suite.SuiteConfig(
        **common, only_tasks=("PendulumNoVel-v1",), liquid_policy_kwargs={"action_scale_init": 0.1}
    )
    assert config.file_stem == "tiny_ablation_action_scale_init=0.1"
    assert [t.env_id for t in config.selected_tasks] == ["PendulumNoVel-v1"]
    md = suite.run_suite(config)
    assert md.name == "tiny_ablation_action_scale_init=0.1.md" and "**Ablation**" in md.read_text()
    abl = tmp_path / "runs" / "ablation" / "action_scale_init=0.1"
    assert [p.name for p in abl.glob("*.json")] == ["PendulumNoVel-v1__ltc__0__32.json"]
    assert (tmp_path / "runs" / "PendulumNoVel-v1__lstm__0__32.json").is_file()  # the suite's own LSTM run
    assert not (tmp_path / "runs" / "PendulumNoVel-v1__ltc__0__32.json").exists()
    assert md.parent == abl and not (tmp_path / "results").exists()  # beside its records, not the results
    rows = list(csv.DictReader((abl / f"{config.file_stem}.csv").open()))
    assert [r["model"] for r in rows] == ["ltc", "lstm"]
    assert "Incomplete" not in md.read_text()
    # a run without a record is named in the summary, which then does not pass for the suite's result
    (abl / "PendulumNoVel-v1__ltc__0__32.json").rename(tmp_path / "hidden.json")
    text = suite.summarize_suite(config).read_text()
    assert "**Incomplete: 1 of 2 runs have no record yet (PendulumNoVel-v1 ltc seed 0)" in text
    (tmp_path / "hidden.json").rename(abl / "PendulumNoVel-v1__ltc__0__32.json")
    # the ablation table: variants side by side, the defaults' cell "not run" until the suite ran it
    table = load_bench("rl_ablation_table")
    base = suite.SuiteConfig(**common, only_tasks=("PendulumNoVel-v1",))
    got = table.collect(base, [{}, {"action_scale_init": 0.1}])
    assert [(r["variant"], r["model"], r["seeds"]) for r in got] == [("action_scale_init=0.1", "ltc", "0")]
    assert got[0]["lstm_seeds"] == 1
    md = table.markdown(base, got)
    assert "| action_scale_init=0.1 |" in md and "PendulumNoVel-v1 LTC" in md
    with pytest.raises(ValueError, match="held out"):
        table.collect(suite.SuiteConfig(**common), [{}])
    # references from a committed suite CSV instead of the suite's records (a machine without runs/)
    refs_csv = tmp_path / "refs.csv"
    refs_csv.write_text(
        "env_id,model,random_return,per_seed_eval,eval_return_mean\n"
        "PendulumNoVel-v1,ltc,-1000.0,0:-700.0 1:-600.0,-650\n"
        "PendulumNoVel-v1,lstm,-1000.0,0:-500.0 1:-100.0,-300\n"
    )
    refs = table.references_from_csv(refs_csv, [0])
    assert refs == {"PendulumNoVel-v1": ([-500.0], -1000.0)}
    via_csv = table.collect(base, [{"action_scale_init": 0.1}], refs)[0]
    own = float(via_csv["_records"][0]["eval_mean"])
    assert via_csv["normalized_mean"] == pytest.approx((own + 1000.0) / 500.0)
    assert "from `refs.csv`" in table.markdown(base, [via_csv], "refs.csv")
    with pytest.raises(ValueError, match="no seeds \\[2\\]"):
        table.references_from_csv(refs_csv, [0, 2])
    with pytest.raises(ValueError, match="no LSTM-PPO row for PendulumNoVel-v1"):
        table.collect(base, [{"action_scale_init": 0.1}], {"Other-v0": ([0.0], -1.0)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        table.references_from_csv(tmp_path / "absent.csv", [0])
    (tmp_path / "bad.csv").write_text("env_id,model\nPendulumNoVel-v1,lstm\n")
    with pytest.raises(ValueError, match="lacks the columns \\['random_return', 'per_seed_eval'\\]"):
        table.references_from_csv(tmp_path / "bad.csv", [0])
    (tmp_path / "bad.csv").write_text(refs_csv.read_text().replace("0:-500.0", "0:oops"))
    with pytest.raises(ValueError, match="line 3: cannot read PendulumNoVel-v1's values"):
        table.references_from_csv(tmp_path / "bad.csv", [0])
    # a record made with other kwargs in the same folder is refused, not mixed
    other = suite.SuiteConfig(
        **{**common, "runs_dir": str(abl.parent.parent)},
        only_tasks=("PendulumNoVel-v1",),
        liquid_policy_kwargs={"action_scale_init": 0.1},
    )
    rec_path = abl / "PendulumNoVel-v1__ltc__0__32.json"
    import json

    rec = json.loads(rec_path.read_text())
    rec["config"]["liquid_policy_kwargs"] = {"action_scale_init": 0.3}
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="give this config its own runs_dir"):
        suite.summarize_suite(other)
    # a record made with other LtcPolicy defaults is refused too (a default change never mixes old runs in)
    rec["config"]["liquid_policy_kwargs"] = {"action_scale_init": 0.1}
    rec["liquid_defaults_sha256"] = "0" * 64
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="other LtcPolicy defaults"):
        suite.summarize_suite(other)


def test_normalisation_needs_lstm_ppo_to_beat_random(load_bench: Callable[[str], ModuleType]) -> None:
    """No "x% of LSTM-PPO" when LSTM-PPO itself is not clearly better than a random policy."""
    scale = load_bench("rl_suite").normalisation_scale
    assert scale([-150.0, -160.0, -140.0], -1100.0) == pytest.approx(950.0)
    assert np.isnan(scale([-303.0, -54.0, -450.0], -301.0))  # mean above random, but inside its own interval
    assert np.isnan(scale([-400.0], -301.0)) and np.isnan(scale([], -301.0))
    assert scale([-200.0], -301.0) == pytest.approx(101.0)  # one seed: no interval to compare with


def test_relabel_maps_old_records_to_the_same_policy(load_bench: Callable[[str], ModuleType]) -> None:
    """rl_relabel: a run made under old defaults (the 19-neuron NCP at 1x; the dense LTC at 5x for every
    action space; the dense LTC at dt 1 for every action space) plus its kwargs becomes a run of today's
    defaults plus kwargs that build the very same policy (constructor values, learning-rate scale and weight
    shapes), on continuous and discrete actions."""
    relabel = load_bench("rl_relabel")
    ncp_era = relabel.OLD_DEFAULTS[relabel._DEFAULTS_BEFORE_THE_FIELD]
    lr5_era = relabel.OLD_DEFAULTS[relabel._DEFAULTS_LR5_EVERYWHERE]
    dt1_era = relabel.OLD_DEFAULTS[relabel._DEFAULTS_DT1_EVERYWHERE]
    tanh_era = relabel.OLD_DEFAULTS[relabel._DEFAULTS_TANH_MEAN]
    unbounded_era = relabel.OLD_DEFAULTS[relabel._DEFAULTS_UNBOUNDED_MEAN]
    dt1 = {"kind": "ltc", "wiring": {"preset": "fully_connected", "units": 16}, "dt": 1.0}
    dt01 = {"kind": "ltc", "wiring": {"preset": "fully_connected", "units": 16}, "dt": 0.1}
    dense = {"controller": {"wiring": {"preset": "fully_connected", "units": 16}}, "controller_lr_scale": 5.0}
    obs = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    box = spaces.Box(-1.0, 1.0, (1,), np.float32)
    discrete = spaces.Discrete(3)
    cases = [
        (ncp_era, box, "ltc", {}, {"controller": {"kind": "ltc"}}),
        (ncp_era, box, "ltc", dense, {"action_squash": "tanh"}),
        (
            ncp_era,
            box,
            "ltc",
            {**dense, "action_scale_init": 0.1},
            {"action_scale_init": 0.1, "action_squash": "tanh"},
        ),
        (
            ncp_era,
            box,
            "ltc",
            {"controller_lr_scale": 5.0},
            {"controller": {"kind": "ltc"}, "controller_lr_scale": 5.0},
        ),
        (
            ncp_era,
            box,
            "ltc",
            {"action_scale_init": 0.1},
            {"action_scale_init": 0.1, "controller": {"kind": "ltc"}},
        ),
        (ncp_era, box, "cfc", {}, {}),
        (ncp_era, box, "cfc", {"controller_lr_scale": 5.0}, {"controller_lr_scale": 5.0}),
        (ncp_era, box, "cfc", dense, dense),
        (ncp_era, discrete, "ltc", dense, dense),  # dt 1: no longer the discrete default controller
        (lr5_era, box, "ltc", {}, {"action_squash": "tanh"}),
        (
            lr5_era,
            box,
            "ltc",
            {"action_scale_init": 0.1},
            {"action_scale_init": 0.1, "action_squash": "tanh"},
        ),
        (lr5_era, box, "cfc", {}, {}),
        (lr5_era, discrete, "ltc", {}, {"controller": dt1, "controller_lr_scale": 5.0}),
        (lr5_era, discrete, "ltc", {"controller_lr_scale": 1.0}, {"controller": dt1}),
        (lr5_era, discrete, "ltc", {"controller": {"kind": "ltc"}}, {"controller": {"kind": "ltc"}}),
        (lr5_era, discrete, "cfc", {}, {}),
        (dt1_era, box, "ltc", {}, {"action_squash": "tanh"}),
        (dt1_era, box, "cfc", {}, {}),
        (dt1_era, discrete, "ltc", {}, {"controller": dt1}),
        (
            dt1_era,
            discrete,
            "ltc",
            {"controller_lr_scale": 5.0},
            {"controller": dt1, "controller_lr_scale": 5.0},
        ),
        (dt1_era, discrete, "ltc", {"controller": dt01}, {}),  # the dt-0.1 candidate is today's default
        (dt1_era, discrete, "ltc", {"controller": {"kind": "ltc"}}, {"controller": {"kind": "ltc"}}),
        (dt1_era, discrete, "cfc", {}, {}),
        (tanh_era, box, "ltc", {}, {"action_squash": "tanh"}),
        # the sample-squash candidate of that era: today's squash, then unbounded
        (tanh_era, box, "ltc", {"action_squash": "tanh_sample"}, {"mean_limit": None}),
        (tanh_era, box, "ltc", {"action_squash": "none"}, {"action_squash": "none"}),
        # the default controller written out: dropped, and the rate and squash it then had written instead
        (tanh_era, box, "ltc", {"controller": dt1}, {"controller_lr_scale": 1.0, "action_squash": "tanh"}),
        (tanh_era, box, "cfc", {}, {}),
        (tanh_era, discrete, "ltc", {}, {}),
        (tanh_era, spaces.Box(-2.0, 2.0, (1,), np.float32), "ltc", {}, {}),
        # change 5: the sample squashed with an unbounded mean; the candidate bound is today's default
        (unbounded_era, box, "ltc", {}, {"mean_limit": None}),
        (unbounded_era, box, "ltc", {"mean_limit": 5.0}, {}),
        (unbounded_era, box, "ltc", {"mean_limit": 3.0}, {"mean_limit": 3.0}),
        (unbounded_era, box, "ltc", {"action_squash": "tanh"}, {"action_squash": "tanh"}),
        (
            unbounded_era,
            box,
            "ltc",
            {"controller": {"kind": "ltc"}, "action_squash": "tanh_sample"},
            {"controller": {"kind": "ltc"}, "action_squash": "tanh_sample", "mean_limit": None},
        ),
        (unbounded_era, box, "cfc", {}, {}),  # a given controller squashes the mean: nothing to bound
        (unbounded_era, discrete, "ltc", {}, {}),
        (dt1_era, box, "ltc", {"action_squash": "tanh_sample"}, {"mean_limit": None}),
    ]

    def built(
        model: str, act: spaces.Space, kwargs: dict[str, object]
    ) -> tuple[dict[str, object], dict[str, tuple[int, ...]]]:
        policy = LtcPolicy(obs, act, lambda _: 1e-3, **relabel.defaults_policy_kwargs(model, kwargs))
        params = policy._get_constructor_parameters()  # includes the resolved controller_lr_scale
        params.pop("lr_schedule")
        return params, {k: tuple(v.shape) for k, v in policy.state_dict().items()}

    for era, act, model, old_kwargs, expected in cases:
        old = era(model, old_kwargs, act)
        new = relabel.new_kwargs(model, old_kwargs, old, act)
        assert new == expected, (era.__name__, act, model, old_kwargs)
        # what the old code built: the old defaults written out, then the run's own kwargs
        assert built(model, act, {**old, **old_kwargs}) == built(model, act, new), (model, old_kwargs)
    with pytest.raises(ValueError, match="does not know"):
        relabel.plan_digest_check("0" * 64)


def test_models_saved_under_the_old_defaults_load_with_the_hinted_kwargs(tmp_path: Path) -> None:
    """A model saved with no policy kwargs before the defaults changed holds NCP weights: loading it into
    today's default names the fix, and the fix (custom_objects) loads it with its weights."""
    from sb3_contrib import RecurrentPPO

    old = {"controller": {"kind": "ltc"}, "controller_lr_scale": 1.0}
    model = RecurrentPPO(LtcPolicy, "Pendulum-v1", n_steps=8, batch_size=8, policy_kwargs=old, seed=0)
    model.policy_kwargs = {}  # what such a zip records: no kwargs
    model.save(tmp_path / "old_default")
    with pytest.raises(RuntimeError, match="custom_objects=.*'controller_lr_scale': 1.0"):
        RecurrentPPO.load(tmp_path / "old_default", device="cpu")
    loaded = RecurrentPPO.load(tmp_path / "old_default", device="cpu", custom_objects={"policy_kwargs": old})
    assert loaded.policy.controller.cell.num_neurons == 19
    for (name, a), b in zip(model.policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert torch.equal(a, b), name
    given = LtcPolicy(
        spaces.Box(-np.inf, np.inf, (3,), np.float32),
        spaces.Box(-1.0, 1.0, (1,), np.float32),
        lambda _: 1e-3,
        controller={"kind": "cfc"},
    )
    with pytest.raises(RuntimeError) as info:  # a controller the user chose: no hint about old defaults
        given.load_state_dict(model.policy.state_dict())
    assert "custom_objects" not in str(info.value)


def test_ncp_behaviour_cloning_probe_fits_and_reports(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """experiments/bench/rl_ncp_bc.py on a tiny saved expert: every variant x seed fitted (a lower loss than
    the untrained circuit), a markdown table and a jsonl row each; a missing expert is a clear error."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ltc_control.agents.sb3_envs import make_novel_env

    venv = VecNormalize(DummyVecEnv([lambda: make_novel_env("PendulumNoVel-v1")]), norm_reward=False)
    expert = RecurrentPPO("MlpLstmPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu")
    stem = tmp_path / "PendulumNoVel-v1__lstm__0__16"
    expert.save(str(stem) + ".zip")
    venv.save(str(stem) + ".vecnormalize.pkl")
    bc = load_bench("rl_ncp_bc")
    out = tmp_path / "probe.md"
    args = ["--expert", str(stem), "--env-id", "PendulumNoVel-v1", "--variants", "paper", "sf12"]
    args += ["--seeds", "0", "1", "--iters", "30", "--train-episodes", "3", "--val-episodes", "1"]
    assert bc.main([*args, "--eval-episodes", "1", "--write", str(out)]) == 0
    import json

    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [(r["variant"], r["seed"]) for r in rows] == [("paper", 0), ("paper", 1), ("sf12", 0), ("sf12", 1)]
    paper, sf12 = rows[0], rows[2]
    assert paper["neurons"] == sf12["neurons"] == 19
    # sensory fan-out 12: every inter neuron sees both inputs
    assert sf12["sensory_synapses"] == 24 > paper["sensory_synapses"]
    assert all(np.isfinite(r["val_mse"]) and np.isfinite(r["closed_loop_return"]) for r in rows)
    # fitted on 3 episodes, every circuit predicts the held-out episode's actions better than untrained
    assert all(r["val_mse"] < r["init_val_mse"] for r in rows), rows
    text = out.read_text()
    assert "| paper | 19 | 15 / 59 |" in text and "| sf12 | 19 | 24 / 60 |" in text
    with pytest.raises(SystemExit):
        bc.main(["--expert", str(tmp_path / "missing")])
    assert "missing.zip does not exist" in capsys.readouterr().err


def test_discrete_logit_stats_tell_a_constant_policy_from_a_state_dependent_one(
    load_bench: Callable[[str], ModuleType],
) -> None:
    """rl_discrete_diag.logit_stats: logits that do not move with the state have a constant share of 1 and no
    state spread; logits that follow the state do; bad logits are clear errors."""
    diag = load_bench("rl_discrete_diag")
    constant = diag.logit_stats(np.tile([0.0, 1.0, 0.2], (10, 1)))
    assert constant["constant_share"] == 1.0 and constant["state_std"] < 1e-12
    assert constant["argmax_share"] == [0.0, 1.0, 0.0]
    assert constant["margin"] == pytest.approx(0.8)
    flips = np.array([[2.0, 0.0], [0.0, 2.0]] * 5)  # the argmax follows the state, no constant preference
    moving = diag.logit_stats(flips)
    assert moving["constant_share"] == 0.5 and moving["state_std"] == pytest.approx(np.sqrt(2.0))
    assert moving["preference"] == pytest.approx(0.0)
    for bad in (np.zeros((3,)), np.zeros((0, 2)), np.array([[np.nan, 0.0]])):
        with pytest.raises(ValueError):
            diag.logit_stats(bad)


def test_discrete_diagnosis_reads_saved_liquid_runs(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """experiments/bench/rl_discrete_diag.py on two saved LtcPolicy runs: one whose motor head ignores the
    state (scale 0, a bias that prefers action 1) plays action 1 on every greedy step; the untouched one has
    logits that move with the state. A missing run is a clear error."""
    import json

    from sb3_contrib import RecurrentPPO

    model = RecurrentPPO(LtcPolicy, "CartPole-v1", n_steps=16, batch_size=16, n_epochs=1, seed=0)
    model.save(str(tmp_path / "CartPole-v1__ltc__0__16.zip"))
    with torch.no_grad():
        model.policy.motor_head.scale.zero_()
        model.policy.motor_head.bias.copy_(torch.tensor([0.0, 3.0]))
    model.save(str(tmp_path / "CartPole-v1__ltc__1__16.zip"))
    diag = load_bench("rl_discrete_diag")
    out = tmp_path / "diag.md"
    args = ["--runs", str(tmp_path), "--task", "CartPole-v1", "--models", "ltc", "--seeds", "0", "1"]
    assert diag.main([*args, "--budget", "16", "--episodes", "2", "--write", str(out)]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [(r["seed"], r["mode"]) for r in rows] == [(s, m) for s in (0, 1) for m in ("greedy", "sampled")]
    fixed = rows[2]
    assert fixed["argmax_share"] == [0.0, 1.0] and fixed["constant_share"] == 1.0
    assert fixed["state_std"] < 1e-6 and fixed["head_scale"] == [0.0, 0.0]
    assert rows[0]["state_std"] > 1e-3 and rows[0]["head_scale"] == [1.0, 1.0]
    assert all(r["steps"] >= 2 and np.isfinite(r["return"]) for r in rows)
    assert "| ltc | 1 | greedy |" in out.read_text()
    with pytest.raises(SystemExit):
        diag.main([*args[:-1], "--budget", "99"])
    assert "CartPole-v1__ltc__0__99.zip does not exist" in capsys.readouterr().err


def test_discrete_diagnosis_of_untrained_policies(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--init`` builds untrained policies from ``--policy-kwargs``: sb3's uniform start (a head gain of
    0.01) has logits a hundred times smaller than the same head's at gain 1; episodes stop at ``--max-steps``;
    bad kwargs and a missing ``--runs`` are clear errors."""
    import json

    diag = load_bench("rl_discrete_diag")
    common = ["--init", "--task", "CartPole-v1", "--models", "ltc", "--seeds", "0", "--episodes", "1"]
    rows = {}
    for name, kwargs in (
        ("unit", "{action_readout: state}"),
        ("small", "{action_readout: state, action_scale_init: 0.01}"),
    ):
        out = tmp_path / f"{name}.md"
        argv = [*common, "--max-steps", "15", "--policy-kwargs", kwargs, "--write", str(out)]
        assert diag.main(argv) == 0
        rows[name] = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
        assert "untrained policies" in out.read_text() and "cut at 15 steps" in out.read_text()
    assert all(r["steps"] <= 15 for r in rows["unit"] + rows["small"])
    # the same circuit (same seed) read at gain 1 and 0.01: logits (bias 0) a hundred times smaller
    assert rows["unit"][0]["margin"] == pytest.approx(100 * rows["small"][0]["margin"], rel=1e-3)
    assert rows["small"][0]["margin"] > 0
    for bad, message in (
        (["--policy-kwargs", "[1]"], "must be a mapping"),
        (["--models", "gru"], "unknown model"),
        (["--policy-kwargs", "{action_readout: all}"], "action_readout must be 'motor' or 'state'"),
        (["--policy-kwargs", "{no_such_kwarg: 1}"], "no_such_kwarg"),
    ):
        with pytest.raises(SystemExit):
            diag.main([*common, *bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        diag.main(["--task", "CartPole-v1"])
    assert "--runs and --budget are required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        diag.main(["--task", "CartPole-v1", "--runs", str(tmp_path), "--budget", "16", "--no-normalize"])
    assert "add --init" in capsys.readouterr().err


def test_relabel_moves_a_discrete_5x_record_and_keeps_its_history(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """rl_relabel end to end: an LTC run of a discrete task made when the default was 5x (and dt 1) everywhere
    becomes a run of ``controller_lr_scale: 5.0`` on the dt-1 controller under today's defaults (moved to
    that ablation's folder, weights and record), keeps its earlier re-labelling under ``previous``, and its
    original stays in the archive; a Box(-1, 1)-action run of the same era squashed its Gaussian mean, so it
    becomes a run of ``action_squash: tanh`` (today's default squashes the sample)."""
    import json

    from sb3_contrib import RecurrentPPO

    relabel = load_bench("rl_relabel")
    runs = tmp_path / "runs"
    runs.mkdir()
    for env_id, name in (
        ("CartPole-v1", "CartPole-v1__ltc__0__16"),
        ("Pendulum-v1", "Pendulum-v1__ltc__0__16"),
    ):
        model = RecurrentPPO(LtcPolicy, env_id, n_steps=16, batch_size=16, seed=0, device="cpu")
        model.save(str(runs / f"{name}.zip"))
        record = {
            "env_id": env_id,
            "model": "ltc",
            "seed": 0,
            "policy_parameters": sum(p.numel() for p in model.policy.parameters() if p.requires_grad),
            "liquid_defaults_sha256": relabel._DEFAULTS_LR5_EVERYWHERE,
            "config": {"liquid_policy_kwargs": {}, "ppo": {"use_sde": False}, "runs_dir": str(runs)},
            "relabelled": {"utc": "2026-12-06 09:00:00", "from": "an older archive"},
        }
        (runs / f"{name}.json").write_text(json.dumps(record))
    archive = tmp_path / "archive"
    assert relabel.main(["--runs-dir", str(runs), "--archive", str(archive)]) == 0
    slug = (
        "controller=--dt--1.0,-kind---ltc-,-wiring----preset---fully_connected-,-units--16--"
        "_controller_lr_scale=5.0"
    )
    moved = runs / "ablation" / slug / "CartPole-v1__ltc__0__16.json"
    rec = json.loads(moved.read_text())
    dt1 = {"kind": "ltc", "wiring": {"preset": "fully_connected", "units": 16}, "dt": 1.0}
    assert rec["config"]["liquid_policy_kwargs"] == {"controller_lr_scale": 5.0, "controller": dt1}
    assert rec["liquid_defaults_sha256"] == relabel.liquid_defaults_digest()
    assert rec["relabelled"]["previous"] == {"utc": "2026-12-06 09:00:00", "from": "an older archive"}
    assert moved.with_suffix(".zip").is_file() and not (runs / "CartPole-v1__ltc__0__16.zip").exists()
    assert (archive / "CartPole-v1__ltc__0__16.json").is_file()
    assert not (runs / "Pendulum-v1__ltc__0__16.json").exists()
    tanh_path = runs / "ablation" / "action_squash=-tanh-" / "Pendulum-v1__ltc__0__16.json"
    tanh = json.loads(tanh_path.read_text())
    assert tanh["config"]["liquid_policy_kwargs"] == {"action_squash": "tanh"}
    assert "previous" in tanh["relabelled"]
    # a second run has nothing left to do
    assert relabel.main(["--runs-dir", str(runs), "--archive", str(tmp_path / "archive2")]) == 0
    assert not (tmp_path / "archive2").exists()


def test_relabel_bounds_the_mean_of_sample_squash_records(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """rl_relabel, change 5 (``mean_limit`` "auto"): a record of the unbounded default becomes one of
    ``mean_limit: null`` (weights and rl_stochastic_eval's cache go with it), a diverged record with no
    weights moves too, checked by its parameter count and saying so, and a record of the candidate
    ``mean_limit: 5.0`` becomes a record of today's defaults in the suite's own folder."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    from ltc_control.agents.sb3_envs import make_novel_env

    relabel = load_bench("rl_relabel")
    runs = tmp_path / "runs"
    candidate_dir = runs / "ablation" / "mean_limit=5.0"
    candidate_dir.mkdir(parents=True)
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=1, seed=0)
    model = RecurrentPPO(LtcPolicy, env, n_steps=16, batch_size=16, seed=0, device="cpu")
    count = sum(p.numel() for p in model.policy.parameters() if p.requires_grad)

    def record(seed: int, kwargs: dict[str, Any], folder: Path, **extra: Any) -> Path:
        path = folder / f"PendulumNoVel-v1__ltc__{seed}__16.json"
        rec = {
            "env_id": "PendulumNoVel-v1",
            "model": "ltc",
            "seed": seed,
            "policy_parameters": count,
            "liquid_defaults_sha256": relabel._DEFAULTS_UNBOUNDED_MEAN,
            "config": {"liquid_policy_kwargs": kwargs, "ppo": {"use_sde": False}, "runs_dir": str(folder)},
            **extra,
        }
        path.write_text(json.dumps(rec))
        return path

    default = record(0, {}, runs)
    model.save(str(default.with_suffix(".zip")))
    default.with_suffix(".sampled_eval.json").write_text('{"returns": [1.0]}')
    record(1, {}, runs, diverged={"at_timesteps": 8, "error": "nan"})
    candidate = record(0, {"mean_limit": 5.0}, candidate_dir)
    model.save(str(candidate.with_suffix(".zip")))
    assert relabel.main(["--runs-dir", str(runs), "--archive", str(tmp_path / "archive")]) == 0
    unbounded = runs / "ablation" / "mean_limit=null"
    kept = json.loads((unbounded / default.name).read_text())
    assert kept["config"]["liquid_policy_kwargs"] == {"mean_limit": None}
    assert "load the run's weights strictly" in kept["relabelled"]["check"]
    assert (unbounded / default.with_suffix(".zip").name).is_file()
    assert (unbounded / default.with_suffix(".sampled_eval.json").name).read_text() == '{"returns": [1.0]}'
    diverged = json.loads((unbounded / "PendulumNoVel-v1__ltc__1__16.json").read_text())
    assert diverged["relabelled"]["check"].startswith("no saved weights (the run diverged)")
    today = json.loads(default.read_text())  # the candidate, now in the suite's folder
    assert today["config"]["liquid_policy_kwargs"] == {} and today["seed"] == 0
    assert today["relabelled"]["from_liquid_policy_kwargs"] == {"mean_limit": 5.0}
    assert today["liquid_defaults_sha256"] == relabel.liquid_defaults_digest()
    assert not default.with_suffix(".sampled_eval.json").exists()  # the cache was the other run's
    assert default.with_suffix(".zip").is_file() and not candidate.exists()
    # a record whose parameter count does not fit is refused by name, nothing moved
    bad = record(2, {}, runs)
    rec = json.loads(bad.read_text())
    rec["policy_parameters"] = count + 1
    bad.write_text(json.dumps(rec))
    with pytest.raises(SystemExit, match="not re-labelled"):
        relabel.main(["--runs-dir", str(runs), "--archive", str(tmp_path / "archive2")])
    assert bad.is_file() and not (tmp_path / "archive2").exists()


def test_discrete_models_saved_at_5x_name_their_rate_on_load(tmp_path: Path) -> None:
    """A discrete-action model saved with no policy kwargs while the default was 5x: loading it into today's
    1x default is a clear error that names the saved rate, and the named fix loads it at that rate; a model
    whose optimizer layout matches loads as before."""
    from sb3_contrib import RecurrentPPO

    model = RecurrentPPO(
        LtcPolicy,
        "CartPole-v1",
        n_steps=16,
        batch_size=16,
        seed=0,
        policy_kwargs={"controller_lr_scale": 5.0},
    )
    model.learn(16)
    model.policy_kwargs = {}  # what such a zip records: no kwargs
    model.save(tmp_path / "old_5x")
    with pytest.raises(
        ValueError, match=r"controller_lr_scale 5 .*custom_objects=.*'controller_lr_scale': 5"
    ):
        RecurrentPPO.load(tmp_path / "old_5x", device="cpu")
    fixed = {"policy_kwargs": {"controller_lr_scale": 5.0}}
    loaded = RecurrentPPO.load(tmp_path / "old_5x", device="cpu", custom_objects=fixed)
    assert loaded.policy.controller_lr_scale == 5.0
    assert sorted(g["lr_scale"] for g in loaded.policy.optimizer.param_groups) == [1.0, 5.0]
    today = RecurrentPPO(LtcPolicy, "CartPole-v1", n_steps=16, batch_size=16, seed=0)
    today.save(tmp_path / "today")
    assert RecurrentPPO.load(tmp_path / "today", device="cpu").policy.controller_lr_scale == 1.0


def test_defaults_digest_leaves_out_new_options_only_at_their_neutral_value(
    load_bench: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``action_readout="motor"`` builds the policy every earlier run had, so the digest does not see it; the
    same option at another default would be a defaults change and must move the digest."""
    bench = load_bench("rl_bench")
    defaults = bench.liquid_defaults()
    assert "action_readout" not in defaults and "action_scale_init" in defaults
    digest = bench.liquid_defaults_digest()
    monkeypatch.setitem(bench._NEUTRAL_NEW_OPTIONS, "action_readout", "state")
    assert bench.liquid_defaults()["action_readout"] == "motor"
    assert bench.liquid_defaults_digest() != digest


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads process states from /proc")
def test_benchmark_workers_exit_when_the_benchmark_is_killed(tmp_path: Path) -> None:
    """A worker of a killed benchmark (even ``kill -9``) exits instead of finishing its run orphaned."""
    import os
    import signal
    import subprocess
    import sys
    import time

    bench_dir = ROOT / "experiments" / "bench"
    worker = (
        f"import sys, time; sys.path.insert(0, {str(bench_dir)!r}); from rl_bench import exit_with_parent; "
        "exit_with_parent(int(sys.argv[1]), period=0.1); time.sleep(120)"
    )
    parent = (
        "import os, subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {worker!r}, str(os.getpid())]); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())

    def running(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False
        return "State:\tZ" not in state

    time.sleep(3.0)  # the worker has imported rl_bench and watches
    assert running(child), "the worker must keep running while its parent lives"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the orphaned worker should have exited"


def _tiny_trained_suite(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, name: str, seeds: tuple[int, ...], **ppo: Any
) -> tuple[Any, Path]:
    """A trained PendulumNoVel suite of 32 steps per run (LTC and LSTM), and its config written as YAML."""
    import yaml

    from ltc_control.config import to_dict

    suite = load_bench("rl_suite")
    cfg = load_bench("rl_bench_config")
    task = suite.SuiteTask(
        "PendulumNoVel-v1",
        zoo_timesteps=32,
        ppo=cfg.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1, **ppo),
    )
    config = suite.SuiteConfig(
        **_tiny_suite_kwargs(
            tmp_path,
            name=name,
            tasks=(task,),
            seeds=seeds,
            eval_episodes=2,
            random_episodes=2,
            save_models=True,
        )
    )
    suite.run_suite(config)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    return config, path


def test_sampled_evaluation_of_saved_suite_runs(
    tmp_path: Path, load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    """rl_stochastic_eval.py: the suite's saved runs with sampled actions beside the greedy numbers, cached
    per run; sampled returns are reproducible and differ from the greedy ones; bad inputs are named."""
    bench = load_bench("rl_bench")
    script = load_bench("rl_stochastic_eval")
    config, path = _tiny_trained_suite(
        load_bench, tmp_path, "tiny_sampled", (0, 1), use_sde=True, sde_sample_freq=4
    )
    records = bench._load_records(config.benchmark(config.tasks[0]))
    assert len(records) == 4
    first = script.sampled_returns(records[0], episodes=2)
    cache = Path(records[0]["saved"]["model"]).with_suffix("").with_suffix(".sampled_eval.json")
    assert cache.is_file()
    cache.unlink()
    assert script.sampled_returns(records[0], episodes=2) == first  # reproducible draws
    assert first != records[0]["eval_returns"]  # a drawn action is not the greedy one
    out = tmp_path / "sampled.md"
    assert script.main(["--suite", str(path), "--write", str(out)]) == 0
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["model"] for r in rows] == ["ltc", "lstm"]
    for r in rows:
        greedy = [rec["eval_mean"] for rec in records if rec["model"] == r["model"]]
        assert float(r["greedy_mean"]) == pytest.approx(np.mean(greedy))
        assert np.isfinite(float(r["sampled_mean"])) and r["sampled_per_seed"].startswith("0:")
    assert "greedy vs sampled" in out.read_text()
    # cached: the saved models can go, the table is the same
    for rec in records:
        Path(rec["saved"]["model"]).unlink()
    script.main(["--suite", str(path), "--write", str(tmp_path / "again.md")])
    assert (tmp_path / "again.csv").read_text() == out.with_suffix(".csv").read_text()
    # a run whose model and cache are gone is named
    cache.unlink()
    with pytest.raises(FileNotFoundError, match="PendulumNoVel-v1 .* seed 0: saved model"):
        script.sampled_returns(records[0], episodes=2)
    with pytest.raises(SystemExit):
        script.main(["--suite", str(path), "--tasks", "Nope-v0"])
    assert "not in the suite" in capsys.readouterr().err


def test_greedy_action_stats(load_bench: Callable[[str], ModuleType]) -> None:
    """rl_greedy_actions.action_stats: an action pinned at the bound is constant with bound share 1; one that
    moves is not; bad inputs are named."""
    stats = load_bench("rl_greedy_actions").action_stats
    low, high = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    pinned = stats([np.tile([1.0, -2.0], (5, 1)), np.tile([1.0, -2.0], (3, 1))], low, high)
    assert pinned["constant"] and pinned["bound_share"] == 1.0 and pinned["action_std"] == 0.0
    assert pinned["steps"] == 8 and pinned["episode_length"] == 4.0 and pinned["mean_action"] == [1.0, -2.0]
    assert stats([np.tile([1.0, -2.0], (5, 1)).reshape(5, 1, 2)], low, high) == {
        **pinned,
        "steps": 5,
        "episode_length": 5.0,
    }
    ramp = np.stack([np.linspace(-1, 1, 11), np.zeros(11)], axis=1)
    moving = stats([ramp], low, high)
    assert not moving["constant"] and moving["bound_share"] == pytest.approx(2 / 22)
    assert moving["action_std"] == pytest.approx(
        ramp[:, 0].std() / 2 / 2
    )  # dim 0's std / range, mean of 2 dims
    for bad, message in (
        ([], "no episode"),
        ([np.zeros((0, 2))], "steps >= 1"),
        ([np.zeros((3, 3))], "steps >= 1, 2"),
        ([np.full((3, 2), np.nan)], "NaN"),
    ):
        with pytest.raises(ValueError, match=message):
            stats(bad, low, high)
    with pytest.raises(ValueError, match="finite bounds"):
        stats([np.zeros((3, 2))], low, np.array([1.0, np.inf]))


def test_greedy_actions_of_saved_suite_runs(
    tmp_path: Path, load_bench: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    """experiments/bench/rl_greedy_actions.py on a tiny suite: the replayed greedy returns are the records'
    (same seeds, same code); an LTC run whose head is pinned at the bound shows one constant action at the
    bound on every step; a discrete run and a missing model are named errors."""
    import json

    from sb3_contrib import RecurrentPPO

    suite = load_bench("rl_suite")
    bench = load_bench("rl_bench")
    script = load_bench("rl_greedy_actions")
    config, path = _tiny_trained_suite(load_bench, tmp_path, "tiny_greedy", (0,))
    records = {r["model"]: r for r in bench._load_records(config.benchmark(config.tasks[0]))}
    ltc_zip = records["ltc"]["saved"]["model"]
    pinned = RecurrentPPO.load(ltc_zip, device="cpu")
    with torch.no_grad():
        pinned.policy.motor_head.scale.zero_()
        pinned.policy.motor_head.bias.fill_(10.0)  # tanh(10): the mean at the upper bound whatever it sees
    pinned.save(ltc_zip)
    out = tmp_path / "greedy.md"
    assert script.main(["--suite", str(path), "--tasks", "PendulumNoVel-v1", "--write", str(out)]) == 0
    rows = {r["model"]: r for r in map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())}
    assert rows["lstm"]["return"] == pytest.approx(
        records["lstm"]["eval_mean"], rel=1e-12
    )  # the suite's eval
    assert (
        rows["ltc"]["constant"] and rows["ltc"]["bound_share"] == 1.0 and rows["ltc"]["mean_action"] == [1.0]
    )
    assert rows["ltc"]["episode_length"] == 200  # Pendulum's time limit
    assert "LTC-PPO: 1 of 1 constant" in out.read_text()
    # --kwargs reads an ablation's runs (its own records, liquid models only), not the suite's
    ablation = dataclasses.replace(config, liquid_policy_kwargs={"action_squash": "none"}, models=("ltc",))
    suite.run_suite(ablation)
    (ablated,) = bench._load_records(ablation.benchmark(ablation.tasks[0]))
    out = tmp_path / "ablation.md"
    argv = ["--suite", str(path), "--tasks", "PendulumNoVel-v1", "--kwargs", "{action_squash: none}"]
    assert script.main([*argv, "--write", str(out)]) == 0
    (row,) = map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())
    assert row["model"] == "ltc" and row["return"] == pytest.approx(ablated["eval_mean"], rel=1e-12)
    assert not row["constant"]  # the unpinned ablation run, not the pinned suite run
    for bad in ("[1]", "{}"):
        with pytest.raises(SystemExit):
            script.main([*argv[:-1], bad])
        assert "--kwargs must be a non-empty YAML mapping" in capsys.readouterr().err
    # errors: a discrete run, a missing model, a task the suite does not have
    discrete = RecurrentPPO(LtcPolicy, "CartPole-v1", n_steps=16, batch_size=16, n_epochs=1, seed=0)
    discrete.save(str(tmp_path / "cp.zip"))
    record = {
        "env_id": "CartPoleNoVel-v1",
        "model": "ltc",
        "seed": 0,
        "saved": {"model": str(tmp_path / "cp.zip")},
    }
    with pytest.raises(ValueError, match="rl_discrete_diag"):
        script.greedy_actions(record, episodes=1)
    with pytest.raises(FileNotFoundError, match="CartPoleNoVel-v1 ltc seed 0: saved model"):
        script.greedy_actions({**record, "saved": {"model": str(tmp_path / "gone.zip")}}, episodes=1)
    with pytest.raises(SystemExit):
        script.main(["--suite", str(path), "--tasks", "Nope-v0"])
    assert "not in the suite" in capsys.readouterr().err


def test_discrete_models_saved_at_dt1_name_their_dt_on_load(tmp_path: Path) -> None:
    """A discrete-action model saved with no policy kwargs while the default controller ran at dt 1 (no
    ``controller_dt`` in its optimizer groups, no weight shape to tell): loading it into today's dt-0.1
    default is a clear error naming the saved dt, and the named fix loads it at dt 1; today's models record
    their dt and load as saved; a continuous-action model saved before loads as it was (dt 1 both)."""
    from sb3_contrib import RecurrentPPO

    dt1 = {"kind": "ltc", "wiring": {"preset": "fully_connected", "units": 16}, "dt": 1.0}
    model = RecurrentPPO(
        LtcPolicy, "CartPole-v1", n_steps=16, batch_size=16, seed=0, policy_kwargs={"controller": dt1}
    )
    model.learn(16)
    for group in model.policy.optimizer.param_groups:  # what such a zip records: groups without the field
        group.pop("controller_dt")
    model.policy_kwargs = {}  # and no kwargs
    model.save(tmp_path / "old_dt1")
    with pytest.raises(ValueError, match=r"ran at dt 1, this policy's at 0.1.*custom_objects=.*'dt': 1\}"):
        RecurrentPPO.load(tmp_path / "old_dt1", device="cpu")
    fixed = RecurrentPPO.load(
        tmp_path / "old_dt1", device="cpu", custom_objects={"policy_kwargs": {"controller": dt1}}
    )
    assert fixed.policy.lstm_actor.dt == 1.0
    today = RecurrentPPO(LtcPolicy, "CartPole-v1", n_steps=16, batch_size=16, seed=0)
    assert {g["controller_dt"] for g in today.policy.optimizer.param_groups} == {0.1}
    today.save(tmp_path / "today")
    assert RecurrentPPO.load(tmp_path / "today", device="cpu").policy.lstm_actor.dt == 0.1
    # a model saved at dt 0.1 into a policy at dt 1 (e.g. a saved dt-0.1 model loaded with the dt-1 fix):
    # the policy's controller is the user's, so the hint names the saved dt, not the default circuit
    with pytest.raises(ValueError, match="ran at dt 0.1, this policy's at 1") as info:
        RecurrentPPO.load(
            tmp_path / "today", device="cpu", custom_objects={"policy_kwargs": {"controller": dt1}}
        )
    assert "'controller': {..., 'dt': 0.1}" in str(info.value) and "fully_connected" not in str(info.value)
    # a user's own controller at dt 0.5, loaded with another dt: the same
    ncp = {"kind": "ltc", "dt": 0.5}
    own = RecurrentPPO(
        LtcPolicy, "CartPole-v1", n_steps=16, batch_size=16, seed=0, policy_kwargs={"controller": ncp}
    )
    own.save(tmp_path / "own")
    with pytest.raises(ValueError, match=r"ran at dt 0.5, this policy's at 2.*'dt': 0.5\}"):
        RecurrentPPO.load(
            tmp_path / "own",
            device="cpu",
            custom_objects={"policy_kwargs": {"controller": {**ncp, "dt": 2.0}}},
        )
    assert RecurrentPPO.load(tmp_path / "own", device="cpu").policy.lstm_actor.dt == 0.5
    box = RecurrentPPO(LtcPolicy, "Pendulum-v1", n_steps=16, batch_size=16, seed=0)
    for group in box.policy.optimizer.param_groups:
        group.pop("controller_dt")
    box.save(tmp_path / "old_box")
    assert RecurrentPPO.load(tmp_path / "old_box", device="cpu").policy.lstm_actor.dt == 1.0


def test_rl_first_reach_finds_the_first_rolling_mean_above_the_bar(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """rl_first_reach.py: the step of the episode completing the first window whose mean passes the bar;
    "never" (counted as the budget, "at least") otherwise; named errors for bad records and curves."""
    import json

    script = load_bench("rl_first_reach")
    # episodes 0-9 return -500, 10-19 return -100; episode k ends at step 1000 (k + 1). A 3-episode window
    # with one -500 averages -233, so the first mean above -200 is episodes 10-12's: step 13,000.
    returns = [-500.0] * 10 + [-100.0] * 10
    curve = [[1000.0 * (i + 1), r] for i, r in enumerate(returns)]
    assert script.first_reach(curve, -200.0, 3) == 13000.0
    assert script.first_reach(curve, -200.0, 1) == 11000.0
    assert script.first_reach(curve, -50.0, 3) is None
    assert script.first_reach(curve[:2], -1000.0, 3) is None  # fewer episodes than the window
    assert script.first_reach([], -200.0, 20) is None
    for bad_window in (0, 1.5, True):
        with pytest.raises(ValueError, match="window must be an integer >= 1"):
            script.first_reach(curve, -200.0, bad_window)
    with pytest.raises(ValueError, match="non-finite"):
        script.first_reach([[1.0, float("nan")]], -200.0, 1)
    with pytest.raises(ValueError, match="must not decrease"):
        script.first_reach([[2.0, 0.0], [1.0, 0.0]], -200.0, 1)
    with pytest.raises(ValueError, match=r"\[step, return\] pairs"):
        script.first_reach([[1.0, 2.0, 3.0]], -200.0, 1)
    runs = tmp_path / "runs"
    runs.mkdir()
    base = {"timesteps": 20000, "eval_mean": -80.0, "steps_per_cpu_second": 1000.0}
    (runs / "T__ltc__0__20000.json").write_text(json.dumps({**base, "seed": 0, "curve": curve}))
    never = [[1000.0 * (i + 1), -500.0] for i in range(20)]
    (runs / "T__ltc__1__20000.json").write_text(json.dumps({**base, "seed": 1, "curve": never}))
    (runs / "T__random__10.json").write_text(json.dumps({"model": "random", "eval_mean": -500.0}))
    out = tmp_path / "reach.md"
    assert script.main([str(runs), "--bar", "-200", "--window", "3", "--write", str(out)]) == 0
    text = out.read_text()
    assert "| T__ltc__0__20000 | 0 | -80.0 | 13,000 | 20,000 | 1000 |" in text
    assert "| T__ltc__1__20000 | 1 | -80.0 | never |" in text
    assert "Median first step over 2 runs: at least 16,500" in text
    (runs / "broken.json").write_text("{not json")
    assert script.main([str(runs), "--bar", "-200"]) == 2
    assert script.main([str(tmp_path / "missing.json"), "--bar", "-200"]) == 2
    with pytest.raises(ValueError, match="not a JSON run record"):
        script.table([runs / "broken.json"], -200.0, 3)


def test_nan_probe_names_the_first_non_finite_gradient(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """``rl_nan_probe.py``: a gradient made NaN in one parameter stops training at that optimizer step with a
    dump naming it (and only it), the parameters before the step finite; a clean run passes its checks."""
    import torch
    from sb3_contrib import RecurrentPPO

    from ltc_control.agents.sb3 import LtcPolicy

    probe_mod = load_bench("rl_nan_probe")
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    clean = RecurrentPPO(LtcPolicy, "Pendulum-v1", **kwargs)
    probe = probe_mod.Probe(clean, tmp_path / "clean")
    handles = probe.install()
    try:
        clean.learn(64)
    finally:
        for h in handles:
            h.remove()
    assert probe.steps == 2 and not (tmp_path / "clean" / "first_nonfinite.pt").exists()

    model = RecurrentPPO(LtcPolicy, "Pendulum-v1", **kwargs)
    sigma = model.policy.controller.cell.sigma
    sigma.register_hook(lambda g: g * float("nan"))
    out = tmp_path / "nan"
    out.mkdir()
    probe = probe_mod.Probe(model, out)
    handles = probe.install()
    try:
        with pytest.raises(probe_mod.NonFinite, match="non-finite gradients before clipping"):
            model.learn(64)
    finally:
        for h in handles:
            h.remove()
    dump = torch.load(out / "first_nonfinite.pt", weights_only=False)
    name = next(n for n, p in model.policy.named_parameters() if p is sigma)
    assert dump["detail"] == name and set(dump["bad"]) == {name}
    assert all(torch.isfinite(p).all() for p in dump["params_before_step"].values())
    assert dump["optimizer_steps"] == 0 and {"obs", "old_log_prob", "advantages"} <= set(dump["batch"])
    report = (out / "first_nonfinite.md").read_text()
    assert (
        name in report and "ratios not finite: 0 of 32" in report
    )  # the NaN was the gradient's, not the loss's


def test_a_diverged_run_is_recorded_named_and_kept_out_of_the_means(
    tmp_path: Path, load_bench: Callable[[str], ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A liquid policy whose parameters go NaN stops with ``TrainingDivergedError`` naming them; the
    benchmark writes a record of the diverged run (no evaluation, no model) and goes on, and the suite's table
    counts it (``1 + 1 diverged``), names it, keeps it out of the mean and never gives that model the bar."""
    import torch

    from ltc_control.agents.sb3 import TrainingDivergedError

    suite = load_bench("rl_suite")
    bench_cfg = load_bench("rl_bench_config")
    rl_bench = load_bench("rl_bench")
    ppo = bench_cfg.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1)
    config = suite.SuiteConfig(
        **_tiny_suite_kwargs(
            tmp_path,
            name="nan_suite",
            tasks=(suite.SuiteTask("PendulumNoVel-v1", zoo_timesteps=64, ppo=ppo),),
            seeds=(0, 1),
            save_models=True,
        )
    )
    make_model = rl_bench.make_model

    def poisoned(cfg: Any, model: str, seed: int) -> Any:
        m = make_model(cfg, model, seed)
        if model == "ltc" and seed == 1:  # seed 1's circuit goes NaN after its first update
            sigma = m.policy.controller.cell.sigma
            sigma.register_hook(lambda g: g * float("nan"))
        return m

    monkeypatch.setattr(rl_bench, "make_model", poisoned)
    md = suite.run_suite(config)
    runs = tmp_path / "runs"
    rec = json.loads((runs / "PendulumNoVel-v1__ltc__1__64.json").read_text())
    assert rec["eval_mean"] is None and rec["eval_returns"] == [] and rec["saved"] == {}
    assert 0 < rec["diverged"]["at_timesteps"] <= 64
    assert "lstm_actor.controller.cell.sigma" in rec["diverged"]["error"]
    assert not (runs / "PendulumNoVel-v1__ltc__1__64.zip").exists()
    good = json.loads((runs / "PendulumNoVel-v1__ltc__0__64.json").read_text())
    assert good["diverged"] is None and (runs / "PendulumNoVel-v1__ltc__0__64.zip").is_file()
    text = md.read_text()
    assert "| PendulumNoVel-v1 | LTC-PPO | 1 + 1 diverged |" in text
    assert "Runs that diverged" in text and "ltc seed 1 at" in text and "1:diverged@" in text
    with (tmp_path / "results" / "nan_suite.csv").open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert rows["ltc"]["diverged"] == "1" and rows["ltc"]["reaches_0.9_of_lstm"] == "False"
    assert float(rows["ltc"]["eval_return_mean"]) == pytest.approx(good["eval_mean"])
    assert rows["lstm"]["diverged"] == "0"
    # other tools read finished runs only
    finished = rl_bench._load_records(config.benchmark(config.tasks[0]))
    assert [r["seed"] for r in finished if r["model"] == "ltc"] == [0]

    # the policy's own error, outside any benchmark: a NaN parameter is named on predict
    model = rl_bench.make_model(config.benchmark(config.tasks[0]), "ltc", 0)
    with torch.no_grad():
        model.policy.action_net.bias.fill_(float("nan"))
    obs = model.get_env().reset()
    with pytest.raises(TrainingDivergedError, match=r"non-finite parameters: action_net\.bias"):
        model.predict(obs, deterministic=True)


def test_nan_probe_cli_dumps_a_policy_that_diverges_while_collecting(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's command line on a suite config: a policy whose head goes NaN before the first update
    (``TrainingDivergedError`` while collecting) exits 1 with its report written and the parameter named."""
    import yaml

    from ltc_control.config import to_dict

    suite = load_bench("rl_suite")
    cfg = load_bench("rl_bench_config")
    rl_bench = load_bench("rl_bench")
    probe_mod = load_bench("rl_nan_probe")
    ppo = cfg.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1)
    task = suite.SuiteTask("PendulumNoVel-v1", zoo_timesteps=64, ppo=ppo)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(to_dict(suite.SuiteConfig(**_tiny_suite_kwargs(tmp_path, tasks=(task,))))))
    make_model = rl_bench.make_model

    def poisoned(config: Any, model: str, seed: int) -> Any:
        m = make_model(config, model, seed)
        with torch.no_grad():
            m.policy.action_net.bias.fill_(float("nan"))
        return m

    monkeypatch.setattr(rl_bench, "make_model", poisoned)
    out = tmp_path / "probe"
    argv = ["--suite", str(path), "--task", "PendulumNoVel-v1", "--model", "ltc", "--seed", "0"]
    argv += ["--out", str(out)]
    assert probe_mod.main(argv) == 1
    report = (out / "first_nonfinite.md").read_text()
    assert "the policy raised while collecting" in report and "action_net.bias" in report
    with pytest.raises(SystemExit):  # an unknown task is refused by name
        probe_mod.main([*argv[:2], "--task", "Nope-v0", *argv[4:]])


def test_provenance_says_how_relabelled_records_were_checked(load_bench: Callable[[str], ModuleType]) -> None:
    """The tables' provenance line says which re-labelled records were checked by their weights and which,
    whose weights were not kept, by their parameter counts alone."""
    bench = load_bench("rl_bench")
    weights = {"relabelled": {"utc": "2026-12-07 20:00:00", "check": "... load the run's weights strictly"}}
    counts = {
        "relabelled": {"utc": "2026-12-07 20:01:00", "check": "no saved weights (the run diverged): ..."}
    }
    plain: dict[str, Any] = {}
    assert "loads each run's saved weights strictly;" in bench._provenance([weights, plain])
    mixed = bench._provenance([weights, counts, plain])
    assert "2 of these 3 records" in mixed and "1 of them, whose weights were not kept" in mixed
    assert "20:01:00 UTC" in mixed
    assert "by their parameter counts alone: their weights were not kept" in bench._provenance([counts])


def test_pretanh_mean_replay_reports_where_the_bound_acts(
    load_bench: Callable[[str], ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rl_pretanh_mean: the share of pre-tanh means past the knee and the bound's slope there, from a saved
    run's replayed episode (the head's bias pushed past the knee is seen); a policy that does not squash its
    sample is refused by name."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env

    from ltc_control.agents.sb3_envs import make_novel_env

    probe = load_bench("rl_pretanh_mean")
    row = probe.summary_row(np.array([[0.0], [4.5], [-6.0], [3.0]]), 5.0)
    assert row["past_knee"] == 0.5 and row["max_abs"] == 6.0 and row["per_dim_mean"] == [0.38]
    slopes = [1.0, 1 - np.tanh(0.5) ** 2, 1 - np.tanh(2.0) ** 2, 1.0]
    assert row["mean_slope"] == pytest.approx(float(np.mean(slopes)))
    env = make_vec_env(lambda: make_novel_env("PendulumNoVel-v1"), n_envs=1, seed=0)
    for squash, seed in (("auto", 0), ("tanh", 1)):
        model = RecurrentPPO(LtcPolicy, env, n_steps=16, seed=0, policy_kwargs={"action_squash": squash})
        with torch.no_grad():
            model.policy.action_net.bias.fill_(30.0)  # far past the knee whatever the state
        model.save(tmp_path / f"PendulumNoVel-v1__ltc__{seed}__16.zip")
    args = ["--runs-dir", str(tmp_path), "--env-id", "PendulumNoVel-v1", "--timesteps", "16"]
    assert probe.main([*args, "--seeds", "0"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("| 0 | 200 | ") and line.split(" | ")[3] == "1.00", line
    # the episodes are the suite's evaluation: the same returns as rl_bench.evaluate_model's
    x, limit, returns = probe.pretanh_means(
        tmp_path / "PendulumNoVel-v1__ltc__0__16", "PendulumNoVel-v1", 1, True
    )
    saved = RecurrentPPO.load(tmp_path / "PendulumNoVel-v1__ltc__0__16.zip", device="cpu")
    assert returns == load_bench("rl_bench").evaluate_model(saved, "PendulumNoVel-v1", 1)
    assert x.shape == (200, 1) and limit == 5.0
    assert probe.main([*args, "--seeds", "1"]) == 2
    assert "not a tanh_sample liquid policy" in capsys.readouterr().err


def test_partial_suite_runs_write_their_summary_beside_their_records(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """A training run of part of a suite (tasks, models or seeds narrowed) under the suite file's own name and
    folder writes its end-of-run table beside its records, never over the whole suite's table; the whole
    suite, a partial run with its own name or folder, and an ablation write where they did."""
    suite = load_bench("rl_suite")
    bench = load_bench("rl_bench_config")
    ppo = bench.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1)
    tasks = _two_tasks(suite, ppo, 3200)
    whole = suite.SuiteConfig(**_tiny_suite_kwargs(tmp_path, tasks=tasks))
    aside = suite.summary_aside_for_partial_runs
    assert aside(whole, whole) == whole
    for narrowed in (
        dataclasses.replace(whole, only_tasks=("CartPoleNoVel-v1",)),
        dataclasses.replace(whole, models=("ltc",)),
        dataclasses.replace(whole, seeds=(1,)),
    ):
        moved = aside(narrowed, whole)
        assert moved.out_dir == narrowed.runs_dir == str(tmp_path / "runs")
        assert dataclasses.replace(moved, out_dir=whole.out_dir) == narrowed  # nothing else changed
    named = dataclasses.replace(whole, models=("ltc",), name="tiny_ltc_only")
    assert aside(named, whole) == named
    elsewhere = dataclasses.replace(whole, models=("ltc",), out_dir=str(tmp_path / "mine"))
    assert aside(elsewhere, whole) == elsewhere
    ablation = dataclasses.replace(
        whole, models=("ltc",), only_tasks=("PendulumNoVel-v1",), liquid_policy_kwargs={"mean_limit": 3.0}
    )
    assert aside(ablation, whole) == ablation


def test_image_task_runs_each_models_cnn_variant(
    load_bench: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """On an image task (PendulumPixels-v1) the suite trains CnnLtcPolicy (LTC and CfC kinds) against
    RecurrentPPO's CnnLstmPolicy, with no policy kwargs; the table says so; VecNormalize on pixels is
    refused."""
    from stable_baselines3.common.torch_layers import NatureCNN

    from ltc_control.agents.sb3_modules import ConvHeadExtractor

    suite = load_bench("rl_suite")
    rl_bench = load_bench("rl_bench")
    bench = load_bench("rl_bench_config")
    ppo = bench.PPOConfig(n_envs=2, n_steps=16, batch_size=16, n_epochs=1, normalize_rewards=True)
    task = suite.SuiteTask("PendulumPixels-v1", zoo_timesteps=3200, ppo=ppo, held_out=True)
    config = suite.SuiteConfig(
        **_tiny_suite_kwargs(
            tmp_path, tasks=(task,), models=("ltc", "cfc", "lstm"), budget_fraction=0.01, save_models=True
        )
    )
    one = config.benchmark(task)
    ltc, cfc, lstm = (rl_bench.make_model(one, m, 0) for m in ("ltc", "cfc", "lstm"))
    assert type(ltc.policy) is CnnLtcPolicy and type(cfc.policy) is CnnLtcPolicy
    assert isinstance(ltc.policy.features_extractor, ConvHeadExtractor)
    assert ltc.policy.controller_config.kind == "ltc" and cfc.policy.controller_config.kind == "cfc"
    assert type(lstm.policy).__name__ == "RecurrentActorCriticCnnPolicy"
    assert isinstance(lstm.policy.features_extractor, NatureCNN)
    assert ltc.observation_space.shape == (1, 40, 40)  # sb3 transposed the frames channel-first
    md = suite.run_suite(config)
    text = md.read_text()
    assert "PendulumPixels-v1 (held out)" in text and "`CnnLstmPolicy`" in text and "`CnnLtcPolicy()`" in text
    with (tmp_path / "results" / "tiny_frac0.01.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["ltc", "cfc", "lstm"]
    # one 200-step Pendulum episode per run: each step's reward is in [-16.27, 0]
    assert all(-16.28 * 200 <= float(r["eval_return_mean"]) <= 0 for r in rows)
    bad = dataclasses.replace(one, ppo=dataclasses.replace(ppo, normalize_observations=True))
    with pytest.raises(ValueError, match="normalize_observations must be false for image observations"):
        rl_bench.make_model(bad, "ltc", 0)
    # the perception probe of the saved runs: init rebuilt from the seed (small moves after 32 steps, not the
    # ~1.4 of an unrelated init), features that decode the angle, every group accounted for
    probe = load_bench("rl_pixels_probe")
    for rec in rl_bench._load_records(one):
        row = probe.probe_run(one, rec, 16)
        assert row["extractor"] == ("NatureCNN" if rec["model"] == "lstm" else "ConvHeadExtractor")
        assert 0 < row["moved"]["features_extractor"] < 0.5
        assert -1.0 < row["r2_init"] <= 1.0 and -1.0 < row["r2_trained"] <= 1.0
        assert row["feature_std_trained"] > 0


def test_pixels_probe_r2_tells_decodable_features_from_noise(load_bench: Callable[[str], ModuleType]) -> None:
    probe = load_bench("rl_pixels_probe")
    theta = np.linspace(-np.pi, np.pi, 64, endpoint=False)
    rng = np.random.default_rng(0)
    mixed = np.stack([np.cos(theta), np.sin(theta)], 1) @ rng.normal(size=(2, 5)) + 3.0
    assert probe.probe_r2(mixed, theta) == pytest.approx(1.0)
    assert probe.probe_r2(rng.normal(size=(64, 5)), theta) < 0.3
    assert probe.feature_stats(np.c_[np.cos(theta), np.zeros(64)]) == (
        pytest.approx(np.std(np.cos(theta)) / 2),
        0.5,
    )
    with pytest.raises(ValueError, match="N = len"):
        probe.probe_r2(mixed[:10], theta)
    with pytest.raises(ValueError, match="NaN"):
        probe.probe_r2(np.full((64, 2), np.nan), theta)
    with pytest.raises(ValueError, match="not an image task"):
        probe.frames_for("PendulumNoVel-v1", 16)
