"""Drive the lane-keeping env with an exported policy: numpy + onnxruntime + the env, no torch.

The whole deployment contract is in ``export.json`` (written by ``ltc-control export``): feed the raw
observation, the state (zeros at the start of an episode) and ``dt``; get the action and the next state; carry
the state yourself. Usage::

    ltc-control export runs/<run>/checkpoints/best --out exported/ncp
    python experiments/deploy/drive_onnx.py exported/ncp --roads 100000 100001 100002 100003 100004

It prints one line per road (completed, mean |lateral error|) and, with ``--json FILE``, writes the metrics
and ``torch_imported`` (whether anything pulled torch into this process: it should be false).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import onnxruntime as ort

import ltc_control.envs  # noqa: F401  registers the LTC/* env ids (imports no torch)

Step = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def load_onnx(folder: str | Path) -> tuple[Step, dict[str, Any]]:
    """The exported step function and its ``export.json``."""
    folder = Path(folder)
    spec = json.loads((folder / "export.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one small step: a single thread is fastest
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(folder / "policy.onnx"), options, providers=["CPUExecutionProvider"])

    def step(observation: np.ndarray, state: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        action, next_state = session.run(None, {"observation": observation, "state": state, "dt": dt})
        return action, next_state

    return step, spec


def drive(
    step: Step,
    env_id: str,
    env_kwargs: dict[str, Any],
    road_seed: int,
    state_size: int,
    dt: float = 1.0,
) -> dict[str, Any]:
    """One episode on road ``road_seed``; returns its completion and mean absolute lateral error."""
    env = gym.make(env_id, **env_kwargs)
    obs, info = env.reset(seed=road_seed)
    state = np.zeros((1, state_size), dtype=np.float32)  # the initial state
    dt_in = np.full((1,), dt, dtype=np.float32)
    lateral: list[float] = []
    terminated = truncated = False
    while not (terminated or truncated):
        action, state = step(obs[None], state, dt_in)  # batch of one; the state is carried
        obs, _, terminated, truncated, info = env.step(action[0])
        lateral.append(abs(float(info["lateral_offset"])))
    env.close()
    completed = not terminated and info["distance"] >= info["road_length"] - 1.0
    return {
        "road_seed": road_seed,
        "steps": len(lateral),
        "completed": bool(completed),
        "distance_m": float(info["distance"]),
        "mean_abs_lateral_m": float(np.mean(lateral)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="folder written by ltc-control export (policy.onnx + export.json)")
    ap.add_argument(
        "--roads", type=int, nargs="+", default=[100_000 + i for i in range(5)], help="road seeds"
    )
    ap.add_argument("--env", default=None, help="env id (default: the one in export.json)")
    ap.add_argument("--env-kwargs", default="{}", help="JSON env kwargs, merged over export.json's")
    ap.add_argument("--json", default=None, help="write the metrics here")
    args = ap.parse_args(argv)

    step, spec = load_onnx(args.folder)
    env = spec.get("env") or {}
    env_id = args.env or env.get("id")
    if env_id is None:
        ap.error("export.json names no env: pass --env")
    kwargs = {**(env.get("kwargs") or {}), **json.loads(args.env_kwargs)}
    state_size = spec["state"]["size"]
    dt = spec["controller"]["dt"]
    episodes = [drive(step, env_id, kwargs, seed, state_size, dt) for seed in args.roads]
    for ep in episodes:
        print(
            f"road {ep['road_seed']}: completed={ep['completed']} steps={ep['steps']} "
            f"mean|lateral|={ep['mean_abs_lateral_m']:.4f} m"
        )
    result = {
        "env": env_id,
        "env_kwargs": kwargs,
        "episodes": episodes,
        "torch_imported": "torch" in sys.modules,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
