"""Convex solids, rigid motions and parallel-beam line integrals (the DRR of seed 002, Appendix).

A :class:`Solid` is a clipped quadric, ``{c + A u : u in unit ball or unit cylinder}``
intersected with half-spaces ``n . x <= h``. Along a ray each solid covers one interval, so the
path length through a union of solids is the measure of a union of intervals; that is what
:func:`union_length` computes for a whole detector grid at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

Kind = Literal["ellipsoid", "cylinder"]
_CUBE = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=float)
_EPS_A = 1e-9
_EPS_ND = 1e-7


def rotation(axis: ArrayLike, degrees: float) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``degrees`` (right hand rule)."""
    a = np.asarray(axis, dtype=float)
    a = a / np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + np.sin(t) * k + (1.0 - np.cos(t)) * (k @ k)


def frame_from_axis(axis: ArrayLike, hint: ArrayLike = (0.0, 1.0, 0.0)) -> np.ndarray:
    """Rotation whose third column is ``axis``; the first column is orthogonal to ``hint``."""
    z = np.asarray(axis, dtype=float)
    z = z / np.linalg.norm(z)
    h = np.asarray(hint, dtype=float)
    if abs(float(h @ z)) > 0.95:
        h = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    x = np.cross(h, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


@dataclass(frozen=True)
class Solid:
    """Clipped quadric: ``{c + A u}`` (unit ball or cylinder) within ``normals . x <= offsets``."""

    kind: Kind
    center: np.ndarray
    affine: np.ndarray
    normals: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def clipped(self, normal: ArrayLike, offset: float) -> Solid:
        """The solid intersected with the half-space ``normal . x <= offset``."""
        n = np.asarray(normal, dtype=float)
        scale = float(np.linalg.norm(n))
        return Solid(self.kind, self.center, self.affine,
                     np.vstack([self.normals, n / scale]),
                     np.append(self.offsets, offset / scale))

    def moved(self, rot: np.ndarray, shift: np.ndarray) -> Solid:
        """The solid after the rigid (or mirror) motion ``x -> rot @ x + shift``."""
        normals = self.normals @ rot.T
        return Solid(self.kind, rot @ self.center + shift, rot @ self.affine,
                     normals, self.offsets + normals @ shift)

    @cached_property
    def _inverse(self) -> np.ndarray:
        return np.linalg.inv(self.affine)

    @cached_property
    def _quadric(self) -> np.ndarray:
        inv = self._inverse
        diag = np.diag([1.0, 1.0, 1.0 if self.kind == "ellipsoid" else 0.0])
        return inv.T @ diag @ inv

    @cached_property
    def _planes(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "ellipsoid":
            return self.normals, self.offsets
        axis = self._inverse.T @ np.array([0.0, 0.0, 1.0])
        norm = float(np.linalg.norm(axis))
        axis = axis / norm
        h = float(axis @ self.center)
        caps_n = np.stack([axis, -axis])
        caps_h = np.array([h + 1.0 / norm, -h + 1.0 / norm])
        return np.vstack([self.normals, caps_n]), np.concatenate([self.offsets, caps_h])

    def quadric(self) -> np.ndarray:
        """Matrix ``Q`` with ``(x - c)^T Q (x - c) <= 1`` inside the unclipped quadric."""
        return self._quadric

    def all_planes(self) -> tuple[np.ndarray, np.ndarray]:
        """Clip planes including the two caps of a cylinder."""
        return self._planes

    def corners(self) -> np.ndarray:
        """Eight corners of a box that encloses the solid (world coordinates)."""
        return self.center + _CUBE @ self.affine.T

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the ``(N, 3)`` points that lie inside the solid."""
        local = (points - self.center) @ self._inverse.T
        if self.kind == "ellipsoid":
            inside = (local**2).sum(axis=1) <= 1.0
        else:
            inside = ((local[:, :2] ** 2).sum(axis=1) <= 1.0) & (np.abs(local[:, 2]) <= 1.0)
        if len(self.offsets):
            inside &= np.all(points @ self.normals.T <= self.offsets + 1e-9, axis=1)
        return inside

    def support(self, direction: np.ndarray) -> float:
        """Upper bound of ``direction . x`` over the (unclipped) solid."""
        return float(direction @ self.center) + self._half_width(direction)

    def _half_width(self, direction: np.ndarray) -> float:
        """Half the extent of the unclipped solid along ``direction`` (a unit vector)."""
        a, b, c = (self.affine.T @ direction).tolist()
        if self.kind == "ellipsoid":
            return math.sqrt(a * a + b * b + c * c)
        return math.sqrt(a * a + b * b) + abs(c)


def ellipsoid(center: ArrayLike, axes: ArrayLike,
              rot: np.ndarray | None = None) -> Solid:
    """Ellipsoid with semi-axes ``axes`` along the columns of ``rot``."""
    r = np.eye(3) if rot is None else rot
    return Solid("ellipsoid", np.asarray(center, dtype=float), r @ np.diag(axes))


def cylinder(start: ArrayLike, end: ArrayLike, radii: ArrayLike,
             hint: ArrayLike = (0.0, 1.0, 0.0)) -> Solid:
    """Elliptic cylinder from ``start`` to ``end``; ``radii[1]`` lies along ``hint``."""
    p0 = np.asarray(start, dtype=float)
    p1 = np.asarray(end, dtype=float)
    axis = p1 - p0
    half = float(np.linalg.norm(axis)) / 2.0
    r = frame_from_axis(axis, hint)
    rad = np.asarray(radii, dtype=float)
    return Solid("cylinder", (p0 + p1) / 2.0, r @ np.diag([rad[0], rad[1], half]))


def shrunk(solid: Solid, thickness: float, *, shift: ArrayLike = (0.0, 0.0, 0.0)) -> Solid:
    """The solid with its radial semi-axes reduced by ``thickness`` (an inner boundary).

    A cylinder keeps its length; the clip planes are kept. ``shift`` moves the centre
    (world coordinates) to make one side of a shell thicker than the other.
    """
    lengths = np.linalg.norm(solid.affine, axis=0)
    new = np.maximum(lengths - thickness, 0.25 * lengths)
    if solid.kind == "cylinder":
        new[2] = lengths[2]
    affine = solid.affine * (new / lengths)
    return Solid(solid.kind, solid.center + np.asarray(shift, dtype=float), affine,
                 solid.normals, solid.offsets)


@dataclass(frozen=True)
class View:
    """Parallel-beam projection geometry onto a detector grid (pixel centres at integers)."""

    origin: np.ndarray
    eu: np.ndarray
    ev: np.ndarray
    beam: np.ndarray
    spacing: float
    shape: tuple[int, int]

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(x, y)`` of ``(N, 3)`` world points."""
        rel = np.atleast_2d(points) - self.origin
        return np.stack([rel @ self.eu, rel @ self.ev], axis=1) / self.spacing

    def pixel_box(self, solid: Solid, pad: int = 1) -> tuple[int, int, int, int] | None:
        """Integer grid box ``(x0, y0, x1, y1)`` (end exclusive) covering the solid, or None.

        The box is the exact extent of the unclipped quadric along the detector axes.
        """
        rows, cols = self.shape
        rel = solid.center - self.origin
        cu = float(self.eu @ rel) / self.spacing
        cv = float(self.ev @ rel) / self.spacing
        hu = solid._half_width(self.eu) / self.spacing
        hv = solid._half_width(self.ev) / self.spacing
        x0 = max(math.floor(cu - hu) - pad, 0)
        y0 = max(math.floor(cv - hv) - pad, 0)
        x1 = min(math.ceil(cu + hu) + pad + 1, cols)
        y1 = min(math.ceil(cv + hv) + pad + 1, rows)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1


def intervals(solid: Solid, view: View,
              box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit ray parameters ``(t0, t1)`` of the solid over ``box`` (float32 grids).

    A ray that misses gets ``t0 == t1`` (an empty interval somewhere on the ray).
    """
    x0, y0, x1, y1 = box
    q = solid.quadric()
    d = view.beam
    gu = view.spacing * view.eu
    gv = view.spacing * view.ev
    w0 = view.origin - solid.center
    qd = q @ d
    a = max(float(d @ qd), _EPS_A)
    # Along the ray a t^2 + 2 b t + c = 0; the discriminant b^2 - a c is a quadratic form of
    # the ray's offset from the solid's centre, so it is evaluated in pixel offsets from the
    # projected centre (no large terms that cancel in float32).
    m = np.outer(qd, qd) - a * q
    xs = np.arange(x0, x1, dtype=float)
    ys = np.arange(y0, y1, dtype=float)
    du = xs + float(view.eu @ w0) / view.spacing
    dv = ys + float(view.ev @ w0) / view.spacing
    inv_a2 = 1.0 / (a * a)
    disc = ((a + dv * dv * float(gv @ m @ gv)) * inv_a2).astype(np.float32)[:, None] + (
        du * du * float(gu @ m @ gu) * inv_a2).astype(np.float32)[None, :]
    cross = 2.0 * float(gu @ m @ gv) * inv_a2
    if abs(cross) > 1e-12:
        disc += np.multiply.outer((cross * dv).astype(np.float32), du.astype(np.float32))
    np.maximum(disc, 0.0, out=disc)
    half = np.sqrt(disc, out=disc)
    # the middle of the chord, -b / a, is linear in the pixel position
    mid = (-(float(qd @ w0) + xs * float(qd @ gu)) / a).astype(np.float32)[None, :] - (
        ys * (float(qd @ gv) / a)).astype(np.float32)[:, None]
    t0 = mid - half
    t1 = np.add(mid, half, out=mid)
    normals, offsets = solid.all_planes()
    for n, h in zip(normals, offsets, strict=True):
        nd = float(n @ d)
        if abs(nd) < _EPS_ND:
            nd = _EPS_ND
        base = (h - float(n @ view.origin) - xs * float(n @ gu)) / nd
        step = ys * (float(n @ gv) / nd)
        lim = base.astype(np.float32)[None, :] - step.astype(np.float32)[:, None]
        if nd > 0:
            np.minimum(t1, lim, out=t1)
        else:
            np.maximum(t0, lim, out=t0)
    np.maximum(t1, t0, out=t1)
    return t0, t1


def union_length(starts: list[np.ndarray], ends: list[np.ndarray],
                 clamp: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Measure of the union of ``K`` intervals per pixel; inputs from :func:`sort_intervals`.

    With ``clamp = (lo, hi)`` every interval is first intersected with ``[lo, hi]``, which gives
    the length of the union inside that interval (clamping keeps both lists sorted).
    """
    if clamp is not None:
        lo, hi = clamp
        starts = [np.minimum(np.maximum(s, lo), hi) for s in starts]
        ends = [np.minimum(np.maximum(e, lo), hi) for e in ends]
    total = ends[0] - starts[0]
    for k in range(1, len(starts)):
        gain = ends[k] - np.maximum(starts[k], ends[k - 1])
        np.maximum(gain, 0.0, out=gain)
        total += gain
    return total


def _sorted(rows: list[np.ndarray]) -> list[np.ndarray]:
    """Element-wise sort of equally shaped arrays (odd-even transposition network, small K)."""
    rows = list(rows)
    k = len(rows)
    for r in range(k):
        for i in range(r % 2, k - 1, 2):
            lo = np.minimum(rows[i], rows[i + 1])
            np.maximum(rows[i], rows[i + 1], out=rows[i + 1])
            rows[i] = lo
    return rows


def sort_intervals(starts: list[np.ndarray], ends: list[np.ndarray]
                   ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Starts and ends of ``K`` interval grids, each sorted element-wise.

    Sorting the two independently re-pairs the intervals (i-th start with i-th end); the
    coverage count ``#starts <= x - #ends <= x`` and so the union is unchanged.
    """
    if len(starts) < 2:
        return starts, ends
    return _sorted(starts), _sorted(ends)
