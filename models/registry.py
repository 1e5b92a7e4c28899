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
  (0, 0));
- ``domain``: the domain check (:class:`~models.domain.DomainCheck`): score, threshold and
  whether the view looks like the model's training data. A view that fails it, or any view
  of a model without calibration unless the caller allows that, is not analysed:
  ``probabilities``, ``fracture_probability`` and ``heatmap`` are None and there are no
  findings; ``not_analysed_reason`` says why.

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

from .domain import DomainCheck, DomainStats, pooled_features
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
    "extract_findings",
    "load_model",
    "read_checkpoint",
    "model_type_spec",
    "model_types",
    "register_model_type",
    "save_checkpoint",
    "set_domain_calibration",
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
    # What the model was trained for: normalised body parts (seed 004 §4.2.2.1) and view
    # positions, {"body_parts": [...], "view_positions": [...]}; empty when unknown. With no
    # route naming body parts, the workers send a view to a model only inside its scope.
    scope: dict[str, list[str]] = field(default_factory=dict)

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

    @property
    def body_parts(self) -> tuple[str, ...]:
        return tuple(self.scope.get("body_parts", ()))


@dataclass(frozen=True)
class ViewPrediction:
    """The model's answer for one view (see the module docstring).

    A view that failed the domain check (``domain.in_domain`` False) has no probabilities,
    no heatmap and no findings when ``predict`` abstains: the model did not judge it.
    """

    probabilities: dict[str, float] | None
    fracture_probability: float | None
    heatmap: np.ndarray | None
    findings: tuple[Finding, ...]
    domain: DomainCheck = DomainCheck(in_domain=True, calibrated=False)

    @property
    def analysed(self) -> bool:
        return self.fracture_probability is not None

    @property
    def not_analysed_reason(self) -> str:
        return "" if self.analysed else self.domain.reason()


@dataclass(frozen=True)
class ModelTypeSpec:
    """How to build a model type's network, run it and train it.

    ``build(**architecture)`` returns the network; ``infer(network, batch)`` maps a float
    batch (N, 1, S, S) to class probabilities (N, C) and heatmaps (N, S, S) in [0, 1].
    ``training`` (:class:`models.supervision.TrainingSpec`) makes the type trainable by
    ``pacs-node train``. ``feature_layer`` names the layer the domain check reads. A
    study-level type also has ``infer_study(network, views, mask)``: views (N, V, 1, S, S)
    with a (N, V) bool mask of real views -> study probabilities (N, C).
    """

    build: Callable[..., nn.Module]
    infer: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    training: TrainingSpec | None = None
    infer_study: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # The module (a name in ``network.named_modules()``) whose maps feed the domain check
    # (:mod:`models.domain`): a late convolutional layer that every view passes through.
    feature_layer: str = ""


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


