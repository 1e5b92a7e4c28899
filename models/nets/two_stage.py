"""Two-stage fracture detection with weakly supervised ROI mining (seed 001 §2).

Stage 1 (§2.1) is a multiple-instance FCN: backbone features, a 1 x 1 convolution and a
sigmoid give a probability map {p_ij}; LSE pooling (eq. 1) turns it into the image
probability trained with BCE on image labels. Its map proposes ROIs: during training the
mined ROIs (eq. 2, :func:`mine_rois`) train stage 2 (§2.2), a ResNet-18 classifying square
ROI crops. At inference the arg-max cell of the map gives ``ps1`` and its ROI, stage 2 gives
``ps2`` on that crop, and the fracture probability is ``ps1 * ps2``
(:meth:`TwoStageMIL.chain`).

Geometry: the map cell (row, col) of an h x w map over an S x S input covers input pixels
``[col * S / w, (col + 1) * S / w)``; its ROI is the ``roi_size`` square centred on the cell,
shifted to lie inside the image, given by its top-left pixel (:func:`roi_origins`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbones import build_backbone
from .pooling import lse_pool

__all__ = ["TwoStageMIL", "crop_rois", "mine_rois", "roi_origins", "sensitivity_threshold"]


class TwoStageMIL(nn.Module):
    """Stage-1 MIL FCN and stage-2 ROI classifier of seed 001 §2.

    Args:
        num_classes: image classes, class 0 "normal". With more than two (fracture types,
            §2.2 "Hip/pelvic fracture differentiation") stage 2 gets a second head over the
            ``num_classes - 1`` fracture types.
        backbone: stage-1 backbone (DenseNet-121 in §2.1); see
            :func:`models.nets.backbones.build_backbone`.
        stages: residual stages kept when ``backbone`` is a ResNet.
        lse_r: LSE sharpness ``r`` of eq. 1.
        roi_size: side of the square ROI on the input grid, in pixels.
        stage2_stages: residual stages of the stage-2 ResNet-18 (4 in §2.2).
        in_channels: input channels (1 for radiographs).
    """

    def __init__(
        self,
        *,
        num_classes: int = 2,
        backbone: str = "densenet121",
        stages: int = 4,
        lse_r: float = 10.0,
        roi_size: int = 64,
        stage2_stages: int = 4,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if roi_size < 1:
            raise ValueError(f"roi_size must be positive, got {roi_size}")
        if lse_r <= 0 or not math.isfinite(lse_r):
            raise ValueError(f"LSE sharpness r must be a positive finite number, got {lse_r!r}")
        features, channels = build_backbone(backbone, in_channels=in_channels, stages=stages)
        self.stage1 = nn.Sequential(features, nn.Conv2d(channels, 1, kernel_size=1))
        roi_features, roi_channels = build_backbone(
            "resnet18", in_channels=in_channels, stages=stage2_stages)
        self.stage2 = nn.Sequential(roi_features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fracture_head = nn.Linear(roi_channels, 1)
        self.type_head = nn.Linear(roi_channels, num_classes - 1) if num_classes > 2 else None
        self.lse_r = float(lse_r)
        self.roi_size = int(roi_size)

    def probability_map(self, images: torch.Tensor) -> torch.Tensor:
        """Stage-1 probability map {p_ij} (N, h, w), in float32 (§2.1)."""
        return torch.sigmoid(self.stage1(images).float()).squeeze(1)

    def image_probability(self, prob_map: torch.Tensor) -> torch.Tensor:
        """LSE-pooled image probability (N,) of a probability map (N, h, w) (eq. 1)."""
        return lse_pool(prob_map.unsqueeze(1), self.lse_r).squeeze(1)

    def classify_rois(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage-2 fracture logits (M,) and fracture-type logits (M, T) or None (§2.2)."""
        features = self.stage2(crops)
        types = None if self.type_head is None else self.type_head(features).float()
        return self.fracture_head(features).float().squeeze(1), types

    def chain(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The chained inference of §2.2 for a batch (N, 1, S, S).

        Returns:
            ``(ps1, ps2, types, prob_map, origins)``: ``ps1`` (N,) the map's highest value,
            ``ps2`` (N,) stage 2's fracture probability on that cell's ROI, ``types``
            (N, T) fracture-type probabilities on that ROI (empty when there is no type
            head), the map (N, h, w) and the ROIs' top-left pixels (N, 2) as (x, y).
        """
        prob_map = self.probability_map(images)
        n, h, w = prob_map.shape
        ps1, flat = prob_map.flatten(1).max(dim=1)
        cells = torch.stack([flat // w, flat % w], dim=1)
        origins = roi_origins(cells, (h, w), images.shape[-1], self.roi_size)
        fracture, type_logits = self.classify_rois(
            crop_rois(images, torch.arange(n, device=images.device), origins, self.roi_size))
        types = (prob_map.new_zeros(n, 0) if type_logits is None
                 else torch.softmax(type_logits, dim=1))
        return ps1, torch.sigmoid(fracture), types, prob_map, origins


def roi_origins(
    cells: torch.Tensor, map_shape: tuple[int, int], image_size: int, roi_size: int
) -> torch.Tensor:
    """Top-left input pixels (M, 2) as (x, y) of the ROIs centred on map ``cells`` (M, 2).

    ``cells`` holds (row, col) on a ``map_shape`` = (h, w) map over a square input of side
    ``image_size``. A ROI reaching past the border is shifted back inside the image.
    """
    if not 1 <= roi_size <= image_size:
        raise ValueError(f"roi_size must lie in [1, {image_size}], got {roi_size}")
    h, w = map_shape
    centre_y = (cells[:, 0].double() + 0.5) * (image_size / h)
    centre_x = (cells[:, 1].double() + 0.5) * (image_size / w)
    corner = torch.stack([centre_x, centre_y], dim=1) - roi_size / 2
    return torch.floor(corner + 0.5).clamp(0, image_size - roi_size).long()


def crop_rois(
    images: torch.Tensor, index: torch.Tensor, origins: torch.Tensor, roi_size: int
) -> torch.Tensor:
    """Crops (M, C, R, R) of ``images[index[m]]`` with top-left pixel ``origins[m]`` = (x, y)."""
    crops = [images[i, :, y:y + roi_size, x:x + roi_size]
             for i, (x, y) in zip(index.tolist(), origins.tolist(), strict=True)]
    if not crops:
        return images.new_zeros(0, images.shape[1], roi_size, roi_size)
    return torch.stack(crops)


def sensitivity_threshold(
    scores: torch.Tensor, positive: torch.Tensor, sensitivity: float = 0.99
) -> float:
    """The highest threshold p̂ whose classifier ``score > p̂`` reaches ``sensitivity`` (§2.1).

    ``scores`` (N,) are the image-level scores ``p0 = max_ij p_ij``, ``positive`` (N,) bool the
    image labels. With n positives sorted ascending s_0 <= ... <= s_{n-1}, at most
    m = floor(n * (1 - sensitivity)) may be missed, so p̂ is the float32 just below s_m.
    With no positive image nothing needs to be detected and p̂ = 1 (nothing is mined).
    """
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"sensitivity must lie in (0, 1], got {sensitivity}")
    if scores.shape != positive.shape or positive.dtype != torch.bool:
        raise ValueError("scores and a bool positive mask of the same shape are required")
    ranked = scores[positive].float().sort().values
    if len(ranked) == 0:
        return 1.0
    missed = math.floor(len(ranked) * (1.0 - sensitivity) + 1e-9)
    bound = ranked[missed]
    return float(torch.nextafter(bound, torch.tensor(-math.inf)))


def mine_rois(
    prob_maps: torch.Tensor,
    positive: torch.Tensor,
    threshold: float,
    *,
    k: int = 5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Map cells mined for stage 2 from stage-1 maps (N, h, w) (§2.1, eq. 2).

    In every image up to ``k`` cells are drawn at random, without replacement, from
    S' = {(i, j) | p_ij > threshold}. In a positive image they are probable positives
    (label 1), in a negative image definite hard negatives (label 0); a negative image with
    fewer than ``k`` of them is made up to ``k`` with random other cells (easy negatives).

    Returns:
        ``(index, cells, labels)`` on the CPU: image index (M,), (row, col) cells (M, 2)
        and float ROI labels (M,).
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    n, h, w = prob_maps.shape
    flat = prob_maps.detach().flatten(1).float().cpu()
    index, picked_cells, labels = [], [], []
    for i in range(n):
        above = torch.nonzero(flat[i] > threshold).flatten()
        picked = above[torch.randperm(len(above), generator=generator)[:k]]
        if not positive[i] and len(picked) < k:
            free = torch.ones(h * w, dtype=torch.bool)
            free[picked] = False
            rest = torch.nonzero(free).flatten()
            extra = rest[torch.randperm(len(rest), generator=generator)[:k - len(picked)]]
            picked = torch.cat([picked, extra])
        index.append(torch.full((len(picked),), i, dtype=torch.long))
        picked_cells.append(torch.stack([picked // w, picked % w], dim=1))
        labels.append(torch.full((len(picked),), float(bool(positive[i]))))
    return torch.cat(index), torch.cat(picked_cells), torch.cat(labels)
