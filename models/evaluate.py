"""Evaluation with the seed papers' metrics (``pacs-node evaluate``).

Every view of a data set (DICOM + manifest) is run through the model exactly as the node
runs it (:meth:`models.registry.FractureModel.predict`). One prediction record per view is
kept; all metrics are computed from these records (:func:`metrics_from_records`), and the
records are what ``--predictions-out`` writes, so any figure can be recomputed from the file.

Views are predicted without abstaining, each record carrying its domain check
(:mod:`models.domain`): the headline metrics are over the views the node would analyse
(those that pass), ``all_views`` over every view, and ``domain`` gives the pass rate.
``artifact_findings`` counts negative views whose reported findings (as the node reports
them: none below the threshold, at most ``max_findings``) peak on an artifact the generator
drew (side marker, burned-in text, ruler, collimator shutter, hardware).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from .data import LABEL_SETS, read_manifest, view_class
from .findings import reported_findings
from .metrics import binary_metrics, box_map, froc, heatmap_boxes, multiclass_metrics
from .registry import FractureModel

__all__ = ["ARTIFACT_FINDING_KINDS", "FROC_THRESHOLDS", "evaluate", "metrics_from_records",
           "predict_records"]

# Artifacts a reported finding must never sit on (the generator's truth, models.synth); a
# cast or grid covers the whole image and is not counted.
ARTIFACT_FINDING_KINDS = ("marker", "text", "ruler", "collimator", "hardware")
# A finding's peak within this many pixels of an artifact box counts as on it (an edge).
ARTIFACT_MARGIN = 4.0

# Operating points of the FROC curve (seed 003): heatmap thresholds.
FROC_THRESHOLDS: tuple[float, ...] = tuple(round(t, 3) for t in np.linspace(0.05, 0.95, 19))


def _inside(point: Iterable[float], box: Iterable[float]) -> bool:
    x, y = point
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 and y0 <= y <= y1


def predict_records(
    model: FractureModel,
    root: Path,
    *,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready prediction record per view of the data set at ``root``."""
    root = Path(root)
    entries = read_manifest(root)
    records: list[dict[str, Any]] = []
    for start in range(0, len(entries), batch_size):
        chunk = entries[start:start + batch_size]
        datasets = [pydicom.dcmread(root / e["path"]) for e in chunk]
        predictions = model.predict(datasets, batch_size=batch_size, allow_uncalibrated=True,
                                    abstain=False)
        for entry, pred in zip(chunk, predictions, strict=True):
            heat = pred.heatmap
            assert heat is not None  # abstain=False keeps every answer
            row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
            records.append({
                "sop_instance_uid": entry["sop_instance_uid"],
                "study_instance_uid": entry["study_instance_uid"],
                "path": entry["path"],
                "label": int(entry["label"]),
                "class_ao": entry.get("class_ao"),
                "class_garden": entry.get("class_garden"),
                "score": pred.fracture_probability,
                "probabilities": pred.probabilities,
                "findings": [f.to_dict() for f in pred.findings],
                "domain": pred.domain.to_dict(),
                "artifacts": entry.get("artifacts") or [],
                "peak": [float(col), float(row)],
                "gt_points": entry.get("points") or [],
                "gt_boxes": entry.get("boxes") or [],
                "froc_boxes": {f"{t:g}": [list(map(float, b)) for b in heatmap_boxes(heat, t)]
                               for t in FROC_THRESHOLDS},
            })
        if progress is not None:
            progress(min(start + batch_size, len(entries)), len(entries))
    return records


def _on_artifact(point: Iterable[float], artifacts: list[dict[str, Any]]) -> str | None:
    x, y = point
    m = ARTIFACT_MARGIN
    for artifact in artifacts:
        x0, y0, x1, y1 = artifact["box"]
        if (artifact["kind"] in ARTIFACT_FINDING_KINDS
                and x0 - m <= x <= x1 + m and y0 - m <= y <= y1 + m):
            return str(artifact["kind"])
    return None


def artifact_findings(records: list[dict[str, Any]], *, threshold: float = 0.5,
                      max_findings: int = 3) -> dict[str, Any]:
    """Negative views with a reported finding whose peak lies on an artifact."""
    negatives = [r for r in records if r["label"] == 0]
    by_kind: dict[str, int] = {}
    hits = 0
    for r in negatives:
        shown = reported_findings(r["findings"], r["score"], threshold, max_findings)
        kinds = {k for f in shown if (k := _on_artifact(f["point"], r["artifacts"]))}
        hits += bool(kinds)
        for kind in kinds:
            by_kind[kind] = by_kind.get(kind, 0) + 1
    return {"negative_views": len(negatives), "views_with_finding_on_artifact": hits,
            "rate": hits / len(negatives) if negatives else float("nan"), "by_kind": by_kind}


