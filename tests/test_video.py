"""Tests of the mp4 writer (H.264 via ffmpeg, OpenCV fallbacks, atomic writes) and the frame helpers."""

from __future__ import annotations

import gc
import html
import json
import os
import re
import shutil
import stat
import subprocess
import time
import warnings
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from ltc_control.inspection.report import write_html_report
from ltc_control.video import (
    CODEC_ENV,
    ROLE_COLORS,
    NeuronPanel,
    VideoCodecWarning,
    VideoWriter,
    available_codec,
    draw_bar,
    draw_series,
    file_codec,
    fit,
    grid,
    plays_in_browser,
    put_text,
    read_video,
    upscale,
)


@pytest.fixture(autouse=True)
def _default_codec_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the default chain, whatever the caller's environment forces."""
    monkeypatch.delenv(CODEC_ENV, raising=False)
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)


def _ffmpeg_stream_line(path: Path) -> str:
    """The ``Stream ... Video:`` line that ``ffmpeg -i`` prints for a file."""
    info = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    lines = [ln for ln in info.splitlines() if "Video:" in ln]
    assert len(lines) == 1, info
    return lines[0]


def _fake_ffmpeg(tmp_path: Path, behaviour: str) -> Path:
    """An ffmpeg stand-in: passes the writer's probe with the real binary, then misbehaves on real videos."""
    script = tmp_path / "fake-ffmpeg"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$*" in *probe.mp4*) exec "{imageio_ffmpeg.get_ffmpeg_exe()}" "$@";; esac\n' + behaviour + "\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_h264_round_trip_frame_count_size_codec_and_colours(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "clip.mp4"
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    with VideoWriter(path, fps=12, size=(96, 64)) as vw:
        for c in colours:
            vw.write(np.full((64, 96, 3), c, np.uint8), repeat=2)
    assert vw.codec == "h264" == available_codec()  # imageio-ffmpeg is a dependency: libx264 runs
    assert vw.frames_written == 6
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    frames, fps, fourcc = read_video(path)
    assert frames.shape == (6, 64, 96, 3)
    assert fps == pytest.approx(12.0)
    assert fourcc.lower() in ("avc1", "h264")  # OpenCV's CAP_PROP_FOURCC of an H.264 stream
    assert file_codec(path) == "h264" and plays_in_browser(vw.codec)
    for k, c in enumerate(colours):
        for rep in range(2):
            mean = frames[2 * k + rep].reshape(-1, 3).mean(axis=0)
            np.testing.assert_allclose(mean, c, atol=6)  # BT.709 tagged and decoded as BT.709
    assert not list(tmp_path.glob("sub/.*"))  # the temporary file was moved into place


def test_h264_stream_is_what_browsers_play(tmp_path: Path) -> None:
    path = tmp_path / "web.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, fps=30, size=(160, 90)) as vw:
        for _ in range(37):
            vw.write(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8))
    line = _ffmpeg_stream_line(path)
    assert re.search(r"Video: h264 \((High|Main|Constrained Baseline)\) \(avc1", line), line
    assert "yuv420p(tv, bt709" in line and "160x90" in line and "30 fps" in line, line
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    frames, _, _ = read_video(path)
    assert frames.shape == (37, 90, 160, 3)


