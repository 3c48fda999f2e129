"""Replays one suite run with checks for the first non-finite value in training, and writes what led to it.

A RecurrentPPO run that diverges stops deep inside torch (``Expected parameter loc ... to satisfy the
constraint Real()``) with no sign of where the first NaN or inf came from. This script trains the same run as
the suite (the suite's config, model and seed: the same code path, so on the same machine the same numbers)
with read-only checks that do not change the computation:

- every ``evaluate_actions`` output (values, log-probabilities, entropy) must be finite, and an exception in
  it is caught;
- every optimizer step's gradients (before sb3 clips their norm, which would spread one NaN to all of them,
  and before the step) and parameters (after it) must be finite.

At the first failure it writes ``<out>/first_nonfinite.pt`` (the parameters before the failing step, the
gradients, the last minibatch, the failing names) and ``<out>/first_nonfinite.md`` (a readable summary), and
stops. Every rollout it appends per-parameter statistics (max |value|, its name, log_std, the policy's
gSDE std range) to ``<out>/rollouts.csv``, so the drift before the failure can be read.

    .venv/bin/python experiments/bench/rl_nan_probe.py --suite experiments/configs/rl_novel_hc1m_suite.yaml \\
        --task HalfCheetahNoVel-v5 --model ltc --seed 0 --out runs/nan_probe/hc1m_ltc0
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = ROOT / "experiments" / "configs" / "rl_novel_suite.yaml"


class NonFinite(RuntimeError):
    """Raised by the probe's checks at the first non-finite value."""


def _finite(t: Any) -> bool:
    import torch

    return bool(torch.isfinite(t).all()) if isinstance(t, torch.Tensor) else math.isfinite(float(t))


def _tensor_summary(name: str, t: Any) -> str:
    import torch

    t = t.detach().float()
    bad = ~torch.isfinite(t)
    ok = t[~bad]
    rng = f"{float(ok.min()):.4g} .. {float(ok.max()):.4g}" if ok.numel() else "none finite"
    return f"| {name} | {tuple(t.shape)} | {int(bad.sum())} | {rng} |"


