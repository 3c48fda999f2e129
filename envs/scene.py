"""Builds the MuJoCo model of one episode: the car asset plus ground, road mesh, markings and lights (MjSpec).

The vehicle lives in ``assets/car.xml``; everything that changes per episode (road geometry, colours, light,
camera jitter) is added here through :class:`mujoco.MjSpec`, so a new road costs one compile (about 2 ms).
The road surface and its markings are single thin meshes (far cheaper to render than hundreds of boxes) that
do not collide: the car drives on the ground plane, which is flat everywhere.

Road layout (right-hand traffic, two lanes of ``lane_width``): the road's centre line (:class:`~.road.Road`)
is the centre of the car's lane, the right-hand lane. Markings: a solid edge line at ``-lane_width / 2``, the
centre line between the two lanes at ``+lane_width / 2`` (dashed or solid) and a solid edge line at
``+3 * lane_width / 2``; the paved surface extends ``shoulder`` metres beyond both edge lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import mujoco
import numpy as np
from numpy.typing import NDArray

from .road import Road

__all__ = [
    "CAR",
    "CarConstants",
    "VisualRandomization",
    "Visuals",
    "build_model",
    "car_xml",
]

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class CarConstants:
    """Geometry of the vehicle in ``assets/car.xml`` (kept in one place; a test checks they match the asset).

    Attributes:
        wheelbase: Distance between the axles (m).
        track: Distance between the left and right wheels (m).
        wheel_radius: Tyre radius (m).
        max_steer: Largest road-wheel steering angle (rad), the steering joints' range.
        front_axle: Distance from the car's reference point (mid-wheelbase) forward to the front axle (m).
    """

    wheelbase: float = 2.6
    track: float = 1.55
    wheel_radius: float = 0.31
    max_steer: float = 0.5
    front_axle: float = 1.3


CAR = CarConstants()


@lru_cache(maxsize=1)
def car_xml() -> str:
    """The vehicle's MJCF text (read once from the package data)."""
    return resources.files(__package__).joinpath("assets", "car.xml").read_text(encoding="utf-8")


@dataclass(frozen=True)
class Visuals:
    """Appearance of one episode. Colours are linear RGB in [0, 1].

    Attributes:
        road_rgb: Asphalt colour.
        marking_rgb: Colour of the lane markings.
        centre_line: ``"dashed"`` or ``"solid"`` line between the two lanes.
        line_width: Width of the painted lines (m).
        dash_length: Length of one dash (m); the gap is ``dash_gap``.
        dash_gap: Gap between dashes (m).
        ground_rgb1: First ground colour (off-road).
        ground_rgb2: Second ground colour (the checker / noise pattern).
        ground_pattern: ``"checker"``, ``"noise"`` or ``"flat"``.
        ground_texrepeat: How many metres one ground texture tile spans (m).
        sky_rgb: Sky colour, painted by the renderer where no geometry is drawn (no skybox: it costs a third
            of a small frame on a CPU renderer).
        light_dir: Direction the sun shines toward (x, y, z), normalised at build time (z < 0).
        light_diffuse: Sun intensity (diffuse, 0-1).
        ambient: Ambient light (0-1).
        camera_pos_offset: Dash-camera position jitter (dx, dy, dz) in the car frame (m).
        camera_rot_offset: Dash-camera rotation jitter (pitch, yaw) (rad; + pitch looks further down).
    """

    road_rgb: RGB = (0.30, 0.30, 0.32)
    marking_rgb: RGB = (0.95, 0.95, 0.92)
    centre_line: str = "dashed"
    line_width: float = 0.15
    dash_length: float = 3.0
    dash_gap: float = 4.5
    ground_rgb1: RGB = (0.24, 0.42, 0.18)
    ground_rgb2: RGB = (0.30, 0.48, 0.22)
    ground_pattern: str = "checker"
    ground_texrepeat: float = 4.0
    sky_rgb: RGB = (0.62, 0.75, 0.90)
    light_dir: tuple[float, float, float] = (0.3, 0.2, -1.0)
    light_diffuse: float = 0.6
    ambient: float = 0.35
    camera_pos_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    camera_rot_offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.centre_line not in ("dashed", "solid"):
            raise ValueError(f"Visuals.centre_line must be 'dashed' or 'solid', got {self.centre_line!r}.")
        if self.ground_pattern not in ("checker", "noise", "flat"):
            raise ValueError(
                f"Visuals.ground_pattern must be 'checker', 'noise' or 'flat', got {self.ground_pattern!r}."
            )
        if not (0.0 < self.line_width < 1.0):
            raise ValueError(f"Visuals.line_width must be in (0, 1) m, got {self.line_width!r}.")
        if self.dash_length <= 0 or self.dash_gap <= 0 or self.ground_texrepeat <= 0:
            raise ValueError("Visuals.dash_length, dash_gap and ground_texrepeat must be > 0 (m).")
        if self.light_dir[2] >= 0:
            raise ValueError(f"Visuals.light_dir must point downward (z < 0), got {self.light_dir!r}.")


