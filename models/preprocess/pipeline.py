"""From a DICOM dataset (or a cached array) to a model input with its transform (seed 004 §4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydicom.dataset import Dataset

from ._image import as_image
from .affine import Affine2D
from .body_part import UNKNOWN, body_part_of, normalise_body_part
from .dicom import (
    DEFAULT_MAX_PIXELS,
    PreprocessError,
    apply_window,
    looks_inverted,
    photometric_of,
    pixels_from_dataset,
)
from .geometry import align_rotation, pad_resize, resize

__all__ = ["Inversion", "PreparedView", "ResizeMode", "prepare_array", "prepare_view"]

Inversion = Literal["tag", "heuristic", "none"]
ResizeMode = Literal["pad", "resize"]


@dataclass
class PreparedView:
    """A model-ready view.

    ``image``: float32 (H, W) in [0, 1], bone bright; ``transform``: original pixel grid ->
    ``image``; ``original_shape``: (rows, columns) of the original grid; ``inversion``: why the
    polarity was flipped ("tag" = MONOCHROME1, "heuristic" = seed 004 §4.2.2.2 fallback,
    "none"); ``body_part``: normalised body part (seed 004 §4.2.2.1, see
    :func:`~models.preprocess.body_part_of`); ``view_position``: the View Position ("AP",
    "LL", ... or "").
    """

    image: np.ndarray
    transform: Affine2D
    original_shape: tuple[int, int]
    inversion: Inversion
    body_part: str
    view_position: str = ""

    def to_original(self, points: ArrayLike) -> np.ndarray:
        """Map (N, 2) points on ``image`` back onto the original pixel grid."""
        return self.transform.inverse().apply(points)


def _geometry(
    img: np.ndarray, size: int | tuple[int, int], mode: str, align: bool
) -> tuple[np.ndarray, Affine2D]:
    if mode not in ("pad", "resize"):
        raise ValueError(f"mode must be 'pad' or 'resize', got {mode!r}")
    transform = Affine2D.identity()
    if align:
        img, step = align_rotation(img)
        transform = transform.then(step)
    img, step = (pad_resize if mode == "pad" else resize)(img, size)
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False), transform.then(step)


def prepare_array(
    img01: ArrayLike,
    *,
    size: int | tuple[int, int] = 256,
    mode: ResizeMode = "pad",
    align: bool = False,
    body_part: str | None = None,
) -> PreparedView:
    """Geometric steps only, for an already windowed, bone-bright array in [0, 1].

    Optional :func:`align_rotation`, then :func:`pad_resize` (``mode="pad"``, seed 004
    §6.2.2.1) or :func:`resize`. ``body_part`` is normalised (None -> "UNKNOWN").
    """
    img = as_image(img01, name="img01")
    out, transform = _geometry(img, size, mode, align)
    return PreparedView(
        image=out,
        transform=transform,
        original_shape=(int(img.shape[0]), int(img.shape[1])),
        inversion="none",
        body_part=normalise_body_part(body_part) if body_part is not None else UNKNOWN,
    )


def prepare_view(
    ds: Dataset,
    *,
    size: int | tuple[int, int] = 256,
    mode: ResizeMode = "pad",
    align: bool = False,
    heuristic_inversion: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedView:
    """Decode, window and make bone bright, then the geometric steps of :func:`prepare_array`.

    Polarity: MONOCHROME1 is inverted from the tag. A MONOCHROME2 image whose corners look
    white (seed 004 eq. 4.1) is inverted as a mislabelled image when ``heuristic_inversion``.
    Raises :class:`PreprocessError` (a ValueError) for a dataset that cannot be decoded.
    """
    values = pixels_from_dataset(ds, max_pixels=max_pixels)
    img = apply_window(values, ds)
    photometric = photometric_of(ds)
    inversion: Inversion = "none"
    if photometric == "MONOCHROME1":
        img = 1.0 - img
        inversion = "tag"
    elif photometric != "MONOCHROME2":  # pixels_from_dataset already refuses these
        raise PreprocessError(f"unsupported PhotometricInterpretation {photometric or 'absent'}")
    elif heuristic_inversion and looks_inverted(img):
        img = 1.0 - img
        inversion = "heuristic"
    out, transform = _geometry(img.astype(np.float32, copy=False), size, mode, align)
    return PreparedView(
        image=out,
        transform=transform,
        original_shape=(int(values.shape[0]), int(values.shape[1])),
        inversion=inversion,
        body_part=body_part_of(ds),
        view_position=str(ds.get("ViewPosition", "") or "").strip().upper(),
    )
