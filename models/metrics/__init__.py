"""Evaluation metrics for fracture classification and localisation.

Classification: seed 001 §3 (AUROC, S@R95, R@S95, P@R95), seed 000 §III (per-class and
support-weighted F1), seed 002 (accuracy, one-vs-all sensitivity/specificity/PPV/NPV, AUC).
Localisation: seed 000 §III box mAP, seed 003 FROC. Every function returns plain Python floats;
NaN marks a value that is undefined for the given data.
"""

from .boxes import SEED000_IOU_THRESHOLDS, box_iou, box_map, heatmap_boxes, normalise_heatmap
from .classification import (
    binary_metrics,
    multiclass_metrics,
    precision_at_recall,
    recall_at_specificity,
    specificity_at_recall,
)
from .froc import SEED003_FP_RATES, froc, froc_from_heatmaps, is_false_positive

__all__ = [
    "SEED000_IOU_THRESHOLDS",
    "SEED003_FP_RATES",
    "binary_metrics",
    "box_iou",
    "box_map",
    "froc",
    "froc_from_heatmaps",
    "heatmap_boxes",
    "is_false_positive",
    "multiclass_metrics",
    "normalise_heatmap",
    "precision_at_recall",
    "recall_at_specificity",
    "specificity_at_recall",
]