def metrics_from_records(records: list[dict[str, Any]], classes: tuple[str, ...],
                         *, threshold: float = 0.5, max_findings: int = 3) -> dict[str, Any]:
    """All figures of the report, computed only from prediction records."""
    if not records:
        raise ValueError("no prediction records to evaluate")
    everything = records
    calibrated = all(r["domain"]["calibrated"] for r in records)
    passing = [r for r in records if r["domain"]["in_domain"]] if calibrated else records
    domain = {"calibrated": calibrated, "views": len(records), "passed": len(passing),
              "pass_rate": len(passing) / len(records)}
    if not passing:
        return {"views": 0, "domain": domain,
                "all_views": metrics_from_records(
                    [{**r, "domain": {**r["domain"], "calibrated": False}} for r in records],
                    classes, threshold=threshold, max_findings=max_findings)}
    records = passing
    labels = np.array([r["label"] for r in records], dtype=int)
    scores = np.array([r["score"] for r in records], dtype=float)
    out: dict[str, Any] = {"views": len(records), "positives": int(labels.sum()),
                           "threshold": threshold}
    out["binary"] = binary_metrics(labels, scores, threshold=threshold)

    label_set = next((k for k, v in LABEL_SETS.items() if v == tuple(classes)), None)
    if len(classes) > 2 and label_set is not None:
        truth = [view_class(r, label_set) for r in records]
        probs = np.array([[r["probabilities"][c] for c in classes] for r in records])
        out["multiclass"] = multiclass_metrics(truth, probs, list(classes))

    # Seed 000 §III box mAP: the best finding's box against the fracture boxes of positives.
    positives = [r for r in records if r["label"] == 1 and r["gt_boxes"]]
    if positives:
        pred_boxes = [r["findings"][0]["box"] if r["findings"] else None for r in positives]
        pred_scores = [r["findings"][0]["score"] if r["findings"] else 0.0 for r in positives]
        out["localization"] = box_map(pred_boxes, pred_scores, [r["gt_boxes"] for r in positives])
        # CAM peak inside a fracture box, over true positives.
        tps = [r for r in positives if r["score"] >= threshold]
        hits = sum(any(_inside(r["peak"], b) for b in r["gt_boxes"]) for r in tps)
        out["cam_peak_in_box"] = {"true_positives": len(tps),
                                  "rate": hits / len(tps) if tps else float("nan")}

    # Seed 003 FROC over all views (normals contribute false positives).
    per_image = [{float(t): boxes for t, boxes in r["froc_boxes"].items()} for r in records]
    result = froc(per_image, [r["gt_points"] for r in records])
    out["froc"] = {"froc_score": result["froc_score"],
                   "recall_at_0.1fp": result["recall_at_0.1fp"]}
    out["artifact_findings"] = artifact_findings(records, threshold=threshold,
                                                 max_findings=max_findings)
    out["domain"] = domain
    if calibrated:
        labels_all = np.array([r["label"] for r in everything], dtype=int)
        scores_all = np.array([r["score"] for r in everything], dtype=float)
        out["all_views"] = {"views": len(everything), "positives": int(labels_all.sum()),
                            "binary": binary_metrics(labels_all, scores_all,
                                                     threshold=threshold)}
    return out


def evaluate(
    model: FractureModel,
    root: Path,
    *,
    predictions_out: Path | None = None,
    batch_size: int = 8,
    max_findings: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict every view at ``root``, optionally write the records, and return the metrics."""
    records = predict_records(model, root, batch_size=batch_size, progress=progress)
    if predictions_out is not None:
        predictions_out = Path(predictions_out)
        predictions_out.parent.mkdir(parents=True, exist_ok=True)
        with predictions_out.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
    report = metrics_from_records(records, model.metadata.classes, threshold=0.5,
                                  max_findings=max_findings)
    report["model"] = {
        "name": model.metadata.name,
        "version": model.metadata.version,
        "model_type": model.metadata.model_type,
        "synthetic_demo": model.metadata.synthetic_demo,
        "notice": model.notice,
    }
    return report
