"""Tests for models.metrics: hand-worked values and independent sklearn / brute-force checks."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from models.metrics import (
    binary_metrics,
    box_iou,
    box_map,
    froc,
    froc_from_heatmaps,
    heatmap_boxes,
    is_false_positive,
    multiclass_metrics,
    normalise_heatmap,
    precision_at_recall,
    recall_at_specificity,
    specificity_at_recall,
)

# --------------------------------------------------------------------------- binary


def _brute_operating_points(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
    """S@R95, R@S95, P@R95 by trying every threshold t (predict positive iff s >= t)."""
    spec_at_r, rec_at_s, prec_at_r = [], [], []
    for t in [*np.unique(s), math.inf]:
        pred = s >= t
        tp = int(np.sum(pred & (y == 1)))
        fp = int(np.sum(pred & (y == 0)))
        recall = tp / int(np.sum(y == 1))
        spec = 1 - fp / int(np.sum(y == 0))
        if recall >= 0.95 - 1e-12:
            spec_at_r.append(spec)
            if tp + fp:
                prec_at_r.append(tp / (tp + fp))
        if spec >= 0.95 - 1e-12:
            rec_at_s.append(recall)
    return {"s_at_r95": max(spec_at_r), "r_at_s95": max(rec_at_s), "p_at_r95": max(prec_at_r)}


def _fixtures() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(20240601)
    y_rand = rng.integers(0, 2, 200)
    s_rand = np.round(np.clip(0.35 * y_rand + rng.normal(0.4, 0.2, 200), 0, 1), 1)  # many ties
    # 40 positives: 38/40 is exactly 95 % recall, so S@R95 need not reach the last positive.
    y_40 = np.r_[np.ones(40, int), np.zeros(60, int)]
    s_40 = np.r_[rng.normal(0.7, 0.15, 40), rng.normal(0.4, 0.15, 60)]
    return [
        (
            np.array([0, 1, 0, 1, 1, 0, 1, 0, 1, 1]),
            np.array([0.5, 0.5, 0.2, 0.8, 0.5, 0.9, 0.3, 0.1, 0.7, 0.2]),
        ),
        (np.array([0, 1, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])),  # all tied
        (np.array([0, 0, 1, 1]), np.array([0.1, 0.1, 0.9, 0.9])),  # separable, tied within class
        (y_rand, s_rand),
        (y_40, s_40),
    ]


@pytest.mark.parametrize("y,s", _fixtures())
def test_binary_metrics_match_independent_computation(y: np.ndarray, s: np.ndarray) -> None:
    m = binary_metrics(y, s, threshold=0.5)
    pred = (s >= 0.5).astype(int)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred), abs=1e-12)
    assert m["specificity"] == pytest.approx(recall_score(y, pred, pos_label=0), abs=1e-12)
    ppv = precision_score(y, pred, zero_division=np.nan)
    assert m["ppv"] == pytest.approx(ppv, abs=1e-12, nan_ok=True)
    npv = precision_score(y, pred, pos_label=0, zero_division=np.nan)
    assert m["npv"] == pytest.approx(npv, abs=1e-12, nan_ok=True)
    assert m["f1"] == pytest.approx(f1_score(y, pred), abs=1e-12)
    for key, value in _brute_operating_points(y, s).items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert all(type(v) is float for v in m.values())
    json.dumps(m)


def test_binary_metrics_hand_example() -> None:
    # Ranked: 0.9 P, 0.8 P, 0.7 N, 0.6 P, 0.4 N, 0.35 P, 0.3 N, 0.1 N  (4 P, 4 N).
    # S@R95: recall >= 0.95 needs all 4 positives -> t <= 0.35, best t = 0.35 calls
    #   {0.9, 0.8, 0.7, 0.6, 0.4, 0.35} positive: FP = 2 -> specificity 2/4 = 0.5.
    # P@R95: at that same t, precision = 4 / 6 = 2/3.
    # R@S95: specificity >= 0.95 needs FP = 0 -> t > 0.7, best t = 0.8: recall 2/4 = 0.5.
    # AUROC: positive-beats-negative pairs 4 + 4 + 3 + 2 = 13 of 16 = 0.8125.
    # At threshold 0.5: positives called = {0.9, 0.8, 0.7, 0.6}: TP 3, FP 1, FN 1, TN 3 ->
    #   accuracy, sensitivity, specificity, PPV, NPV and F1 are all 0.75.
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    s = [0.7, 0.4, 0.3, 0.1, 0.9, 0.8, 0.6, 0.35]
    assert binary_metrics(y, s) == pytest.approx(
        {
            "auroc": 0.8125,
            "s_at_r95": 0.5,
            "r_at_s95": 0.5,
            "p_at_r95": 2 / 3,
            "accuracy": 0.75,
            "sensitivity": 0.75,
            "specificity": 0.75,
            "ppv": 0.75,
            "npv": 0.75,
            "f1": 0.75,
        }
    )


def test_operating_points_never_split_ties() -> None:
    # Positives 0.9, 0.6, 0.6; negatives 0.6, 0.3. Reaching recall 1 needs t <= 0.6, which also
    # calls the tied negative positive: S@R95 = 1/2, P@R95 = 3/4. Specificity 1 needs t > 0.6:
    # best t = 0.9, R@S95 = 1/3.
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.6, 0.6, 0.6, 0.3]
    assert specificity_at_recall(y, s) == pytest.approx(0.5)
    assert precision_at_recall(y, s) == pytest.approx(0.75)
    assert recall_at_specificity(y, s) == pytest.approx(1 / 3)
    # A lower target changes the answer: recall >= 0.3 is reached at t = 0.9 with no FP.
    assert specificity_at_recall(y, s, recall=0.3) == 1.0


def test_single_class_gives_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_pos = binary_metrics([1, 1, 1], [0.2, 0.7, 0.9])
        only_neg = binary_metrics([0, 0], [0.2, 0.7])
    for key in ("auroc", "s_at_r95", "r_at_s95", "specificity"):
        assert math.isnan(only_pos[key]), key
    assert only_pos["npv"] == 0.0  # the one sample called negative (0.2) is a positive
    assert only_pos["p_at_r95"] == 1.0  # every threshold has precision 1
    assert only_pos["sensitivity"] == pytest.approx(2 / 3)
    for key in ("auroc", "s_at_r95", "r_at_s95", "p_at_r95", "sensitivity"):
        assert math.isnan(only_neg[key]), key
    assert only_neg["specificity"] == 0.5
    assert only_neg["f1"] == 0.0  # 2TP / (2TP + FP + FN) = 0 / 1: one false positive
    assert math.isnan(binary_metrics([0, 0], [0.1, 0.2])["f1"])  # 0 / 0: truly undefined
    json.dumps(only_neg)  # NaN is still serialisable


@pytest.mark.parametrize(
    "y,s,match",
    [
        ([], [], "empty"),
        ([0, 1], [0.5], "has 1 values"),
        ([0, 2], [0.1, 0.5], "only 0 and 1"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_binary_rejects_bad_input(y: list, s: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, s)


# --------------------------------------------------------------------------- multi-class


def _probs_with_argmax(pred: list[int], n_classes: int, seed: int) -> np.ndarray:
    """Random rows summing to 1 whose argmax is ``pred``."""
    rng = np.random.default_rng(seed)
    prob = rng.dirichlet(np.ones(n_classes), size=len(pred))
    for row, c in zip(prob, pred, strict=True):
        top = int(row.argmax())
        row[[top, c]] = row[[c, top]]
    return prob


def test_multiclass_hand_confusion_matrix() -> None:
    # Confusion matrix (rows true, columns predicted), 12 samples:
    #            normal  I-II  III-IV
    #   normal      3      1      0
    #   I-II        1      2      1
    #   III-IV      0      1      3
    # One vs all: normal  TP 3 FN 1 FP 1 TN 7 -> SN 3/4 SP 7/8 PPV 3/4 NPV 7/8 acc 10/12
    #             I-II    TP 2 FN 2 FP 2 TN 6 -> SN 1/2 SP 6/8 PPV 1/2 NPV 6/8 acc  8/12
    #             III-IV  TP 3 FN 1 FP 1 TN 7 -> SN 3/4 SP 7/8 PPV 3/4 NPV 7/8 acc 10/12
    # Macro: SN 2/3, SP 5/6, PPV 2/3, NPV 5/6. Accuracy 8/12. F1 = 2TP/(2TP+FP+FN):
    # 6/8, 4/8, 6/8; support-weighted (4, 4, 4) = 2/3.
    y = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 0, 1, 0, 1, 1, 2, 1, 2, 2, 2]
    prob = _probs_with_argmax(pred, 3, seed=3)
    names = ["normal", "I-II", "III-IV"]
    m = multiclass_metrics(y, prob, names)

    expected = {
        "normal": (3 / 4, 7 / 8, 3 / 4, 7 / 8, 10 / 12, 0.75),
        "I-II": (1 / 2, 6 / 8, 1 / 2, 6 / 8, 8 / 12, 0.5),
        "III-IV": (3 / 4, 7 / 8, 3 / 4, 7 / 8, 10 / 12, 0.75),
    }
    for name, (sn, sp, ppv, npv, acc, f1) in expected.items():
        got = m["per_class"][name]
        assert got["support"] == 4
        assert (got["sensitivity"], got["specificity"], got["ppv"], got["npv"]) == pytest.approx(
            (sn, sp, ppv, npv)
        )
        assert got["accuracy"] == pytest.approx(acc)
        assert got["f1"] == pytest.approx(f1)
    assert m["accuracy"] == pytest.approx(8 / 12)
    assert m["f1_weighted"] == pytest.approx(2 / 3)
    assert m["sensitivity_macro"] == pytest.approx(2 / 3)
    assert m["specificity_macro"] == pytest.approx(5 / 6)
    assert m["ppv_macro"] == pytest.approx(2 / 3)
    assert m["npv_macro"] == pytest.approx(5 / 6)
    for c, name in enumerate(names):
        auc = roc_auc_score(np.array(y) == c, prob[:, c])
        assert m["per_class"][name]["auroc"] == pytest.approx(auc, abs=1e-12)
    assert m["auroc_macro"] == pytest.approx(
        roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=1e-12
    )
    json.dumps(m)


def test_multiclass_f1_matches_sklearn() -> None:
    rng = np.random.default_rng(7)
    y = rng.choice(4, size=300, p=[0.5, 0.25, 0.15, 0.1])
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[y]
    m = multiclass_metrics(y, logits, ["a", "b", "c", "d"])
    pred = logits.argmax(axis=1)
    per_class = f1_score(y, pred, average=None)
    for c, name in enumerate("abcd"):
        assert m["per_class"][name]["f1"] == pytest.approx(per_class[c], abs=1e-12)
        assert m["per_class"][name]["support"] == int(np.sum(y == c))
    assert m["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)


def test_multiclass_absent_class_is_nan_and_skipped_by_macro() -> None:
    y = [0, 0, 1, 1]
    pred = [0, 1, 1, 1]
    prob = _probs_with_argmax(pred, 3, seed=1)
    m = multiclass_metrics(y, prob, ["n", "a", "b"])
    absent = m["per_class"]["b"]
    assert absent["support"] == 0
    assert math.isnan(absent["sensitivity"]) and math.isnan(absent["auroc"])
    assert absent["specificity"] == 1.0  # all 4 negatives predicted "not b"
    # SN: n 1/2, a 2/2 -> macro over defined classes 3/4.
    assert m["sensitivity_macro"] == pytest.approx(0.75)


@pytest.mark.parametrize(
    "y,prob,names,exc,match",
    [
        ([], np.zeros((0, 2)), ["a", "b"], ValueError, "empty"),
        ([0, 1], np.zeros((2, 2)), ["a"], ValueError, "at least 2"),
        ([0, 1], np.zeros((2, 2)), ["a", "a"], ValueError, "distinct"),
        ([0, 2], np.zeros((2, 2)), ["a", "b"], ValueError, "lie in"),
        ([0, 1], np.zeros((2, 3)), ["a", "b"], ValueError, "shape"),
        ([0.0, 1.0], np.zeros((2, 2)), ["a", "b"], TypeError, "integer"),
    ],
)
def test_multiclass_rejects_bad_input(y, prob, names, exc, match) -> None:
    with pytest.raises(exc, match=match):
        multiclass_metrics(y, prob, names)


# --------------------------------------------------------------------------- box mAP

GT = [0.0, 0.0, 100.0, 100.0]


def _box_with_iou(iou: float) -> list[float]:
    """A box inside GT covering the fraction ``iou`` of it, so IoU(box, GT) = iou."""
    return [0.0, 0.0, 100.0, 100.0 * iou]


def test_box_map_hand_example() -> None:
    # IoUs 0.95, 0.6, 0.2 ranked by score 0.9, 0.8, 0.7; 3 images with a fracture.
    # T=0.1 : TP TP TP -> AP 1.
    # T=0.25: TP TP FP -> precision 1, 1, 2/3 at recall 1/3, 2/3, 2/3 -> AP 2/3. Same at T=0.5.
    # T=0.75: TP FP FP -> recall stays 1/3 at precision 1 -> AP 1/3. Same at T=0.9 (0.95 > 0.9).
    # mAP = (1 + 2/3 + 2/3 + 1/3 + 1/3) / 5 = 3/5.
    # A 4th image without fracture has a prediction: it is not evaluated.
    preds = [_box_with_iou(0.95), _box_with_iou(0.6), _box_with_iou(0.2), [5.0, 5.0, 9.0, 9.0]]
    m = box_map(preds, [0.9, 0.8, 0.7, 0.99], [[GT], [GT], [GT], []])
    assert m == pytest.approx(
        {
            "map": 0.6,
            "ap@0.1": 1.0,
            "ap@0.25": 2 / 3,
            "ap@0.5": 2 / 3,
            "ap@0.75": 1 / 3,
            "ap@0.9": 1 / 3,
        }
    )
    assert list(m) == ["map", "ap@0.1", "ap@0.25", "ap@0.5", "ap@0.75", "ap@0.9"]


def test_box_map_interpolation_and_missing_prediction() -> None:
    # Scores 0.9, 0.8, 0.7 with IoUs 0.2, 0.95, 0.6; a 4th fractured image has no prediction
    # (a miss), so recall = TP / 4.
    # T=0.5: FP TP TP -> precision 0, 1/2, 2/3 at recall 0, 1/4, 2/4. All-points interpolation
    #   replaces precision by its maximum at any higher recall: 2/3 on both recall steps ->
    #   AP = 1/4 * 2/3 + 1/4 * 2/3 = 1/3 (non-interpolated would be 1/8 + 1/6 = 7/24).
    # T=0.1: TP TP TP -> AP = 3/4 (recall never reaches 1). T=0.25: as T=0.5 -> 1/3.
    # T=0.75: FP TP FP -> precision 0, 1/2, 1/3 at recall 0, 1/4, 1/4 -> AP = 1/4 * 1/2 = 1/8.
    # T=0.9: as T=0.75 -> 1/8. mAP = (3/4 + 1/3 + 1/3 + 1/8 + 1/8) / 5 = 1/3.
    preds = [_box_with_iou(0.2), _box_with_iou(0.95), _box_with_iou(0.6), None]
    m = box_map(preds, [0.9, 0.8, 0.7, None], [[GT]] * 4)
    assert m == pytest.approx(
        {
            "map": 1 / 3,
            "ap@0.1": 0.75,
            "ap@0.25": 1 / 3,
            "ap@0.5": 1 / 3,
            "ap@0.75": 1 / 8,
            "ap@0.9": 1 / 8,
        }
    )


def test_box_map_tied_scores_form_one_operating_point() -> None:
    # Same score, one TP (IoU 0.95) one FP (IoU 0.2): a single point precision 1/2, recall 1/2
    # -> AP@0.5 = 1/4 whatever the input order.
    a = box_map([_box_with_iou(0.95), _box_with_iou(0.2)], [0.5, 0.5], [[GT], [GT]], [0.5])
    b = box_map([_box_with_iou(0.2), _box_with_iou(0.95)], [0.5, 0.5], [[GT], [GT]], [0.5])
    assert a == b == pytest.approx({"map": 0.25, "ap@0.5": 0.25})


def test_box_map_uses_best_ground_truth_box() -> None:
    far = [500.0, 500.0, 600.0, 600.0]
    m = box_map([_box_with_iou(0.6)], [0.3], [[far, GT]], [0.5, 0.75])
    assert m == pytest.approx({"map": 0.5, "ap@0.5": 1.0, "ap@0.75": 0.0})


def test_box_map_without_fractures_is_nan_and_empty_raises() -> None:
    m = box_map([[0, 0, 1, 1]], [0.5], [[]])
    assert all(math.isnan(v) for v in m.values())
    with pytest.raises(ValueError, match="empty"):
        box_map([], [], [])
    with pytest.raises(ValueError, match="equal lengths"):
        box_map([None], [], [[]])
    with pytest.raises(ValueError, match="x0 <= x1"):
        box_map([[5, 0, 1, 1]], [0.5], [[GT]])
    with pytest.raises(ValueError, match="finite"):
        box_map([GT], [None], [[GT]])


def test_box_iou_matches_torchvision() -> None:
    torch = pytest.importorskip("torch")
    from torchvision.ops import box_iou as tv_box_iou

    rng = np.random.default_rng(11)
    xy = rng.uniform(0, 50, size=(20, 2))
    boxes = np.c_[xy, xy + rng.uniform(1, 40, size=(20, 2))]
    expected = tv_box_iou(torch.tensor(boxes), torch.tensor(boxes[::-1].copy())).numpy()
    for i in range(20):
        for j in range(20):
            assert box_iou(boxes[i], boxes[::-1][j]) == pytest.approx(expected[i, j], abs=1e-9)
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0


# --------------------------------------------------------------------------- heatmap boxes


def test_heatmap_boxes_two_blobs() -> None:
    heat = np.zeros((20, 30), dtype=np.float32)
    heat[2:5, 3:8] = 0.8  # rows 2-4, columns 3-7
    heat[5, 8] = 0.5  # touches (row 4, col 7) diagonally: 8-connected, joins blob 1
    heat[10:16, 20:23] = 0.6  # rows 10-15, columns 20-22
    assert heatmap_boxes(heat, 0.5) == [[3.0, 2.0, 8.0, 5.0], [20.0, 10.0, 22.0, 15.0]]
    assert heatmap_boxes(heat, 0.6) == [[3.0, 2.0, 7.0, 4.0], [20.0, 10.0, 22.0, 15.0]]
    assert heatmap_boxes(heat, 0.7) == [[3.0, 2.0, 7.0, 4.0]]
    assert heatmap_boxes(heat, 0.9) == []
    with pytest.raises(ValueError, match="2-D"):
        heatmap_boxes(np.zeros(5), 0.5)
    with pytest.raises(ValueError, match="empty"):
        heatmap_boxes(np.zeros((0, 4)), 0.5)


def test_normalise_heatmap() -> None:
    out = normalise_heatmap(np.array([[1.0, 2.0], [3.0, 5.0]]))
    np.testing.assert_allclose(out, [[0.0, 63.75], [127.5, 255.0]])
    np.testing.assert_array_equal(normalise_heatmap(np.full((2, 2), 7.0)), np.zeros((2, 2)))


# --------------------------------------------------------------------------- FROC


def test_froc_hand_example() -> None:
    # Radius 50, 10 % rule, 3 images, 3 points in all, thresholds 0.7 > 0.5 > 0.3.
    # Image A, point (100,100):
    #   0.7: [90,90,110,110] holds the point (inside its disk -> not FP).
    #   0.5: same box + [300,300,320,320] far from the disk -> 1 FP.
    #   0.3: [80,80,120,120] (all pixels within 29 px of the point -> not FP) + [300,...] FP.
    # Image B, points (200,200), (400,400):
    #   0.7: nothing; 0.5: box on the first point; 0.3: boxes on both points. No FP.
    # Image C, no point: 0.3 has one box -> FP (every box on a point-free image is FP).
    # Curve (FP/image, recall): 0.7 -> (0, 1/3); 0.5 -> (1/3, 2/3); 0.3 -> (2/3, 1).
    # Recall at FP rate 0.1, 0.2, 0.3 -> 1/3 (1/3 > 0.3), at 0.4, 0.5 -> 2/3.
    # FROC score = (3 * 1/3 + 2 * 2/3) / 5 = 7/15; Recall@0.1 = 1/3.
    far = [300, 300, 320, 320]
    boxes = [
        {
            0.7: [[90, 90, 110, 110]],
            0.5: [[90, 90, 110, 110], far],
            0.3: [[80, 80, 120, 120], [300, 300, 340, 340]],
        },
        {0.7: [], 0.5: [[190, 190, 210, 210]], 0.3: [[190, 190, 210, 210], [390, 390, 410, 410]]},
        {0.7: [], 0.5: [], 0.3: [[10, 10, 20, 20]]},
    ]
    points = [[[100, 100]], [[200, 200], [400, 400]], []]
    r = froc(boxes, points)
    expected_curve = [(0.0, 1 / 3, 0.7), (1 / 3, 2 / 3, 0.5), (2 / 3, 1.0, 0.3)]
    assert len(r["curve"]) == 3
    for got, want in zip(r["curve"], expected_curve, strict=True):
        assert got == pytest.approx(want)
    assert r["recall_at_fp"] == pytest.approx(
        {"0.1": 1 / 3, "0.2": 1 / 3, "0.3": 1 / 3, "0.4": 2 / 3, "0.5": 2 / 3}
    )
    assert r["froc_score"] == pytest.approx(7 / 15)
    assert r["recall_at_0.1fp"] == pytest.approx(1 / 3)
    assert json.loads(json.dumps(r))["froc_score"] == pytest.approx(7 / 15)


def test_froc_recall_is_zero_when_no_operating_point_is_cheap_enough() -> None:
    # One image, one FP box at the only threshold -> 1 FP/image > 0.5: every recall_at is 0.
    r = froc([{0.5: [[40, 40, 60, 60], [500, 500, 510, 510]]}], [[[50, 50]]])
    assert r["curve"] == [(1.0, 1.0, 0.5)]
    assert r["froc_score"] == 0.0 and r["recall_at_0.1fp"] == 0.0


def test_false_positive_overlap_rule() -> None:
    # Box [0,0,99,9] covers 100 x 10 = 1000 pixel centres. A point at (-d, 4.5): on every row
    # |y - 4.5| <= 4.5, so the disk reaches x <= -d + sqrt(2500 - 4.5^2) = -d + 49.80 at worst
    # and < -d + 50 at best: it covers x = 0 .. 49 - d, i.e. 50 - d pixels per row.
    # d = 41 -> 9 per row = 90 px = 9 %  -> FP; d = 40 -> 10 % -> not FP; d = 39 -> 11 % -> not FP.
    box = [0, 0, 99, 9]
    assert is_false_positive(box, [[-41, 4.5]])
    assert not is_false_positive(box, [[-40, 4.5]])
    assert not is_false_positive(box, [[-39, 4.5]])
    # Through froc: the point is outside the box, so it is never recalled either.
    r9 = froc([{0.5: [box]}], [[[-41, 4.5]]])
    r11 = froc([{0.5: [box]}], [[[-39, 4.5]]])
    assert r9["curve"] == [(1.0, 0.0, 0.5)]
    assert r11["curve"] == [(0.0, 0.0, 0.5)]
    # No point -> every box is FP, even one covering no pixel centre.
    assert is_false_positive(box, [])
    assert is_false_positive([0.2, 0.2, 0.8, 0.8], [[0.5, 0.5]])


def test_false_positive_matches_full_grid_rasterisation() -> None:
    rng = np.random.default_rng(5)
    ys, xs = np.mgrid[-100:400, -100:400]
    for _ in range(40):
        x0, y0 = rng.uniform(0, 250, 2)
        box = [x0, y0, x0 + rng.uniform(0, 120), y0 + rng.uniform(0, 120)]
        pts = rng.uniform(-50, 350, size=(int(rng.integers(1, 4)), 2))
        in_box = (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])
        in_disk = np.zeros_like(in_box)
        for cx, cy in pts:
            in_disk |= (xs - cx) ** 2 + (ys - cy) ** 2 <= 50.0**2
        area = int(in_box.sum())
        for frac in (0.05, 0.1, 0.5):
            expected = area == 0 or (in_box & in_disk).sum() / area < frac
            assert is_false_positive(box, pts, min_overlap=frac) == expected


def test_point_on_box_edge_is_recalled() -> None:
    box = [10, 10, 20, 20]
    for point, recalled in [([20, 15], 1.0), ([10, 10], 1.0), ([20.001, 15], 0.0)]:
        assert froc([{0.5: [box]}], [[point]])["curve"][0][1] == recalled, point


def test_froc_from_heatmaps() -> None:
    # Blob 1 (0.9) on the point (50,50); blob 2 (0.6) 100 px away from it.
    # t=0.8: box [45,45,55,55] -> recall 1, 0 FP.  t=0.5: + box [150,150,160,160] -> 1 FP.
    heat = np.zeros((200, 200))
    heat[45:56, 45:56] = 0.9
    heat[150:161, 150:161] = 0.6
    r = froc_from_heatmaps([heat], [[[50, 50]]], [0.5, 0.8])
    assert r["curve"] == [(0.0, 1.0, 0.8), (1.0, 1.0, 0.5)]
    assert r["froc_score"] == 1.0
    with pytest.raises(ValueError, match="distinct"):
        froc_from_heatmaps([heat], [[[50, 50]]], [0.5, 0.5])


def test_froc_degenerate_inputs() -> None:
    no_points = froc([{0.5: [[0, 0, 5, 5]]}], [[]])
    assert no_points["curve"][0][0] == 1.0 and math.isnan(no_points["curve"][0][1])
    assert math.isnan(no_points["froc_score"])
    with pytest.raises(ValueError, match="empty"):
        froc([], [])
    with pytest.raises(ValueError, match="empty"):
        froc_from_heatmaps([], [], [0.5])
    with pytest.raises(ValueError, match="differ"):
        froc([{0.5: []}, {0.4: []}], [[], []])
    with pytest.raises(ValueError, match="no thresholds"):
        froc([{}], [[]])
    with pytest.raises(ValueError, match="images but"):
        froc([{0.5: []}], [])
