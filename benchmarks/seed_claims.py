"""The seed papers' central claims, checked on one fixed synthetic benchmark.

    .venv/bin/python benchmarks/seed_claims.py --threads 1  # default sizes: ~40 min, 1 core
    .venv/bin/python benchmarks/seed_claims.py --quick      # smoke run: every table, ~20 s
    .venv/bin/python benchmarks/seed_claims.py --methods 001 003 --epochs 20
    .venv/bin/python benchmarks/seed_claims.py --scale 4 --render-size 512 --input-size 256 \
        --epochs 30                                           # a GPU

On a CPU that other jobs share, pass ``--threads 1``: two OpenMP threads competing with other
processes stall each other (5x slower in our measurements).

Data (:func:`models.synth.generate_dataset`, cached under ``--work``) is split by seed:
training studies from seed 2001, test studies from seed 2003. ``models.train.train`` holds out
``TrainConfig.val_fraction`` of the training studies as validation for ``best.pt``. Hip studies
serve seeds 000/001/003 (the AO label set exists only for hips), wrist studies seed 004. Every
method gets the same budget (epochs, batch size, learning rate, augmentation, backbone, seed)
and is scored on the test split from its ``best.pt`` (two-stage: ``last.pt``) loaded with
:func:`models.registry.load_model`. The claims:

- seed 000 §IV.1-2 (Tables II-III): localization helps classification: F1 of STL (alpha > 0)
  and a-STN beat the global-pooling lower bound (LBM) with 2 and 3 classes; the classifier on
  ground-truth ROIs (UBM) is the upper bound.
- seed 001 §3 (Table 1): the two-stage chain ``ps1 * ps2`` beats its own stage 1
  (``ps1 = max p_ij``) on AUROC and S@R95.
- seed 003 Table 1-2: the Window Loss beats the degenerate binary disk (r_l = r_u, tau = 0)
  and GAP+CAM on FROC score and Recall@0.1.
- seed 004 §6.2.2 (Table 6.3): at-least-one (max) beats majority voting at study level
  (study accuracy); the learned aggregator (MVCNN, §5.3) is reported alongside.

Writes ``<out>/seed_claims.md`` and its JSON twin ``<out>/seed_claims.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.aggregation import aggregate_study
from models.augment import AUGMENT_PRESETS
from models.data import PreparedSet, prepare_dataset, study_batch
from models.evaluate import FROC_THRESHOLDS
from models.metrics import binary_metrics, froc_from_heatmaps, multiclass_metrics
from models.nets.localize_classify import LocalizerClassifier
from models.nets.two_stage import TwoStageMIL
from models.registry import FractureModel, load_model, model_type_spec
from models.synth import generate_dataset
from models.train import TrainConfig, train
from models.zoo.window_fpn import PAPER_INPUT_SIZE

SPLIT_SEEDS = {"train": 2001, "test": 2003}  # never the demo weights' 1000 / 7777
FROC_RADIUS_PAPER = 50.0  # seed 003 "Evaluation metrics": disks of radius 50 px at 1024 px


@dataclass(frozen=True)
class Setup:
    """Sizes and the training budget shared by every method."""

    train_studies: int = 200
    test_studies: int = 120
    render_size: int = 256
    input_size: int = 128
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    backbone: str = "resnet18"
    stages: int = 3
    width: int = 128  # transition layer, STL localization branch, FPN channels
    augment: str = "mild"
    # Weighted cross entropy (seed 000 eq. 1-2) rather than the class-balanced sampler: the
    # sampler draws K * n_min views per epoch, so rare AO type A would give the 3-class runs
    # far fewer steps than the binary ones; with weights every run sees every view each epoch.
    balance: str = "weights"
    bf16: bool = False
    threads: int | None = None
    data_workers: int = min(4, os.cpu_count() or 1)


# Tiny networks gain nothing from a second thread, and on a busy CPU OpenMP threads stall.
QUICK = dict(train_studies=20, test_studies=16, render_size=96, input_size=64, epochs=1,
             batch_size=8, stages=2, width=32, threads=1, data_workers=1)


@dataclass(frozen=True)
class Method:
    """One trained model: type, data and the options that make it the paper's variant."""

    key: str
    label: str
    model_type: str
    anatomy: str = "hip"
    label_set: str = "binary"
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = "best"  # "best" (validation AUROC) or "last"


