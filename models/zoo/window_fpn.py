"""Window Loss on an FPN trained from point annotations (seed 003), model type ``window_fpn``.

Network: :class:`models.nets.window_fpn.WindowFPN`. Training (seed 003 §3 "Window Loss"):
every annotation point becomes a lower and an upper confidence bound at every cell of every
pyramid level (eq. 1-2); the Window Loss (eq. 3) penalises a prediction only outside
[lower, upper], with MSE (eq. 4) or KLD (eq. 5) as the divergence; the levels' mean losses
are summed (eq. 6). Inference (§4 "Classification metric"): the heatmap is the average of the
upsampled level maps and the image score its maximum, so probabilities are [1 - max, max].

Options (``--option name=value``):

- ``window_loss``: ``mse`` (default) or ``kld``;
- ``r_l``, ``r_u``, ``tau``: eq. 1-2 parameters, defaults 50, 200 and 2 (§3 "Implementation
  Details"); ``r_l = r_u`` with ``tau = 0`` is the ablation's binary disk mask (Tables 2-3);
- ``radius_units``: ``paper`` (default) reads ``r_l``, ``r_u`` and ``tau`` as pixels of the
  paper's 1024 x 1024 input and scales them by ``input_size / 1024``, so the bounds cover
  the same fraction of the image at any input size (r_u = 200 px would span most of a
  256 px input); ``input`` uses them as input-grid pixels unchanged;
- ``fpn_channels``: FPN width (architecture, default 256).

A fracture view without any annotated point gets the whole window [0, 1] (no penalty):
points say *where*, and a view that has none gives no spatial information. The paper needs
no such rule (every fracture image there carries points, §4 "Dataset").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..nets.window_fpn import WindowFPN
from ..registry import ModelTypeSpec, register_model_type
from ..supervision import LossContext, TrainBatch, TrainingSpec, valid_points

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__ = ["DIVERGENCES", "PAPER_INPUT_SIZE", "WindowOptions", "window_bounds", "window_loss"]

DIVERGENCES = ("mse", "kld")
RADIUS_UNITS = ("paper", "input")
PAPER_INPUT_SIZE = 1024  # §3 "Implementation Details": images resized to 1024 x 1024


@dataclass(frozen=True)
class WindowOptions:
    """Supervision-bound parameters (eq. 1-2, in input pixels) and the divergence (eq. 4-5)."""

    r_l: float = 50.0
    r_u: float = 200.0
    tau: float = 2.0
    divergence: str = "mse"

    def __post_init__(self) -> None:
        if not 0.0 < self.r_l <= self.r_u:
            raise ValueError(f"need 0 < r_l <= r_u, got r_l={self.r_l}, r_u={self.r_u}")
        if self.tau < 0.0:
            raise ValueError(f"tau must be non-negative, got {self.tau}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"window_loss must be one of {DIVERGENCES}, got {self.divergence!r}")

    @classmethod
    def from_context(cls, ctx: LossContext, input_size: int) -> WindowOptions:
        """The options of ``ctx``, radii scaled to ``input_size`` per ``radius_units``."""
        units = ctx.option("radius_units", "paper")
        if units not in RADIUS_UNITS:
            raise ValueError(f"radius_units must be one of {RADIUS_UNITS}, got {units!r}")
        scale = input_size / PAPER_INPUT_SIZE if units == "paper" else 1.0
        return cls(
            r_l=ctx.option("r_l", 50.0) * scale,
            r_u=ctx.option("r_u", 200.0) * scale,
            tau=ctx.option("tau", 2.0) * scale,
            divergence=ctx.option("window_loss", "mse"),
        )


def _soft_disk(distance: torch.Tensor, radius: float, tau: float) -> torch.Tensor:
    """σ((r - D) / τ) of eq. 1-2; τ = 0 is its limit, the disk indicator D <= r."""
    if tau == 0.0:
        return (distance <= radius).to(distance.dtype)
    return torch.sigmoid((radius - distance) / tau)


def window_bounds(
    points: torch.Tensor,
    labels: torch.Tensor,
    grid: tuple[int, int],
    image_shape: tuple[int, int],
    options: WindowOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper confidence bounds (eq. 1-2) at the cell centres of one level.

    Args:
        points: (N, P, 2) annotation points (x, y) on the input grid, NaN rows as padding.
        labels: (N,) class index; a fracture view (> 0) without points gets bounds 0 and 1.
        grid: (h, w) of the level; cell (i, j) is centred on input pixel
            ((j + 0.5) W / w - 0.5, (i + 0.5) H / h - 0.5).
        image_shape: (H, W) of the input grid.
        options: radii and τ in input pixels.

    Returns:
        ``(lower, upper)``, each (N, h, w). As σ is increasing, the max over points of
        eq. 1-2 is σ of the distance to the nearest point; views without points get 0.
    """
    (h, w), (height, width) = grid, image_shape
    device = points.device
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (height / h) - 0.5
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (width / w) - 0.5
    px = points[..., 0].float()[:, :, None, None]
    py = points[..., 1].float()[:, :, None, None]
    distance = torch.sqrt((xs.view(1, 1, 1, w) - px) ** 2 + (ys.view(1, 1, h, 1) - py) ** 2)
    valid = valid_points(points)
    distance = torch.where(valid[:, :, None, None], distance, torch.inf)
    nearest = distance.amin(dim=1)
    lower = _soft_disk(nearest, options.r_l, options.tau)
    upper = _soft_disk(nearest, options.r_u, options.tau)
    unknown = (labels > 0) & ~valid.any(dim=1)
    upper = torch.where(unknown[:, None, None], torch.ones_like(upper), upper)
    return lower, upper


