"""Tests of the mp4 writer and the frame-composition helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ltc_control.video import (
    ROLE_COLORS,
    NeuronPanel,
    VideoWriter,
    available_codec,
    draw_bar,
    draw_series,
    fit,
    grid,
    put_text,
    read_video,
    upscale,
)


def test_video_round_trip_frame_count_size_and_colours(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "clip.mp4"
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    with VideoWriter(path, fps=12, size=(96, 64)) as vw:
        for c in colours:
            vw.write(np.full((64, 96, 3), c, np.uint8), repeat=2)
    assert vw.codec in ("avc1", "mp4v") and vw.codec == available_codec()
    assert vw.frames_written == 6
    frames, fps, fourcc = read_video(path)
    assert frames.shape == (6, 64, 96, 3)
    assert fps == pytest.approx(12.0)
    assert fourcc.lower() in ("avc1", "h264", "mp4v", "fmp4")  # FFmpeg reads mp4v back as FMP4
    for k, c in enumerate(colours):
        for rep in range(2):
            mean = frames[2 * k + rep].reshape(-1, 3).mean(axis=0)
            np.testing.assert_allclose(mean, c, atol=12)  # lossy codec
    assert not list(tmp_path.glob("sub/.*"))  # the temporary file was moved into place


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
