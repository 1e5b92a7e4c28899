"""Tissue groups (unions of shelled solids) and their line integrals on a detector grid."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from ._geometry import Solid, View, intervals, sort_intervals, union_length


@dataclass(frozen=True)
class Part:
    """One convex piece of a bone: outer surface and (optionally) the trabecular boundary."""

    name: str
    outer: Solid
    inner: Solid | None = None

    def moved(self, rot: np.ndarray, shift: np.ndarray) -> Part:
        inner = None if self.inner is None else self.inner.moved(rot, shift)
        return Part(self.name, self.outer.moved(rot, shift), inner)

    def clipped(self, normal: np.ndarray, offset: float) -> Part:
        inner = None if self.inner is None else self.inner.clipped(normal, offset)
        return Part(self.name, self.outer.clipped(normal, offset), inner)


@dataclass(frozen=True)
class Carve:
    """Convex region where a group keeps only ``keep`` of its density.

    ``channel="all"`` removes bone (the acetabular socket), ``"inner"`` only thins the
    trabecular channel (the marrow of a medullary canal).
    """

    solid: Solid
    channel: Literal["all", "inner"]
    keep: float = 0.0

    def moved(self, rot: np.ndarray, shift: np.ndarray) -> Carve:
        return Carve(self.solid.moved(rot, shift), self.channel, self.keep)


@dataclass(frozen=True)
class Group:
    """A connected piece of tissue: the union of its parts, minus its carves.

    ``mu_outer`` and ``mu_inner`` are attenuation coefficients in excess of soft tissue
    (1/mm): the shell between the outer and inner union is cortical bone, the inner union is
    trabecular bone (textured when ``textured``). ``bone`` names the anatomical bone (the
    fragments of one fractured bone share it).
    """

    name: str
    bone: str
    parts: tuple[Part, ...]
    mu_outer: float
    mu_inner: float = 0.0
    carves: tuple[Carve, ...] = ()
    textured: bool = True

    def moved(self, rot: np.ndarray, shift: np.ndarray) -> Group:
        return replace(self, parts=tuple(p.moved(rot, shift) for p in self.parts),
                       carves=tuple(c.moved(rot, shift) for c in self.carves))

    def part(self, name: str) -> Part:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)


def mirrored(groups: Iterable[Group]) -> list[Group]:
    """Groups reflected through the sagittal plane (x -> -x): a right side becomes a left."""
    s = np.diag([-1.0, 1.0, 1.0])
    return [g.moved(s, np.zeros(3)) for g in groups]


Box = tuple[int, int, int, int]


def _union_box(boxes: Sequence[Box | None]) -> Box | None:
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    return (min(b[0] for b in real), min(b[1] for b in real),
            max(b[2] for b in real), max(b[3] for b in real))


@dataclass(frozen=True)
class _Grid:
    """Entry and exit parameters of one solid's rays over its own pixel box."""

    box: Box
    t0: np.ndarray
    t1: np.ndarray


def _grids(solids: Iterable[Solid], view: View, limit: Box | None = None) -> list[_Grid]:
    """Interval grids of the solids over their own pixel boxes (within ``limit``)."""
    out = []
    for solid in solids:
        own = view.pixel_box(solid)
        if own is None:
            continue
        if limit is not None:
            own = (max(own[0], limit[0]), max(own[1], limit[1]),
                   min(own[2], limit[2]), min(own[3], limit[3]))
            if own[2] <= own[0] or own[3] <= own[1]:
                continue
        out.append(_Grid(own, *intervals(solid, view, own)))
    return out


def _overlaps(grid: _Grid, box: Box) -> bool:
    b = grid.box
    return b[0] < box[2] and b[2] > box[0] and b[1] < box[3] and b[3] > box[1]


