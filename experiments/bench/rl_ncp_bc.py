"""Can an actor circuit fit a recurrent policy that solves the task? Behaviour cloning as a probe.

Issue #16 asks why the paper-sized 19-neuron NCP does not learn PendulumNoVel under PPO while a dense
16-neuron LTC does. This script takes PPO out of the question: it records the deterministic actions of a
trained ``RecurrentPPO`` policy (normally the suite's LSTM-PPO run) on episodes of its own env (with the run's
VecNormalize statistics), fits each candidate actor circuit to them by BPTT over whole episodes (the circuit
plus the ``LtcPolicy`` motor head, MSE on the actions), and drives the fitted circuit in closed loop on unseen
episode seeds. A circuit that cannot fit the expert here will not learn the task by PPO at the same rate; one
that fits it can, if PPO finds the way.

    .venv/bin/python experiments/bench/rl_ncp_bc.py \\
        --expert runs/rl_benchmark/rl_novel_suite/PendulumNoVel-v1__lstm__0__100000 \\
        --variants paper sf12 rec20 dense auto19 fc16 --seeds 0 1 2 --iters 800 \\
        --write experiments/results/rl_ncp_bc.md

Variants (all LTC, 6 ODE unfolds, the ``LtcPolicy`` motor head with tanh):
``paper`` the lane-keeping NCP preset (12 inter, 6 command, fan-outs 6/4, 6 recurrent command synapses,
motor fan-in 6), ``sf12`` the same with sensory fan-out 12, ``rec20`` with 20 recurrent command synapses,
``dense`` sensory fan-out 12, inter fan-out 6, 20 recurrent command synapses, ``auto19`` AutoNCP(19, 1,
sparsity 0.5), ``fc16`` the fully connected 16-neuron default of ``LtcPolicy()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from bench_common import emit_report, provenance_lines

VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"preset": "lane_keeping"},
    "sf12": {"preset": "ncp", "sensory_fanout": 12},
    "rec20": {"preset": "ncp", "recurrent_command_synapses": 20},
    "dense": {
        "preset": "ncp",
        "sensory_fanout": 12,
        "inter_fanout": 6,
        "recurrent_command_synapses": 20,
        "motor_fanin": 6,
    },
    "auto19": {"preset": "auto_ncp", "units": 19, "sparsity": 0.5},
    "fc16": {"preset": "fully_connected", "units": 16},
}


def main(argv: list[str] | None = None) -> int:
    import gymnasium as gym
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from ltc_control.agents.sb3_envs import make_novel_env
    from ltc_control.agents.sb3_modules import MotorHead
    from ltc_control.controllers import ControllerConfig, WiringConfig, build_controller

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--expert", required=True, type=Path, help="run stem: <stem>.zip, <stem>.vecnormalize.pkl")
    p.add_argument("--env-id", default=None, help="env id (default: the run record's <stem>.json)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="initialisation seeds per variant")
    p.add_argument("--iters", type=int, default=800, help="Adam steps (8 episodes each)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--train-episodes", type=int, default=40)
    p.add_argument("--val-episodes", type=int, default=8)
    p.add_argument("--eval-episodes", type=int, default=10, help="closed-loop episodes on unseen seeds")
    p.add_argument("--write", type=Path, default=None, help="markdown output (a .jsonl of rows beside it)")
    args = p.parse_args(argv)
    cli = sys.argv[1:] if argv is None else argv
    for name in ("iters", "train_episodes", "val_episodes", "eval_episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        p.error(f"--lr must be > 0, got {args.lr}")

    stem = args.expert
    zip_path, norm_path = Path(f"{stem}.zip"), Path(f"{stem}.vecnormalize.pkl")
    for path in (zip_path, norm_path):
        if not path.is_file():
            p.error(f"--expert {stem}: {path} does not exist (give the run stem, without .zip)")
    env_id = args.env_id
    if env_id is None:
        record = Path(f"{stem}.json")
        if not record.is_file():
            p.error(f"--env-id not given and {record} does not exist")
        env_id = json.loads(record.read_text())["env_id"]
    torch.set_num_threads(1)

    def venv() -> VecNormalize:
        v = VecNormalize.load(str(norm_path), DummyVecEnv([lambda: make_novel_env(env_id)]))
        v.training, v.norm_reward = False, False
        return v

    expert = RecurrentPPO.load(str(zip_path), device="cpu")
    space = expert.action_space
    if not isinstance(space, gym.spaces.Box):
        p.error(f"--expert {stem}: the probe fits continuous (Box) actions, not {type(space).__name__}")
    act_low = np.asarray(space.low, np.float32)
    act_high = np.asarray(space.high, np.float32)

    def collect(n: int, seed0: int) -> tuple[np.ndarray, np.ndarray, float]:
        v = venv()
        obs_eps, act_eps, rets = [], [], []
        for e in range(n):
            v.seed(seed0 + e)
            obs: Any = v.reset()
            state, start = None, np.ones(1, bool)
            o_, a_, ret, done = [], [], 0.0, False
            while not done:
                a, state = expert.predict(obs, state=state, episode_start=start, deterministic=True)
                start[:] = False
                o_.append(obs[0].copy())
                a_.append(np.clip(a[0], act_low, act_high))
                obs, r, d, _ = v.step(a)
                ret += float(r[0])
                done = bool(d[0])
            obs_eps.append(o_)
            act_eps.append(a_)
            rets.append(ret)
        lengths = {len(o) for o in obs_eps}
        if len(lengths) != 1:
            raise ValueError(
                f"{env_id}: episodes of lengths {sorted(lengths)}; the probe needs one fixed episode length"
            )
        return np.asarray(obs_eps, np.float32), np.asarray(act_eps, np.float32), float(np.mean(rets))

    n_train, n_val = args.train_episodes, args.val_episodes
    t0 = time.perf_counter()
    obs, act, expert_return = collect(n_train + n_val, 1000)
    print(f"expert {stem.name}: return {expert_return:.1f} on {n_train + n_val} episodes", flush=True)
    obs_t, act_t = torch.as_tensor(obs), torch.as_tensor(act)
    n_in, n_out = obs.shape[-1], act.shape[-1]
    squash: Literal["tanh", "none"] = "tanh" if np.all(act_low == -1) and np.all(act_high == 1) else "none"

    def closed_loop(model: Any, head: Any) -> float:
        v = venv()
        rets = []
        for e in range(args.eval_episodes):
            v.seed(5000 + e)
            o: Any = v.reset()
            h, ret, done = None, 0.0, False
            with torch.no_grad():
                while not done:
                    y, h = model.step(torch.as_tensor(o, dtype=torch.float32), h)
                    o, r, d, _ = v.step(head(y).numpy())
                    ret += float(r[0])
                    done = bool(d[0])
            rets.append(ret)
        return float(np.mean(rets))

    rows = []
    for name in args.variants:
        cfg = ControllerConfig(kind="ltc", wiring=WiringConfig(**VARIANTS[name]))
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = build_controller(cfg, n_in, n_out)
            head = MotorHead(n_out, squash)
            params = list(model.parameters()) + list(head.parameters())
            opt = torch.optim.Adam(params, lr=args.lr)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                y, _ = model(obs_t[n_train:])
                init_val = float(((head(y) - act_t[n_train:]) ** 2).mean())
            t_fit = time.perf_counter()
            for _ in range(args.iters):
                idx = torch.randint(0, n_train, (8,), generator=gen)
                y, _ = model(obs_t[idx])
                loss = ((head(y) - act_t[idx]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
            with torch.no_grad():
                y, _ = model(obs_t[n_train:])
                val = float(((head(y) - act_t[n_train:]) ** 2).mean())
            wiring = model.wiring
            row = {
                "variant": name,
                "seed": seed,
                "neurons": int(wiring.units),
                "sensory_synapses": int(wiring.num_sensory_synapses),
                "recurrent_synapses": int(wiring.num_recurrent_synapses),
                "init_val_mse": init_val,
                "val_mse": val,
                "closed_loop_return": closed_loop(model, head),
                "fit_seconds": time.perf_counter() - t_fit,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    lines = [
        f"# Behaviour-cloning probe: actor circuits fitted to `{stem.name}` ({env_id})",
        "",
        *provenance_lines(__file__, cli),
        f"- Expert: deterministic return {expert_return:.1f} on {n_train + n_val} episodes (reset seeds "
        f"1000..); {n_train} episodes to fit, {n_val} for the validation MSE; Adam lr {args.lr:g}, "
        f"{args.iters} steps of 8 whole episodes, gradient norm clipped at 1; closed loop: mean return of "
        f"{args.eval_episodes} episodes on reset seeds 5000.. (unseen), deterministic.",
        f"- Total time {time.perf_counter() - t0:.0f} s.",
        "",
        "| variant | neurons | sensory / recurrent synapses | validation MSE, mean (per seed) "
        "| closed-loop return, mean (per seed) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in args.variants:
        rs = [r for r in rows if r["variant"] == name]
        mse = ", ".join(f"{r['val_mse']:.3f}" for r in rs)
        ret = ", ".join(f"{r['closed_loop_return']:.0f}" for r in rs)
        lines.append(
            f"| {name} | {rs[0]['neurons']} | {rs[0]['sensory_synapses']} / {rs[0]['recurrent_synapses']} | "
            f"{np.mean([r['val_mse'] for r in rs]):.3f} ({mse}) | "
            f"{np.mean([r['closed_loop_return'] for r in rs]):.0f} ({ret}) |"
        )
    emit_report("\n".join(lines) + "\n", rows, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
