"""Run folders and metrics logging.

A run folder makes a run reproducible (rl-baselines3-zoo habit): ``create_run_dir`` makes
``<root>/<env>__<preset>__<seed>__<YYYYmmdd-HHMMSS>/`` holding

- ``config.yaml``: the resolved config (every default filled in),
- ``command.txt``: the command line (shell-quoted argv),
- ``git.txt``: ``commit: <sha>`` and ``dirty: true|false`` of the source checkout, or ``unknown`` outside git,
- ``versions.json``: Python, platform and package versions,

and :class:`MetricsLogger` adds ``metrics.csv`` and TensorBoard event files (``tb/``). Checkpoints, videos
and plots go to sub-folders chosen by their writers.

``metrics.csv`` is *wide*: one row per :meth:`MetricsLogger.log` call, columns ``step``, ``time`` (seconds
since the logger started) and then every metric key in first-seen order; a key missing from a row is an empty
cell. When a new key appears the whole file is rewritten atomically with the wider header, so the file on
disk is always a valid CSV (readable with ``csv.DictReader`` or ``pandas.read_csv``).

The atomic writers (:func:`atomic_open`, :func:`atomic_write_bytes`, ...) live in :mod:`ltc_control.atomic`
and are re-exported here.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ltc_control.atomic import (
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
)
from ltc_control.errors import RunFolderError

__all__ = [
    "MetricsLogger",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "create_run_dir",
    "fsync_dir",
    "git_info",
    "run_dir_name",
    "versions",
]


# -------------------------------------------------------------------------------------------------- run dirs
def _slug(text: str) -> str:
    # Env ids like "LTC/LaneKeeping-v0" contain a slash; keep names portable and unambiguous w.r.t. "__".
    s = re.sub(r"[^A-Za-z0-9.\-]+", "-", str(text)).strip("-")
    return s or "none"


def run_dir_name(env_id: str, preset: str, seed: int, when: datetime | None = None) -> str:
    """The folder name ``<env>__<preset>__<seed>__<YYYYmmdd-HHMMSS>`` (other than ``[A-Za-z0-9.-]`` -> ``-``).

    Args:
        env_id: environment id, e.g. ``"LTC/LaneKeeping-v0"`` (becomes ``LTC-LaneKeeping-v0``).
        preset: preset / experiment name, e.g. ``"ncp_ltc"``.
        seed: the run's seed.
        when: timestamp (local time now when None).
    """
    stamp = (when or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{_slug(env_id)}__{_slug(preset)}__{int(seed)}__{stamp}"


def git_info(path: str | Path | None = None) -> dict[str, str]:
    """Commit and dirty flag of the git checkout containing ``path``; never raises.

    Args:
        path: a file or folder inside the checkout (the ``ltc_control`` package folder when None).

    Returns:
        ``{"commit": sha, "dirty": "true"|"false"}``, or ``{"commit": "unknown", "dirty": "unknown"}`` when
        git is missing, the folder is not in a repository or git fails.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    if where.is_file():
        where = where.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError, ValueError):
        return {"commit": "unknown", "dirty": "unknown"}
    if not re.fullmatch(r"[0-9a-f]{40,64}", sha):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": sha, "dirty": "true" if status.strip() else "false"}


def versions() -> dict[str, str]:
    """Python, platform and installed package versions (``"not installed"`` for missing ones)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in (
        "ltc-control",
        "torch",
        "numpy",
        "gymnasium",
        "mujoco",
        "stable-baselines3",
        "sb3-contrib",
        "safetensors",
        "opencv-python-headless",
        "ncps",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def create_run_dir(
    root: str | Path,
    env_id: str,
    preset: str,
    seed: int,
    config: Any = None,
    argv: Sequence[str] | None = None,
) -> Path:
    """Create a run folder ``<root>/<env>__<preset>__<seed>__<YYYYmmdd-HHMMSS>`` and write its records.

    Writes ``config.yaml`` (the resolved config; ``{}`` when ``config`` is None), ``command.txt``,
    ``git.txt`` and ``versions.json``. If a folder of that name exists (two runs in the same second) a
    ``-1``, ``-2``, ... suffix is added.

    Args:
        root: parent folder of all runs (created if needed).
        env_id: environment id (slashes are replaced, see :func:`run_dir_name`).
        preset: preset / experiment name.
        seed: the run's seed.
        config: the resolved config: a dataclass instance or a plain mapping.
        argv: the command line (``sys.argv`` when None).

    Returns:
        The new folder's path.
    """
    from ltc_control.config import to_yaml

    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    name = run_dir_name(env_id, preset, seed)
    run_dir = base / name
    n = 0
    while True:
        try:
            run_dir.mkdir(parents=False, exist_ok=False)
            break
        except FileExistsError:
            n += 1
            run_dir = base / f"{name}-{n}"
    atomic_write_text(run_dir / "config.yaml", to_yaml(config if config is not None else {}))
    args = list(sys.argv if argv is None else argv)
    atomic_write_text(run_dir / "command.txt", shlex.join(args) + "\n")
    info = git_info()
    atomic_write_text(run_dir / "git.txt", "".join(f"{k}: {v}\n" for k, v in info.items()))
    atomic_write_json(run_dir / "versions.json", versions())
    return run_dir


# --------------------------------------------------------------------------------------------------- metrics
def _as_float(key: str, value: Any) -> float:
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} ({value!r})")
    return float(value)


def _read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of an existing ``metrics.csv``, checked (a resumed run extends it).

    Raises:
        RunFolderError: a damaged file (bad header, a row with too few or too many fields, a value that is
            not a number); the message names the line.
    """
    fix = "restore it from a good copy, or delete it to start a new metrics file"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, restkey="\0extra")
            header = list(reader.fieldnames or [])
            if header[:2] != ["step", "time"] or len(set(header)) != len(header):
                raise RunFolderError(
                    f"{path}: the header must start with step,time (got {header[:3]}); {fix}"
                )
            rows = []
            for row in reader:
                line = reader.line_num
                if "\0extra" in row or any(v is None for v in row.values()):
                    raise RunFolderError(f"{path}, line {line}: wrong number of fields; {fix}")
                try:
                    int(row["step"])
                    for key, value in row.items():
                        if key != "step" and value != "":
                            float(value)
                except ValueError:
                    raise RunFolderError(f"{path}, line {line}: a value is not a number; {fix}") from None
                rows.append(dict(row))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunFolderError(f"{path}: not a readable CSV file ({exc}); {fix}") from exc
    return [c for c in header if c not in ("step", "time")], rows


