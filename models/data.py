"""Training and evaluation data: a folder of DICOM files with a ground-truth manifest.

The manifest (``manifest.jsonl``, one JSON object per view) is the format written by
:mod:`models.synth`; any data set converted to it can be used to train and evaluate. Views
are decoded and preprocessed once (:func:`prepare_dataset`) and kept in memory as the model
input, so epochs cost only the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from torch.utils.data import Dataset

from .augment import Augmenter
from .preprocess import Affine2D, PreparedView, prepare_view
from .synth import MANIFEST_NAME
from .synth import read_manifest as read_manifest_lines

__all__ = [
    "LABEL_SETS",
    "MANIFEST_NAME",
    "AugmentedViews",
    "PreparedSet",
    "prepare_dataset",
    "read_manifest",
    "split_by_study",
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
    """Views preprocessed to the model input, with labels and input-grid ROI boxes."""

    root: Path
    entries: list[dict[str, Any]]
    views: list[PreparedView]
    images: torch.Tensor  # (N, S, S) float16 in [0, 1]
    labels: torch.Tensor  # (N,) long
    rois: torch.Tensor  # (N, 4) float32 XYXY on the input grid, NaN where unknown

    def subset(self, indices: Sequence[int]) -> PreparedSet:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return PreparedSet(
            root=self.root,
            entries=[self.entries[i] for i in indices],
            views=[self.views[i] for i in indices],
            images=self.images[idx],
            labels=self.labels[idx],
            rois=self.rois[idx],
        )


def _roi_on_input(entry: dict[str, Any], transform: Affine2D) -> list[float]:
    boxes = list(entry.get("boxes") or [])
    if entry.get("roi_box"):
        boxes.append(entry["roi_box"])
    if not boxes:
        return [float("nan")] * 4
    mapped = np.array([transform.apply_box(b) for b in boxes], dtype=np.float64)
    return [float(mapped[:, 0].min()), float(mapped[:, 1].min()),
            float(mapped[:, 2].max()), float(mapped[:, 3].max())]


def prepare_dataset(
    root: Path,
    *,
    size: int,
    label_set: str = "binary",
    mode: str = "pad",
    align: bool = False,
    heuristic_inversion: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedSet:
    """Decode and preprocess every view listed in ``root``'s manifest once."""
    root = Path(root)
    entries = read_manifest(root)
    views, labels, rois = [], [], []
    for n, entry in enumerate(entries, start=1):
        file = (root / entry["path"]).resolve()
        if root.resolve() not in file.parents:
            raise ValueError(f"manifest path escapes the data set: {entry['path']!r}")
        view = prepare_view(pydicom.dcmread(file), size=size, mode=mode, align=align,
                            heuristic_inversion=heuristic_inversion)
        views.append(view)
        labels.append(view_class(entry, label_set))
        rois.append(_roi_on_input(entry, view.transform))
        if progress is not None:
            progress(n, len(entries))
    images = torch.from_numpy(np.stack([v.image for v in views]).astype(np.float16))
    return PreparedSet(
        root=root,
        entries=entries,
        views=views,
        images=images,
        labels=torch.as_tensor(labels, dtype=torch.long),
        rois=torch.as_tensor(rois, dtype=torch.float32),
    )


class AugmentedViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image (1, S, S) float32, class) pairs; augmented reproducibly when ``augmenter`` is set.

    Call :meth:`set_epoch` before each epoch: the random stream of a sample depends only on
    (seed, epoch, index), so runs repeat exactly whatever the loader order.
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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.data.images[index].float().unsqueeze(0)
        if self.augmenter is not None:
            g = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
            )
            roi = self.data.rois[index]
            image = self.augmenter(image, None if torch.isnan(roi).any() else roi, g)
        return image, self.data.labels[index]
