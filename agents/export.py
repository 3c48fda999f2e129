"""``ltc-control export``: a checkpoint (or an sb3 ``RecurrentPPO`` zip) -> ONNX / ``torch.export`` files,
with the parity check on a closed-loop rollout in the lane-keeping env.

The export itself is :func:`ltc_control.export.export_policy` (the core, which imports no env); this module
adds what needs the env: :func:`~ltc_control.agents.export_rollout.closed_loop_trace` drives the policy in
its env for 1,000 steps with an irregular ``dt`` (episodes restart on new roads when they end) and records
the inputs and the PyTorch policy's actions and states, which the exported files must then reproduce within
1e-5.

Usage::

    ltc-control export runs/<run>/checkpoints/best --out exported/ncp
    ltc-control export ppo_ltc.zip --out exported/ppo --format onnx --opset 18

Every failure (a checkpoint that does not load, an unsupported opset or format, a failed parity check) prints
one line ``ltc-control export: error: ...`` and exits with status 2, leaving no files behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ltc_control.agents.export_rollout import PARITY_SEED, closed_loop_trace, default_env
from ltc_control.export import (
    DEFAULT_OPSET,
    DEFAULT_TOLERANCE,
    EXPORT_FORMATS,
    ExportError,
    ExportResult,
    export_policy,
    load_for_export,
    synthetic_trace,
)

__all__ = ["closed_loop_trace", "export_checkpoint", "export_main"]


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    formats: str | Sequence[str] = EXPORT_FORMATS,
    opset: int = DEFAULT_OPSET,
    steps: int = 1000,
    tolerance: float = DEFAULT_TOLERANCE,
    env: Mapping[str, Any] | None = None,
    seed: int = PARITY_SEED,
) -> ExportResult:
    """Export a checkpoint folder or an sb3 ``RecurrentPPO`` zip, with closed-loop parity.

    Args:
        checkpoint: checkpoint folder (``save_checkpoint``) or ``.zip`` of a ``RecurrentPPO`` with an
            ``LtcPolicy`` / ``CnnLtcPolicy``.
        out: output folder.
        formats: ``"onnx"``, ``"torch-export"`` or both.
        opset: ONNX opset.
        steps: steps of the parity rollout.
        tolerance: parity tolerance.
        env: env override (default: the checkpoint's metadata, else :func:`default_env`).
        seed: first road seed of the parity rollout.

    Raises:
        ExportError: see :func:`ltc_control.export.export_policy`, plus an unloadable source.
    """
    path = Path(checkpoint)
    if path.suffix == ".zip" and path.is_file():
        from ltc_control.agents.sb3_export import export_sb3

        return export_sb3(path, out, formats, opset, steps, tolerance, env, seed)
    # Checked before the (slower) load so a bad opset fails at once.
    from ltc_control.export import check_opset, parse_formats

    if "onnx" in parse_formats(formats):
        check_opset(opset)
    policy, meta_env, source = load_for_export(path)
    spec = default_env(policy, env if env is not None else meta_env)
    if spec is None:
        trace = synthetic_trace(policy, steps=steps, seed=seed)
    else:
        trace = closed_loop_trace(policy, spec, steps=steps, seed=seed)
    return export_policy(
        policy,
        out,
        formats,
        opset,
        trace=trace,
        env=env if env is not None else meta_env,
        source=source,
        tolerance=tolerance,
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ltc-control export",
        description="Export a policy's control step to ONNX (policy.onnx) and torch.export (policy.pt2), "
        "with export.json; parity with the PyTorch policy is checked on a closed-loop rollout.",
    )
    ap.add_argument("checkpoint", help="checkpoint folder, or the .zip of an sb3 RecurrentPPO (LtcPolicy)")
    ap.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    ap.add_argument(
        "--format", default=",".join(EXPORT_FORMATS), help="onnx, torch-export or both (comma list)"
    )
    ap.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    ap.add_argument("--steps", type=int, default=1000, help="steps of the parity rollout (default 1000)")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max |difference| (1e-5)")
    ap.add_argument("--env", default=None, help="env id of the parity rollout (default: the checkpoint's)")
    ap.add_argument("--env-kwargs", default=None, help="env kwargs as JSON (with --env)")
    ap.add_argument("--seed", type=int, default=PARITY_SEED, help="first road seed of the parity rollout")
    return ap


def export_main(argv: Sequence[str] | None = None) -> int:
    """``ltc-control export`` (see the module docstring); returns the exit code (2 on any error)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        env = None
        if args.env is not None:
            env = {"id": args.env, "kwargs": json.loads(args.env_kwargs) if args.env_kwargs else {}}
        elif args.env_kwargs:
            raise ExportError("--env-kwargs needs --env")
        if args.steps < 1:
            raise ExportError(f"--steps must be >= 1, got {args.steps}")
        result = export_checkpoint(
            args.checkpoint, args.out, args.format, args.opset, args.steps, args.tolerance, env, args.seed
        )
    except (ExportError, json.JSONDecodeError) as exc:
        print(f"ltc-control export: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    parity = result.manifest["parity"]
    worst = {k: max(v["max_abs_action"], v["max_abs_state"]) for k, v in parity["results"].items()}
    print(f"wrote {', '.join(str(p) for p in result.files.values())} and export.json to {result.directory}")
    print(
        f"parity over {parity['steps']} steps ({parity['trace']}): "
        + ", ".join(f"{k} max |diff| {v:.2g}" for k, v in worst.items())
    )
    return 0