def save_checkpoint(path: Path, network: nn.Module, metadata: ModelMetadata, *,
                    domain: DomainStats | None = None) -> None:
    """Write ``network``'s weights, ``metadata`` and the domain-check statistics (if any)
    to ``path`` atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    blob: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "metadata": metadata.to_dict(),
                            "state_dict": state}
    if domain is not None:
        blob["domain"] = domain.to_blob()
    _write_blob(Path(path), blob)


def _write_blob(path: Path, blob: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """The raw checkpoint dictionary (format checked; loads no code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pacs-node checkpoint ({CHECKPOINT_FORMAT})")
    return blob


def set_domain_calibration(path: Path | str, domain: DomainStats,
                           scope: dict[str, list[str]] | None = None) -> None:
    """Add (or replace) the domain-check statistics of the checkpoint at ``path``, and its
    scope when ``scope`` is given; the weights stay as they are."""
    blob = read_checkpoint(path)
    blob["domain"] = domain.to_blob()
    if scope is not None:
        blob["metadata"] = {**blob["metadata"], "scope": scope}
        ModelMetadata.from_dict(blob["metadata"])  # still valid
    _write_blob(Path(path), blob)


def load_model(path: Path | str | None = None, *, device: str | None = None) -> FractureModel:
    """Load a checkpoint (the demo weights when ``path`` is None)."""
    path = Path(path) if path is not None else DEMO_WEIGHTS
    blob = read_checkpoint(path)
    metadata = ModelMetadata.from_dict(blob["metadata"])
    try:
        spec = model_type_spec(metadata.model_type)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    network = spec.build(**metadata.architecture)
    network.load_state_dict(blob["state_dict"])
    domain = DomainStats.from_blob(blob["domain"]) if "domain" in blob else None
    return FractureModel(metadata, network, spec, device=device, domain=domain)


class FractureModel:
    """A loaded model: preprocessing, batched inference and mapping back to the source grid."""

    def __init__(
        self,
        metadata: ModelMetadata,
        network: nn.Module,
        spec: ModelTypeSpec,
        *,
        device: str | None = None,
        domain: DomainStats | None = None,
    ) -> None:
        self.metadata = metadata
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = network.to(self.device).eval()
        self._spec = spec
        self.domain = domain
        # The statistics name the layer they were fitted on; a model type may have moved
        # its default since, and an old checkpoint keeps working.
        self._feature_layer = domain.layer if domain is not None else spec.feature_layer
        modules = dict(network.named_modules())
        if self._feature_layer and self._feature_layer not in modules:
            raise ValueError(f"the domain check reads layer {self._feature_layer!r}, which "
                             f"a {metadata.model_type} network does not have")
        self._feature_module = modules[self._feature_layer] if self._feature_layer else None

    def uncalibrated(self) -> FractureModel:
        """The same network without domain statistics, reading its type's default layer
        (what :func:`models.calibration.calibrate` fits)."""
        return FractureModel(self.metadata, self.network, self._spec, device=str(self.device))

    @property
    def calibrated(self) -> bool:
        """Whether the checkpoint carries domain-check statistics (``pacs-node calibrate``)."""
        return self.domain is not None

    @property
    def feature_layer(self) -> str:
        """The layer the domain check reads (the statistics' own, else the type's)."""
        return self._feature_layer

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
        allow_uncalibrated: bool = False,
        abstain: bool = True,
    ) -> list[ViewPrediction]:
        """One :class:`ViewPrediction` per view, in order (see the module docstring).

        Every view goes through the domain check (:mod:`models.domain`). A view outside the
        training domain, or any view of a model without calibration unless
        ``allow_uncalibrated``, gets no probability, heatmap or findings when ``abstain``
        (the workers); ``abstain=False`` keeps them beside the check (evaluation).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        prepared = [v if isinstance(v, PreparedView) else self.prepare(v) for v in views]
        results: list[ViewPrediction] = []
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            probs, heatmaps, features = self.infer_arrays([p.image for p in chunk])
            if self.domain is not None:
                checks = self.domain.check(features)
            else:
                checks = [DomainCheck(in_domain=allow_uncalibrated, calibrated=False)] * len(chunk)
            for view, p, h, check in zip(chunk, probs, heatmaps, checks, strict=True):
                results.append(self._view_prediction(view, p, h, check, abstain=abstain))
        return results

    def infer_arrays(
        self, images: Sequence[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Probabilities (N, C), input-grid heatmaps (N, S, S) and domain-check features
        (N, D) of prepared images (D = 0 for a model type without a feature layer)."""
        size = self.metadata.input_size
        for img in images:
            if img.shape != (size, size):
                raise ValueError(f"prepared image has shape {img.shape}, model wants {size}x{size}")
        batch = torch.from_numpy(np.stack(images).astype(np.float32, copy=False))[:, None]
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        captured: list[torch.Tensor] = []
        hook = None
        if self._feature_module is not None:
            hook = self._feature_module.register_forward_hook(
                lambda _m, _i, out: captured.append(pooled_features(out.detach())))
        try:
            with torch.inference_mode():
                probs, heatmaps = self._spec.infer(self.network, batch)
        finally:
            if hook is not None:
                hook.remove()
        # The first pass through the layer is the whole image's (a type may run it again
        # on crops, e.g. seed 002's classifier on the ROI).
        features = (captured[0].cpu().numpy() if captured
                    else np.zeros((len(images), 0), dtype=np.float32))
        return probs.float().cpu().numpy(), heatmaps.float().cpu().numpy(), features

    def _view_prediction(
        self, view: PreparedView, probs: np.ndarray, heatmap: np.ndarray, check: DomainCheck,
        *, abstain: bool,
    ) -> ViewPrediction:
        if abstain and not check.in_domain:
            return ViewPrediction(probabilities=None, fracture_probability=None, heatmap=None,
                                  findings=(), domain=check)
        probabilities = {c: float(p) for c, p in zip(self.metadata.classes, probs, strict=True)}
        original = warp_to_original(heatmap, view.transform, view.original_shape)
        original = np.clip(original, 0.0, 1.0).astype(np.float32, copy=False)
        return ViewPrediction(
            probabilities=probabilities,
            fracture_probability=float(1.0 - probabilities["normal"]),
            heatmap=original,
            findings=extract_findings(original, self.metadata.finding_threshold),
            domain=check,
        )
