"""MP4 writing (H.264 via ffmpeg, OpenCV as the fallback) and reading.

:class:`VideoWriter` streams RGB frames into an ``.mp4`` that browsers play: H.264 encoded by libx264 in the
ffmpeg binary that ``imageio-ffmpeg`` ships (``yuv420p``, ``+faststart``, BT.709 tags). OpenCV's pip wheels
have no H.264 encoder, so OpenCV only serves as the fallback: ``"h264"`` (ffmpeg + libx264) -> ``"avc1"``
(OpenCV, if its build has an H.264 encoder) -> ``"mp4v"`` (OpenCV, MPEG-4 Part 2, which browsers do not play).
The first backend that works is used, falling back warns once (:class:`VideoCodecWarning`), and
:attr:`VideoWriter.codec` names the one that ran. The chain can be forced with the ``codecs`` argument or the
``LTC_VIDEO_CODEC`` environment variable (e.g. ``LTC_VIDEO_CODEC=mp4v``). The file appears atomically when
the writer is closed.

The frame-composition helpers (:func:`put_text`, :class:`NeuronPanel`, :func:`grid`, ...) live in
:mod:`ltc_control.panels` and are re-exported here.

Example:
    >>> import numpy as np
    >>> from ltc_control.video import VideoWriter, put_text
    >>> with VideoWriter("/tmp/demo.mp4", fps=30, size=(320, 240)) as vw:  # doctest: +SKIP
    ...     for i in range(30):
    ...         frame = np.zeros((240, 320, 3), np.uint8)
    ...         put_text(frame, f"frame {i}", (10, 20))
    ...         vw.write(frame)
    >>> vw.codec  # doctest: +SKIP
    'h264'
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import cv2
import numpy as np

from ltc_control.panels import ROLE_COLORS, NeuronPanel, draw_bar, draw_series, fit, grid, put_text, upscale

__all__ = [
    "BROWSER_CODECS",
    "CODECS",
    "CODEC_ENV",
    "CODEC_NAMES",
    "ROLE_COLORS",
    "NeuronPanel",
    "VideoCodecWarning",
    "VideoWriter",
    "available_codec",
    "draw_bar",
    "draw_series",
    "file_codec",
    "fit",
    "grid",
    "plays_in_browser",
    "put_text",
    "read_video",
    "upscale",
]


# Tried in order: ffmpeg's libx264 (H.264, plays in browsers), OpenCV's H.264 if its build has one, then
# OpenCV's MPEG-4 Part 2 (every OpenCV build with FFmpeg has it; browsers do not play it).
CODECS: tuple[str, ...] = ("h264", "avc1", "mp4v")


CODEC_ENV = "LTC_VIDEO_CODEC"


CODEC_NAMES: dict[str, str] = {
    "h264": "H.264 (libx264 via ffmpeg, avc1)",
    "avc1": "H.264 (OpenCV avc1)",
    "mp4v": "MPEG-4 Part 2 (mp4v)",
}


# Codecs of mp4 files that browsers' <video> elements decode.
BROWSER_CODECS: frozenset[str] = frozenset({"h264", "avc1"})


# Constant rate factor of libx264: 0 = lossless, 23 = its default, 51 = worst. 20 keeps the small text and
# thin plot lines of the panels sharp at a few hundred kB per minute of 960x540 video.
DEFAULT_CRF = 20


# "veryfast": 960x540 rollout panels encoded at a median 71 frames/s here (2 busy cores) against 38 for
# "fast" (2% smaller files) and 170 for OpenCV's mp4v (6x larger files); ffmpeg runs in its own process,
# beside the simulation. The machines that write rollouts are busy training.
_X264_PRESET = "veryfast"


_STDERR_TAIL = 2000


_PROBE_TIMEOUT_S = 60.0


class VideoCodecWarning(UserWarning):
    """A video is written with a fallback codec (e.g. MPEG-4 Part 2, which browsers do not play)."""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C-level stderr (FFmpeg prints several lines when an encoder is missing; that is expected)."""
    try:
        fd = os.dup(2)
    except OSError:  # pragma: no cover - no stderr to redirect
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(fd, 2)
    finally:
        os.close(fd)


