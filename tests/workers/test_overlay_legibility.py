"""Overlays as a reader and a PACS get them: score labels whole and legible wherever the box
lies, and the Secondary Capture compressed losslessly and still valid.
"""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from models.registry import Finding, ViewPrediction
from models.synth import generate_dataset, read_manifest
from tests.dicom_checks import dciodvfy_errors
from workers.results import AlgorithmInfo, StudyResult, ViewResult, render_overlay
from workers.results.overlay import LABEL_BACKGROUND
from workers.results.sc import SC_TRANSFER_SYNTAXES, build_secondary_captures

# ---------------------------------------------------------------- score labels

H, W = 300, 400
SCORE = 0.77


def _render(findings: list[Finding]) -> np.ndarray:
    """The image part (below the banner) of an overlay of a white view, no heatmap colour."""
    display = np.full((H, W), 255, np.uint8)
    heat = np.zeros((H, W), np.float32)  # analysed, no evidence: no colour
    out = render_overlay(display, heat, findings, ["banner"])
    return out[out.shape[0] - H:]


def _label(image: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """The label's background rectangle (x0, y0, x1, y1), inclusive, and its pixels."""
    background = np.all(image == np.array(LABEL_BACKGROUND, np.uint8), axis=2)
    ys, xs = np.nonzero(background)
    assert ys.size, "no label background drawn"
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    return (x0, y0, x1, y1), image[y0:y1 + 1, x0:x1 + 1]


def _box(x: int, y: int, size: int = 80) -> tuple[float, float, float, float]:
    return (float(x), float(y), float(x + size - 1), float(y + size - 1))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The label of a box in the middle of the view: above the box, nothing in its way."""
    box = _box(160, 120)
    (x0, y0, x1, y1), patch = _label(_render([Finding(SCORE, (200.0, 160.0), box)]))
    assert y1 < 120 and x0 <= 160  # above the box, at its left edge
    return patch


EDGE_BOXES = {
    "left": _box(0, 110), "right": _box(W - 80, 110), "top": _box(160, 0),
    "bottom": _box(160, H - 80), "top-left": _box(0, 0), "top-right": _box(W - 80, 0),
    "bottom-left": _box(0, H - 80), "bottom-right": _box(W - 80, H - 80),
    "whole view": (0.0, 0.0, float(W - 1), float(H - 1)),
    "thin at the top": (300.0, 0.0, float(W - 1), 6.0),
}


@pytest.mark.parametrize("where", list(EDGE_BOXES))
def test_a_box_label_at_an_edge_is_whole_inside_the_view_on_a_dark_background(
    where: str, reference: np.ndarray
) -> None:
    box = EDGE_BOXES[where]
    point = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    image = _render([Finding(SCORE, point, box)])
    (x0, y0, x1, y1), patch = _label(image)
    assert 0 <= x0 <= x1 < W and 0 <= y0 <= y1 < H
    # Whole: the same rectangle and the same letters as in the middle of the view, so no
    # digit is cut off by the image border ("0.77" must not read ".77").
    assert patch.shape == reference.shape, (where, patch.shape, reference.shape)
    assert np.array_equal(patch, reference), where
    # Legible on a white view: where the label is, the plain view is white; the label puts a
    # dark background there, with light letters that do not touch its border.
    plain = _render([])
    assert (plain[y0:y1 + 1, x0:x1 + 1] == 255).all()
    luminance = patch.astype(np.float32).mean(axis=2)
    assert np.median(luminance) < 40
    assert (luminance > 200).sum() >= 20  # the letters
    border = np.concatenate([luminance[0], luminance[-1], luminance[:, 0], luminance[:, -1]])
    assert border.max() < 40


@pytest.mark.parametrize("point", [(W - 2.0, 1.0), (1.0, 1.0), (W - 2.0, H - 2.0), (1.0, H - 2.0)])
def test_a_point_label_in_a_corner_is_whole_inside_the_view(
    point: tuple[float, float], reference: np.ndarray
) -> None:
    (x0, y0, x1, y1), patch = _label(_render([Finding(SCORE, point, None)]))
    assert 0 <= x0 <= x1 < W and 0 <= y0 <= y1 < H
    assert np.array_equal(patch, reference)


def test_the_label_covers_the_heatmap_under_it(reference: np.ndarray) -> None:
    display = np.full((H, W), 128, np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    heat = np.exp(-((xx - 40) ** 2 + (yy - 20) ** 2) / (2 * 60.0**2)).astype(np.float32)
    out = render_overlay(display, heat, [Finding(SCORE, (40.0, 20.0), _box(0, 0))], ["b"])
    _, patch = _label(out[out.shape[0] - H:])
    assert np.array_equal(patch, reference)


# ---------------------------------------------------------------- compressed SC

ALGORITHM = AlgorithmInfo(name="demo-global-pool", version="0.3.1", notice="test",
                          synthetic_demo=True)


@pytest.fixture(scope="module")
def hip_study(tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    """A synthetic 2048 x 2048 hip film with a heatmap blob and a box, as the demo model
    would report it."""
    root = tmp_path_factory.mktemp("synth-2048")
    generate_dataset(root, studies=1, seed=5, size=2048)
    source = pydicom.dcmread(root / read_manifest(root)[0]["path"])
    rows, cols = int(source.Rows), int(source.Columns)
    yy, xx = np.mgrid[0:rows, 0:cols]
    cx, cy, sigma = cols * 0.5, rows * 0.45, rows * 0.08
    heat = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)).astype(np.float32)
    box = (cols * 0.4, rows * 0.35, cols * 0.6, rows * 0.55)
    prediction = ViewPrediction({"normal": 0.2, "fracture": 0.8}, 0.8, heat,
                                (Finding(SCORE, (cx, cy), box),))
    view = ViewResult(source, prediction, "HIP")
    return StudyResult(0.8, True, "max", 0.5, {"HIP": 0.8}, [view], [])


@pytest.fixture(scope="module")
def uncompressed(hip_study: StudyResult) -> pydicom.Dataset:
    (sc,) = build_secondary_captures(hip_study, ALGORITHM, job_key="job-size",
                                     transfer_syntax_uid=ExplicitVRLittleEndian)
    return pydicom.dcmread(io.BytesIO(_to_bytes(sc)))


def _to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dciodvfy(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    assert dciodvfy_errors(path) == []


# RLE Lossless (the default, rendered by every PACS) and lossless JPEG 2000: the largest
# share of the uncompressed size each may take on this view (measured: ~0.70 and ~0.19).
# JPEG 2000 (the default) must meet the target of 40%; RLE is a regression guard.
SIZE_RATIO_AT_MOST = {RLELossless: 0.75, JPEG2000Lossless: 0.40}


@pytest.mark.parametrize("syntax", list(SIZE_RATIO_AT_MOST))
def test_sc_is_compressed_losslessly_and_stays_valid(
    syntax: str, hip_study: StudyResult, uncompressed: pydicom.Dataset, tmp_path: Path
) -> None:
    kwargs = {"transfer_syntax_uid": syntax}
    (sc,) = build_secondary_captures(hip_study, ALGORITHM, job_key="job-size", **kwargs)
    data = _to_bytes(sc)
    raw = uncompressed.pixel_array
    assert raw.shape == (uncompressed.Rows, uncompressed.Columns, 3) and raw.nbytes > 10e6
    ratio = len(data) / len(_to_bytes(uncompressed))
    print(f"\n{pydicom.uid.UID(syntax).name}: SC of a {raw.shape[1]}x{raw.shape[0]} RGB view "
          f"with heatmap: {len(data) / 1e6:.2f} MB, {ratio:.3f} of uncompressed "
          f"({len(_to_bytes(uncompressed)) / 1e6:.2f} MB)")
    assert ratio <= SIZE_RATIO_AT_MOST[syntax]
    _dciodvfy(data, tmp_path / "sc.dcm")

    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.PhotometricInterpretation == SC_TRANSFER_SYNTAXES[syntax]
    assert (back.SamplesPerPixel, back.BitsAllocated) == (3, 8)
    assert np.array_equal(back.pixel_array, raw)  # lossless, decoded to RGB
    image = hd.imread(io.BytesIO(data))
    assert np.array_equal(image.get_frame(1), raw)
    assert back.SOPInstanceUID == uncompressed.SOPInstanceUID


def test_sc_transfer_syntax_is_checked(hip_study: StudyResult) -> None:
    with pytest.raises(ValueError, match="transfer_syntax_uid"):
        build_secondary_captures(hip_study, ALGORITHM, job_key="job-size",
                                 transfer_syntax_uid="1.2.840.10008.1.2.4.50")
