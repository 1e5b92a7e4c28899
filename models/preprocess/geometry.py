"""Geometric steps: anatomy splitting (seed 004 §4.2.2.3), rotation alignment (§4.2.2.4),
resize vs aspect-preserving padding (§6.2.2.1) and mapping maps back to the original grid.

Every step returns the :class:`Affine2D` from its input grid to its output grid (pixel centres
at integer coordinates, the ``cv2.warpAffine`` convention).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import ArrayLike

from ._image import as_image, otsu_mask
from .affine import Affine2D

__all__ = [
    "align_rotation",
    "pad_resize",
    "principal_angle",
    "resize",
    "split_anatomy",
    "warp_to_original",
]


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise TypeError("size must be an int or a (height, width) tuple, got bool")
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
            raise TypeError(f"size values must be ints, got {size!r}")
        h, w = int(size[0]), int(size[1])
    else:
        raise TypeError(f"size must be an int or a (height, width) tuple, got {size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _resize_transform(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> Affine2D:
    """Exact pixel-centre mapping of ``cv2.resize``: x' = (x + 0.5) * W / w - 0.5."""
    (h, w), (hh, ww) = src_hw, dst_hw
    sx, sy = ww / w, hh / h
    return Affine2D(
        np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    )


def _cv2_resize(img: np.ndarray, dst_hw: tuple[int, int]) -> np.ndarray:
    h, w = img.shape
    hh, ww = dst_hw
    if (hh, ww) == (h, w):
        return img.copy()
    # Area averaging when shrinking (no aliasing), bilinear otherwise; both follow the
    # half-pixel centre convention of _resize_transform.
    interp = cv2.INTER_AREA if hh <= h and ww <= w else cv2.INTER_LINEAR
    return cv2.resize(img, (ww, hh), interpolation=interp)


def resize(img: ArrayLike, size: int | tuple[int, int]) -> tuple[np.ndarray, Affine2D]:
    """Seed 004 §6.2.2.1 "resize": plain resize to ``size`` = (h, w) (or h = w = size).

    Returns the float32 image and the exact original -> resized transform.
    """
    arr = as_image(img)
    dst = _size_hw(size)
    return _cv2_resize(arr, dst), _resize_transform(arr.shape, dst)


def pad_resize(img: ArrayLike, size: int | tuple[int, int]) -> tuple[np.ndarray, Affine2D]:
    """Seed 004 §6.2.2.1 "padding": aspect-preserving resize then centred zero padding.

    Returns the float32 image of shape ``size`` and the exact original -> output transform.
    """
    arr = as_image(img)
    h, w = arr.shape
    hh, ww = _size_hw(size)
    scale = min(hh / h, ww / w)
    nh = min(hh, max(1, int(round(h * scale))))
    nw = min(ww, max(1, int(round(w * scale))))
    scaled = _cv2_resize(arr, (nh, nw))
    top, left = (hh - nh) // 2, (ww - nw) // 2
    out = np.zeros((hh, ww), dtype=np.float32)
    out[top : top + nh, left : left + nw] = scaled
    transform = _resize_transform((h, w), (nh, nw)).then(Affine2D.translation(left, top))
    return out, transform


