"""Building, caching and lazily loading the compiled kernels (the C kernels of the LTC and CfC fast paths, the
CUDA binaries of the fused CUDA LTC).

C kernels are C99 with the GCC/Clang vector extensions (no torch headers), compiled on first use with the
system C compiler (``$LTC_CONTROL_CC``, else ``$CC``, else ``cc``/``gcc``/``clang`` on ``PATH``) into
``$LTC_CONTROL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ltc_control`` or ``~/.cache/ltc_control``), with
``-O3 -march=native`` unless ``$LTC_CONTROL_CFLAGS`` says otherwise (:func:`build_cached_library`). The file
name carries a hash of the sources, the compiler flags, the compiler, the torch version and the CPU, so a
changed source or machine rebuilds. Every cached file is written to a private temporary file and
``os.replace``-d into place, so concurrent builds from several processes never expose a half-written file;
:func:`load_cached_binary` does the same for binaries built in memory (the CUDA kernels). :class:`LazyKernel`
builds a kernel once per process on first use; ``LTC_CONTROL_DISABLE_KERNEL=1`` switches the C kernels off
without a warning.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

import torch

__all__ = [
    "CSRC",
    "LazyKernel",
    "build_cached_library",
    "cache_dir",
    "compiler_command",
    "cpu_fingerprint",
    "flag_sets",
    "load_cached_binary",
    "source_hash",
]

#: the folder of the kernel sources
CSRC = Path(__file__).resolve().parent / "csrc"


# First flag set that compiles wins: -march=native vectorises the batch lanes with the CPU's widest units; the
# plain -O3 set is the fallback for compilers that reject it.
_FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"),
    ("-O3", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"),
)


def cache_dir() -> Path:
    """The kernel cache folder: ``$LTC_CONTROL_CACHE_DIR``, else ``$XDG_CACHE_HOME/ltc_control``, else
    ``~/.cache/ltc_control``."""
    env = os.environ.get("LTC_CONTROL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ltc_control"


def compiler_command() -> list[str]:
    """The compiler command: $LTC_CONTROL_CC, else $CC, else the first of cc/gcc/clang on PATH."""
    for var in ("LTC_CONTROL_CC", "CC"):
        value = os.environ.get(var)
        if value:
            return shlex.split(value)
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    raise FileNotFoundError("no C compiler found on PATH (looked for cc, gcc, clang)")


def cpu_fingerprint() -> str:
    """A short hash of this CPU's feature flags (part of a C kernel's cache key)."""
    # -march=native output is only valid on the CPU that built it; a shared home directory must not reuse it
    # on another CPU model.
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    return platform.processor() or "unknown"


def source_hash(
    compiler: Sequence[str],
    flags: Sequence[str],
    sources: Sequence[str],
    abi: int,
) -> str:
    """Cache key of a kernel library: its sources, the compiler and flags, torch, the platform and the CPU."""
    h = hashlib.sha256()
    for name in sources:
        h.update((CSRC / name).read_bytes())
    for part in (
        " ".join(compiler),
        " ".join(flags),
        torch.__version__,
        platform.machine(),
        platform.system(),
        cpu_fingerprint(),
        str(abi),
    ):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:20]


def flag_sets() -> tuple[tuple[str, ...], ...]:
    """Compiler flag sets to try in order; ``$LTC_CONTROL_CFLAGS`` replaces the optimisation flags (e.g.
    ``"-O2"`` without ``-march=native`` for a cache shared by different CPUs)."""
    custom = os.environ.get("LTC_CONTROL_CFLAGS")
    if custom:
        return ((*shlex.split(custom), "-fPIC", "-shared", "-std=c99"),)
    return _FLAG_SETS


_L = TypeVar("_L")


def build_cached_library(
    name: str, sources: Sequence[str], abi: int, load: Callable[[Path], _L | None], what: str
) -> _L:
    """Loads ``<cache>/<name>_<hash>.so`` or compiles ``csrc/<sources[0]>`` into it; used by every C kernel.

    Tries each flag set of :func:`flag_sets` in order. The build writes to a private temporary file and
    ``os.replace``-s it into place, so concurrent builds from several processes never expose a half-written
    library; a corrupt or foreign file under the name is rebuilt. ``load(path)`` returns the loaded kernel or
    ``None`` (wrong ABI, missing symbol).

    Raises:
        FileNotFoundError: no compiler.
        RuntimeError: every flag set failed (the message holds each command and its error).
    """
    compiler = compiler_command()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    for flags in flag_sets():
        target = cache / f"{name}_{source_hash(compiler, flags, sources, abi)}.so"
        if target.exists():
            kernel = load(target)
            if kernel is not None:
                return kernel
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}_", suffix=".so.tmp", dir=cache)
        os.close(fd)
        tmp = Path(tmp_name)
        cmd = [*compiler, *flags, "-o", str(tmp), str(CSRC / sources[0]), "-lm"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, FileNotFoundError):
                raise FileNotFoundError(f"C compiler {compiler[0]!r} not found ({exc})") from exc
            errors.append(f"{' '.join(cmd)}: {exc}")
            continue
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            errors.append(f"{' '.join(cmd)} exited with {proc.returncode}: {proc.stderr.strip()[-800:]}")
            continue
        os.replace(tmp, target)
        kernel = load(target)
        if kernel is not None:
            return kernel
        errors.append(f"built {target} but could not load it")
    raise RuntimeError(f"compiling the {what} failed:\n" + "\n".join(errors))


class LazyKernel(Generic[_L]):
    """A compiled C kernel built on first use, once per process (shared by the LTC and CfC kernels).

    ``LTC_CONTROL_DISABLE_KERNEL=1`` disables it without a warning. A failed build is remembered for the
    rest of the process and issues one warning of class ``warning`` with ``message(exc)``; :attr:`status`
    says where the kernel was loaded from or why it is unavailable.
    """

    def __init__(
        self, build: Callable[[], _L], warning: type[Warning], message: Callable[[Exception], str]
    ) -> None:
        self._build, self._warning, self._message = build, warning, message
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forgets the kernel so that the next :meth:`load` rebuilds/reloads it (tests of the fallback)."""
        self.kernel: _L | None = None
        self.tried = False
        self.status = "not built yet (built lazily on first use)"

    def load(self) -> _L | None:
        """The kernel (built on the first call), or ``None`` when it is unavailable."""
        if self.tried:
            return self.kernel
        with self._lock:
            if self.tried:
                return self.kernel
            if os.environ.get("LTC_CONTROL_DISABLE_KERNEL", "") not in ("", "0"):
                self.status = "disabled by LTC_CONTROL_DISABLE_KERNEL"
            else:
                try:
                    self.kernel = self._build()
                    self.status = f"loaded {getattr(self.kernel, 'path', self.kernel)}"
                except Exception as exc:  # noqa: BLE001 - any build failure must degrade to the PyTorch path
                    self.status = f"unavailable: {exc}"
                    warnings.warn(self._message(exc), self._warning, stacklevel=4)
            self.tried = True
            return self.kernel


_T = TypeVar("_T")


def load_cached_binary(target: Path, build: Callable[[], bytes], load: Callable[[bytes], _T]) -> _T:
    """``load`` of the binary cached at ``target``, built with ``build`` (and cached atomically: temp file,
    then rename) when the file is missing, empty, or fails to load (a damaged or truncated file is rebuilt
    and replaced, once). A cache folder that cannot be written only costs a rebuild next time.
    """
    cached = target.read_bytes() if target.is_file() else b""
    if cached:
        try:
            return load(cached)
        except Exception:  # noqa: BLE001 - a damaged cache file: rebuild it below
            pass
    binary = build()
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}_", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(binary)
        os.replace(tmp, target)
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return load(binary)
