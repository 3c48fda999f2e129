"""Expected errors: the failures a user can fix (a bad file, config, argument or output folder).

``ltc-control`` prints an :class:`ExpectedError` as one line (``ltc-control <cmd>: error: <message>``) and
exits with status 2, leaving nothing behind; any other exception is a bug and keeps its traceback (see
``docs/cli.md``). The file-format errors subclass both :class:`ExpectedError` and the builtin class they have
always been (``CheckpointError`` is a ``ValueError``, ``DatasetError`` a ``RuntimeError``), so existing
``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "ExpectedError",
    "InputError",
    "LockedError",
    "OutputExistsError",
    "RunFolderError",
    "one_line",
]


class ExpectedError(Exception):
    """Base of the errors the CLI reports in one line with exit status 2 (the message says what to do)."""


class InputError(ExpectedError, ValueError):
    """A command-line value, env id or env option that cannot be used (the message names it)."""


class OutputExistsError(ExpectedError, FileExistsError):
    """The output folder already holds results; pass ``--overwrite`` (or ``--resume``) or choose another."""


class LockedError(ExpectedError, RuntimeError):
    """Another live process writes to the same folder (its lock file names the pid and host)."""


class RunFolderError(ExpectedError, ValueError):
    """A run folder's record (config, metrics, resume state) is missing, damaged or inconsistent (named)."""


class StudyStoreError(ExpectedError, ValueError):
    """A study's stored trial result that cannot be trusted (damaged, of another trial, wrong types)."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (newlines folded into ``"; "``)."""
    text = str(exc).strip() or type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