@dataclass(frozen=True)
class VisualRandomization:
    """Ranges for per-episode visual randomisation (used when the env's ``randomize_visuals=True``).

    Every range is the half-width of a uniform perturbation around the default :class:`Visuals`, except the
    probabilities. Pass a dict with any of these keys as the env's ``visual_randomization`` to change them.

    Attributes:
        road_brightness: Asphalt grey level jitter (+-, added to every channel).
        sky: Sky colour jitter per channel (+-).
        ground_hue: Ground colour jitter per channel (+-).
        marking_yellow_probability: Probability that markings are yellow instead of white.
        solid_centre_probability: Probability of a solid (instead of dashed) centre line.
        line_width: Line width jitter (+- m).
        ground_pattern_probabilities: Probabilities of ``(checker, noise, flat)`` ground.
        light_angle: Sun direction jitter (+- rad, about both horizontal axes).
        light_diffuse: Sun intensity jitter (+-).
        ambient: Ambient light jitter (+-).
        camera_pos: Dash-camera position jitter (+- m per axis).
        camera_rot: Dash-camera pitch/yaw jitter (+- rad).
    """

    road_brightness: float = 0.08
    sky: float = 0.08
    ground_hue: float = 0.08
    marking_yellow_probability: float = 0.25
    solid_centre_probability: float = 0.25
    line_width: float = 0.04
    ground_pattern_probabilities: tuple[float, float, float] = (0.4, 0.4, 0.2)
    light_angle: float = 0.5
    light_diffuse: float = 0.2
    ambient: float = 0.1
    camera_pos: float = 0.03
    camera_rot: float = 0.02

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> VisualRandomization:
        """Build from a dict, rejecting unknown keys (the error lists the valid ones)."""
        if values is None:
            return cls()
        if isinstance(values, VisualRandomization):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"visual_randomization must be a dict or None, got {type(values).__name__}.")
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown visual_randomization keys {unknown}; valid keys: {sorted(valid)}.")
        out = cls(**values)
        probs = np.asarray(out.ground_pattern_probabilities, dtype=float)
        if (
            probs.shape != (3,)
            or np.any(probs < 0)
            or not math.isclose(float(probs.sum()), 1.0, abs_tol=1e-6)
        ):
            raise ValueError("ground_pattern_probabilities must be 3 non-negative numbers summing to 1.")
        return out

    def sample(self, rng: np.random.Generator, base: Visuals | None = None) -> Visuals:
        """Draw one episode's :class:`Visuals` from these ranges around ``base`` (default: defaults)."""
        b = base or Visuals()

        def jitter(rgb: RGB, amount: float, same: bool) -> RGB:
            d = rng.uniform(-amount, amount, size=1 if same else 3) * np.ones(3)
            out = np.clip(np.asarray(rgb) + d, 0.0, 1.0)
            return (float(out[0]), float(out[1]), float(out[2]))

        yellow = rng.random() < self.marking_yellow_probability
        solid = rng.random() < self.solid_centre_probability
        pattern = ("checker", "noise", "flat")[
            int(rng.choice(3, p=np.asarray(self.ground_pattern_probabilities)))
        ]
        a1, a2 = rng.uniform(-self.light_angle, self.light_angle, size=2)
        ld = np.asarray(b.light_dir, dtype=float)
        ld = _rot_y(a1) @ _rot_x(a2) @ ld
        if ld[2] > -0.2:
            ld[2] = -0.2
        # Jitter is added to the base camera offset so a deliberate offset (a robustness test) survives.
        cpos = np.asarray(b.camera_pos_offset) + rng.uniform(-self.camera_pos, self.camera_pos, 3)
        crot = np.asarray(b.camera_rot_offset) + rng.uniform(-self.camera_rot, self.camera_rot, 2)
        return replace(
            b,
            road_rgb=jitter(b.road_rgb, self.road_brightness, same=True),
            sky_rgb=jitter(b.sky_rgb, self.sky, same=False),
            marking_rgb=(0.95, 0.8, 0.15) if yellow else b.marking_rgb,
            centre_line="solid" if solid else "dashed",
            line_width=float(
                np.clip(b.line_width + rng.uniform(-self.line_width, self.line_width), 0.05, 0.5)
            ),
            ground_rgb1=jitter(b.ground_rgb1, self.ground_hue, same=False),
            ground_rgb2=jitter(b.ground_rgb2, self.ground_hue, same=False),
            ground_pattern=pattern,
            light_dir=(float(ld[0]), float(ld[1]), float(ld[2])),
            light_diffuse=float(np.clip(b.light_diffuse + rng.uniform(-1, 1) * self.light_diffuse, 0.1, 1.0)),
            ambient=float(np.clip(b.ambient + rng.uniform(-1, 1) * self.ambient, 0.05, 0.8)),
            camera_pos_offset=(float(cpos[0]), float(cpos[1]), float(cpos[2])),
            camera_rot_offset=(float(crot[0]), float(crot[1])),
        )