def warp_to_original(
    map2d: ArrayLike, transform: Affine2D, original_shape: tuple[int, int]
) -> np.ndarray:
    """Resample a map on the destination grid of ``transform`` onto the original grid.

    ``transform`` maps original -> destination (as returned by the steps here); each original
    pixel takes the bilinear value at its mapped location, zero outside the map. float32.
    """
    arr = as_image(map2d, name="map2d")
    if not isinstance(transform, Affine2D):
        raise TypeError(f"transform must be an Affine2D, got {type(transform).__name__}")
    oh, ow = _size_hw(tuple(original_shape))  # type: ignore[arg-type]
    return cv2.warpAffine(
        arr,
        transform.to_cv2(),
        (ow, oh),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def split_anatomy(
    img01: ArrayLike, *, min_area_fraction: float = 0.02, margin: int = 0
) -> list[tuple[np.ndarray, Affine2D]]:
    """Seed 004 §4.2.2.3: split an image holding several anatomic parts.

    Otsu binarisation, 8-connected components, components smaller than
    ``min_area_fraction`` of the image dropped; one bounding-box crop (grown by ``margin``
    pixels, clipped to the image) per remaining component, ordered left to right. Each
    transform maps original -> crop. With no component the whole image is returned once.
    """
    img = as_image(img01, name="img01")
    if not 0.0 <= min_area_fraction < 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction!r}")
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ValueError(f"margin must be a non-negative int, got {margin!r}")
    h, w = img.shape
    mask = otsu_mask(img)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    min_area = min_area_fraction * h * w
    boxes = [
        (int(x), int(y), int(bw), int(bh))
        for x, y, bw, bh, area in stats[1:count]
        if area >= max(min_area, 1)
    ]
    if not boxes:
        return [(img.copy(), Affine2D.identity())]
    boxes.sort(key=lambda b: (b[0], b[1]))
    crops: list[tuple[np.ndarray, Affine2D]] = []
    for x, y, bw, bh in boxes:
        x0, y0 = max(0, x - margin), max(0, y - margin)
        x1, y1 = min(w, x + bw + margin), min(h, y + bh + margin)
        crops.append((img[y0:y1, x0:x1].copy(), Affine2D.translation(-x0, -y0)))
    return crops


def _clean_mask(mask: np.ndarray) -> np.ndarray:
    """Seed 004 §4.2.2.4: morphological close (fill holes) then open (remove specks)."""
    k = max(3, 2 * int(round(0.005 * min(mask.shape))) + 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return cv2.morphologyEx(closed, cv2.MORPH_OPEN, kernel)


def principal_angle(mask: np.ndarray) -> tuple[float, float] | None:
    """PCA of the foreground pixel coordinates.

    Returns (angle of the first principal axis in degrees, in [0, 180), measured from +x
    towards +y; elongation sqrt(lambda1 / lambda2)), or None with fewer than 2 pixels.
    """
    ys, xs = np.nonzero(mask)
    if xs.size < 2:
        return None
    coords = np.stack([xs, ys], axis=1).astype(np.float64)
    coords -= coords.mean(axis=0)
    cov = coords.T @ coords / coords.shape[0]
    evals, evecs = np.linalg.eigh(cov)  # ascending
    vx, vy = evecs[:, 1]
    angle = math.degrees(math.atan2(vy, vx)) % 180.0
    elongation = math.sqrt(evals[1] / evals[0]) if evals[0] > 1e-12 else math.inf
    return angle, elongation


def align_rotation(img01: ArrayLike, *, min_elongation: float = 1.1) -> tuple[np.ndarray, Affine2D]:
    """Seed 004 §4.2.2.4: rotate so the principal axis of the anatomy is vertical.

    Otsu binarisation, close + open, PCA of the foreground pixels (eq. 4.2 gives the angle of
    the first component), rotation by the smallest angle making that axis vertical, on a
    canvas expanded so nothing is cut (zero fill). Returns the float32 image and the
    original -> rotated transform; the identity (and a copy) when there is no foreground or
    the foreground is not elongated (``sqrt(lambda1/lambda2) < min_elongation``).
    """
    img = as_image(img01, name="img01")
    if not min_elongation >= 1.0:
        raise ValueError(f"min_elongation must be >= 1, got {min_elongation!r}")
    pca = principal_angle(_clean_mask(otsu_mask(img)))
    if pca is None or pca[1] < min_elongation:
        return img.copy(), Affine2D.identity()
    theta = 90.0 - pca[0]  # (-90, 90]: rotate the axis direction onto +y
    if theta <= -90.0:
        theta += 180.0
    h, w = img.shape
    t = math.radians(theta)
    c, s = math.cos(t), math.sin(t)
    new_w = int(math.ceil(abs(w * c) + abs(h * s) - 1e-6))
    new_h = int(math.ceil(abs(w * s) + abs(h * c) - 1e-6))
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    transform = (
        Affine2D.translation(-(w - 1) / 2.0, -(h - 1) / 2.0)
        .then(Affine2D(rot))
        .then(Affine2D.translation((new_w - 1) / 2.0, (new_h - 1) / 2.0))
    )
    out = cv2.warpAffine(
        img,
        transform.to_cv2(),
        (new_w, new_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return out, transform