def _ffmpeg_exe() -> str:
    """The ffmpeg binary: ``IMAGEIO_FFMPEG_EXE`` if set, else the one shipped with imageio-ffmpeg.

    Raises:
        RuntimeError: imageio-ffmpeg is not installed or finds no ffmpeg.
    """
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise RuntimeError(
            "imageio-ffmpeg is not installed (pip install imageio-ffmpeg; it ships ffmpeg with libx264)"
        ) from exc
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _read_tail(fh: IO[bytes]) -> str:
    """The last characters ffmpeg wrote to its stderr file (empty if it wrote nothing)."""
    try:
        fh.flush()
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - _STDERR_TAIL))
        return fh.read().decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""


def _ffmpeg_command(exe: str, size: tuple[int, int], fps: float, crf: int, out: str) -> list[str]:
    width, height = size
    return [
        exe,
        "-hide_banner",
        "-nostdin",
        "-nostats",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-framerate",
        repr(float(fps)),
        "-i",
        "pipe:0",
        "-an",
        # exactly one output frame per input frame (no rate conversion dropping or doubling frames)
        "-fps_mode",
        "passthrough",
        "-vf",
        # the BT.709 matrix that HD players and browsers assume, tagged so that every decoder agrees
        "scale=out_color_matrix=bt709:out_range=tv,"
        "setparams=colorspace=bt709:color_primaries=bt709:color_trc=bt709:range=tv",
        "-c:v",
        "libx264",
        "-preset",
        _X264_PRESET,
        "-crf",
        str(int(crf)),
        # 4:2:0 is the only chroma layout browsers decode in H.264 (libx264 keeps 4:4:4 for RGB input)
        "-pix_fmt",
        "yuv420p",
        # index (moov) before the data: a browser starts playing before the whole file arrived
        "-movflags",
        "+faststart",
        "-f",
        "mp4",
        out,
    ]


_PROBE_CACHE: dict[str, str | None] = {}


_CV_CACHE: dict[str, bool] = {}


_WARNED: set[tuple[str, ...]] = set()


def _ffmpeg_problem() -> str | None:
    """Why ffmpeg + libx264 cannot write an mp4 here (None when it can), from encoding two tiny frames."""
    try:
        exe = _ffmpeg_exe()
    except RuntimeError as exc:
        return str(exc)
    if exe not in _PROBE_CACHE:
        problem: str | None = None
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "probe.mp4")
            cmd = _ffmpeg_command(exe, (64, 48), 10.0, DEFAULT_CRF, out)
            try:
                done = subprocess.run(
                    cmd,
                    input=bytes(64 * 48 * 3 * 2),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    timeout=_PROBE_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                problem = f"cannot run ffmpeg {exe!r}: {exc}"
            else:
                if done.returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) == 0:
                    tail = done.stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL:]
                    problem = f"ffmpeg {exe!r} failed to encode a test clip with libx264 (exit code " + (
                        f"{done.returncode}): {tail or 'no error message'}"
                    )
        _PROBE_CACHE[exe] = problem
    return _PROBE_CACHE[exe]


def _opencv_problem(fourcc: str) -> str | None:
    """Why OpenCV cannot encode ``fourcc`` into an mp4 (None when it can)."""
    if fourcc not in _CV_CACHE:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "probe.mp4")
            with _quiet_stderr():
                writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*fourcc), 10.0, (64, 48))
                ok = bool(writer.isOpened())
                if ok:
                    writer.write(np.zeros((48, 64, 3), np.uint8))
                writer.release()
            _CV_CACHE[fourcc] = ok and os.path.isfile(path) and os.path.getsize(path) > 0
    if _CV_CACHE[fourcc]:
        return None
    return f"OpenCV {cv2.__version__} has no {fourcc!r} mp4 encoder"


