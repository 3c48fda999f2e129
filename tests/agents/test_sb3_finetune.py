"""PPO fine-tuning of an imitation-trained lane-keeping policy (``ltc_control.agents.sb3_finetune``), tiny."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ltc_control.agents.episode import checkpoint_env
from ltc_control.agents.sb3_finetune import FinetuneConfig, finetune
from ltc_control.checkpoint import load_checkpoint, save_checkpoint
from ltc_control.policy import Policy, PolicyConfig


def _tiny(tmp_path: Path, checkpoint: Path, **overrides: object) -> FinetuneConfig:
    kwargs: dict = dict(
        checkpoint=str(checkpoint),
        env_kwargs={"road_length": 20.0},
        timesteps=64,
        value_warmup_steps=32,
        n_envs=1,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        learning_rate=1e-3,
        eval_seeds=(9001,),
        eval_max_steps=30,
        out_dir=str(tmp_path / "out"),
        checkpoint_out=str(tmp_path / "tuned" / "policy"),
        name="ft",
    )
    kwargs.update(overrides)
    return FinetuneConfig(**kwargs)


def test_finetune_starts_at_the_source_trains_and_writes_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Policy(PolicyConfig(observation="image", image_shape=(32, 64, 3)))
    save_checkpoint(tmp_path / "src", source, {"note": "untrained"})
    record = finetune(_tiny(tmp_path, tmp_path / "src"))
    assert record["start_equals_source"] is True  # the sb3 actor began exactly at the imitation policy
    assert record["env_steps"] == 32 + 64
    assert record["env_kwargs"]["image_height"] == 32 and record["env_kwargs"]["image_width"] == 64
    for key in ("before", "after"):
        assert [e["seed"] for e in record[key]["episodes"]] == [9001]
        assert 0 < record[key]["mean"]["distance_m"] < 20.5
    report = (tmp_path / "out" / "ft.md").read_text()
    assert "| mean_abs_lateral_m |" in report and "seed 9001" in report
    assert (tmp_path / "tuned" / "ft.json").is_file()
    tuned, meta = load_checkpoint(tmp_path / "tuned" / "policy")
    assert meta["source_checkpoint"] == str(tmp_path / "src")
    # rollout / evaluate / inspect find the env the fine-tuned policy was trained in
    env_id, env_kwargs = checkpoint_env(str(tmp_path / "tuned" / "policy"))
    assert env_id == "LTC/LaneKeeping-v0" and env_kwargs == record["env_kwargs"]
    assert tuned.config.image_shape == (32, 64, 3)
    before, after = source.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # PPO moved the actor


def test_finetune_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint is required"):
        finetune(FinetuneConfig())
    with pytest.raises(FileNotFoundError):
        finetune(_tiny(tmp_path, tmp_path / "missing"))
    save_checkpoint(tmp_path / "vec", Policy(PolicyConfig(observation="vector", vector_size=5)), {})
    with pytest.raises(ValueError, match="needs an image policy"):
        finetune(_tiny(tmp_path, tmp_path / "vec"))
    with pytest.raises(ValueError, match="overlap the training road seeds"):
        FinetuneConfig(eval_seeds=(100_005,))
    with pytest.raises(ValueError, match="critic must be"):
        FinetuneConfig(critic="lstm")


def test_checkpoint_env_reads_older_fine_tuned_checkpoints(tmp_path: Path) -> None:
    """Fine-tuned checkpoints written before train_config.env was added carry top-level env_id/env_kwargs."""
    policy = Policy(PolicyConfig(observation="image", image_shape=(16, 32, 3)))
    kwargs = {"image_height": 16, "image_width": 32}
    save_checkpoint(
        tmp_path / "old", policy, {"env_id": "LTC/LaneKeepingRandomized-v0", "env_kwargs": kwargs}
    )
    assert checkpoint_env(str(tmp_path / "old")) == ("LTC/LaneKeepingRandomized-v0", kwargs)
    save_checkpoint(tmp_path / "none", policy, {})
    assert checkpoint_env(str(tmp_path / "none")) == (None, {})