METHODS: tuple[Method, ...] = (
    *(m for n, ls in ((2, "binary"), (3, "ao")) for m in (
        Method(f"lbm-{n}", "LBM: global pooling, AVG (§II.C.3)", "global_pool", label_set=ls),
        Method(f"stl-{n}", "STL, alpha 0.3 -> 0.7 (§II.C.2)", "stl", label_set=ls,
               options={"alpha": 0.3, "alpha_switch": 0.5}),
        Method(f"stn-{n}", "a-STN, similarity (§II.C.1)", "stn", label_set=ls,
               options={"transform": "similarity"}),
        Method(f"ubm-{n}", "localizer + ROI classifier (§II.B)", "localize_classify",
               label_set=ls),
    )),
    # The last checkpoint: stage 2 at the end of the same budget as every other method.
    Method("two_stage", "two-stage MIL (seed 001 §2)", "two_stage", checkpoint="last"),
    Method("window", "Window Loss, r_l 50, r_u 200, tau 2, MSE", "window_fpn",
           options={"r_l": 50, "r_u": 200, "tau": 2, "window_loss": "mse"}),
    Method("disk", "binary disk, r_l = r_u = 50, tau 0, MSE", "window_fpn",
           options={"r_l": 50, "r_u": 50, "tau": 0, "window_loss": "mse"}),
    Method("view-wrist", "per-view global pooling, AVG", "global_pool", anatomy="wrist"),
    Method("mvcnn", "MVCNN, view max pooling (seed 004 §5.3)", "mvcnn", anatomy="wrist"),
)
CLAIM_METHODS = {
    "000": ("lbm-2", "stl-2", "stn-2", "ubm-2", "lbm-3", "stl-3", "stn-3", "ubm-3"),
    "001": ("two_stage",),
    "003": ("window", "disk", "lbm-2"),
    "004": ("view-wrist", "mvcnn"),
}


# --- data --------------------------------------------------------------------------------


def _dataset(setup: Setup, work: Path, anatomy: str, split: str, studies: int) -> Path:
    seed = SPLIT_SEEDS[split]
    root = work / "data" / f"{anatomy}-{split}-seed{seed}-n{studies}-px{setup.render_size}"
    if not (root / "manifest.jsonl").is_file():
        generate_dataset(root, studies=studies, seed=seed, anatomy=anatomy,  # type: ignore[arg-type]
                         size=setup.render_size, workers=setup.data_workers)
    return root


def _binary(data: PreparedSet) -> PreparedSet:
    """The same views with fracture-vs-normal labels (AO types folded into "fracture")."""
    return dataclasses.replace(data, labels=(data.labels > 0).long(),
                               study_labels=(data.study_labels > 0).long())


def _describe(data: PreparedSet, seed: int) -> dict[str, Any]:
    return {"seed": seed, "studies": len(data.studies()), "views": len(data.labels),
            "positive_views": int((data.labels > 0).sum()),
            "positive_studies": sum(int(data.study_labels[g[0]] > 0)
                                    for g in data.studies().values())}


def load_data(setup: Setup, work: Path, anatomies: set[str]
              ) -> dict[tuple[str, str, str], PreparedSet]:
    """(anatomy, label set, split) -> prepared views at the input size."""
    out: dict[tuple[str, str, str], PreparedSet] = {}
    for anatomy in sorted(anatomies):
        for split, studies in (("train", setup.train_studies), ("test", setup.test_studies)):
            root = _dataset(setup, work, anatomy, split, studies)
            label_set = "ao" if anatomy == "hip" else "binary"
            data = prepare_dataset(root, size=setup.input_size, label_set=label_set)
            out[(anatomy, "binary", split)] = _binary(data)
            if label_set == "ao":
                out[(anatomy, "ao", split)] = data
    return out


# --- training and scoring ----------------------------------------------------------------


