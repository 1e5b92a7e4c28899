"""Wrist phantom: distal radius and ulna, carpal bones and metacarpal bases (seed 004).

Built for a right wrist in patient coordinates (LPS, mm; anatomical position, so the forearm
runs along z with the hand towards -z) with the centre of the radial articular surface at the
origin; :meth:`Phantom.mirror` gives a left wrist.
"""

from __future__ import annotations

import numpy as np

from ._fracture import FracturePlan, plane_tilt, sample_comminution, tilted_normal
from ._geometry import Solid, cylinder, ellipsoid, frame_from_axis, rotation, shrunk
from ._phantom import MU_CORTEX, MU_SOFT, MU_TRABECULAR, Phantom, ViewSpec, unit
from ._scene import Carve, Group, Part

FOV_MM = 100.0
CARPALS = ("scaphoid", "lunate", "triquetrum", "pisiform", "trapezium", "trapezoid",
           "capitate", "hamate")


def _bone(name: str, parts: list[tuple[str, Solid, float]], density: float,
          canal: Solid | None = None) -> Group:
    return Group(name, name, tuple(Part(n, o, shrunk(o, t)) for n, o, t in parts),
                 MU_CORTEX * density, MU_TRABECULAR * density,
                 carves=() if canal is None else (Carve(canal, "inner", 0.35),))