def _resolve_chain(codecs: Sequence[str] | str | None) -> tuple[tuple[str, ...], str]:
    """The codec chain to try and where it came from (for error messages)."""
    if codecs is None:
        env = os.environ.get(CODEC_ENV, "").strip()
        if not env:
            return CODECS, "the default chain"
        codecs, source = env, f"environment variable {CODEC_ENV}={env!r}"
    else:
        source = f"codecs={codecs!r}"
    names = codecs.split(",") if isinstance(codecs, str) else list(codecs)
    chain = tuple(str(c).strip().lower() for c in names if str(c).strip())
    bad = [c for c in chain if c not in CODECS]
    if not chain or bad:
        raise ValueError(
            f"unknown video codec(s) {bad or chain!r} in {source}; use one or more of {list(CODECS)} "
            "(comma-separated in the environment variable), in the order to try them"
        )
    return chain, source


def available_codec(preferred: Sequence[str] | str | None = None) -> str:
    """The first codec of the chain that can write an mp4 here.

    Falling back past the first codec of the chain issues one :class:`VideoCodecWarning` per process and
    reason (naming why the preferred codec failed), not one per video.

    Args:
        preferred: codecs to try in order, from :data:`CODECS` (a sequence or a comma-separated string);
            None = the ``LTC_VIDEO_CODEC`` environment variable if set, else :data:`CODECS`.

    Returns:
        ``"h264"`` (ffmpeg + libx264), ``"avc1"`` (OpenCV H.264) or ``"mp4v"`` (OpenCV MPEG-4 Part 2).

    Raises:
        ValueError: an unknown codec name.
        RuntimeError: none of them works.
    """
    chain, source = _resolve_chain(preferred)
    problems: list[str] = []
    for codec in chain:
        problem = _ffmpeg_problem() if codec == "h264" else _opencv_problem(codec)
        if problem is None:
            if problems:
                key = (codec, *problems)
                if key not in _WARNED:
                    _WARNED.add(key)
                    hint = "" if codec in BROWSER_CODECS else "; browsers will not play these videos"
                    warnings.warn(
                        f"writing videos as {CODEC_NAMES[codec]} instead of {CODEC_NAMES[chain[0]]}{hint}: "
                        + "; ".join(problems)
                        + ". Fix: install imageio-ffmpeg (it ships ffmpeg with libx264) or point "
                        "IMAGEIO_FFMPEG_EXE at an ffmpeg built with libx264",
                        VideoCodecWarning,
                        stacklevel=3,
                    )
            return codec
        problems.append(f"{codec}: {problem}")
    raise RuntimeError(
        f"no video encoder works for {list(chain)} (from {source}): "
        + "; ".join(problems)
        + ". Fix: install imageio-ffmpeg (ffmpeg with libx264) or an OpenCV build with FFmpeg "
        "(opencv-python-headless has mp4v)"
    )


def plays_in_browser(codec: str | None) -> bool:
    """Whether browsers' ``<video>`` elements play an mp4 of this codec (``h264``/``avc1``: yes)."""
    return codec is not None and codec.lower() in BROWSER_CODECS


