"""Rendering a view as a radiologist sees it, with the model's heatmap, boxes and a banner.

Coordinates follow :mod:`models.registry`: (x, y) = (column, row), centre of the top-left
pixel at (0, 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pydicom

from models.preprocess import apply_window, pixels_from_dataset, to_bone_bright
from models.registry import Finding

__all__ = ["BANNER_TEXT", "BANNER_WARN", "LABEL_BACKGROUND", "display_image", "render_overlay",
           "resize_view"]

RGB = tuple[int, int, int]

#: Banner colours: normal text and the not-for-diagnostic-use warning.
BANNER_TEXT: RGB = (255, 255, 255)
BANNER_WARN: RGB = (255, 214, 0)
_BANNER_BACKGROUND: RGB = (24, 24, 24)
_BOX: RGB = (255, 255, 255)
_OUTLINE: RGB = (0, 0, 0)
#: Behind a score label: dark, slightly blue, so the label reads on white and on the heatmap.
LABEL_BACKGROUND: RGB = (16, 20, 40)
_FONT = cv2.FONT_HERSHEY_SIMPLEX

#: Heatmap values below this stay grey; above it the colour's opacity grows with the value.
HEATMAP_FLOOR = 0.1
HEATMAP_MAX_ALPHA = 0.6


def display_image(ds: pydicom.Dataset) -> np.ndarray:
    """The view as uint8 (Rows, Columns), bone bright, through its VOI LUT / window.

    Raises :class:`~models.preprocess.PreprocessError` when the pixels cannot be decoded.
    """
    values = pixels_from_dataset(ds)
    img01 = apply_window(values, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bright = to_bone_bright(img01, photometric)
    return np.rint(np.clip(bright, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_view(
    display: np.ndarray,
    heatmap: np.ndarray | None,
    findings: Sequence[Finding],
    *,
    max_size: int = 2048,
    min_width: int = 512,
) -> tuple[np.ndarray, np.ndarray | None, list[Finding], float]:
    """Scale a view so its longer side is at most ``max_size`` and, where that allows, its
    width at least ``min_width`` (so a banner on a small view stays legible).

    Returns the display, heatmap (None stays None: a view the model did not analyse),
    findings in the new pixel grid, and the scale factor.
    """
    if max_size < 64 or min_width < 1:
        raise ValueError(f"max_size must be >= 64 and min_width >= 1, got {max_size}, {min_width}")
    h, w = display.shape
    scale = min(1.0, max_size / max(h, w))
    if w * scale < min_width:
        scale = min(min_width / w, max_size / max(h, w))
    if abs(scale - 1.0) < 1e-9:
        return display, heatmap, list(findings), 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    new_display = cv2.resize(display, size, interpolation=interp)
    new_heatmap = (None if heatmap is None else np.clip(
        cv2.resize(heatmap.astype(np.float32), size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0))
    sx, sy = size[0] / w, size[1] / h

    def move(x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5

    moved = []
    for f in findings:
        box = None
        if f.box is not None:
            x0, y0 = move(f.box[0] - 0.5, f.box[1] - 0.5)
            x1, y1 = move(f.box[2] + 0.5, f.box[3] + 0.5)
            box = (x0 + 0.5, y0 + 0.5, x1 - 0.5, y1 - 0.5)
        moved.append(Finding(score=f.score, point=move(*f.point), box=box))
    return new_display, new_heatmap, moved, float(scale)


def _blend_heatmap(display: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    gray = np.repeat(display[:, :, None].astype(np.float32), 3, axis=2)
    heat = np.clip(np.nan_to_num(heatmap.astype(np.float32)), 0.0, 1.0)
    colour = cv2.applyColorMap(np.rint(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = np.where(heat >= HEATMAP_FLOOR, heat * HEATMAP_MAX_ALPHA, 0.0)[:, :, None]
    return np.rint(gray * (1.0 - alpha) + colour * alpha).astype(np.uint8)


def _draw_label(img: np.ndarray, text: str, anchor: tuple[int, int], fallback_top: int,
                scale: float) -> None:
    """Draw ``text`` in light letters on a filled dark rectangle, whole, inside ``img``.

    The rectangle's bottom-left corner goes at ``anchor``; when that is too close to the top
    edge, its top goes at ``fallback_top`` instead (inside the box, below the marker), and it
    shifts left, right, up as needed to lie inside the image. The font shrinks when the
    image is smaller than the label.
    """
    h, w = img.shape[:2]
    while True:
        thickness = max(1, round(scale * 1.5))
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
        pad = max(2, thickness + 1)
        rw, rh = tw + 2 * pad, th + base + 2 * pad
        if (rw <= w and rh <= h) or scale <= 0.2:
            break
        scale *= 0.8
    x0, y0 = anchor[0], anchor[1] - rh
    if y0 < 0:
        y0 = fallback_top
    x0 = min(max(x0, 0), max(w - rw, 0))
    y0 = min(max(y0, 0), max(h - rh, 0))
    cv2.rectangle(img, (x0, y0), (x0 + rw - 1, y0 + rh - 1), LABEL_BACKGROUND, cv2.FILLED)
    cv2.putText(img, text, (x0 + pad, y0 + pad + th), _FONT, scale, _BOX, thickness,
                cv2.LINE_AA)


def _draw_findings(img: np.ndarray, findings: Sequence[Finding]) -> None:
    h, w = img.shape[:2]
    thickness = max(1, round(max(h, w) / 600))
    marker = max(8, round(max(h, w) / 60))
    scale = max(0.4, max(h, w) / 1600)
    for f in findings:
        if f.box is not None:
            box = (round(f.box[0]), round(f.box[1]), round(f.box[2]), round(f.box[3]))
            cv2.rectangle(img, box[:2], box[2:], _OUTLINE, thickness + 2, cv2.LINE_AA)
            cv2.rectangle(img, box[:2], box[2:], _BOX, thickness, cv2.LINE_AA)
            # Above the box; a box at the top edge gets its label just inside its top line.
            anchor = (box[0] - thickness, box[1] - thickness - 1)
            fallback_top = box[1] + thickness + 2
        else:
            anchor = (round(f.point[0]) + marker, round(f.point[1]) - marker)
            fallback_top = round(f.point[1]) + marker
        point = (round(f.point[0]), round(f.point[1]))
        cv2.drawMarker(img, point, _OUTLINE, cv2.MARKER_CROSS, marker, thickness + 2, cv2.LINE_AA)
        cv2.drawMarker(img, point, _BOX, cv2.MARKER_CROSS, marker, thickness, cv2.LINE_AA)
        # The evidence score in percent, as the SR writes it; never 0 or 100 % for a score
        # strictly between (the SR's rule, at whole percents here).
        percent = round(100 * f.score)
        if 0.0 < f.score < 1.0:
            percent = min(max(percent, 1), 99)
        _draw_label(img, f"{percent}%", anchor, fallback_top, scale)


def _ascii(text: str) -> str:
    # OpenCV's Hershey fonts draw ASCII only.
    return text.encode("ascii", "replace").decode("ascii")


def _wrap(line: str, fits: int) -> list[str]:
    words, out, current = line.split(), [], ""
    for word in words:
        candidate = f"{current} {word}".strip()
        if current and len(candidate) > fits:
            out.append(current)
            current = word
        else:
            current = candidate
    return [*out, current] if current else out or [""]


def _banner(width: int, lines: Sequence[str], colours: Sequence[RGB]) -> np.ndarray:
    margin = max(4, width // 100)
    (ref_w, ref_h), _ = cv2.getTextSize("H", _FONT, 1.0, 1)
    target = min(max(width / 55.0, 11.0), 40.0)  # cap height in pixels
    scale = target / ref_h
    chars = max(8, int((width - 2 * margin) / (ref_w * scale * 1.05)))
    rows: list[tuple[str, RGB]] = []
    for line, colour in zip(lines, colours, strict=True):
        rows.extend((part, colour) for part in _wrap(_ascii(line), chars))
    widest = max(cv2.getTextSize(text, _FONT, scale, 1)[0][0] for text, _ in rows)
    if widest > width - 2 * margin:  # an unbreakable word: shrink the font
        scale *= (width - 2 * margin) / widest
    (_, text_h), base = cv2.getTextSize("Hg", _FONT, scale, 1)
    step = round(text_h * 1.7)
    thickness = max(1, round(scale * 1.6))
    banner = np.empty((margin * 2 + step * len(rows), width, 3), dtype=np.uint8)
    banner[:] = _BANNER_BACKGROUND
    for i, (text, colour) in enumerate(rows):
        y = margin + i * step + text_h + (step - text_h - base) // 2
        cv2.putText(banner, text, (margin, y), _FONT, scale, colour, thickness, cv2.LINE_AA)
    return banner


def render_overlay(
    display: np.ndarray,
    heatmap: np.ndarray | None,
    findings: Sequence[Finding],
    banner_lines: Sequence[str],
    *,
    line_colours: Sequence[RGB] | None = None,
) -> np.ndarray:
    """An RGB uint8 image (H + banner, W, 3): the view with the heatmap blended in (JET,
    opacity growing with the value, below :data:`HEATMAP_FLOOR` none), findings drawn (box,
    point, score) and a banner of ``banner_lines`` on top, sized to the image width.

    ``display`` is uint8 (H, W) bone bright, ``heatmap`` (H, W) in [0, 1] or None (a view
    the model did not analyse: the plain view, no colour), findings in the display's pixel
    coordinates. Raises ``ValueError`` on mismatched shapes.
    """
    display = np.asarray(display)
    if display.ndim != 2 or display.dtype != np.uint8:
        raise ValueError(f"display must be 2-D uint8, got {display.dtype} {display.shape}")
    if heatmap is None:
        if findings:
            raise ValueError("findings without a heatmap: a view not analysed has none")
        heatmap = np.zeros(display.shape, dtype=np.float32)
    heatmap = np.asarray(heatmap)
    if heatmap.shape != display.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from display {display.shape}")
    if not banner_lines:
        raise ValueError("banner_lines must not be empty")
    colours = list(line_colours) if line_colours is not None else [BANNER_TEXT] * len(banner_lines)
    if len(colours) != len(banner_lines):
        raise ValueError(f"{len(colours)} line colours for {len(banner_lines)} banner lines")
    image = _blend_heatmap(display, heatmap)
    _draw_findings(image, findings)
    banner = _banner(display.shape[1], banner_lines, colours)
    return np.ascontiguousarray(np.vstack([banner, image]))
