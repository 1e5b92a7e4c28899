"""Hip phantom: proximal femur, acetabulum and the pelvic rim around it (seeds 000-002).

Built for a right hip in patient coordinates (LPS, mm) with the femoral head centre at the
origin; :meth:`Phantom.mirror` gives a left hip.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._fracture import FracturePlan, exposed_points, plane_tilt, sample_comminution, tilted_normal
from ._geometry import Solid, cylinder, ellipsoid, frame_from_axis, rotation, shrunk
from ._phantom import MU_CORTEX, MU_SOFT, MU_TRABECULAR, Phantom, ViewSpec, unit
from ._scene import Carve, Group, Part

FOV_AP_MM = 180.0
FOV_LAT_MM = 160.0


def _shell(name: str, outer: Solid, thickness: float,
           shift: ArrayLike = (0.0, 0.0, 0.0)) -> Part:
    return Part(name, outer, shrunk(outer, thickness, shift=shift))


def build_hip(rng: np.random.Generator) -> Phantom:
    """A random right hip: femur pose, bone size and density, patient habitus."""
    s = rng.uniform(0.88, 1.12)
    density = rng.uniform(0.75, 1.15)
    rh = 24.0 * s * rng.uniform(0.95, 1.05)
    nsa = rng.uniform(122.0, 138.0)
    add = np.radians(rng.uniform(4.0, 10.0))
    head = np.zeros(3)
    shaft = np.array([np.sin(add), 0.0, -np.cos(add)])  # distal direction
    up = -shaft
    lat = np.array([-np.cos(add), 0.0, -np.sin(add)])  # lateral, perpendicular to the shaft
    phi = add + np.radians(nsa)
    a_n = -np.array([np.sin(phi), 0.0, -np.cos(phi)])  # head -> trochanter
    neck_len = rng.uniform(48.0, 57.0) * s
    j = head + neck_len * a_n
    post = np.array([0.0, 1.0, 0.0])
    sframe = np.stack([lat, post, up], axis=1)

    r_si, r_ap = 0.66 * rh, 0.54 * rh
    neck_up = unit(np.cross(post, a_n)) * (1 if np.cross(post, a_n)[2] > 0 else -1)
    neck = cylinder(head + 0.25 * rh * a_n, j + 8.0 * s * a_n, (r_si, r_ap), hint=post)
    met = ellipsoid(j + 6.0 * s * lat + 4.0 * s * up, (22.0 * s, 21.0 * s, 46.0 * s), sframe)
    gt = ellipsoid(j + 21.0 * s * lat + 28.0 * s * up + 4.0 * s * post,
                   (12.0 * s, 15.0 * s, 18.0 * s), sframe @ rotation((0, 1, 0), -15))
    lt = ellipsoid(j - 32.0 * s * up - 13.0 * s * lat + 7.0 * s * post,
                   (8.0 * s, 7.0 * s, 12.0 * s), sframe)
    r_shaft = 13.5 * s
    cortex = rng.uniform(4.5, 6.5) * s
    shaft_c = cylinder(j + 10.0 * s * up, j - 300.0 * s * up, (r_shaft, r_shaft * 0.97), hint=post)
    canal = ellipsoid(j - 210.0 * s * up, (r_shaft - cortex, r_shaft - cortex, 175.0 * s), sframe)
    femur = Group(
        "femur", "femur",
        (
            _shell("head", ellipsoid(head, (rh, rh, rh)), 1.3),
            _shell("neck", neck, 2.4, shift=0.7 * neck_up),
            _shell("metaphysis", met, 1.6),
            _shell("greater_trochanter", gt, 1.3),
            _shell("lesser_trochanter", lt, 1.3),
            _shell("shaft", shaft_c, cortex),
        ),
        MU_CORTEX * density, MU_TRABECULAR * density,
        carves=(Carve(canal, "inner", 0.3),),
    )
    # leg rotation (anteversion minus internal rotation), flexion and abduction about the head
    pose = (rotation((0, 0, 1), float(np.clip(rng.normal(8.0, 10.0), -15.0, 38.0)))
            @ rotation((1, 0, 0), rng.uniform(-6.0, 6.0))
            @ rotation((0, 1, 0), rng.uniform(-6.0, 6.0)))
    femur = femur.moved(pose, np.zeros(3))

    pelvis, sourcil = _pelvis(rng, rh, s, density)
    soft, habitus = _soft_tissue(rng, pose @ j, pose @ shaft, s)
    gas = _bowel_gas(rng)
    groups = [soft, *gas, pelvis, sourcil, femur]
    marks = {
        "head": head, "neck_axis": pose @ a_n, "neck_mid": pose @ (head + 0.5 * neck_len * a_n),
        "junction": pose @ j, "shaft": pose @ shaft, "lat": pose @ lat, "post": pose @ post,
        "gt": pose @ gt.center, "lt": pose @ lt.center, "up": pose @ up,
        "neck_up": pose @ neck_up,
    }
    params = {"scale": float(s), "head_radius": float(rh), "neck_length": float(neck_len),
              "habitus": habitus}
    return Phantom("hip", "R", groups, marks, (("femur", "head"), ("femur", "neck")), params)


def _pelvis(rng: np.random.Generator, rh: float, s: float, density: float
            ) -> tuple[Group, Group]:
    joint = rng.uniform(3.0, 5.0)
    r_in = rh + joint
    incl = np.radians(rng.uniform(38.0, 50.0))
    av = np.radians(rng.uniform(12.0, 22.0))
    opening = unit([-np.sin(incl) * np.cos(av), -np.sin(av), -np.cos(incl) * np.cos(av)])
    h_open = rng.uniform(0.0, 0.12) * r_in
    centre = np.array([0.4, 0.0, 0.6])
    block = ellipsoid(centre + np.array([6.0, 2.0, 6.0]) * s,
                      (r_in + 9.0 * s, r_in + 8.0 * s, r_in + 10.0 * s))
    block = block.clipped(opening, h_open + float(opening @ centre) + 1.0)
    ilium = ellipsoid(np.array([0.0, 8.0, 62.0]) * s, (52.0 * s, 9.0 * s, 66.0 * s),
                      rotation((0, 0, 1), -32.0) @ rotation((0, 1, 0), 12.0))
    body = ellipsoid(np.array([22.0, 6.0, 34.0]) * s, (20.0 * s, 13.0 * s, 42.0 * s),
                     rotation((0, 1, 0), -30.0))
    sup_ramus = cylinder(np.array([14.0, -4.0, -2.0]) * s, np.array([95.0, -28.0, -24.0]) * s,
                         (9.5 * s, 8.0 * s))
    inf_ramus = cylinder(np.array([88.0, -22.0, -48.0]) * s, np.array([34.0, 10.0, -74.0]) * s,
                         (7.0 * s, 6.0 * s))
    ischium = cylinder(np.array([12.0, 14.0, -12.0]) * s, np.array([30.0, 20.0, -66.0]) * s,
                       (13.0 * s, 11.0 * s))
    tuber = ellipsoid(np.array([32.0, 22.0, -72.0]) * s, (15.0 * s, 12.0 * s, 13.0 * s))
    socket = ellipsoid(centre, (r_in, r_in, r_in)).clipped(opening, h_open + float(
        opening @ centre))
    pelvis = Group(
        "pelvis", "pelvis",
        tuple(Part(n, o, shrunk(o, 1.3)) for n, o in (
            ("acetabulum", block), ("ilium", ilium), ("body", body), ("superior_ramus", sup_ramus),
            ("inferior_ramus", inf_ramus), ("ischium", ischium), ("tuberosity", tuber))),
        MU_CORTEX * density, MU_TRABECULAR * 0.8 * density,
        carves=(Carve(ellipsoid(centre, (r_in + 1.9, r_in + 1.9, r_in + 1.9)).clipped(
            opening, h_open + float(opening @ centre)), "all", 0.0),),
    )
    sourcil = Group(
        "sourcil", "pelvis",
        (Part("socket", ellipsoid(centre, (r_in + 1.9,) * 3).clipped(
            opening, h_open + float(opening @ centre)), socket),),
        MU_CORTEX * density, 0.0, textured=False,
    )
    return pelvis, sourcil


def _soft_tissue(rng: np.random.Generator, j: np.ndarray, shaft: np.ndarray, s: float
                 ) -> tuple[Group, float]:
    """Trunk and thigh; ``size`` (returned as the habitus) spans thin to obese patients."""
    size = float(rng.uniform(0.7, 1.5))
    midline = rng.uniform(90.0, 110.0) * s
    trunk = ellipsoid([midline, 5.0, 115.0], (175.0 * size, 118.0 * size, 155.0))
    thigh_r = rng.uniform(60.0, 85.0) * size
    thigh = ellipsoid(j + 170.0 * shaft + np.array([8.0, 0.0, 0.0]),
                      (thigh_r, thigh_r * rng.uniform(1.0, 1.2), 270.0), frame_from_axis(shaft))
    return Group("soft", "soft", (Part("trunk", trunk), Part("thigh", thigh)), MU_SOFT,
                 textured=False), size


def _bowel_gas(rng: np.random.Generator) -> list[Group]:
    out = []
    for k in range(int(rng.integers(0, 4))):
        c = [rng.uniform(70.0, 130.0), rng.uniform(-40.0, 10.0), rng.uniform(15.0, 90.0)]
        axes = rng.uniform([8.0, 6.0, 8.0], [22.0, 14.0, 18.0])
        gas = ellipsoid(c, axes, rotation((0, 1, 0), rng.uniform(0, 180)))
        out.append(Group(f"gas{k}", "soft", (Part("gas", gas),), -MU_SOFT * 0.95,
                         textured=False))
    return out


def hip_views(ph: Phantom, rng: np.random.Generator) -> list[ViewSpec]:
    """AP (always) and, in most studies, a cross-table lateral (beam perpendicular to the neck)."""
    m = ph.landmarks
    x, y, z = np.eye(3)
    centre = m["head"] + 0.5 * (m["junction"] - m["head"]) + np.array([0.0, 0.0, 8.0])
    views = [ViewSpec("AP", x, -z, centre, FOV_AP_MM, "AP", rng.normal(0.0, 3.0))]
    if rng.random() < 0.9:
        d = unit(np.cross(m["neck_axis"], y))
        eu = unit(np.cross(y, d))
        views.append(ViewSpec("LAT", eu, y, m["neck_mid"] + 3.0 * m["neck_axis"], FOV_LAT_MM,
                              "RL" if ph.side == "R" else "LL", rng.normal(0.0, 4.0)))
    return views


def hip_fracture(ph: Phantom, rng: np.random.Generator, *, region: str, displaced: bool,
                 occult: str | None) -> FracturePlan:
    """A femoral neck (AO B) or trochanteric (AO A) fracture; ``occult`` hides it in AP/LAT.

    Non-displaced neck fractures are Garden I/II, displaced ones Garden III/IV: the shaft
    fragment shortens, rotates externally and angulates into varus (seed 002).
    """
    m = ph.landmarks
    s, rh, neck_len = (ph.params[k] for k in ("scale", "head_radius", "neck_length"))
    post = m["post"]
    a_n = unit(m["neck_axis"] - (m["neck_axis"] @ post) * post)  # neck axis seen on AP
    in_plane = unit(np.cross(post, a_n))  # coronal perpendicular to the neck axis
    t_ap = plane_tilt(rng, occult=occult == "AP")  # rotation about in_plane -> AP visibility
    t_lat = plane_tilt(rng, occult=occult == "LAT")  # rotation about post -> lateral visibility
    if region == "neck":
        normal = tilted_normal(a_n, in_plane, t_ap, post, t_lat)
        dist = _neck_site(ph, normal, rng)
        point = m["head"] + dist * m["neck_axis"]
        distal = frozenset({"metaphysis", "greater_trochanter", "lesser_trochanter", "shaft"})
        radius = 0.75 * rh * 1.4
        axis = m["neck_axis"]
    else:
        gt, lt = m["gt"], m["lt"]
        line = unit((lt - gt) - ((lt - gt) @ post) * post)
        base = unit(np.cross(line, post))
        base = base if base @ m["shaft"] > 0 else -base
        point = 0.5 * (gt + lt) + 4.0 * s * m["lat"]
        normal = tilted_normal(base, line, t_ap, post, t_lat)
        distal = frozenset({"shaft"})
        radius = 38.0 * s
        axis = m["shaft"]
    gap = rng.uniform(2.6, 3.8) * FOV_AP_MM / 512.0
    rot, shift = np.eye(3), np.zeros(3)
    com = None
    if displaced:
        gap = rng.uniform(1.0, 3.0)
        ext = rng.uniform(10.0, 35.0)  # external rotation of the shaft fragment
        varus = rng.uniform(5.0, 20.0)
        rot = rotation(m["up"], -ext if ph.side == "R" else ext) @ rotation(
            post, -varus if ph.side == "R" else varus)
        shift = (-normal * rng.uniform(1.0, 6.0) + m["up"] * rng.uniform(2.0, 10.0) * s
                 + m["lat"] * rng.uniform(-3.0, 3.0))
        if rng.random() < 0.35:
            com = sample_comminution(rng, normal, radius * 0.7, s)
    cut = frozenset({"head", "neck"}) if region == "neck" else None
    return FracturePlan(region, "femur", point, normal, gap, cut, distal, displaced, rot,
                        shift, radius=radius, axis=axis, comminution=com, min_shift_mm=2.5,
                        main_part="neck" if region == "neck" else "metaphysis")


def _neck_site(ph: Phantom, normal: np.ndarray, rng: np.random.Generator) -> float:
    """Distance from the head centre along the neck to a fracture plane that crosses mostly
    bare neck (subcapital to basicervical, not buried in the trochanteric mass)."""
    m = ph.landmarks
    rh, neck_len = ph.params["head_radius"], ph.params["neck_length"]
    femur = ph.group("femur")
    cut = frozenset({"head", "neck"})
    candidates = np.linspace(0.6 * rh, neck_len, 14)
    area = np.array([len(exposed_points(femur, m["head"] + d * m["neck_axis"], normal,
                                        1.1 * rh, cut, steps=21)) for d in candidates])
    good = candidates[area >= 0.7 * area.max()]
    return float(rng.uniform(good.min(), good.max()))


def ramus_fracture(ph: Phantom, rng: np.random.Generator) -> FracturePlan:
    """A superior pubic ramus fracture (a second site, seed 003 multi-lesion images)."""
    part = ph.group("pelvis").part("superior_ramus").outer
    axis = unit(part.affine[:, 2])
    point = part.center + axis * rng.uniform(0.15, 0.4) * np.linalg.norm(part.affine[:, 2])
    frame = frame_from_axis(axis)
    normal = tilted_normal(axis, frame[:, 0], rng.uniform(-15, 15), frame[:, 1],
                           rng.uniform(-15, 15))
    displaced = bool(rng.random() < 0.4)
    shift = rng.normal(0.0, 1.5, 3) if displaced else np.zeros(3)
    return FracturePlan("pubic_ramus", "pelvis", point, normal, rng.uniform(1.1, 1.6),
                        frozenset({"superior_ramus"}), frozenset(), displaced,
                        rotation(frame[:, 0], rng.uniform(-6, 6)) if displaced else np.eye(3),
                        shift, radius=14.0, axis=axis, min_shift_mm=2.0,
                        main_part="superior_ramus")