def file_codec(path: str | os.PathLike[str]) -> str:
    """The video codec of an existing file as OpenCV reports it, normalised.

    Args:
        path: a video file.

    Returns:
        ``"h264"`` for H.264 (FourCC ``avc1``/``h264``, whichever backend wrote it), ``"mp4v"`` for MPEG-4
        Part 2 (``mp4v``/``FMP4``), else the lower-case FourCC.

    Raises:
        FileNotFoundError: no such file.
        ValueError: OpenCV cannot open it.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"OpenCV cannot open video {str(path)!r}; is it a valid mp4?")
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ").lower()
    return {"avc1": "h264", "h264": "h264", "x264": "h264", "fmp4": "mp4v", "mp4v": "mp4v"}.get(
        fourcc, fourcc
    )


class _Sink(Protocol):
    def write(self, rgb: np.ndarray, repeat: int) -> None: ...

    def finish(self) -> None: ...

    def kill(self) -> None: ...


class _FFmpegSink:
    """Streams raw RGB frames into ffmpeg's stdin; ffmpeg encodes them with libx264 into ``tmp``."""

    def __init__(self, target: Path, tmp: Path, size: tuple[int, int], fps: float, crf: int) -> None:
        self.target = target
        # a file, not a pipe: nobody reads ffmpeg's stderr while frames stream, and a full pipe would block it
        self._stderr = tempfile.TemporaryFile()
        exe = _ffmpeg_exe()
        try:
            self._proc = subprocess.Popen(
                _ffmpeg_command(exe, size, fps, crf, str(tmp)),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
        except OSError as exc:
            self._stderr.close()
            raise RuntimeError(f"cannot start ffmpeg {exe!r} to write {target}: {exc}") from exc
        assert self._proc.stdin is not None
        self._stdin: IO[bytes] = self._proc.stdin

    def _failure(self, what: str) -> RuntimeError:
        try:
            code: int | None = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        tail = _read_tail(self._stderr)
        self._stderr.close()
        return RuntimeError(
            f"ffmpeg (libx264) {what} while writing {self.target} (exit code {code}); the partial video was "
            f"discarded and {self.target.name} was not written. ffmpeg said: {tail or '(nothing)'}"
        )

    def write(self, rgb: np.ndarray, repeat: int) -> None:
        if self._proc.poll() is not None:
            raise self._failure("stopped")
        data = np.ascontiguousarray(rgb).data.cast("B")
        try:
            for _ in range(repeat):
                self._stdin.write(data)
        except (BrokenPipeError, OSError) as exc:
            raise self._failure(f"stopped ({type(exc).__name__})") from exc

    def finish(self) -> None:
        try:
            self._stdin.close()
        except (BrokenPipeError, OSError) as exc:
            raise self._failure(f"stopped ({type(exc).__name__})") from exc
        if self._proc.wait() != 0:
            raise self._failure("failed")
        self._stderr.close()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        self._proc.wait()
        self._stderr.close()


class _OpenCVSink:
    """OpenCV's ``cv2.VideoWriter`` with a FourCC (the fallback backends)."""

    def __init__(self, target: Path, tmp: Path, size: tuple[int, int], fps: float, fourcc: str) -> None:
        with _quiet_stderr():
            self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            raise RuntimeError(f"OpenCV could not open {tmp} (for {target}) with codec {fourcc}")

    def write(self, rgb: np.ndarray, repeat: int) -> None:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        for _ in range(repeat):
            self._writer.write(bgr)

    def finish(self) -> None:
        self._writer.release()

    def kill(self) -> None:
        self._writer.release()


class VideoWriter:
    """Streams RGB frames into an mp4 file: H.264 via ffmpeg/libx264, else OpenCV ``avc1``, else ``mp4v``.

    Frames go straight to the encoder (constant memory however long the video). They are written to a
    temporary file next to ``path``, which replaces ``path`` on :meth:`close`; if writing fails or is aborted
    the temporary file is removed and an existing ``path`` is left untouched. Use it as a context manager: an
    exception inside the ``with`` block aborts the video.

    Args:
        path: output ``.mp4`` path (parent folders are created).
        fps: frames per second of the video.
        size: ``(width, height)`` in pixels; odd sizes are padded by one pixel (H.264 with 4:2:0 chroma needs
            even sizes) by repeating the last row/column.
        codecs: codecs to try, in order, from :data:`CODECS` (or a comma-separated string); None = the
            ``LTC_VIDEO_CODEC`` environment variable if set, else ``("h264", "avc1", "mp4v")``.
        crf: libx264 constant rate factor (0 lossless .. 51 worst; ignored by the OpenCV backends).

    Attributes:
        codec: the backend that runs: ``"h264"`` (ffmpeg + libx264), ``"avc1"`` or ``"mp4v"`` (OpenCV).
        frames_written: frames written so far (repeats included).
        size: ``(width, height)`` of the encoded video (even); ``frame_size`` is the size frames must have.

    Raises:
        ValueError: bad fps, size, path suffix, crf or codec name.
        RuntimeError: no codec works, or the encoder cannot start.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        size: tuple[int, int],
        codecs: Sequence[str] | str | None = None,
        crf: int = DEFAULT_CRF,
    ) -> None:
        self._closed = True  # until the encoder runs: __del__ and abort() on a half-built writer are no-ops
        self._tmp: Path | None = None
        if not (fps > 0 and np.isfinite(fps)):
            raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
        width, height = int(size[0]), int(size[1])
        if width < 2 or height < 2:
            raise ValueError(f"video size must be at least 2x2 pixels, got {size!r}")
        if not 0 <= int(crf) <= 51 or int(crf) != crf:
            raise ValueError(
                f"crf must be an integer in [0, 51] (libx264's range; 18-23 look good), got {crf!r}"
            )
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"video path {str(self.path)!r} must end in .mp4")
        self.fps = float(fps)
        self.frame_size = (width, height)
        self.size = (width + width % 2, height + height % 2)
        self.crf = int(crf)
        self.codec = available_codec(codecs)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mp4", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        try:
            self._sink: _Sink = (
                _FFmpegSink(self.path, self._tmp, self.size, self.fps, self.crf)
                if self.codec == "h264"
                else _OpenCVSink(self.path, self._tmp, self.size, self.fps, self.codec)
            )
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        self.frames_written = 0
        self._closed = False

    def write(self, frame: np.ndarray, repeat: int = 1) -> None:
        """Append a frame.

        Args:
            frame: RGB ``uint8 (height, width, 3)`` of exactly the writer's ``frame_size``.
            repeat: write it this many times (slow motion).

        Raises:
            ValueError: wrong dtype or shape.
            RuntimeError: the writer is closed, or the encoder failed (the partial video is then discarded;
                the message names the file and quotes ffmpeg's error output).
        """
        if self._closed:
            raise RuntimeError(f"VideoWriter for {self.path} is closed")
        arr = np.asarray(frame)
        w, h = self.frame_size
        if arr.dtype != np.uint8 or arr.shape != (h, w, 3):
            raise ValueError(
                f"video frame must be uint8 of shape {(h, w, 3)} (RGB), got {arr.dtype} {arr.shape}; "
                "compose frames at the writer's size"
            )
        if self.size != self.frame_size:
            arr = cv2.copyMakeBorder(arr, 0, self.size[1] - h, 0, self.size[0] - w, cv2.BORDER_REPLICATE)
        count = max(1, int(repeat))
        try:
            self._sink.write(arr, count)
        except BaseException:
            self._discard()
            raise
        self.frames_written += count

    def close(self) -> Path:
        """Finish the file and move it into place.

        Returns:
            The video's path.

        Raises:
            RuntimeError: no frame was written, or the encoder failed (nothing is written then).
        """
        if self._closed:
            return self.path
        if self.frames_written == 0:
            self._discard()
            raise RuntimeError(f"no frames were written to {self.path}; the video was not created")
        self._closed = True
        assert self._tmp is not None
        try:
            self._sink.finish()
            if not self._tmp.is_file() or self._tmp.stat().st_size == 0:
                raise RuntimeError(f"the {self.codec} encoder wrote an empty file for {self.path}")
            # mkstemp creates 0600 files; a video is meant to be shared, so apply the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)
            os.replace(self._tmp, self.path)
        except BaseException:
            self._sink.kill()
            self._tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        """Discard the partial video: stop the encoder, remove the temporary file; ``path`` is untouched."""
        self._discard()

    def _discard(self) -> None:
        if not self._closed:
            self._closed = True
            self._sink.kill()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:
        # a writer dropped without close() must not leave an ffmpeg process or a temporary file behind
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self._discard()


def read_video(path: str | os.PathLike[str]) -> tuple[np.ndarray, float, str]:
    """Decode an mp4 back into frames (for tests and checks).

    Args:
        path: the video file.

    Returns:
        ``(frames uint8 (T, H, W, 3) RGB, fps, fourcc)``; the FourCC is as OpenCV reports it (``h264`` for
        H.264 from either backend, ``FMP4`` for MPEG-4 Part 2).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open video {str(path)!r}; is it a valid mp4?")
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    if not frames:
        raise ValueError(f"video {str(path)!r} has no decodable frames")
    return np.stack(frames), fps, fourcc
