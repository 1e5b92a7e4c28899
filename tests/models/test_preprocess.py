"""Behavioural tests of models.preprocess (seed 004 §4.2, §6.2.2.1) on real and synthetic images."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from models.preprocess import (
    Affine2D,
    ImageTooLargeError,
    PreprocessError,
    align_rotation,
    apply_window,
    corner_mean,
    looks_inverted,
    normalise_body_part,
    pad_resize,
    pixels_from_dataset,
    prepare_array,
    prepare_view,
    principal_angle,
    resize,
    split_anatomy,
    to_bone_bright,
    warp_to_original,
)
from models.preprocess._image import otsu_mask

# RG3: 1760x1760 CR of a lower leg, MONOCHROME1, collimated (Border Density WHITE). Boxes in
# its stored grid: tibial shaft, direct exposure (air) left of the leg, the exposed field.
TIBIA_BOX = [850, 300, 900, 400]
AIR_BOX = [500, 300, 560, 400]
FIELD_COLUMNS = slice(480, 1220)


def _read(name: str) -> Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom-data file {name} not available: `make test` installs pydicom-data")
    return pydicom.dcmread(path)


def _box_mean(img: np.ndarray, transform: Affine2D, box: list[float]) -> float:
    x0, y0, x1, y1 = np.round(transform.apply_box(box)).astype(int)
    return float(img[y0 : y1 + 1, x0 : x1 + 1].mean())


def _gaussian(shape: tuple[int, int], x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2.0 * sigma**2)).astype(np.float32)


def _ellipse(
    shape: tuple[int, int], centre: tuple[float, float], axes: tuple[int, int], angle: float
) -> np.ndarray:
    """Filled ellipse mask; ``angle`` of the first axis in degrees from +x towards +y."""
    img = np.zeros(shape, dtype=np.uint8)
    cx, cy = centre
    cv2.ellipse(img, (int(cx), int(cy)), axes, angle, 0, 360, 1, thickness=-1)
    return img.astype(np.float32)


def _peak(img: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Sub-pixel (x, y) of an isolated bright feature: centroid of (img - floor)+."""
    weights = np.clip(img.astype(np.float64) - floor, 0.0, None)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    return np.array([(xx * weights).sum(), (yy * weights).sum()]) / weights.sum()


def _pca_angle(img: np.ndarray) -> float:
    pca = principal_angle(otsu_mask(img))
    assert pca is not None
    return pca[0]


# -- DICOM: decoding, window, polarity --------------------------------------------------------


def test_rg3_uncompressed_and_jpeg2000_preprocess_identically_with_bone_bright() -> None:
    raw, j2k = _read("RG3_UNCR.dcm"), _read("RG3_J2KR.dcm")
    assert j2k.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    np.testing.assert_array_equal(pixels_from_dataset(raw), pixels_from_dataset(j2k))

    a, b = prepare_view(raw, size=512), prepare_view(j2k, size=512)
    assert a.image.shape == (512, 512) and a.image.dtype == np.float32
    assert float(np.abs(a.image - b.image).max()) < 1e-6
    assert a.inversion == "tag" and a.body_part == "EXTREMITY"
    assert a.original_shape == (1760, 1760)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0

    # Bone bright, direct exposure dark (MONOCHROME1 was inverted).
    tibia = _box_mean(a.image, a.transform, TIBIA_BOX)
    air = _box_mean(a.image, a.transform, AIR_BOX)
    assert tibia > 0.6 and air < 0.15
    # Inside the exposed field the Otsu foreground (anatomy) is brighter than the background,
    # the tibia lies in it and the field's corners are dark.
    full = to_bone_bright(apply_window(pixels_from_dataset(raw), raw), "MONOCHROME1")
    field = full[:, FIELD_COLUMNS]
    mask = otsu_mask(field).astype(bool)
    assert field[mask].mean() > field[~mask].mean() + 0.3
    assert mask[350, 875 - FIELD_COLUMNS.start]
    assert corner_mean(field) < 0.25
    # The full image's corners are the collimated border, white in a correct rendering
    # (Border Density WHITE): the seed's corner heuristic cannot be used on it (fig. 6.5b).
    assert corner_mean(full) > 0.9


