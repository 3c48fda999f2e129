"""Perception: the NCP paper's convolutional head, image preprocessing and train-time augmentation.

Pipeline used by :class:`ltc_control.policy.Policy` for image observations::

    uint8 (B, T, H, W, 3) --frames_to_float--> float (B*T, 3, H, W) in [0, 1]
        --Augment (training only)--> --standardize--> --ConvHead--> features (B*T, 32) --> (B, T, 32)

:class:`ConvHead` follows Lechner et al. 2020 (Nature Machine Intelligence): five convolutions
24/36/48/64/8 filters, kernels 5/5/3/3/3, strides 2/2/2/1/1, ReLU, "same" padding (TensorFlow convention:
output size ``ceil(in / stride)``), then each of the 8 output maps flattened into its own dense layer with 4
outputs and ReLU: 32 sensory features. Parameter counts (see :func:`conv_head_num_params`):

=============  ============  ===================================
input (H, W)   parameters    note
=============  ============  ===================================
78 x 200       79,420        the paper's camera (REFERENCE.md: 79,420, exact)
64 x 128       75,516        LaneKeeping-v0's default camera
66 x 200       78,620        PilotNet's camera
48 x 96        73,724
96 x 96        76,028        CarRacing-v3
=============  ============  ===================================

The five convolutions hold 71,388 parameters whatever the image size; the per-map dense layers hold
``8 * (4 * h5 * w5 + 4)`` where ``h5 x w5`` is the last map's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Augment",
    "AugmentConfig",
    "ConvHead",
    "PerceptionConfig",
    "add_gaussian_noise",
    "conv_head_num_params",
    "frames_to_float",
    "same_padding",
    "standardize",
]


# --------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class AugmentConfig:
    """Train-time image augmentation (applied to float images in [0, 1], before standardisation).

    Args:
        enabled: apply augmentation in training mode (it is never applied in eval mode).
        seed: seed of the augmentation's own torch Generator (same seed -> same augmented batches).
        shadow_prob: probability that an image gets shadow bars.
        shadow_max_bars: maximum number of semi-transparent shadow bars per image (at least 1 when drawn).
        shadow_width: (min, max) bar width as a fraction of the image diagonal.
        shadow_darkness: (min, max) fraction of light a bar removes (0 = no shadow, 1 = black).
        brightness_prob: probability of a global brightness/gamma change.
        brightness_range: (min, max) multiplicative brightness factor.
        gamma_range: (min, max) gamma exponent applied as ``x ** gamma``.
        flare_prob: probability of a lens-flare-like additive bright blob.
        flare_strength: (min, max) peak added brightness of the blob (image scale [0, 1]).
        noise_prob: probability of additive Gaussian pixel noise.
        noise_std: (min, max) standard deviation of that noise (image scale [0, 1]).
    """

    enabled: bool = False
    seed: int = 0
    shadow_prob: float = 0.5
    shadow_max_bars: int = 2
    shadow_width: tuple[float, float] = (0.05, 0.25)
    shadow_darkness: tuple[float, float] = (0.3, 0.7)
    brightness_prob: float = 0.5
    brightness_range: tuple[float, float] = (0.6, 1.4)
    gamma_range: tuple[float, float] = (0.7, 1.4)
    flare_prob: float = 0.2
    flare_strength: tuple[float, float] = (0.2, 0.6)
    noise_prob: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.05)

    def __post_init__(self) -> None:
        for name in ("shadow_prob", "brightness_prob", "flare_prob", "noise_prob"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {v}")
        for name in (
            "shadow_width",
            "shadow_darkness",
            "brightness_range",
            "gamma_range",
            "flare_strength",
            "noise_std",
        ):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
                raise ValueError(f"{name} must be a (min, max) pair with 0 <= min <= max, got {(lo, hi)}")
        if self.shadow_darkness[1] > 1.0:
            raise ValueError(f"shadow_darkness must lie in [0, 1], got {self.shadow_darkness}")
        if self.gamma_range[0] <= 0.0:
            raise ValueError(f"gamma_range must be > 0, got {self.gamma_range}")
        if self.shadow_max_bars < 1:
            raise ValueError(f"shadow_max_bars must be >= 1, got {self.shadow_max_bars}")


@dataclass(frozen=True)
class PerceptionConfig:
    """The convolutional head and its preprocessing (see :class:`ConvHead`).

    Args:
        channels: filters of each convolution (the paper: 24, 36, 48, 64, 8).
        kernels: square kernel size of each convolution (the paper: 5, 5, 3, 3, 3).
        strides: stride of each convolution (the paper: 2, 2, 2, 1, 1).
        features_per_channel: dense outputs per final feature map (the paper: 4; 8 maps x 4 = 32 features).
        dropout: dropout probability on the flattened maps before the per-map dense layers (0 = off).
        standardize: per-image standardisation before the head (the paper does it).
        augment: train-time augmentation settings.
    """

    channels: tuple[int, ...] = (24, 36, 48, 64, 8)
    kernels: tuple[int, ...] = (5, 5, 3, 3, 3)
    strides: tuple[int, ...] = (2, 2, 2, 1, 1)
    features_per_channel: int = 4
    dropout: float = 0.0
    standardize: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if not (len(self.channels) == len(self.kernels) == len(self.strides) >= 1):
            raise ValueError(
                "channels, kernels and strides must have the same length >= 1, got "
                f"{len(self.channels)}, {len(self.kernels)}, {len(self.strides)}"
            )
        if min(self.channels) < 1 or min(self.kernels) < 1 or min(self.strides) < 1:
            raise ValueError("channels, kernels and strides must all be >= 1")
        if self.features_per_channel < 1:
            raise ValueError(f"features_per_channel must be >= 1, got {self.features_per_channel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


# -------------------------------------------------------------------------------------------------- helpers
def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "same" padding along one axis.

    Args:
        size: input length (pixels).
        kernel: kernel length.
        stride: stride.

    Returns:
        ``(out, pad_before, pad_after)`` with ``out = ceil(size / stride)``; the extra pixel, if any, goes
        after (as in TensorFlow, so weights ported from the paper's Keras model line up).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def conv_head_num_params(
    image_shape: Sequence[int],
    channels: Sequence[int] = (24, 36, 48, 64, 8),
    kernels: Sequence[int] = (5, 5, 3, 3, 3),
    strides: Sequence[int] = (2, 2, 2, 1, 1),
    features_per_channel: int = 4,
) -> int:
    """Number of trainable parameters of a :class:`ConvHead` (without building it).

    Args:
        image_shape: ``(C, H, W)``.
        channels: filters per convolution.
        kernels: kernel sizes.
        strides: strides.
        features_per_channel: dense outputs per final map.

    Returns:
        The parameter count (79,420 for the paper's ``(3, 78, 200)``).
    """
    c, h, w = (int(v) for v in image_shape)
    total = 0
    for out_c, k, s in zip(channels, kernels, strides):
        total += c * out_c * k * k + out_c
        h, w, c = same_padding(h, k, s)[0], same_padding(w, k, s)[0], out_c
    return total + c * (h * w * features_per_channel + features_per_channel)


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if hasattr(x, "shape") else type(x).__name__


def frames_to_float(frames: Tensor | np.ndarray) -> Tensor:
    """Convert channel-last uint8 frames to channel-first float images in [0, 1], folding leading dims.

    Args:
        frames: ``(..., H, W, C)`` uint8 (e.g. ``(B, T, H, W, 3)`` from the env or a dataset, or one
            ``(H, W, 3)`` frame), numpy or torch. Float input is taken as already scaled to [0, 1].

    Returns:
        float32 ``(N, C, H, W)`` with ``N`` the product of the leading dims (1 for a single frame).

    Raises:
        ValueError: fewer than 3 dims or a channel count other than 1 or 3 (likely channel-first input).
    """
    t = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if not isinstance(t, Tensor) or t.dim() < 3 or t.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected channel-last frames (..., H, W, C) with C in (1, 3), e.g. uint8 (B, T, H, W, 3), got "
            f"{_shape(frames)}; convert channel-first images with .permute(..., 2, 3, 1) / np.moveaxis"
        )
    h, w, c = t.shape[-3:]
    t = t.reshape(-1, h, w, c).permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        return t.to(torch.float32).div_(255.0)
    if not t.is_floating_point():
        raise ValueError(f"frames must be uint8 (0-255) or float in [0, 1], got dtype {t.dtype}")
    return t.to(torch.float32) if t.dtype == torch.float64 else t


def standardize(images: Tensor, eps: float | None = None) -> Tensor:
    """Per-image standardisation: zero mean, unit standard deviation over each image's C*H*W values.

    Like ``tf.image.per_image_standardization``, the divisor is ``max(std, 1 / sqrt(C*H*W))`` so a constant
    image maps to zeros instead of dividing by zero.

    Args:
        images: ``(N, C, H, W)`` (or any ``(..., C, H, W)``) float tensor.
        eps: lower bound of the divisor; default ``1 / sqrt(C*H*W)``.

    Returns:
        Tensor of the same shape.
    """
    if not isinstance(images, Tensor) or images.dim() < 3 or not images.is_floating_point():
        raise ValueError(f"standardize expects a float tensor (..., C, H, W), got {_shape(images)}")
    n = images.shape[-3] * images.shape[-2] * images.shape[-1]
    flat = images.reshape(*images.shape[:-3], n)
    mean = flat.mean(dim=-1, keepdim=True)
    std = flat.std(dim=-1, unbiased=False, keepdim=True)
    floor = (1.0 / math.sqrt(n)) if eps is None else eps
    out = (flat - mean) / std.clamp_min(floor)
    return out.reshape(images.shape)


def add_gaussian_noise(images: Tensor, variance: float, generator: torch.Generator | None = None) -> Tensor:
    """Zero-mean Gaussian pixel noise of the given *variance* on images scaled to [0, 1] (not clipped).

    This is the paper's robustness protocol (variance 0.1, 0.2, 0.3 with a fixed noise seed).

    Args:
        images: float images in [0, 1], any shape.
        variance: noise variance (the standard deviation is ``sqrt(variance)``), >= 0.
        generator: torch Generator for a reproducible noise draw (on the images' device).

    Returns:
        ``images + noise`` (same shape and dtype).
    """
    if variance < 0 or not math.isfinite(variance):
        raise ValueError(f"variance must be finite and >= 0, got {variance}")
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return images + math.sqrt(variance) * noise


# -------------------------------------------------------------------------------------------------- ConvHead
class ConvHead(nn.Module):
    """The NCP paper's perception head: 5 convolutions, then one dense layer per final feature map.

    Example:
        >>> head = ConvHead((3, 78, 200))
        >>> head.num_params
        79420
        >>> head(torch.zeros(2, 3, 78, 200)).shape
        torch.Size([2, 32])

    Args:
        image_shape: ``(C, H, W)`` of the (float, standardised) input images.
        channels: filters per convolution.
        kernels: square kernel size per convolution.
        strides: stride per convolution.
        features_per_channel: outputs of each final map's dense layer (ReLU).
        dropout: dropout on the flattened final maps (training only).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (3, 78, 200),
        channels: Sequence[int] = (24, 36, 48, 64, 8),
        kernels: Sequence[int] = (5, 5, 3, 3, 3),
        strides: Sequence[int] = (2, 2, 2, 1, 1),
        features_per_channel: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {tuple(image_shape)}")
        if not (len(channels) == len(kernels) == len(strides) >= 1):
            raise ValueError("channels, kernels and strides must have the same length >= 1")
        self.image_shape = tuple(int(v) for v in image_shape)
        c, h, w = self.image_shape
        self.convs = nn.ModuleList()
        self._pads: list[tuple[int, int, int, int]] = []
        self.map_shapes: list[tuple[int, int, int]] = []
        for out_c, k, s in zip(channels, kernels, strides):
            oh, top, bottom = same_padding(h, k, s)
            ow, left, right = same_padding(w, k, s)
            self.convs.append(nn.Conv2d(c, int(out_c), int(k), stride=int(s)))
            self._pads.append((left, right, top, bottom))
            c, h, w = int(out_c), oh, ow
            self.map_shapes.append((c, h, w))
        self.num_maps = c
        self.map_size = h * w
        self.features_per_channel = int(features_per_channel)
        # One dense layer per final map, stored batched: weight (maps, features, h*w) == 8 nn.Linear(h*w, 4).
        self.dense_weight = nn.Parameter(torch.empty(c, self.features_per_channel, self.map_size))
        self.dense_bias = nn.Parameter(torch.empty(c, self.features_per_channel))
        bound = 1.0 / math.sqrt(self.map_size)  # nn.Linear's default init, per map
        nn.init.uniform_(self.dense_weight, -bound, bound)
        nn.init.uniform_(self.dense_bias, -bound, bound)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output_size = c * self.features_per_channel

    @classmethod
    def from_config(cls, config: PerceptionConfig, image_shape: Sequence[int]) -> ConvHead:
        """Build from a :class:`PerceptionConfig` for images ``(C, H, W)``."""
        return cls(
            image_shape,
            config.channels,
            config.kernels,
            config.strides,
            config.features_per_channel,
            config.dropout,
        )

    @property
    def num_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            hint = ""
            if isinstance(x, Tensor) and x.dim() == 4 and x.shape[-1] == c:
                hint = " (channel-last input: use perception.frames_to_float, which permutes to (N, C, H, W))"
            elif isinstance(x, Tensor) and x.dim() == 5:
                hint = " (fold time into the batch: x.reshape(B * T, C, H, W))"
            raise ValueError(
                f"ConvHead expects float images (N, C, H, W) = (N, {c}, {h}, {w}), got {_shape(x)}{hint}; "
                f"the head was built for image_shape={self.image_shape}, resize frames or rebuild it"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"ConvHead expects float images, got dtype {x.dtype}; convert uint8 with frames_to_float"
            )

    def conv_activations(self, x: Tensor) -> list[Tensor]:
        """Each convolution's ReLU output, first to last (for VisualBackprop-style saliency).

        Args:
            x: standardised images ``(N, C, H, W)``.

        Returns:
            One tensor ``(N, C_l, H_l, W_l)`` per convolution (shapes in :attr:`map_shapes`).
        """
        self._check(x)
        out = []
        for conv, pad in zip(self.convs, self._pads):
            x = F.relu(conv(F.pad(x, pad)))
            out.append(x)
        return out

    def head(self, maps: Tensor) -> Tensor:
        """Per-map dense layers with ReLU: ``(N, maps, H5, W5)`` -> ``(N, maps * features_per_channel)``."""
        flat = self.dropout(maps.flatten(2))  # (N, maps, h*w)
        feats = torch.einsum("ncp,cfp->ncf", flat, self.dense_weight) + self.dense_bias
        return F.relu(feats).flatten(1)  # map-major: features 4c..4c+3 come from map c

    def forward(self, x: Tensor) -> Tensor:
        """Compute sensory features.

        Args:
            x: standardised float images ``(N, C, H, W)``.

        Returns:
            ``(N, maps * features_per_channel)`` non-negative features (32 with the defaults).
        """
        return self.head(self.conv_activations(x)[-1])


# --------------------------------------------------------------------------------------------------- Augment
def _uniform(n: int, bounds: tuple[float, float], gen: torch.Generator, device: torch.device) -> Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


class Augment(nn.Module):
    """Seeded train-time augmentation: shadow bars, brightness/gamma, lens flare, Gaussian noise.

    Active only when ``config.enabled`` and the module is in training mode; otherwise the identity. Random
    draws come from the module's own ``torch.Generator`` (seeded by ``config.seed``, on CPU), or from a
    generator passed to :meth:`forward`, so a run is reproducible. Parameters are drawn per *group* of
    ``group_size`` consecutive images, so all frames of one training sub-sequence can share a shadow.

    Args:
        config: augmentation settings.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.config = config or AugmentConfig()
        self.generator = torch.Generator()
        self.generator.manual_seed(int(self.config.seed))

    def reseed(self, seed: int) -> None:
        """Restart the internal generator from ``seed``."""
        self.generator.manual_seed(int(seed))

    def forward(
        self, images: Tensor, group_size: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Augment images (or return them unchanged in eval mode / when disabled).

        Args:
            images: float images ``(N, C, H, W)`` in [0, 1].
            group_size: consecutive images sharing the same random parameters; must divide ``N``.
            generator: CPU generator to draw from instead of the module's own.

        Returns:
            Augmented images ``(N, C, H, W)``, clipped to [0, 1].
        """
        if not (self.training and self.config.enabled):
            return images
        return self.augment(images, group_size, generator)

    def augment(
        self, images: Tensor, group_size: int = 1, generator: torch.Generator | None = None
    ) -> Tensor:
        """Augment regardless of the training flag (see :meth:`forward` for the arguments)."""
        if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"Augment expects float images (N, C, H, W) in [0, 1], got {_shape(images)}")
        n, _, h, w = images.shape
        if group_size < 1 or n % group_size:
            raise ValueError(f"group_size={group_size} must divide the number of images N={n}")
        gen = generator or self.generator
        cfg = self.config
        g = n // group_size
        cpu = torch.device("cpu")
        dev = images.device

        def per_image(t: Tensor) -> Tensor:  # (g,) -> (n, 1, 1, 1) on the images' device
            return t.repeat_interleave(group_size).to(dev, images.dtype).view(n, 1, 1, 1)

        out = images
        # Shadows: bars are bands |(x - x0) cos a + (y - y0) sin a| < width / 2 in pixel coordinates.
        ys = torch.arange(h, device=dev, dtype=images.dtype).view(1, h, 1)
        xs = torch.arange(w, device=dev, dtype=images.dtype).view(1, 1, w)
        diag = math.hypot(h, w)
        has_shadow = torch.rand(g, generator=gen, device=cpu) < cfg.shadow_prob
        n_bars = torch.randint(1, cfg.shadow_max_bars + 1, (g,), generator=gen, device=cpu)
        light = torch.ones(n, 1, h, w, device=dev, dtype=images.dtype)
        for bar in range(cfg.shadow_max_bars):
            active = has_shadow & (n_bars > bar)
            x0 = _uniform(g, (0.0, float(w)), gen, cpu)
            y0 = _uniform(g, (0.0, float(h)), gen, cpu)
            ang = _uniform(g, (0.0, math.pi), gen, cpu)
            width = _uniform(g, cfg.shadow_width, gen, cpu) * diag
            dark = _uniform(g, cfg.shadow_darkness, gen, cpu) * active
            dist = (xs - per_image(x0)[:, 0]) * per_image(torch.cos(ang))[:, 0] + (
                ys - per_image(y0)[:, 0]
            ) * per_image(torch.sin(ang))[:, 0]
            inside = (dist.abs() < per_image(width)[:, 0] / 2).unsqueeze(1)
            light = light * torch.where(inside, 1.0 - per_image(dark), torch.ones_like(light))
        out = out * light
        # Brightness and gamma.
        has_bright = (torch.rand(g, generator=gen, device=cpu) < cfg.brightness_prob).float()
        factor = 1.0 + has_bright * (_uniform(g, cfg.brightness_range, gen, cpu) - 1.0)
        gamma = 1.0 + has_bright * (_uniform(g, cfg.gamma_range, gen, cpu) - 1.0)
        out = out.clamp(0.0, 1.0).pow(per_image(gamma)) * per_image(factor)
        # Lens flare: an additive Gaussian blob.
        has_flare = (torch.rand(g, generator=gen, device=cpu) < cfg.flare_prob).float()
        fx = _uniform(g, (0.0, float(w)), gen, cpu)
        fy = _uniform(g, (0.0, float(h)), gen, cpu)
        fr = _uniform(g, (0.1, 0.4), gen, cpu) * diag
        strength = _uniform(g, cfg.flare_strength, gen, cpu) * has_flare
        r2 = (xs - per_image(fx)[:, 0]) ** 2 + (ys - per_image(fy)[:, 0]) ** 2
        blob = torch.exp(-r2 / (2 * per_image(fr)[:, 0] ** 2)).unsqueeze(1)
        out = out + per_image(strength) * blob
        # Gaussian pixel noise (independent per image even within a group).
        has_noise = (torch.rand(g, generator=gen, device=cpu) < cfg.noise_prob).float()
        std = _uniform(g, cfg.noise_std, gen, cpu) * has_noise
        noise = torch.randn(images.shape, generator=gen, device=cpu).to(dev, images.dtype)
        out = out + per_image(std) * noise
        return out.clamp(0.0, 1.0)
