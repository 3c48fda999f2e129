"""Trials: the study's independent units of work, their identity and what each one computes.

A trial is a plain, JSON-serialisable :class:`Trial`: its ``spec`` holds everything that determines its
result (data, model, seed, learning rate, budget, evaluation settings, the trial format version) and its
``id`` is the SHA-256 of that spec. Two kinds:

- ``train``: behaviour cloning (+ DAgger) of one model at one seed and one controller learning rate on the
  shared dataset; offline validation and test error, parameter counts, training time. Output: a checkpoint.
- ``eval``: closed-loop driving of a ``train`` trial's checkpoint on the held-out test roads under every
  condition (noise levels, shifts, randomised visuals), batched in lockstep (``ltc_control.agents.lockstep``);
  saliency SSIM under noise, PC1 share and Lipschitz profile of the neuron activity, inference cost.

Each trial runs in its own folder ``<study>/trials/<kind>-<model>-s<seed>-lr<lr>-<id[:10]>/``. The folder
holds ``spec.json`` first and ``result.json`` last (written atomically): a folder with ``result.json`` is
done and is never recomputed; a folder without it is an interrupted trial and is wiped and rerun from the
start. A changed config changes the id, so it gets a new folder instead of mixing with old results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ltc_control.errors import StudyStoreError
from ltc_control.runs import atomic_write_json, atomic_write_text

__all__ = [
    "TRIAL_FORMAT",
    "Trial",
    "canonical_json",
    "data_spec",
    "eval_trial",
    "load_result",
    "run_trial",
    "spec_hash",
    "train_trial",
]

#: Bump when what a trial computes changes in a way its config does not show (invalidates old trials).
TRIAL_FORMAT = 1
RESULT_NAME = "result.json"
SPEC_NAME = "spec.json"


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces, floats by ``repr``) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of a spec's canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


@dataclass(frozen=True)
class Trial:
    """One unit of work (picklable; sent to local workers or Ray tasks as is).

    Attributes:
        kind: ``"train"`` or ``"eval"``.
        model: model name.
        seed: training seed.
        lr: controller learning rate.
        spec: everything that determines the result (plain JSON values).
        id: ``spec_hash(spec)``.
    """

    kind: str
    model: str
    seed: int
    lr: float
    spec: dict[str, Any]
    id: str

    @property
    def folder(self) -> str:
        """The trial folder's name inside ``<study>/trials``."""
        return f"{self.kind}-{self.model}-s{self.seed}-lr{self.lr:g}-{self.id[:10]}"

    @property
    def label(self) -> str:
        """Short text for logs."""
        return f"{self.kind} {self.model} seed {self.seed} lr {self.lr:g}"


def data_spec(config: Any) -> dict[str, Any]:
    """What determines the shared datasets (training/validation demos and test demos)."""
    from ltc_control.config import to_dict

    demos = to_dict(config.demos)
    demos.pop("dir", None)
    return {
        "format": TRIAL_FORMAT,
        "env": to_dict(config.env),
        "expert": to_dict(config.expert),
        "demos": demos,
        "test_demos": to_dict(config.test_demos),
    }


def train_trial(config: Any, model: str, seed: int, lr: float) -> Trial:
    """The ``train`` trial of ``model`` at ``seed`` and controller learning rate ``lr``."""
    from ltc_control.config import to_dict

    spec_model = config.model(model)
    policy = dataclasses.replace(config.policy, controller=spec_model.controller)
    bc = dataclasses.replace(
        config.bc, lr_controller=float(lr), num_threads=config.torch_threads, device="cpu"
    )
    spec = {
        "kind": "train",
        "data": data_spec(config),
        "model": model,
        "policy": to_dict(policy),
        "bc": to_dict(bc),
        "dagger": to_dict(config.dagger),
        "seed": int(seed),
        "torch_threads": int(config.torch_threads),
    }
    return Trial("train", model, int(seed), float(lr), spec, spec_hash(spec))


def eval_trial(config: Any, train: Trial) -> Trial:
    """The ``eval`` trial of a ``train`` trial's checkpoint."""
    from ltc_control.config import to_dict

    spec = {
        "kind": "eval",
        "format": TRIAL_FORMAT,
        "train_id": train.id,
        "train_folder": train.folder,
        "data": data_spec(config),
        "env": to_dict(config.env),
        "evaluation": to_dict(config.evaluation),
        "conditions": config.conditions(),
        "torch_threads": int(config.torch_threads),
    }
    return Trial("eval", train.model, train.seed, train.lr, spec, spec_hash(spec))