@dataclass
class Run:
    """A trained method: the checkpoint it is scored with, loaded, and its training cost."""

    method: Method
    model: FractureModel
    train_seconds: float
    steps: int
    epoch: int


def train_method(method: Method, setup: Setup, data: PreparedSet, run_dir: Path,
                 log: Callable[[str], None]) -> Run:
    """Train ``method`` on ``data`` with the shared budget and load the checkpoint to score."""
    options = dict(method.options)
    if method.model_type == "window_fpn":
        options["fpn_channels"] = setup.width
    config = TrainConfig(
        model_type=method.model_type, backbone=setup.backbone, stages=setup.stages,
        pooling="avg", transition_channels=setup.width, input_size=setup.input_size,
        label_set=method.label_set, balance=setup.balance, epochs=setup.epochs,
        batch_size=setup.batch_size, lr=setup.lr, seed=setup.seed,
        augment=AUGMENT_PRESETS[setup.augment], name=method.key, synthetic_demo=True,
        threads=setup.threads, bf16=setup.bf16, options=options)
    steps = 0

    def on_batch(step: int, total: int) -> None:
        nonlocal steps
        steps += 1

    def on_epoch(record: dict[str, Any]) -> None:
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in record.items())
        log(f"    {shown}")

    started = time.perf_counter()
    result = train(config, data, run_dir,
                   data_description={"kind": "synthetic", "seed": SPLIT_SEEDS["train"],
                                     "anatomy": method.anatomy},
                   on_epoch=on_epoch, on_batch=on_batch)
    seconds = time.perf_counter() - started
    history = result.summary["history"]
    if method.checkpoint == "last":
        return Run(method, load_model(result.last_checkpoint), seconds, steps, len(history))
    best = max(history, key=_selection_score)
    return Run(method, load_model(result.best_checkpoint), seconds, steps, int(best["epoch"]))


def _selection_score(record: dict[str, Any]) -> float:
    """The score ``train`` keeps ``best.pt`` by: validation AUROC, else minus the loss."""
    auroc = record.get("val_auroc", math.nan)
    return -record["train_loss"] if math.isnan(auroc) else auroc


def _batches(data: PreparedSet, size: int = 32) -> list[np.ndarray]:
    images = data.images.float().numpy()
    return [images[i:i + size] for i in range(0, len(images), size)]


def infer(model: FractureModel, data: PreparedSet) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, C) and input-grid heatmaps (N, S, S) of the prepared views."""
    parts = [model.infer_arrays(list(chunk)) for chunk in _batches(data)]
    return np.concatenate([p for p, _, _ in parts]), np.concatenate([h for _, h, _ in parts])


def network_outputs(model: FractureModel, data: PreparedSet,
                    fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> np.ndarray:
    """``fn(network, images, rois)`` over the views in batches, concatenated."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(data.labels), 32):
            images = data.images[start:start + 32].float().unsqueeze(1).to(model.device)
            rois = data.rois[start:start + 32].to(model.device)
            out.append(fn(model.network, images, rois).float().cpu().numpy())
    return np.concatenate(out)


def _gt_roi_probs(network: torch.nn.Module, images: torch.Tensor,
                  rois: torch.Tensor) -> torch.Tensor:
    """UBM (seed 000 §II.A): the ROI classifier on the ground-truth ROI crop (the predicted
    ROI where a view has none)."""
    if not isinstance(network, LocalizerClassifier):
        raise TypeError(f"expected a LocalizerClassifier, got {type(network).__name__}")
    boxes = torch.where(torch.isnan(rois), network.predict_boxes(images), rois)
    return torch.softmax(network.classifier(network.crop(images, boxes)).float(), dim=1)


def _chain_scores(network: torch.nn.Module, images: torch.Tensor,
                  rois: torch.Tensor) -> torch.Tensor:
    """Stage-1 ``ps1`` and chained ``ps1 * ps2`` (seed 001 §2.2) as columns (N, 2)."""
    if not isinstance(network, TwoStageMIL):
        raise TypeError(f"expected a TwoStageMIL, got {type(network).__name__}")
    ps1, ps2, *_ = network.chain(images)
    return torch.stack([ps1, ps1 * ps2], dim=1)