def _rot_x(a: float) -> NDArray[np.float64]:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=float)


def _rot_y(a: float) -> NDArray[np.float64]:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=float)


def _strip_mesh(
    left: NDArray[np.float64], right: NDArray[np.float64], z: float
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """Triangle strip between two polylines ``(P, 2)``; faces point up (+z)."""
    p = len(left)
    verts = np.empty((2 * p, 3))
    verts[0::2, :2] = right
    verts[1::2, :2] = left
    verts[:, 2] = z
    i = np.arange(p - 1)
    r0, l0, r1, l1 = 2 * i, 2 * i + 1, 2 * i + 2, 2 * i + 3
    faces = np.concatenate([np.stack([r0, r1, l0], 1), np.stack([l0, r1, l1], 1)]).astype(np.int32)
    return verts, faces


def _mesh_s(road: Road, start: float, end: float, step: float = 0.5) -> NDArray[np.float64]:
    """Arc lengths for mesh vertices: 0.5 m keeps the chord error under 2 mm at curvature 0.066 1/m while
    halving the triangle count of the road's own 0.2 m sampling (render time scales with it on CPU GL)."""
    n = max(2, int(math.ceil((end - start) / step)) + 1)
    return np.linspace(start, end, n)


def _line_mesh(
    road: Road, offset: float, width: float, z: float, dashes: tuple[float, float] | None
) -> tuple[NDArray[np.float64], NDArray[np.int32]]:
    """A painted line at a lateral ``offset`` (m): one strip, or one quad strip per dash."""
    if dashes is None:
        s = _mesh_s(road, 0.0, road.length)
        return _strip_mesh(
            road.offset_points(offset + 0.5 * width, s), road.offset_points(offset - 0.5 * width, s), z
        )
    dash, gap = dashes
    starts = np.arange(0.0, road.length, dash + gap)
    ends = np.minimum(starts + dash, road.length)
    n = max(2, int(math.ceil(dash / 1.0)) + 1)  # vertices along one dash (1 m apart)
    s = (starts[:, None] + (ends - starts)[:, None] * np.linspace(0.0, 1.0, n)[None, :]).reshape(-1)
    verts, faces = _strip_mesh(
        road.offset_points(offset + 0.5 * width, s), road.offset_points(offset - 0.5 * width, s), z
    )
    # One strip through all dashes; drop the quads that bridge the gap between consecutive dashes.
    quad = np.arange(len(s) - 1)
    keep = (quad % n) != n - 1
    nq = len(quad)
    faces = np.concatenate([faces[:nq][keep], faces[nq:][keep]])
    return verts, faces


def _add_mesh_geom(
    spec: mujoco.MjSpec,
    name: str,
    verts: NDArray[np.float64],
    faces: NDArray[np.int32],
    rgba: tuple[float, float, float, float],
) -> None:
    mesh = spec.add_mesh(name=name)
    mesh.uservert = verts.reshape(-1).astype(np.float32).tolist()
    mesh.userface = faces.reshape(-1).tolist()
    # A flat strip has no volume: shell inertia lets it compile (the geom is massless anyway).
    mesh.inertia = mujoco.mjtMeshInertia.mjMESH_INERTIA_SHELL
    spec.worldbody.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_MESH,
        meshname=name,
        contype=0,
        conaffinity=0,
        group=0,
        rgba=list(rgba),
        mass=0.0,
    )


