"""Fractures of phantom bones: splitting planes, fragment motion, ground truth and visibility.

A fracture is a plane through a bone. The parts it cuts are clipped on both sides of a gap;
the distal fragment (and the groups that follow it, e.g. the carpus) then moves rigidly about
the fracture centre. A non-displaced fracture is only the gap: a thin lucent plane that shows
as a line when the beam runs within the plane and vanishes when the plane is seen face-on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ._geometry import Solid, View, ellipsoid, frame_from_axis, rotation
from ._phantom import Phantom, unit
from ._scene import Group, Part, ray_integral

MAX_PLANE_ANGLE_NONDISPLACED = 30.0  # degrees between beam and fracture plane, still visible
MAX_PLANE_ANGLE_DISPLACED = 45.0
MIN_ANGULATION_VISIBLE = 8.0  # degrees of projected angulation that show a displaced fracture
SUPERIMPOSED_RATIO = 2.5  # other bone over this multiple of the fractured bone hides the site


@dataclass(frozen=True)
class Comminution:
    """A butterfly wedge cut from the distal side plus small loose chips."""

    normal: np.ndarray
    offset: float
    thickness: float
    rot: np.ndarray
    shift: np.ndarray
    chips: tuple[tuple[np.ndarray, np.ndarray], ...]  # (offset from centre, semi-axes)


@dataclass(frozen=True)
class FracturePlan:
    """Everything needed to break one bone at one site."""

    region: str
    bone: str
    point: np.ndarray
    normal: np.ndarray
    gap: float
    cut: frozenset[str] | None  # parts the plane may split (None: every part it crosses)
    distal: frozenset[str]
    displaced: bool
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    followers: tuple[str, ...] = ()
    radius: float = 25.0
    axis: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))
    comminution: Comminution | None = None
    min_shift_mm: float = 2.0
    main_part: str = ""  # the part a comminution wedge is cut from

    def motion(self, points: np.ndarray) -> np.ndarray:
        """Positions of distal-fragment points after displacement."""
        return (points - self.point) @ self.rot.T + self.point + self.shift

    def moved_group(self, group: Group) -> Group:
        return group.moved(self.rot, self.point - self.rot @ self.point + self.shift)


@dataclass(frozen=True)
class Site:
    """Ground-truth geometry of one fracture after it was applied."""

    plan: FracturePlan
    trace: np.ndarray  # (N, 3) points on both fracture faces (after motion)
    extras: np.ndarray  # (M, 3) wedge / chip points


def tilted_normal(axis: np.ndarray, a1: np.ndarray, t1: float, a2: np.ndarray,
                  t2: float) -> np.ndarray:
    """``axis`` rotated by ``t1`` degrees about ``a1`` then ``t2`` degrees about ``a2``."""
    return unit(rotation(a2, t2) @ rotation(a1, t1) @ axis)


def plane_tilt(rng: np.random.Generator, *, occult: bool) -> float:
    """A tilt (degrees) that keeps a plane visible in a view, or hides it when ``occult``.

    Tilts between 12 and 44 degrees are avoided so labels sit clearly on one side of the
    visibility threshold (30 degrees) even after per-view jitter.
    """
    mag = rng.uniform(44.0, 68.0) if occult else min(abs(float(rng.normal(0.0, 6.0))), 12.0)
    return float(mag if rng.random() < 0.5 else -mag)


def sample_comminution(rng: np.random.Generator, normal: np.ndarray, radius: float,
                       scale: float) -> Comminution:
    """Random butterfly wedge and chips for a comminuted fracture (sizes scale with ``scale``)."""
    frame = frame_from_axis(normal)
    side = frame[:, 0] * np.cos(rng.uniform(0, 2 * np.pi)) + frame[:, 1] * np.sin(
        rng.uniform(0, 2 * np.pi))
    n2 = unit(np.cos(np.radians(rng.uniform(35, 60))) * normal + unit(side))
    wedge_axis = unit(np.cross(normal, n2))
    rot = rotation(wedge_axis, rng.uniform(-15, 15))
    shift = n2 * rng.uniform(1.0, 2.5) * scale
    chips = []
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0, 2 * np.pi)
        off = (frame[:, 0] * np.cos(ang) + frame[:, 1] * np.sin(ang)) * rng.uniform(
            0.5, 0.9) * radius + normal * rng.uniform(-2, 2) * scale
        chips.append((off, rng.uniform(0.8, 2.2, 3) * scale))
    return Comminution(n2, float(rng.uniform(-0.25, 0.25) * radius),
                       float(rng.uniform(5.0, 9.0) * scale), rot, shift, tuple(chips))


def _crosses(solid: Solid, n: np.ndarray, c: float) -> bool:
    return solid.support(n) > c and -solid.support(-n) < c


def _split(group: Group, plan: FracturePlan) -> tuple[Group, list[Group], np.ndarray]:
    """Proximal fragment, moved distal groups, and extra ground-truth points."""
    n, c, g = plan.normal, float(plan.normal @ plan.point), plan.gap
    prox: list[Part] = []
    dist: list[Part] = []
    extra_groups: list[Group] = []
    extras: list[np.ndarray] = []
    com = plan.comminution
    main = plan.main_part
    for part in group.parts:
        crosses = _crosses(part.outer, n, c)
        if crosses and (plan.cut is None or part.name in plan.cut):
            prox.append(part.clipped(n, c - g / 2))
            far = part.clipped(-n, -(c + g / 2))
            if com is not None and part.name == main:
                c2 = float(com.normal @ plan.point) + com.offset
                near_end = c + g / 2 + com.thickness
                dist.append(far.clipped(-n, -(near_end + g)))
                dist.append(far.clipped(n, near_end).clipped(com.normal, c2 - g / 2))
                wedge = far.clipped(n, near_end).clipped(-com.normal, -(c2 + g / 2))
                wedge_centre = plan.point + n * (g / 2 + com.thickness / 2) + com.normal * (
                    com.offset + 0.4 * plan.radius)
                piece = Group(f"{group.name}:wedge", group.bone, (wedge,), group.mu_outer,
                              group.mu_inner, group.carves, group.textured)
                piece = piece.moved(com.rot, wedge_centre - com.rot @ wedge_centre + com.shift)
                extra_groups.append(plan.moved_group(piece))
                extras.append(plan.motion((wedge_centre + com.shift)[None])[0])
            else:
                dist.append(far)
        elif part.name in plan.distal or float(n @ part.outer.center) > c:
            dist.append(part)
        else:
            prox.append(part)
    if com is not None:
        for off, axes in com.chips:
            centre = plan.point + off
            chip = Group(f"{group.name}:chip", group.bone,
                         (Part("chip", ellipsoid(centre, axes, frame_from_axis(plan.normal))),),
                         group.mu_outer * 0.8, 0.0, (), False)
            extra_groups.append(plan.moved_group(chip) if float(off @ n) > 0 else chip)
            extras.append(centre)
    pts = np.array(extras) if extras else np.zeros((0, 3))
    if not plan.displaced and com is None:
        # nothing moves: one group keeps the union of the pieces, so the gap shows only
        # where no uncut part of the bone covers the plane
        return replace(group, parts=tuple(prox + dist)), extra_groups, pts
    proximal = replace(group, parts=tuple(prox))
    distal = plan.moved_group(replace(group, name=f"{group.name}:distal", parts=tuple(dist)))
    return proximal, [distal, *extra_groups], pts


def exposed_points(group: Group, point: np.ndarray, normal: np.ndarray, radius: float,
                   cut: frozenset[str] | None, *, steps: int = 41) -> np.ndarray:
    """Points of a fracture plane (within ``radius`` of ``point``) inside the parts it cuts
    and outside the uncut parts of the bone, which bridge the gap there."""
    frame = frame_from_axis(normal)
    r = np.linspace(-radius, radius, steps)
    uu, vv = np.meshgrid(r, r)
    keep = uu**2 + vv**2 <= radius**2
    pts = point + uu[keep, None] * frame[:, 0] + vv[keep, None] * frame[:, 1]
    inside = np.zeros(len(pts), dtype=bool)
    covered = np.zeros(len(pts), dtype=bool)
    for part in group.parts:
        if cut is None or part.name in cut:
            inside |= part.outer.contains(pts)
        else:
            covered |= part.outer.contains(pts)
    return pts[inside & ~covered]


def _trace(group: Group, plan: FracturePlan) -> np.ndarray:
    """Exposed fracture-plane points on both faces, the distal face after motion."""
    pts = exposed_points(group, plan.point, plan.normal, plan.radius, plan.cut)
    if len(pts) == 0:
        pts = plan.point[None]
    g = plan.gap / 2
    return np.vstack([pts - g * plan.normal, plan.motion(pts + g * plan.normal)])


def apply_fractures(phantom: Phantom, plans: list[FracturePlan]) -> tuple[list[Group], list[Site]]:
    """Broken groups (fragments replace their bone; followers move) and the site geometry."""
    groups = list(phantom.groups)
    sites: list[Site] = []
    for plan in plans:
        index = next(i for i, g in enumerate(groups) if g.name == plan.bone)
        bone = groups[index]
        trace = _trace(bone, plan)
        proximal, moved, extras = _split(bone, plan)
        groups[index] = proximal
        groups.extend(moved)
        still = np.array_equal(plan.rot, np.eye(3)) and not np.any(plan.shift)
        for i, g in enumerate(groups):
            if g.name in plan.followers and not still:  # unmoved followers stay the same
                groups[i] = plan.moved_group(g)  # objects, so the twin skips them
        sites.append(Site(plan, trace, extras))
    return groups, sites


def site_visible(site: Site, view: View, intact: list[Group], *, inside: bool) -> bool:
    """Whether the fracture shows in this view (plane angle, displacement, superimposition).

    A non-displaced fracture is visible when the beam lies within 30 degrees of its plane; a
    displaced one when the plane angle is under 45 degrees, or its shift or angulation
    projects onto the detector. Either is hidden when other bone along the ray through the
    site attenuates more than 2.5 times the fractured bone itself.
    """
    if not inside:
        return False
    plan = site.plan
    theta = float(np.degrees(np.arcsin(min(abs(float(plan.normal @ view.beam)), 1.0))))
    if not plan.displaced:
        visible = theta <= MAX_PLANE_ANGLE_NONDISPLACED
    else:
        d = view.beam
        centre = site.trace.mean(axis=0)
        moved = plan.motion(centre[None])[0] - centre
        shift = float(np.linalg.norm(moved - (moved @ d) * d))
        a0 = plan.axis - (plan.axis @ d) * d
        a1 = plan.rot @ plan.axis
        a1 = a1 - (a1 @ d) * d
        cosang = float(a0 @ a1 / max(np.linalg.norm(a0) * np.linalg.norm(a1), 1e-9))
        angulation = float(np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0))))
        visible = (theta <= MAX_PLANE_ANGLE_DISPLACED or shift >= plan.min_shift_mm
                   or angulation >= MIN_ANGULATION_VISIBLE)
    if visible:
        xy = view.project(plan.point[None])[0]
        own = [g for g in intact if g.bone == plan.bone]
        other = [g for g in intact if g.bone not in (plan.bone, "soft")]
        self_mu = ray_integral(own, view, xy)
        other_mu = ray_integral(other, view, xy)
        if other_mu > SUPERIMPOSED_RATIO * max(self_mu, 1e-6):
            visible = False
    return visible
