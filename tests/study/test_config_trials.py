"""Study config loading and trial identity: same config -> same id, any change -> a new id."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ltc_control import cli
from ltc_control.agents.study.cli import build_parser
from ltc_control.agents.study.config import StudyConfig
from ltc_control.agents.study.trials import eval_trial, train_trial
from ltc_control.config import ConfigError, apply_overrides, load_yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("preset", ["ncp_study_small.yaml", "ncp_study.yaml"])
def test_presets_load(preset: str) -> None:
    cfg = load_yaml(StudyConfig, REPO / "experiments" / "configs" / preset)
    names = {m.name for m in cfg.models}
    assert {"ncp_ltc", "ncp_cfc", "cfc_dense", "lstm64", "ctrnn64", "cnn", "ltc_random", "ltc_fc"} <= names
    assert cfg.seeds >= (3 if "small" in preset else 5)
    assert max(cfg.evaluation.noise_levels) > 0.3  # past the paper's levels: breaking points show


def test_trial_ids_identity(tiny_preset: Path) -> None:
    cfg = load_yaml(StudyConfig, tiny_preset)
    again = load_yaml(StudyConfig, tiny_preset)
    t1, t2 = train_trial(cfg, "ncp_ltc", 0, 1e-3), train_trial(again, "ncp_ltc", 0, 1e-3)
    assert t1.id == t2.id and t1.folder == t2.folder
    assert eval_trial(cfg, t1).id == eval_trial(again, t2).id
    # every ingredient of a trial's result changes its id
    assert train_trial(cfg, "ncp_ltc", 1, 1e-3).id != t1.id
    assert train_trial(cfg, "ncp_ltc", 0, 1e-2).id != t1.id
    for override in (
        "bc.epochs=2",
        "demos.num_roads=3",
        "env.kwargs={image_height: 16, image_width: 32, road_length: 13.0}",
        "torch_threads=2",
        "models.0.controller.wiring.seed=5",
    ):
        changed = (
            apply_overrides(cfg, [override])
            if not override.startswith("models")
            else dataclasses.replace(
                cfg,
                models=(
                    dataclasses.replace(
                        cfg.models[0],
                        controller=dataclasses.replace(
                            cfg.models[0].controller,
                            wiring=dataclasses.replace(cfg.models[0].controller.wiring, seed=5),
                        ),
                    ),
                ),
            )
        )
        assert train_trial(changed, "ncp_ltc", 0, 1e-3).id != t1.id, override
    # evaluation settings change the eval trial, not the train trial it evaluates
    ev = apply_overrides(cfg, ["evaluation.num_roads=3"])
    assert train_trial(ev, "ncp_ltc", 0, 1e-3).id == t1.id
    assert eval_trial(ev, t1).id != eval_trial(cfg, t1).id
    # the number of workers does not change results, so it does not change ids
    assert train_trial(apply_overrides(cfg, ["workers=1"]), "ncp_ltc", 0, 1e-3).id == t1.id


def test_config_errors(tiny_preset: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny_preset.read_text() + "not_a_key: 1\n")
    with pytest.raises(ConfigError, match="not_a_key"):
        load_yaml(StudyConfig, bad)
    cfg = load_yaml(StudyConfig, tiny_preset)
    with pytest.raises(ValueError, match="overlap"):
        apply_overrides(cfg, ["evaluation.seed_start=1"])
    with pytest.raises(ValueError, match="reference"):
        apply_overrides(cfg, ["reference=lstm64"])
    with pytest.raises((ValueError, ConfigError)):
        apply_overrides(cfg, ["evaluation.noise_levels=[0.1]"])  # no clean level


def test_cli_help_and_errors(capsys: pytest.CaptureFixture[str], tiny_preset: Path) -> None:
    text = build_parser().format_help()
    for option in (
        "--config",
        "--set",
        "--backend",
        "--address",
        "--workers",
        "--cpus-per-trial",
        "--max-trials",
        "--report-only",
        "--no-report",
        "--no-progress",
    ):
        assert option in text
    # expected errors are one line with status 2 (docs/cli.md), nothing created
    for args, word in (
        (["--set", "bc.epochz=3"], "epochz"),
        (["--set", "evaluation.seed_start=1"], "overlap"),
        (["--config", str(tiny_preset.parent / "missing.yaml")], "missing.yaml"),
        (["--address", "auto"], "--address"),
    ):
        argv = ["study", "--config", str(tiny_preset), *args]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ltc-control study: error:") and word in err[0], err
    assert not (tiny_preset.parent / "runs").exists()
