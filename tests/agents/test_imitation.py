"""Tests of behaviour cloning / DAgger training (``ltc_control.agents.imitation``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ltc_control.agents.collection import EnvSpec
from ltc_control.agents.datasets import DatasetWriter
from ltc_control.agents.imitation import train
from ltc_control.agents.imitation_cli import train_main
from ltc_control.agents.imitation_config import (
    BCConfig,
    ClosedLoopEvalConfig,
    DaggerConfig,
    DemoConfig,
    TrainConfig,
)
from ltc_control.agents.imitation_trainer import _Trainer, curve_weighted_mse
from ltc_control.checkpoint import load_checkpoint, load_trainer_state
from ltc_control.config import ConfigError, apply_overrides, from_dict
from ltc_control.errors import RunFolderError
from ltc_control.policy import PolicyConfig
from tests.faults.helpers import H, W, stripe_episode


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def synthetic_config(tmp_path: Path, **bc: object) -> TrainConfig:
    """A config whose demonstrations already exist (collection is skipped, no env is needed)."""
    data = tmp_path / "data"
    if not data.exists():
        with DatasetWriter(data, episodes_per_chunk=2) as writer:
            for road in range(5):
                writer.add(stripe_episode(road))
    bc_cfg = {"epochs": 4, "batch_size": 8, "window": 8, "stride": 4, "patience": 0, "log_every": 1}
    bc_cfg.update(bc)
    return from_dict(
        TrainConfig,
        {
            "name": "synthetic",
            "out_dir": str(tmp_path / "runs"),
            "workers": 0,
            "env": {"kwargs": {"image_height": H, "image_width": W}},
            "demos": {"dir": str(data), "num_roads": 5, "val_fraction": 0.2},
            "policy": {"image_shape": [H, W, 3]},
            "bc": bc_cfg,
            "eval": {"num_roads": 0},
        },
    )


def test_curve_weighted_mse_values() -> None:
    pred = torch.tensor([[[0.0], [0.5]]])
    target = torch.tensor([[[0.0], [1.0]]])
    assert float(curve_weighted_mse(pred, target)) == pytest.approx(0.125)
    w = math.exp(2.0)  # exp(alpha |y|) for y = 1, alpha = 2; y = 0 has weight 1
    assert float(curve_weighted_mse(pred, target, 2.0)) == pytest.approx(0.25 * w / (1 + w))
    with pytest.raises(ValueError, match="action size"):
        curve_weighted_mse(pred, target[..., :0])


def test_config_errors_name_the_key_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'bc.epoch'.*valid keys: epochs, batch_size"):
        apply_overrides(TrainConfig(), ["bc.epoch=3"])
    with pytest.raises(ConfigError, match=r"bc.epochs: expected int"):
        apply_overrides(TrainConfig(), ["bc.epochs=many"])
    with pytest.raises(ConfigError, match="does not match the env camera"):
        apply_overrides(TrainConfig(), ["policy.image_shape=[48, 96, 3]"])
    with pytest.raises(ConfigError, match="overlap the training/validation roads"):
        apply_overrides(TrainConfig(), ["eval.seed_start=5"])
    with pytest.raises(SystemExit):
        train_main(["--set", "dagger.round=2"])


def test_presets_load_and_default_is_the_small_preset() -> None:
    from ltc_control.config import load_yaml

    root = Path(__file__).resolve().parents[2] / "experiments" / "configs"
    small = load_yaml(TrainConfig, root / "lane_keeping_small.yaml")
    assert small == TrainConfig()
    assert small.policy.controller.kind == "ltc" and small.bc.window == 16 and small.bc.grad_clip == 10.0
    full = load_yaml(TrainConfig, root / "lane_keeping.yaml")
    assert full.dagger.rounds >= 1 and full.bc.curve_alpha > 0


def test_separate_learning_rates_and_loss_falls(tmp_path: Path) -> None:
    cfg = synthetic_config(tmp_path, epochs=6, lr_perception=2e-3, lr_controller=1e-2)
    result = train(cfg, progress=False)
    assert not result.interrupted
    with open(result.run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val_losses = [float(r["epoch/val_loss"]) for r in rows if r.get("epoch/val_loss")]
    assert len(val_losses) == 6
    assert np.mean(train_losses[-5:]) < 0.5 * np.mean(train_losses[:5])
    assert min(val_losses) < 0.6 * val_losses[0]
    assert result.metrics["val_loss"] == pytest.approx(min(val_losses))
    # The run folder records what it needs to be reproduced.
    for name in ("config.yaml", "command.txt", "git.txt", "metrics.csv", "final_metrics.json"):
        assert (result.run_dir / name).is_file(), name
    policy, meta = load_checkpoint(result.best_checkpoint)
    assert meta["best_val"] == pytest.approx(min(val_losses))
    trainer = _Trainer(cfg, tmp_path / "scratch", _dist(), progress=False)
    groups = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert groups == {"perception": 2e-3, "controller": 1e-2}
    n_head = sum(p.numel() for p in trainer.policy.perception.parameters())
    assert sum(p.numel() for p in trainer.optimizer.param_groups[0]["params"]) == n_head


def _dist():  # noqa: ANN202
    from ltc_control.agents.imitation_trainer import _Dist

    return _Dist()


def test_interrupt_saves_and_resume_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = synthetic_config(tmp_path, epochs=4)
    original = _Trainer.train_epoch
    calls = {"n": 0}

    def interrupting(self: _Trainer, data: object, epoch_seed: int) -> float:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, data, epoch_seed)  # type: ignore[arg-type]

    monkeypatch.setattr(_Trainer, "train_epoch", interrupting)
    first = train(cfg, progress=False)
    assert first.interrupted
    state = load_trainer_state(first.last_checkpoint)
    assert state is not None and state["extra"]["epoch"] == 2 and state["optimizer"] is not None
    monkeypatch.setattr(_Trainer, "train_epoch", original)
    second = train(resume=first.run_dir, progress=False)
    assert not second.interrupted and second.run_dir == first.run_dir
    with open(first.run_dir / "metrics.csv", newline="") as fh:
        epochs = [r["epoch/round"] for r in csv.DictReader(fh) if r.get("epoch/val_loss")]
    assert len(epochs) == 4  # 2 before the interrupt + 2 after resuming, none repeated
    final = load_trainer_state(second.last_checkpoint)
    assert final is not None and final["extra"]["round"] == 1
    with pytest.raises(RunFolderError, match="not a training run folder"):
        train(resume=tmp_path / "nowhere", progress=False)


def test_early_stopping_stops_a_round(tmp_path: Path) -> None:
    # lr 0 cannot improve on the first epoch's validation loss: patience 2 stops after epoch 3.
    cfg = synthetic_config(tmp_path, epochs=10, patience=2, lr_perception=1e-12, lr_controller=1e-12)
    result = train(cfg, progress=False)
    with open(result.run_dir / "metrics.csv", newline="") as fh:
        val = [r for r in csv.DictReader(fh) if r.get("epoch/val_loss")]
    assert len(val) == 3


@pytest.fixture(scope="module")
def lane_run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """Collect on 3 short real roads, behaviour-clone, one DAgger round; shared by the closed-loop tests."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lane")
    cfg = TrainConfig(
        name="tiny",
        out_dir=str(tmp / "runs"),
        workers=0,
        env=EnvSpec(kwargs={"image_height": H, "image_width": W, "road_length": 40.0}),
        demos=DemoConfig(num_roads=4, val_fraction=0.25),
        policy=PolicyConfig(image_shape=(H, W, 3)),
        bc=BCConfig(epochs=6, batch_size=8, window=16, stride=4, lr_perception=1e-3, lr_controller=5e-3),
        dagger=DaggerConfig(rounds=1, episodes_per_round=2, epochs_per_round=2),
        eval=ClosedLoopEvalConfig(num_roads=2, seed_start=500),
    )
    return cfg, train(cfg, progress=False)


