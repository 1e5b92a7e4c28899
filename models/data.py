"""Training and evaluation data: a folder of DICOM files with a ground-truth manifest.

The manifest (``manifest.jsonl``, one JSON object per view) is the format written by
:mod:`models.synth`; any data set converted to it can be used to train and evaluate. Views
are decoded and preprocessed once (:func:`prepare_dataset`) and kept in memory as the model
input, so epochs cost only the network.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import cv2
import numpy as np
import pydicom
import torch
from torch.utils.data import Dataset

from .augment import Augmenter
from .preprocess import Affine2D, PreparedView, prepare_view
from .supervision import MAX_BOXES, MAX_POINTS, MAX_VIEWS, TrainBatch
from .synth import MANIFEST_NAME
from .synth import read_manifest as read_manifest_lines

if TYPE_CHECKING:
    from .preprocess.pipeline import ResizeMode

__all__ = [
    "LABEL_SETS",
    "MANIFEST_NAME",
    "AugmentedStudies",
    "AugmentedViews",
    "PreparedSet",
    "collate_batch",
    "prepare_dataset",
    "read_manifest",
    "split_by_study",
    "study_batch",
    "view_batch",
    "view_class",
]

REQUIRED_KEYS = ("path", "sop_instance_uid", "study_instance_uid", "label")
# Label sets of the seeds: fracture vs normal (all seeds), AO type A/B (seed 000 §III, 3
# classes), Garden non-displaced I/II vs displaced III/IV (seed 002).
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "binary": ("normal", "fracture"),
    "ao": ("normal", "A", "B"),
    "garden": ("normal", "I-II", "III-IV"),
}


def read_manifest(root: Path) -> list[dict[str, Any]]:
    """The manifest entries of the data set at ``root``, each checked for required keys."""
    entries = read_manifest_lines(root)
    for number, entry in enumerate(entries, start=1):
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ValueError(f"{Path(root) / MANIFEST_NAME}: view {number}: missing keys {missing}")
    if not entries:
        raise ValueError(f"{Path(root) / MANIFEST_NAME} lists no views")
    return entries


def view_class(entry: dict[str, Any], label_set: str) -> int:
    """Index of the view's class in ``LABEL_SETS[label_set]``.

    The image-level truth is ``label`` (a fracture visible in this view); a view whose
    fracture is hidden counts as normal for image-level training.
    """
    names = LABEL_SETS.get(label_set)
    if names is None:
        raise ValueError(f"label set must be one of {sorted(LABEL_SETS)}, got {label_set!r}")
    if int(entry["label"]) == 0:
        return 0
    if label_set == "binary":
        return 1
    key = "class_ao" if label_set == "ao" else "class_garden"
    value = entry.get(key)
    if value not in names[1:]:
        raise ValueError(f"view {entry['sop_instance_uid']}: {key}={value!r} not in {names[1:]}")
    return names.index(value)


def study_class(entry: dict[str, Any], label_set: str) -> int:
    """Index of the view's study class: a fracture anywhere in the study, seen here or not."""
    study_label = int(entry.get("study_label", entry["label"]))
    return view_class({**entry, "label": study_label}, label_set)


