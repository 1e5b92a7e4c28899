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
        c = self.config
        h, w = image.shape[-2:]
        if float(torch.rand((), generator=g)) < c.p_flip:
            image = TF.horizontal_flip(image)
            if roi is not None:
                roi = torch.stack([w - 1 - roi[2], roi[1], w - 1 - roi[0], roi[3]])
        boxes = None
        if roi is not None:
            boxes = tv_tensors.BoundingBoxes(
                roi.view(1, 4), format="XYXY", canvas_size=(h, w), clamping_mode=None
            )
        for _ in range(c.attempts):
            angle, scale, tx, ty = self._draw(g, h, w)
            if boxes is None or self._inside(boxes, angle, scale, tx, ty, h, w):
                break
        else:
            angle, scale, tx, ty = 0.0, 1.0, 0, 0
        if (angle, scale, tx, ty) != (0.0, 1.0, 0, 0):
            image = TF.affine(image, angle=angle, translate=[tx, ty], scale=scale, shear=[0.0, 0.0],
                              interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        gain = _uniform(g, *c.contrast)
        mean = image.mean()
        image = (image - mean) * gain + mean
        if c.noise_std > 0:
            image = image + c.noise_std * torch.randn(image.shape, generator=g)
        return image.clamp(0.0, 1.0)

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
