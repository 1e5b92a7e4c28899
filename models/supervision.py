"""What a model type needs to be trainable: the batch it sees and the hooks it provides.

Every model type registered with :mod:`models.registry` may carry a :class:`TrainingSpec`.
:func:`models.train.train` owns the loop (data, split, sampler, augmentation, optimiser,
schedule, checkpoints, validation); the spec supplies what differs between the seed papers:

- ``architecture(config, num_classes)``: the keyword arguments of the network's
  constructor, stored in the checkpoint so :func:`models.registry.load_model` rebuilds it;
- ``loss(network, batch, ctx)``: one scalar loss for a :class:`TrainBatch`, with whatever
  supervision the paper uses (image labels, ROI boxes, points, study labels);
- ``on_epoch_start(network, ctx, data)`` (optional): work between epochs, e.g. seed 001's
  threshold at 99 % training sensitivity or a loss-weight schedule;
- ``param_groups(network, config)`` (optional): layer-wise learning rates;
- ``selectable(ctx)`` (optional): whether this epoch's weights may become ``best.pt``;
- ``study_level``: batches hold whole studies (views padded to ``MAX_VIEWS`` with a mask)
  and the study label instead of single views.

All geometry in a batch is on the model input grid (after preprocessing and augmentation),
in pixels, (x, y) = (column, row). Missing values are NaN-padded to fixed sizes so the
default collate works: a view has at most ``MAX_POINTS`` points and ``MAX_BOXES`` boxes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .data import PreparedSet
    from .train import TrainConfig

__all__ = [
    "MAX_BOXES",
    "MAX_POINTS",
    "MAX_VIEWS",
    "LossContext",
    "TrainBatch",
    "TrainingSpec",
    "option_value",
    "valid_boxes",
    "valid_points",
]

MAX_POINTS = 8
MAX_BOXES = 8
MAX_VIEWS = 8


@dataclass
class TrainBatch:
    """One training batch on the input grid.

    View-level batches (``study_level=False``), N views of size S:
      images (N, 1, S, S) float32 in [0, 1]; labels (N,) long class index (0 = normal);
      rois (N, 4) XYXY ROI box (femoral head/neck or distal radius), NaN if unknown;
      boxes (N, MAX_BOXES, 4) visible fracture boxes, NaN rows as padding;
      points (N, MAX_POINTS, 2) visible fracture points, NaN rows as padding.

    Study-level batches (``study_level=True``), N studies of up to V = ``MAX_VIEWS`` views:
      images (N, V, 1, S, S); mask (N, V) bool, True for real views; labels (N,) the study
      label (class index, 0 = normal); rois/boxes/points with an extra V axis.
    """

    images: torch.Tensor
    labels: torch.Tensor
    rois: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    mask: torch.Tensor | None = None

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return (self.images, self.labels, self.rois, self.boxes, self.points, self.mask)

    def to(self, device: torch.device, non_blocking: bool = False) -> TrainBatch:
        # Only ``mask`` may be None, and it stays None.
        return TrainBatch(*cast("Iterator[Any]", (
            None if t is None else t.to(device, non_blocking=non_blocking)
            for t in self._fields())))

    def pin_memory(self) -> TrainBatch:
        """Page-locked copies, called by ``DataLoader(pin_memory=True)`` for faster uploads."""
        return TrainBatch(*cast("Iterator[Any]", (
            None if t is None else t.pin_memory() for t in self._fields())))


@dataclass
class LossContext:
    """What a loss may depend on besides the batch."""

    config: TrainConfig
    num_classes: int
    epoch: int  # 1-based
    epochs: int
    step: int = 0  # global optimisation step, 0-based
    steps: int = 1  # total steps of the schedule
    class_weights: torch.Tensor | None = None  # seed 000 eq. 1-2 weights, when enabled
    state: dict[str, Any] = field(default_factory=dict)  # kept across epochs, e.g. thresholds

    @property
    def progress(self) -> float:
        """Fraction of the schedule done, in [0, 1)."""
        return self.step / max(self.steps, 1)

    def option(self, name: str, default: Any) -> Any:
        """A model-type option from ``--option name=value`` (``TrainConfig.options``)."""
        return option_value(self.config.options, name, default)


@dataclass(frozen=True)
class TrainingSpec:
    """How :func:`models.train.train` trains one model type (see the module docstring)."""

    architecture: Callable[[TrainConfig, int], dict[str, Any]]
    loss: Callable[[nn.Module, TrainBatch, LossContext], torch.Tensor]
    on_epoch_start: Callable[[nn.Module, LossContext, PreparedSet], None] | None = None
    study_level: bool = False
    # Whether the epoch just finished may become ``best.pt`` (e.g. not while only the first
    # of two stages is trained); None: every epoch may.
    selectable: Callable[[LossContext], bool] | None = None
    # Layer-wise learning rates: [(parameters, factor of --lr), ...] covering every
    # parameter once; None: one group at --lr.
    param_groups: Callable[[nn.Module, TrainConfig], list[tuple[list[nn.Parameter], float]]] \
        | None = None
    # The ``--option`` names this type reads; any other name is refused (a typo must not
    # silently train with a default).
    options: tuple[str, ...] = ()


def option_value(options: dict[str, Any], name: str, default: Any) -> Any:
    """``options[name]`` converted to the type of ``default`` (CLI values arrive as text)."""
    if name not in options or options[name] is None:
        return default
    value = options[name]
    if isinstance(default, bool) and isinstance(value, str):
        if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"option {name} must be true or false, got {value!r}")
        return value.lower() in ("1", "true", "yes")
    if default is None:
        return value
    try:
        return type(default)(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"option {name}={value!r}: expected {type(default).__name__}") from exc


def valid_points(points: torch.Tensor) -> torch.Tensor:
    """Mask of real (non-padding) rows of a (..., P, 2) point tensor."""
    return ~torch.isnan(points).any(dim=-1)


def valid_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Mask of real (non-padding) rows of a (..., B, 4) box tensor."""
    return ~torch.isnan(boxes).any(dim=-1)
