"""The artifacts of real films, per view, and their ground truth.

Collimator shutters, lead side markers, burned-in text, radiopaque rulers, anti-scatter grid
lines, and the projections of the study's implants and cast (see ``_implants``). A network
trained without them learns to fire on them: side markers bias fracture networks (Zech et
al., cited by seed 002's discussion), and framed, annotated real films break simple
preprocessing (seed 004 §4.2.2.2, §6.2.2.2). Every decision here is drawn from the study's
own artifact stream, never from its label, and both images of a broken/intact twin pair get
the same artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ._geometry import View
from ._imaging import DENSE, Beam, make_beam, standard_normal
from ._implants import StudyHardware, plan_hardware
from ._phantom import Phantom
from ._scene import coarse_view, render

KINDS = ("collimator", "marker", "text", "ruler", "hardware", "cast", "grid")  # manifest "kind"
COLLIMATION_RATE = 0.8  # views with at least one shutter edge in the image
BLACK_SHUTTER_RATE = 0.2  # collimated views whose borders the system masks black
MARKER_RATE = 0.9
INITIALS_RATE = 0.3
TEXT_RATE = 0.55
RULER_RATE = 0.12
GRID_RATE = 0.15
EDGE_BAND = 0.03  # a collimator box reaches this fraction of the image inside the shutter edge
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN,
          cv2.FONT_HERSHEY_COMPLEX_SMALL)
_SIDES = ("left", "top", "right", "bottom")
_ANCHORS = ((0, 0), (1, 0), (2, 0), (0, 2), (1, 2), (2, 2), (0, 1), (2, 1))  # (column, row)
_WORDS = ("PORTABLE", "SUPINE", "ERECT", "ED XR 2", "TRAUMA", "WEIGHT BEARING", "POST REDUCTION",
          "IN PLASTER", "SYNTHETIC", "PAEDS", "THEATRE", "XR ROOM 4")


@dataclass
class _Text:
    """A block of burned-in text: lines, font, anchor (bottom-left of the first line)."""

    lines: list[str]
    font: int
    scale: float
    thick: int
    x: int
    y: int
    step: int
    panel: bool


@dataclass
class ViewArtifacts:
    """Artifacts of one view: what they add to the beam, their truth and burned-in text."""

    beam: Beam
    records: list[dict[str, Any]]
    exposed_field: list[float]
    texts: list[_Text] = field(default_factory=list)
    annotation: list[str] = field(default_factory=list)
    window_mask: np.ndarray | None = None

    def burn(self, pixels: np.ndarray, top: int) -> None:
        """Burn the text blocks into the stored (bone-bright) pixels, in place.

        Text is white, or black over a bright background such as a white collimated border.
        """
        white = int(top * 0.98)
        for t in self.texts:
            _burn(pixels, t, white)


def _box(x0: float, y0: float, x1: float, y1: float, shape: tuple[int, int],
         pad: float = 0.0) -> list[float] | None:
    """``[x0, y0, x1, y1]`` padded and clipped to the image (inclusive), or None if outside."""
    h, w = shape
    b = [max(x0 - pad, 0.0), max(y0 - pad, 0.0), min(x1 + pad, w - 1.0), min(y1 + pad, h - 1.0)]
    if b[2] < b[0] or b[3] < b[1]:
        return None
    return [round(float(v), 2) for v in b]


def _mask_box(mask: np.ndarray, offset: tuple[int, int], shape: tuple[int, int],
              pad: float = 2.0) -> list[float] | None:
    """Tight box of the true pixels of ``mask`` placed at ``offset = (x, y)``, padded."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    ox, oy = offset
    return _box(ox + cols[0], oy + rows[0], ox + cols[-1], oy + rows[-1], shape, pad)


@dataclass(frozen=True)
class Marker:
    """The lead side marker of a study: the same letter, initials and holder in every view."""

    side: str
    initials: str | None
    height_mm: float
    font: int
    lead: float
    holder: float
    mirrored: bool


@dataclass(frozen=True)
class StudyArtifacts:
    """What a study carries into every view: its implants and cast, its side marker."""

    hardware: StudyHardware
    marker: Marker


