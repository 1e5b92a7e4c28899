"""Pixel values from DICOM: decoding, Modality LUT, VOI LUT / window, polarity (seed 004 §4.2.2.2).

Error messages never quote attribute values that could identify a patient; they name the
attribute or the transfer syntax only.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

from ._image import as_image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageTooLargeError",
    "PreprocessError",
    "apply_window",
    "looks_inverted",
    "pixels_from_dataset",
    "to_bone_bright",
]

#: Default cap on Rows * Columns * SamplesPerPixel * NumberOfFrames checked before decoding.
DEFAULT_MAX_PIXELS = 100_000_000

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class PreprocessError(ValueError):
    """A dataset cannot be turned into an image (no pixels, undecodable, unsupported)."""


class ImageTooLargeError(PreprocessError):
    """The declared image size exceeds the decompression-bomb cap."""


def _positive_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise PreprocessError(f"dataset has no {keyword}")
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise PreprocessError(f"{keyword} is not an integer") from exc
    if number <= 0:
        raise PreprocessError(f"{keyword} must be positive, got {number}")
    return number


def photometric_of(ds: Dataset) -> str:
    """The Photometric Interpretation, stripped and upper-cased ("" when absent)."""
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def pixels_from_dataset(ds: Dataset, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode the single monochrome frame of ``ds`` and apply its Modality LUT.

    Any transfer syntax pydicom decodes (with pylibjpeg / openjpeg / libjpeg plugins) works.
    Returns float32 of shape (Rows, Columns).
    Raises :class:`ImageTooLargeError` when Rows*Columns*SamplesPerPixel*NumberOfFrames
    exceeds ``max_pixels`` (checked before decoding) and :class:`PreprocessError` when there is
    no pixel data, the image is not a single MONOCHROME1/2 frame, or decoding fails.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"expected a pydicom Dataset, got {type(ds).__name__}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        raise PreprocessError("dataset has no pixel data")
    rows = _positive_int(ds, "Rows")
    cols = _positive_int(ds, "Columns")
    samples = _positive_int(ds, "SamplesPerPixel", 1)
    frames = _positive_int(ds, "NumberOfFrames", 1)
    declared = rows * cols * samples * frames
    if declared > max_pixels:
        raise ImageTooLargeError(
            f"declared image size {rows}x{cols}x{samples}x{frames} = {declared} samples "
            f"exceeds the cap of {max_pixels}"
        )
    photometric = photometric_of(ds)
    if samples != 1 or photometric not in _MONOCHROME:
        raise PreprocessError(
            f"expected a single-sample MONOCHROME1/MONOCHROME2 image, got "
            f"SamplesPerPixel={samples}, PhotometricInterpretation={photometric or 'absent'}"
        )
    if frames != 1:
        raise PreprocessError(f"expected a single frame, got NumberOfFrames={frames}")

    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "unknown")) if meta is not None else "unknown"
    try:
        stored = ds.pixel_array
        values = apply_modality_lut(stored, ds)
    except Exception as exc:  # decoders raise many types; callers need one
        raise PreprocessError(
            f"could not decode pixel data (transfer syntax {syntax}): {type(exc).__name__}"
        ) from exc
    out = np.asarray(values, dtype=np.float32)
    if out.shape != (rows, cols):
        raise PreprocessError(f"decoded shape {out.shape} does not match ({rows}, {cols})")
    if not np.all(np.isfinite(out)):
        raise PreprocessError("decoded pixel data contains non-finite values")
    return out


def _window_dataset(center: float, width: float, function: str) -> Dataset:
    """A minimal VOI dataset whose windowing output range is exactly [0, 1].

    pydicom maps the window onto [0, 2**BitsStored - 1]; BitsStored = 1 gives [0, 1].
    """
    win = Dataset()
    win.PhotometricInterpretation = "MONOCHROME2"
    win.BitsStored = 1
    win.PixelRepresentation = 0
    win.WindowCenter = float(center)
    win.WindowWidth = float(width)
    win.VOILUTFunction = function
    return win


def _first(value: object) -> float:
    """First value of a possibly multi-valued DS element."""
    try:
        return float(value)  # type: ignore[arg-type]
    except TypeError:
        return float(value[0])  # type: ignore[index]


def _apply_voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    item = ds.VOILUTSequence[0]
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 2**16
    first = descriptor[1]
    # Integer input (the LUT indexes stored values); clip first so pydicom's uint arithmetic
    # cannot wrap for out-of-range values.
    iv = np.clip(np.rint(values), first, first + entries - 1).astype(np.int64)
    out = apply_voi(iv, ds, 0).astype(np.float64)
    lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0)
    lo, hi = float(lut.min()), float(lut.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return ((out - lo) / (hi - lo)).astype(np.float32)


def apply_window(
    values: ArrayLike,
    ds: Dataset | None = None,
    *,
    center: float | None = None,
    width: float | None = None,
) -> np.ndarray:
    """Map Modality-LUT output to float32 [0, 1] (higher = brighter on a MONOCHROME2 display).

    Precedence: explicit ``center``/``width`` (both or neither); the dataset's VOI LUT Sequence;
    its first Window Center/Width (VOI LUT Function honoured, LINEAR by default); else the
    0.5 / 99.5 percentiles. An explicit window of width < 1 uses LINEAR_EXACT (LINEAR is
    undefined there). Does not invert MONOCHROME1 (see :func:`to_bone_bright`).
    """
    arr = as_image(values, name="values")
    if (center is None) != (width is None):
        raise ValueError("center and width must be given together")
    try:
        if center is not None and width is not None:
            if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
                raise ValueError(f"window width must be positive and finite, got {width!r}")
            function = "LINEAR"
            if ds is not None and ds.get("VOILUTFunction"):
                function = str(ds.VOILUTFunction).strip().upper()
            if function == "LINEAR" and width < 1:
                function = "LINEAR_EXACT"
            out = apply_windowing(arr, _window_dataset(center, width, function))
            return np.clip(out, 0.0, 1.0).astype(np.float32)
        if ds is not None and ds.get("VOILUTSequence"):
            return np.clip(_apply_voi_lut_sequence(arr, ds), 0.0, 1.0)
        if ds is not None and ds.get("WindowCenter") is not None and ds.get("WindowWidth"):
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
            win = _window_dataset(_first(ds.WindowCenter), _first(ds.WindowWidth), function)
            out = apply_windowing(arr, win)
            return np.clip(out, 0.0, 1.0).astype(np.float32)
    except PreprocessError:
        raise
    except (ValueError, TypeError, IndexError, AttributeError, NotImplementedError) as exc:
        raise PreprocessError(f"invalid VOI LUT or window: {type(exc).__name__}") from exc
    lo, hi = np.percentile(arr, (0.5, 99.5))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def to_bone_bright(img01: ArrayLike, photometric: str) -> np.ndarray:
    """Bone-bright float32 image: ``1 - img`` for MONOCHROME1, unchanged for MONOCHROME2."""
    img = as_image(img01, name="img01")
    kind = str(photometric).strip().upper()
    if kind == "MONOCHROME1":
        return (1.0 - img).astype(np.float32)
    if kind == "MONOCHROME2":
        return img
    raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")


def corner_mean(img01: ArrayLike, *, corner_fraction: float = 0.1) -> float:
    """Seed 004 eq. 4.1a: mean of the four corner means (``corner_fraction`` of each side)."""
    img = as_image(img01, name="img01")
    if not 0.0 < corner_fraction <= 0.5:
        raise ValueError(f"corner_fraction must be in (0, 0.5], got {corner_fraction!r}")
    h, w = img.shape
    ch = max(1, int(round(h * corner_fraction)))
    cw = max(1, int(round(w * corner_fraction)))
    corners = (img[:ch, :cw], img[:ch, w - cw :], img[h - ch :, :cw], img[h - ch :, w - cw :])
    return float(np.mean([float(c.mean()) for c in corners]))


def looks_inverted(
    img01: ArrayLike, *, threshold: float = 100 / 255, corner_fraction: float = 0.1
) -> bool:
    """Seed 004 §4.2.2.2 eq. 4.1b: the corner mean is >= ``threshold`` (white background).

    A fallback for mislabelled images only: it is fooled by framed images whose borders are
    white (seed 004 fig. 6.5b; e.g. CR with Border Density WHITE collimation).
    """
    return corner_mean(img01, corner_fraction=corner_fraction) >= threshold