#: the keys every stored result carries (run_trial adds them), with their JSON types
RESULT_KEYS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "kind": (str,),
    "model": (str,),
    "seed": (int,),
    "lr": (int, float),
    "wall_seconds": (int, float),
    "cpu_seconds": (int, float),
}


def load_result(trial_dir: Path, expected_id: str | None = None) -> dict[str, Any] | None:
    """The trial's ``result.json``, or None when the trial has not finished.

    Args:
        trial_dir: the trial's folder.
        expected_id: the id of the trial this folder must hold (checked when given).

    Raises:
        StudyStoreError: the file is damaged (not JSON, not an object, its sha256 over the content wrong,
            a key missing or of the wrong type, a ``kind`` other than train/eval) or holds another trial's
            result. The message names the file and says to delete the trial folder, after which the study
            recomputes that trial.
    """
    path = trial_dir / RESULT_NAME
    if not path.is_file():
        return None
    fix = f"delete the folder {trial_dir} and rerun the study to recompute this trial"
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyStoreError(f"trial result {path} is damaged ({exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise StudyStoreError(f"trial result {path} is not a JSON object; {fix}")
    digest = doc.pop("sha256", None)
    if not isinstance(digest, str) or digest != spec_hash(doc):
        raise StudyStoreError(f"trial result {path} fails its sha256 check (damaged or edited); {fix}")
    for key, types in RESULT_KEYS.items():
        value = doc.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise StudyStoreError(
                f"trial result {path}: key {key!r} is missing or not {'/'.join(t.__name__ for t in types)} "
                f"(got {type(value).__name__}); {fix}"
            )
    if doc["kind"] not in ("train", "eval"):
        raise StudyStoreError(f"trial result {path}: kind {doc['kind']!r} is not train or eval; {fix}")
    if expected_id is not None and doc["id"] != expected_id:
        raise StudyStoreError(
            f"trial result {path} belongs to trial {doc['id'][:10]}, not to {expected_id[:10]}; {fix}"
        )
    return dict(doc)


@contextlib.contextmanager
def _logged(path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (Python level) to ``path`` inside the block."""
    with (
        open(path, "a", buffering=1) as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        yield


def run_trial(trial: Trial, study_dir: str) -> dict[str, Any]:
    """Run one trial in its folder (or return its stored result); the function both backends call.

    Args:
        trial: the trial.
        study_dir: the study folder (``data/`` and ``trials/`` inside); on a cluster a shared filesystem.

    Returns:
        The trial's result (also in ``result.json``).
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    root = Path(study_dir)
    tdir = root / "trials" / trial.folder
    done = load_result(tdir, trial.id)
    if done is not None:
        return done
    if tdir.exists():  # an interrupted trial: start it again from scratch
        shutil.rmtree(tdir)
    tdir.mkdir(parents=True)
    atomic_write_json(tdir / SPEC_NAME, {"id": trial.id, "kind": trial.kind, "spec": trial.spec})
    import torch

    torch.set_num_threads(int(trial.spec["torch_threads"]))
    t0 = time.perf_counter()
    c0 = time.process_time()
    with _logged(tdir / "log.txt"):
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} start {trial.label} ({trial.id})", flush=True)
        if trial.kind == "train":
            result = _run_train(trial, root, tdir)
        elif trial.kind == "eval":
            result = _run_eval(trial, root, tdir)
        else:
            raise ValueError(f"unknown trial kind {trial.kind!r}")
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} done in {time.perf_counter() - t0:.1f} s", flush=True)
    result.update(
        id=trial.id,
        kind=trial.kind,
        model=trial.model,
        seed=trial.seed,
        lr=trial.lr,
        wall_seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
        host=os.uname().nodename,
    )
    stored = _jsonable(result)
    atomic_write_json(tdir / RESULT_NAME, {**stored, "sha256": spec_hash(stored)})
    return stored


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------------------------------------- data
def data_dirs(study_dir: Path, dspec: Mapping[str, Any]) -> tuple[Path, Path]:
    """The shared training/validation dataset folder and the test-demo folder for a data spec."""
    base = study_dir / "data" / spec_hash(dspec)[:12]
    return base / "demos", base / "test_demos"


def _private_copy(src: Path, dst: Path) -> None:
    """A trial's own view of the shared dataset: chunks hard-linked (copied across filesystems)."""
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name.startswith(".") or not item.is_file():
            continue
        target = dst / item.name
        if item.suffix == ".npz":
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
        else:
            shutil.copy2(item, target)


