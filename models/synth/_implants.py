"""Orthopaedic hardware and casts as 3D solids, placed from the phantom's landmarks.

Implants are steel (mu 1.0-1.6 /mm at the phantom's ~50 keV, 20-30 times cortical bone) so
they saturate with sharp edges; casts are plaster or fibreglass sleeves around the forearm,
or a splint slab on one side. Both are rendered with the scene machinery like the bones, so
every view of a study shows the same object. None of them depends on the study's label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._geometry import Solid, cylinder, shrunk
from ._phantom import Phantom, unit
from ._scene import Group, Part

HARDWARE_RATE = 0.13  # studies with an implant
CAST_RATE_WRIST = 0.2  # wrist studies in a cast or splint
MU_STEEL = (1.0, 1.6)  # 1/mm, stainless steel / CoCr at ~50 keV
MU_PLASTER = (0.03, 0.05)  # 1/mm, dry plaster of Paris
MU_FIBREGLASS = (0.012, 0.02)


@dataclass(frozen=True)
class Implant:
    """One piece of hardware (an artifact instance in the manifest): its solids in steel."""

    name: str
    group: Group


@dataclass(frozen=True)
class Cast:
    """A cast or splint: its solids and whether its texture is a fibreglass mesh."""

    name: str
    group: Group
    mesh: bool


@dataclass(frozen=True)
class StudyHardware:
    """The implants and cast of one study (both may be empty)."""

    implants: tuple[Implant, ...] = ()
    cast: Cast | None = None


def _perp(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """``v`` without its component along the unit vector ``axis``, normalised."""
    return unit(v - (v @ axis) * axis)


def rod(start: np.ndarray, end: np.ndarray, radius: float) -> Solid:
    """A round bar (wire, screw core, nail) from ``start`` to ``end``."""
    return cylinder(start, end, (radius, radius))


def bar(start: np.ndarray, end: np.ndarray, width: float, thickness: float,
        across: np.ndarray) -> Solid:
    """A flat bar (plate) of rectangular section, ``width`` along ``across``."""
    axis = unit(end - start)
    w = _perp(across, axis)
    t = np.cross(axis, w)
    centre = (start + end) / 2.0
    outer = cylinder(start, end, (thickness * 0.75, width * 0.75), hint=w)
    for n, half in ((w, width / 2.0), (t, thickness / 2.0)):
        outer = outer.clipped(n, float(n @ centre) + half).clipped(-n, -float(n @ centre) + half)
    return outer


def screw(tip: np.ndarray, tail: np.ndarray, core: float, thread: float, thread_len: float,
          *, pitch: float = 2.8, cannula: float = 0.0) -> list[Part]:
    """A screw: core from ``tip`` to ``tail``, thread crests over ``thread_len`` at the tip."""
    axis = unit(tail - tip)
    inner = rod(tip - 0.5 * axis, tail + 0.5 * axis, cannula) if cannula > 0 else None
    parts = [Part("core", rod(tip, tail, core), inner)]
    for k in range(max(int(thread_len / pitch), 1)):
        c = tip + axis * (0.6 + k * pitch)
        parts.append(Part("thread", rod(c - 0.3 * axis, c + 0.3 * axis, thread)))
    return parts


def _steel(name: str, parts: list[Part], mu: float) -> Implant:
    return Implant(name, Group(name, "metal", tuple(parts), mu, 0.0, textured=False))


def plan_hardware(ph: Phantom, rng: np.random.Generator) -> StudyHardware:
    """Draw the study's hardware and cast (from the study's artifact stream only)."""
    implants: tuple[Implant, ...] = ()
    if rng.random() < HARDWARE_RATE:
        mu = float(rng.uniform(*MU_STEEL))
        implants = tuple(_hip_implants(ph, rng, mu) if ph.anatomy == "hip"
                         else _wrist_implants(ph, rng, mu))
    cast = None
    if ph.anatomy == "wrist" and rng.random() < CAST_RATE_WRIST:
        cast = _cast(ph, rng)
    return StudyHardware(implants, cast)


# --- hip -------------------------------------------------------------------------------


def _hip_frame(ph: Phantom) -> dict[str, np.ndarray | float]:
    m = ph.landmarks
    s = ph.params["scale"]
    a = unit(m["neck_axis"])
    lat = unit(m["lat"])
    r_shaft = 13.5 * s
    return {"H": m["head"], "a": a, "lat": lat, "post": unit(m["post"]), "j": m["junction"],
            "down": unit(m["shaft"]), "up": unit(m["up"]), "e1": _perp(m["neck_up"], a),
            "r_shaft": r_shaft, "rh": ph.params["head_radius"], "s": s}


def _lateral_exit(f: dict, start: np.ndarray) -> float:
    """Distance along the neck axis from ``start`` to the lateral femoral cortex."""
    plane = f["j"] + f["r_shaft"] * f["lat"]
    return float(((plane - start) @ f["lat"]) / max(float(f["a"] @ f["lat"]), 0.2))


def _hip_implants(ph: Phantom, rng: np.random.Generator, mu: float) -> list[Implant]:
    f = _hip_frame(ph)
    choice = rng.choice(["dhs", "cannulated", "nail"], p=[0.4, 0.35, 0.25])
    if choice == "dhs":
        return [_dhs(f, rng, mu)]
    if choice == "nail":
        return [_nail(f, rng, mu)]
    return _cannulated(f, rng, mu)


def _dhs(f: dict, rng: np.random.Generator, mu: float) -> Implant:
    """Dynamic hip screw: lag screw along the neck, barrel and side plate with shaft screws."""
    a, lat, post, down = f["a"], f["lat"], f["post"], f["down"]
    start = f["H"] - f["e1"] * rng.uniform(0.0, 4.0)
    tip = start - a * (f["rh"] - rng.uniform(6.0, 12.0))
    exit_t = _lateral_exit(f, start)
    parts = screw(tip, start + a * (exit_t - 8.0), 4.0, 6.3, rng.uniform(22.0, 28.0), pitch=3.0)
    parts.append(Part("barrel", rod(start + a * (exit_t - 36.0), start + a * (exit_t + 4.0),
                                    6.6)))
    thick, length = 5.5, float(rng.uniform(55.0, 110.0))
    surface = f["j"] + lat * (f["r_shaft"] + thick / 2.0)
    top = float((start + a * exit_t - f["j"]) @ down) - 8.0
    p0, p1 = surface + down * top, surface + down * (top + length)
    parts.append(Part("plate", bar(p0, p1, 19.0, thick, post)))
    for k in range(int((length - 24.0) // 16.0) + 1):
        c = surface + down * (top + 20.0 + 16.0 * k)
        head = c + lat * (thick / 2.0)
        parts.append(Part("screw", rod(head, c - lat * (2.0 * f["r_shaft"] + thick / 2 + 3.0),
                                       2.25)))
        parts.append(Part("screw_head", rod(head, head + lat * 3.0, 4.0)))
    return _steel("dynamic_hip_screw", parts, mu)


def _cannulated(f: dict, rng: np.random.Generator, mu: float) -> list[Implant]:
    """Two or three parallel cannulated screws in the femoral neck (inverted triangle)."""
    a, e1 = f["a"], f["e1"]
    e2 = np.cross(a, e1)
    r = 0.6 * f["rh"]
    offsets = [-0.45 * r * e1, 0.35 * r * e1 + 0.42 * r * e2, 0.35 * r * e1 - 0.42 * r * e2]
    if rng.random() < 0.3:
        offsets = [-0.42 * r * e1, 0.42 * r * e1]
    out = []
    for k, off in enumerate(offsets):
        start = f["H"] + off
        tip = start - a * (f["rh"] * rng.uniform(0.65, 0.85))
        tail = start + a * (_lateral_exit(f, start) + rng.uniform(2.0, 8.0))
        parts = screw(tip, tail, 3.25, 3.6, rng.uniform(16.0, 32.0), pitch=2.75, cannula=1.4)
        parts.append(Part("washer", rod(tail - a * 1.5, tail, 6.0)))
        out.append(_steel(f"cannulated_screw_{k + 1}", parts, mu))
    return out


def _nail(f: dict, rng: np.random.Generator, mu: float) -> Implant:
    """Cephalomedullary nail down the shaft with a lag screw into the head."""
    a, up, down, lat = f["a"], f["up"], f["down"], f["lat"]
    s = f["s"]
    top = f["j"] + up * (42.0 * s) + lat * (4.0 * s)
    bend = f["j"] - down * (8.0 * s)
    length = float(rng.uniform(170.0, 320.0))
    parts = [Part("nail_proximal", rod(top, bend + down * 20.0, 8.0), rod(top, bend, 2.6)),
             Part("nail", rod(bend + down * 15.0, bend + down * length, 5.5),
                  rod(bend, bend + down * length, 2.4))]
    start = f["H"] - f["e1"] * rng.uniform(0.0, 3.0)
    tip = start - a * (f["rh"] - rng.uniform(6.0, 12.0))
    tail = start + a * (_lateral_exit(f, start) + rng.uniform(3.0, 10.0))
    parts += screw(tip, tail, 5.25, 6.3, rng.uniform(20.0, 28.0), pitch=3.0)
    lock = bend + down * (length - 25.0)
    parts.append(Part("locking_screw", rod(lock + lat * 20.0, lock - lat * 20.0, 2.5)))
    return _steel("intramedullary_nail", parts, mu)


# --- wrist -----------------------------------------------------------------------------


def _wrist_frame(ph: Phantom) -> dict[str, np.ndarray | float]:
    radius = ph.group("radius")
    shaft = radius.part("shaft").outer
    met = radius.part("metaphysis").outer
    sty = radius.part("styloid").outer
    axis = unit(shaft.affine[:, 2])  # proximal
    volar = _perp(np.array([0.0, -1.0, 0.0]), axis)
    radial = _perp(sty.center - shaft.center, axis)
    return {"axis": axis, "volar": volar, "radial": radial, "dorsal": -volar,
            "start": shaft.center - shaft.affine[:, 2], "met": met.center,
            "r_x": float(np.linalg.norm(shaft.affine[:, 0])),
            "r_y": float(np.linalg.norm(shaft.affine[:, 1])),
            "met_y": float(np.linalg.norm(met.affine[:, 1])),
            "styloid": sty.center, "s": ph.params["scale"]}


def _wrist_implants(ph: Phantom, rng: np.random.Generator, mu: float) -> list[Implant]:
    f = _wrist_frame(ph)
    if rng.random() < 0.55:
        return [_volar_plate(f, rng, mu)]
    return _k_wires(f, rng, mu)


def _volar_plate(f: dict, rng: np.random.Generator, mu: float) -> Implant:
    """Volar locking plate on the distal radius: a T-shaped plate with locking pegs."""
    ax, volar, radial, s = f["axis"], f["volar"], f["radial"], f["s"]
    th = float(rng.uniform(1.8, 2.5))
    head_c = f["met"] + ax * (6.0 * s) + volar * (0.93 * f["met_y"] + th / 2.0 + 0.3)
    head_w = float(rng.uniform(20.0, 27.0))
    neck = f["start"] + ax * (8.0 * s) + volar * (f["r_y"] + th / 2.0 + 0.3)
    length = float(rng.uniform(35.0, 55.0))
    end = neck + ax * length
    parts = [Part("plate_head", bar(head_c - ax * 5.0, head_c + ax * 5.0, head_w, th, radial)),
             Part("plate_bend", bar(head_c, neck, 11.0, th, radial)),
             Part("plate_shaft", bar(neck, end, 10.5, th, radial))]
    tilt = float(np.radians(rng.uniform(8.0, 20.0)))
    peg_dir = unit(f["dorsal"] * np.cos(tilt) - ax * np.sin(tilt))
    n_pegs = int(rng.integers(3, 5))
    for k in range(n_pegs):
        c = head_c + radial * ((k - (n_pegs - 1) / 2.0) * head_w / (n_pegs + 0.5))
        parts.append(Part("peg", rod(c, c + peg_dir * rng.uniform(16.0, 22.0), 1.2)))
    for k in range(int(rng.integers(2, 4))):
        c = neck + ax * (8.0 + 11.0 * k)
        if float((c - neck) @ ax) > length - 4.0:
            break
        parts.append(Part("screw", rod(c, c + f["dorsal"] * (2.0 * f["r_y"] + 4.0), 1.75)))
        parts.append(Part("screw_head", rod(c, c + volar * 1.5, 2.8)))
    return _steel("volar_plate", parts, mu)


def _k_wires(f: dict, rng: np.random.Generator, mu: float) -> list[Implant]:
    """One to three Kirschner wires across the distal radius, their bent ends outside."""
    ax, radial, s = f["axis"], f["radial"], f["s"]
    out = []
    for k in range(int(rng.integers(1, 4))):
        if k == 0:  # from the radial styloid to the ulnar cortex of the shaft
            entry = f["styloid"] - ax * (4.0 * s) + radial * (3.0 * s)
            target = f["start"] + ax * rng.uniform(12.0, 30.0) * s - radial * f["r_x"]
        else:  # dorsal (intrafocal) wires towards the volar cortex
            entry = (f["met"] + ax * rng.uniform(8.0, 16.0) * s + f["dorsal"] * 10.0 * s
                     + radial * rng.uniform(-8.0, 8.0) * s)
            target = f["start"] + ax * rng.uniform(15.0, 30.0) * s + f["volar"] * f["r_y"]
        d = unit(target - entry)
        outside = float(rng.uniform(10.0, 25.0))
        bend_at = entry - d * outside
        bend_dir = _perp(rng.normal(0.0, 1.0, 3), d)
        r = float(rng.choice([0.8, 0.9]))
        parts = [Part("wire", rod(bend_at, target + d * 1.5, r)),
                 Part("bend", rod(bend_at, bend_at + bend_dir * rng.uniform(6.0, 12.0), r))]
        out.append(_steel(f"k_wire_{k + 1}", parts, mu))
    return out


def _cast(ph: Phantom, rng: np.random.Generator) -> Cast:
    """A plaster or fibreglass short-arm cast, or a dorsal/volar splint slab."""
    soft = ph.group("soft")
    kind = rng.choice(["plaster", "fibreglass", "splint"], p=[0.45, 0.35, 0.2])
    pad = float(rng.uniform(1.5, 4.0))
    top = float(rng.uniform(90.0, 180.0))  # proximal end of the cast (mm above the joint)
    hand_end = -float(rng.uniform(45.0, 70.0))  # distal end over the palm
    z = np.array([0.0, 0.0, 1.0])
    if kind == "splint":
        mu = float(rng.uniform(*MU_PLASTER))
        forearm = soft.part("forearm").outer
        half_y = float(np.linalg.norm(forearm.affine[:, 1]))
        side = 1.0 if rng.random() < 0.5 else -1.0  # dorsal (+y) or volar
        thick = float(rng.uniform(5.0, 9.0))
        centre_y = forearm.center[1] + side * (half_y + pad + thick / 2.0)
        start = np.array([forearm.center[0], centre_y, hand_end + 10.0])
        end = np.array([forearm.center[0], centre_y, top])
        slab = bar(start, end, float(rng.uniform(45.0, 60.0)), thick, np.array([1.0, 0, 0]))
        group = Group("splint", "cast", (Part("slab", slab),), mu, 0.0, textured=False)
        return Cast("splint", group, False)
    mesh = kind == "fibreglass"
    mu = float(rng.uniform(*(MU_FIBREGLASS if mesh else MU_PLASTER)))
    thick = float(rng.uniform(2.5, 4.0) if mesh else rng.uniform(4.0, 8.0))
    parts = []
    for name in ("forearm", "wrist", "palm"):
        solid = soft.part(name).outer
        inner = shrunk(solid, -pad)
        outer = shrunk(solid, -(pad + thick))
        inner = inner.clipped(z, top).clipped(-z, -hand_end)
        outer = outer.clipped(z, top).clipped(-z, -hand_end)
        parts.append(Part(name, outer, inner))
    thumb = soft.part("thenar").outer
    parts.append(Part("thenar", shrunk(thumb, -(pad + thick)).clipped(-z, -hand_end),
                      shrunk(thumb, -pad).clipped(-z, -hand_end)))
    group = Group(kind, "cast", tuple(parts), mu, 0.0, textured=False)
    return Cast(kind, group, mesh)
