"""DICOM result writers: the study result as a Comprehensive 3D SR (TID 1500) and one
Secondary Capture heatmap overlay per view, in new series of the source study.

Every UID derives from the job key (:func:`result_uid`), so a retried job writes the same
objects again. Codes used are listed in :mod:`workers.results._codes`.
"""

from .overlay import display_image, render_overlay, resize_view
from .rejection import REJECTED_FOR_QUALITY_REASONS, build_rejection_note
from .sc import banner_lines, build_secondary_captures, study_verdict
from .sr import (
    as_percent,
    box_polyline,
    build_sr,
    machine_generated_statement,
    scoord_point,
    study_impression,
)
from .types import AlgorithmInfo, SkippedView, StudyResult, ViewResult
from .uids import IMPLEMENTATION_CLASS_UID, algorithm_device_uid, result_uid

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "REJECTED_FOR_QUALITY_REASONS",
    "AlgorithmInfo",
    "SkippedView",
    "StudyResult",
    "ViewResult",
    "algorithm_device_uid",
    "as_percent",
    "banner_lines",
    "box_polyline",
    "build_rejection_note",
    "build_secondary_captures",
    "build_sr",
    "display_image",
    "machine_generated_statement",
    "render_overlay",
    "resize_view",
    "result_uid",
    "scoord_point",
    "study_impression",
    "study_verdict",
]