class Probe:
    """The checks, the per-rollout statistics and the dump at the first failure."""

    def __init__(self, model: Any, out: Path) -> None:
        self.model, self.out = model, out
        self.names = {id(p): n for n, p in model.policy.named_parameters()}
        self.last_batch: Any = None
        self.last_targets: dict[str, Any] = {}
        self.last_call: Any = None
        self.last_params: dict[str, Any] = {}
        self.steps = 0
        out.mkdir(parents=True, exist_ok=True)
        self.csv_path = out / "rollouts.csv"
        self.csv_fields = [
            "timesteps",
            "optimizer_steps",
            "max_abs_param",
            "max_abs_name",
            "log_std_min",
            "log_std_max",
            "param_rms_by_group",
        ]
        with self.csv_path.open("w", newline="") as f:
            csv.writer(f).writerow(self.csv_fields)

    # ------------------------------------------------------------------------------------------- hooks
    def install(self) -> list[Any]:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        policy = self.model.policy
        original = policy.evaluate_actions

        def evaluate_actions(obs: Any, actions: Any, lstm_states: Any, episode_starts: Any) -> Any:
            self.last_batch = {"obs": obs, "actions": actions, "episode_starts": episode_starts}
            self.last_call = (original, lstm_states)
            for part in ("pi", "vf"):  # RNNStates: (hidden, cell) per part
                for i, t in enumerate(getattr(lstm_states, part, ()) or ()):
                    self.last_batch[f"lstm_states.{part}.{i}"] = t
            try:
                out = original(obs, actions, lstm_states, episode_starts)
            except (ValueError, FloatingPointError) as exc:  # torch's check or TrainingDivergedError
                self.fail("evaluate_actions raised", str(exc).splitlines()[0], {})
            for label, value in zip(("values", "log_prob", "entropy"), out):
                if value is not None and not _finite(value):
                    self.fail("evaluate_actions gave a non-finite " + label, "", {label: value})
            return out

        policy.evaluate_actions = evaluate_actions

        def pre(optimizer: Any, args: Any, kwargs: Any) -> None:
            if not any(id(p) in self.names for g in optimizer.param_groups for p in g["params"]):
                return
            bad = {
                self.names.get(id(p), "?"): p.grad
                for g in optimizer.param_groups
                for p in g["params"]
                if p.grad is not None and not _finite(p.grad)
            }
            self.last_params = {n: p.detach().clone() for n, p in self.model.policy.named_parameters()}
            if bad:
                self.fail("non-finite gradients before an optimizer step", ", ".join(sorted(bad)), bad)

        def post(optimizer: Any, args: Any, kwargs: Any) -> None:
            if not any(id(p) in self.names for g in optimizer.param_groups for p in g["params"]):
                return
            self.steps += 1
            bad = {n: p for n, p in self.model.policy.named_parameters() if not _finite(p)}
            if bad:
                self.fail("non-finite parameters after an optimizer step", ", ".join(sorted(bad)), bad)

        # The gradients are checked before sb3 clips their norm too: one NaN entry makes the total norm NaN
        # and the clipping spreads it to every gradient, which would hide where it came from.
        original_clip = torch.nn.utils.clip_grad_norm_

        def clip_grad_norm_(parameters: Any, *args: Any, **kwargs: Any) -> Any:
            params = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
            if any(id(q) in self.names for q in params):
                bad = {
                    self.names.get(id(q), "?"): q.grad
                    for q in params
                    if q.grad is not None and not _finite(q.grad)
                }
                if bad:
                    self.last_params = {
                        n: q.detach().clone() for n, q in self.model.policy.named_parameters()
                    }
                    self.fail("non-finite gradients before clipping", ", ".join(sorted(bad)), bad)
            return original_clip(params, *args, **kwargs)

        torch.nn.utils.clip_grad_norm_ = clip_grad_norm_

        # The minibatch's PPO targets (old log-probs, advantages, returns, mask): to recompute its loss.
        buffer = self.model.rollout_buffer
        original_get = buffer.get

        def get(*args: Any, **kwargs: Any) -> Any:
            for samples in original_get(*args, **kwargs):
                self.last_targets = {
                    k: getattr(samples, k)
                    for k in ("old_values", "old_log_prob", "advantages", "returns", "mask")
                    if hasattr(samples, k)
                }
                yield samples

        buffer.get = get

        class _Restore:
            def remove(self) -> None:
                torch.nn.utils.clip_grad_norm_ = original_clip

        return [
            register_optimizer_step_pre_hook(pre),
            register_optimizer_step_post_hook(post),
            _Restore(),
        ]

    def on_rollout(self, timesteps: int) -> None:
        import torch

        best, best_name = 0.0, ""
        groups: dict[str, list[float]] = {}
        for name, p in self.model.policy.named_parameters():
            v = float(p.detach().abs().max()) if p.numel() else 0.0
            if v > best:
                best, best_name = v, name
            key = name.rsplit(".", 1)[-1]
            groups.setdefault(key, []).append(float(p.detach().pow(2).mean().sqrt()))
        log_std = getattr(self.model.policy, "log_std", None)
        lo = float(log_std.min()) if isinstance(log_std, torch.Tensor) else float("nan")
        hi = float(log_std.max()) if isinstance(log_std, torch.Tensor) else float("nan")
        rms = ";".join(f"{k}={max(v):.3g}" for k, v in sorted(groups.items()))
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(
                [timesteps, self.steps, f"{best:.6g}", best_name, f"{lo:.4g}", f"{hi:.4g}", rms]
            )

    def _explain(self) -> list[str]:
        """The failing minibatch re-evaluated with the parameters before the step: the PPO log-ratios and
        ratios (a ratio past float range makes the loss, then every actor gradient, non-finite) and the
        share of stored actions at the bounds. Empty when the batch or its targets are missing."""
        import torch

        targets, batch = self.last_targets, self.last_batch or {}
        if self.last_call is None or "old_log_prob" not in targets or "obs" not in batch:
            return []
        original, states = self.last_call
        with torch.no_grad():
            _, log_prob, _ = original(batch["obs"], batch["actions"], states, batch["episode_starts"])
        mask = targets["mask"] > 1e-8 if "mask" in targets else torch.ones_like(log_prob, dtype=torch.bool)
        diff = (log_prob - targets["old_log_prob"])[mask]
        ratio = torch.exp(diff)
        actions = batch["actions"][mask]
        old = targets["old_log_prob"][mask]
        new, bad = log_prob[mask], int((~torch.isfinite(ratio)).sum())
        at_bound = float((actions.abs() >= 1 - 1e-6).float().mean())
        exact = float((actions.abs() == 1).float().mean())
        return [
            f"- the minibatch re-evaluated before the step: log-probabilities {float(new.min()):.4g} .. "
            f"{float(new.max()):.4g} (at collection {float(old.min()):.4g} .. {float(old.max()):.4g}); "
            f"log-ratio {float(diff.min()):.4g} .. {float(diff.max()):.4g}; ratios not finite: {bad} of "
            f"{diff.numel()}",
            f"- stored actions within 1e-6 of +-1: {at_bound:.3f} of the entries (exactly +-1: {exact:.3f})",
        ]

    # ------------------------------------------------------------------------------------------- dump
    def fail(self, what: str, detail: str, tensors: dict[str, Any]) -> None:
        import torch

        batch = {**(self.last_batch or {}), **self.last_targets}
        grads: dict[str, Any] = {
            n: p.grad.detach().clone() for n, p in self.model.policy.named_parameters() if p.grad is not None
        }
        saved_batch: dict[str, Any] = {
            k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()
        }
        dump: dict[str, Any] = {
            "what": what,
            "detail": detail,
            "timesteps": int(self.model.num_timesteps),
            "optimizer_steps": self.steps,
            "params_before_step": self.last_params,
            "params_now": {n: p.detach().clone() for n, p in self.model.policy.named_parameters()},
            "grads": grads,
            "batch": saved_batch,
            "bad": {k: v.detach().clone() for k, v in tensors.items()},
        }
        torch.save(dump, self.out / "first_nonfinite.pt")
        lines = [
            f"# First non-finite value: {what}",
            "",
            f"- at {dump['timesteps']:,} env steps, after {self.steps:,} optimizer steps",
            f"- detail: {detail or '-'}",
            "",
            "| tensor | shape | non-finite entries | finite range |",
            "| --- | --- | --- | --- |",
        ]
        lines[3:3] = self._explain()
        lines += [_tensor_summary(f"bad: {k}", v) for k, v in tensors.items()]
        lines += [_tensor_summary(f"param before step: {k}", v) for k, v in self.last_params.items()]
        lines += [_tensor_summary(f"grad: {k}", v) for k, v in grads.items()]
        lines += [
            _tensor_summary(f"batch: {k}", v) for k, v in saved_batch.items() if isinstance(v, torch.Tensor)
        ]
        (self.out / "first_nonfinite.md").write_text("\n".join(lines) + "\n")
        raise NonFinite(f"{what} at {dump['timesteps']:,} env steps ({detail}); see {self.out}")


