"""2-D affine transforms between pixel grids.

Coordinates are (x, y) = (column, row) with the centre of the top-left pixel at (0, 0), the
convention of ``cv2.warpAffine``. Every geometric step of the preprocessing returns an
:class:`Affine2D` mapping its input grid to its output grid, so model outputs can be mapped
back onto the stored pixel grid of the DICOM file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Affine2D"]


@dataclass(frozen=True, eq=False)
class Affine2D:
    """A 3x3 homogeneous matrix mapping source (x, y, 1) to destination coordinates.

    The matrix is copied to a read-only float64 array; its last row must be ``[0, 0, 1]``.
    """

    matrix: np.ndarray

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64, copy=True)
        if m.shape != (3, 3):
            raise ValueError(f"Affine2D matrix must have shape (3, 3), got {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("Affine2D matrix must be finite")
        if not np.allclose(m[2], (0.0, 0.0, 1.0), rtol=0.0, atol=1e-12):
            raise ValueError(f"Affine2D matrix last row must be [0, 0, 1], got {m[2].tolist()}")
        m[2] = (0.0, 0.0, 1.0)
        m.flags.writeable = False
        object.__setattr__(self, "matrix", m)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def identity(cls) -> Affine2D:
        """The identity transform."""
        return cls(np.eye(3))

    @classmethod
    def translation(cls, tx: float, ty: float) -> Affine2D:
        """``(x, y) -> (x + tx, y + ty)``."""
        return cls(np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]))

    @classmethod
    def scaling(cls, sx: float, sy: float | None = None) -> Affine2D:
        """``(x, y) -> (sx * x, sy * y)`` about the origin (``sy`` defaults to ``sx``)."""
        sy = sx if sy is None else sy
        return cls(np.diag([float(sx), float(sy), 1.0]))

    @classmethod
    def from_cv2(cls, m: ArrayLike) -> Affine2D:
        """From the 2x3 forward matrix used by ``cv2.warpAffine``."""
        arr = np.asarray(m, dtype=np.float64)
        if arr.shape != (2, 3):
            raise ValueError(f"expected a 2x3 matrix, got shape {arr.shape}")
        return cls(np.vstack([arr, (0.0, 0.0, 1.0)]))

    # -- operations -------------------------------------------------------------------------
    def to_cv2(self) -> np.ndarray:
        """The 2x3 forward matrix for ``cv2.warpAffine`` (source -> destination)."""
        return np.array(self.matrix[:2], dtype=np.float64)

    def apply(self, points: ArrayLike) -> np.ndarray:
        """Map points of shape (N, 2) (or a single point of shape (2,)) to the destination."""
        pts = np.asarray(points, dtype=np.float64)
        single = pts.ndim == 1
        pts2 = np.atleast_2d(pts)
        if pts2.ndim != 2 or pts2.shape[1] != 2:
            raise ValueError(f"points must have shape (N, 2) or (2,), got {pts.shape}")
        out = pts2 @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        return out[0] if single else out

    def apply_box(self, box: Sequence[float] | np.ndarray) -> np.ndarray:
        """The axis-aligned box ``[x0, y0, x1, y1]`` enclosing the 4 mapped corners."""
        b = np.asarray(box, dtype=np.float64)
        if b.shape != (4,):
            raise ValueError(f"box must be [x0, y0, x1, y1], got shape {b.shape}")
        x0, y0, x1, y1 = b
        corners = self.apply([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        return np.concatenate([corners.min(axis=0), corners.max(axis=0)])

    def inverse(self) -> Affine2D:
        """The inverse transform (destination -> source); ValueError if singular."""
        det = float(np.linalg.det(self.matrix[:2, :2]))
        if abs(det) < 1e-12:
            raise ValueError("Affine2D is singular and cannot be inverted")
        return Affine2D(np.linalg.inv(self.matrix))

    def then(self, other: Affine2D) -> Affine2D:
        """Composition: apply ``self`` first, then ``other``."""
        if not isinstance(other, Affine2D):
            raise TypeError(f"expected Affine2D, got {type(other).__name__}")
        return Affine2D(other.matrix @ self.matrix)

    def allclose(self, other: Affine2D, *, atol: float = 1e-9) -> bool:
        """Whether both matrices agree within ``atol``."""
        return bool(np.allclose(self.matrix, other.matrix, rtol=0.0, atol=atol))

    def __repr__(self) -> str:
        rows = ", ".join(str([round(v, 6) for v in row]) for row in self.matrix[:2].tolist())
        return f"Affine2D([{rows}])"