def test_frames_stream_to_ffmpeg_before_close(tmp_path: Path) -> None:
    vw = VideoWriter(tmp_path / "stream.mp4", fps=30, size=(64, 64))
    rng = np.random.default_rng(1)
    for _ in range(
        200
    ):  # 2.5 MB of raw frames: more than a pipe and x264's frame delay (look-ahead + threads) hold
        vw.write(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    tmp = next(tmp_path.glob(".stream.*.mp4"))
    deadline = time.monotonic() + 20.0
    while tmp.stat().st_size <= 10_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tmp.stat().st_size > 10_000  # encoded data reached the disk while the writer is still open
    assert not (tmp_path / "stream.mp4").exists()
    vw.close()
    assert read_video(tmp_path / "stream.mp4")[0].shape == (200, 64, 64, 3)


def test_forced_fallback_to_mp4v_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-ffmpeg"
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(missing))
    monkeypatch.setenv(CODEC_ENV, "h264,mp4v")  # skip OpenCV avc1, which some OpenCV builds do have
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("a", "b"):
            with VideoWriter(tmp_path / f"{name}.mp4", fps=10, size=(48, 32)) as vw:
                for v in (0, 100, 200):
                    vw.write(np.full((32, 48, 3), v, np.uint8))
            assert vw.codec == "mp4v" and not plays_in_browser(vw.codec)
    ours = [w for w in caught if issubclass(w.category, VideoCodecWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    text = str(ours[0].message)
    assert str(missing) in text and "MPEG-4 Part 2" in text and "browsers will not play" in text
    frames, _, fourcc = read_video(tmp_path / "b.mp4")
    assert frames.shape == (3, 32, 48, 3) and fourcc.lower() in ("mp4v", "fmp4")
    assert file_codec(tmp_path / "b.mp4") == "mp4v"
    np.testing.assert_allclose(frames.reshape(3, -1).mean(axis=1), [0, 100, 200], atol=8)


def test_codec_forced_by_argument_or_env_without_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing a codec is not falling back
        with VideoWriter(tmp_path / "arg.mp4", fps=10, size=(32, 32), codecs="mp4v") as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8))
        assert vw.codec == "mp4v"
        monkeypatch.setenv(CODEC_ENV, "mp4v")
        with VideoWriter(tmp_path / "env.mp4", fps=10, size=(32, 32)) as vw2:
            vw2.write(np.zeros((32, 32, 3), np.uint8))
        assert vw2.codec == "mp4v" and file_codec(tmp_path / "env.mp4") == "mp4v"
        # an explicit argument wins over the environment
        with VideoWriter(tmp_path / "h.mp4", fps=10, size=(32, 32), codecs=["h264"]) as vw3:
            vw3.write(np.zeros((32, 32, 3), np.uint8))
        assert vw3.codec == "h264"
    monkeypatch.setenv(CODEC_ENV, "x265")
    with pytest.raises(ValueError, match=rf"{CODEC_ENV}.*'h264', 'avc1', 'mp4v'"):
        VideoWriter(tmp_path / "bad.mp4", fps=10, size=(32, 32))
    with pytest.raises(ValueError, match="unknown video codec"):
        available_codec(["h264", "vp9"])
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(tmp_path / "c.mp4", fps=10, size=(32, 32), codecs="h264", crf=60)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-such-ffmpeg"))
    monkeypatch.delenv(CODEC_ENV)
    with pytest.raises(RuntimeError, match="no-such-ffmpeg"):  # h264 only, and it cannot run
        available_codec("h264")
    assert list(tmp_path.glob(".*")) == []


def test_abort_and_dropped_writer_leave_no_file_and_no_ffmpeg(tmp_path: Path) -> None:
    vw = VideoWriter(tmp_path / "x.mp4", fps=10, size=(32, 32))
    vw.write(np.zeros((32, 32, 3), np.uint8), repeat=5)
    proc = vw._sink._proc  # type: ignore[attr-defined]
    vw.abort()
    assert proc.poll() is not None  # the encoder was stopped
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="closed"):
        vw.write(np.zeros((32, 32, 3), np.uint8))
    dropped = VideoWriter(tmp_path / "y.mp4", fps=10, size=(32, 32))
    dropped.write(np.zeros((32, 32, 3), np.uint8))
    proc = dropped._sink._proc  # type: ignore[attr-defined]
    del dropped
    gc.collect()
    assert proc.poll() is not None and list(tmp_path.iterdir()) == []


def test_ffmpeg_dying_mid_stream_names_the_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "video.mp4"
    target.write_bytes(b"previous video")
    vw = VideoWriter(target, fps=10, size=(64, 64))
    vw.write(np.zeros((64, 64, 3), np.uint8))
    vw._sink._proc.kill()  # type: ignore[attr-defined]
    vw._sink._proc.wait()  # type: ignore[attr-defined]
    with pytest.raises(
        RuntimeError, match=r"ffmpeg \(libx264\) stopped while writing .*video\.mp4 \(exit code -9\)"
    ):
        vw.write(np.zeros((64, 64, 3), np.uint8))
    assert target.read_bytes() == b"previous video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


def test_ffmpeg_error_output_is_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_ffmpeg(
        tmp_path,
        'head -c 1000 >/dev/null; echo "av_interleaved_write_frame(): No space left on device" >&2; exit 1',
    )
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(fake))
    out = tmp_path / "out"
    out.mkdir()
    target = out / "clip.mp4"
    target.write_bytes(b"previous video")
    with pytest.raises(RuntimeError) as err:
        with VideoWriter(target, fps=10, size=(64, 64)) as vw:
            assert vw.codec == "h264"  # the stand-in passed the probe
            for _ in range(40):  # 490 kB: more than the pipe holds, so a write hits the dead process
                vw.write(np.zeros((64, 64, 3), np.uint8))
    message = str(err.value)
    assert str(target) in message and "No space left on device" in message and "exit code 1" in message
    assert target.read_bytes() == b"previous video"  # untouched, and no temporary file is left
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4"]


