"""Re-label the suite's liquid run records after a change of ``LtcPolicy``'s defaults.

A record says which defaults it was made with (``liquid_defaults_sha256``) and which policy kwargs it added
(``config.liquid_policy_kwargs``); the tables refuse records of other defaults. When the defaults change, a
record made under the old ones is still a valid run of *some* configuration: the old defaults written out as
kwargs, plus its own. This script rewrites each such record as a record of the new defaults with the kwargs
that give the same policy, moves it to the folder of those kwargs (the suite's own folder when they are
empty, else ``ablation/<slug>``), and keeps the original files under ``--archive``.

Nothing is re-labelled on faith. For every record the policy the new kwargs build for the task's spaces must
load the run's saved policy weights strictly (same modules, names and shapes) and match the record's
parameter and synapse counts; otherwise the record is left where it is and named.

The defaults changes so far (issue #16), each an entry of ``OLD_DEFAULTS`` (the old values as kwargs):

1. 2026-12-06: ``controller=None`` was ``ControllerConfig()`` (the 19-neuron NCP) at ``controller_lr_scale``
   1; it became :func:`~ltc_control.agents.sb3.default_controller` (a dense 16-neuron LTC) at a scale of 5
   (``DEFAULT_CONTROLLER_LR_SCALE``; 1 whenever a controller is given).
2. 2026-12-06, later: the scale of 5 became a continuous-action default only
   (:func:`~ltc_control.agents.sb3.default_controller_lr_scale`: 1 with discrete actions). Records of
   ``Box`` tasks keep their kwargs; an LTC run of a discrete task with no controller given gets
   ``controller_lr_scale: 5.0``.
3. 2026-12-06, later still: the default controller with discrete actions got ``dt`` 0.1
   (:data:`~ltc_control.agents.sb3.DEFAULT_DISCRETE_DT`; 1 before). Records of ``Box`` tasks and of the CfC
   variant keep their kwargs; an LTC run of a discrete task with no controller given gets the old controller
   written out (``dt`` 1).
4. 2026-12-07: ``action_squash="auto"`` with ``Box(-1, 1)`` actions and the default controller became
   ``"tanh_sample"`` (:func:`~ltc_control.agents.sb3.default_action_squash`; the sample squashed, not the
   mean); every earlier era squashed the mean (``"tanh"``) for ``Box(-1, 1)`` whatever the controller.
   Records of such tasks get ``action_squash: tanh`` unless the kwargs they end with give a controller
   (today's rule squashes the mean then too) or name a squash.
5. 2026-12-07, later: ``mean_limit`` (None, an unbounded pre-tanh mean) became ``"auto"``
   (:func:`~ltc_control.agents.sb3.default_mean_limit`: 5 whenever the sample is squashed, ``tanh_sample``).
   Every earlier era was unbounded: a record whose policy squashes the sample gets ``mean_limit: null``
   unless its kwargs name a limit (the candidate's ``mean_limit: 5.0`` records become records of today's
   defaults); records of other squashes (the mean's ``tanh``, discrete actions) keep their kwargs.

Records with no saved weights (a run that diverged keeps none; the compact copies committed under
``experiments/results/records`` hold only the JSON) are checked by their parameter and synapse counts alone,
and their label says so.

Usage::

    .venv/bin/python experiments/bench/rl_relabel.py --runs-dir runs/rl_benchmark/rl_novel_suite \\
        --archive runs/rl_benchmark/rl_novel_suite_archive_ncp_defaults [--dry-run]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_bench import (  # noqa: E402
    _DEFAULTS_BEFORE_THE_FIELD,
    COUNTS_ONLY,
    _jsonable,
    defaults_policy_kwargs,
    liquid_defaults_digest,
)
from rl_suite import SUITES_DIR, SuiteConfig  # noqa: E402

from ltc_control.agents.sb3 import _motor_size  # noqa: E402
from ltc_control.config import load_yaml  # noqa: E402
from ltc_control.controllers import ControllerConfig  # noqa: E402
from ltc_control.runs import atomic_write_json  # noqa: E402

#: The digest of the defaults of change 2 (the dense LTC at 5x for every action space).
_DEFAULTS_LR5_EVERYWHERE = "8efd2db87ea6fb35d8e305a4805a900cb0a5db5f6c81ae7ea66c67a0547249ac"
#: The digest of the defaults that change 3 replaced (the dense LTC at dt 1 for every action space).
_DEFAULTS_DT1_EVERYWHERE = "e1385ab34f7e43352c84bb5a07fd77b247fd0a7ad865264bbbc6b300e9abb5a3"
#: The digest of the defaults that change 4 replaced (the Gaussian mean squashed for every ``Box(-1, 1)``).
_DEFAULTS_TANH_MEAN = "945bb971ca1145503cdb9fea31b76453d4282e3d058a4a281790fcc8860e8655"
#: The digest of the defaults that change 5 replaced (``tanh_sample`` with an unbounded pre-tanh mean).
_DEFAULTS_UNBOUNDED_MEAN = "dd9fc97e4fa0c8b0bd382ef9afdbd9ee581c9c6d69b32e3dd08774ec06b82ee2"


def _ncp_defaults(model: str, run_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
    return {
        "controller": {"kind": "ltc"},
        "controller_lr_scale": 1.0,
        **_tanh_mean_defaults(model, run_kwargs, action_space),
    }


def _lr5_everywhere_defaults(model: str, run_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
    given = model == "cfc" or "controller" in run_kwargs  # the CfC variant always passes a controller
    out = {"controller_lr_scale": 1.0 if given else 5.0}
    return {**out, **_dt1_everywhere_defaults(model, run_kwargs, action_space)}


def _dt1_everywhere_defaults(model: str, run_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
    from gymnasium import spaces

    from ltc_control.agents.sb3 import default_controller

    if model == "cfc" or "controller" in run_kwargs or isinstance(action_space, spaces.Box):
        return _tanh_mean_defaults(model, run_kwargs, action_space)
    units = default_controller(_motor_size(action_space)).wiring.units
    return {"controller": {"kind": "ltc", "wiring": {"preset": "fully_connected", "units": units}, "dt": 1.0}}


def _tanh_mean_defaults(model: str, run_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
    from ltc_control.agents.sb3 import default_action_squash

    # every earlier era squashed the mean wherever today's rule squashes at all (Box(-1, 1)): today's rule
    # with a given controller is exactly that
    given = run_kwargs.get("action_squash", "auto")
    if given != "auto" or default_action_squash(action_space, True) != "tanh":
        return {}
    return {"action_squash": "tanh"}


#: files kept beside a record, same stem (weights, VecNormalize statistics, rl_stochastic_eval's cache)
_SIBLINGS = (".zip", ".vecnormalize.pkl", ".sampled_eval.json")


def _unbounded_mean_defaults(model: str, run_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
    return {}  # only the bound changed: written out by _unbounded (below) for every era


def _unbounded(
    era: Callable[[str, dict[str, Any], Any], dict[str, Any]],
) -> Callable[[str, dict[str, Any], Any], dict[str, Any]]:
    """``era`` with change 5 written out too: every era before it left the pre-tanh mean unbounded, so a run
    whose policy squashed the sample (its own ``action_squash`` or its era's, else today's rule) gets
    ``mean_limit: None`` unless its kwargs name a limit."""
    from ltc_control.agents.sb3 import default_action_squash

    @functools.wraps(era)
    def written_out(model: str, run_kwargs: dict[str, Any], action_space: Any) -> dict[str, Any]:
        out = era(model, run_kwargs, action_space)
        merged = {**out, **run_kwargs}
        squash = merged.get("action_squash", "auto")
        if squash == "auto":
            squash = default_action_squash(action_space, "controller" in merged or model == "cfc")
        if squash == "tanh_sample" and "mean_limit" not in run_kwargs:
            out["mean_limit"] = None
        return out

    return written_out


#: digest of old defaults -> ``(model, the run's kwargs, the task's action space) -> those defaults written
#: out as policy kwargs`` (records made before the digest field existed read as the first digest, as in
#: rl_bench)
OLD_DEFAULTS: dict[str, Callable[[str, dict[str, Any], Any], dict[str, Any]]] = {
    _DEFAULTS_BEFORE_THE_FIELD: _unbounded(_ncp_defaults),
    _DEFAULTS_LR5_EVERYWHERE: _unbounded(_lr5_everywhere_defaults),
    _DEFAULTS_DT1_EVERYWHERE: _unbounded(_dt1_everywhere_defaults),
    _DEFAULTS_TANH_MEAN: _unbounded(_tanh_mean_defaults),
    _DEFAULTS_UNBOUNDED_MEAN: _unbounded(_unbounded_mean_defaults),
}


def new_kwargs(
    model: str, old_kwargs: dict[str, Any], old_defaults: dict[str, Any], action_space: Any
) -> dict[str, Any]:
    """The kwargs that, on top of today's defaults, give the policy ``old_kwargs`` gave on the old ones.

    ``old_defaults``: the old defaults written out as kwargs (an ``OLD_DEFAULTS`` entry applied to ``model``
    and ``old_kwargs``). Keys equal to today's resolved defaults for ``action_space`` are dropped, so a record
    of today's defaults gets ``{}``.
    """
    from gymnasium import spaces

    from ltc_control.agents.sb3 import (
        default_action_squash,
        default_controller,
        default_controller_lr_scale,
        default_mean_limit,
    )
    from ltc_control.agents.sb3_modules import as_config

    motor = _motor_size(action_space)
    merged = {**old_defaults, **old_kwargs}
    out = dict(old_kwargs)
    if "controller" in merged or model == "cfc":  # else the LTC had default_controller(motor), as today
        resolved = defaults_policy_kwargs(model, merged)["controller"]
        controller = as_config(ControllerConfig, resolved, "controller")
        ctrl_kwargs = dict(merged.get("controller") or {})
        if model == "cfc":
            ctrl_kwargs.pop("kind", None)  # rl_bench adds it again
        out["controller"] = ctrl_kwargs
        discrete = not isinstance(action_space, spaces.Box)
        if model == "ltc" and controller == default_controller(motor, discrete=discrete):
            out.pop("controller")
        elif model == "cfc" and not ctrl_kwargs:
            out.pop("controller")
    # today's rule for the task's actions (the CfC variant always passes a controller)
    default_lr = default_controller_lr_scale(action_space, "controller" in out or model == "cfc")
    # an era whose rate rule was today's writes no rate: the run had today's rule for its own kwargs
    given_then = "controller" in old_kwargs or model == "cfc"
    lr = float(merged.get("controller_lr_scale", default_controller_lr_scale(action_space, given_then)))
    if lr == default_lr:
        out.pop("controller_lr_scale", None)
    else:
        out["controller_lr_scale"] = lr
    # the squash the run had: its own, else its era's written out (None: today's rule was its rule)
    squash = old_kwargs.get("action_squash", "auto")
    squash = old_defaults.get("action_squash") if squash == "auto" else squash
    today_squash = default_action_squash(action_space, "controller" in out or model == "cfc")
    if squash is None or squash == today_squash:
        out.pop("action_squash", None)
    else:
        out["action_squash"] = squash
    # the bound the run had: its own, else its era's written out (absent: none to bound, as today)
    limit = old_kwargs.get("mean_limit", old_defaults.get("mean_limit"))
    if limit == default_mean_limit(out.get("action_squash", today_squash)):
        out.pop("mean_limit", None)
    else:
        out["mean_limit"] = limit
    return out


@functools.cache
def _spaces(env_id: str) -> tuple[Any, Any]:
    from ltc_control.agents.sb3_envs import make_novel_env

    env = make_novel_env(env_id)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def verify(record: dict[str, Any], kwargs: dict[str, Any], zip_path: Path) -> str:
    """Raise ``ValueError`` unless the policy ``kwargs`` build (today's defaults) is the record's policy;
    return what was checked (the weights too where ``zip_path`` exists, else the counts alone)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    from ltc_control.agents.sb3 import LtcPolicy
    from ltc_control.controllers import count_synapses

    obs_space, act_space = _spaces(record["env_id"])
    use_sde = bool(record["config"]["ppo"].get("use_sde", False))  # gSDE sizes log_std from the latent
    policy_kwargs = defaults_policy_kwargs(record["model"], kwargs)
    policy = LtcPolicy(obs_space, act_space, lambda _: 1e-3, use_sde=use_sde, **policy_kwargs)
    total = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    if total != record["policy_parameters"]:
        raise ValueError(f"{total} policy parameters, the record has {record['policy_parameters']}")
    synapses = int(count_synapses(policy.controller) or 0)
    if "actor_synapses" in record and synapses != record["actor_synapses"]:
        raise ValueError(f"{synapses} actor synapses, the record has {record['actor_synapses']}")
    if not zip_path.exists():
        why = "the run diverged" if record.get("diverged") else "only the record was kept"
        return f"{COUNTS_ONLY} ({why}): today's defaults + these kwargs give the record's parameter count"
    _, params, _ = load_from_zip_file(zip_path, device="cpu", load_data=False)
    if params is None or "policy" not in params:
        raise ValueError(f"{zip_path} holds no policy weights")
    try:
        policy.load_state_dict(cast(dict[str, Any], params["policy"]), strict=True)
    except RuntimeError as exc:  # missing / unexpected keys, other shapes
        raise ValueError(f"the saved weights do not fit: {exc}") from None
    return "today's defaults + these kwargs load the run's weights strictly; counts match"


def plan_digest_check(digest: str) -> Callable[[str, dict[str, Any], Any], dict[str, Any]]:
    """The old defaults (as kwargs, per model and run kwargs) of records with ``digest``; ``ValueError`` for
    defaults not listed."""
    if digest not in OLD_DEFAULTS:
        raise ValueError(
            f"made with defaults {digest[:12]}..., which this script does not know: add them to OLD_DEFAULTS"
        )
    return OLD_DEFAULTS[digest]


def plan(runs_dir: Path, suite: SuiteConfig) -> list[tuple[Path, dict[str, Any], Path]]:
    """``(record, new kwargs, new path)`` for each liquid record of other defaults under ``runs_dir``."""
    today = liquid_defaults_digest()
    out = []
    for path in sorted(runs_dir.rglob("*.json")):
        if "__random__" in path.name:
            continue
        rec = json.loads(path.read_text())
        if rec.get("model") not in ("ltc", "cfc"):
            continue
        digest = rec.get("liquid_defaults_sha256", _DEFAULTS_BEFORE_THE_FIELD)
        if digest == today:
            continue
        try:
            old_defaults = plan_digest_check(digest)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        _, act_space = _spaces(rec["env_id"])
        old_kwargs = dict(rec["config"].get("liquid_policy_kwargs") or {})
        defaults = old_defaults(rec["model"], old_kwargs, act_space)
        kwargs = new_kwargs(rec["model"], old_kwargs, defaults, act_space)
        records_dir = Path(dataclasses.replace(suite, liquid_policy_kwargs=kwargs).records_dir)
        out.append((path, kwargs, records_dir / path.name))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/rl_benchmark/rl_novel_suite"))
    parser.add_argument("--archive", type=Path, required=True, help="where the original files are kept")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    args = parser.parse_args(argv)
    suite = load_yaml(SuiteConfig, SUITES_DIR / "rl_novel_suite.yaml")
    tuning = tuple(t.env_id for t in suite.tasks if not t.held_out)
    suite = dataclasses.replace(suite, runs_dir=str(args.runs_dir), only_tasks=tuning)
    moves = plan(args.runs_dir, suite)
    checks: dict[Path, str] = {}
    for src, kwargs, dst in moves:
        rec = json.loads(src.read_text())
        zip_path = src.with_suffix(".zip")
        try:
            checks[src] = verify(rec, kwargs, zip_path)
        except ValueError as exc:
            raise SystemExit(f"{src}: not re-labelled: {exc}") from None
        what = "verified" if zip_path.exists() else "counts only: no saved weights"
        where = f"{src.relative_to(args.runs_dir)} -> {dst.relative_to(args.runs_dir)}"
        print(f"{where}  kwargs {kwargs}  ({what})")
    if args.dry_run or not moves:
        print(f"{len(moves)} records to re-label" + (" (dry run: nothing changed)" if args.dry_run else ""))
        return 0
    if args.archive.exists():
        raise SystemExit(f"{args.archive} exists; choose a new --archive folder")
    # 1. every original file (record, weights, VecNormalize statistics) to the archive
    staged = []
    for src, kwargs, dst in moves:
        siblings = [src, *(src.with_suffix(suffix) for suffix in _SIBLINGS)]
        for f in siblings:
            if f.exists():
                target = args.archive / f.relative_to(args.runs_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(f), target)
        staged.append((args.archive / src.relative_to(args.runs_dir), kwargs, dst, checks[src]))
    # 2. the re-labelled copies in their new folders
    today = liquid_defaults_digest()
    for old, kwargs, dst, check in staged:
        if dst.exists():
            raise SystemExit(f"{dst} exists (a record of today's defaults): move it aside and run again")
        rec = json.loads(old.read_text())
        dst.parent.mkdir(parents=True, exist_ok=True)
        saved = {}
        for key, suffix in (("model", ".zip"), ("vecnormalize", ".vecnormalize.pkl")):
            src_file = old.with_suffix(suffix)
            if src_file.exists():
                shutil.copy2(src_file, dst.with_suffix(suffix))
                saved[key] = str(dst.with_suffix(suffix))
        cache = old.with_suffix(".sampled_eval.json")  # rl_stochastic_eval's cache of this run's weights
        if cache.exists():
            shutil.copy2(cache, dst.with_suffix(".sampled_eval.json"))
        label = {
            "from": str(old),
            "from_liquid_defaults_sha256": rec.get("liquid_defaults_sha256", _DEFAULTS_BEFORE_THE_FIELD),
            "from_liquid_policy_kwargs": rec["config"].get("liquid_policy_kwargs", {}),
            "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "check": check,
        }
        if "relabelled" in rec:  # re-labelled before, under a defaults change of its own: keep that too
            label["previous"] = rec["relabelled"]
        rec["relabelled"] = label
        rec["liquid_defaults_sha256"] = today
        rec["config"]["liquid_policy_kwargs"] = _jsonable(kwargs)
        rec["config"]["runs_dir"] = str(dst.parent)
        rec["saved"] = saved
        atomic_write_json(dst, rec)
    print(f"re-labelled {len(staged)} records; originals in {args.archive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