def build_wrist(rng: np.random.Generator) -> Phantom:
    """A random right wrist: bone size and density, carpal pose, soft tissue habitus."""
    s = rng.uniform(0.85, 1.12)
    density = rng.uniform(0.75, 1.15)
    ri = np.radians(rng.uniform(18.0, 26.0))  # radial inclination
    pt = np.radians(rng.uniform(5.0, 15.0))  # palmar tilt
    n_art = unit([np.sin(ri), -np.sin(pt), -np.cos(ri) * np.cos(pt)])
    cortex = rng.uniform(2.0, 2.8) * s

    def p(*xyz: float) -> np.ndarray:
        return np.array(xyz) * s

    r_shaft = cylinder(p(-5, 0.5, 16), p(-2, 1.0, 160), (7.5 * s, 6.0 * s))
    met = ellipsoid(p(-4, 0.8, 3), (15.5 * s, 10.5 * s, 30.0 * s)).clipped(n_art, 0.0)
    styloid = ellipsoid(p(-14.5, 0.5, -2), (4.5 * s, 6.0 * s, 9.0 * s),
                        rotation((0, 1, 0), 20.0)).clipped(n_art, 0.0)
    canal = ellipsoid(p(-3, 0.9, 150), (7.5 * s - cortex, 6.0 * s - cortex, 110.0 * s))
    radius = _bone("radius", [("shaft", r_shaft, cortex), ("metaphysis", met, 1.1),
                              ("styloid", styloid, 1.0)], density, canal)

    u_shaft = cylinder(p(17, 2, 14), p(13, 2, 160), (6.0 * s, 6.0 * s))
    u_head = ellipsoid(p(17, 2.0, 10.0), (8.5 * s, 8.5 * s, 8.0 * s))
    u_sty = ellipsoid(p(21.0, 4.5, 1.5), (2.3 * s, 2.3 * s, 6.5 * s), rotation((0, 1, 0), 8.0))
    u_canal = ellipsoid(p(14, 2, 150), (6.0 * s - cortex, 6.0 * s - cortex, 115.0 * s))
    ulna = _bone("ulna", [("shaft", u_shaft, cortex), ("head", u_head, 1.1),
                          ("styloid", u_sty, 0.8)], density, u_canal)

    carpal_spec = {
        "scaphoid": (p(-10, -2, -16), (6.0, 7.0, 12.0), rotation((0, 1, 0), 42.0)),
        "lunate": (p(2.5, 0, -9.5), (8.5, 9.5, 7.0), None),
        "triquetrum": (p(14, 2.5, -12.5), (6.5, 6.5, 6.5), None),
        "pisiform": (p(14.5, -9.5, -15), (4.5, 4.0, 5.5), None),
        "trapezium": (p(-20, -5, -34), (7.5, 7.0, 7.5), rotation((0, 1, 0), 25.0)),
        "trapezoid": (p(-8.5, -1, -33), (6.0, 6.5, 7.0), None),
        "capitate": (p(2.5, 0, -32), (7.5, 9.0, 12.5), None),
        "hamate": (p(14, 1, -31), (7.0, 8.5, 10.5), rotation((0, 1, 0), 10.0)),
    }
    jitter = rng.normal(0.0, 0.4, (len(carpal_spec), 3))
    carpals = [
        _bone(name, [(name, ellipsoid(c + j, np.array(ax) * 1.1 * s, r), 0.9)], density)
        for (name, (c, ax, r)), j in zip(carpal_spec.items(), jitter, strict=True)
    ]
    mcs = []
    for k, (base, tip, rad) in enumerate([
        (p(-25, -8, -41), p(-42, -20, -84), 5.5),
        (p(-9, 0, -42), p(-10.5, 0, -110), 5.0),
        (p(2.5, 0, -46.5), p(3, 0, -112), 5.0),
        (p(13, 0, -44), p(15.5, 0, -104), 4.5),
        (p(21.5, 1, -42), p(27, 1, -96), 4.4),
    ], start=1):
        axis = unit(tip - base)
        head = ellipsoid(base + axis * 3.0 * s, (rad * 1.35 * s,) * 2 + (5.0 * s,),
                         frame_from_axis(axis))
        shaft = cylinder(base + axis * 3.0 * s, tip, (rad * s, rad * 0.9 * s))
        mcs.append(_bone(f"mc{k}", [("base", head, 1.0), ("shaft", shaft, 1.6 * s)], density))

    # wrist flexion/extension and radial/ulnar deviation move the hand about the midcarpus
    pivot = p(0.0, 0.0, -10.0)
    pose = rotation((1, 0, 0), rng.uniform(-12.0, 12.0)) @ rotation((0, 1, 0),
                                                                   rng.uniform(-10.0, 10.0))
    hand = [g.moved(pose, pivot - pose @ pivot) for g in (*carpals, *mcs)]
    soft, habitus = _soft_tissue(rng, s, pose, pivot)
    marks = {
        "origin": np.zeros(3), "n_art": n_art, "radius_axis": unit(r_shaft.affine[:, 2]),
        "ulna_styloid_a": u_sty.center + u_sty.affine[:, 2],
        "ulna_styloid_b": u_sty.center - u_sty.affine[:, 2],
        "view_centre": np.array([3.0, 1.0, -9.0]),
    }
    groups = [soft, radius, ulna, *hand]
    return Phantom("wrist", "R", groups, marks, (("radius", "metaphysis"), ("radius", "styloid")),
                   {"scale": float(s), "habitus": habitus})


def _soft_tissue(rng: np.random.Generator, s: float, pose: np.ndarray,
                 pivot: np.ndarray) -> tuple[Group, float]:
    """Forearm, wrist and hand; the returned habitus (soft-tissue scale) spans thin to obese."""
    habitus = float(rng.uniform(0.8, 1.45))
    size = habitus * s
    forearm = cylinder([4.0, 1.5, 20.0], [6.0, 1.5, 240.0], (31.0 * size, 21.0 * size))
    wrist = ellipsoid([4.0, 1.5, 20.0], (31.0 * size, 21.0 * size, 46.0 * size))
    palm = ellipsoid([3.0, -1.0, -62.0], (44.0 * size, 16.5 * size, 76.0 * size))
    thenar = ellipsoid([-28.0, -9.0, -58.0], (14.0 * size, 12.0 * size, 27.0 * size),
                       rotation((0, 1, 0), -25.0))
    parts = [Part("forearm", forearm), Part("wrist", wrist)] + [
        Part(n, o.moved(pose, pivot - pose @ pivot)) for n, o in (("palm", palm),
                                                                  ("thenar", thenar))]
    return Group("soft", "soft", tuple(parts), MU_SOFT, textured=False), habitus