def view_scores(probs: np.ndarray, data: PreparedSet, classes: Sequence[str]) -> dict[str, Any]:
    """AUROC, S@R95, R@S95 and F1 of fracture vs normal; with 3+ classes also the
    support-weighted F1 and per-class F1 (seed 000 §III)."""
    truth = (data.labels.numpy() > 0).astype(int)
    b = binary_metrics(truth, 1.0 - probs[:, 0])
    out: dict[str, Any] = {k: b[k] for k in ("auroc", "s_at_r95", "r_at_s95", "f1", "accuracy",
                                             "sensitivity", "specificity")}
    if len(classes) > 2:
        m: dict[str, Any] = multiclass_metrics(data.labels.numpy(), probs, classes)
        out["f1_weighted"] = m["f1_weighted"]
        out["f1_per_class"] = {c: m["per_class"][c]["f1"] for c in classes}
    return out


def froc_scores(heatmaps: np.ndarray, data: PreparedSet, input_size: int) -> dict[str, float]:
    """Seed 003 FROC score and Recall@0.1 on the input grid (radius scaled from 1024 px)."""
    points = [[p.tolist() for p in view if not torch.isnan(p).any()] for view in data.points]
    result: dict[str, Any] = froc_from_heatmaps(
        list(heatmaps), points, FROC_THRESHOLDS,
        radius=FROC_RADIUS_PAPER * input_size / PAPER_INPUT_SIZE)
    return {"froc_score": float(result["froc_score"]),
            "recall_at_0.1fp": float(result["recall_at_0.1fp"])}


def study_scores(view_probability: np.ndarray, data: PreparedSet) -> dict[str, dict[str, float]]:
    """Study-level metrics of ALO (max) and majority voting (seed 004 §6.2.2).

    Sites are anatomy + laterality (as :func:`workers.routing.site_of`); the study truth is
    its ``study_label``. AUROC ranks the aggregated probability (for majority: the vote
    share); the fixed-point metrics come from each rule's positive/negative decision.
    """
    out = {}
    for rule in ("max", "majority"):
        truth, score, decision = [], [], []
        for members in data.studies().values():
            agg = aggregate_study([(f"{data.entries[i]['anatomy']} "
                                    f"{data.entries[i]['laterality']}",
                                    float(view_probability[i])) for i in members], rule)
            truth.append(int(data.study_labels[members[0]] > 0))
            score.append(agg.probability)
            decision.append(float(agg.positive))
        out[rule] = _study_metrics(truth, score, decision)
    return out


def _study_metrics(truth: Sequence[int], score: Sequence[float],
                   decision: Sequence[float]) -> dict[str, float]:
    fixed = binary_metrics(truth, decision, threshold=0.5)
    return {"auroc": binary_metrics(truth, score)["auroc"],
            **{k: fixed[k] for k in ("accuracy", "f1", "sensitivity", "specificity")}}


def mvcnn_scores(model: FractureModel, data: PreparedSet) -> dict[str, float]:
    """Study metrics of the learned aggregator: ``infer_study`` on the views of each study."""
    spec = model_type_spec(model.metadata.model_type)
    if spec.infer_study is None:
        raise TypeError(f"model type {model.metadata.model_type!r} is not study-level")
    uids = list(data.studies())
    probs = []
    with torch.inference_mode():
        for start in range(0, len(uids), 16):
            batch = study_batch(data, uids[start:start + 16]).to(model.device)
            assert batch.mask is not None  # study_batch always sets it
            probs.append(spec.infer_study(model.network, batch.images, batch.mask).float().cpu())
    score = (1.0 - torch.cat(probs)[:, 0]).numpy()
    truth = [int(data.study_labels[g[0]] > 0) for g in data.studies().values()]
    return _study_metrics(truth, score.tolist(), [float(s >= 0.5) for s in score])


# --- claims ------------------------------------------------------------------------------