class MetricsLogger:
    """Scalar metrics to ``metrics.csv`` (wide, see the module doc) and TensorBoard event files.

    Example:
        >>> with MetricsLogger(run_dir) as log:  # doctest: +SKIP
        ...     log.log(100, {"train/loss": 0.25, "train/lr": 3e-4})

    Args:
        run_dir: the run folder; ``metrics.csv`` and ``tb/`` are created inside it.
        tensorboard: also write TensorBoard event files (``torch.utils.tensorboard``).
        filename: name of the CSV file.

    An existing ``metrics.csv`` (a resumed run) is read back and extended, not overwritten.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, filename: str = "metrics.csv") -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / filename
        self._columns: list[str] = []
        self._rows: list[dict[str, str]] = []
        self._start = time.time()
        self._closed = False
        if self.csv_path.exists():
            self._columns, self._rows = _read_metrics_csv(self.csv_path)
        self._writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    @property
    def num_rows(self) -> int:
        """Rows written to the CSV so far (a resume point records it, see :meth:`truncate`)."""
        return len(self._rows)

    def digest(self, num_rows: int | None = None) -> str:
        """sha256 of the first ``num_rows`` rows (all when None), independent of columns added later.

        A resume point records it so that a damaged ``metrics.csv`` is detected when the run continues.
        """
        rows = self._rows if num_rows is None else self._rows[: max(0, int(num_rows))]
        canonical = [{k: v for k, v in r.items() if v not in ("", None)} for r in rows]
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()

    def truncate(self, num_rows: int) -> None:
        """Keep only the first ``num_rows`` CSV rows (a resumed run drops the rows it is about to redo); the
        TensorBoard points from the first dropped row's step on are purged too.

        Args:
            num_rows: rows to keep; more than there are keeps all of them.
        """
        if num_rows < len(self._rows):
            first_dropped = int(self._rows[max(0, int(num_rows))]["step"])
            self._rows = self._rows[: max(0, int(num_rows))]
            self._rewrite()
            if self._writer is not None:
                # TensorBoard drops the earlier process's points from this step on (its "purge_step"), so a
                # resumed run's curves have no duplicate points either
                from torch.utils.tensorboard import SummaryWriter

                self._writer.close()
                self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=first_dropped)

    @property
    def columns(self) -> list[str]:
        """Metric keys in first-seen order (without ``step`` and ``time``)."""
        return list(self._columns)

    def _header(self) -> list[str]:
        return ["step", "time", *self._columns]

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._header(), restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        atomic_write_text(self.csv_path, buf.getvalue())

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record scalar ``metrics`` at ``step`` (one CSV row; one TensorBoard scalar per key).

        Args:
            step: global step (e.g. gradient steps or env steps; the caller picks and keeps one unit).
            metrics: ``{name: number}``; names like ``"train/loss"`` group in TensorBoard. Python, numpy and
                0-d torch numbers are accepted; NaN/inf are written as ``nan``/``inf``.

        Raises:
            TypeError: a value is not a number (the message names the key).
            RuntimeError: the logger is closed.
        """
        if self._closed:
            raise RuntimeError(f"MetricsLogger for {str(self.run_dir)!r} is closed; create a new one to log")
        values = {str(k): _as_float(str(k), v) for k, v in metrics.items()}
        row = {"step": str(int(step)), "time": f"{time.time() - self._start:.3f}"}
        row.update({k: repr(v) if math.isfinite(v) else str(v) for k, v in values.items()})
        new = [k for k in values if k not in self._columns]
        self._rows.append(row)
        if new or not self.csv_path.exists():
            self._columns.extend(new)
            self._rewrite()
        else:
            with self.csv_path.open("a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, fieldnames=self._header(), restval="", lineterminator="\n").writerow(row)
                fh.flush()
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, int(step))

    def flush(self) -> None:
        """Flush TensorBoard events to disk (the CSV is written on every :meth:`log`)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer; further :meth:`log` calls raise."""
        if self._closed:
            return
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
        self._closed = True

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