def test_report_embeds_h264_and_links_mp4v(tmp_path: Path) -> None:
    for codec in ("h264", "mp4v"):
        folder = tmp_path / codec
        with VideoWriter(folder / "saliency.mp4", fps=10, size=(32, 32), codecs=codec) as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8), repeat=3)
        page = write_html_report(folder / "index.html", "t", [], {"a": 1}, video=folder / "saliency.mp4")
        text = page.read_text()
        assert '<a href="saliency.mp4">saliency.mp4</a>' in text
        embedded = '<video controls preload="metadata" src="saliency.mp4"' in text
        assert embedded == (codec == "h264"), codec


_PLAYER_PAGE = """<!DOCTYPE html><html><body>
<video id="h264" src="h264.mp4" preload="auto" muted></video>
<video id="mp4v" src="mp4v.mp4" preload="auto" muted></video>
<pre id="out">{}</pre>
<script>
var res = {};
["h264", "mp4v"].forEach(function (id) {
  var v = document.getElementById(id);
  function done(text) { res[id] = text; document.getElementById("out").textContent = JSON.stringify(res); }
  v.addEventListener("loadeddata", function () {
    done(v.videoWidth + "x" + v.videoHeight + " " + v.duration);
  });
  v.addEventListener("error", function () { done("error " + (v.error ? v.error.code : 0)); });
});
</script></body></html>
"""