def _window_mse(policy: Any, data: Any, window: int) -> float:
    """Mean squared error over non-overlapping ``window``-step windows (state reset per window)."""
    import torch

    total, count = 0.0, 0
    policy.eval()
    with torch.no_grad():
        for batch in data.iter_windows(64, window, stride=window, shuffle=False):
            obs = torch.from_numpy(np.ascontiguousarray(batch.images))
            labels = torch.from_numpy(np.ascontiguousarray(batch.labels))
            starts = torch.from_numpy(np.ascontiguousarray(batch.episode_starts))
            pred, _ = policy(obs, episode_starts=starts)
            total += float(((pred - labels) ** 2).sum())
            count += int(labels.numel())
    return total / count if count else float("nan")


def _run_train(trial: Trial, root: Path, tdir: Path) -> dict[str, Any]:
    from ltc_control.agents.collection import EnvSpec
    from ltc_control.agents.datasets import DemoDataset, split_road_seeds
    from ltc_control.agents.experts import ExpertConfig
    from ltc_control.agents.imitation import train
    from ltc_control.agents.imitation_config import (
        BCConfig,
        ClosedLoopEvalConfig,
        DaggerConfig,
        DemoConfig,
        TrainConfig,
    )
    from ltc_control.checkpoint import load_checkpoint
    from ltc_control.config import from_dict
    from ltc_control.controllers import controller_summary
    from ltc_control.policy import PolicyConfig

    spec = trial.spec
    dspec = spec["data"]
    demos_dir, test_dir = data_dirs(root, dspec)
    if not (demos_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"shared dataset {demos_dir} is missing; the study collects it before trials")
    own = tdir / "data"
    _private_copy(demos_dir, own)
    demo_cfg = from_dict(DemoConfig, {**dspec["demos"], "dir": str(own)})
    cfg = TrainConfig(
        name=f"study-{trial.model}",
        seed=int(spec["seed"]),
        out_dir=str(tdir / "run"),
        workers=0,
        env=from_dict(EnvSpec, dspec["env"]),
        expert=from_dict(ExpertConfig, dspec["expert"]),
        demos=demo_cfg,
        policy=from_dict(PolicyConfig, spec["policy"]),
        bc=from_dict(BCConfig, spec["bc"]),
        dagger=from_dict(DaggerConfig, spec["dagger"]),
        eval=ClosedLoopEvalConfig(num_roads=0),
    )
    result = train(cfg, progress=False, argv=["ltc-control", "study", "(trial)", trial.id])
    if result.interrupted:
        raise KeyboardInterrupt
    ckpt = tdir / "checkpoint"
    shutil.copytree(result.best_checkpoint, ckpt)
    policy, _ = load_checkpoint(ckpt)
    train_seeds, val_seeds = split_road_seeds(
        range(demo_cfg.seed_start, demo_cfg.seed_start + demo_cfg.num_roads),
        demo_cfg.val_fraction,
        seed=cfg.seed,
    )
    val = DemoDataset(own, road_seeds=val_seeds, sources=["expert"])
    test = DemoDataset(test_dir)
    window = cfg.bc.window
    counts = controller_summary(policy.controller)
    perception = getattr(policy, "perception", None)
    shutil.rmtree(own, ignore_errors=True)
    return {
        "checkpoint": "checkpoint",
        "val_mse": _window_mse(policy, val, window),
        "test_mse": _window_mse(policy, test, window),
        "best_val_loss": result.metrics.get("val_loss"),
        "train_seconds": result.metrics.get("train_seconds"),
        "train_roads": train_seeds,
        "val_roads": val_seeds,
        "controller_parameters": counts["parameters"],
        "controller_effective_parameters": counts["effective_parameters"],
        "synapses": counts["synapses"],
        "neurons": counts["neurons"],
        "perception_parameters": sum(p.numel() for p in perception.parameters())
        if perception is not None
        else 0,
        "total_parameters": sum(p.numel() for p in policy.parameters()),
    }


# ------------------------------------------------------------------------------------------------- eval
def _activity(policy: Any, states: np.ndarray) -> np.ndarray:
    """Neuron activity from stored states: the first ``num_neurons`` state entries (LSTM: ``h``)."""
    cell = policy.controller.cell
    n = int(getattr(cell, "num_neurons", 0)) or states.shape[1]
    return states[:, :n]


