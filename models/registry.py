"""Model registry and the inference contract the workers call.

A model is a checkpoint file that carries its own metadata (:class:`ModelMetadata`): model
type, classes, input size, preprocessing, training data and recipe, version, and whether it
is a synthetic-data demo. :func:`load_model` reads it (``torch.load(weights_only=True)``: a
checkpoint can never execute code) and returns a :class:`FractureModel`.

The inference contract
----------------------
``FractureModel.predict(views)`` takes a sequence of views, each a ``pydicom.Dataset`` of a
radiograph or an already :class:`~models.preprocess.PreparedView`, and returns one
:class:`ViewPrediction` per view, in order:

- ``probabilities``: class name -> probability (sums to 1; class 0 is ``"normal"``);
- ``fracture_probability``: ``1 - probabilities["normal"]``;
- ``heatmap``: float32 array on the view's **original** pixel grid (Rows x Columns), values
  in [0, 1], the per-pixel fracture evidence;
- ``findings``: fracture candidates, highest score first, each with a score, a point and a
  box in original pixel coordinates ((x, y) = (column, row), centre of the top-left pixel at
  (0, 0)).

Views are batched, run under ``torch.inference_mode`` on CUDA when available (else CPU).
A view that cannot be decoded raises :class:`~models.preprocess.PreprocessError` from
:meth:`FractureModel.prepare`; callers that must not fail a whole study prepare each view
first and pass the prepared ones to ``predict``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from torch import nn

from .findings import FINDING_EXTENT, Finding, extract_findings
from .preprocess import PreparedView, prepare_view, warp_to_original
from .supervision import TrainingSpec

__all__ = [
    "BUILTIN_MODEL_TYPES",
    "CHECKPOINT_FORMAT",
    "DEMO_WEIGHTS",
    "FINDING_EXTENT",
    "Finding",
    "FractureModel",
    "ModelMetadata",
    "ModelTypeSpec",
    "ViewPrediction",
    "load_model",
    "model_type_spec",
    "model_types",
    "register_model_type",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "pacs-node-model/1"
DEMO_WEIGHTS = Path(__file__).parent / "weights" / "demo_global_pool.pt"
SYNTHETIC_NOTICE = (
    "Trained only on synthetic radiographs: a software demonstration, not for diagnostic "
    "or clinical use."
)


@dataclass(frozen=True)
class ModelMetadata:
    """What a checkpoint says about its model (STYLE.md #9)."""

    model_type: str
    name: str
    version: str
    classes: tuple[str, ...]
    input_size: int
    architecture: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=lambda: {"mode": "pad", "align": False})
    training: dict[str, Any] = field(default_factory=dict)
    synthetic_demo: bool = False
    intended_use: str = ""
    finding_threshold: float = 0.5

    def __post_init__(self) -> None:
        if len(self.classes) < 2 or self.classes[0] != "normal":
            raise ValueError(
                f"classes must start with 'normal' and have 2+ entries: {self.classes}"
            )
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32, got {self.input_size}")
        if not 0.0 < self.finding_threshold < 1.0:
            raise ValueError(f"finding_threshold must lie in (0, 1), got {self.finding_threshold}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown checkpoint metadata keys: {sorted(unknown)}")
        return cls(**{**data, "classes": tuple(data["classes"])})


@dataclass(frozen=True)
class ViewPrediction:
    """The model's answer for one view (see the module docstring)."""

    probabilities: dict[str, float]
    fracture_probability: float
    heatmap: np.ndarray
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class ModelTypeSpec:
    """How to build a model type's network, run it and train it.

    ``build(**architecture)`` returns the network; ``infer(network, batch)`` maps a float
    batch (N, 1, S, S) to class probabilities (N, C) and heatmaps (N, S, S) in [0, 1].
    ``training`` (:class:`models.supervision.TrainingSpec`) makes the type trainable by
    ``pacs-node train``. A study-level type also has ``infer_study(network, views, mask)``:
    views (N, V, 1, S, S) with a (N, V) bool mask of real views -> study probabilities (N, C).
    """

    build: Callable[..., nn.Module]
    infer: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    training: TrainingSpec | None = None
    infer_study: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


_MODEL_TYPES: dict[str, ModelTypeSpec] = {}

# The model types this package ships: name -> module that registers it (the seed papers'
# methods, one module each in models/zoo).
BUILTIN_MODEL_TYPES: dict[str, str] = {
    "global_pool": "models.zoo.global_pool",  # seed 000 §II.C.3
    "localize_classify": "models.zoo.localize_classify",  # seed 002
    "mvcnn": "models.zoo.mvcnn",  # seed 004 §5.3
    "stl": "models.zoo.stl",  # seed 000 §II.C.4
    "stn": "models.zoo.stn",  # seed 000 §II.C.5
    "two_stage": "models.zoo.two_stage",  # seed 001
    "window_fpn": "models.zoo.window_fpn",  # seed 003
}


def register_model_type(name: str, spec: ModelTypeSpec) -> None:
    """Make ``name`` loadable from checkpoints."""
    if name in _MODEL_TYPES and _MODEL_TYPES[name] is not spec:
        raise ValueError(f"model type {name!r} is already registered")
    _MODEL_TYPES[name] = spec


def model_types() -> tuple[str, ...]:
    _register_builtin()
    return tuple(sorted(_MODEL_TYPES))


