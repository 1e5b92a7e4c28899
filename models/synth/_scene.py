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


def _stack(solids: Sequence[Solid], view: View, box: tuple[int, int, int, int]
           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Interval grids of the solids over ``box`` (empty, at 0, outside each solid's own box)."""
    x0, y0, x1, y1 = box
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    for solid in solids:
        own = view.pixel_box(solid)
        ox0, oy0 = (max(own[0], x0), max(own[1], y0)) if own else (0, 0)
        ox1, oy1 = (min(own[2], x1), min(own[3], y1)) if own else (0, 0)
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        t0, t1 = intervals(solid, view, (ox0, oy0, ox1, oy1))
        if (ox0, oy0, ox1, oy1) != box:
            s = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
            e = np.zeros_like(s)
            s[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] = t0
            e[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] = t1
            t0, t1 = s, e
        starts.append(t0)
        ends.append(t1)
    if not starts:
        starts.append(np.zeros((y1 - y0, x1 - x0), dtype=np.float32))
        ends.append(np.zeros((y1 - y0, x1 - x0), dtype=np.float32))
    return starts, ends


def group_paths(group: Group, view: View
                ) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Cortical and trabecular path lengths (mm) of the group over its pixel box, or None."""
    box = _union_box([view.pixel_box(p.outer) for p in group.parts])
    if box is None:
        return None
    outer = [p.outer for p in group.parts]
    inner = [p.inner for p in group.parts if p.inner is not None]
    s_o, e_o = sort_intervals(*_stack(outer, view, box))
    total_o = union_length(s_o, e_o)
    s_i: list[np.ndarray] = []
    e_i: list[np.ndarray] = []
    if inner:
        s_i, e_i = sort_intervals(*_stack(inner, view, box))
        total_i = union_length(s_i, e_i)
    else:
        total_i = np.zeros_like(total_o)
    trab = total_i.copy()
    for carve in group.carves:
        c0, c1 = _stack([carve.solid], view, box)
        lo, hi = c0[0], c1[0]
        if not np.any(hi > lo):
            continue
        loss = 1.0 - carve.keep
        cut_i = union_length(s_i, e_i, (lo, hi)) if s_i else np.zeros_like(total_o)
        if carve.channel == "all":
            total_o -= loss * union_length(s_o, e_o, (lo, hi))
            total_i = total_i - loss * cut_i
            trab = trab - loss * cut_i
        else:
            trab = trab - loss * cut_i
    cortical = total_o - total_i
    np.maximum(cortical, 0.0, out=cortical)
    np.maximum(trab, 0.0, out=trab)
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
