"""Common phantom record, view specifications and tissue constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ._scene import Group

ViewKind = Literal["AP", "LAT", "OBL"]

MU_SOFT = 0.022  # 1/mm, water-like soft tissue at ~50 keV effective energy
MU_CORTEX = 0.05  # 1/mm, cortical bone in excess of the soft tissue it displaces
MU_TRABECULAR = 0.011  # 1/mm, trabecular bone in excess of soft tissue


@dataclass(frozen=True)
class ViewSpec:
    """An anatomy-specific view before jitter: image axes in patient coordinates (LPS, mm).

    ``eu`` points along increasing column index, ``ev`` along increasing row index; the beam
    is ``eu x ev``. ``position`` is the DICOM View Position (empty for oblique views).
    """

    kind: ViewKind
    eu: np.ndarray
    ev: np.ndarray
    center: np.ndarray
    fov_mm: float
    position: str
    roll_deg: float = 0.0


@dataclass
class Phantom:
    """A posed 3D phantom: tissue groups plus the landmarks (points and directions, mirrored
    with the phantom) and size parameters that views and fractures refer to."""

    anatomy: Literal["hip", "wrist"]
    side: Literal["L", "R"]
    groups: list[Group]
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    roi_parts: tuple[tuple[str, str], ...] = ()
    params: dict[str, float] = field(default_factory=dict)  # sizes (mm, scale factors)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def mirror(self) -> Phantom:
        """The same phantom on the other side (reflection x -> -x)."""
        s = np.diag([-1.0, 1.0, 1.0])
        groups = [g.moved(s, np.zeros(3)) for g in self.groups]
        marks = {k: s @ v for k, v in self.landmarks.items()}
        side: Literal["L", "R"] = "L" if self.side == "R" else "R"
        return Phantom(self.anatomy, side, groups, marks, self.roi_parts, dict(self.params))


def unit(v: np.ndarray | list[float] | tuple[float, ...]) -> np.ndarray:
    """``v`` scaled to unit length."""
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)