def model_type_spec(name: str) -> ModelTypeSpec:
    """The registered spec of model type ``name`` (ValueError naming the known ones)."""
    _register_builtin(name)
    spec = _MODEL_TYPES.get(name)
    if spec is None:
        raise ValueError(f"unknown model type {name!r}; known: {sorted(_MODEL_TYPES)}")
    return spec


def _register_builtin(name: str | None = None) -> None:
    """Import the module of built-in type ``name`` (all of them when None), which registers
    it. The registry imports no model type itself: it stays a leaf that types register into
    (as torchvision's ``models._api`` does), and a process pays only for the types it loads."""
    names = BUILTIN_MODEL_TYPES if name is None else [name] if name in BUILTIN_MODEL_TYPES else []
    for builtin in names:
        if builtin not in _MODEL_TYPES:
            importlib.import_module(BUILTIN_MODEL_TYPES[builtin])


def save_checkpoint(path: Path, network: nn.Module, metadata: ModelMetadata) -> None:
    """Write ``network``'s weights and ``metadata`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "metadata": metadata.to_dict(), "state_dict": state},
               tmp)
    tmp.replace(path)


def load_model(path: Path | str | None = None, *, device: str | None = None) -> FractureModel:
    """Load a checkpoint (the demo weights when ``path`` is None)."""
    path = Path(path) if path is not None else DEMO_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pacs-node checkpoint ({CHECKPOINT_FORMAT})")
    metadata = ModelMetadata.from_dict(blob["metadata"])
    try:
        spec = model_type_spec(metadata.model_type)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    network = spec.build(**metadata.architecture)
    network.load_state_dict(blob["state_dict"])
    return FractureModel(metadata, network, spec, device=device)


class FractureModel:
    """A loaded model: preprocessing, batched inference and mapping back to the source grid."""

    def __init__(
        self,
        metadata: ModelMetadata,
        network: nn.Module,
        spec: ModelTypeSpec,
        *,
        device: str | None = None,
    ) -> None:
        self.metadata = metadata
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = network.to(self.device).eval()
        self._spec = spec

    @property
    def notice(self) -> str:
        """The sentence every output made with this model must carry."""
        return SYNTHETIC_NOTICE if self.metadata.synthetic_demo else self.metadata.intended_use

    @property
    def study_level(self) -> bool:
        """Whether the model judges whole studies (a learned multi-view aggregator)."""
        return self._spec.infer_study is not None

    def predict_study(self, views: Sequence[PreparedView]) -> dict[str, float]:
        """Class probabilities of one study (or one anatomic site) from all its views.

        Only for study-level model types (:attr:`study_level`); per-view answers still come
        from :meth:`predict`.
        """
        if self._spec.infer_study is None:
            raise TypeError(f"model type {self.metadata.model_type!r} is not study-level")
        if not views:
            raise ValueError("a study needs at least one view")
        size = self.metadata.input_size
        images = np.stack([v.image for v in views]).astype(np.float32, copy=False)
        if images.shape[1:] != (size, size):
            raise ValueError(f"prepared images have shape {images.shape[1:]}, model wants "
                             f"{size}x{size}")
        batch = torch.from_numpy(images)[None, :, None].to(self.device)
        mask = torch.ones(1, len(views), dtype=torch.bool, device=self.device)
        with torch.inference_mode():
            probs = self._spec.infer_study(self.network, batch, mask)[0].float().cpu().numpy()
        return {c: float(p) for c, p in zip(self.metadata.classes, probs, strict=True)}

    def prepare(self, ds: pydicom.Dataset) -> PreparedView:
        """Preprocess one DICOM view as the model was trained (raises ``PreprocessError``)."""
        pre = self.metadata.preprocessing
        return prepare_view(
            ds,
            size=self.metadata.input_size,
            mode=pre.get("mode", "pad"),
            align=bool(pre.get("align", False)),
            heuristic_inversion=bool(pre.get("heuristic_inversion", False)),
        )

    def predict(
        self,
        views: Sequence[pydicom.Dataset | PreparedView],
        *,
        batch_size: int = 8,
    ) -> list[ViewPrediction]:
        """One :class:`ViewPrediction` per view, in order (see the module docstring)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        prepared = [v if isinstance(v, PreparedView) else self.prepare(v) for v in views]
        results: list[ViewPrediction] = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            probs, heatmaps = self.infer_arrays([p.image for p in chunk])
            for view, p, h in zip(chunk, probs, heatmaps, strict=True):
                results.append(self._view_prediction(view, p, h))
        return results

    def infer_arrays(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and input-grid heatmaps (N, S, S) for prepared images."""
        size = self.metadata.input_size
        for img in images:
            if img.shape != (size, size):
                raise ValueError(f"prepared image has shape {img.shape}, model wants {size}x{size}")
        batch = torch.from_numpy(np.stack(images).astype(np.float32, copy=False))[:, None]
        with torch.inference_mode():
            probs, heatmaps = self._spec.infer(self.network, batch.to(self.device))
        return probs.float().cpu().numpy(), heatmaps.float().cpu().numpy()

    def _view_prediction(
        self, view: PreparedView, probs: np.ndarray, heatmap: np.ndarray
    ) -> ViewPrediction:
        probabilities = {c: float(p) for c, p in zip(self.metadata.classes, probs, strict=True)}
        original = warp_to_original(heatmap, view.transform, view.original_shape)
        original = np.clip(original, 0.0, 1.0).astype(np.float32, copy=False)
        return ViewPrediction(
            probabilities=probabilities,
            fracture_probability=float(1.0 - probabilities["normal"]),
            heatmap=original,
            findings=extract_findings(original, self.metadata.finding_threshold),
        )