def _field_dataset(pixels: np.ndarray, photometric: str) -> Dataset:
    ds = _read("RG3_UNCR.dcm")
    ds.set_pixel_data(np.ascontiguousarray(pixels, dtype=np.uint16), photometric, 10)
    return ds


def test_corner_heuristic_fixes_a_mislabelled_monochrome2_image_only() -> None:
    stored = _read("RG3_UNCR.dcm").pixel_array[:, FIELD_COLUMNS]  # bone dark values
    reference = prepare_view(_field_dataset(stored, "MONOCHROME1"), size=256)
    assert reference.inversion == "tag"

    # RG3 inverted by hand (still bone dark) but labelled MONOCHROME2.
    mislabelled = _field_dataset(stored, "MONOCHROME2")
    window = apply_window(pixels_from_dataset(mislabelled), mislabelled)
    assert looks_inverted(window)
    fixed = prepare_view(mislabelled, size=256)
    assert fixed.inversion == "heuristic"
    np.testing.assert_allclose(fixed.image, reference.image, atol=1e-6)
    assert _box_mean(fixed.image, fixed.transform, [370, 300, 420, 400]) > 0.6  # tibia
    untouched = prepare_view(mislabelled, size=256, heuristic_inversion=False)
    assert untouched.inversion == "none"
    x0, _, x1, _ = np.round(untouched.transform.apply_box([0, 0, 739, 1759])).astype(int)
    np.testing.assert_allclose(  # inside the content; the zero padding is not inverted
        untouched.image[:, x0 : x1 + 1], 1.0 - reference.image[:, x0 : x1 + 1], atol=1e-6
    )
    assert untouched.image[:, : x0 - 1].max() == 0.0

    # Correctly labelled bone-bright MONOCHROME2: left alone.
    correct = _field_dataset(1023 - stored, "MONOCHROME2")
    del correct.WindowCenter, correct.WindowWidth
    view = prepare_view(correct, size=256)
    assert view.inversion == "none"
    assert not looks_inverted(apply_window(pixels_from_dataset(correct), correct))
    assert _box_mean(view.image, view.transform, [370, 300, 420, 400]) > 0.6