def split_by_study(
    entries: Sequence[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices of (train, validation) views, split by study so no study is on both sides."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must lie in [0, 1), got {fraction}")
    studies = sorted({e["study_instance_uid"] for e in entries})
    rng = np.random.default_rng(seed)
    rng.shuffle(studies)
    held = set(studies[: round(len(studies) * fraction)])
    train = [i for i, e in enumerate(entries) if e["study_instance_uid"] not in held]
    val = [i for i, e in enumerate(entries) if e["study_instance_uid"] in held]
    return train, val


@dataclass
class PreparedSet:
    """Views preprocessed to the model input, with labels and input-grid geometry.

    ``rois`` is the anatomical ROI (femoral head/neck or distal radius, the manifest's
    ``roi_box``); ``boxes`` and ``points`` are the visible fracture sites, NaN-padded to
    ``MAX_BOXES``/``MAX_POINTS`` rows; ``study_labels`` the class of the view's study.
    """

    root: Path
    entries: list[dict[str, Any]]
    views: list[PreparedView]
    images: torch.Tensor  # (N, S, S) float16 in [0, 1]
    labels: torch.Tensor  # (N,) long
    rois: torch.Tensor  # (N, 4) float32 XYXY on the input grid, NaN where unknown
    boxes: torch.Tensor  # (N, MAX_BOXES, 4) float32, NaN rows as padding
    points: torch.Tensor  # (N, MAX_POINTS, 2) float32, NaN rows as padding
    study_labels: torch.Tensor  # (N,) long

    def subset(self, indices: Sequence[int]) -> PreparedSet:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return PreparedSet(
            root=self.root,
            entries=[self.entries[i] for i in indices],
            views=[self.views[i] for i in indices],
            images=self.images[idx],
            labels=self.labels[idx],
            rois=self.rois[idx],
            boxes=self.boxes[idx],
            points=self.points[idx],
            study_labels=self.study_labels[idx],
        )

    def keep_inside(self, index: int) -> torch.Tensor | None:
        """The box augmentation must keep in the image: ROI and fracture boxes together."""
        rows = torch.cat([self.rois[index].view(1, 4), self.boxes[index]])
        rows = rows[~torch.isnan(rows).any(dim=1)]
        if len(rows) == 0:
            return None
        return torch.stack([rows[:, 0].min(), rows[:, 1].min(), rows[:, 2].max(),
                            rows[:, 3].max()])

    def studies(self) -> dict[str, list[int]]:
        """Study Instance UID -> indices of its views, in manifest order."""
        out: dict[str, list[int]] = {}
        for i, entry in enumerate(self.entries):
            out.setdefault(entry["study_instance_uid"], []).append(i)
        return out


def _padded(rows: list[list[float]], limit: int, width: int) -> list[list[float]]:
    rows = rows[:limit]
    return rows + [[float("nan")] * width] * (limit - len(rows))


def _geometry_on_input(entry: dict[str, Any], transform: Affine2D
                       ) -> tuple[list[float], list[list[float]], list[list[float]]]:
    roi = ([float(v) for v in transform.apply_box(entry["roi_box"])] if entry.get("roi_box")
           else [float("nan")] * 4)
    boxes = [[float(v) for v in transform.apply_box(b)] for b in entry.get("boxes") or []]
    points = [[float(v) for v in transform.apply(p)] for p in entry.get("points") or []]
    return roi, _padded(boxes, MAX_BOXES, 4), _padded(points, MAX_POINTS, 2)


def _prepare_one(job: tuple[Path, dict[str, Any], int, str, ResizeMode, bool, bool]
                 ) -> tuple[PreparedView, int, int, list[float], list[list[float]],
                            list[list[float]]]:
    """Decode and preprocess one manifest entry (top level, so worker processes can run it)."""
    root, entry, size, label_set, mode, align, heuristic_inversion = job
    file = (root / entry["path"]).resolve()
    if root.resolve() not in file.parents:
        raise ValueError(f"manifest path escapes the data set: {entry['path']!r}")
    view = prepare_view(pydicom.dcmread(file), size=size, mode=mode, align=align,
                        heuristic_inversion=heuristic_inversion)
    roi, view_boxes, view_points = _geometry_on_input(entry, view.transform)
    return (view, view_class(entry, label_set), study_class(entry, label_set), roi, view_boxes,
            view_points)


def _init_prepare_worker() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def prepare_dataset(
    root: Path,
    *,
    size: int,
    label_set: str = "binary",
    mode: ResizeMode = "pad",
    align: bool = False,
    heuristic_inversion: bool = False,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedSet:
    """Decode and preprocess every view listed in ``root``'s manifest once.

    ``workers`` > 1 spreads the views over that many processes; the result is the same, in
    manifest order, for any number.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    root = Path(root)
    entries = read_manifest(root)
    jobs = [(root, e, size, label_set, mode, align, heuristic_inversion) for e in entries]
    views, labels, study_labels, rois, boxes, points = [], [], [], [], [], []

    def collect(results: Iterator[tuple[Any, ...]]) -> None:
        for n, (view, label, study_label, roi, view_boxes, view_points) in enumerate(
                results, start=1):
            views.append(view)
            labels.append(label)
            study_labels.append(study_label)
            rois.append(roi)
            boxes.append(view_boxes)
            points.append(view_points)
            if progress is not None:
                progress(n, len(entries))

    if workers == 1 or len(jobs) < 2:
        collect(map(_prepare_one, jobs))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_prepare_worker) as pool:
            collect(pool.imap(_prepare_one, jobs, chunksize=8))
    images = torch.from_numpy(np.stack([v.image for v in views]).astype(np.float16))
    return PreparedSet(
        root=root,
        entries=entries,
        views=views,
        images=images,
        labels=torch.as_tensor(labels, dtype=torch.long),
        rois=torch.as_tensor(rois, dtype=torch.float32),
        boxes=torch.as_tensor(boxes, dtype=torch.float32),
        points=torch.as_tensor(points, dtype=torch.float32),
        study_labels=torch.as_tensor(study_labels, dtype=torch.long),
    )


ViewSample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class AugmentedViews(Dataset[ViewSample]):
    """(image (1, S, S), class, roi (4,), boxes, points) per view, augmented reproducibly.

    Call :meth:`set_epoch` before each epoch: the random stream of a sample depends only on
    (seed, epoch, index), so runs repeat exactly whatever the loader order. Boxes and points
    follow the image through the augmentation; the ROI box is moved as a box.
    """

    def __init__(self, data: PreparedSet, *, augmenter: Augmenter | None = None,
                 seed: int = 0) -> None:
        self.data = data
        self.augmenter = augmenter
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, index: int) -> ViewSample:
        d = self.data
        image = d.images[index].float().unsqueeze(0)
        # with_geometry's types; None only when given None
        stacked: torch.Tensor | None
        points: torch.Tensor | None
        roi, boxes, points = d.rois[index], d.boxes[index], d.points[index]
        if self.augmenter is not None:
            g = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
            )
            stacked = torch.cat([roi.view(1, 4), boxes])
            image, stacked, points = self.augmenter.with_geometry(
                image, d.keep_inside(index), g, boxes=stacked, points=points)
            assert stacked is not None and points is not None
            roi, boxes = stacked[0], stacked[1:]
        return image, d.labels[index], roi, boxes, points


class AugmentedStudies(Dataset[tuple[ViewSample, torch.Tensor]]):
    """Whole studies for study-level models: views padded to ``MAX_VIEWS``, study label.

    Studies with more than ``MAX_VIEWS`` views keep their first ``MAX_VIEWS``.
    """

    def __init__(self, data: PreparedSet, *, augmenter: Augmenter | None = None,
                 seed: int = 0) -> None:
        self.views = AugmentedViews(data, augmenter=augmenter, seed=seed)
        self.groups = list(data.studies().values())
        self.labels = [int(data.study_labels[g[0]]) for g in self.groups]

    def set_epoch(self, epoch: int) -> None:
        self.views.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> tuple[ViewSample, torch.Tensor]:
        members = self.groups[index][:MAX_VIEWS]
        samples = [self.views[i] for i in members]
        mask = torch.zeros(MAX_VIEWS, dtype=torch.bool)
        mask[: len(samples)] = True
        pad = MAX_VIEWS - len(samples)
        stacked = [torch.stack([s[k] for s in samples]) for k in (0, 2, 3, 4)]
        images, rois, boxes, points = (
            torch.cat([t, torch.full((pad, *t.shape[1:]), fill, dtype=t.dtype)])
            for t, fill in zip(stacked, (0.0, float("nan"), float("nan"), float("nan")),
                               strict=True))
        label = torch.as_tensor(self.labels[index], dtype=torch.long)
        return (images, label, rois, boxes, points), mask


def collate_batch(samples: Sequence[Any]) -> TrainBatch:
    """Collate :class:`AugmentedViews` or :class:`AugmentedStudies` samples to a batch."""
    if isinstance(samples[0][1], torch.Tensor) and samples[0][1].dtype == torch.bool:
        fields = [torch.stack([s[0][k] for s in samples]) for k in range(5)]
        return TrainBatch(  # the five fields: images, labels, rois, boxes, points
            *cast("tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]",
                  fields), mask=torch.stack([s[1] for s in samples]))
    fields = [torch.stack([s[k] for s in samples]) for k in range(5)]
    return TrainBatch(*fields)


def view_batch(data: PreparedSet, indices: Sequence[int]) -> TrainBatch:
    """The views at ``indices`` as one un-augmented view-level batch."""
    views = AugmentedViews(data)
    return collate_batch([views[i] for i in indices])


def study_batch(data: PreparedSet, study_uids: Sequence[str]) -> TrainBatch:
    """The studies ``study_uids`` as one un-augmented study-level batch."""
    studies = AugmentedStudies(data)
    order = {uid: n for n, uid in enumerate(data.studies())}
    missing = [u for u in study_uids if u not in order]
    if missing:
        raise KeyError(f"studies not in the data set: {missing}")
    return collate_batch([studies[order[u]] for u in study_uids])
