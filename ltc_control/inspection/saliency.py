"""Where the policy looks: VisualBackprop and input-gradient saliency, overlays, videos and SSIM robustness.

- :func:`visual_backprop` (Bojarski et al. 2016, the NCP paper's attention maps): average each conv
  layer's ReLU feature maps over channels, then from the deepest layer up scale the map to the previous
  layer's size with an all-ones transposed convolution of that layer's kernel and stride, multiply
  pointwise, repeat down to the input.
- :func:`input_gradient_saliency`: ``max_c |d output / d input_c|`` per pixel.
- :func:`ssim` / :func:`saliency_ssim`: the structural similarity of Wang et al. (2004), 11 x 11
  Gaussian window (sigma 1.5), constants ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, ``L = 255``, computed
  on the valid region (no padding), as in the NCP paper's robustness measure.
- :func:`overlay_saliency`, :func:`write_video`: colour overlays on camera frames and mp4 output
  (H.264 by ffmpeg/libx264 first, which browsers play; OpenCV ``avc1`` / ``mp4v`` as fallbacks).

Saliency maps are float arrays in ``[0, 1]`` with the input image's height and width.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltc_control.video import VideoWriter

__all__ = [
    "SSIM_L",
    "conv_layers",
    "visual_backprop",
    "input_gradient_saliency",
    "normalize_maps",
    "ssim",
    "ssim_map",
    "saliency_ssim",
    "add_image_noise",
    "overlay_saliency",
    "write_video",
    "write_saliency_video",
    "policy_images",
    "policy_steering_fn",
    "policy_saliency",
    "saliency_robustness",
]

SSIM_L = 255.0


# ---------------------------------------------------------------------------------------------- saliency
def conv_layers(model: nn.Module) -> list[nn.Conv2d]:
    """The ``nn.Conv2d`` layers of ``model`` in registration (= forward, for a feed-forward head) order."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv2d layers; VisualBackprop needs a convolutional head "
            "(pass the policy's perception module)."
        )
    return layers