def _inference_cost(policy: Any, frames: np.ndarray, steps: int) -> dict[str, float]:
    """Batch-1 ``Policy.act`` time per control step (median of 5 blocks), microseconds."""
    import torch

    if steps == 0 or len(frames) == 0:
        return {"inference_us": float("nan")}
    blocks = []
    with torch.no_grad():
        state = policy.reset(1)
        for k in range(min(20, steps)):  # warm-up
            _, state = policy.act(frames[k % len(frames)], state)
        for _ in range(5):
            state = policy.reset(1)
            t0 = time.perf_counter()
            for k in range(steps):
                _, state = policy.act(frames[k % len(frames)], state)
            blocks.append((time.perf_counter() - t0) / steps)
    return {"inference_us": float(np.median(blocks) * 1e6)}


def _run_eval(trial: Trial, root: Path, tdir: Path) -> dict[str, Any]:
    from ltc_control.agents.datasets import DemoDataset
    from ltc_control.agents.lockstep import EpisodeJob, LockstepStats, run_lockstep
    from ltc_control.agents.metrics import episode_metrics
    from ltc_control.agents.perturbations import Perturbation
    from ltc_control.checkpoint import load_checkpoint
    from ltc_control.inspection.analysis import lipschitz_profile, pca
    from ltc_control.inspection.saliency import saliency_robustness

    spec = trial.spec
    ev = spec["evaluation"]
    train_dir = root / "trials" / spec["train_folder"]
    if load_result(train_dir, spec["train_id"]) is None:
        raise FileNotFoundError(f"train trial {train_dir} has not finished; run it first")
    policy, _ = load_checkpoint(train_dir / "checkpoint")
    policy.eval()
    roads = list(range(int(ev["seed_start"]), int(ev["seed_start"]) + int(ev["num_roads"])))
    jobs: list[EpisodeJob] = []
    for cond in spec["conditions"]:
        pert = Perturbation(
            noise_variance=float(cond["noise_variance"]), seed=int(ev["noise_seed"]), **cond["perturbation"]
        )
        for road in roads:
            jobs.append(
                EpisodeJob(
                    seed=road, perturbation=pert, env_kwargs=dict(cond["env_kwargs"]), tag=cond["name"]
                )
            )
    stats = LockstepStats()
    states: dict[int, np.ndarray] = {}
    results = run_lockstep(
        policy,
        spec["env"]["id"],
        jobs,
        env_kwargs=spec["env"]["kwargs"],
        num_envs=int(ev["num_envs"]),
        max_steps=int(ev["max_steps"]) or None,
        states=states,
        threads=int(spec["torch_threads"]),
        stats=stats,
    )
    rows = []
    for job, res in zip(jobs, results):
        m = episode_metrics(res, completion_tolerance=float(ev["completion_tolerance"]))
        row = {"condition": job.tag, "road": job.seed, **m.to_dict()}
        row["km"] = (m.total_distance_m or 0.0) / 1000.0
        rows.append(row)
    clean = [i for i, job in enumerate(jobs) if job.tag == spec["conditions"][0]["name"]]
    acts = [_activity(policy, states[i]) for i in clean]
    activity = np.concatenate(acts)
    episode = np.concatenate([np.full(len(a), k) for k, a in enumerate(acts)])
    pc1 = float(pca(activity).explained_variance_ratio[0]) if activity.shape[0] >= 2 else float("nan")
    lip = lipschitz_profile(activity, episode=episode)
    np.savez_compressed(tdir / "activity_clean.npz", activity=activity.astype(np.float32), episode=episode)
    out: dict[str, Any] = {
        "episodes": rows,
        "pc1_share": pc1,
        "lipschitz": lip.tolist(),
        "lipschitz_mean": float(np.mean(lip)) if lip.size else float("nan"),
        "lipschitz_max": float(np.max(lip)) if lip.size else float("nan"),
        "lockstep": dataclasses.asdict(stats),
        "env_steps_per_second": stats.env_steps / stats.seconds if stats.seconds else float("nan"),
    }
    frames = np.zeros((0,), dtype=np.uint8)
    n_frames = int(ev["saliency_frames"])
    if n_frames or int(ev["inference_steps"]):
        _, test_dir = data_dirs(root, spec["data"])
        frames = DemoDataset(test_dir).images[: max(n_frames, 64)]
    if n_frames:
        ssim = saliency_robustness(
            policy,
            frames[:n_frames],
            noise_variances=tuple(ev["saliency_noise"]),
            seed=int(ev["noise_seed"]),
            num_frames=n_frames,
        )
        out["saliency_ssim"] = {f"{k:g}": float(np.mean(v)) for k, v in ssim.items()}
    out.update(_inference_cost(policy, frames, int(ev["inference_steps"])))
    atomic_write_text(tdir / "episodes.csv", _csv(rows))
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    import csv
    import io

    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