def _kld(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 5, D(σ(z), y) = KL(Bernoulli(y) || Bernoulli(σ(z))), computed from logits z as
    binary cross entropy minus the entropy of y, so it stays finite for saturated σ(z)."""
    entropy = -(torch.xlogy(target, target) + torch.xlogy(1.0 - target, 1.0 - target))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce - entropy).clamp_min(0.0)


def window_loss(
    logits: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, divergence: str = "mse"
) -> torch.Tensor:
    """Element-wise Window Loss (eq. 3) of p = σ(logits) against [lower, upper].

    D(p, lower) where p <= lower, D(p, upper) where p > upper and 0 in between, with D the
    squared error (eq. 4) or the KLD (eq. 5). Same shape as ``logits``.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    p = torch.sigmoid(logits)
    if divergence == "mse":
        below, above = (p - lower) ** 2, (p - upper) ** 2
    else:
        below, above = _kld(logits, lower), _kld(logits, upper)
    return torch.where(p <= lower, below, torch.where(p > upper, above, torch.zeros_like(p)))


def _window_fpn_loss(network: nn.Module, batch: TrainBatch, ctx: LossContext) -> torch.Tensor:
    """Eq. 6: the sum over pyramid levels of the mean Window Loss over views and cells."""
    image_shape = (batch.images.shape[-2], batch.images.shape[-1])
    options = WindowOptions.from_context(ctx, image_shape[1])
    total = batch.images.new_zeros((), dtype=torch.float32)
    for level in network(batch.images):
        logits = level.float()[:, 0]
        lower, upper = window_bounds(batch.points, batch.labels,
                                     (logits.shape[-2], logits.shape[-1]), image_shape, options)
        total = total + window_loss(logits, lower, upper, options.divergence).mean()
    return total


def _infer_window_fpn(
    network: nn.Module, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(network, WindowFPN):
        raise TypeError(f"window_fpn expects a WindowFPN, got {type(network).__name__}")
    heatmap = network.probability_map(batch)
    score = heatmap.flatten(1).amax(dim=1)
    return torch.stack([1.0 - score, score], dim=1), heatmap


def _window_fpn_architecture(config: TrainConfig, num_classes: int) -> dict[str, Any]:
    if num_classes != 2:
        raise ValueError(
            f"window_fpn predicts one fracture map (seed 003): it needs the binary label set, "
            f"got {num_classes} classes")
    return {
        "backbone": config.backbone,
        "fpn_channels": int(config.options.get("fpn_channels", 256)),
        "in_channels": 1,
    }


OPTIONS = (  # the --option names this type reads
    "fpn_channels",
    "window_loss",
    "r_l",
    "r_u",
    "tau",
    "radius_units",
)


register_model_type(
    "window_fpn",
    ModelTypeSpec(
        feature_layer="fpn.layer_blocks.3",
        build=WindowFPN,
        infer=_infer_window_fpn,
        training=TrainingSpec(options=OPTIONS, architecture=_window_fpn_architecture,
                              loss=_window_fpn_loss),
    ),
)
