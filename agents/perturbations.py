"""Observation perturbations for noise-robustness evaluation (DESIGN.md section 5).

:class:`Perturbation` describes what is done to each camera image before the agent sees it: zero-mean
Gaussian noise of a given *variance* on the image scaled to [0, 1] (the protocol of Lechner et al. 2020),
plus optional brightness, blur and occlusion patches. The random numbers come from a generator seeded with
``(noise seed, road seed, step)``, so every model sees exactly the same noise on the same road.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Perturbation", "as_perturbation"]


@dataclass(frozen=True)
class Perturbation:
    """What is done to each observation before the agent sees it.

    Images (uint8 ``(H, W, C)``) are scaled to [0, 1]; then, in this order: ``brightness`` is added, the image
    is blurred with a Gaussian of ``blur_sigma`` pixels, ``occlusion_patches`` black squares of side
    ``occlusion_size * min(H, W)`` are drawn at random places, zero-mean Gaussian noise of variance
    ``noise_variance`` is added; the result is clipped to [0, 1] and rounded back to uint8. Float vector
    observations get only the Gaussian noise, in their own units.

    All random numbers of step ``t`` on road ``r`` come from ``numpy.random.default_rng([seed, r, t])``: two
    models evaluated on the same roads see identical noise, and a different ``seed`` gives different noise.

    Args:
        noise_variance: variance of the additive Gaussian noise on the [0, 1] image scale (0.1 -> std 0.316).
        seed: the noise seed.
        brightness: additive brightness offset on the [0, 1] scale (e.g. -0.2 darkens).
        blur_sigma: standard deviation of the Gaussian blur, in pixels (0 = none).
        occlusion_patches: number of black square patches per image.
        occlusion_size: patch side as a fraction of ``min(H, W)``.
        camera_offset: lateral dash-camera offset in metres (+ = left), applied by the env, not to the image:
            the ``LTC/`` envs get ``visuals={"camera_pos_offset": (0, offset, 0)}``, other envs a
            ``camera_offset`` keyword (an error if they have no such option). Used by :func:`evaluate`.
    """

    noise_variance: float = 0.0
    seed: int = 0
    brightness: float = 0.0
    blur_sigma: float = 0.0
    occlusion_patches: int = 0
    occlusion_size: float = 0.15
    camera_offset: float = 0.0

    def __post_init__(self) -> None:
        checks = {
            "noise_variance": self.noise_variance >= 0,
            "blur_sigma": self.blur_sigma >= 0,
            "occlusion_patches": self.occlusion_patches >= 0,
            "occlusion_size": 0 < self.occlusion_size <= 1,
            "seed": self.seed >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or not math.isfinite(float(value)):
                raise ValueError(
                    f"Perturbation.{name}={value!r} is invalid: variances, sigmas, counts and seeds must be "
                    "finite and >= 0 and occlusion_size in (0, 1]"
                )
        for name in ("brightness", "camera_offset"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"Perturbation.{name} must be finite, got {getattr(self, name)!r}")

    @property
    def is_identity(self) -> bool:
        """True when the perturbation leaves observations unchanged."""
        return (
            self.noise_variance == 0
            and self.brightness == 0
            and self.blur_sigma == 0
            and self.occlusion_patches == 0
        )

    def rng(self, road_seed: int, step: int, entry: int | None = None) -> np.random.Generator:
        """The generator for step ``step`` of road ``road_seed`` (identical for every model).

        Args:
            road_seed: the episode's road seed (>= 0).
            step: the step index (>= 0).
            entry: index of the entry in a Dict observation (None for plain observations).
        """
        if road_seed < 0 or step < 0:
            raise ValueError(f"road seed and step must be >= 0 for noise seeding, got {road_seed}, {step}")
        key = [int(self.seed), int(road_seed), int(step)] + ([] if entry is None else [int(entry)])
        return np.random.default_rng(key)

    def apply(self, obs: Any, road_seed: int, step: int) -> Any:
        """Perturb one observation.

        Args:
            obs: uint8 image ``(H, W, C)``, float vector ``(D,)``, or a dict of those (Dict observation
                spaces: only the uint8 images in it are perturbed, other entries are passed through).
            road_seed: the episode's road seed (the seed passed to ``env.reset``).
            step: the step index within the episode (0 = the observation returned by ``reset``).

        Returns:
            The perturbed observation, same shape and dtype as ``obs`` (``obs`` itself when nothing changes).
        """
        if self.is_identity:
            return obs
        if isinstance(obs, Mapping):
            # one generator per entry, derived from the entry's position, so entries get independent noise
            out = {}
            for k, (key, value) in enumerate(obs.items()):
                arr = np.asarray(value)
                out[key] = self._apply_array(arr, road_seed, step, k) if arr.dtype == np.uint8 else value
            return out
        return self._apply_array(np.asarray(obs), road_seed, step, None)

    def _apply_array(self, obs: np.ndarray, road_seed: int, step: int, entry: int | None) -> np.ndarray:
        rng = self.rng(road_seed, step) if entry is None else self.rng(road_seed, step, entry)
        if obs.dtype == np.uint8:
            if obs.ndim != 3:
                raise ValueError(f"image perturbations need a uint8 (H, W, C) image, got shape {obs.shape}")
            img = obs.astype(np.float32) * (1.0 / 255.0)
            if self.brightness:
                img += np.float32(self.brightness)
            if self.blur_sigma > 0:
                import cv2

                img = np.asarray(
                    cv2.GaussianBlur(img, (0, 0), sigmaX=float(self.blur_sigma)), dtype=np.float32
                )
                if img.ndim == 2:  # cv2 drops a trailing channel axis of size 1
                    img = img[:, :, None]
            if self.occlusion_patches:
                h, w = img.shape[:2]
                side = max(1, round(self.occlusion_size * min(h, w)))
                ys = rng.integers(0, max(1, h - side + 1), self.occlusion_patches)
                xs = rng.integers(0, max(1, w - side + 1), self.occlusion_patches)
                for y, x in zip(ys, xs):
                    img[y : y + side, x : x + side] = 0.0
            if self.noise_variance > 0:
                std = np.float32(math.sqrt(self.noise_variance))
                img += rng.standard_normal(img.shape, dtype=np.float32) * std
            np.clip(img, 0.0, 1.0, out=img)
            return np.rint(img * 255.0).astype(np.uint8)
        if self.noise_variance == 0:
            return obs
        noise = rng.standard_normal(obs.shape) * math.sqrt(self.noise_variance)
        return (obs + noise).astype(obs.dtype, copy=False)


def as_perturbation(noise: float | Perturbation | None, seed: int = 0) -> Perturbation:
    """A :class:`Perturbation` from a noise variance (None = clean) or the perturbation itself.

    Args:
        noise: Gaussian noise variance on the [0, 1] image scale, a :class:`Perturbation`, or None.
        seed: the noise seed used when ``noise`` is a number or None.

    Returns:
        The perturbation.
    """
    if noise is None:
        return Perturbation(seed=seed)
    if isinstance(noise, Perturbation):
        return noise
    return Perturbation(noise_variance=float(noise), seed=seed)