def wrist_views(ph: Phantom, rng: np.random.Generator) -> list[ViewSpec]:
    """PA and lateral, sometimes a 45 degree pronated oblique; fingers up, often rotated."""
    x, y, z = np.eye(3)
    centre = ph.landmarks["view_centre"] + rng.normal(0.0, 4.0, 3)
    roll = float(np.clip(rng.normal(0.0, 12.0), -35.0, 35.0))
    views = [ViewSpec("AP", x, z, centre, FOV_MM, "PA", roll)]
    lat_roll = float(np.clip(rng.normal(0.0, 10.0), -30.0, 30.0))
    views.append(ViewSpec("LAT", -y, z, centre, FOV_MM, "RL" if ph.side == "R" else "LL",
                          lat_roll))
    if rng.random() < 0.3:
        sign = 1.0 if ph.side == "R" else -1.0
        r = rotation(z, sign * 45.0)
        views.append(ViewSpec("OBL", r @ x, z, centre, FOV_MM, "",
                              float(np.clip(rng.normal(0.0, 10.0), -30.0, 30.0))))
    return views


def radius_fracture(ph: Phantom, rng: np.random.Generator, *, displaced: bool,
                    occult: str | None) -> FracturePlan:
    """A distal radius fracture 9-26 mm above the joint; displaced ones tilt dorsally (Colles)
    or, less often, palmarly (Smith) and carry the carpus with them."""
    s = ph.params["scale"]
    x, y, z = np.eye(3)
    point = np.array([-5.0 if ph.side == "R" else 5.0, 0.8, rng.uniform(9.0, 26.0)]) * s
    t_ap = plane_tilt(rng, occult=occult == "AP")  # about x: tilts towards the PA beam (y)
    t_lat = plane_tilt(rng, occult=occult == "LAT")  # about y: towards the lateral beam (x)
    normal = tilted_normal(-z, x, t_ap, y, t_lat)
    gap = rng.uniform(2.6, 3.8) * FOV_MM / 512.0
    rot, shift, com = np.eye(3), np.zeros(3), None
    radial = -x if ph.side == "R" else x
    if displaced:
        gap = rng.uniform(0.6, 1.8)
        tilt = rng.uniform(8.0, 30.0) * (1.0 if rng.random() < 0.8 else -1.0)
        rot = rotation(x, tilt) @ rotation(y, rng.uniform(-8.0, 8.0))
        shift = (y * np.sign(tilt) * rng.uniform(1.0, 5.0) + radial * rng.uniform(0.5, 4.0)
                 + z * rng.uniform(0.0, 4.0))
        if rng.random() < 0.4:
            com = sample_comminution(rng, normal, 11.0 * s, 0.6 * s)
    followers = tuple(g.name for g in ph.groups if g.name in CARPALS or g.name.startswith("mc"))
    return FracturePlan("distal_radius", "radius", point, normal, gap, None, frozenset(),
                        displaced, rot, shift, followers=followers, radius=17.0 * s, axis=-z,
                        comminution=com, min_shift_mm=1.5, main_part="metaphysis")


def styloid_fracture(ph: Phantom, rng: np.random.Generator) -> FracturePlan:
    """An ulnar styloid fracture (often the second site of a distal radius fracture)."""
    a, b = ph.landmarks["ulna_styloid_a"], ph.landmarks["ulna_styloid_b"]
    axis = unit(b - a)
    point = a + (b - a) * rng.uniform(0.62, 0.78)
    x, y, _ = np.eye(3)
    normal = tilted_normal(axis, x, rng.uniform(-12, 12), y, rng.uniform(-12, 12))
    displaced = bool(rng.random() < 0.5)
    shift = (rng.normal(0.0, 1.0, 3) + axis * 1.2) if displaced else np.zeros(3)
    return FracturePlan("ulna_styloid", "ulna", point, normal,
                        rng.uniform(2.6, 3.8) * FOV_MM / 512.0, frozenset({"styloid"}),
                        frozenset(), displaced, np.eye(3), shift, radius=4.0, axis=axis,
                        min_shift_mm=1.0)
