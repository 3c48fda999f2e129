"""Tests of issue #16's suite (experiments/bench/rl_suite.py, experiments/configs/rl_novel_suite.yaml) and
that the liquid policies' defaults are the documented ones."""

from __future__ import annotations

import csv
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ltc_control.agents.sb3 import CnnLtcPolicy, LtcPolicy
from ltc_control.config import load_yaml
from ltc_control.controllers import ControllerConfig

ROOT = Path(__file__).resolve().parents[2]


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


def test_liquid_policy_defaults_are_the_documented_ones() -> None:
    """The defaults in docs/rl.md's keyword table are the signature's (and CnnLtcPolicy inherits them)."""
    params = inspect.signature(LtcPolicy.__init__).parameters
    docs = (ROOT / "docs" / "rl.md").read_text()
    table = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `?([^`|]+?)`? \|", docs, re.M)}
    expected = {
        "critic": "separate",
        "critic_outputs": 8,
        "net_arch": None,  # documented as [64]: the value MLP
        "action_squash": "auto",
        "controller_lr_scale": 1.0,
        "controller": None,  # documented as ControllerConfig(kind="ltc")
    }
    for name, default in expected.items():
        assert params[name].default == default, name
        assert name in table, f"{name} missing from docs/rl.md's keyword table"
    assert table["critic"] == '"separate"' and table["critic_outputs"] == "8" and table["net_arch"] == "[64]"
    assert table["controller_lr_scale"] == "1.0" and table["controller"] == 'ControllerConfig(kind="ltc")'
    config = ControllerConfig()
    assert config.kind == "ltc" and config.wiring.preset == "lane_keeping"  # the paper-sized NCP
    assert (config.wiring.inter, config.wiring.command) == (12, 6)
    assert inspect.signature(CnnLtcPolicy.__init__).parameters.keys() >= {"observation_space", "kwargs"}


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
    config = suite.SuiteConfig(
        name="tiny_suite",
        tasks=(
            suite.SuiteTask("PendulumNoVel-v1", zoo_timesteps=3200, ppo=ppo),
            suite.SuiteTask("CartPoleNoVel-v1", zoo_timesteps=3200, ppo=ppo, held_out=True),
        ),
        seeds=(0,),
        models=("ltc", "lstm"),
        budget_fraction=0.01,
        eval_episodes=1,
        random_episodes=2,
        curve_points=2,
        out_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
        save_models=False,
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
    tasks = (
        suite.SuiteTask("PendulumNoVel-v1", zoo_timesteps=32, ppo=ppo),
        suite.SuiteTask("CartPoleNoVel-v1", zoo_timesteps=32, ppo=ppo, held_out=True),
    )
    common = dict(
        name="tiny",
        tasks=tasks,
        seeds=(0,),
        models=("ltc", "lstm"),
        eval_episodes=1,
        random_episodes=1,
        curve_points=2,
        out_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
        save_models=False,
    )
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
    rows = list(csv.DictReader((tmp_path / "results" / f"{config.file_stem}.csv").open()))
    assert [r["model"] for r in rows] == ["ltc", "lstm"]
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
