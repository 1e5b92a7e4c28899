"""One synthetic study: phantom, fractures, views, images and their ground truth."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from ._artifacts import StudyArtifacts, ViewArtifacts, plan_study, view_artifacts
from ._fracture import FracturePlan, Site, apply_fractures, site_visible
from ._geometry import Solid, View
from ._hip import build_hip, hip_fracture, hip_views, ramus_fracture
from ._imaging import (
    Beam,
    Exposure,
    draw_fields,
    expose,
    make_view,
    quantise,
    sample_exposure,
    window,
)
from ._phantom import Phantom, ViewSpec
from ._scene import Group, render
from ._wrist import build_wrist, radius_fracture, styloid_fracture, wrist_views

Anatomy = Literal["hip", "wrist", "mixed"]

# A site counts as visible only if the fracture changes the processed image, smoothed at
# the scale a reader (or a model at ~384 px) resolves, by at least this many times the
# local noise and texture (see ``site_conspicuity``).
MIN_SITE_CONSPICUITY = 1.5

_FAMILY = ("GARCIA", "MULLER", "ROSSI", "MARTIN", "SMITH", "NOVAK", "JANSEN", "SILVA",
           "NIELSEN", "KOWALSKI", "DUBOIS", "FERRARI", "LOPEZ", "SCHMIDT", "BROWN", "COSTA")
_GIVEN = {"F": ("ANNA", "MARIA", "ELENA", "SOFIA", "CLARA", "IRENE", "JULIA", "NORA"),
          "M": ("JAN", "PAUL", "MARCO", "LUIS", "PETER", "ADAM", "HUGO", "TOMAS")}
# Body Part Examined as sites write it (seed 004 §4.2.2.1), kept valid for the CS VR, and
# the free-text study description that goes with it.
BODY_PARTS = {
    "hip": (("HIP", "Hip {v}"), ("HIP", "HIP {v} {s}"), ("HIP JOINT", "Hip joint {v}"),
            ("PELVIS", "Pelvis/hip {v}"), ("HUFTE", "Hüfte {s} {v}"), ("CADERA", "Cadera {v}"),
            ("HIPP", "hipp {v}"), ("HANCHE", "Hanche {v}"), ("ANCA", "Anca {v}"),
            ("", "Hip {v}")),
    "wrist": (("WRIST", "Wrist {v}"), ("WRIST", "WRIST {v} {s}"), ("WRIST RT", "Wrist {v}"),
              ("MUNECA", "Muñeca {v}"), ("POIGNET", "Poignet {v}"),
              ("HANDGELENK", "Handgelenk {s} {v}"), ("WIRST", "wirst {v}"), ("WRST", "Wrst {v}"),
              ("POLSO", "Polso {v}"), ("", "Wrist {v}")),
}


@dataclass
class SynthView:
    """One rendered view: stored pixel values, DICOM-facing metadata and its manifest entry."""

    pixels: np.ndarray
    record: dict[str, Any]
    position: str
    orientation: tuple[str, str]
    window: tuple[float, float]
    bits: int
    burned_text: str | None
    series_description: str
    number: int


@dataclass
class SynthStudy:
    """One patient study with its views (all share patient, study and acquisition settings)."""

    seed: int
    index: int
    anatomy: Literal["hip", "wrist"]
    side: Literal["L", "R"]
    modality: Literal["CR", "DX"]
    photometric: str
    patient: dict[str, str]
    study_date: dt.date
    study_time: str
    description: str
    body_part: str
    views: list[SynthView] = field(default_factory=list)


def _orientation_letters(v: np.ndarray) -> str:
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = np.argsort(-np.abs(v))
    out = "".join(letters[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) > 0.3)
    return out or letters[int(order[0])][0 if v[order[0]] > 0 else 1]


def _sample_plans(ph: Phantom, specs: list[ViewSpec], rng: np.random.Generator
                  ) -> list[FracturePlan]:
    kinds = [s.kind for s in specs]
    displaced = bool(rng.random() < 0.5)
    occult = None
    if not displaced and len(kinds) > 1 and rng.random() < 0.4:
        occult = "AP" if rng.random() < 0.5 else "LAT"
    if ph.anatomy == "hip":
        region = "neck" if rng.random() < 0.65 else "trochanteric"
        plans = [hip_fracture(ph, rng, region=region, displaced=displaced, occult=occult)]
        if rng.random() < 0.12:
            plans.append(ramus_fracture(ph, rng))
    else:
        plans = [radius_fracture(ph, rng, displaced=displaced, occult=occult)]
        if rng.random() < 0.35:
            plans.append(styloid_fracture(ph, rng))
    return plans


def _bbox(xy: np.ndarray, pad: float, size: int) -> list[float] | None:
    lo = np.maximum(xy.min(axis=0) - pad, 0.0)
    hi = np.minimum(xy.max(axis=0) + pad, size - 1.0)
    if np.any(hi <= lo):
        return None
    return [round(float(v), 2) for v in (lo[0], lo[1], hi[0], hi[1])]


def _roi_box(groups: list[Group], ph: Phantom, view: View, size: int) -> list[float]:
    bones = {b for b, _ in ph.roi_parts}
    names = {n for _, n in ph.roi_parts}
    pts = []
    for g in groups:
        if g.bone in bones:
            for p in g.parts:
                if p.name in names:
                    pts.append(_surface(p.outer))
    xy = view.project(np.vstack(pts))
    box = _bbox(xy, 3.0 / view.spacing, size)
    return box if box is not None else [0.0, 0.0, size - 1.0, size - 1.0]


def _surface(solid: Solid, n: int = 400) -> np.ndarray:
    """Points on the surface of a solid (clip planes applied, falls back to its centre)."""
    k = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * k / n)
    theta = np.pi * (1.0 + 5**0.5) * k
    u = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    if solid.kind == "cylinder":
        u[:, :2] /= np.linalg.norm(u[:, :2], axis=1, keepdims=True) + 1e-9
    pts = solid.center + u @ solid.affine.T
    if len(solid.offsets):
        keep = np.all(pts @ solid.normals.T <= solid.offsets + 1e-6, axis=1)
        pts = pts[keep] if keep.any() else solid.center[None]
    return pts


def site_conspicuity(img: np.ndarray, intact: np.ndarray, box: list[float] | None,
                     width: int | None = None) -> float:
    """How far a fracture stands out of the image around it, in units of local noise.

    ``img`` and ``intact`` are the same processed view (same exposure and noise) with and
    without the fracture, or the same part of both (``width`` then gives the whole view's
    width). The difference, smoothed at 1.5 px of a 512 px image, is compared (99th
    percentile inside the fracture box) with the standard deviation of the image's
    high-pass residue there: quantum noise plus trabecular texture, what hides a thin line.
    """
    if box is None:
        return 0.0
    h, w = img.shape
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), w - 1), min(int(np.ceil(box[3])), h - 1)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    scale = (w if width is None else width) / 512.0
    s_diff, s_res = max(1.5 * scale, 0.5), max(2.0 * scale, 0.7)
    # blur only the box and the kernels' reach around it (the same values as blurring all)
    m = int(np.ceil(4.0 * max(s_diff, s_res))) + 2
    cx0, cy0, cx1, cy1 = max(x0 - m, 0), max(y0 - m, 0), min(x1 + m, w - 1), min(y1 + m, h - 1)
    img_c = img[cy0:cy1 + 1, cx0:cx1 + 1]
    diff = cv2.GaussianBlur(img_c - intact[cy0:cy1 + 1, cx0:cx1 + 1], (0, 0), s_diff)
    residue = img_c - cv2.GaussianBlur(img_c, (0, 0), s_res)
    inner = (slice(y0 - cy0, y1 - cy0 + 1), slice(x0 - cx0, x1 - cx0 + 1))
    diff, residue = diff[inner], residue[inner]
    return float(np.percentile(np.abs(diff), 99) / max(float(residue.std()), 1e-6))


def _site_box(site: Site, view: View, size: int) -> tuple[np.ndarray, list[float] | None]:
    """Projected centre of a fracture site and its box (None when the centre is outside)."""
    xy = view.project(site.trace)
    xy_all = np.vstack([xy, view.project(site.extras)]) if len(site.extras) else xy
    centre = xy.mean(axis=0)
    inside = bool(np.all(centre >= 0) and np.all(centre <= size - 1))
    pad = max(2.0 / view.spacing, 2.0)
    return centre, _bbox(xy_all, pad, size) if inside else None


Pair = tuple[np.ndarray, np.ndarray, tuple[int, int]]  # broken, intact, (x, y) of their corner


def _site_record(site: Site, view: View, intact: list[Group], size: int,
                 pair: Pair | None) -> dict[str, Any]:
    """Manifest entry of one fracture site in one view; ``pair`` holds the broken and intact
    images around the sites (None when no site box lies in the image)."""
    centre, box = _site_box(site, view, size)
    inside = bool(np.all(centre >= 0) and np.all(centre <= size - 1))
    visible = site_visible(site, view, intact, inside=inside)
    conspicuity = 0.0  # a site outside the image, or without a box, does not show
    if pair is not None and box is not None:
        img, twin, (ox, oy) = pair
        conspicuity = site_conspicuity(img, twin, [box[0] - ox, box[1] - oy, box[2] - ox,
                                                   box[3] - oy], size)
    visible = visible and conspicuity >= MIN_SITE_CONSPICUITY
    return {
        "type": "displaced" if site.plan.displaced else "nondisplaced",
        "region": site.plan.region,
        "comminuted": site.plan.comminution is not None,
        "visible": visible,
        "point": [round(float(centre[0]), 2), round(float(centre[1]), 2)] if inside else None,
        "box": box,
        "conspicuity": round(conspicuity, 3),
    }


def _twin_region(boxes: list[list[float] | None], view: View, exposure: Exposure,
                 size: int) -> tuple[slice, slice] | None:
    """Where the intact twin must be processed to measure the sites' conspicuity: their
    boxes and the reach of the unsharp mask and conspicuity blurs, on a 64 px grid (so the
    reduced-resolution blurs see the same pixel blocks as on the whole image)."""
    real = [b for b in boxes if b is not None]
    if not real:
        return None
    reach = int(np.ceil(4.0 * exposure.usm_mm / view.spacing)) + 16 + int(size / 64)
    x0 = max(int(min(b[0] for b in real)) - reach, 0) // 64 * 64
    y0 = max(int(min(b[1] for b in real)) - reach, 0) // 64 * 64
    x1 = min(int(np.ceil(max(b[2] for b in real))) + reach + 1, size)
    y1 = min(int(np.ceil(max(b[3] for b in real))) + reach + 1, size)
    x1 = min(-(-x1 // 64) * 64, size)
    y1 = min(-(-y1 // 64) * 64, size)
    return slice(y0, y1), slice(x0, x1)


def _sub_view(view: View, region: tuple[slice, slice]) -> View:
    """The pixels ``region`` of ``view`` as a view of their own."""
    ys, xs = region
    origin = view.origin + view.spacing * (xs.start * view.eu + ys.start * view.ev)
    return View(origin, view.eu, view.ev, view.beam, view.spacing,
                (ys.stop - ys.start, xs.stop - xs.start))


def render_study(seed: int, index: int, *, anatomy: Anatomy = "mixed", size: int = 512,
                 fractures: bool = True, artifacts: bool = True) -> SynthStudy:
    """Render study ``index`` of the set with ``seed`` (deterministic, no files written).

    With ``fractures=False`` the same study is rendered with its bones intact (same pose,
    noise, artifacts and labels): a counterfactual for tests and explanation benchmarks.
    With ``artifacts=False`` the images are clean: no collimation, markers, text, rulers,
    grid lines, implants or casts (the anatomy, exposure and noise stay the same).
    """
    if anatomy not in ("hip", "wrist", "mixed"):
        raise ValueError(f"anatomy must be 'hip', 'wrist' or 'mixed', got {anatomy!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    # the sixth stream draws the artifacts: nothing about them depends on the label
    streams = np.random.SeedSequence([seed, index]).spawn(6)
    r_meta, r_phantom, r_frac, r_views, r_image, r_art = (
        np.random.default_rng(s) for s in streams)

    kind: Literal["hip", "wrist"] = (
        anatomy if anatomy != "mixed" else ("hip" if r_meta.random() < 0.5 else "wrist"))
    side: Literal["L", "R"] = "L" if r_meta.random() < 0.5 else "R"
    positive = bool(r_meta.random() < 0.5)
    modality: Literal["CR", "DX"] = "CR" if r_meta.random() < 0.5 else "DX"
    photometric = "MONOCHROME1" if r_meta.random() < 0.4 else "MONOCHROME2"
    bits = int(r_meta.choice([12, 14]) if modality == "CR" else r_meta.choice([12, 14, 15, 16]))
    r_meta.random()  # was the burned-in text decision, now drawn with the artifacts
    sex = "F" if r_meta.random() < (0.7 if kind == "hip" else 0.6) else "M"
    age = int(np.clip(r_meta.normal(78, 9) if kind == "hip" else r_meta.normal(55, 18), 18, 99))
    study_date = dt.date(2016, 1, 1) + dt.timedelta(days=int(r_meta.integers(0, 3300)))
    birth = study_date - dt.timedelta(days=int(age * 365.25 + r_meta.integers(0, 365)))
    study_time = f"{int(r_meta.integers(7, 22)):02d}{int(r_meta.integers(0, 60)):02d}" \
                 f"{int(r_meta.integers(0, 60)):02d}"
    body_part, description = BODY_PARTS[kind][int(r_meta.integers(len(BODY_PARTS[kind])))]
    if body_part == "WRIST RT" and side == "L":
        body_part = "WRIST LT"
    patient = {
        "name": f"{_FAMILY[int(r_meta.integers(len(_FAMILY)))]}^"
                f"{_GIVEN[sex][int(r_meta.integers(len(_GIVEN[sex])))]}",
        "id": f"SYN{seed % 1000:03d}{index:06d}",
        "birth_date": birth.strftime("%Y%m%d"),
        "sex": sex,
        "age": f"{age:03d}Y",
    }

    ph = build_hip(r_phantom) if kind == "hip" else build_wrist(r_phantom)
    if side == "L":
        ph = ph.mirror()
    specs = hip_views(ph, r_views) if kind == "hip" else wrist_views(ph, r_views)
    plans = _sample_plans(ph, specs, r_frac) if positive else []
    broken, sites = apply_fractures(ph, plans)
    groups = broken if fractures else ph.groups
    carried: StudyArtifacts | None = plan_study(ph, r_art) if artifacts else None

    study = SynthStudy(seed, index, kind, side, modality, photometric, patient, study_date,
                       study_time, description.format(v="", s="").strip(), body_part)
    side_word = {"L": "left", "R": "right"}[side]
    study.description = description.format(v="", s=side_word).replace("  ", " ").strip()
    for number, spec in enumerate(specs):
        view = make_view(spec, size, r_views)
        if sites:
            # unchanged groups are rendered once; the broken image sets the levels and the
            # large-scale maps that its intact twin reuses (a fracture changes them
            # negligibly), so the twin is rendered and processed only around the sites
            same = [g for g in ph.groups if any(g is b for b in broken)]
            before = [g for g in ph.groups if not any(g is b for b in broken)]
            after = [g for g in broken if not any(g is o for o in ph.groups)]
            p_same, t_same = render(same, view)
            p_after, t_after = render(after, view)
        else:
            plain, trab = render(groups, view)
        exposure = sample_exposure(r_image, kind, bits, ph.params.get("habitus", 1.0))
        fields = draw_fields(view.shape, view.spacing, r_image)
        intact_roi = _roi_box(ph.groups, ph, view, size)
        arts: ViewArtifacts | None = None
        if carried is not None:
            labels = {"side": side, "position": spec.position or "OBL",
                      "date": study_date.strftime("%d.%m.%Y"), "patient_id": patient["id"]}
            arts = view_artifacts(view, carried, intact_roi, labels, r_art)
        beam = arts.beam if arts is not None else Beam()
        pair: Pair | None = None  # (broken, intact, corner) around the sites
        if sites:
            broken01, exposed = expose(p_same + p_after, t_same + t_after, view, exposure,
                                       fields, beam)
            img01 = broken01
            region = _twin_region([_site_box(s, view, size)[1] for s in sites], view,
                                  exposure, size)
            if region is not None:
                p_before, t_before = render(before, _sub_view(view, region))
                twin01, _ = expose(p_same[region] + p_before, t_same[region] + t_before,
                                   view, exposure, fields, beam, reuse=exposed, region=region)
                pair = (broken01[region], twin01, (region[1].start, region[0].start))
            if not fractures:
                p_before, t_before = render(before, view)
                img01, _ = expose(p_same + p_before, t_same + t_before, view, exposure, fields,
                                  beam, reuse=exposed)
        else:
            img01, _ = expose(plain, trab, view, exposure, fields, beam)
        pixels = quantise(img01, bits, r_image)
        top = (1 << bits) - 1
        if arts is not None:
            arts.burn(pixels, top)
        if photometric == "MONOCHROME1":
            pixels = (top - pixels.astype(np.int32)).astype(np.uint16)
        site_records = [_site_record(s, view, ph.groups, size, pair) for s in sites]
        visible = any(r["visible"] for r in site_records)
        primary = plans[0] if plans else None
        record = _record(study, spec, view, size, site_records, visible, primary,
                         _roi_box(groups, ph, view, size) if sites and fractures else intact_roi)
        record["artifacts"] = arts.records if arts is not None else []
        record["exposed_field"] = (arts.exposed_field if arts is not None
                                   else [0.0, 0.0, size - 1.0, size - 1.0])
        orientation = (_orientation_letters(view.eu), _orientation_letters(view.ev))
        view_name = spec.position or "OBL"
        desc = description.format(v=view_name, s=side_word)
        burned = " | ".join(arts.annotation) if arts is not None and arts.annotation else None
        study.views.append(SynthView(pixels, record, spec.position, orientation,
                                     window(pixels, arts.window_mask if arts else None), bits,
                                     burned, f"{desc} (synthetic)", number + 1))
    return study


def _record(study: SynthStudy, spec: ViewSpec, view: View, size: int,
            sites: list[dict[str, Any]], visible: bool, primary: FracturePlan | None,
            roi: list[float]) -> dict[str, Any]:
    positive = primary is not None
    ao = garden = "normal"
    if primary is not None:
        if study.anatomy == "hip":
            ao = "B" if primary.region == "neck" else "A"
        else:
            ao = "fracture"
        garden = "III-IV" if primary.displaced else "I-II"
    return {
        "path": "",
        "patient_id": study.patient["id"],
        "study_instance_uid": "",
        "series_instance_uid": "",
        "sop_instance_uid": "",
        "anatomy": study.anatomy,
        "laterality": study.side,
        "view": spec.kind,
        "rows": size,
        "columns": size,
        "pixel_spacing_mm": round(view.spacing, 5),
        "photometric": study.photometric,
        "body_part_examined": study.body_part,
        "study_label": int(positive),
        "visible": visible,
        "label": int(positive and visible),
        "fracture_sites": sites,
        "points": [s["point"] for s in sites if s["visible"] and s["point"] is not None],
        "boxes": [s["box"] for s in sites if s["visible"] and s["box"] is not None],
        "roi_box": roi,
        "class_ao": ao,
        "class_garden": garden,
        "split_seed": study.seed,
    }
