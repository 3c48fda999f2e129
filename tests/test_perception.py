"""ConvHead, preprocessing and augmentation (ltc_control.perception)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltc_control.perception import (
    Augment,
    AugmentConfig,
    ConvHead,
    PerceptionConfig,
    add_gaussian_noise,
    conv_head_num_params,
    frames_to_float,
    same_padding,
    standardize,
)


def test_paper_parameter_count_exact() -> None:
    head = ConvHead((3, 78, 200))
    # REFERENCE.md: the paper's head has 79,420 parameters at 78x200x3; "same" padding reproduces it exactly.
    assert head.num_params == 79_420
    assert [s[1:] for s in head.map_shapes] == [(39, 100), (20, 50), (10, 25), (10, 25), (10, 25)]
    conv = sum(p.numel() for p in head.convs.parameters())
    assert conv == 71_388
    assert head.num_params - conv == 8 * (4 * 250 + 4)


@pytest.mark.parametrize(
    ("shape", "count"), [((3, 64, 128), 75_516), ((3, 66, 200), 78_620), ((3, 96, 96), 76_028)]
)
def test_parameter_counts_other_sizes(shape: tuple[int, int, int], count: int) -> None:
    assert ConvHead(shape).num_params == count == conv_head_num_params(shape)


def test_same_padding_matches_tensorflow_rule() -> None:
    assert same_padding(78, 5, 2) == (39, 1, 2)
    assert same_padding(200, 5, 2) == (100, 1, 2)
    assert same_padding(25, 3, 1) == (25, 1, 1)
    assert same_padding(39, 5, 2) == (20, 2, 2)


def test_output_shape_and_per_map_dense() -> None:
    torch.manual_seed(0)
    head = ConvHead((3, 64, 128))
    x = torch.randn(5, 3, 64, 128)
    y = head(x)
    assert y.shape == (5, 32) and bool((y >= 0).all())
    # the batched dense equals 8 independent Linear(128, 4) layers, map-major output
    with torch.no_grad():
        y = head(x)
        maps = head.conv_activations(x)[-1]
    assert maps.shape == (5, 8, 8, 16)
    for c in range(8):
        ref = torch.relu(maps[:, c].flatten(1) @ head.dense_weight[c].T + head.dense_bias[c])
        torch.testing.assert_close(y[:, 4 * c : 4 * c + 4], ref)
    # map c's features do not depend on map c' (each map has its own dense layer)
    maps2 = maps.clone()
    maps2[:, 3] += 1.0
    with torch.no_grad():
        diff = (head.head(maps2) - head.head(maps)).abs().sum(0)
    assert float(diff[:12].sum()) == 0.0 and float(diff[16:].sum()) == 0.0


def test_shape_errors_name_expected_and_fix() -> None:
    head = ConvHead((3, 64, 128))
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 128\), got \(2, 64, 128, 3\).*frames_to_float"):
        head(torch.zeros(2, 64, 128, 3))
    with pytest.raises(ValueError, match=r"fold time into the batch"):
        head(torch.zeros(2, 4, 3, 64, 128))
    with pytest.raises(ValueError, match="float images"):
        head(torch.zeros(2, 3, 64, 128, dtype=torch.uint8))


def test_frames_to_float() -> None:
    frames = np.arange(2 * 3 * 4 * 5 * 3, dtype=np.int64).reshape(2, 3, 4, 5, 3) % 256
    frames = frames.astype(np.uint8)
    x = frames_to_float(frames)
    assert x.shape == (6, 3, 4, 5) and x.dtype == torch.float32
    assert float(x[4, 2, 1, 3]) == pytest.approx(frames[1, 1, 1, 3, 2] / 255.0)
    assert frames_to_float(frames[0, 0]).shape == (1, 3, 4, 5)
    with pytest.raises(ValueError, match="channel-last"):
        frames_to_float(np.zeros((2, 3, 4, 5), np.uint8))


def test_standardize_zero_mean_unit_std_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 20, generator=g) * torch.tensor([1.0, 5.0, 0.5, 30.0]).view(4, 1, 1, 1) + 7.0
    z = standardize(x)
    flat = z.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, unbiased=False), torch.ones(4), atol=1e-5, rtol=0)
    const = standardize(torch.full((1, 3, 4, 4), 0.5))
    assert bool(torch.isfinite(const).all()) and float(const.abs().max()) == 0.0
    # tf.image.per_image_standardization's floor: std below 1/sqrt(C*H*W) is divided by that floor
    tiny = torch.tensor([0.0, 1e-4]).repeat(8).view(1, 1, 4, 4)
    assert float(standardize(tiny).abs().max()) == pytest.approx(0.5e-4 * 4, rel=1e-4)


def test_augment_seeded_deterministic_and_changes_images() -> None:
    cfg = AugmentConfig(enabled=True, seed=3, shadow_prob=1.0, brightness_prob=1.0, noise_prob=1.0)
    x = torch.full((8, 3, 32, 48), 0.5)
    a1, a2 = Augment(cfg).train(), Augment(cfg).train()
    y1, y2 = a1(x), a2(x)
    assert torch.equal(y1, y2)  # same seed -> identical
    assert float((y1 - x).abs().mean()) > 0.02  # the images changed
    assert float(y1.min()) >= 0.0 and float(y1.max()) <= 1.0
    y3 = Augment(AugmentConfig(enabled=True, seed=4, shadow_prob=1.0)).train()(x)
    assert not torch.equal(y1, y3)  # other seed -> other draw
    # a shadow bar darkens a band: some pixels far darker than the rest
    shadow_only = AugmentConfig(enabled=True, shadow_prob=1.0, brightness_prob=0, flare_prob=0, noise_prob=0)
    ys = Augment(shadow_only).train()(x)
    assert float(ys.min()) <= 0.5 * (1 - 0.3) + 1e-6 and float(ys.max()) == 0.5
    # eval mode / disabled -> identity (same object)
    assert Augment(cfg).eval()(x) is x
    assert Augment(AugmentConfig(enabled=False)).train()(x) is x


def test_augment_groups_share_parameters() -> None:
    cfg = AugmentConfig(enabled=True, shadow_prob=1.0, brightness_prob=1.0, flare_prob=0.0, noise_prob=0.0)
    x = torch.full((6, 3, 16, 16), 0.4)
    y = Augment(cfg).train()(x, group_size=3)
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])
    assert not torch.equal(y[2], y[3])
    with pytest.raises(ValueError, match="group_size=4 must divide"):
        Augment(cfg).train()(x, group_size=4)


def test_gaussian_noise_variance_and_config_validation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(1, 3, 200, 200)
    noisy = add_gaussian_noise(x, 0.2, generator=g)
    assert float(noisy.var()) == pytest.approx(0.2, rel=0.02)
    with pytest.raises(ValueError, match="shadow_prob must be a probability"):
        AugmentConfig(shadow_prob=1.5)
    with pytest.raises(ValueError, match="same length"):
        PerceptionConfig(channels=(1, 2))