def main(argv: list[str] | None = None) -> int:
    import torch
    from rl_bench import make_model
    from rl_suite import SuiteConfig
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm.auto import tqdm

    from ltc_control.config import load_yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", type=Path, default=DEFAULT_SUITE, help="the suite's YAML config")
    p.add_argument("--task", required=True, help="env id of one of the suite's tasks")
    p.add_argument("--model", required=True, choices=["ltc", "cfc", "lstm"])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--timesteps", type=int, default=None, help="stop earlier than the suite's budget")
    p.add_argument("--out", type=Path, required=True, help="folder for rollouts.csv and the dump")
    args = p.parse_args(argv)
    if not args.suite.is_file():
        p.error(f"no suite config at {args.suite}")
    config = load_yaml(SuiteConfig, args.suite)
    tasks = {t.env_id: t for t in config.tasks}
    if args.task not in tasks:
        p.error(f"--task {args.task!r} is not in the suite; its tasks: {sorted(tasks)}")
    bench = config.benchmark(tasks[args.task])
    budget = bench.timesteps if args.timesteps is None else args.timesteps
    if budget < 1:
        p.error("--timesteps must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(bench.torch_threads)
    model = make_model(bench, args.model, args.seed)
    probe = Probe(model, args.out)
    handles = probe.install()
    bar = tqdm(total=budget, desc=f"{args.model} seed {args.seed} (probe)", unit="step", mininterval=10.0)

    class _Rollouts(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(self.num_timesteps - bar.n)
            return True

        def _on_rollout_start(self) -> None:
            probe.on_rollout(self.num_timesteps)

    t0 = time.perf_counter()
    status = 0
    try:
        model.learn(budget, callback=_Rollouts())
        print(f"no non-finite value in {budget:,} steps ({time.perf_counter() - t0:.0f} s)")
    except NonFinite as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        status = 1
    except FloatingPointError as exc:  # TrainingDivergedError outside the update (collecting a rollout)
        try:
            probe.fail("the policy raised while collecting", str(exc).splitlines()[0], {})
        except NonFinite as stop:
            print(f"stopped: {stop}", file=sys.stderr)
        status = 1
    finally:
        bar.close()
        for h in handles:
            h.remove()
    return status


if __name__ == "__main__":
    sys.exit(main())
