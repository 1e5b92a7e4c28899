"""Image-level classification metrics (seed 001 §3, seed 000 §III, seed 002 "Statistics").

Operating points (seed 001 §3: S@R95, R@S95, P@R95) are read off the curves of
:func:`sklearn.metrics.roc_curve` and :func:`sklearn.metrics.precision_recall_curve`.
A sample is called positive when ``score >= t``; the candidate thresholds ``t`` are every
distinct score (plus ``+inf``, nothing positive, for the ROC curve), so tied scores are never
split. Rates are compared with their targets with a slack of 1e-12.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    multilabel_confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ._validate import EPS, binary_labels, finite_scores

NAN = float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.min() == 0 and y.max() == 1)


def _check_target(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def _roc(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return 1.0 - fpr, tpr


def _spec_at_recall(y: np.ndarray, s: np.ndarray, recall: float) -> float:
    if not _both_classes(y):
        return NAN
    spec, tpr = _roc(y, s)
    return float(spec[tpr >= recall - EPS].max())


def _recall_at_spec(y: np.ndarray, s: np.ndarray, specificity: float) -> float:
    if not _both_classes(y):
        return NAN
    spec, tpr = _roc(y, s)
    return float(tpr[spec >= specificity - EPS].max())


def _precision_at_recall(y: np.ndarray, s: np.ndarray, recall: float) -> float:
    if y.max() == 0:
        return NAN
    precision, rec, _ = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) pair belongs to no threshold: drop it.
    precision, rec = precision[:-1], rec[:-1]
    return float(precision[rec >= recall - EPS].max())


def _binary_inputs(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = binary_labels(y_true)
    return y, finite_scores(y_score, y.size)


def specificity_at_recall(y_true: ArrayLike, y_score: ArrayLike, recall: float = 0.95) -> float:
    """Maximum specificity over ROC thresholds whose recall (TPR) is >= ``recall`` (S@R95).

    NaN when ``y_true`` holds a single class. Raises ValueError on empty or malformed input.
    """
    y, s = _binary_inputs(y_true, y_score)
    return _spec_at_recall(y, s, _check_target(recall, "recall"))


def recall_at_specificity(
    y_true: ArrayLike, y_score: ArrayLike, specificity: float = 0.95
) -> float:
    """Maximum recall over ROC thresholds whose specificity (1 - FPR) is >= ``specificity`` (R@S95).

    The ``+inf`` threshold (nothing positive, recall 0) always qualifies. NaN when ``y_true``
    holds a single class. Raises ValueError on empty or malformed input.
    """
    y, s = _binary_inputs(y_true, y_score)
    return _recall_at_spec(y, s, _check_target(specificity, "specificity"))


def precision_at_recall(y_true: ArrayLike, y_score: ArrayLike, recall: float = 0.95) -> float:
    """Maximum precision over thresholds (each distinct score) with recall >= ``recall`` (P@R95).

    NaN when ``y_true`` has no positive; 1.0 when it has no negative. Raises ValueError on empty
    or malformed input.
    """
    y, s = _binary_inputs(y_true, y_score)
    return _precision_at_recall(y, s, _check_target(recall, "recall"))


def binary_metrics(
    y_true: ArrayLike, y_score: ArrayLike, *, threshold: float = 0.5
) -> dict[str, float]:
    """Fracture-vs-normal metrics of seeds 001 §3 and 002 ("Statistics").

    Parameters
    ----------
    y_true: 1-D labels, 0 (normal) or 1 (fracture); bools accepted.
    y_score: 1-D finite scores, higher means fracture, same length.
    threshold: a sample is predicted positive when ``score >= threshold`` (for the fixed-point
        keys ``accuracy``, ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``).

    Returns
    -------
    Plain floats under ``auroc`` (sklearn ``roc_auc_score``), ``s_at_r95``
    (:func:`specificity_at_recall`), ``r_at_s95`` (:func:`recall_at_specificity`), ``p_at_r95``
    (:func:`precision_at_recall`) and the six fixed-threshold keys. A value is NaN exactly when it
    is undefined: ``auroc``, ``s_at_r95``, ``r_at_s95`` when one class is missing; a rate whose
    denominator is zero (e.g. ``ppv`` with no predicted positive); ``f1`` when there is neither a
    positive nor a predicted positive.

    Raises
    ------
    ValueError: empty input, length mismatch, labels other than 0/1, non-finite scores.
    """
    y, s = _binary_inputs(y_true, y_score)
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    both = _both_classes(y)
    pred = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    return {
        "auroc": float(roc_auc_score(y, s)) if both else NAN,
        "s_at_r95": _spec_at_recall(y, s, 0.95),
        "r_at_s95": _recall_at_spec(y, s, 0.95),
        "p_at_r95": _precision_at_recall(y, s, 0.95),
        "accuracy": (tp + tn) / y.size,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": float(f1_score(y, pred, labels=[0, 1], zero_division=np.nan)),
    }


def _nanmean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else NAN


def multiclass_metrics(
    y_true: ArrayLike, y_prob: ArrayLike, class_names: Sequence[str]
) -> dict[str, object]:
    """Multi-class metrics of seed 000 §III (F1) and seed 002 (one-vs-all statistics, AUC).

    The predicted class is ``argmax(y_prob, axis=1)`` (ties go to the lower index).
    "One vs all" (seed 002): for class ``c``, samples of ``c`` are positive and all others
    negative; sensitivity, specificity, PPV, NPV and accuracy come from that 2x2 table
    (sklearn ``multilabel_confusion_matrix``), AUROC from ``roc_auc_score(y == c, y_prob[:, c])``.

    Parameters
    ----------
    y_true: 1-D integer class indices in ``[0, C)``.
    y_prob: (N, C) finite class scores (probabilities or logits).
    class_names: C distinct names, used as keys of ``per_class``.

    Returns
    -------
    ``{"accuracy", "f1_weighted", "sensitivity_macro", "specificity_macro", "ppv_macro",
    "npv_macro", "auroc_macro": float, "per_class": {name: {"support": int, "f1",
    "sensitivity", "specificity", "ppv", "npv", "accuracy", "auroc": float}}}``.
    ``f1`` is sklearn ``f1_score(average=None)``; ``f1_weighted`` is ``average="weighted"``
    (support-weighted, seed 000 §III); both use ``zero_division=nan``. A per-class value is NaN
    when undefined (e.g. sensitivity and AUROC of a class absent from ``y_true``); a ``*_macro``
    value is the unweighted mean over the classes where it is defined (NaN if none).

    Raises
    ------
    ValueError: empty input, shape mismatch, fewer than 2 classes, duplicate names, labels out
        of range, non-finite scores. TypeError: non-integer labels.
    """
    names = [str(n) for n in class_names]
    n_classes = len(names)
    if n_classes < 2:
        raise ValueError(f"class_names must name at least 2 classes, got {n_classes}")
    if len(set(names)) != n_classes:
        raise ValueError(f"class_names must be distinct, got {names}")
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty: metrics need at least one sample")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
        raise TypeError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true values must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    prob = np.asarray(y_prob, dtype=np.float64)
    if prob.shape != (y.size, n_classes):
        raise ValueError(f"y_prob must have shape {(y.size, n_classes)}, got {prob.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("y_prob contains NaN or infinite values")

    labels = list(range(n_classes))
    pred = prob.argmax(axis=1)
    f1 = f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    f1_weighted = f1_score(y, pred, labels=labels, average="weighted", zero_division=np.nan)
    tables = multilabel_confusion_matrix(y, pred, labels=labels)

    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(names):
        (tn, fp), (fn, tp) = tables[c].tolist()
        positive = y == c
        both = bool(positive.any() and not positive.all())
        per_class[name] = {
            "support": tp + fn,
            "f1": float(f1[c]),
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn),
            "accuracy": (tp + tn) / y.size,
            "auroc": float(roc_auc_score(positive, prob[:, c])) if both else NAN,
        }

    result: dict[str, object] = {
        "accuracy": float(np.mean(pred == y)),
        "f1_weighted": float(f1_weighted),
    }
    for key in ("sensitivity", "specificity", "ppv", "npv", "auroc"):
        result[f"{key}_macro"] = _nanmean([float(per_class[n][key]) for n in names])
    result["per_class"] = per_class
    return result