def _check(label: str, ours: float, other: float) -> tuple[bool, str]:
    held = ours > other  # False when either is NaN
    return held, f"{label}: {ours:.3f} {'>' if held else 'not >'} {other:.3f}"


def _verdict(checks: list[tuple[bool, str]]) -> dict[str, str]:
    held = all(ok for ok, _ in checks)
    return {"verdict": "HELD" if held else "NOT HELD",
            "decided_by": "; ".join(text for _, text in checks)}


def _row(method: str, values: dict[str, Any], *runs: Run) -> dict[str, Any]:
    return {"method": method, **values,
            "train_s": round(sum(r.train_seconds for r in runs), 1),
            "steps": sum(r.steps for r in runs)}


def claim_000(results: dict[str, dict[str, Any]], runs: dict[str, Run]) -> dict[str, Any]:
    rows, checks = [], []
    for key, label in (("lbm", "LBM (lower bound)"), ("stl", "STL"), ("stn", "a-STN"),
                       ("ubm", "Sup.+UBM (predicted ROI)"), ("ubm_gt", "UBM (ground-truth ROI)")):
        run_key = "ubm" if key == "ubm_gt" else key
        two, three = results[f"{key}-2"], results[f"{key}-3"]
        per_class = three["f1_per_class"]
        rows.append(_row(label, {"f1_2": two["f1"], "auroc_2": two["auroc"],
                                 "f1_3": three["f1_weighted"], "f1_3_A": per_class["A"],
                                 "f1_3_B": per_class["B"], "f1_3_normal": per_class["normal"]},
                         runs[f"{run_key}-2"], runs[f"{run_key}-3"]))
    lbm2, lbm3 = results["lbm-2"]["f1"], results["lbm-3"]["f1_weighted"]
    for name in ("stl", "stn"):
        checks.append(_check(f"{name.upper()} F1 2 classes vs LBM", results[f"{name}-2"]["f1"],
                             lbm2))
        checks.append(_check(f"{name.upper()} F1 3 classes vs LBM",
                             results[f"{name}-3"]["f1_weighted"], lbm3))
    return {
        "seed": "000",
        "title": "Localization helps classification (seed 000 §IV, Tables II-III)",
        "claim": "F1 of STL (alpha > 0) and a-STN is above the global-pooling lower bound "
                 "(LBM) with 2 and 3 classes; the classifier on ground-truth ROIs is the "
                 "upper bound.",
        "columns": {"f1_2": "F1 fracture (2 cl.)", "auroc_2": "AUROC (2 cl.)",
                    "f1_3": "F1 weighted (3 cl.)", "f1_3_normal": "F1 N", "f1_3_A": "F1 A",
                    "f1_3_B": "F1 B"},
        "rows": rows,
        "note": "Each row sums the training time and steps of its 2- and 3-class runs. The "
                "UBM rows share one localize_classify network per label set (trained on "
                "ground-truth ROI crops, seed 000 §II.B): 'predicted ROI' crops where its "
                "localizer points, 'ground-truth ROI' where the manifest's roi_box is.",
        **_verdict(checks),
    }


def claim_001(results: dict[str, dict[str, Any]], runs: dict[str, Run]) -> dict[str, Any]:
    stage1, chain = results["two_stage-stage1"], results["two_stage"]
    run = runs["two_stage"]
    rows = [_row("stage 1 alone (ps1 = max p_ij)", stage1, run),
            _row("two-stage chain (ps1 * ps2)", chain, run)]
    return {
        "seed": "001",
        "title": "The two-stage chain beats its stage 1 (seed 001 §3, Table 1)",
        "claim": "Chaining the ROI classifier (stage 2) onto the MIL FCN (stage 1) raises "
                 "AUROC and S@R95 over stage 1 alone.",
        "columns": {"auroc": "AUROC", "s_at_r95": "S@R95", "r_at_s95": "R@S95"},
        "rows": rows,
        "note": "Both rows come from the same trained network, its last checkpoint (the end "
                "of stage 2's training, the same budget as every other method); training time "
                "is counted once.",
        **_verdict([_check("AUROC chain vs stage 1", chain["auroc"], stage1["auroc"]),
                    _check("S@R95 chain vs stage 1", chain["s_at_r95"], stage1["s_at_r95"])]),
    }