def plan_study(ph: Phantom, rng: np.random.Generator) -> StudyArtifacts:
    """Draw the study-level artifacts (from the study's artifact stream only)."""
    hardware = plan_hardware(ph, rng)
    initials = None
    if rng.random() < INITIALS_RATE:
        initials = "".join(chr(int(c)) for c in rng.integers(65, 91, 2))
    marker = Marker(ph.side, initials, float(rng.uniform(4.0, 10.0)),
                    int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX])),
                    float(rng.uniform(2.5, 5.0)), float(rng.uniform(0.06, 0.15)),
                    bool(rng.random() < 0.2))
    return StudyArtifacts(hardware, marker)


@dataclass
class _Layers:
    """Accumulators: metal/lead and light objects in the beam, and the manifest entries."""

    shape: tuple[int, int]
    dense: np.ndarray
    light: np.ndarray
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, box: list[float] | None) -> None:
        if box is not None:
            self.records.append({"kind": kind, "box": box})


def view_artifacts(view: View, study: StudyArtifacts, roi: list[float], labels: dict[str, str],
                   rng: np.random.Generator) -> ViewArtifacts:
    """Draw and render the artifacts of one view.

    ``roi`` is the (intact) region of interest the shutters must leave exposed; ``labels``
    gives the side, view position, date and patient id that markers and text may show.
    Draws from ``rng`` in a fixed order that depends on nothing but the view geometry.
    """
    shape = view.shape
    h, w = shape
    layers = _Layers(shape, np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    transmission, shutter, dist = _collimation(view, roi, rng, layers)
    inside = dist >= 0.0 if dist is not None else None
    exposed = _mask_box(inside, (0, 0), shape, 0.0) if inside is not None else None
    exposed = exposed or [0.0, 0.0, w - 1.0, h - 1.0]
    _implants(view, study.hardware, layers)
    _cast(view, study.hardware, layers, rng)
    annotation: list[str] = []
    if rng.random() < MARKER_RATE:
        _marker(view, study.marker, exposed, layers, rng, annotation)
    if rng.random() < RULER_RATE:
        _ruler(view, exposed, layers, rng, annotation)
    grid = None
    if rng.random() < GRID_RATE:
        grid = _grid(view, rng)
        layers.add("grid", [0.0, 0.0, w - 1.0, h - 1.0])
    texts: list[_Text] = []
    if rng.random() < TEXT_RATE:
        for _ in range(int(rng.choice([1, 1, 2, 3]))):
            text = _text(shape, labels, rng)
            box = _text_box(text, shape)
            if box is not None:
                texts.append(text)
                layers.add("text", box)
                annotation.extend(text.lines)
    extra = layers.dense + layers.light
    window_mask = layers.dense <= DENSE
    if transmission is not None:
        window_mask &= transmission > 0.9
    for t in texts:
        box = _text_box(t, shape)
        if box is not None:
            x0, y0, x1, y1 = (int(v) for v in box)
            window_mask[y0:y1 + 1, x0:x1 + 1] = False
    metal = layers.dense if layers.dense.any() else None
    beam = make_beam(view, extra=extra if extra.any() else None, metal=metal,
                     field=transmission, grid=grid, shutter=shutter)
    return ViewArtifacts(beam, layers.records, exposed, texts, annotation, window_mask)


# --- collimation -----------------------------------------------------------------------


def _collimation(view: View, roi: list[float], rng: np.random.Generator, layers: _Layers
                 ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Shutter edges on 0-4 sides around ``roi``: transmission, black mask, signed distance.

    The field is a rectangle, sometimes turned by a few degrees; an edge is blurred by the
    focal spot's penumbra (~1 mm) and the shutters leak 0.05-0.5 % of the beam. Adds one
    ``collimator`` record per shuttered side: its strip plus ``EDGE_BAND`` of the image.
    """
    h, w = view.shape
    if rng.random() >= COLLIMATION_RATE:
        return None, None, None
    count = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.3, 0.25, 0.3]))
    chosen = set(rng.permutation(4)[:count].tolist())
    angle = float(np.radians(rng.normal(0.0, 2.0))) if rng.random() < 0.4 else 0.0
    c, s = np.cos(angle), np.sin(angle)
    margin = 0.04 * w + abs(s) * w / 2.0
    room = {"left": roi[0], "top": roi[1], "right": w - 1 - roi[2], "bottom": h - 1 - roi[3]}
    depths = rng.uniform(0.04, 0.28, 4) * np.array([w, h, w, h])
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    edges: list[tuple[str, np.ndarray, np.ndarray]] = []
    for k, side in enumerate(_SIDES):
        depth = min(float(depths[k]), room[side] - margin)
        if k not in chosen or depth < 0.03 * w:
            continue
        inward = {"left": (c, s), "top": (-s, c), "right": (-c, -s), "bottom": (s, -c)}[side]
        on_edge = {"left": (depth, cy), "top": (cx, depth), "right": (w - 1 - depth, cy),
                   "bottom": (cx, h - 1 - depth)}[side]
        edges.append((side, np.array(on_edge), np.array(inward)))
    if not edges:
        return None, None, None
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    for side, point, normal in edges:
        layers.add("collimator", _strip_box(side, point, normal, view.shape))
    if angle == 0.0:  # square to the image: the distance to the nearest edge is separable
        across = np.full(w, np.inf, dtype=np.float32)
        down = np.full(h, np.inf, dtype=np.float32)
        for _, point, normal in edges:
            if normal[0] != 0.0:
                np.minimum(across, (xs - point[0]) * np.float32(normal[0]), out=across)
            else:
                np.minimum(down, (ys - point[1]) * np.float32(normal[1]), out=down)
        dist = np.minimum.outer(down, across)
    else:
        dist = np.full((h, w), np.inf, dtype=np.float32)
        for _, point, normal in edges:
            np.minimum(dist, np.add.outer((ys - point[1]) * np.float32(normal[1]),
                                          (xs - point[0]) * np.float32(normal[0])), out=dist)
    penumbra = float(rng.uniform(0.6, 1.6)) / view.spacing
    leak = float(rng.uniform(0.0005, 0.005))
    transmission = np.tanh(dist * np.float32(1.0 / penumbra))
    transmission *= np.float32(0.5 * (1.0 - leak))
    transmission += np.float32(0.5 * (1.0 - leak) + leak)
    shutter = None
    if rng.random() < BLACK_SHUTTER_RATE:
        shutter = np.clip(dist + 0.5, 0.0, 1.0).astype(np.float32)
    return transmission, shutter, dist


def _strip_box(side: str, point: np.ndarray, normal: np.ndarray,
               shape: tuple[int, int]) -> list[float] | None:
    """Box of the unexposed strip beyond one shutter edge plus the inward band."""
    h, w = shape
    if side in ("left", "right"):
        ends = [point[0] - (y - point[1]) * normal[1] / normal[0] for y in (0.0, h - 1.0)]
        if side == "left":
            return _box(0.0, 0.0, max(ends) + EDGE_BAND * w, h - 1.0, shape)
        return _box(min(ends) - EDGE_BAND * w, 0.0, w - 1.0, h - 1.0, shape)
    ends = [point[1] - (x - point[0]) * normal[0] / normal[1] for x in (0.0, w - 1.0)]
    if side == "top":
        return _box(0.0, 0.0, w - 1.0, max(ends) + EDGE_BAND * h, shape)
    return _box(0.0, min(ends) - EDGE_BAND * h, w - 1.0, h - 1.0, shape)


# --- implants and casts ----------------------------------------------------------------


def _implants(view: View, hardware: StudyHardware, layers: _Layers) -> None:
    for implant in hardware.implants:
        line, _ = render([implant.group], view)
        layers.dense += line
        layers.add("hardware", _mask_box(line > 0.05, (0, 0), view.shape))


def _cast(view: View, hardware: StudyHardware, layers: _Layers,
          rng: np.random.Generator) -> None:
    cast = hardware.cast
    if cast is None:
        return
    h, w = view.shape
    # smooth but for the shell's edges, which stay several pixels wide at half resolution
    coarse, _ = render([cast.group], coarse_view(view, 2))
    line = np.asarray(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR),
                      dtype=np.float32)
    if cast.mesh:  # fibreglass: a woven mesh of ~3 mm
        period = float(rng.uniform(2.5, 4.0)) / view.spacing
        k = np.float32(2.0 * np.pi / period)
        xs = np.arange(w, dtype=np.float32) * k
        ys = np.arange(h, dtype=np.float32) * k
        mesh = np.cos(np.add.outer(ys, xs)) * np.cos(np.subtract.outer(ys, xs))
        line *= 1.0 + np.float32(rng.uniform(0.25, 0.45)) * mesh
    else:  # plaster: a granular texture
        grain = np.asarray(cv2.GaussianBlur(standard_normal((h, w), rng), (0, 0),
                                            max(0.6 / view.spacing, 0.5)), dtype=np.float32)
        grain /= max(float(grain.std()), 1e-6)
        line *= 1.0 + np.float32(0.12) * grain
    layers.light += line
    layers.add("cast", _mask_box(line > 0.01, (0, 0), view.shape))


# --- objects on the detector: markers and rulers ----------------------------------------


def _place(patch: np.ndarray, centre: tuple[float, float], angle: float,
           shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]] | None:
    """``patch`` turned by ``angle`` degrees about its centre, moved to ``centre`` (x, y).

    Returns the warped patch over its box in the image and the box's (x, y) offset, or None
    when it falls outside the image.
    """
    ph, pw = patch.shape
    m = cv2.getRotationMatrix2D(((pw - 1) / 2.0, (ph - 1) / 2.0), angle, 1.0)
    m[:, 2] += np.array(centre) - np.array([(pw - 1) / 2.0, (ph - 1) / 2.0])
    corners = np.array([[0, 0, 1], [pw - 1, 0, 1], [0, ph - 1, 1], [pw - 1, ph - 1, 1]]) @ m.T
    h, w = shape
    x0 = max(int(np.floor(corners[:, 0].min())) - 1, 0)
    y0 = max(int(np.floor(corners[:, 1].min())) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 2, w)
    y1 = min(int(np.ceil(corners[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    m[:, 2] -= (x0, y0)
    out = cv2.warpAffine(patch, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out, (x0, y0)


def _stamp(layers: _Layers, kind: str, dense: np.ndarray, light: np.ndarray,
           centre: tuple[float, float], angle: float) -> bool:
    """Place a lead/plastic pair of patches in the beam; records its box. False if outside."""
    placed = _place(dense, centre, angle, layers.shape)
    placed_light = _place(light, centre, angle, layers.shape)
    if placed is None or placed_light is None:
        return False
    (d, (x0, y0)), (lgt, _) = placed, placed_light
    layers.dense[y0:y0 + d.shape[0], x0:x0 + d.shape[1]] += d
    layers.light[y0:y0 + d.shape[0], x0:x0 + d.shape[1]] += lgt
    box = _mask_box((d > 0.05) | (lgt > 0.01), (x0, y0), layers.shape)
    layers.add(kind, box)
    return box is not None


def _text_mask(lines: list[str], font: int, scale: float, thick: int, line_step: int,
               pad: int) -> np.ndarray:
    """uint8 mask (255 = ink) of ``lines`` stacked, with ``pad`` pixels all round."""
    sizes = [cv2.getTextSize(t, font, scale, thick)[0] for t in lines]
    width = max(s[0] for s in sizes) + 2 * pad
    height = sizes[0][1] + line_step * (len(lines) - 1) + 2 * pad + thick + 2
    mask = np.zeros((height, width), dtype=np.uint8)
    for k, text in enumerate(lines):
        cv2.putText(mask, text, (pad, pad + sizes[0][1] + k * line_step), font, scale, 255,
                    thick, cv2.LINE_AA)
    return mask


def _inside_point(box: list[float], half: float, rng: np.random.Generator,
                  near_edge: bool) -> tuple[float, float]:
    """A point of ``box`` at least ``half`` from its sides; near one side if ``near_edge``."""
    x0, y0, x1, y1 = box[0] + half, box[1] + half, box[2] - half, box[3] - half
    if x1 <= x0:
        x0 = x1 = (box[0] + box[2]) / 2.0
    if y1 <= y0:
        y0 = y1 = (box[1] + box[3]) / 2.0
    x, y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
    if near_edge:
        band_x = 0.12 * (x1 - x0)
        band_y = 0.12 * (y1 - y0)
        side = int(rng.integers(4))
        if side == 0:
            x = float(rng.uniform(x0, x0 + band_x))
        elif side == 1:
            x = float(rng.uniform(x1 - band_x, x1))
        elif side == 2:
            y = float(rng.uniform(y0, y0 + band_y))
        else:
            y = float(rng.uniform(y1 - band_y, y1))
    return x, y


def _marker(view: View, marker: Marker, exposed: list[float], layers: _Layers,
            rng: np.random.Generator, annotation: list[str]) -> None:
    """The study's lead marker in its plastic holder, anywhere in the field, often near an
    edge, turned a little (sometimes on its side)."""
    height = marker.height_mm / view.spacing
    scale = height / 22.0
    thick = max(1, int(round(height / 6.5)))
    text = marker.side if marker.initials is None else f"{marker.side} {marker.initials}"
    pad = max(1, int(round(0.3 * height)))
    mask = _text_mask([text], marker.font, scale, thick, 0, pad)
    lead = (marker.lead / 255.0) * mask.astype(np.float32)
    holder = np.full(mask.shape, np.float32(marker.holder))
    if marker.mirrored:  # placed face down: the letters read mirrored
        lead = lead[:, ::-1].copy()
    angle = float(rng.normal(0.0, 12.0)) + (90.0 if rng.random() < 0.1 else 0.0)
    half = 0.5 * float(np.hypot(*mask.shape))
    centre = _inside_point(exposed, half, rng, near_edge=bool(rng.random() < 0.6))
    if _stamp(layers, "marker", lead, holder, centre, angle) and marker.initials:
        annotation.append(marker.initials)


def _ruler(view: View, exposed: list[float], layers: _Layers, rng: np.random.Generator,
           annotation: list[str]) -> None:
    """A radiopaque ruler: plastic strip, mm/5 mm/cm ticks and cm digits.

    Along an edge of the field or across the image (over soft tissue), at any angle.
    """
    sp = view.spacing
    h, w = view.shape
    length = min(float(rng.uniform(60.0, 160.0)), 0.95 * w * sp) / sp
    width = float(rng.uniform(10.0, 22.0)) / sp
    lp, wp = max(int(round(length)), 8), max(int(round(width)), 4)
    lead = np.zeros((wp, lp), dtype=np.uint8)
    attenuation = float(rng.uniform(1.5, 3.0))
    for mm in range(int(lp * sp) + 1):
        step = 10 if mm % 10 == 0 else 5 if mm % 5 == 0 else 1
        if step / sp < 2.0:
            continue
        x = int(round(mm / sp))
        tick = {10: 0.45, 5: 0.32, 1: 0.2}[step] * wp
        cv2.line(lead, (x, 0), (x, max(int(round(tick)), 1)), 255, 1, cv2.LINE_AA)
    digit_h = 0.22 * wp
    digits = digit_h >= 5.0
    if digits:
        scale = digit_h / 22.0
        for cm in range(1, int(lp * sp / 10.0) + 1):
            x = int(round(cm * 10.0 / sp))
            (tw, _), _ = cv2.getTextSize(str(cm), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            cv2.putText(lead, str(cm), (x - tw // 2, int(0.5 * wp + digit_h)),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, 255, 1, cv2.LINE_AA)
    dense = (attenuation / 255.0) * lead.astype(np.float32)
    light = np.full(lead.shape, np.float32(rng.uniform(0.03, 0.1)))
    x0, y0, x1, y1 = exposed
    centre: tuple[float, float]
    angle: float
    if rng.random() < 0.55:  # along a field edge
        edge = int(rng.integers(4))
        inset = wp / 2.0 + float(rng.uniform(0.01, 0.05)) * w
        along = float(rng.uniform(0.3, 0.7))
        if edge in (0, 2):
            at_x = x0 + inset if edge == 0 else x1 - inset
            centre, angle = (at_x, y0 + along * (y1 - y0)), 90.0
        else:
            at_y = y0 + inset if edge == 1 else y1 - inset
            centre, angle = (x0 + along * (x1 - x0), at_y), 0.0
        angle += float(rng.normal(0.0, 2.0)) + (180.0 if rng.random() < 0.5 else 0.0)
    else:  # across the image
        centre = (float(rng.uniform(x0 + 0.2 * (x1 - x0), x1 - 0.2 * (x1 - x0))),
                  float(rng.uniform(y0 + 0.2 * (y1 - y0), y1 - 0.2 * (y1 - y0))))
        angle = float(rng.uniform(0.0, 180.0))
    if _stamp(layers, "ruler", dense, light, centre, angle) and digits:
        annotation.append("ruler digits")


def _grid(view: View, rng: np.random.Generator) -> np.ndarray:
    """Anti-scatter grid lines (30-80 lines/cm, aliased into moire by the pixel grid)."""
    h, w = view.shape
    freq = float(rng.uniform(3.0, 8.0))  # lines per mm
    angle = float(np.radians(rng.normal(0.0, 0.7) + (90.0 if rng.random() < 0.5 else 0.0)))
    k = 2.0 * np.pi * freq * view.spacing
    # cos(a y + b x) = cos(a y) cos(b x) - sin(a y) sin(b x): two outer products
    ay = np.arange(h, dtype=np.float64) * k * np.sin(angle)
    bx = np.arange(w, dtype=np.float64) * k * np.cos(angle) + rng.uniform(0.0, 2.0 * np.pi)
    wave = np.multiply.outer(np.cos(ay).astype(np.float32), np.cos(bx).astype(np.float32))
    wave -= np.multiply.outer(np.sin(ay).astype(np.float32), np.sin(bx).astype(np.float32))
    depth = np.float32(rng.uniform(0.02, 0.06))
    wave *= -0.5 * depth
    wave += 1.0 - 0.5 * depth
    return wave


# --- burned-in text -----------------------------------------------------------------------


def _text(shape: tuple[int, int], labels: dict[str, str], rng: np.random.Generator) -> _Text:
    """A block of 1-3 annotation lines at a corner, an edge or anywhere."""
    h, w = shape
    options = [
        f"{labels['side']} {labels['position']} {labels['date']}",
        str(rng.choice(_WORDS)),
        f"{int(rng.integers(50, 90))}kV {float(rng.uniform(1.0, 40.0)):.1f}mAs",
        f"EI {int(rng.integers(150, 2500))}",
        f"S {int(rng.integers(80, 900))}  L {float(rng.uniform(1.2, 2.6)):.1f}",
        f"ID {labels['patient_id']}",
        f"{int(rng.integers(7, 23)):02d}:{int(rng.integers(0, 60)):02d}",
    ]
    count = int(rng.choice([1, 1, 2, 3]))
    picks = rng.choice(len(options), size=count, replace=False)
    lines = [options[int(i)] for i in picks]
    font = int(rng.choice(_FONTS))
    px = float(rng.uniform(0.012, 0.035)) * h
    base = cv2.getTextSize("X", font, 1.0, 1)[0][1]
    scale = px / max(base, 1)
    thick = max(1, int(round(px / 9.0)))
    step = int(round(px * 1.6))
    tw = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in lines)
    block_h = int(px) + step * (len(lines) - 1)
    mx, my = rng.uniform(0.02, 0.06, 2) * np.array([w, h])
    anchor = int(rng.integers(len(_ANCHORS) + 1))
    if anchor == len(_ANCHORS):  # anywhere
        x = float(rng.uniform(0, max(w - tw, 1)))
        y = float(rng.uniform(px, max(h - block_h, px + 1)))
    else:
        col, row = _ANCHORS[anchor]
        x = (mx, (w - tw) / 2.0, w - tw - mx)[col]
        y = (my + px, (h - block_h) / 2.0 + px, h - my - block_h + px)[row]
    return _Text(lines, font, scale, thick, int(max(x, 0)), int(max(y, px)), step,
                 bool(rng.random() < 0.25))


def _text_extent(t: _Text) -> tuple[int, int, int, int]:
    width = max(cv2.getTextSize(s, t.font, t.scale, t.thick)[0][0] for s in t.lines)
    height = cv2.getTextSize(t.lines[0], t.font, t.scale, t.thick)[0][1]
    return t.x, t.y - height - t.thick, t.x + width, t.y + t.step * (len(t.lines) - 1) + 2 * t.thick


def _text_box(t: _Text, shape: tuple[int, int]) -> list[float] | None:
    x0, y0, x1, y1 = _text_extent(t)
    pad = 2 + (2 * t.thick if t.panel else 0)
    return _box(x0, y0, x1, y1, shape, pad)


def _burn(pixels: np.ndarray, t: _Text, white: int) -> None:
    h, w = pixels.shape
    x0, y0, x1, y1 = _text_extent(t)
    bx0, by0 = max(x0 - 2 * t.thick, 0), max(y0 - 2 * t.thick, 0)
    bx1, by1 = min(x1 + 2 * t.thick, w - 1), min(y1 + 2 * t.thick, h - 1)
    if bx1 <= bx0 or by1 <= by0:
        return
    region = pixels[by0:by1 + 1, bx0:bx1 + 1]
    if t.panel:  # a dark panel behind the text
        region[...] = 0
        value = white
    else:
        value = 0 if float(region.mean()) > 0.6 * white else white
    mask = np.zeros(region.shape, dtype=np.uint8)
    for k, line in enumerate(t.lines):
        cv2.putText(mask, line, (t.x - bx0, t.y - by0 + k * t.step), t.font, t.scale, 255,
                    t.thick, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255.0
    region[...] = np.round(region * (1.0 - alpha) + float(value) * alpha).astype(pixels.dtype)
