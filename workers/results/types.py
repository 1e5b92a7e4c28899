"""What the result writers are given: the algorithm and the study result with its views."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from models.registry import ViewPrediction

if TYPE_CHECKING:
    from models.registry import FractureModel

__all__ = ["AlgorithmInfo", "SkippedView", "StudyResult", "ViewResult"]


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _check_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced a result, as the outputs name it.

    ``notice`` is the sentence every output must carry (the model's intended use, or the
    synthetic-data warning); ``synthetic_demo`` marks every output not for diagnostic use.
    """

    name: str
    version: str
    manufacturer: str = "pacs-node"
    notice: str = ""
    synthetic_demo: bool = False

    def __post_init__(self) -> None:
        _check_text("name", self.name)
        _check_text("version", self.version)
        _check_text("manufacturer", self.manufacturer)
        if not isinstance(self.notice, str):
            raise TypeError(f"notice must be a str, got {type(self.notice).__name__}")
        if not isinstance(self.synthetic_demo, bool):
            raise TypeError(f"synthetic_demo must be a bool, got {self.synthetic_demo!r}")

    @classmethod
    def from_model(cls, model: FractureModel, *, manufacturer: str = "pacs-node") -> AlgorithmInfo:
        """The description of a loaded :class:`~models.registry.FractureModel`."""
        meta = model.metadata
        return cls(
            name=meta.name,
            version=meta.version,
            manufacturer=manufacturer,
            notice=model.notice,
            synthetic_demo=meta.synthetic_demo,
        )


@dataclass(frozen=True)
class ViewResult:
    """One processed view: its source dataset, the model's prediction and its site label.

    ``site`` is the aggregation's site label, e.g. ``"WRIST R"`` (normalised body part,
    then laterality). The heatmap must lie on the source's pixel grid (Rows x Columns).
    """

    source: pydicom.Dataset
    prediction: ViewPrediction
    site: str

    def __post_init__(self) -> None:
        if not isinstance(self.source, pydicom.Dataset):
            raise TypeError(f"source must be a pydicom Dataset, got {type(self.source).__name__}")
        if not isinstance(self.prediction, ViewPrediction):
            raise TypeError(
                f"prediction must be a ViewPrediction, got {type(self.prediction).__name__}"
            )
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if not self.source.get(keyword):
                raise ValueError(f"source dataset has no {keyword}")
        if not isinstance(self.site, str):
            raise TypeError(f"site must be a str, got {type(self.site).__name__}")
        if not self.prediction.analysed:
            if self.prediction.heatmap is not None or self.prediction.findings:
                raise ValueError("a view that was not analysed has no heatmap or findings")
            return
        assert self.prediction.fracture_probability is not None
        _check_probability("fracture_probability", self.prediction.fracture_probability)
        heatmap = np.asarray(self.prediction.heatmap)
        shape = (int(self.source.get("Rows", 0) or 0), int(self.source.get("Columns", 0) or 0))
        if heatmap.shape != shape:
            raise ValueError(f"heatmap shape {heatmap.shape} does not match the source {shape}")
        for finding in self.prediction.findings:
            _check_probability("finding score", finding.score)

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)

    @property
    def analysed(self) -> bool:
        return self.prediction.analysed


@dataclass(frozen=True)
class SkippedView:
    """A received view the study result was not computed from, and why."""

    sop_instance_uid: str
    reason: str

    def __post_init__(self) -> None:
        _check_text("sop_instance_uid", self.sop_instance_uid)
        if not isinstance(self.reason, str):
            raise TypeError(f"reason must be a str, got {type(self.reason).__name__}")


@dataclass(frozen=True)
class StudyResult:
    """The aggregated result of one study and the views the model was given.

    ``views`` holds every view the model looked at, analysed or not (a view outside its
    training domain has no probability); the probability aggregates the analysed ones. A
    study with no analysed view has ``fracture_probability`` and ``positive`` None and
    says why in ``reason``.
    """

    fracture_probability: float | None
    positive: bool | None
    aggregation: str
    threshold: float
    site_probabilities: dict[str, float] = field(default_factory=dict)
    views: list[ViewResult] = field(default_factory=list)
    skipped: list[SkippedView] = field(default_factory=list)
    reason: str = ""

    @property
    def analysed(self) -> bool:
        return self.fracture_probability is not None

    @property
    def views_analysed(self) -> int:
        return sum(v.analysed for v in self.views)

    def __post_init__(self) -> None:
        _check_probability("threshold", self.threshold)
        if self.fracture_probability is None or self.positive is None:
            if self.fracture_probability is not None or self.positive is not None:
                raise ValueError("a result has both a probability and a verdict, or neither")
            _check_text("reason", self.reason)
            if any(v.analysed for v in self.views):
                raise ValueError("a study with an analysed view has a probability")
        else:
            _check_probability("fracture_probability", self.fracture_probability)
            if not isinstance(self.positive, bool):
                raise TypeError(f"positive must be a bool, got {self.positive!r}")
        _check_text("aggregation", self.aggregation)
        for site, p in self.site_probabilities.items():
            _check_probability(f"site probability of {site!r}", p)
        studies = {str(v.source.StudyInstanceUID) for v in self.views}
        if len(studies) > 1:
            raise ValueError(f"views belong to {len(studies)} different studies")
        uids = [v.sop_instance_uid for v in self.views]
        if len(set(uids)) != len(uids):
            raise ValueError("the same SOP Instance UID appears in more than one view")