def claim_003(results: dict[str, dict[str, Any]], runs: dict[str, Run]) -> dict[str, Any]:
    window, disk, gap = results["window"], results["disk"], results["lbm-2"]
    rows = [_row("Window Loss (r_l 50, r_u 200, tau 2)", window, runs["window"]),
            _row("binary disk (r_l = r_u = 50, tau 0)", disk, runs["disk"]),
            _row("GAP+CAM (global_pool AVG)", gap, runs["lbm-2"])]
    checks = []
    for metric, name in (("froc_score", "FROC score"), ("recall_at_0.1fp", "Recall@0.1")):
        checks.append(_check(f"{name} window vs disk", window[metric], disk[metric]))
        checks.append(_check(f"{name} window vs GAP+CAM", window[metric], gap[metric]))
    return {
        "seed": "003",
        "title": "The Window Loss beats the binary disk and GAP+CAM (seed 003 Tables 1-2)",
        "claim": "FROC score and Recall@0.1 of the Window Loss exceed those of its degenerate "
                 "binary-disk setting and of GAP+CAM.",
        "columns": {"froc_score": "FROC score", "recall_at_0.1fp": "Recall@0.1",
                    "auroc": "AUROC"},
        "rows": rows,
        "note": "Radii r_l, r_u, tau and the FROC disk radius (50) are paper pixels at "
                "1024 px, scaled to the input size. GAP+CAM is the 2-class LBM run of seed 000.",
        **_verdict(checks),
    }


def claim_004(results: dict[str, dict[str, Any]], runs: dict[str, Run]) -> dict[str, Any]:
    alo, majority = results["view-wrist-max"], results["view-wrist-majority"]
    learned = results["mvcnn"]
    view = runs["view-wrist"]
    rows = [_row("per-view model, view level", results["view-wrist"], view),
            _row("per-view model + ALO (max)", alo, view),
            _row("per-view model + majority vote", majority, view),
            _row("MVCNN (learned, view max pooling)", learned, runs["mvcnn"])]
    verdict = _verdict([_check("study accuracy ALO vs majority", alo["accuracy"],
                               majority["accuracy"])])
    verdict["decided_by"] += (f"; (reported, not part of the verdict) MVCNN study accuracy "
                              f"{learned['accuracy']:.3f}, AUROC {learned['auroc']:.3f} vs "
                              f"ALO {alo['accuracy']:.3f}, {alo['auroc']:.3f}")
    return {
        "seed": "004",
        "title": "At least one beats majority voting at study level (seed 004 §6.2.2, "
                 "Table 6.3)",
        "claim": "Study accuracy with at-least-one (max) aggregation exceeds majority voting; "
                 "the learned multi-view aggregator (MVCNN, §5.3) is reported as it comes.",
        "columns": {"accuracy": "accuracy", "auroc": "AUROC", "f1": "F1",
                    "sensitivity": "sensitivity", "specificity": "specificity"},
        "rows": rows,
        "note": "Study truth: a fracture anywhere in the study (visible in the view or not). "
                "Fixed-point metrics at probability 0.5; majority AUROC ranks the vote share. "
                "The view-level row scores views against their own (visible) label.",
        **verdict,
    }


CLAIMS = {"000": claim_000, "001": claim_001, "003": claim_003, "004": claim_004}


# --- evaluation of every run -------------------------------------------------------------


def evaluate_run(run: Run, test: PreparedSet, setup: Setup) -> dict[str, dict[str, Any]]:
    """Metric dicts keyed by result name (a run can yield several, e.g. UBM GT/predicted)."""
    key, kind = run.method.key, run.method.model_type
    probs, heatmaps = infer(run.model, test)
    classes = run.model.metadata.classes
    out = {key: view_scores(probs, test, classes)}
    if kind == "localize_classify":
        gt = network_outputs(run.model, test, _gt_roi_probs)
        out[key.replace("ubm", "ubm_gt")] = view_scores(gt, test, classes)
    elif kind == "two_stage":
        scores = network_outputs(run.model, test, _chain_scores)
        stage1 = np.stack([1.0 - scores[:, 0], scores[:, 0]], axis=1)
        out[f"{key}-stage1"] = view_scores(stage1, test, ("normal", "fracture"))
    if key in CLAIM_METHODS["003"]:
        out[key].update(froc_scores(heatmaps, test, setup.input_size))
    if key == "view-wrist":
        for rule, metrics in study_scores(1.0 - probs[:, 0], test).items():
            out[f"{key}-{rule}"] = metrics
    elif kind == "mvcnn":
        out[key] = mvcnn_scores(run.model, test)
    return out


