"""From line integrals to stored pixel values: Beer-Lambert exposure, detector, processing.

``I = I0 exp(-integral mu dl)`` (seed 002, Appendix "Data Augmentation": DRRs with varied
kVp, mAs and geometry), then detector blur, scatter, quantum and electronic noise, a
logarithmic read-out with unsharp masking and a tone curve, as a CR/DX system would do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._geometry import View, rotation
from ._phantom import ViewSpec

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def make_view(spec: ViewSpec, size: int, rng: np.random.Generator) -> View:
    """Detector geometry for a view: small beam tilts, the in-plane roll and framing offset."""
    beam = np.cross(spec.eu, spec.ev)
    tilt = rotation(spec.eu, rng.normal(0.0, 2.0)) @ rotation(spec.ev, rng.normal(0.0, 2.0))
    roll = rotation(beam, spec.roll_deg)
    eu = roll @ tilt @ spec.eu
    ev = roll @ tilt @ spec.ev
    fov = spec.fov_mm * float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
    spacing = fov / size
    centre = spec.center + (eu * rng.normal(0.0, 0.04) + ev * rng.normal(0.0, 0.04)) * fov
    origin = centre - (size - 1) / 2.0 * spacing * (eu + ev)
    return View(origin, eu, ev, np.cross(eu, ev), spacing, (size, size))


def trabecular_texture(shape: tuple[int, int], spacing: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance streaky texture (two trabecular orientations, ~1 mm scale).

    Drawn at half resolution and upsampled, which is plenty for a sub-millimetre pattern.
    """
    h, w = shape
    small = (max(h // 2, 8), max(w // 2, 8))
    step = 2.0 * spacing
    noise = rng.standard_normal(small, dtype=np.float32)
    out = np.zeros(small, dtype=np.float32)
    s_long = float(np.clip(1.4 / step, 1.0, 5.0))
    s_short = float(np.clip(0.3 / step, 0.4, 1.5))
    half = int(np.ceil(2.5 * s_long))
    grid = np.arange(-half, half + 1, dtype=np.float32)
    xx, yy = np.meshgrid(grid, grid)
    for angle in rng.uniform(0.0, np.pi, 2):
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        kernel = np.exp(-0.5 * ((u / s_long) ** 2 + (v / s_short) ** 2)).astype(np.float32)
        out += cv2.filter2D(noise, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
    out -= _smooth(out, 3.0 * s_long)
    out /= max(float(out.std()), 1e-6)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Large Gaussian blur computed at reduced resolution (for low-frequency components)."""
    h, w = img.shape
    factor = max(1, int(sigma_px // 4))
    small = cv2.resize(img, (max(w // factor, 1), max(h // factor, 1)),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def lead_marker(shape: tuple[int, int], spacing: float, letter: str,
                rng: np.random.Generator) -> np.ndarray:
    """Attenuation (line integral) of a lead letter in a plastic holder near a top corner."""
    h, w = shape
    out = np.zeros(shape, dtype=np.float32)
    height = 7.0 / spacing
    scale = height / 22.0
    thick = max(1, int(round(height / 7.0)))
    (tw, th), _ = cv2.getTextSize(letter, _FONT, scale, thick)
    margin = int(rng.uniform(0.04, 0.1) * w)
    left = rng.random() < 0.5
    x = margin if left else w - margin - tw
    y = int(rng.uniform(0.06, 0.18) * h) + th
    pad = int(0.35 * th)
    cv2.rectangle(out, (x - pad, y - th - pad), (x + tw + pad, y + pad), 0.12, -1)
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.putText(mask, letter, (x, y), _FONT, scale, 255, thick, cv2.LINE_AA)
    out += (2.5 / 255.0) * mask.astype(np.float32)
    return out


@dataclass(frozen=True)
class Exposure:
    """Acquisition and processing parameters of one image."""

    detector_per_mm2: float
    scatter: float
    electronic: float
    usm: float
    drc: float
    gamma: float
    texture: float
    heel: float
    bits: int


def sample_exposure(rng: np.random.Generator, anatomy: str, bits: int) -> Exposure:
    """Random exposure (I0), scatter, processing strength and tone curve."""
    hip = anatomy == "hip"
    return Exposure(
        detector_per_mm2=float(np.exp(rng.normal(np.log(7e3 if hip else 2e4), 0.35))),
        scatter=float(rng.uniform(0.2, 0.7) if hip else rng.uniform(0.05, 0.2)),
        electronic=float(rng.uniform(1.0, 6.0)),
        usm=float(rng.uniform(0.2, 1.2)),
        drc=float(rng.uniform(0.5, 0.85) if hip else rng.uniform(0.2, 0.5)),
        gamma=float(rng.uniform(1.4, 2.2) if hip else rng.uniform(0.9, 1.4)),
        texture=float(rng.uniform(0.15, 0.3)),
        heel=float(rng.uniform(-0.12, 0.12)),
        bits=bits,
    )


def expose(plain: np.ndarray, trab: np.ndarray, view: View, exp: Exposure,
           rng: np.random.Generator, marker: np.ndarray | None) -> np.ndarray:
    """Processed image in [0, 1], bone bright (a MONOCHROME2 rendering before quantisation)."""
    h, w = plain.shape
    tex = trabecular_texture(plain.shape, view.spacing, rng)
    line = plain + trab * (1.0 + np.float32(exp.texture) * tex)
    if marker is not None:
        line = line + marker
    ramp = np.linspace(1.0 - exp.heel, 1.0 + exp.heel, h, dtype=np.float32)[:, None]
    primary = np.exp(-line) * ramp
    primary = cv2.GaussianBlur(primary, (0, 0), 0.55)
    signal = primary + exp.scatter * _smooth(primary, 30.0 / view.spacing) * float(
        primary.mean() > 0)
    # automatic exposure control: the median signal behind the patient reaches the target dose
    behind = signal[::4, ::4]
    behind = behind[behind < 0.8]
    level = float(np.median(behind)) if behind.size else 1.0
    i0 = exp.detector_per_mm2 * view.spacing**2 / max(level, 1e-4)
    counts = i0 * signal
    # quantum (Poisson, Gaussian approximation) and electronic noise in one draw
    counts += np.sqrt(counts + exp.electronic**2) * rng.standard_normal((h, w),
                                                                         dtype=np.float32)
    p = -np.log(np.maximum(counts, 1.0) / i0, dtype=np.float32)
    detail = p - _smooth(p, 2.5 / view.spacing)
    low = _smooth(p, 25.0 / view.spacing)
    p = p + exp.usm * detail - exp.drc * (low - float(low.mean()))
    sample = p[::4, ::4]
    lo = float(np.percentile(sample, 0.5))
    hi = float(np.percentile(sample, 99.8))
    x = np.clip((p - lo) / max(hi - lo, 1e-3), 0.0, 1.0)
    return np.power(x, exp.gamma, dtype=np.float32)


def quantise(img01: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Stored values (uint16, bone bright) using most of ``bits`` of range."""
    top = (1 << bits) - 1
    floor = rng.uniform(0.0, 0.04) * top
    span = rng.uniform(0.85, 0.95) * top
    return np.round(floor + img01 * span).astype(np.uint16)


def burn_text(pixels: np.ndarray, text: str, value: int, rng: np.random.Generator) -> None:
    """Burn a text label (display white) into the bottom of the image, in place."""
    h, w = pixels.shape
    scale = h / 900.0
    thick = max(1, int(round(h / 400.0)))
    (tw, th), _ = cv2.getTextSize(text, _FONT, scale, thick)
    x = int(rng.uniform(0.03, 0.08) * w) if rng.random() < 0.6 else max(w - tw - int(0.04 * w), 0)
    y = h - int(rng.uniform(0.03, 0.07) * h)
    mask = np.zeros((h, w), dtype=np.uint8)
    cv2.putText(mask, text, (x, y), _FONT, scale, 255, thick, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255.0
    blended = pixels * (1.0 - alpha) + float(value) * alpha
    pixels[...] = np.round(blended).astype(pixels.dtype)


def window(pixels: np.ndarray) -> tuple[float, float]:
    """Window centre and width covering the 1st-99.5th percentile of stored values."""
    sample = pixels[::3, ::3]
    lo = float(np.percentile(sample, 1.0))
    hi = float(np.percentile(sample, 99.5))
    return round((lo + hi) / 2.0, 1), round(max(hi - lo, 2.0) * 1.05, 1)
