"""Training diagnostics of recurrent PPO policies (liquid or sb3-contrib's LSTM): why does one learn slower?

:class:`RecurrentDiagnostics` is an sb3 callback that writes one CSV row per rollout (and the same numbers to
the model's logger, so TensorBoard shows them) with

- **gradient norms per parameter group** (before clipping, mean and max over the minibatches of the update
  that preceded the rollout; groups from :func:`parameter_group`: perception, actor sensory synapses / input
  weights, actor recurrent synapses, actor time-constant parameters, action head, critic), the total norm
  and the fraction of minibatches whose total norm exceeded ``max_grad_norm`` (clipped);
- the actor circuit's **effective time constants** on the rollout's observations and states: LTC
  ``tau = cm / conductance`` (the cell's ``diagnostics``) in env steps; LSTM ``1 / (1 - f)`` steps from the
  forget gate ``f``; CfC: none (its state is recomputed in closed form every step: no decay constant);
- the **saturation of the LTC's sensory synapses**: the fraction of (sample, synapse) pairs whose sigmoid
  argument ``|sensory_sigma * (x_mapped - sensory_mu)|`` exceeds ``saturation_threshold`` (4: the sigmoid's
  slope is below 1.8% of its peak there), and the same for the recurrent synapses;
- the **value function's error** on the rollout: explained variance of the returns by the values (as sb3
  logs it) and the RMSE, both in the units the critic is trained on (normalised rewards under
  ``VecNormalize``);
- the **relative update size per group**, ``||theta - theta_prev|| / ||theta_prev||`` over the update that
  preceded the rollout (with Adam the step size hardly depends on the gradient's norm, so this, not the
  gradient norm, says how fast a group's parameters move);
- the **policy's entropy** (nats, mean over the sampled rollout steps; the action distribution the actor
  gives with the states it had then): how much the policy still explores. With sparse rewards and no entropy
  bonus it drifts down before the first reward, the faster the higher the rate;
- the mean return of the last training episodes.

No sb3 internals are patched: gradients are read by tensor hooks on the parameters and an optimizer step
pre-hook; the rest comes from the rollout buffer at the end of each rollout.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance
from torch import Tensor, nn

from ltc_control.cells.ltc import LTCCell

__all__ = ["GROUPS", "RecurrentDiagnostics", "parameter_group"]

#: The parameter groups, in CSV order.
GROUPS = (
    "perception",
    "actor_sensory",
    "actor_recurrent",
    "actor_time_constants",
    "action_head",
    "critic",
    "other",
)

_LTC_SENSORY = {"sensory_sigma", "sensory_mu", "sensory_w", "sensory_erev", "input_w", "input_b"}
_LTC_RECURRENT = {"sigma", "mu", "w", "erev"}
_LTC_TAU = {"cm", "gleak", "vleak"}


def parameter_group(name: str) -> str:
    """The diagnostics group of a policy parameter, from its name in ``policy.named_parameters()``.

    Works for :class:`~ltc_control.agents.sb3.LtcPolicy` (LTC, CfC, any wiring) and sb3-contrib's
    ``MlpLstmPolicy``: the actor's controller / ``nn.LSTM`` is split into sensory (input) synapses,
    recurrent synapses and time-constant parameters (LTC ``cm``, ``gleak``, ``vleak``; CfC ``time_a`` /
    ``time_b``); its readout (LTC ``output_*``, CfC ``fc``), ``action_net``, ``log_std`` and the LSTM
    policy's ``mlp_extractor.policy_net`` are the action head; the critic controller / LSTM, value MLP and
    ``value_net`` the critic. The CfC's ``ff1`` / ``ff2`` read ``[x, h]`` in one matrix: they count as
    recurrent (its sensory group is empty).
    """
    parts = name.split(".")
    leaf = parts[-1]
    if parts[0] in ("features_extractor", "pi_features_extractor", "vf_features_extractor"):
        return "perception"
    if parts[0] in ("lstm_critic", "value_net", "critic") or name.startswith("mlp_extractor.value_net"):
        return "critic"
    if parts[0] in ("action_net", "log_std") or name.startswith("mlp_extractor.policy_net"):
        return "action_head"
    if parts[0] != "lstm_actor":
        return "other"
    if parts[1] != "controller":  # sb3-contrib's nn.LSTM: weight_ih_l0 (input), weight_hh_l0 / biases
        return "actor_sensory" if leaf.startswith("weight_ih") else "actor_recurrent"
    if leaf in _LTC_SENSORY:
        return "actor_sensory"
    if leaf in _LTC_RECURRENT:
        return "actor_recurrent"
    if leaf in _LTC_TAU or "time_a" in parts or "time_b" in parts or leaf == "w_tau":
        return "actor_time_constants"
    if leaf.startswith("output_") or "fc" in parts:
        return "action_head"
    return "actor_recurrent"  # CfC ff1 / ff2 / backbone: input and recurrent weights in one matrix


class RecurrentDiagnostics(BaseCallback):
    """Writes the diagnostics above to ``path`` (CSV, one row per rollout) and to the model's logger.

    Args:
        path: the CSV file (its folder is created).
        samples: rollout steps (sampled evenly) used for the time constants and saturation.
        saturation_threshold: ``|argument|`` above which a synapse's sigmoid counts as saturated.
        verbose: sb3 verbosity.
    """

    def __init__(
        self, path: str | Path, samples: int = 512, saturation_threshold: float = 4.0, verbose: int = 0
    ) -> None:
        super().__init__(verbose)
        self.path = Path(path)
        self.samples = int(samples)
        self.threshold = float(saturation_threshold)
        self._minibatch: dict[str, float] = defaultdict(float)
        self._norms: dict[str, list[float]] = defaultdict(list)
        self._handles: list[Any] = []
        self._fields: list[str] | None = None
        self._previous: dict[str, list[Tensor]] | None = None
        self.rows: list[dict[str, float]] = []

    # -------------------------------------------------------------------------------------------- hooks
    def _on_training_start(self) -> None:
        policy = self.model.policy
        for name, param in policy.named_parameters():
            if param.requires_grad:
                group = parameter_group(name)
                self._handles.append(param.register_hook(self._grad_hook(group)))
        self._handles.append(policy.optimizer.register_step_pre_hook(self._on_optimizer_step))

    def _grad_hook(self, group: str) -> Any:
        def hook(grad: Tensor) -> None:
            self._minibatch[group] += float(grad.detach().pow(2).sum())

        return hook

    def _on_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        total = 0.0
        for group in GROUPS:
            sq = self._minibatch.get(group, 0.0)
            total += sq
            if group in self._minibatch:
                self._norms[group].append(math.sqrt(sq))
        self._norms["total"].append(math.sqrt(total))
        self._minibatch.clear()

    def _on_training_end(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_step(self) -> bool:
        return True

    # ------------------------------------------------------------------------------------------ per rollout
    def _on_rollout_end(self) -> None:
        row: dict[str, float] = {"timesteps": float(self.num_timesteps)}
        row.update(self._gradient_stats())
        row.update(self._update_sizes())
        model: Any = self.model  # an on-policy algorithm (rollout_buffer, ep_info_buffer)
        buf = model.rollout_buffer
        values, returns = buf.values.flatten(), buf.returns.flatten()
        row["value_explained_variance"] = float(explained_variance(values, returns))
        row["value_rmse"] = float(np.sqrt(np.mean((values - returns) ** 2)))
        row["returns_std"] = float(np.std(returns))
        episodes = [ep["r"] for ep in model.ep_info_buffer or []]
        row["episode_return_mean"] = float(np.mean(episodes)) if episodes else math.nan
        with torch.no_grad():
            row.update(self._circuit_stats(buf))
        for key, value in row.items():
            if key != "timesteps":
                self.logger.record(f"diag/{key}", value)
        self.rows.append(row)
        self._write(row)

    def _gradient_stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for group in (*GROUPS, "total"):
            norms = self._norms.get(group)
            out[f"grad_{group}_mean"] = float(np.mean(norms)) if norms else math.nan
            out[f"grad_{group}_max"] = float(np.max(norms)) if norms else math.nan
        total = self._norms.get("total")
        max_norm = getattr(self.model, "max_grad_norm", math.inf)
        out["grad_clipped_fraction"] = float(np.mean(np.asarray(total) > max_norm)) if total else math.nan
        out["minibatches"] = float(len(total or []))
        self._norms.clear()
        return out

    def _update_sizes(self) -> dict[str, float]:
        """``||theta - theta_prev|| / ||theta_prev||`` per group since the previous rollout's end."""
        current: dict[str, list[Tensor]] = defaultdict(list)
        for name, param in self.model.policy.named_parameters():
            if param.requires_grad:
                current[parameter_group(name)].append(param.detach().clone())
        out = {f"update_rel_{g}": math.nan for g in GROUPS}
        if self._previous is not None:
            for group, params in current.items():
                prev = self._previous.get(group, [])
                diff = sum(float((p - q).pow(2).sum()) for p, q in zip(params, prev))
                norm = sum(float(q.pow(2).sum()) for q in prev)
                out[f"update_rel_{group}"] = math.sqrt(diff / norm) if norm > 0 else math.nan
        self._previous = dict(current)
        return out

    def _circuit_stats(self, buf: Any) -> dict[str, float]:
        """Time constants and synapse saturation of the actor circuit on sampled rollout steps."""
        policy: Any = self.model.policy
        n_steps, n_envs = buf.observations.shape[:2]
        idx = np.unique(np.linspace(0, n_steps - 1, max(1, self.samples // n_envs)).astype(int))
        obs = torch.as_tensor(buf.observations[idx].reshape(len(idx) * n_envs, *buf.observations.shape[2:]))
        obs = obs.to(policy.device)
        features = policy.extract_features(obs, policy.pi_features_extractor)
        h = torch.as_tensor(buf.hidden_states_pi[idx, 0]).reshape(len(idx) * n_envs, -1).to(policy.device)
        out = {"policy_entropy": self._entropy(buf, idx, obs)}
        out.update({"tau_steps_p10": math.nan, "tau_steps_median": math.nan, "tau_steps_p90": math.nan})
        out.update({"sensory_saturated_fraction": math.nan, "recurrent_saturated_fraction": math.nan})
        actor: Any = policy.lstm_actor
        if isinstance(actor, nn.LSTM):
            # PyTorch's gate order is input, forget, cell, output; the forget gate needs the input and h only
            p = dict(actor.named_parameters())
            gates = (
                features @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
            )
            forget = torch.sigmoid(gates.chunk(4, dim=-1)[1])
            out.update(_quantiles(1.0 / (1.0 - forget).clamp_min(1e-6)))
            return out
        cell = getattr(getattr(actor, "controller", None), "cell", None)
        if not isinstance(cell, LTCCell):
            return out
        state = h[:, : cell.state_size]
        dt = float(getattr(actor, "dt", 1.0))
        diag = cell.diagnostics(features, state, dt)
        out.update(_quantiles(diag["tau"] / dt))
        params = cell.effective_parameters()
        x = cell.map_inputs(features)
        sens_arg = params["sensory_sigma"] * (x.unsqueeze(-1) - params["sensory_mu"])  # (B, S, N)
        out["sensory_saturated_fraction"] = _saturated(sens_arg, cell.sensory_sparsity_mask, self.threshold)
        rec_arg = params["sigma"] * (state.unsqueeze(-1) - params["mu"])  # (B, N, N)
        out["recurrent_saturated_fraction"] = _saturated(rec_arg, cell.sparsity_mask, self.threshold)
        return out

    def _entropy(self, buf: Any, idx: np.ndarray, obs: Tensor) -> float:
        """Mean entropy of the actor's action distribution at rollout steps ``idx`` (all envs), each with the
        recurrent state it had at that step."""
        policy: Any = self.model.policy
        n = obs.shape[0]

        def state(array: np.ndarray) -> Tensor:  # (steps, layers, envs, H) -> (layers, steps * envs, H)
            picked = torch.as_tensor(array[idx]).transpose(0, 1)
            return picked.reshape(picked.shape[0], n, -1).to(policy.device)

        starts = torch.as_tensor(buf.episode_starts[idx]).reshape(n).float().to(policy.device)
        distribution, _ = policy.get_distribution(
            obs, (state(buf.hidden_states_pi), state(buf.cell_states_pi)), starts
        )
        return float(distribution.entropy().float().mean())

    def _write(self, row: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = self._fields is None
        fields = self._fields = list(row) if self._fields is None else self._fields
        with self.path.open("w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def _quantiles(tau: Tensor) -> dict[str, float]:
    q = torch.quantile(tau.flatten().float(), torch.tensor([0.1, 0.5, 0.9], device=tau.device))
    return {"tau_steps_p10": float(q[0]), "tau_steps_median": float(q[1]), "tau_steps_p90": float(q[2])}


def _saturated(argument: Tensor, mask: Tensor, threshold: float) -> float:
    """Fraction of (sample, existing synapse) pairs with ``|argument| > threshold``."""
    present = (mask != 0).expand_as(argument)
    if not bool(present.any()):
        return math.nan
    return float((argument.abs() > threshold)[present].float().mean())