def select(names: Sequence[str] | None) -> tuple[list[Method], list[str]]:
    """Methods to run and claims to report for ``--methods`` (method keys or claim seeds)."""
    by_key = {m.key: m for m in METHODS}
    wanted: set[str] = set()
    for name in names or list(CLAIM_METHODS):
        if name in CLAIM_METHODS:
            wanted.update(CLAIM_METHODS[name])
        elif name in by_key:
            wanted.add(name)
        else:
            raise SystemExit(f"unknown method or claim {name!r}; methods: {sorted(by_key)}, "
                             f"claims: {sorted(CLAIM_METHODS)}")
    claims = [c for c, keys in CLAIM_METHODS.items() if set(keys) <= wanted]
    return [m for m in METHODS if m.key in wanted], claims


def _device() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def run_benchmark(setup: Setup, names: Sequence[str] | None, work: Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and score the selected methods; the report as a JSON-ready dict."""
    methods, claims = select(names)
    started = time.perf_counter()
    if setup.threads:
        torch.set_num_threads(setup.threads)
    log(f"data: {setup.train_studies} training + {setup.test_studies} test studies per "
        f"anatomy, rendered at {setup.render_size} px, model input {setup.input_size} px")
    data = load_data(setup, work, {m.anatomy for m in methods})
    log(f"data ready in {time.perf_counter() - started:.1f} s")
    runs: dict[str, Run] = {}
    results: dict[str, dict[str, Any]] = {}
    eval_seconds: dict[str, float] = {}
    for n, method in enumerate(methods, start=1):
        log(f"[{n}/{len(methods)}] {method.key}: {method.label} ({method.model_type}, "
            f"{method.anatomy}, {method.label_set})")
        train_set = data[(method.anatomy, method.label_set, "train")]
        run = train_method(method, setup, train_set, work / "runs" / method.key, log)
        tic = time.perf_counter()
        results.update(evaluate_run(run, data[(method.anatomy, method.label_set, "test")],
                                    setup))
        eval_seconds[method.key] = time.perf_counter() - tic
        runs[method.key] = run
        log(f"    trained in {run.train_seconds:.1f} s ({run.steps} steps, scoring the "
            f"{method.checkpoint} checkpoint, epoch {run.epoch}), evaluated in "
            f"{eval_seconds[method.key]:.1f} s")
    splits = {f"{anatomy}/{split}": _describe(data[(anatomy, "binary", split)],
                                              SPLIT_SEEDS[split])
              for anatomy in sorted({m.anatomy for m in methods}) for split in SPLIT_SEEDS}
    return {
        "setup": {**dataclasses.asdict(setup), "split_seeds": SPLIT_SEEDS,
                  "validation": "TrainConfig.val_fraction "
                                f"({TrainConfig.val_fraction}) of the training studies",
                  "device": _device(), "torch": torch.__version__,
                  "python": platform.python_version(),
                  "total_seconds": round(time.perf_counter() - started, 1)},
        "data": splits,
        "runs": {k: {"model_type": r.method.model_type, "label": r.method.label,
                     "anatomy": r.method.anatomy, "label_set": r.method.label_set,
                     "options": r.method.options, "train_seconds": round(r.train_seconds, 1),
                     "eval_seconds": round(eval_seconds[k], 1), "steps": r.steps,
                     "epoch": r.epoch} for k, r in runs.items()},
        "results": results,
        "claims": [CLAIMS[c](results, runs) for c in claims],
    }


# --- report ------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    s = report["setup"]
    lines = ["# Seed papers' claims on the synthetic benchmark", "",
             "Generated by `benchmarks/seed_claims.py`; synthetic data only (models.synth), "
             "so the verdicts say whether each mechanism shows its effect here, not whether "
             "the paper is right on radiographs.", "", "## Setup", "",
             f"- seeds: training data {s['split_seeds']['train']}, test data "
             f"{s['split_seeds']['test']}; validation: {s['validation']}; training seed "
             f"{s['seed']}",
             f"- images rendered at {s['render_size']} px, model input {s['input_size']} px",
             f"- budget for every method: {s['epochs']} epochs, batch size {s['batch_size']}, "
             f"AdamW lr {s['lr']} (one-cycle), augmentation `{s['augment']}`, "
             f"{s['backbone']} with {s['stages']} stages, head width {s['width']}, "
             f"bf16 {s['bf16']}, class balance `{s['balance']}`",
             f"- device: {s['device']}; torch {s['torch']}, Python {s['python']}; "
             f"total wall time {s['total_seconds']:.0f} s", "",
             "| split | seed | studies | views | positive views | positive studies |",
             "|---|---|---|---|---|---|"]
    for name, d in report["data"].items():
        lines.append(f"| {name} | {d['seed']} | {d['studies']} | {d['views']} | "
                     f"{d['positive_views']} | {d['positive_studies']} |")
    lines += ["", "| run | model type | label set | options | steps | epoch scored | train s | "
              "eval s |", "|---|---|---|---|---|---|---|---|"]
    for key, r in report["runs"].items():
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        lines.append(f"| {key} | {r['model_type']} | {r['label_set']} | {options} | "
                     f"{r['steps']} | {r['epoch']} | {r['train_seconds']:.1f} | "
                     f"{r['eval_seconds']:.1f} |")
    for claim in report["claims"]:
        columns = claim["columns"]
        lines += ["", f"## Seed {claim['seed']}: {claim['title']}", "", claim["claim"], "",
                  "| method | " + " | ".join(columns.values()) + " | train s | steps |",
                  "|---" * (len(columns) + 3) + "|"]
        for row in claim["rows"]:
            cells = [_cell(row[k]) for k in columns] + [f"{row['train_s']:.1f}",
                                                        str(row["steps"])]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        lines += ["", claim["note"], "",
                  f"**{claim['verdict']}**: {claim['decided_by']}"]
    return "\n".join(lines) + "\n"


def _json_safe(value: Any) -> Any:
    """NaN as null, so the JSON twin is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def parse_args(argv: Sequence[str] | None) -> tuple[Setup, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and 1 epoch: a smoke run that writes every table")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--render-size", type=int, help="synthetic image size in pixels")
    parser.add_argument("--train-studies", type=int, help="per anatomy")
    parser.add_argument("--test-studies", type=int, help="per anatomy")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the training and test study counts (larger GPU runs)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int, help="training seed (initialisation, sampling)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--bf16", action="store_true", default=None, help="bfloat16 autocast")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="method keys or claim seeds (000 001 003 004); default all")
    parser.add_argument("--work", type=Path, default=Path("runs/seed-claims"),
                        help="data cache and training runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="where seed_claims.md and seed_claims.json go")
    args = parser.parse_args(argv)
    base = Setup(**QUICK) if args.quick else Setup()  # type: ignore[arg-type]
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Setup)
             if getattr(args, f.name, None) is not None}
    setup = dataclasses.replace(base, **given)
    setup = dataclasses.replace(
        setup, train_studies=max(4, round(setup.train_studies * args.scale)),
        test_studies=max(4, round(setup.test_studies * args.scale)))
    return setup, args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    setup, args = parse_args(argv)
    report = run_benchmark(setup, args.methods, args.work)
    text = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seed_claims.md").write_text(text, encoding="utf-8")
    (args.out / "seed_claims.json").write_text(
        json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    print()
    print(text)
    print(f"wrote {args.out / 'seed_claims.md'} and {args.out / 'seed_claims.json'}")
    return report


if __name__ == "__main__":
    main()