def test_apply_window_sources_and_bone_bright() -> None:
    values = np.arange(0, 1000, dtype=np.float32).reshape(20, 50)
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth = 500.5, 201  # LINEAR: 400..600 -> 0..1
    win = apply_window(values, ds)
    assert win.dtype == np.float32 and win.min() == 0.0 and win.max() == 1.0
    assert win.flat[400] == 0.0 and win.flat[600] == 1.0 and abs(win.flat[500] - 0.5) < 0.01
    explicit = apply_window(values, ds, center=100.5, width=101)
    assert explicit.flat[49] == 0.0 and explicit.flat[151] == 1.0
    robust = apply_window(values)  # 0.5 / 99.5 percentiles
    assert robust.flat[0] == 0.0 and robust.flat[-1] == 1.0 and 0.45 < robust.flat[500] < 0.55
    assert not apply_window(np.full((4, 4), 7.0)).any()

    lut = Dataset()
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = [4000 - 10 * i for i in range(256)]  # decreasing VOI LUT
    lut.VOILUTSequence = [item]
    out = apply_window(np.array([[0, 255, 1000]], dtype=np.float32), lut)
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0]], atol=1e-6)

    with pytest.raises(ValueError):
        apply_window(values, center=1.0)
    img = np.array([[0.0, 0.25], [0.75, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(to_bone_bright(img, "MONOCHROME1"), 1.0 - img)
    np.testing.assert_allclose(to_bone_bright(img, "monochrome2 "), img)
    with pytest.raises(ValueError):
        to_bone_bright(img, "RGB")


def test_decompression_bomb_cap_and_undecodable_datasets_raise_preprocess_error() -> None:
    ds = _read("RG3_UNCR.dcm")
    with pytest.raises(ImageTooLargeError) as info:
        pixels_from_dataset(ds, max_pixels=1760 * 1760 - 1)
    assert isinstance(info.value, PreprocessError) and isinstance(info.value, ValueError)

    bomb = _read("RG3_J2KR.dcm")
    bomb.Rows = bomb.Columns = 65535  # ~4.3 gigapixels declared: refused before decoding
    with pytest.raises(ImageTooLargeError):
        prepare_view(bomb)

    no_pixels = _read("RG3_UNCR.dcm")
    del no_pixels.PixelData
    with pytest.raises(PreprocessError, match="no pixel data"):
        prepare_view(no_pixels)

    corrupt = _read("RG3_J2KR.dcm")
    frame = next(generate_frames(corrupt.PixelData, number_of_frames=1))
    corrupt.PixelData = encapsulate([frame[: len(frame) // 3]])
    with pytest.raises(PreprocessError, match="could not decode") as info:
        prepare_view(corrupt)
    message = str(info.value)
    assert str(corrupt.PatientName) not in message and str(corrupt.PatientID) not in message

    colour = _read("RG3_UNCR.dcm")
    colour.PhotometricInterpretation = "RGB"
    with pytest.raises(PreprocessError):
        pixels_from_dataset(colour)
    with pytest.raises(TypeError):
        pixels_from_dataset("not a dataset")  # type: ignore[arg-type]


# -- body part ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Muñeca", "WRIST"),
        ("POIGNET", "WRIST"),
        ("Handgelenk", "WRIST"),
        ("WIRST", "WRIST"),
        ("WRST", "WRIST"),
        ("wrist rt", "WRIST"),
        ("LT_WRIST", "WRIST"),
        ("canell esquerre", "WRIST"),
        ("polso dx", "WRIST"),
        ("HIP JOINT", "HIP"),
        ("Hüfte", "HIP"),
        ("HÜFTE LINKS", "HIP"),
        ("cadera", "HIP"),
        ("HIPP", "HIP"),
        ("Hanche droite", "HIP"),
        ("PELVIS", "PELVIS"),
        ("PELVSI", "PELVIS"),
        ("Becken", "PELVIS"),
        ("pelvis/hip", "PELVIS"),
        ("avant-bras", "FOREARM"),
        ("Mão", "HAND"),
        ("codo izq", "ELBOW"),
        ("Knie", "KNEE"),
        ("tornozelo", "ANKLE"),
        ("Schulter", "SHOULDER"),
        ("Thorax PA", "CHEST"),
        ("Oberschenkel", "FEMUR"),
        ("L-SPINE", "LSPINE"),
        ("EXTREMITY", "EXTREMITY"),
        ("", "UNKNOWN"),
        ("  --  ", "UNKNOWN"),
        (None, "UNKNOWN"),
        ("zzz", "UNKNOWN"),
        ("RIGHT", "UNKNOWN"),
    ],
)
def test_normalise_body_part(text: str | None, expected: str) -> None:
    assert normalise_body_part(text) == expected


def test_normalise_body_part_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        normalise_body_part(42)  # type: ignore[arg-type]


# -- geometry -------------------------------------------------------------------------------


def test_affine2d_algebra_and_validation() -> None:
    a = Affine2D.scaling(2.0, 3.0).then(Affine2D.translation(1.0, -1.0))
    np.testing.assert_allclose(a.apply([[1.0, 1.0], [0.0, 0.0]]), [[3.0, 2.0], [1.0, -1.0]])
    np.testing.assert_allclose(a.apply([1.0, 1.0]), [3.0, 2.0])
    assert a.then(a.inverse()).allclose(Affine2D.identity())
    np.testing.assert_allclose(a.apply_box([0, 0, 1, 1]), [1.0, -1.0, 3.0, 2.0])
    rot = Affine2D(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(rot.apply_box([0, 0, 2, 1]), [-1.0, 0.0, 0.0, 2.0])
    with pytest.raises(ValueError):
        Affine2D(np.eye(2))
    with pytest.raises(ValueError):
        Affine2D(np.array([[1.0, 0, 0], [0, 1, 0], [1, 0, 1]]))
    with pytest.raises(ValueError):
        Affine2D(np.diag([0.0, 1.0, 1.0])).inverse()
    with pytest.raises(ValueError):
        a.matrix[0, 0] = 5.0  # read-only


@pytest.mark.parametrize("dst", [(150, 97), (20, 33), (64, 80), (31, 200)])
def test_resize_transform_is_exact_at_subpixel_level(dst: tuple[int, int]) -> None:
    src_xy = (37.3, 21.7)
    img = _gaussian((64, 80), *src_xy, sigma=4.0)
    out, transform = resize(img, dst)
    assert out.shape == dst
    expected = transform.apply(src_xy)
    measured = _peak(out)
    assert np.abs(measured - expected).max() < 0.05
    sx, sy = dst[1] / 80, dst[0] / 64
    naive = np.array([src_xy[0] * sx, src_xy[1] * sy])
    if (sx, sy) != (1.0, 1.0):  # the test can tell the half-pixel convention from x * s
        assert np.abs(naive - expected).max() > 0.1


@pytest.mark.parametrize(("shape", "size"), [((64, 80), (100, 100)), ((90, 40), (50, 70))])
def test_pad_resize_preserves_aspect_and_maps_exactly(
    shape: tuple[int, int], size: tuple[int, int]
) -> None:
    src_xy = (shape[1] * 0.43, shape[0] * 0.61)
    img = _gaussian(shape, *src_xy, sigma=4.0)
    out, transform = pad_resize(img + 0.1, size)
    assert out.shape == size
    m = transform.matrix
    assert math.isclose(m[0, 0], m[1, 1], rel_tol=0.03)  # aspect kept (up to rounding)
    content = transform.apply_box([-0.5, -0.5, shape[1] - 0.5, shape[0] - 0.5])
    x0, y0, x1, y1 = content
    assert (x0 >= -0.5 and y0 >= -0.5) and (x1 <= size[1] - 0.5 and y1 <= size[0] - 0.5)
    assert min(x0 + 0.5, y0 + 0.5, size[1] - 0.5 - x1, size[0] - 0.5 - y1) < 1e-6
    assert abs((x0 + 0.5) - (size[1] - 0.5 - x1)) <= 1.0  # centred
    assert abs((y0 + 0.5) - (size[0] - 0.5 - y1)) <= 1.0
    assert out[0, 0] == 0.0 or out[-1, -1] == 0.0  # zero padding
    measured = _peak(out, floor=0.1)
    assert np.abs(measured - transform.apply(src_xy)).max() < 0.05


def test_split_anatomy_returns_parts_left_to_right_ignoring_noise() -> None:
    rng = np.random.default_rng(0)
    shape = (200, 300)
    img = 0.05 * rng.random(shape, dtype=np.float32)
    img += 0.8 * _ellipse(shape, (230, 110), (25, 70), 80)  # right part first in the array
    img += 0.7 * _ellipse(shape, (70, 90), (20, 60), 100)
    for x, y in [(150, 20), (10, 190), (290, 5), (150, 180)]:
        img[y : y + 3, x : x + 3] = 0.9  # markers / noise
    parts = split_anatomy(img, min_area_fraction=0.02)
    assert len(parts) == 2
    (left, t_left), (right, t_right) = parts
    for crop, transform, centre in [(left, t_left, (70, 90)), (right, t_right, (230, 110))]:
        x0, y0 = -transform.matrix[0, 2], -transform.matrix[1, 2]
        np.testing.assert_array_equal(
            crop, img[int(y0) : int(y0) + crop.shape[0], int(x0) : int(x0) + crop.shape[1]]
        )
        cx, cy = np.round(transform.apply(centre)).astype(int)
        assert 0 <= cx < crop.shape[1] and 0 <= cy < crop.shape[0]
        assert crop[cy, cx] > 0.6
    assert t_left.apply([70, 90])[0] < 70 and -t_left.matrix[0, 2] < -t_right.matrix[0, 2]
    padded = split_anatomy(img, margin=5)
    assert padded[0][0].shape[1] == left.shape[1] + 10
    blank = split_anatomy(np.zeros((10, 12), dtype=np.float32))
    assert len(blank) == 1 and blank[0][1].allclose(Affine2D.identity())


@pytest.mark.parametrize("angle", [35.0, -60.0, 10.0, 89.0])
def test_align_rotation_makes_an_elongated_ellipse_vertical(angle: float) -> None:
    img = 0.8 * _ellipse((220, 260), (130, 110), (90, 22), angle)
    out, transform = align_rotation(img)
    assert abs(_pca_angle(out) - 90.0) < 2.0
    assert math.isclose(float(out.sum()), float(img.sum()), rel_tol=0.02)  # nothing cut
    h, w = img.shape
    corners = transform.apply([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]])
    assert corners.min() >= -0.5 - 1e-6
    assert corners[:, 0].max() <= out.shape[1] - 0.5 + 1e-6
    assert corners[:, 1].max() <= out.shape[0] - 0.5 + 1e-6
    # The rotation is the smallest one: |theta| <= 90 degrees.
    theta = math.degrees(math.atan2(transform.matrix[1, 0], transform.matrix[0, 0]))
    assert abs(theta) <= 90.0 + 1e-6
    disc = _ellipse((100, 100), (50, 50), (30, 30), 0)
    same, identity = align_rotation(disc)
    assert identity.allclose(Affine2D.identity()) and np.array_equal(same, disc)


def _chain_image() -> tuple[np.ndarray, np.ndarray]:
    shape = (240, 320)
    dot = np.array([190.4, 101.7])
    img = 0.5 * _ellipse(shape, (170, 120), (110, 30), 25)
    img = np.maximum(img, _gaussian(shape, *dot, sigma=4.0))
    return img, dot


def test_points_and_pixels_agree_through_the_whole_geometric_chain() -> None:
    img, dot = _chain_image()
    rotated, t_rot = align_rotation(img)
    theta = math.degrees(math.atan2(t_rot.matrix[1, 0], t_rot.matrix[0, 0]))
    assert abs(theta) > 30.0  # a non-trivial rotation
    parts = split_anatomy(rotated)
    assert len(parts) == 1
    crop, t_crop = parts[0]
    padded, t_pad = pad_resize(crop, (96, 128))
    final, t_res = resize(padded, (160, 150))
    chain = t_rot.then(t_crop).then(t_pad).then(t_res)

    current = dot
    for image, step in [(rotated, t_rot), (crop, t_crop), (padded, t_pad), (final, t_res)]:
        current = step.apply(current)
        assert np.abs(_peak(image, floor=0.5) - current).max() < 0.25  # brief: 1 px
    np.testing.assert_allclose(chain.apply(dot), current, atol=1e-9)
    # Back: the dot found in the final image maps onto the original dot.
    back = chain.inverse().apply(_peak(final, floor=0.5))
    assert np.abs(back - dot).max() < 0.5

    view = prepare_array(img, size=(96, 128), mode="pad", align=True, body_part="wrist")
    assert view.body_part == "WRIST" and view.image.shape == (96, 128)
    assert np.abs(view.to_original(_peak(view.image, floor=0.5)) - dot).max() < 1.0
    plain = prepare_array(img, size=(96, 128), mode="resize")
    assert plain.transform.allclose(resize(img, (96, 128))[1])


def test_warp_to_original_puts_a_heatmap_peak_back_on_the_original_point() -> None:
    img, dot = _chain_image()
    view = prepare_array(img, size=(128, 96), mode="pad", align=True)
    target = view.transform.apply(dot)
    heatmap = _gaussian(view.image.shape, *target, sigma=2.0)
    back = warp_to_original(heatmap, view.transform, view.original_shape)
    assert back.shape == img.shape and back.dtype == np.float32
    assert np.abs(_peak(back) - dot).max() < 0.1
    assert back[0, 0] == 0.0  # zero outside the model input
    with pytest.raises(TypeError):
        warp_to_original(heatmap, np.eye(3), img.shape)  # type: ignore[arg-type]


def test_input_validation() -> None:
    with pytest.raises(ValueError):
        resize(np.zeros((3, 3, 3)), 8)
    with pytest.raises(ValueError):
        pad_resize(np.zeros((4, 4)), (0, 8))
    with pytest.raises(TypeError):
        resize(np.zeros((4, 4)), "8")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        align_rotation(np.full((4, 4), np.nan))
    with pytest.raises(ValueError):
        prepare_array(np.zeros((8, 8)), mode="crop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split_anatomy(np.zeros((8, 8)), min_area_fraction=1.5)