def _stack(grids: Sequence[_Grid], box: Box) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The grids over ``box``: slices where a grid covers it, else padded with empty intervals."""
    x0, y0, x1, y1 = box
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for g in grids:
        gx0, gy0, gx1, gy1 = g.box
        ox0, oy0, ox1, oy1 = max(gx0, x0), max(gy0, y0), min(gx1, x1), min(gy1, y1)
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        src = (slice(oy0 - gy0, oy1 - gy0), slice(ox0 - gx0, ox1 - gx0))
        if (ox0, oy0, ox1, oy1) == box:
            starts.append(g.t0[src])
            ends.append(g.t1[src])
            continue
        s = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
        e = np.zeros_like(s)
        dst = (slice(oy0 - y0, oy1 - y0), slice(ox0 - x0, ox1 - x0))
        s[dst] = g.t0[src]
        e[dst] = g.t1[src]
        starts.append(s)
        ends.append(e)
    return starts, ends


def _bands(grids: Sequence[_Grid], box: Box) -> list[tuple[int, int]]:
    """Row ranges of ``box`` between the top and bottom edges of the grids."""
    cuts = {box[1], box[3]}
    for g in grids:
        cuts.update(y for y in (g.box[1], g.box[3]) if box[1] < y < box[3])
    edges = sorted(cuts)
    return list(zip(edges[:-1], edges[1:], strict=True))


def group_paths(group: Group, view: View
                ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Cortical and trabecular path lengths (mm) of the group over its pixel box, or None.

    The box is cut into row bands at the solids' edges so that each band sorts and merges
    only the intervals of the solids that reach it.
    """
    outer = _grids((p.outer for p in group.parts), view)
    if not outer:
        return None
    box = _union_box([g.box for g in outer])
    if box is None:
        return None
    inner = _grids((p.inner for p in group.parts if p.inner is not None), view, box)
    carves = [(c, g) for c in group.carves for g in _grids([c.solid], view, box)
              if np.any(g.t1 > g.t0)]
    bx0, by0, bx1, by1 = box
    if len(outer) == 1 and len(inner) <= 1 and not carves:  # one part: no union to take
        cortical = outer[0].t1 - outer[0].t0
        trab = np.zeros_like(cortical)
        if inner:
            (t0,), (t1,) = _stack(inner, box)
            np.subtract(t1, t0, out=trab)
            cortical -= trab
            np.maximum(cortical, 0.0, out=cortical)
        return box, cortical, trab
    cortical = np.zeros((by1 - by0, bx1 - bx0), dtype=np.float32)
    trab = np.zeros_like(cortical)
    for ya, yb in _bands(outer + inner + [g for _, g in carves], box):
        rows = (bx0, ya, bx1, yb)
        live = [g for g in outer if _overlaps(g, rows)]
        if not live:
            continue
        band = (min(g.box[0] for g in live), ya, max(g.box[2] for g in live), yb)
        s_o, e_o = sort_intervals(*_stack(live, band))
        total_o = union_length(s_o, e_o)
        s_i, e_i = sort_intervals(*_stack([g for g in inner if _overlaps(g, band)], band))
        total_i = union_length(s_i, e_i) if s_i else np.zeros_like(total_o)
        inside = total_i.copy()
        for carve, grid in carves:
            if not _overlaps(grid, band):
                continue
            (lo,), (hi,) = _stack([grid], band)
            loss = np.float32(1.0 - carve.keep)
            cut_i = union_length(s_i, e_i, (lo, hi)) if s_i else np.zeros_like(total_o)
            if carve.channel == "all":
                total_o -= loss * union_length(s_o, e_o, (lo, hi))
                total_i -= loss * cut_i
            inside -= loss * cut_i
        dst = (slice(ya - by0, yb - by0), slice(band[0] - bx0, band[2] - bx0))
        np.maximum(total_o - total_i, 0.0, out=cortical[dst])
        np.maximum(inside, 0.0, out=trab[dst])
    return box, cortical, trab


def coarse_view(view: View, factor: int) -> View:
    """The same detector sampled ``factor`` times more coarsely (same field of view)."""
    rows, cols = view.shape
    shape = (max(rows // factor, 1), max(cols // factor, 1))
    spacing = view.spacing * cols / shape[1]
    shift = 0.5 * (spacing - view.spacing) * (view.eu + view.ev)
    return View(view.origin + shift, view.eu, view.ev, view.beam, spacing, shape)


def render(groups: Iterable[Group], view: View, *, coarse: int = 4
           ) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals ``(plain, trabecular)`` over the detector: ``sum mu * path`` per pixel.

    The trabecular integral is kept apart so that a texture can modulate it. Soft tissue
    (smooth, large) is integrated ``coarse`` times more coarsely and interpolated.
    """
    plain = np.zeros(view.shape, dtype=np.float32)
    trab = np.zeros(view.shape, dtype=np.float32)
    groups = list(groups)
    soft = [g for g in groups if g.bone == "soft"]
    if soft and coarse > 1 and min(view.shape) >= 8 * coarse:
        low, _ = render(soft, coarse_view(view, coarse), coarse=1)
        plain += cv2.resize(low, (view.shape[1], view.shape[0]), interpolation=cv2.INTER_LINEAR)
        groups = [g for g in groups if g.bone != "soft"]
    for group in groups:
        res = group_paths(group, view)
        if res is None:
            continue
        (x0, y0, x1, y1), cortical, inner = res
        plain[y0:y1, x0:x1] += np.float32(group.mu_outer) * cortical
        target = trab if group.textured else plain
        target[y0:y1, x0:x1] += np.float32(group.mu_inner) * inner
    return plain, trab


def point_view(view: View, xy: Sequence[float]) -> View:
    """A one-pixel view whose single ray passes through the pixel position ``xy`` of ``view``."""
    origin = view.origin + view.spacing * (xy[0] * view.eu + xy[1] * view.ev)
    return View(origin, view.eu, view.ev, view.beam, view.spacing, (1, 1))


def ray_integral(groups: Iterable[Group], view: View, xy: Sequence[float]) -> float:
    """Bone line integral (cortical + trabecular, 1/mm * mm) along the ray through ``xy``."""
    pv = point_view(view, xy)
    plain, trab = render(groups, pv)
    return float(plain[0, 0] + trab[0, 0])
