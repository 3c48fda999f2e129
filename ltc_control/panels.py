"""Frame-composition helpers for rollout videos (OpenCV; no matplotlib per frame).

They work on RGB ``uint8 (H, W, 3)`` arrays in place or return new ones: :func:`fit` / :func:`upscale`
(resizing with letter-boxing), :func:`put_text`, :func:`draw_bar` (signed horizontal bars for steering
commands), :func:`draw_series` (a scrolling line plot), :class:`NeuronPanel` (every neuron's activity as a
labelled bar, grouped and coloured by role), :func:`grid` (tiling panels into one frame). The frames go to
:class:`ltc_control.video.VideoWriter`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

# RGB colours of the neuron roles in panels.
ROLE_COLORS: dict[str, tuple[int, int, int]] = {
    "sensory": (120, 200, 255),
    "inter": (110, 220, 120),
    "command": (255, 190, 70),
    "motor": (255, 90, 90),
    "hidden": (190, 160, 255),
}


_DEFAULT_ROLE_COLOR = (200, 200, 200)


_ROLE_ORDER = ("sensory", "inter", "command", "motor", "hidden")


Color = tuple[int, int, int]


def _as_rgb(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"expected an image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}"
        )
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
            arr = arr * 255.0
        arr = np.rint(np.clip(np.nan_to_num(arr), 0, 255)).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _canvas(height: int, width: int, color: Color) -> np.ndarray:
    """A new RGB image filled with ``color``.

    Fills row-wise: assigning an RGB tuple to a whole image goes through a per-pixel path that took 7 ms for
    960 x 540 here, against 0.4 ms this way.
    """
    r, g, b = (int(c) for c in color)
    if r == g == b:
        return np.full((height, width, 3), r, np.uint8)
    out = np.empty((height, width, 3), np.uint8)
    out[0] = (r, g, b)
    out[1:] = out[0]
    return out


def upscale(img: np.ndarray, scale: int) -> np.ndarray:
    """Enlarge an image by an integer factor with nearest-neighbour pixels (keeps the pixels visible).

    Args:
        img: image ``(H, W, C)``.
        scale: integer factor >= 1.

    Returns:
        RGB uint8 ``(H * scale, W * scale, 3)``.
    """
    if scale < 1:
        raise ValueError(f"upscale factor must be >= 1, got {scale}")
    rgb = _as_rgb(img)
    if scale == 1:
        return rgb
    return cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


def fit(img: np.ndarray, size: tuple[int, int], background: Color = (20, 20, 20)) -> np.ndarray:
    """Resize an image to fit inside ``size`` keeping its aspect ratio, centred on a background.

    Enlarging uses nearest-neighbour (crisp pixels of small camera images), shrinking uses area averaging.

    Args:
        img: image ``(H, W, C)``.
        size: ``(width, height)`` of the result.
        background: RGB fill colour of the margins.

    Returns:
        RGB uint8 ``(height, width, 3)``.
    """
    rgb = _as_rgb(img)
    width, height = int(size[0]), int(size[1])
    out = _canvas(height, width, background)
    h, w = rgb.shape[:2]
    s = min(width / w, height / h)
    nw, nh = max(1, int(w * s)), max(1, int(h * s))
    interp = cv2.INTER_NEAREST if s >= 1 else cv2.INTER_AREA
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp)
    y0, x0 = (height - nh) // 2, (width - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


def put_text(
    img: np.ndarray,
    text: str,
    org: tuple[int, int],
    scale: float = 0.45,
    color: Color = (255, 255, 255),
    thickness: int = 1,
) -> np.ndarray:
    """Draw text with a dark outline (readable on any background), in place.

    Args:
        img: RGB uint8 image, modified in place.
        text: the text (ASCII).
        org: bottom-left corner of the text ``(x, y)`` in pixels.
        scale: font scale (0.45 is about 10 px high).
        color: RGB colour.
        thickness: stroke width in pixels.

    Returns:
        ``img``.
    """
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, text, org, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, scale, color, thickness, cv2.LINE_AA)
    return img


def draw_bar(
    img: np.ndarray,
    value: float,
    rect: tuple[int, int, int, int],
    color: Color = (80, 170, 255),
    vmax: float = 1.0,
    label: str | None = None,
    signed: bool = True,
) -> np.ndarray:
    """Draw a horizontal bar for a value, in place.

    Signed bars grow from the centre, to the right for positive values and to the left for negative ones;
    unsigned bars grow from the left edge. Values beyond ``vmax`` are clipped and marked with a white end.

    Args:
        img: RGB uint8 image, modified in place.
        value: the value (NaN draws an empty bar).
        rect: ``(x, y, width, height)`` of the bar's box.
        color: RGB fill colour.
        vmax: value drawn as a full half-width (signed) or full width (unsigned).
        label: text drawn to the left of the bar inside the box's top line.
        signed: centre-zero bar.

    Returns:
        ``img``.
    """
    x, y, w, h = (int(v) for v in rect)
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (70, 70, 70), 1)
    if np.isfinite(value) and vmax > 0:
        frac = float(np.clip(value / vmax, -1.0, 1.0))
        if signed:
            cx = x + w // 2
            end = int(round(cx + frac * (w // 2 - 1)))
            x0, x1 = sorted((cx, end))
            cv2.rectangle(img, (x0, y + 1), (max(x0, x1), y + h - 2), color, -1)
            cv2.line(img, (cx, y), (cx, y + h - 1), (230, 230, 230), 1)
        else:
            end = int(round(x + max(0.0, frac) * (w - 1)))
            cv2.rectangle(img, (x, y + 1), (max(x, end), y + h - 2), color, -1)
        if abs(value) > vmax:
            edge = x + w - 2 if value > 0 or not signed else x + 1
            cv2.line(img, (edge, y), (edge, y + h - 1), (255, 255, 255), 2)
    if label:
        put_text(img, label, (x + 3, y + h - max(2, (h - 9) // 2)), scale=0.38)
    return img


def draw_series(
    img: np.ndarray,
    series: Mapping[str, tuple[Sequence[float] | np.ndarray, Color]],
    rect: tuple[int, int, int, int],
    vmin: float,
    vmax: float,
    window: int = 150,
    title: str | None = None,
) -> np.ndarray:
    """Draw a scrolling line plot of the last ``window`` values of one or more series, in place.

    Args:
        img: RGB uint8 image, modified in place.
        series: name -> (values, RGB colour); the newest value is drawn at the right edge.
        rect: ``(x, y, width, height)`` of the plot box.
        vmin: value at the bottom edge (values outside are clipped).
        vmax: value at the top edge.
        window: number of most recent values shown across the width.
        title: text at the top-left corner of the box.

    Returns:
        ``img``.
    """
    x, y, w, h = (int(v) for v in rect)
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (70, 70, 70), 1)
    if vmax <= vmin:
        raise ValueError(f"draw_series needs vmax > vmin, got vmin={vmin}, vmax={vmax}")
    if vmin < 0 < vmax:
        zy = int(round(y + (h - 1) * (vmax / (vmax - vmin))))
        cv2.line(img, (x, zy), (x + w - 1, zy), (90, 90, 90), 1)
    legend_x = x + 4
    for name, (values, color) in series.items():
        vals = np.asarray(values, dtype=np.float64)[-window:]
        finite = np.isfinite(vals)
        if vals.size >= 2 and finite.any():
            xs = x + (w - 1) - (vals.size - 1 - np.arange(vals.size)) * (w - 1) / max(1, window - 1)
            ys = y + (h - 1) * (vmax - np.clip(vals, vmin, vmax)) / (vmax - vmin)
            pts = np.stack([xs, ys], axis=1)[finite].round().astype(np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, color, 1, cv2.LINE_AA)
        put_text(img, name, (legend_x, y + h - 5), scale=0.35, color=color)
        legend_x += 8 * len(name) + 12
    if title:
        put_text(img, title, (x + 4, y + 13), scale=0.38)
    return img


class NeuronPanel:
    """Renders every controller neuron's activity as a labelled bar, grouped and coloured by role.

    Activity scales differ between cells (LTC potentials, LSTM hidden states in [-1, 1]) and between layers;
    every neuron of a role is drawn on that role's scale: the largest absolute activity any neuron of the role
    has shown so far in the video (at least ``min_scale``). Bars of one role are comparable with each other,
    a quiet layer is not flattened by a loud one, and the scale (printed per role) only grows.
    An optional sensory summary (the perception features fed to the controller) is drawn as a heat strip.

    Args:
        roles: role of each neuron (``"inter"``, ``"command"``, ``"motor"``, ``"hidden"``...), length N.
        names: label of each neuron, length N (defaults to ``n0``, ``n1``...).
        min_scale: smallest normalisation scale (keeps near-constant neurons from filling their bar).
    """

    def __init__(
        self, roles: Sequence[str], names: Sequence[str] | None = None, min_scale: float = 1e-3
    ) -> None:
        self.roles = [str(r) for r in roles]
        self.names = (
            [str(n) for n in names] if names is not None else [f"n{i}" for i in range(len(self.roles))]
        )
        if len(self.names) != len(self.roles):
            raise ValueError(
                f"NeuronPanel: {len(self.names)} names for {len(self.roles)} roles; pass one each"
            )
        self.scale = np.full(len(self.roles), float(min_scale))
        self.sensory_scale = float(min_scale)
        # display order: roles in the sensory -> motor flow, then anything else, stable within a role
        self._members = {r: np.flatnonzero(np.asarray(self.roles) == r) for r in set(self.roles)}
        rank = {r: i for i, r in enumerate(_ROLE_ORDER)}
        self.order = sorted(range(len(self.roles)), key=lambda i: (rank.get(self.roles[i], len(rank)), i))

    @property
    def num_neurons(self) -> int:
        """Number of neurons N."""
        return len(self.roles)

    def render(
        self, activity: np.ndarray | None, size: tuple[int, int], sensory: np.ndarray | None = None
    ) -> np.ndarray:
        """Draw the panel.

        Args:
            activity: float ``(N,)`` activity of each neuron (None or empty: a "no neurons" panel).
            size: ``(width, height)`` in pixels.
            sensory: optional float ``(S,)`` sensory features, drawn as a heat strip at the top.

        Returns:
            RGB uint8 ``(height, width, 3)``.
        """
        width, height = int(size[0]), int(size[1])
        img = np.full((height, width, 3), 25, np.uint8)
        put_text(img, "neurons", (6, 14), scale=0.42)
        top = 20
        if sensory is not None and np.asarray(sensory).size:
            top = self._draw_sensory(img, np.asarray(sensory, dtype=np.float64).reshape(-1), top, width)
        n = self.num_neurons
        if activity is None or n == 0 or np.asarray(activity).size == 0:
            put_text(img, "no recurrent neurons", (6, top + 16), scale=0.42, color=(180, 180, 180))
            return img
        act = np.asarray(activity, dtype=np.float64).reshape(-1)
        if act.size != n:
            raise ValueError(f"NeuronPanel has {n} neurons but got activity of shape {act.shape}")
        finite = np.isfinite(act)
        groups = [r for r in _ROLE_ORDER if r in self.roles] + sorted(set(self.roles) - set(_ROLE_ORDER))
        legend_x = 70
        for role in groups:
            members = self._members[role]
            ok = members[finite[members]]
            if ok.size:
                self.scale[members] = max(float(self.scale[members[0]]), float(np.max(np.abs(act[ok]))))
            color = ROLE_COLORS.get(role, _DEFAULT_ROLE_COLOR)
            text = f"{role} {self.scale[members[0]]:.2g}"
            put_text(img, text, (legend_x, 14), scale=0.38, color=color)
            legend_x += 7 * len(text) + 12
        avail = height - top - 4
        cols = max(1, int(np.ceil(n * 11 / max(1, avail))))
        rows = int(np.ceil(n / cols))
        row_h = max(3, min(16, avail // max(1, rows)))
        col_w = (width - 8) // cols
        label_w = min(70, col_w // 3) if row_h >= 9 else 0
        for k, i in enumerate(self.order):
            c, r = divmod(k, rows)
            x = 4 + c * col_w
            y = top + r * row_h
            color = ROLE_COLORS.get(self.roles[i], _DEFAULT_ROLE_COLOR)
            if label_w:
                put_text(img, self.names[i][:10], (x, y + row_h - 3), scale=0.32, color=color)
            value = act[i] / self.scale[i] if finite[i] else float("nan")
            draw_bar(img, value, (x + label_w, y + 1, col_w - label_w - 4, max(2, row_h - 2)), color=color)
        return img

    def _draw_sensory(self, img: np.ndarray, sensory: np.ndarray, top: int, width: int) -> int:
        finite = np.isfinite(sensory)
        if finite.any():
            self.sensory_scale = max(self.sensory_scale, float(np.max(np.abs(sensory[finite]))))
        vals = np.where(finite, sensory / self.sensory_scale, 0.0)
        put_text(img, f"sensory ({sensory.size})", (6, top + 11), scale=0.35, color=ROLE_COLORS["sensory"])
        x0, x1 = 100, width - 6
        cell = max(1.0, (x1 - x0) / sensory.size)
        for k, v in enumerate(vals):
            g = int(round(np.clip(abs(v), 0.0, 1.0) * 255))
            color = (g, g // 2, 40) if v >= 0 else (40, g // 2, g)
            xa = int(x0 + k * cell)
            cv2.rectangle(img, (xa, top + 2), (max(xa, int(x0 + (k + 1) * cell) - 1), top + 12), color, -1)
        return top + 18


def grid(panels: Sequence[np.ndarray], cols: int, background: Color = (0, 0, 0)) -> np.ndarray:
    """Tile equally sized panels into a grid, row by row.

    Args:
        panels: RGB uint8 images, all of the same shape ``(h, w, 3)``.
        cols: number of columns.
        background: fill colour of empty cells.

    Returns:
        RGB uint8 ``(rows * h, cols * w, 3)``.
    """
    if not panels:
        raise ValueError("grid() needs at least one panel")
    h, w = panels[0].shape[:2]
    for p in panels:
        if p.shape != (h, w, 3):
            raise ValueError(f"grid panels must all have shape {(h, w, 3)}, got {p.shape}")
    rows = int(np.ceil(len(panels) / cols))
    out = _canvas(rows * h, cols * w, background)
    for k, p in enumerate(panels):
        r, c = divmod(k, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = p
    return out
