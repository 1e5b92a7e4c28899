"""Training augmentations with ``torchvision.transforms.v2``.

Geometric: seed 000 §III — scaling (zoom out 0.4-0.9, zoom in 1.3-1.9), rotations restricted
to [-15, -5] and [5, 15] degrees, translations up to half the image in both directions,
"ensuring the ROI does not leave the image". Photometric: contrast jitter and Gaussian noise
(seed 002 Appendix A) and horizontal flips (seed 004 §4.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

__all__ = ["AUGMENT_PRESETS", "AugmentConfig", "Augmenter"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities; the defaults are the seed 000 §III ranges."""

    zoom_out: tuple[float, float] = (0.4, 0.9)
    zoom_in: tuple[float, float] = (1.3, 1.9)
    rotation: tuple[float, float] = (5.0, 15.0)  # magnitude; the sign is drawn separately
    translate_fraction: float = 0.5  # ±1250 px of 2500 px in seed 000
    p_scale: float = 0.5
    p_rotate: float = 0.5
    p_translate: float = 0.5
    p_flip: float = 0.5
    contrast: tuple[float, float] = (0.8, 1.25)
    noise_std: float = 0.02
    attempts: int = 10

    def __post_init__(self) -> None:
        for name in ("zoom_out", "zoom_in", "rotation", "contrast"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"augment {name} range must satisfy 0 <= lo <= hi, got {(lo, hi)}")
        for name in ("p_scale", "p_rotate", "p_translate", "p_flip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment {name} must be a probability, got {getattr(self, name)}")


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


class Augmenter:
    """Random augmentation of a (1, H, W) image whose ROI box must stay inside the image."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def __call__(
        self, image: torch.Tensor, roi: torch.Tensor | None, g: torch.Generator
    ) -> torch.Tensor:
        """The augmented image; ``roi`` (XYXY, input grid) must stay inside it."""
        return self.with_geometry(image, roi, g)[0]

    def with_geometry(
        self,
        image: torch.Tensor,
        keep_inside: torch.Tensor | None,
        g: torch.Generator,
        *,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Augment ``image`` and move ``boxes`` (B, 4) XYXY and ``points`` (P, 2) with it.

        ``keep_inside`` (XYXY) is the box that must stay inside the image (seed 000 §III);
        NaN rows of ``boxes``/``points`` (padding) stay NaN. A rotated box becomes the
        axis-aligned box around its corners.
        """
        c = self.config
        h, w = image.shape[-2:]
        flip = float(torch.rand((), generator=g)) < c.p_flip
        if flip:
            image = TF.horizontal_flip(image)
            if keep_inside is not None:
                keep_inside = _flip_boxes(keep_inside.view(1, 4), w)[0]
            boxes = None if boxes is None else _flip_boxes(boxes, w)
            if points is not None:
                points = torch.stack([w - 1 - points[:, 0], points[:, 1]], dim=1)
        inside = None
        if keep_inside is not None:
            inside = tv_tensors.BoundingBoxes(
                keep_inside.view(1, 4), format="XYXY", canvas_size=(h, w), clamping_mode=None
            )
        for _ in range(c.attempts):
            angle, scale, tx, ty = self._draw(g, h, w)
            if inside is None or self._inside(inside, angle, scale, tx, ty, h, w):
                break
        else:
            angle, scale, tx, ty = 0.0, 1.0, 0, 0
        if (angle, scale, tx, ty) != (0.0, 1.0, 0, 0):
            image = TF.affine(image, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                              interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
            move = _Mover(angle, scale, tx, ty, h, w)
            boxes = None if boxes is None else move.boxes(boxes)
            if points is not None:
                points = move.boxes(torch.cat([points, points], dim=1))[:, :2]
        gain = _uniform(g, *c.contrast)
        mean = image.mean()
        image = (image - mean) * gain + mean
        if c.noise_std > 0:
            image = image + c.noise_std * torch.randn(image.shape, generator=g)
        return image.clamp(0.0, 1.0), boxes, points

    def _draw(self, g: torch.Generator, h: int, w: int) -> tuple[float, float, int, int]:
        c = self.config
        scale = 1.0
        if float(torch.rand((), generator=g)) < c.p_scale:
            zoom = c.zoom_in if float(torch.rand((), generator=g)) < 0.5 else c.zoom_out
            scale = _uniform(g, *zoom)
        angle = 0.0
        if float(torch.rand((), generator=g)) < c.p_rotate:
            sign = 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0
            angle = sign * _uniform(g, *c.rotation)
        tx = ty = 0
        if float(torch.rand((), generator=g)) < c.p_translate:
            tx = round(_uniform(g, -c.translate_fraction, c.translate_fraction) * w)
            ty = round(_uniform(g, -c.translate_fraction, c.translate_fraction) * h)
        return angle, scale, tx, ty

    @staticmethod
    def _inside(boxes: tv_tensors.BoundingBoxes, angle: float, scale: float, tx: int, ty: int,
                h: int, w: int) -> bool:
        moved = TF.affine(boxes, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0])
        x0, y0, x1, y1 = (float(v) for v in moved[0])
        return x0 >= 0 and y0 >= 0 and x1 <= w - 1 and y1 <= h - 1


def _flip_boxes(boxes: torch.Tensor, w: int) -> torch.Tensor:
    return torch.stack([w - 1 - boxes[:, 2], boxes[:, 1], w - 1 - boxes[:, 0], boxes[:, 3]], dim=1)


@dataclass(frozen=True)
class _Mover:
    """The affine of one augmentation applied to boxes (NaN rows stay NaN)."""

    angle: float
    scale: float
    tx: int
    ty: int
    h: int
    w: int

    def boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        if boxes.numel() == 0:
            return boxes
        real = ~torch.isnan(boxes).any(dim=1)
        out = boxes.clone()
        if real.any():
            moved = TF.affine(
                tv_tensors.BoundingBoxes(boxes[real], format="XYXY", canvas_size=(self.h, self.w),
                                         clamping_mode=None),
                angle=self.angle, translate=[self.tx, self.ty], scale=self.scale,
                shear=[0.0, 0.0])
            out[real] = moved.as_subclass(torch.Tensor).to(boxes.dtype)
        return out


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    # The ranges of seed 000 §III, made for 2500 x 2048 px originals.
    "seed000": AugmentConfig(),
    # Milder zoom for whole-image inputs of a few hundred pixels, where a 0.4 zoom-out would
    # shrink a non-displaced fracture line below one pixel.
    "mild": AugmentConfig(zoom_out=(0.8, 0.95), zoom_in=(1.05, 1.3), translate_fraction=0.15,
                          p_scale=0.5, p_rotate=0.5, p_translate=0.5),
    "none": AugmentConfig(p_scale=0.0, p_rotate=0.0, p_translate=0.0, p_flip=0.0,
                          contrast=(1.0, 1.0), noise_std=0.0),
}
