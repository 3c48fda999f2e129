"""Where trials run: local worker processes (default) or Ray tasks (``--backend ray``).

Both backends call the same function, :func:`ltc_control.agents.study.trials.run_trial`, with the same
:class:`~ltc_control.agents.study.trials.Trial`; a trial seeds everything itself and runs with a fixed number
of torch threads, so the results do not depend on the backend.

- :class:`LocalBackend`: a ``spawn`` process pool; every trial gets a fresh process
  (``max_tasks_per_child=1``) so nothing (torch threads, GL contexts, caches) leaks from one trial into the
  next.
- :class:`RayBackend`: one Ray task per trial with ``num_cpus`` CPUs (1 by default). ``address=None`` starts a
  local Ray instance; ``address="auto"`` or ``"ray://host:10001"`` joins an existing cluster. The study
  folder must be on a filesystem every node sees (trials read the shared dataset and write their folders
  there).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from ltc_control.agents.study.trials import Trial, run_trial

__all__ = ["Backend", "LocalBackend", "RayBackend", "make_backend"]


class Backend:
    """Submit trials, wait for some to finish. Handles are opaque."""

    slots: int = 1

    def submit(self, trial: Trial, study_dir: str) -> Any:
        """Start ``trial``; returns a handle."""
        raise NotImplementedError

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        """Block until at least one handle finishes; returns ``(handle, result or exception)`` pairs."""
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (after the running trials finish)."""

    def terminate(self) -> None:
        """Stop the running trials now (an interrupt); their folders restart cleanly on the next run."""


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C in a terminal reaches the whole process group; the study process handles it
    and stops the workers (a worker still starting up can print its own traceback before this runs)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalBackend(Backend):
    """Trials in local worker processes (``workers`` at a time, a fresh process each)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.slots = workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            max_tasks_per_child=1,
            initializer=_ignore_sigint,
        )

    def submit(self, trial: Trial, study_dir: str) -> Future[dict[str, Any]]:
        return self._pool.submit(run_trial, trial, study_dir)

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        done, _ = wait(list(handles), return_when=FIRST_COMPLETED)
        out: list[tuple[Any, dict[str, Any] | BaseException]] = []
        for fut in done:
            exc = fut.exception()
            out.append((fut, exc if exc is not None else fut.result()))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def terminate(self) -> None:
        # ProcessPoolExecutor has no public kill; its worker processes are in ``_processes``.
        for proc in list(getattr(self._pool, "_processes", {}).values()):
            proc.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)


class RayBackend(Backend):
    """Trials as Ray tasks.

    Args:
        address: ``None`` starts a local Ray instance with ``workers`` CPUs; otherwise the cluster address
            (``"auto"``, ``"ray://head:10001"``...).
        workers: trials in flight at once (defaults to the cluster's CPUs / ``cpus_per_trial``).
        cpus_per_trial: CPUs Ray reserves per trial.
    """

    def __init__(self, address: str | None, workers: int, cpus_per_trial: float = 1.0) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ImportError(
                "--backend ray needs Ray: pip install -e '.[distributed]' (or pip install 'ray[default]')"
            ) from exc
        self._ray = ray
        env_vars = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        if os.environ.get("PYTHONPATH"):
            env_vars["PYTHONPATH"] = os.environ["PYTHONPATH"]
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = max(1, int(workers * cpus_per_trial))
                kwargs["include_dashboard"] = False
            else:
                kwargs["address"] = address
            ray.init(**kwargs)
            self._started = True
        total = float(ray.cluster_resources().get("CPU", workers))
        self.slots = (
            max(1, min(workers, int(total // cpus_per_trial)))
            if address is None
            else max(1, int(total // cpus_per_trial))
        )
        self._remote = ray.remote(num_cpus=cpus_per_trial, max_retries=0)(run_trial)

    def submit(self, trial: Trial, study_dir: str) -> Any:
        return self._remote.remote(trial, study_dir)

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, dict[str, Any] | BaseException]]:
        ray = self._ray
        done, _ = ray.wait(list(handles), num_returns=1)
        out: list[tuple[Any, dict[str, Any] | BaseException]] = []
        for ref in done:
            try:
                out.append((ref, ray.get(ref)))
            except Exception as exc:  # noqa: BLE001 - reported by the runner with the trial's name
                out.append((ref, exc))
        return out

    def terminate(self) -> None:
        return None  # ray.shutdown() in close() stops the tasks

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_backend(name: str, workers: int, address: str | None = None, cpus_per_trial: float = 1.0) -> Backend:
    """``"local"`` or ``"ray"``."""
    if name == "local":
        if address is not None:
            raise ValueError("--address is only used with --backend ray")
        return LocalBackend(workers)
    if name == "ray":
        return RayBackend(address, workers, cpus_per_trial)
    raise ValueError(f"unknown backend {name!r}; valid: local, ray")