def _check_images(inputs: torch.Tensor) -> None:
    if inputs.dim() != 4:
        raise ValueError(
            f"Expected images of shape (B, C, H, W); got {tuple(inputs.shape)}. Fold time into the batch and "
            "move channels first."
        )
    if not torch.isfinite(inputs).all():
        raise ValueError("Input images contain NaN or inf; check the preprocessing.")


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of ``(B, H, W)`` to ``[0, 1]`` (a constant map becomes all zeros)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-30), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def _upscale(mask: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """Map a ``(B, 1, h, w)`` mask back through ``conv``'s geometry to ``size`` (all-ones deconvolution).

    The unpadded transposed convolution covers the conv's (padded) input; the padding is inferred from the
    sizes, so explicit ``padding=p``, TensorFlow-style asymmetric "same" padding done with ``F.pad`` before
    the conv, and "valid" convolutions that drop trailing rows are all mapped back exactly.
    """
    kh, kw = _pair(conv.kernel_size)
    sh, sw = _pair(conv.stride)
    dh, dw = _pair(conv.dilation)
    weight = torch.ones(1, 1, kh, kw, dtype=mask.dtype, device=mask.device)
    up = F.conv_transpose2d(mask, weight, stride=(sh, sw), dilation=(dh, dw))
    out_h, out_w = up.shape[2], up.shape[3]
    extra_h, extra_w = out_h - size[0], out_w - size[1]
    if extra_h < 0 or extra_w < 0:
        up = F.pad(up, (0, max(-extra_w, 0), 0, max(-extra_h, 0)))
    top, left = max(extra_h, 0) // 2, max(extra_w, 0) // 2
    return up[:, :, top : top + size[0], left : left + size[1]]


@torch.no_grad()
def visual_backprop(
    model: nn.Module, inputs: torch.Tensor, layers: Sequence[nn.Conv2d] | None = None
) -> torch.Tensor:
    """VisualBackprop saliency of a convolutional head.

    Args:
        model: the head; its forward must run the conv ``layers`` in order (trailing dense layers are fine).
        inputs: ``(B, C, H, W)`` float images exactly as ``model`` takes them (already standardised).
        layers: the conv layers to use, input side first (default: every ``nn.Conv2d`` of ``model``). Their
            outputs are passed through ReLU before averaging, as in the original method.

    Returns:
        ``(B, H, W)`` maps in ``[0, 1]``.
    """
    _check_images(inputs)
    convs = list(layers) if layers is not None else conv_layers(model)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        conv.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out))
        for k, conv in enumerate(convs)
    ]
    was_training = model.training
    try:
        model.eval()
        model(inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    missing = [k for k in range(len(convs)) if k not in captured]
    if missing:
        raise ValueError(
            f"Conv layers {missing} did not run in model.forward; pass the layers the head uses."
        )
    means = [F.relu(captured[k]).mean(dim=1, keepdim=True) for k in range(len(convs))]
    mask = means[-1]
    for k in range(len(convs) - 1, 0, -1):
        mask = _upscale(mask, convs[k], (means[k - 1].shape[2], means[k - 1].shape[3])) * means[k - 1]
    mask = _upscale(mask, convs[0], (inputs.shape[2], inputs.shape[3]))
    return normalize_maps(mask[:, 0])


def input_gradient_saliency(
    fn: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    output_index: int | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Gradient saliency ``max_c |d y / d x_c|`` of a differentiable image -> output map.

    Args:
        fn: maps ``(B, C, H, W)`` float images to ``(B, K)`` outputs (e.g. the steering command); each
            output row must depend on its own image only (no batch mixing), so one backward pass gives
            every gradient.
        inputs: ``(B, C, H, W)`` float images.
        output_index: which output column to explain (default: the sum of all columns).
        normalize: scale each map to ``[0, 1]``.

    Returns:
        ``(B, H, W)`` saliency maps.
    """
    _check_images(inputs)
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        if y.dim() == 1:
            y = y[:, None]
        if y.dim() != 2 or y.shape[0] != inputs.shape[0]:
            raise ValueError(f"fn must return (B, K) with B={inputs.shape[0]}; got {tuple(y.shape)}.")
        target = y.sum() if output_index is None else y[:, output_index].sum()
        (grad,) = torch.autograd.grad(target, x)
    maps = grad.abs().amax(dim=1)
    return normalize_maps(maps) if normalize else maps


# ---------------------------------------------------------------------------------------------- SSIM
def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(ax**2) / (2.0 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def ssim_map(
    a: np.ndarray, b: np.ndarray, data_range: float = SSIM_L, window: int = 11, sigma: float = 1.5
) -> np.ndarray:
    """Local SSIM of two grey images over the valid region (Gaussian window, no padding).

    Args:
        a: ``(H, W)`` image.
        b: ``(H, W)`` image on the same scale.
        data_range: L, the dynamic range of the values (255 for 8-bit images).
        window: Gaussian window side (odd).
        sigma: Gaussian standard deviation in pixels.

    Returns:
        ``(H - window + 1, W - window + 1)`` map of local SSIM values.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"SSIM needs two (H, W) images of the same shape; got {x.shape} and {y.shape}.")
    if window % 2 == 0 or min(x.shape) < window:
        raise ValueError(
            f"SSIM window must be odd and fit the image; got window {window} for shape {x.shape}."
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("SSIM inputs contain NaN or inf.")
    kernel = _gaussian_window(window, sigma)
    r = window // 2

    def filt(img: np.ndarray) -> np.ndarray:
        out = cv2.filter2D(img, cv2.CV_64F, kernel, borderType=cv2.BORDER_REFLECT)
        return np.asarray(out)[r : img.shape[0] - r, r : img.shape[1] - r]

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return np.asarray(num / den)


def ssim(
    a: np.ndarray, b: np.ndarray, data_range: float = SSIM_L, window: int = 11, sigma: float = 1.5
) -> float:
    """Mean SSIM of two ``(H, W)`` images (see :func:`ssim_map`); 1 for identical images."""
    return float(ssim_map(a, b, data_range, window, sigma).mean())


def saliency_ssim(clean: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """SSIM between clean and noisy saliency maps, frame by frame (the NCP paper's attention robustness).

    Args:
        clean: ``(T, H, W)`` maps in ``[0, 1]``.
        noisy: ``(T, H, W)`` maps in ``[0, 1]`` for the same frames with noise added.

    Returns:
        ``(T,)`` SSIM per frame, maps scaled to ``[0, 255]`` so that ``L = 255``.
    """
    c = np.asarray(clean, dtype=np.float64)
    n = np.asarray(noisy, dtype=np.float64)
    if c.shape != n.shape or c.ndim != 3:
        raise ValueError(f"Expected two (T, H, W) stacks of the same shape; got {c.shape} and {n.shape}.")
    return np.array([ssim(SSIM_L * c[t], SSIM_L * n[t]) for t in range(c.shape[0])])


def add_image_noise(frames: np.ndarray, variance: float, seed: int = 0) -> np.ndarray:
    """Zero-mean Gaussian noise of the given variance on images scaled to ``[0, 1]`` (DESIGN section 5).

    Args:
        frames: ``(..., H, W, C)`` uint8 images.
        variance: noise variance in ``[0, 1]`` units (0.1, 0.2, 0.3 in the paper).
        seed: noise seed (fixed so that every model sees the same noise).

    Returns:
        uint8 images of the same shape (clipped to ``[0, 1]`` and re-quantised).
    """
    arr = np.asarray(frames)
    if arr.dtype != np.uint8:
        raise ValueError(f"Expected uint8 camera frames; got dtype {arr.dtype}.")
    if not variance >= 0:
        raise ValueError(f"Noise variance must be >= 0; got {variance}.")
    rng = np.random.default_rng(seed)
    noisy = arr.astype(np.float64) / 255.0 + rng.normal(0.0, np.sqrt(variance), size=arr.shape)
    return np.asarray(np.round(np.clip(noisy, 0.0, 1.0) * 255.0), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- images
def overlay_saliency(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured saliency map onto an RGB frame.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB camera frame.
        saliency: ``(h, w)`` map in ``[0, 1]`` (resized to the frame).
        alpha: weight of the saliency colours.

    Returns:
        ``(H, W, 3)`` uint8 RGB overlay.
    """
    img = np.asarray(frame)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"Expected an (H, W, 3) uint8 RGB frame; got {img.shape} {img.dtype}.")
    sal = np.asarray(saliency, dtype=np.float32)
    if sal.ndim != 2:
        raise ValueError(f"Expected an (h, w) saliency map; got shape {sal.shape}.")
    resized = np.asarray(cv2.resize(sal, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR))
    colour = cv2.applyColorMap(np.asarray(np.clip(resized, 0, 1) * 255, dtype=np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return np.asarray(cv2.addWeighted(img, 1.0 - alpha, colour, alpha, 0.0), dtype=np.uint8)


def write_video(
    frames: np.ndarray | Sequence[np.ndarray], path: str | os.PathLike[str], fps: float = 30.0
) -> tuple[Path, str]:
    """Write RGB frames to an mp4 atomically: H.264 (ffmpeg/libx264) when available, else OpenCV's fallbacks.

    Uses :class:`ltc_control.video.VideoWriter` (the project's one mp4 writer).

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames (or a sequence of them).
        path: destination ``.mp4`` file.
        fps: frames per second.

    Returns:
        ``(path, codec)``: the file written and the codec that ran (``"h264"``, ``"avc1"`` or ``"mp4v"``, as
        :attr:`ltc_control.video.VideoWriter.codec`).
    """
    stack = [np.asarray(f) for f in frames]
    if not stack:
        raise ValueError("No frames to write.")
    h, w = stack[0].shape[:2]
    if any(f.shape != (h, w, 3) or f.dtype != np.uint8 for f in stack):
        raise ValueError("All frames must be uint8 RGB of one shape (H, W, 3).")
    if fps <= 0:
        raise ValueError(f"fps must be > 0; got {fps}.")
    # ltc_control.video tries ffmpeg/libx264, then OpenCV avc1 and mp4v, and writes atomically
    with VideoWriter(path, float(fps), (w, h)) as writer:
        for frame in stack:
            writer.write(frame)
    return writer.path, writer.codec


def write_saliency_video(
    frames: np.ndarray,
    maps: np.ndarray,
    path: str | os.PathLike[str],
    fps: float = 30.0,
    scale: int = 2,
    alpha: float = 0.5,
) -> tuple[Path, str]:
    """An mp4 of each camera frame beside its saliency overlay.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames.
        maps: ``(T, h, w)`` saliency maps in ``[0, 1]``.
        path: destination ``.mp4``.
        fps: frames per second.
        scale: integer upscaling of the panel (small dash-camera frames are hard to see at 1x).
        alpha: overlay weight.

    Returns:
        ``(path, fourcc)`` as :func:`write_video`.
    """
    f = np.asarray(frames)
    m = np.asarray(maps)
    if f.ndim != 4 or m.ndim != 3 or f.shape[0] != m.shape[0]:
        raise ValueError(f"Expected frames (T, H, W, 3) and maps (T, h, w); got {f.shape} and {m.shape}.")
    if scale < 1:
        raise ValueError(f"scale must be >= 1; got {scale}.")
    panels = []
    for frame, sal in zip(f, m):
        panel = np.concatenate([frame, overlay_saliency(frame, sal, alpha)], axis=1)
        if scale > 1:
            panel = cv2.resize(
                panel, (panel.shape[1] * scale, panel.shape[0] * scale), interpolation=cv2.INTER_NEAREST
            )
        # H.264 wants even sizes
        panel = panel[: panel.shape[0] - panel.shape[0] % 2, : panel.shape[1] - panel.shape[1] % 2]
        panels.append(np.ascontiguousarray(panel))
    return write_video(panels, path, fps)


# ---------------------------------------------------------------------------------------------- policies
def policy_images(policy: Any, frames: np.ndarray) -> torch.Tensor:
    """Camera frames -> the standardised ``(T, C, H, W)`` tensor the policy's ConvHead sees.

    Args:
        policy: an ``ltc_control.policy.Policy`` with image observations.
        frames: ``(T, H, W, 3)`` uint8 frames as the env returns them.
    """
    arr = np.asarray(frames)
    if arr.ndim != 4:
        raise ValueError(f"Expected frames (T, H, W, C); got shape {arr.shape}.")
    if getattr(policy, "perception", None) is None:
        raise ValueError(
            "This policy has no convolutional perception (vector observations): no image saliency."
        )
    was_training = policy.training
    policy.eval()  # no augmentation
    try:
        with torch.no_grad():
            images: torch.Tensor = policy.preprocess(arr[None])
    finally:
        policy.train(was_training)
    return images


def policy_steering_fn(
    policy: Any, states: torch.Tensor | None = None, dt: float | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable map from standardised images ``(B, C, H, W)`` to the policy's actions ``(B, A)``.

    Each image goes through the ConvHead, one controller step from ``states`` (the recurrent state before that
    frame; default the initial state) and the action head.

    Args:
        policy: an image ``Policy``.
        states: ``(B, state_size)`` states before each frame, or None for zeros.
        dt: step length (default the policy's configured control dt).
    """
    cell = policy.controller.cell
    step_dt = float(policy.config.controller.dt if dt is None else dt)

    def fn(images: torch.Tensor) -> torch.Tensor:
        feats = policy.perception(images)
        h = cell.initial_state(images.shape[0], device=images.device, dtype=feats.dtype)
        if states is not None:
            if tuple(states.shape) != tuple(h.shape):
                raise ValueError(f"states must be {tuple(h.shape)}; got {tuple(states.shape)}.")
            h = states.to(device=h.device, dtype=h.dtype)
        y, _ = cell(feats, h, step_dt)
        out: torch.Tensor = policy.action_head(y)
        return out

    return fn


def policy_saliency(
    policy: Any,
    frames: np.ndarray,
    method: str = "visual_backprop",
    states: np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Saliency maps of a policy for camera frames.

    Args:
        policy: an image ``Policy``.
        frames: ``(T, H, W, 3)`` uint8 frames.
        method: ``"visual_backprop"`` (the ConvHead's attention, independent of the recurrent state) or
            ``"gradient"`` (``|d steering / d pixel|`` through one controller step).
        states: ``(T, state_size)`` recurrent states *before* each frame, for ``"gradient"`` (default zeros).
        batch_size: frames per forward pass.

    Returns:
        ``(T, H, W)`` float maps in ``[0, 1]``.
    """
    if method not in ("visual_backprop", "gradient"):
        raise ValueError(f"method must be 'visual_backprop' or 'gradient'; got {method!r}.")
    images = policy_images(policy, frames)
    maps: list[np.ndarray] = []
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            if method == "visual_backprop":
                out = visual_backprop(policy.perception, chunk)
            else:
                st = None
                if states is not None:
                    st = torch.as_tensor(np.asarray(states)[start : start + batch_size], dtype=chunk.dtype)
                out = input_gradient_saliency(policy_steering_fn(policy, st), chunk, output_index=0)
            maps.append(out.detach().cpu().numpy())
    finally:
        policy.train(was_training)
    return np.concatenate(maps, axis=0)


def saliency_robustness(
    policy: Any,
    frames: np.ndarray,
    noise_variances: Sequence[float] = (0.1, 0.2, 0.3),
    seed: int = 0,
    num_frames: int = 200,
    method: str = "visual_backprop",
) -> dict[float, np.ndarray]:
    """SSIM between the saliency of clean and noisy frames (the NCP paper's attention-robustness measure).

    Args:
        policy: an image ``Policy``.
        frames: ``(T, H, W, 3)`` uint8 frames; the first ``num_frames`` are used.
        noise_variances: Gaussian noise variances on the ``[0, 1]`` image scale.
        seed: noise seed (the same for every model).
        num_frames: how many frames (the paper uses 200).
        method: saliency method (see :func:`policy_saliency`).

    Returns:
        noise variance -> ``(num_frames,)`` SSIM per frame.
    """
    clip = np.asarray(frames)[:num_frames]
    if clip.shape[0] == 0:
        raise ValueError("No frames given for the saliency robustness measure.")
    clean = policy_saliency(policy, clip, method)
    out: dict[float, np.ndarray] = {}
    for k, variance in enumerate(noise_variances):
        noisy = policy_saliency(policy, add_image_noise(clip, float(variance), seed + k), method)
        out[float(variance)] = saliency_ssim(clean, noisy)
    return out
