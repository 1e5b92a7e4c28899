"""Behavioural tests of models.synth: files, DICOM validity (dciodvfy), truth, determinism."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import config as dicom_config

from models.synth import MANIFEST_NAME, generate_dataset, read_manifest, render_study

DCIODVFY = Path("/usr/bin/dciodvfy")
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
    assert DCIODVFY.is_file(), "dciodvfy (dicom3tools) is required for this test"
    root, entries = dataset
    for e in entries:
        out = subprocess.run([str(DCIODVFY), str(root / e["path"])], capture_output=True,
                             text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
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
        out = subprocess.run([str(DCIODVFY), str(tmp_path / e["path"])], capture_output=True,
                             text=True, timeout=60)
        errors = [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]
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
