"""A small offscreen MuJoCo renderer that keeps one GL context across episodes.

``mujoco.Renderer`` is bound to one model, so a new road per episode would mean a new GL context (about 65 ms)
every reset. This renderer owns the GL context for the life of the env and only rebuilds the cheap per-model
parts (``MjrContext``, ``MjvScene``) when the model changes. One context serves every camera and image size up
to the model's offscreen framebuffer. It must be created in the process that renders (lazily, on first use):
a GL context created in a parent that then forks hangs the children.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable, Iterator
from typing import cast

import mujoco
import numpy as np
from numpy.typing import NDArray

__all__ = ["OffscreenRenderer"]


def _interrupt_classes(cls: type[BaseException] = KeyboardInterrupt) -> Iterator[type[BaseException]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _interrupt_classes(sub)


def _reraise_interrupt(exc: ctypes.ArgumentError) -> None:
    """Raise again the Ctrl-C / SIGTERM interrupt that ctypes wrapped while PyOpenGL (EGL) converted args.

    PyOpenGL converts ctypes arguments in Python code. A signal handler that raises there (Ctrl-C's
    KeyboardInterrupt, the CLI's SIGTERM-as-interrupt) reaches the caller as
    ``ctypes.ArgumentError("argument N: <ExceptionType>: <message>")``, with no chained exception, and the
    command's interrupt handling would miss it; the interrupt type named there is raised instead. Returns for
    any other argument error (the caller re-raises it).
    """
    match = re.match(r"argument \d+: (\w+): ?(.*)", str(exc), re.S)
    if match:
        for cls in _interrupt_classes():
            if cls.__name__ == match.group(1):
                raise cls(match.group(2)) from None


def _gl_call(func: Callable[[], object]) -> object:
    """``func()`` (a PyOpenGL/EGL call) with an interrupt during its argument conversion raised as such."""
    try:  # free when nothing is raised (the render path calls this once per frame)
        return func()
    except ctypes.ArgumentError as exc:
        _reraise_interrupt(exc)
        raise


class OffscreenRenderer:
    """Renders RGB images of fixed cameras from a model into uint8 arrays.

    Args:
        max_height: Largest image height this renderer will draw (px).
        max_width: Largest image width this renderer will draw (px).
    """

    def __init__(self, max_height: int, max_width: int) -> None:
        self._max = (int(max_height), int(max_width))
        self._gl: mujoco.GLContext | None = cast(
            mujoco.GLContext, _gl_call(lambda: mujoco.GLContext(int(max_width), int(max_height)))
        )
        _gl_call(self._gl.make_current)
        self._model: mujoco.MjModel | None = None
        self._ctx: mujoco.MjrContext | None = None
        self._scene: mujoco.MjvScene | None = None
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._perturb = mujoco.MjvPerturb()

    def set_model(self, model: mujoco.MjModel) -> None:
        """Upload a (new) model's meshes and textures; a no-op for the model already set."""
        if self._gl is None:
            raise RuntimeError("OffscreenRenderer was closed; create a new one.")
        if model is self._model:
            return
        h, w = self._max
        if model.vis.global_.offwidth < w or model.vis.global_.offheight < h:
            raise ValueError(
                f"model offscreen buffer {model.vis.global_.offheight}x{model.vis.global_.offwidth} "
                f"is smaller than the renderer's {h}x{w}; build the model with a larger offscreen_size."
            )
        _gl_call(self._gl.make_current)
        if self._ctx is not None:
            self._ctx.free()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100.value)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=max(64, 2 * model.ngeom + 16))
        # Shadows and reflections dominate CPU render time and carry no lane information. The skybox costs
        # about a third of a 96x96 frame on a CPU renderer; render() paints the empty background instead.
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        self._model = model

    def render(
        self,
        data: mujoco.MjData,
        camera_id: int,
        height: int,
        width: int,
        out: NDArray[np.uint8] | None = None,
        background: tuple[int, int, int] = (0, 0, 0),
    ) -> NDArray[np.uint8]:
        """Render camera ``camera_id`` into a ``(height, width, 3)`` uint8 image (top row first).

        Args:
            data: Simulation state to draw (its model must be the one given to :meth:`set_model`).
            camera_id: Index of a fixed camera in the model.
            height: Image height (px), at most the renderer's ``max_height``.
            width: Image width (px), at most the renderer's ``max_width``.
            out: Optional preallocated ``(height, width, 3)`` uint8 array to write into.
            background: RGB (0-255) painted where nothing was drawn (the sky). GL clears to black, so pure
                black pixels are background: scenes must keep every drawn pixel above 0 (ambient light > 0).

        Returns:
            The image (``out`` if given).
        """
        if self._gl is None or self._ctx is None or self._scene is None or self._model is None:
            raise RuntimeError("OffscreenRenderer.render() needs set_model() first (and not after close()).")
        if height > self._max[0] or width > self._max[1]:
            raise ValueError(f"image {height}x{width} exceeds the renderer's {self._max[0]}x{self._max[1]}.")
        _gl_call(self._gl.make_current)
        self._camera.fixedcamid = int(camera_id)
        mujoco.mjv_updateScene(
            self._model,
            data,
            self._option,
            self._perturb,
            self._camera,
            mujoco.mjtCatBit.mjCAT_ALL.value,
            self._scene,
        )
        rect = mujoco.MjrRect(0, 0, int(width), int(height))
        mujoco.mjr_render(rect, self._scene, self._ctx)
        buf = np.empty((height, width, 3), dtype=np.uint8)
        mujoco.mjr_readPixels(buf, None, rect, self._ctx)
        if any(background):
            buf[~buf.any(axis=2)] = background
        if out is None:
            return np.ascontiguousarray(buf[::-1])
        out[...] = buf[::-1]
        return out

    def close(self) -> None:
        """Free the GL resources (idempotent)."""
        if self._ctx is not None:
            if self._gl is not None:
                _gl_call(self._gl.make_current)
            self._ctx.free()
            self._ctx = None
        if self._gl is not None:
            gl, self._gl = self._gl, None
            _gl_call(gl.free)
        self._scene = None
        self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down GL already
            pass
