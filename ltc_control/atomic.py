"""Atomic file writes: every writer in the project goes through :func:`atomic_open`.

The data go to a temporary file in the destination's folder, are fsync-ed, then ``os.replace`` puts them in
place, so a reader never sees a half-written file and a crash leaves the previous version intact. The file
gets the usual permissions (``0o666`` minus the umask), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "fsync_dir"]


def fsync_dir(directory: str | Path) -> None:
    """Persist a rename inside ``directory`` (skipped where the platform or file system cannot)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", encoding: str | None = None, newline: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on a clean exit it is fsync-ed and renamed onto ``path``.

    Use it for writers that need a file object (``np.savez``, ``fig.savefig``, ``csv.writer``)::

        with atomic_open("trace.npz") as fh:
            np.savez_compressed(fh, **arrays)

    Args:
        path: destination file; its parent folder is created if needed.
        mode: ``"wb"`` or ``"w"``.
        encoding: text encoding (text mode only; default UTF-8).
        newline: newline translation (text mode only), as for :func:`open`.

    Raises:
        OSError: the folder is not writable. On any error inside the block the temporary file is removed
            and a previous ``path`` is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    Args:
        path: destination file; its parent folder is created if needed.
        data: the bytes to write.

    Raises:
        OSError: the folder is not writable; the previous file (if any) is left untouched.
    """
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    Args:
        path: destination file.
        text: the text to write.
        encoding: text encoding.
    """
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (strict: no NaN/Infinity) to ``path`` atomically.

    Args:
        path: destination file.
        obj: a JSON-serialisable value.
        indent: indentation of the output.

    Raises:
        TypeError / ValueError: ``obj`` is not JSON-serialisable (nothing is written).
    """
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")