def build_model(
    road: Road,
    *,
    lane_width: float,
    shoulder: float = 0.6,
    visuals: Visuals | None = None,
    timestep: float = 0.005,
    offscreen_size: tuple[int, int] = (480, 640),
) -> mujoco.MjModel:
    """Compile the MuJoCo model of one episode.

    Args:
        road: Centre line of the car's lane.
        lane_width: Lane width (m).
        shoulder: Paved width outside each edge line (m).
        visuals: Appearance (default :class:`Visuals`).
        timestep: Physics step (s).
        offscreen_size: ``(height, width)`` of the offscreen framebuffer (px), the largest image rendered.

    Returns:
        The compiled model.
    """
    vis = visuals or Visuals()
    spec = mujoco.MjSpec.from_string(car_xml())
    spec.modelname = "ltc_lane_keeping"
    spec.option.timestep = float(timestep)
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_PYRAMIDAL

    # Rendering: no multisampling (3x cost on CPU GL), near plane close enough to draw the hood.
    spec.visual.quality.offsamples = 0
    # No shadows are drawn; a 4096^2 shadow map would still be allocated per model (~100 ms per reset).
    spec.visual.quality.shadowsize = 0
    spec.visual.global_.offheight = int(offscreen_size[0])
    spec.visual.global_.offwidth = int(offscreen_size[1])
    spec.stat.extent = 10.0
    spec.stat.center = [0.0, 0.0, 0.0]
    spec.visual.map.znear = 0.01  # x extent = 0.1 m
    spec.visual.map.zfar = 30.0  # x extent = 300 m
    spec.visual.headlight.ambient = [vis.ambient] * 3
    spec.visual.headlight.diffuse = [0.15] * 3
    spec.visual.headlight.specular = [0.0] * 3

    ground_tex = spec.add_texture(name="ground", type=mujoco.mjtTexture.mjTEXTURE_2D)
    ground_tex.width = 64
    ground_tex.height = 64
    ground_tex.rgb1 = list(vis.ground_rgb1)
    ground_tex.rgb2 = list(vis.ground_rgb2)
    if vis.ground_pattern == "checker":
        ground_tex.builtin = mujoco.mjtBuiltin.mjBUILTIN_CHECKER
    else:
        ground_tex.builtin = mujoco.mjtBuiltin.mjBUILTIN_FLAT
        if vis.ground_pattern == "noise":
            ground_tex.mark = mujoco.mjtMark.mjMARK_RANDOM
            ground_tex.random = 0.15
            ground_tex.markrgb = list(vis.ground_rgb2)

    xmin, ymin, xmax, ymax = road.bounds(margin=120.0)
    half = (0.5 * (xmax - xmin), 0.5 * (ymax - ymin))
    ground_mat = spec.add_material(name="ground")
    ground_mat.textures[int(mujoco.mjtTextureRole.mjTEXROLE_RGB)] = "ground"
    ground_mat.texrepeat = [2.0 * half[0] / vis.ground_texrepeat, 2.0 * half[1] / vis.ground_texrepeat]
    ground_mat.specular = 0.0
    ground_mat.shininess = 0.0
    spec.worldbody.add_geom(
        name="ground",
        type=mujoco.mjtGeom.mjGEOM_PLANE,
        # The third size is the render grid spacing: a fine grid on a large plane costs ~30x render time.
        size=[half[0], half[1], max(half) / 2.0],
        pos=[0.5 * (xmin + xmax), 0.5 * (ymin + ymax), 0.0],
        material="ground",
        contype=1,
        conaffinity=1,
        condim=3,
        friction=[1.0, 0.005, 0.0001],
    )

    half_lane = 0.5 * lane_width
    right_edge = -half_lane - shoulder
    left_edge = 3.0 * half_lane + shoulder
    s_mesh = _mesh_s(road, 0.0, road.length)
    verts, faces = _strip_mesh(
        road.offset_points(left_edge, s_mesh), road.offset_points(right_edge, s_mesh), 0.01
    )
    _add_mesh_geom(spec, "road", verts, faces, (*vis.road_rgb, 1.0))
    lw = vis.line_width
    lines = [_line_mesh(road, -half_lane, lw, 0.02, None), _line_mesh(road, 3.0 * half_lane, lw, 0.02, None)]
    dashes = None if vis.centre_line == "solid" else (vis.dash_length, vis.dash_gap)
    lines.append(_line_mesh(road, half_lane, lw, 0.02, dashes))
    base = 0
    mv, mf = [], []
    for v, f in lines:
        mv.append(v)
        mf.append(f + base)
        base += len(v)
    _add_mesh_geom(spec, "markings", np.concatenate(mv), np.concatenate(mf), (*vis.marking_rgb, 1.0))

    ld = np.asarray(vis.light_dir, dtype=float)
    ld /= np.linalg.norm(ld)
    sun = spec.worldbody.add_light(name="sun")
    sun.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
    sun.dir = ld.tolist()
    sun.pos = [0.0, 0.0, 50.0]
    sun.diffuse = [vis.light_diffuse] * 3
    sun.specular = [0.1] * 3
    sun.ambient = [0.0] * 3
    # Shadows cost ~10x render time on CPU GL; the dash image does not need them.
    sun.castshadow = False

    cam = spec.camera("dash")
    if any(vis.camera_pos_offset) or any(vis.camera_rot_offset):
        cam.pos = (np.asarray(cam.pos) + np.asarray(vis.camera_pos_offset)).tolist()
        pitch = math.radians(10.0) + vis.camera_rot_offset[0]
        yaw = vis.camera_rot_offset[1]
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        up = np.array([math.sin(pitch) * math.cos(yaw), math.sin(pitch) * math.sin(yaw), math.cos(pitch)])
        cam.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
        cam.alt.xyaxes = [*right.tolist(), *up.tolist()]
    return spec.compile()
