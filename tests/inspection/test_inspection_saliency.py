"""Saliency: region-selective heads peak in their region, SSIM numbers, overlays and videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ltc_control.inspection.saliency import (
    add_image_noise,
    input_gradient_saliency,
    overlay_saliency,
    policy_saliency,
    saliency_robustness,
    saliency_ssim,
    ssim,
    visual_backprop,
    write_saliency_video,
)
from ltc_control.perception import ConvHead
from ltc_control.video import read_video

H, W = 48, 64
ROWS, COLS = slice(8, 24), slice(36, 56)  # the only region the head can see


class RegionHead(nn.Module):
    """A small CNN whose output depends on one image region only (everything else is multiplied by 0)."""

    def __init__(self) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, H, W)
        mask[..., ROWS, COLS] = 1.0
        self.register_buffer("mask", mask)
        self.conv1 = nn.Conv2d(3, 8, 5, stride=2, padding=2)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 3, stride=1, padding=1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2, self.conv3):
                conv.weight.abs_()  # positive weights, no bias: activity only where the input is
                conv.bias.zero_()
        self.fc = nn.Linear(4 * 12 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv1(x * self.mask))
        z = torch.relu(self.conv2(z))
        z = torch.relu(self.conv3(z))
        return self.fc(z.flatten(1))


def _region_share(maps: np.ndarray) -> np.ndarray:
    inside = maps[:, ROWS, COLS].sum(axis=(1, 2))
    return inside / maps.sum(axis=(1, 2))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(4, 3, H, W)


def test_visual_backprop_peaks_in_the_seen_region(images: torch.Tensor) -> None:
    torch.manual_seed(1)
    head = RegionHead()
    maps = visual_backprop(head, images).numpy()
    assert maps.shape == (4, H, W)
    assert maps.min() == 0.0 and maps.max() == pytest.approx(1.0)
    for m in maps:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        # the deconvolution's support reaches a few pixels past the region (kernel 5, stride 2 footprint)
        assert ROWS.start - 6 <= r < ROWS.stop + 6 and COLS.start - 6 <= c < COLS.stop + 6
    assert np.all(_region_share(maps) > 0.85)


def test_input_gradient_peaks_in_the_seen_region(images: torch.Tensor) -> None:
    torch.manual_seed(2)
    head = RegionHead()
    maps = input_gradient_saliency(head, images, output_index=0).numpy()
    outside = maps.copy()
    outside[:, ROWS, COLS] = 0.0
    assert np.all(outside == 0.0)  # exactly zero gradient where the head cannot see
    assert np.all(_region_share(maps) == pytest.approx(1.0))


def test_visual_backprop_geometry_matches_convhead_same_padding() -> None:
    """A single bright pixel lights up a ConvHead map that maps back onto that pixel's neighbourhood."""
    torch.manual_seed(3)
    head = ConvHead((3, 64, 128))
    with torch.no_grad():
        for conv in head.convs:
            conv.weight.abs_()
            conv.bias.zero_()
    x = torch.zeros(1, 3, 64, 128)
    x[..., 40, 90] = 10.0
    m = visual_backprop(head, x)[0].numpy()
    r, c = np.unravel_index(np.argmax(m), m.shape)
    assert abs(r - 40) <= 4 and abs(c - 90) <= 4
    assert m[:20].max() == 0.0 and m[:, :60].max() == 0.0


def test_ssim_identical_is_one_and_falls_with_noise() -> None:
    rng = np.random.default_rng(0)
    base = cv2_blur(rng.random((64, 96)))
    assert ssim(255 * base, 255 * base) == pytest.approx(1.0, abs=1e-12)
    values = []
    for sigma in (0.02, 0.05, 0.1, 0.2):
        noisy = np.clip(base + rng.normal(0, sigma, base.shape), 0, 1)
        values.append(ssim(255 * base, 255 * noisy))
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] > 0.8 and values[-1] < 0.5
    stack = np.stack([base, base])
    np.testing.assert_allclose(saliency_ssim(stack, stack), [1.0, 1.0])
    # constants of the paper: a constant offset of 0.1 * 255 on a flat map gives the closed form
    flat = np.full((32, 32), 100.0)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 125.5 + c1) / (100**2 + 125.5**2 + c1)
    assert ssim(flat, flat + 25.5) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        ssim(base, base[:10])


def cv2_blur(img: np.ndarray) -> np.ndarray:
    import cv2

    return np.asarray(cv2.GaussianBlur(img, (9, 9), 2.0))


def test_noise_overlay_and_video(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (6, 30, 40, 3), dtype=np.uint8)
    noisy = add_image_noise(frames, 0.1, seed=3)
    assert noisy.dtype == np.uint8 and np.array_equal(noisy, add_image_noise(frames, 0.1, seed=3))
    # std of the added noise is sqrt(0.1) * 255 before clipping; clipping only shrinks it
    assert 40 < (noisy.astype(float) - frames).std() < np.sqrt(0.1) * 255
    sal = np.zeros((6, 15, 20))
    sal[:, 5, 5] = 1.0
    over = overlay_saliency(frames[0], sal[0])
    assert over.shape == frames[0].shape and over.dtype == np.uint8
    path, codec = write_saliency_video(frames, sal, tmp_path / "sal.mp4", fps=10, scale=2)
    decoded, fps, _ = read_video(path)
    assert codec in ("h264", "avc1", "mp4v") and decoded.shape[0] == 6 and fps == pytest.approx(10)
    assert decoded.shape[1:3] == (60, 160)
    with pytest.raises(ValueError, match="uint8"):
        add_image_noise(frames.astype(np.float32), 0.1)


def test_policy_saliency_and_robustness() -> None:
    from ltc_control.policy import Policy, PolicyConfig

    torch.manual_seed(0)
    policy = Policy(PolicyConfig())
    h, w, _ = policy.config.image_shape
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack(
        [
            np.repeat((127 + 120 * np.sin(0.2 * xx + 0.3 * k + 0.1 * yy))[..., None], 3, axis=2)
            for k in range(8)
        ]
    ).astype(np.uint8)
    maps = policy_saliency(policy, frames)
    grads = policy_saliency(policy, frames, method="gradient")
    assert maps.shape == grads.shape == (8, h, w)
    assert np.all(maps.max(axis=(1, 2)) == pytest.approx(1.0))
    ssims = saliency_robustness(policy, frames, noise_variances=(0.01, 0.3), num_frames=8)
    assert ssims[0.01].shape == (8,)
    # more noise, less similar attention
    assert ssims[0.01].mean() > ssims[0.3].mean()
    assert np.all(ssims[0.3] < 1.0)