def test_chromium_plays_the_h264_video_and_not_mp4v(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium binary: install Debian's `chromium` to check that browsers play the video")
    for codec in ("h264", "mp4v"):
        with VideoWriter(tmp_path / f"{codec}.mp4", fps=10, size=(64, 48), codecs=codec) as vw:
            for v in range(7):
                vw.write(np.full((48, 64, 3), 30 * v, np.uint8))
    (tmp_path / "page.html").write_text(_PLAYER_PAGE)
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom"]
        + [(tmp_path / "page.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = re.search(r'<pre id="out">(.*)</pre>', dom)
    assert found is not None, dom[-500:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["h264"] == "64x48 0.7"  # decoded: 7 frames at 10 fps
    assert result["mp4v"] == "error 4"  # MEDIA_ERR_SRC_NOT_SUPPORTED: why H.264 is needed at all


def test_video_file_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        with VideoWriter(tmp_path / "m.mp4", fps=10, size=(32, 32)) as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "m.mp4").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_odd_size_is_padded_and_decodes(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    with VideoWriter(path, fps=10, size=(51, 33)) as vw:
        for _ in range(3):
            vw.write(np.zeros((33, 51, 3), np.uint8))
    frames, _, _ = read_video(path)
    assert frames.shape == (3, 34, 52, 3)


def test_writer_errors_and_atomicity(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.mp4"):
        VideoWriter(tmp_path / "x.avi", fps=10, size=(32, 32))
    with pytest.raises(ValueError, match="fps"):
        VideoWriter(tmp_path / "x.mp4", fps=0, size=(32, 32))
    vw = VideoWriter(tmp_path / "x.mp4", fps=10, size=(32, 32))
    with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
        vw.write(np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(RuntimeError, match="no frames"):
        vw.close()
    assert not (tmp_path / "x.mp4").exists()
    with pytest.raises(KeyError):
        with VideoWriter(tmp_path / "y.mp4", fps=10, size=(32, 32)) as vw2:
            vw2.write(np.zeros((32, 32, 3), np.uint8))
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []  # aborted: neither the video nor a temporary file is left
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")


def test_upscale_and_fit() -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    up = upscale(img, 4)
    assert up.shape == (8, 12, 3)
    np.testing.assert_array_equal(up[::4, ::4], img)
    out = fit(np.full((10, 20, 3), 255, np.uint8), (100, 100), background=(0, 0, 0))
    assert out.shape == (100, 100, 3)
    assert out[50, 50, 0] == 255 and out[10, 50, 0] == 0  # 100x50 image centred vertically: rows 25..74
    assert int((out[:, 50, 0] == 255).sum()) == 50
    tinted = fit(np.full((10, 20, 3), 255, np.uint8), (100, 100), background=(10, 20, 30))
    assert tinted[0, 0].tolist() == [10, 20, 30] and tinted[99, 99].tolist() == [10, 20, 30]
    assert tinted[50, 50].tolist() == [255, 255, 255]
    gray = fit(np.zeros((5, 5), np.float32) + 0.5, (10, 10))
    assert gray.dtype == np.uint8 and gray[5, 5, 0] == 128
    with pytest.raises(ValueError, match="shape"):
        fit(np.zeros((2, 3, 5)), (10, 10))


def test_draw_bar_signed_and_unsigned() -> None:
    img = np.zeros((20, 101, 3), np.uint8)
    draw_bar(img, 0.5, (0, 0, 101, 20), color=(0, 255, 0))
    row = img[10, :, 1]
    filled = np.flatnonzero(row == 255)
    assert filled.min() == 51 and filled.max() == 74  # centre line at x=50, half-width 49 -> end 74.5
    img2 = np.zeros((20, 101, 3), np.uint8)
    draw_bar(img2, -1.0, (0, 0, 101, 20), color=(0, 255, 0))
    filled2 = np.flatnonzero(img2[10, :, 1] == 255)
    assert filled2.min() == 1 and filled2.max() == 49
    img3 = np.zeros((20, 101, 3), np.uint8)
    draw_bar(img3, 0.25, (0, 0, 101, 20), color=(0, 255, 0), signed=False)
    filled3 = np.flatnonzero(img3[10, :, 1] == 255)
    assert filled3.min() == 0 and filled3.max() == 25


def test_series_text_and_grid() -> None:
    img = np.zeros((60, 200, 3), np.uint8)
    draw_series(
        img, {"lat": (np.linspace(-1, 1, 50), (255, 0, 0))}, (0, 0, 200, 60), vmin=-1, vmax=1, window=50
    )
    red = (img[:, :, 0] > 120) & (img[:, :, 1] < 60)
    red[45:, :40] = False  # the legend text
    ys, xs = np.nonzero(red)  # the rising line runs from lower-left to upper-right
    assert red.sum() > 150
    assert ys[xs.argmax()] <= 2 and ys[xs < 100].mean() > ys[xs >= 100].mean() + 20
    with pytest.raises(ValueError, match="vmax > vmin"):
        draw_series(img, {}, (0, 0, 10, 10), vmin=1, vmax=1)
    canvas = np.zeros((20, 100, 3), np.uint8)
    put_text(canvas, "hello", (2, 15))
    assert (canvas == 255).any()
    tiles = [np.full((4, 6, 3), v, np.uint8) for v in (10, 20, 30)]
    out = grid(tiles, cols=2)
    assert out.shape == (8, 12, 3)
    assert out[0, 0, 0] == 10 and out[0, 6, 0] == 20 and out[4, 0, 0] == 30 and out[4, 6, 0] == 0


def test_neuron_panel_draws_every_neuron_by_role() -> None:
    roles = ["motor", "command", "command", "inter", "inter", "inter"]
    panel = NeuronPanel(roles, [f"n{i}" for i in range(6)])
    assert [roles[i] for i in panel.order] == ["inter"] * 3 + ["command"] * 2 + ["motor"]
    act = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -3.0])
    img = panel.render(act, (320, 200), sensory=np.linspace(-1, 1, 32))
    assert img.shape == (200, 320, 3)
    for role in ("inter", "command", "motor"):
        assert np.all(img == ROLE_COLORS[role], axis=2).sum() > 20  # each role's bars are drawn in its colour
    # one scale per role: the largest |activity| of that role's neurons (motor 1, command 2, inter 3)
    np.testing.assert_allclose(panel.scale, [1.0, 2.0, 2.0, 3.0, 3.0, 3.0])
    panel.render(act * 0.1, (320, 200))
    np.testing.assert_allclose(panel.scale, [1.0, 2.0, 2.0, 3.0, 3.0, 3.0])  # running maximum never shrinks
    panel.render(act * 2, (320, 200))
    np.testing.assert_allclose(panel.scale, [2.0, 4.0, 4.0, 6.0, 6.0, 6.0])
    with pytest.raises(ValueError, match="6 neurons"):
        panel.render(np.zeros(5), (320, 200))
    empty = NeuronPanel([]).render(None, (200, 100))
    assert empty.shape == (100, 200, 3)
