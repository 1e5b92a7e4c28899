"""Behavioural tests of models.synth: files, DICOM validity (dciodvfy), truth, determinism."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config as dicom_config

from models.synth import (
    ARTIFACT_KINDS,
    MANIFEST_NAME,
    generate_dataset,
    read_manifest,
    render_study,
)
from tests.dicom_checks import dciodvfy_errors

SEED = 1  # 8 studies with both photometric interpretations, occult and visible fractures
STUDIES = 8
SIZE = 256
VIEW_POSITIONS = {"AP": {"AP", "PA"}, "LAT": {"LL", "RL"}, "OBL": {""}}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("synth")
    calls: list[tuple[int, int]] = []
    summary = generate_dataset(root, studies=STUDIES, seed=SEED, size=SIZE,
                               progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (STUDIES, STUDIES)
    assert summary.manifest == root / MANIFEST_NAME
    entries = read_manifest(root)
    assert summary.images == len(entries)
    return root, entries


def _bone_bright(ds: pydicom.Dataset) -> np.ndarray:
    px = ds.pixel_array.astype(np.float64)
    top = (1 << int(ds.BitsStored)) - 1
    return (top - px if ds.PhotometricInterpretation == "MONOCHROME1" else px) / top


def test_manifest_lists_exactly_the_files_written(dataset) -> None:
    root, entries = dataset
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*.dcm")}
    assert on_disk == {e["path"] for e in entries}
    for e in entries:
        study, series, name = e["path"].split("/")
        assert (study, series, name) == (e["study_instance_uid"], e["series_instance_uid"],
                                         f"{e['sop_instance_uid']}.dcm")
    assert len({e["study_instance_uid"] for e in entries}) == STUDIES


def test_files_read_back_strictly_and_agree_with_the_manifest(dataset) -> None:
    root, entries = dataset
    with dicom_config.strict_reading():
        for e in entries:
            ds = pydicom.dcmread(root / e["path"])
            str(ds)  # every element decodes
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
            assert ds.SOPInstanceUID == e["sop_instance_uid"]
            assert ds.StudyInstanceUID == e["study_instance_uid"]
            assert ds.SeriesInstanceUID == e["series_instance_uid"]
            assert ds.PatientID == e["patient_id"]
            assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in (
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID))
            assert ds.PhotometricInterpretation == e["photometric"]
            assert (ds.Rows, ds.Columns) == (e["rows"], e["columns"]) == (SIZE, SIZE)
            assert float(ds.PixelSpacing[0]) == pytest.approx(e["pixel_spacing_mm"], abs=1e-5)
            assert ds.get("BodyPartExamined", "") == e["body_part_examined"]
            assert ds.ViewPosition in VIEW_POSITIONS[e["view"]]
            assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16
            assert int(ds.pixel_array.max()) < (1 << ds.BitsStored)
            assert ds.Manufacturer == "pacs-node synthetic"
            assert "synthetic" in ds.SeriesDescription
            if ds.Modality == "DX":
                expected = "INVERSE" if e["photometric"] == "MONOCHROME1" else "IDENTITY"
                assert ds.PresentationLUTShape == expected


def test_every_file_passes_dciodvfy_without_errors(dataset) -> None:
    root, entries = dataset
    for e in entries:
        errors = dciodvfy_errors(root / e["path"])
        assert not errors, f"{e['path']}: {errors}"


def test_the_set_mixes_photometrics_views_and_labels(dataset) -> None:
    _, entries = dataset
    assert {e["photometric"] for e in entries} == {"MONOCHROME1", "MONOCHROME2"}
    assert {e["anatomy"] for e in entries} == {"hip", "wrist"}
    views_per_study: dict[str, int] = {}
    for e in entries:
        views_per_study[e["study_instance_uid"]] = views_per_study.get(
            e["study_instance_uid"], 0) + 1
    assert sum(n >= 2 for n in views_per_study.values()) >= 0.75 * STUDIES
    assert {e["study_label"] for e in entries} == {0, 1}
    for e in entries:
        assert e["label"] == int(e["study_label"] == 1 and e["visible"])
        assert e["visible"] == any(s["visible"] for s in e["fracture_sites"])
        assert e["study_label"] == int(bool(e["fracture_sites"]))
        if e["study_label"] == 0:
            assert e["class_ao"] == e["class_garden"] == "normal"
    assert any(e["study_label"] == 1 and not e["visible"] for e in entries)


def test_coordinates_lie_in_the_stored_pixel_grid(dataset) -> None:
    _, entries = dataset
    for e in entries:
        limit = np.array([e["columns"] - 1, e["rows"] - 1] * 2, dtype=float)
        boxes = [e["roi_box"], *e["boxes"]] + [s["box"] for s in e["fracture_sites"] if s["box"]]
        for box in boxes:
            b = np.asarray(box, dtype=float)
            assert b[0] <= b[2] and b[1] <= b[3]
            assert np.all(b >= 0) and np.all(b <= limit)
        assert len(e["points"]) == len(e["boxes"]) == sum(
            s["visible"] and s["point"] is not None for s in e["fracture_sites"])
        for (x, y), box in zip(e["points"], e["boxes"], strict=True):
            assert 0 <= x <= e["columns"] - 1 and 0 <= y <= e["rows"] - 1
            assert box[0] <= x <= box[2] and box[1] <= y <= box[3]


def test_bone_is_bright_after_honouring_the_photometric_interpretation(dataset) -> None:
    root, entries = dataset
    for e in entries:
        img = _bone_bright(pydicom.dcmread(root / e["path"]))
        x0, y0, x1, y1 = (int(round(v)) for v in e["roi_box"])
        f0, g0, f1, g1 = (int(round(v)) for v in e["exposed_field"])  # white borders aside
        roi, field = img[y0:y1 + 1, x0:x1 + 1], img[g0:g1 + 1, f0:f1 + 1]
        assert np.percentile(roi, 90) > np.median(field) + 0.1, e["path"]


def _bone_bright_view(study, view) -> np.ndarray:
    top = (1 << view.bits) - 1
    px = view.pixels.astype(np.float64)
    return (top - px if study.photometric == "MONOCHROME1" else px) / top


def test_a_visible_fracture_is_a_local_lucency_and_an_occult_one_is_faint() -> None:
    # seed 1 study 9: non-displaced distal radius fracture seen on the lateral only
    broken = render_study(1, 9, size=SIZE)
    intact = render_study(1, 9, size=SIZE, fractures=False)
    diffs = {}
    for v, w in zip(broken.views, intact.views, strict=True):
        site = v.record["fracture_sites"][0]
        assert site["type"] == "nondisplaced" and site["box"] is not None
        diffs[v.record["view"]] = (_bone_bright_view(broken, v) - _bone_bright_view(intact, w),
                                   site)
    d, site = diffs["LAT"]
    assert site["visible"]
    x0, y0, x1, y1 = (int(round(t)) for t in site["box"])
    inside = np.zeros(d.shape, dtype=bool)
    inside[y0:y1 + 1, x0:x1 + 1] = True
    assert d[inside].min() < -0.03  # the gap lets more X-rays through: darker in bone-bright
    assert np.unravel_index(np.argmin(d), d.shape) in set(zip(*np.nonzero(inside), strict=True))
    assert np.abs(d[inside]).sum() > 0.6 * np.abs(d).sum()
    d_ap, site_ap = diffs["AP"]
    assert not site_ap["visible"]
    assert np.abs(d_ap).max() < 0.5 * np.abs(d).max()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    generate_dataset(tmp_path / "a", studies=3, seed=5, size=128)
    generate_dataset(tmp_path / "b", studies=3, seed=5, size=128, workers=2)
    generate_dataset(tmp_path / "c", studies=3, seed=6, size=128)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    assert set(a).isdisjoint(set(c) - {MANIFEST_NAME})
    assert a[MANIFEST_NAME] != c[MANIFEST_NAME]


def test_fifty_studies_of_seed_7_meet_the_acceptance(tmp_path: Path) -> None:
    """`pacs-node synth --studies 50 --seed 7`: every file passes dciodvfy, both photometric
    interpretations occur, most studies have 2+ views, and a positive study has a view where
    its fracture is hidden (here at 128 px to stay fast; the geometry is size-independent)."""
    summary = generate_dataset(tmp_path, studies=50, seed=7, size=128)
    entries = read_manifest(tmp_path)
    for e in entries:
        errors = dciodvfy_errors(tmp_path / e["path"])
        assert errors == [], (e["path"], errors)
    assert {e["photometric"] for e in entries} == {"MONOCHROME1", "MONOCHROME2"}
    views: dict[str, int] = {}
    for e in entries:
        views[e["study_instance_uid"]] = views.get(e["study_instance_uid"], 0) + 1
    assert sum(n >= 2 for n in views.values()) > len(views) / 2
    positives = {e["study_instance_uid"] for e in entries if e["study_label"] == 1}
    assert 15 <= len(positives) <= 35
    assert summary.positives == len(positives)
    occult = {e["study_instance_uid"] for e in entries if e["study_label"] == 1
              and not e["visible"]}
    assert occult
    seen = {e["study_instance_uid"] for e in entries if e["label"] == 1}
    assert len(seen) >= 0.8 * len(positives)


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"studies": 0, "seed": 1}, ValueError),
    ({"studies": 1, "seed": -1}, ValueError),
    ({"studies": 1, "seed": 1, "anatomy": "knee"}, ValueError),
    ({"studies": 1, "seed": 1, "size": 32}, ValueError),
    ({"studies": 1, "seed": 1, "size": "512"}, TypeError),
    ({"studies": 1.5, "seed": 1}, TypeError),
    ({"studies": 1, "seed": 1, "artifacts": "no"}, TypeError),
])
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict[str, Any],
                                    error: type[Exception]) -> None:
    with pytest.raises(error):
        generate_dataset(tmp_path, **kwargs)


def test_reading_a_folder_without_manifest_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path)


def test_visibility_needs_a_fracture_that_stands_out_of_the_noise() -> None:
    """A site is labelled visible only if the fracture changes the image by at least
    MIN_SITE_CONSPICUITY times the local noise; the intact counterfactual keeps the labels.
    (At 512 px, the default size: smaller renderings average the noise away.)"""
    from models.synth._study import MIN_SITE_CONSPICUITY, site_conspicuity

    sites = []
    for index in range(12):  # seed 4242: hips with faint non-displaced fractures
        broken = render_study(4242, index, anatomy="hip", size=512)
        if not broken.views[0].record["study_label"]:
            continue
        intact = render_study(4242, index, anatomy="hip", size=512, fractures=False)
        for v, w in zip(broken.views, intact.views, strict=True):
            assert v.record["fracture_sites"] == w.record["fracture_sites"]
            sites.extend(v.record["fracture_sites"])
    assert all(s["conspicuity"] >= MIN_SITE_CONSPICUITY for s in sites if s["visible"])
    faint = [s for s in sites if s["box"] is not None and s["conspicuity"] < MIN_SITE_CONSPICUITY]
    assert faint and not any(s["visible"] for s in faint)
    # the measure itself: no difference -> 0; a step of 10 noise sigmas in the box -> large
    rng = np.random.default_rng(0)
    img = rng.normal(0.5, 0.01, (128, 128)).astype(np.float32)
    assert site_conspicuity(img, img.copy(), [30, 30, 60, 60]) == 0.0
    lucent = img.copy()
    lucent[40:50, 30:60] -= 0.1
    assert site_conspicuity(lucent, img, [30, 30, 60, 60]) > 3.0


# --- the artifacts of real films (collimation, markers, text, rulers, implants, casts, grid) --

ART_SEED = 21  # 60 studies at 128 px: every artifact kind, both labels, both photometrics
ART_STUDIES = 60
KINDS = set(ARTIFACT_KINDS)


@pytest.fixture(scope="module")
def artifact_studies() -> list[Any]:
    return [render_study(ART_SEED, i, size=128) for i in range(ART_STUDIES)]


def _display(pixels: np.ndarray, center: float, width: float, photometric: str) -> np.ndarray:
    """What a viewer shows: the DICOM window, MONOCHROME1 inverted; 1 is white."""
    shown = np.clip((pixels.astype(np.float64) - (center - width / 2.0)) / width, 0.0, 1.0)
    return 1.0 - shown if photometric == "MONOCHROME1" else shown


def _outer_line(img: np.ndarray, box: list[float]) -> np.ndarray:
    """The image border line a collimator strip box lies against (its far side)."""
    h, w = img.shape
    x0, y0, x1, y1 = box
    if y1 - y0 >= h - 1 and x0 == 0:
        return img[:, 0]
    if y1 - y0 >= h - 1:
        return img[:, w - 1]
    return img[0, :] if y0 == 0 else img[h - 1, :]


def test_every_artifact_kind_occurs_with_boxes_in_the_image(artifact_studies) -> None:
    seen: set[str] = set()
    for study in artifact_studies:
        for v in study.views:
            rec = v.record
            h, w = rec["rows"], rec["columns"]
            for box in [rec["exposed_field"]] + [a["box"] for a in rec["artifacts"]]:
                assert 0 <= box[0] <= box[2] <= w - 1 and 0 <= box[1] <= box[3] <= h - 1, box
            for a in rec["artifacts"]:
                assert set(a) == {"kind", "box"} and a["kind"] in KINDS
                seen.add(a["kind"])
                if a["kind"] == "grid":
                    assert a["box"] == [0.0, 0.0, w - 1.0, h - 1.0]
                if a["kind"] == "collimator":  # a strip along one image border
                    x0, y0, x1, y1 = a["box"]
                    assert (x1 - x0 >= w - 1) or (y1 - y0 >= h - 1)
            ex0, ey0, ex1, ey1 = rec["exposed_field"]
            if not any(a["kind"] == "collimator" for a in rec["artifacts"]):
                assert rec["exposed_field"] == [0.0, 0.0, w - 1.0, h - 1.0]
            else:
                assert (ex1 - ex0 + 1) * (ey1 - ey0 + 1) < h * w
    assert seen == KINDS


def test_artifacts_do_not_depend_on_the_label(artifact_studies) -> None:
    """Per kind, the share of studies showing it differs between normal and fractured
    studies by less than 3 standard errors (two-proportion z), and no kind is absent from
    either group when it is common."""
    groups: dict[int, list[set[str]]] = {0: [], 1: []}
    for study in artifact_studies:
        kinds = {a["kind"] for v in study.views for a in v.record["artifacts"]}
        groups[study.views[0].record["study_label"]].append(kinds)
    n0, n1 = len(groups[0]), len(groups[1])
    assert min(n0, n1) >= 20
    for kind in KINDS:
        k0 = sum(kind in s for s in groups[0])
        k1 = sum(kind in s for s in groups[1])
        pooled = (k0 + k1) / (n0 + n1)
        se = np.sqrt(max(pooled * (1 - pooled), 1e-9) * (1 / n0 + 1 / n1))
        assert abs(k0 / n0 - k1 / n1) < 3 * se + 1e-9, (kind, k0, n0, k1, n1)


def test_the_intact_counterfactual_and_clean_sets(tmp_path: Path) -> None:
    """`fractures=False` renders the same artifacts; `artifacts=False` none at all, with
    the same anatomy, labels and noise, and writes files without burned-in annotation."""
    generate_dataset(tmp_path, studies=3, seed=ART_SEED, size=64, artifacts=False)
    for e in read_manifest(tmp_path):
        assert e["artifacts"] == [] and e["exposed_field"] == [0.0, 0.0, 63.0, 63.0]
        assert pydicom.dcmread(tmp_path / e["path"]).BurnedInAnnotation == "NO"
    for index in (0, 2, 4):  # seed 21: fractured studies with markers, text, collimation
        broken = render_study(ART_SEED, index, size=128)
        assert broken.views[0].record["study_label"] == 1
        intact = render_study(ART_SEED, index, size=128, fractures=False)
        clean = render_study(ART_SEED, index, size=128, artifacts=False)
        for b, i, c in zip(broken.views, intact.views, clean.views, strict=True):
            assert b.record["artifacts"] == i.record["artifacts"] and b.record["artifacts"]
            assert b.record["exposed_field"] == i.record["exposed_field"]
            assert b.burned_text == i.burned_text
            assert c.record["artifacts"] == [] and c.burned_text is None
            assert c.record["exposed_field"] == [0.0, 0.0, 127.0, 127.0]
            assert c.record["fracture_sites"][0]["type"] == b.record["fracture_sites"][0]["type"]


def test_collimated_borders_are_white_in_both_photometric_files(tmp_path: Path) -> None:
    """Read back as a viewer shows them (window, MONOCHROME1 inverted), unexposed borders
    are white (bone-bright) or, where the system masks them, black. Scatter from the field
    may still grey a narrow border next to thin tissue; most are fully white."""
    generate_dataset(tmp_path, studies=12, seed=ART_SEED, size=128)
    white: dict[str, list[float]] = {"MONOCHROME1": [], "MONOCHROME2": []}
    black = 0
    for e in read_manifest(tmp_path):
        ds = pydicom.dcmread(tmp_path / e["path"])
        img = _display(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth),
                       ds.PhotometricInterpretation)
        x0, y0, x1, y1 = (int(v) for v in e["exposed_field"])
        field = float(np.median(img[y0:y1 + 1, x0:x1 + 1]))
        for a in e["artifacts"]:
            if a["kind"] != "collimator":
                continue
            border = float(np.median(_outer_line(img, a["box"])))
            if border <= 0.1:  # an electronic shutter
                black += 1
                continue
            assert border > max(field, 0.6), (e["path"], a, border, field)
            white[ds.PhotometricInterpretation].append(border)
    for borders in white.values():
        assert len(borders) >= 2 and np.mean(np.asarray(borders) >= 0.9) >= 0.85
    assert black < sum(len(b) for b in white.values())


def _roi_spread(view: Any, photometric: str, box: list[float]) -> float:
    """5th-95th percentile spread of the ROI box as displayed."""
    x0, y0, x1, y1 = (int(round(t)) for t in box)
    roi = _display(view.pixels, *view.window, photometric)[y0:y1 + 1, x0:x1 + 1]
    return float(np.percentile(roi, 95) - np.percentile(roi, 5))


def test_the_window_keeps_the_anatomy_contrast(artifact_studies) -> None:
    """The window is set on the exposed field: the ROI's contrast on display stays within
    reach of the same view rendered clean (white borders do not widen the window)."""
    ratios = []
    for study in artifact_studies[:24]:
        clean = render_study(ART_SEED, study.index, size=128, artifacts=False)
        for v, c in zip(study.views, clean.views, strict=True):
            if any(a["kind"] in ("hardware", "cast") for a in v.record["artifacts"]):
                continue
            box = v.record["roi_box"]
            spread, clean_spread = (_roi_spread(w, study.photometric, box) for w in (v, c))
            ratios.append(spread / max(clean_spread, 1e-6))
            assert spread > 0.2
    assert np.median(ratios) > 0.85


def test_hardware_saturates_and_burned_in_annotation_is_declared(artifact_studies) -> None:
    hardware = 0
    for study in artifact_studies:
        for v in study.views:
            top = (1 << v.bits) - 1
            bright = (top - v.pixels.astype(np.int64) if study.photometric == "MONOCHROME1"
                      else v.pixels.astype(np.int64))
            untexted = np.ones(bright.shape, dtype=bool)  # burned-in text may be whiter
            for a in v.record["artifacts"]:
                if a["kind"] == "text":
                    x0, y0, x1, y1 = (int(round(t)) for t in a["box"])
                    untexted[y0:y1 + 1, x0:x1 + 1] = False
            ceiling = bright[untexted].max()
            for a in v.record["artifacts"]:
                if a["kind"] == "hardware":
                    x0, y0, x1, y1 = (int(round(t)) for t in a["box"])
                    inside = bright[y0:y1 + 1, x0:x1 + 1]
                    hardware += 1
                    # metal sits at the top of the stored range, shown white
                    assert (inside >= ceiling - 1).sum() >= 3, (study.index, a)
                    shown = _display(v.pixels, *v.window, study.photometric)
                    assert shown[y0:y1 + 1, x0:x1 + 1].max() >= 0.95  # the window's 5 % margin
            if any(a["kind"] == "text" for a in v.record["artifacts"]):
                assert v.burned_text
    assert hardware >= 5


def test_view_codes_are_those_of_cid_4010() -> None:
    from pydicom.sr.codedict import codes

    from models.synth._dicom import VIEW_CODES

    names = {"AP": "AnteroPosterior", "PA": "PosteroAnterior", "LL": "LeftLateral",
             "RL": "RightLateral", "": "PosteroAnteriorOblique"}
    for position, (value, meaning) in VIEW_CODES.items():
        code = getattr(codes.cid4010, names[position])
        assert (value, meaning, "SCT") == (code.value, code.meaning, code.scheme_designator)
