"""A lock file per output folder, so that two processes never write into one folder at once.

``FolderLock(folder)`` creates ``folder/.lock`` with ``O_CREAT | O_EXCL`` holding ``{"pid", "host",
"created"}`` and deletes it on release (also on Ctrl-C / SIGTERM, which unwind through ``finally``). A lock
left by a process that died without releasing it (SIGKILL, power loss) is stale: when its host is this host
and its pid no longer runs, the next writer removes it and takes the folder. A lock from another host, or
from a live pid, raises :class:`ltc_control.errors.LockedError` naming the holder.

Example:
    >>> with FolderLock("runs/eval1"):  # doctest: +SKIP
    ...     write_results()
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ltc_control.errors import LockedError

__all__ = ["LOCK_NAME", "FolderLock", "pid_alive"]

LOCK_NAME = ".lock"
_EMPTY_GRACE_S = 10.0  # an empty lock file younger than this may be one being written right now


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) holds nothing any more
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class FolderLock:
    """An exclusive lock on a folder through ``folder/.lock`` (see the module docstring).

    Re-entrant within a process: taking a lock this process already holds succeeds, and only the outermost
    holder deletes the file.

    Args:
        folder: the folder to lock (must exist).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._held = False

    def _holder(self) -> dict[str, Any] | None:
        """The lock file's content; None when it is unreadable or empty (being written or damaged)."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _is_stale(self, holder: dict[str, Any] | None) -> bool:
        if holder is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > _EMPTY_GRACE_S
        pid = holder.get("pid")
        if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
            return False
        return not pid_alive(pid)

    def acquire(self) -> FolderLock:
        """Take the lock (removing a stale one first).

        Raises:
            LockedError: a live process (or one on another host) holds the folder.
        """
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if (
                    holder is not None
                    and holder.get("pid") == os.getpid()
                    and holder.get("host") == doc["host"]
                ):
                    return self  # this process holds it already (an outer command): nested use, not owned
                if self._is_stale(holder):
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                who = (
                    "an unknown process"
                    if holder is None
                    else (f"pid {holder.get('pid')} on host {holder.get('host')}")
                )
                raise LockedError(
                    f"{self.folder} is in use by {who} (lock file {self.path}); wait for it to finish, or "
                    "delete the lock file if that process no longer runs"
                ) from None
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            self._held = True
            return self
        raise LockedError(f"could not take the lock {self.path}; another process keeps re-creating it")

    def release(self) -> None:
        """Delete the lock file if this object holds it."""
        if not self._held:
            return
        self._held = False
        holder = self._holder()
        if holder is None or holder.get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
