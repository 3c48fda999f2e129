"""Claiming an output folder: refuse one that holds results, lock it, clean up after an expected error.

Every ``ltc-control`` command that writes a folder goes through :func:`claim_output` (see ``docs/cli.md``):

* a folder that already holds anything (other than a stale lock) is refused with
  :class:`~ltc_control.errors.OutputExistsError` unless ``overwrite`` (its contents are deleted first) or
  ``resume`` (its contents are continued) is given;
* the folder is locked (:class:`~ltc_control.locking.FolderLock`) for the whole command, so two writers
  cannot interleave; the lock is released on exit, Ctrl-C and SIGTERM included;
* when the command fails with an :class:`~ltc_control.errors.ExpectedError` (and is not resuming), what it
  wrote is removed: a folder it created is deleted, a folder that existed is emptied again. Interrupts and
  unexpected errors keep the folder (to resume, or to debug).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ltc_control.errors import ExpectedError, OutputExistsError
from ltc_control.locking import LOCK_NAME, FolderLock

__all__ = ["claim_output", "clear_folder", "holds_results"]


def holds_results(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` exists and holds anything besides a lock file."""
    p = Path(folder)
    return p.is_dir() and any(entry.name != LOCK_NAME for entry in p.iterdir())


def clear_folder(folder: str | os.PathLike[str]) -> None:
    """Delete everything in ``folder`` except its lock file."""
    for entry in Path(folder).iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextmanager
def claim_output(
    folder: str | os.PathLike[str], *, overwrite: bool = False, resume: bool | None = False
) -> Iterator[Path]:
    """Create (or reuse) and lock an output folder for one command; see the module docstring.

    Args:
        folder: the output folder.
        overwrite: empty a folder that holds results instead of refusing it.
        resume: continue the results already there (they are kept, also after an error); None for a
            command that cannot resume (its refusal then does not suggest ``--resume``).

    Yields:
        The folder, locked.

    Raises:
        OutputExistsError: the folder holds results and neither flag is given, or it is a file.
        LockedError: another live process holds the folder.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} is a file; pass a folder path")
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(path)
    try:
        lock.acquire()
    except BaseException:
        if not existed:
            shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        if holds_results(path) and not resume:
            if not overwrite:
                raise OutputExistsError(
                    f"output folder {path} already holds results; pass --overwrite to replace them"
                    + (", --resume to continue an interrupted run there" if resume is not None else "")
                    + " or choose another folder"
                )
            clear_folder(path)
        yield path
    except ExpectedError as exc:
        if not resume and not isinstance(exc, OutputExistsError):
            if not existed:
                lock.release()
                shutil.rmtree(path, ignore_errors=True)
            else:
                clear_folder(path)
        raise
    finally:
        lock.release()
