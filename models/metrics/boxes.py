"""Box localisation metrics: seed 000 §III box mAP and heatmap-to-box conversion (seeds 000, 003).

Boxes are ``[x0, y0, x1, y1]`` in pixel coordinates with the centre of the top-left pixel at
(0, 0). :func:`box_iou` measures them as continuous rectangles (torchvision ``box_iou``
convention, no "+1"); :func:`heatmap_boxes` returns boxes whose edges pass through the centres
of a component's extreme pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike

from ._validate import Box, check_box

NAN = float("nan")

#: IoU thresholds T of seed 000 §III.
SEED000_IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes as continuous rectangles; 0.0 if the union is empty."""
    ax0, ay0, ax1, ay1 = check_box(a, "box a")
    bx0, by0, bx1, by1 = check_box(b, "box b")
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def _average_precision(scores: np.ndarray, is_tp: np.ndarray, n_positive: int) -> float:
    """All-points interpolated AP (PASCAL VOC 2010+): sum_k (r_k - r_{k-1}) * max_{j>=k} p_j.

    Precision/recall are taken at each distinct score (tied predictions enter together, so the
    result does not depend on input order); recall is ``TP / n_positive``.
    """
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    cum_tp = np.cumsum(is_tp)
    cum_fp = np.cumsum(~is_tp)
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp, fp = cum_tp[last_of_group], cum_fp[last_of_group]
    precision = tp / (tp + fp)
    recall = tp / n_positive
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * envelope))


def _threshold_key(t: float) -> str:
    return f"ap@{t:g}"


def box_map(
    pred_boxes: Sequence[Sequence[float] | None],
    pred_scores: Sequence[float | None],
    gt_boxes: Sequence[Sequence[Sequence[float]] | None],
    iou_thresholds: Sequence[float] = SEED000_IOU_THRESHOLDS,
) -> dict[str, float]:
    """Box mAP of seed 000 §III: one predicted box per image, over images with fractures.

    Only images with at least one ground-truth box are evaluated (predictions on the others are
    ignored). For each IoU threshold ``T`` an image's prediction is a TP if its IoU with the best
    matching ground-truth box is ``> T`` and an FP otherwise; a ``None`` prediction is a miss
    (no TP, no FP; its score is ignored). AP per threshold is the all-points interpolated area
    under the precision-recall curve of the score-ranked predictions (PASCAL VOC 2010+ style:
    precision made non-increasing in recall, then summed over recall steps; tied scores form one
    operating point), with recall denominator the number of evaluated images.

    Returns
    -------
    ``{"map": mean AP over thresholds, "ap@0.1": ..., "ap@0.25": ..., ...}`` (key ``f"ap@{T:g}"``).
    All NaN when no image has a ground-truth box (nothing to recall).

    Raises
    ------
    ValueError: empty or mismatched lists, no thresholds, a threshold outside [0, 1], a
        malformed box, a missing or non-finite score for a predicted box.
    """
    n = len(pred_boxes)
    if n == 0:
        raise ValueError("pred_boxes is empty: box_map needs at least one image")
    if len(pred_scores) != n or len(gt_boxes) != n:
        raise ValueError(
            f"pred_boxes, pred_scores, gt_boxes must have equal lengths, got "
            f"{n}, {len(pred_scores)}, {len(gt_boxes)}"
        )
    thresholds = [float(t) for t in iou_thresholds]
    if not thresholds:
        raise ValueError("iou_thresholds is empty")
    if not all(0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"iou_thresholds must lie in [0, 1], got {thresholds}")
    if len({_threshold_key(t) for t in thresholds}) != len(thresholds):
        raise ValueError(f"iou_thresholds must be distinct, got {thresholds}")

    n_positive = 0
    ious: list[float] = []
    scores: list[float] = []
    for i in range(n):
        image_gts = gt_boxes[i]
        gts = [
            check_box(g, f"gt_boxes[{i}][{j}]")
            for j, g in enumerate([] if image_gts is None else image_gts)
        ]
        pred = pred_boxes[i]
        box = None if pred is None else check_box(pred, f"pred_boxes[{i}]")
        if not gts:
            continue
        n_positive += 1
        if box is None:
            continue
        score = pred_scores[i]
        if score is None or not math.isfinite(float(score)):
            raise ValueError(f"pred_scores[{i}] must be a finite number, got {score!r}")
        ious.append(max(box_iou(box, g) for g in gts))
        scores.append(float(score))

    result: dict[str, float] = {}
    if n_positive == 0:
        result["map"] = NAN
        result.update({_threshold_key(t): NAN for t in thresholds})
        return result
    iou_arr = np.asarray(ious, dtype=np.float64)
    score_arr = np.asarray(scores, dtype=np.float64)
    aps = {
        _threshold_key(t): _average_precision(score_arr, iou_arr > t, n_positive)
        for t in thresholds
    }
    result["map"] = float(sum(aps.values()) / len(aps))
    result.update(aps)
    return result


def _heatmap_array(heatmap: ArrayLike) -> np.ndarray:
    arr = np.asarray(heatmap)
    if arr.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("heatmap is empty")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"heatmap must be numeric, got dtype {arr.dtype}")
    return arr


def normalise_heatmap(heatmap: ArrayLike) -> np.ndarray:
    """Min-max scale a heatmap to [0, 255] float64 (seed 000 §III); a constant map gives zeros."""
    arr = _heatmap_array(heatmap).astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("heatmap contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return np.zeros_like(arr)
    return (arr - lo) * (255.0 / (hi - lo))


def heatmap_boxes(heatmap: ArrayLike, threshold: float) -> list[Box]:
    """Boxes of the connected regions where ``heatmap >= threshold`` (seeds 000 §III, 003).

    The binary map is labelled with ``cv2.connectedComponentsWithStats`` (8-connectivity); each
    component gives ``[x, y, x + w - 1, y + h - 1]`` (the centres of its extreme pixels), in
    OpenCV label order (raster order of each component's first pixel). NaN pixels never pass.

    Raises ValueError for a non-2-D or empty heatmap or a NaN threshold.
    """
    arr = _heatmap_array(heatmap)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    mask = np.ascontiguousarray(arr >= threshold, dtype=np.uint8)
    n_labels, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    boxes: list[Box] = []
    for label in range(1, n_labels):
        x, y, w, h = (int(v) for v in stats[label, :4])
        boxes.append([float(x), float(y), float(x + w - 1), float(y + h - 1)])
    return boxes