def test_trained_policy_beats_untrained_in_closed_loop(lane_run) -> None:  # noqa: ANN001
    from ltc_control.agents.datasets import DemoDataset
    from ltc_control.agents.evaluation import evaluate
    from ltc_control.checkpoint import save_checkpoint
    from ltc_control.policy import Policy

    cfg, result = lane_run
    data = DemoDataset(result.run_dir / "data")
    sources = {e["source"] for e in data.episodes}
    assert sources == {"expert", "dagger_1"}
    torch.manual_seed(cfg.seed)
    untrained = save_checkpoint(result.run_dir / "untrained", Policy(cfg.policy))
    seeds = [500, 501]
    kw = dict(noise_levels=(0.0,), workers=0, env_kwargs=cfg.env.kwargs, progress=False)
    base = evaluate(str(untrained), cfg.env.id, seeds, **kw).levels[0]
    # train() evaluated the selected checkpoint on the same held-out roads (500, 501).
    trained = result.metrics["eval/distance_before_departure_m"]
    assert trained > base.distance_before_departure_m.value + 5.0, (trained, base)
    # Validation loss fell well below the label variance the untrained policy starts from.
    assert result.metrics["val_loss"] < 0.6 * float(np.var(data.labels))


@pytest.mark.parametrize("kind", ["cfc", "lstm", "ctrnn", "mlp"])
def test_controller_is_switchable_by_config(tmp_path: Path, kind: str) -> None:
    from ltc_control.agents.datasets import DemoDataset

    base = synthetic_config(tmp_path, max_batches_per_epoch=2)
    cfg = apply_overrides(base, [f"policy.controller.kind={kind}", "policy.controller.units=16"])
    trainer = _Trainer(cfg, tmp_path / "run", _dist(), progress=False)
    assert cfg.policy.controller.kind == kind
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    loss = trainer.train_epoch(DemoDataset(cfg.demos.dir), epoch_seed=0)
    assert math.isfinite(loss) and trainer.state["step"] == 2
    changed = [n for n, p in trainer.policy.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("perception.") for n in changed) and any(
        n.startswith("controller.") for n in changed
    )


def test_select_round_prefers_completion_then_distance_then_lateral_error() -> None:
    from ltc_control.agents.imitation import select_round

    def s(c: float, d: float, lat: float) -> dict[str, float]:
        return {"completion_rate": c, "distance_before_departure_m": d, "mean_abs_lateral_m": lat}

    assert select_round({0: s(0.5, 250.0, 0.1), 1: s(1.0, 250.0, 0.3)}) == 1
    assert (
        select_round({0: s(1.0, 250.06, 0.20), 1: s(1.0, 250.03, 0.15)}) == 1
    )  # same metre: lateral decides
    assert select_round({0: s(0.5, 180.0, 0.1), 1: s(0.5, 120.0, 0.1)}) == 0
    assert select_round({0: s(1.0, 250.0, 0.2), 1: s(1.0, 250.0, 0.2)}) == 1  # full tie: the later round
    with pytest.raises(ValueError, match="at least one"):
        select_round({})
