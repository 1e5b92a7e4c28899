"""From line integrals to stored pixel values: Beer-Lambert exposure, detector, processing.

``I = I0 exp(-integral mu dl)`` (seed 002, Appendix "Data Augmentation": DRRs with varied
kVp, mAs, geometry and patient size), then collimation, grid lines, detector blur, scatter,
quantum and electronic noise, a logarithmic read-out with exposure recognition on the
collimated field, unsharp masking (up to the halo look of heavy edge enhancement), dynamic
range compression and a tone curve, as a CR/DX system would do.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._geometry import View, rotation
from ._phantom import ViewSpec


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


def standard_normal(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Standard normal float32 image from OpenCV's generator seeded by ``rng`` (3x faster
    than NumPy's and, seeded each time, as deterministic)."""
    out = np.empty(shape, dtype=np.float32)
    cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
    cv2.randn(out, np.zeros(1), np.ones(1))
    return out


def trabecular_texture(shape: tuple[int, int], spacing: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance streaky texture (two trabecular orientations, ~1 mm scale).

    White noise filtered in the frequency domain by two oriented, elongated Gaussians (1.4 x
    0.3 mm) and a high-pass that removes what is coarser than three streak lengths. Drawn at
    half resolution and upsampled, which is plenty for a sub-millimetre pattern.
    """
    h, w = shape
    small = (max(h // 2, 8), max(w // 2, 8))
    step = 2.0 * spacing
    noise = standard_normal(small, rng)
    s_long = float(np.clip(1.4 / step, 1.0, 5.0))
    s_short = float(np.clip(0.3 / step, 0.4, 1.5))
    fy = np.fft.fftfreq(small[0]).astype(np.float32)[:, None]
    fx = np.fft.fftfreq(small[1]).astype(np.float32)[None, :]
    gain = np.zeros(small, dtype=np.float32)
    for angle in rng.uniform(0.0, np.pi, 2):
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        along, across = fx * c + fy * s, fy * c - fx * s
        gain += np.exp(np.float32(-2.0 * np.pi**2)
                       * (s_long**2 * along**2 + s_short**2 * across**2))
    gain *= 1.0 - np.exp(np.float32(-2.0 * np.pi**2 * (3.0 * s_long) ** 2) * (fx**2 + fy**2))
    spectrum = np.asarray(cv2.dft(noise, flags=cv2.DFT_COMPLEX_OUTPUT), dtype=np.float32)
    spectrum *= gain[:, :, None]
    out = np.asarray(cv2.dft(spectrum, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT
                             | cv2.DFT_SCALE), dtype=np.float32)
    out /= max(float(out.std()), 1e-6)
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Large Gaussian blur computed at reduced resolution (for low-frequency components)."""
    h, w = img.shape
    # a power of two: whole-pixel area averaging (fast) on the usual sizes
    factor = 1 << max(int(np.log2(max(sigma_px, 1.0) / 2.0)), 0)
    if factor == 1:
        return cv2.GaussianBlur(img, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    small = cv2.resize(img, (max(w // factor, 1), max(h // factor, 1)),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma_px / factor, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass(frozen=True)
class Exposure:
    """Acquisition and processing parameters of one image.

    ``detector_per_mm2`` is the dose behind the patient (quanta per mm^2, lower is noisier);
    ``usm`` and ``usm_mm`` the unsharp-mask gain and kernel (a large kernel with a high gain
    gives the halo look); ``tone`` is ``"gamma"`` or ``"sigmoid"`` (a film-like S curve of
    slope ``slope``), scaled so thick tissue lands on ``midgrey``; ``black`` is the
    percentile of the field shown black (higher on over-exposed, burnt-out looks).
    """

    detector_per_mm2: float
    scatter: float
    electronic: float
    usm: float
    usm_mm: float
    drc: float
    tone: str
    midgrey: float
    slope: float
    black: float
    texture: float
    heel: float
    bits: int


def sample_exposure(rng: np.random.Generator, anatomy: str, bits: int,
                    habitus: float = 1.0) -> Exposure:
    """Random exposure, scatter, processing strength and tone curve.

    ``habitus`` is the patient's soft-tissue scale (1 typical): a bigger patient scatters more
    and, with the tube at its limits, leaves fewer quanta on the detector (more noise).
    """
    hip = anatomy == "hip"
    dose = (7e3 if hip else 2e4) * float(np.exp(rng.normal(0.0, 0.45))) / max(habitus, 0.5) ** 1.5
    halo = bool(rng.random() < 0.15)
    return Exposure(
        detector_per_mm2=dose,
        scatter=float((rng.uniform(0.15, 0.55) if hip else rng.uniform(0.05, 0.2)) * habitus),
        electronic=float(rng.uniform(1.0, 6.0)),
        usm=float(rng.uniform(1.2, 2.5) if halo else rng.uniform(0.0, 1.4)),
        usm_mm=float(rng.uniform(6.0, 14.0) if halo else rng.uniform(1.5, 4.0)),
        drc=float(rng.uniform(0.5, 0.85) if hip else rng.uniform(0.2, 0.5)),
        tone="sigmoid" if rng.random() < 0.35 else "gamma",
        midgrey=float(rng.uniform(0.4, 0.62)),
        slope=float(rng.uniform(3.0, 7.0)),
        black=float(rng.choice([0.5, 0.5, 0.5, 1.5, 4.0])),
        texture=float(rng.uniform(0.15, 0.3)),
        heel=float(rng.uniform(-0.12, 0.12)),
        bits=bits,
    )


@dataclass(frozen=True)
class RandomFields:
    """The random images of one exposure: trabecular texture and unit quantum noise."""

    texture: np.ndarray
    noise: np.ndarray


def draw_fields(shape: tuple[int, int], spacing: float,
                rng: np.random.Generator) -> RandomFields:
    """Draw the texture and noise of one exposure (shared by a broken/intact twin pair)."""
    texture = trabecular_texture(shape, spacing, rng)
    return RandomFields(texture, standard_normal(shape, rng))


@dataclass(frozen=True)
class Beam:
    """What lies in the beam besides the patient, identical in both images of a twin pair.

    ``extra`` is a line integral added to the patient's (markers, rulers, implants, casts)
    and ``metal`` the part of it that is metal or lead: it also stops the scatter from
    above it, and where it exceeds ``DENSE`` exposure recognition ignores it. ``field`` is
    the collimator transmission (1 in the exposed field); ``grid`` multiplies the primary
    (grid lines); ``shutter`` is 1 in the field and 0 where an electronic shutter blacks
    it out.
    """

    extra: np.ndarray | None = None
    metal: np.ndarray | None = None
    field: np.ndarray | None = None
    grid: np.ndarray | None = None
    shutter: np.ndarray | None = None
    scatter_gain: np.ndarray | None = None
    field_norm: np.ndarray | None = None
    sample_mask: np.ndarray | None = None


def make_beam(view: View, *, extra: np.ndarray | None = None, metal: np.ndarray | None = None,
              field: np.ndarray | None = None, grid: np.ndarray | None = None,
              shutter: np.ndarray | None = None) -> Beam:
    """A :class:`Beam` with what every exposure of the view derives from it computed once:
    how far scatter reaches past the shutters and through metal, and the field's weight
    in the low-frequency estimate, and which pixels exposure recognition samples."""
    gain = None
    norm = None
    if field is not None:
        # scatter from the irradiated volume reaches past the shutters (the glow at their
        # edges), fading within a centimetre or two as the grid and their shadow cut it off
        gain = 0.15 + 0.85 * _smooth(field, 6.0 / view.spacing)
        norm = 1.0 / np.maximum(_smooth(field, _LOW_MM / view.spacing), 1e-3)
    if metal is not None:  # metal stops the scatter from above it (half of it)
        rows = np.flatnonzero(metal.any(axis=1))
        cols = np.flatnonzero(metal.any(axis=0))
        if len(rows):
            if gain is None:
                gain = np.ones(metal.shape, dtype=np.float32)
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            gain[box] *= np.exp(np.float32(-0.5) * metal[box])
    return Beam(extra, metal, field, grid, shutter, gain, norm, _field_sample(field, metal))


_LOW_MM = 25.0  # scale of the low frequencies that dynamic range compression flattens
DENSE = 0.5  # line integral of metal or lead above which a pixel is left out of the levels
_NO_BEAM = Beam()


def _field_sample(field: np.ndarray | None, metal: np.ndarray | None) -> np.ndarray | None:
    """Mask of the 4x-subsampled pixels inside the exposed field and off metal, or None."""
    mask = None
    if field is not None:
        mask = field[::4, ::4] > 0.9
    if metal is not None:
        off = metal[::4, ::4] <= DENSE
        mask = off if mask is None else mask & off
    if mask is not None and mask.sum() < 16:
        return None
    return mask


@dataclass(frozen=True)
class Levels:
    """An image's exposure recognition: dose scale, processing ceiling, low-frequency mean,
    black and white points and tone reference."""

    i0: float
    ceiling: float
    low_mean: float
    lo: float
    hi: float
    ref: float


@dataclass(frozen=True)
class Exposed:
    """What the twin of an image reuses from it: its levels, and its scatter and dynamic
    range compression maps, which a fracture changes negligibly (they vary over 25-30 mm)."""

    levels: Levels
    scatter: np.ndarray
    compression: np.ndarray


Region = tuple[slice, slice]


def expose(plain: np.ndarray, trab: np.ndarray, view: View, exp: Exposure,
           fields: RandomFields, beam: Beam = _NO_BEAM, *, reuse: Exposed | None = None,
           region: Region | None = None) -> tuple[np.ndarray, Exposed]:
    """Processed image in [0, 1], bone bright (a MONOCHROME2 rendering before quantisation),
    and what a twin may reuse from it.

    Exposure recognition (automatic exposure control, the percentiles that set black and
    white, the dynamic range compression) looks only at the exposed field off metal, as
    CR/DX systems do, so collimated borders and implants saturate white and the anatomy
    keeps its contrast. A twin (``reuse`` from the image) may be processed over a
    ``region`` of the view only: ``plain`` and ``trab`` then cover just that region, which
    must reach a few unsharp-mask radii past where the two images differ.
    """
    cut = region if region is not None else (slice(None), slice(None))

    def part(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[cut]

    extra, field, grid = part(beam.extra), part(beam.field), part(beam.grid)
    texture, noise = fields.texture[cut], fields.noise[cut]
    line = texture * np.float32(-exp.texture)  # negated: exp(-line) in place below
    line -= 1.0
    line *= trab
    line -= plain
    if extra is not None:
        line -= extra
    primary = np.exp(line, out=line)
    ramp = np.linspace(1.0 - exp.heel, 1.0 + exp.heel, view.shape[0], dtype=np.float32)
    primary *= ramp[cut[0], None]
    if grid is not None:
        primary *= grid
    if field is not None:
        primary *= field
    primary = cv2.GaussianBlur(primary, (0, 0), 0.55)
    if reuse is None:
        scatter = _smooth(primary, 30.0 / view.spacing)
        if beam.scatter_gain is not None:
            scatter *= beam.scatter_gain
        scatter *= np.float32(exp.scatter)
    else:
        scatter = reuse.scatter[cut]
    signal = primary + scatter
    sample_mask = beam.sample_mask

    def sample(img: np.ndarray) -> np.ndarray:
        small = img[::4, ::4]
        return small[sample_mask] if sample_mask is not None else small.ravel()

    if reuse is None:
        # automatic exposure control: the median signal behind the patient reaches the dose
        behind = sample(signal)
        behind = behind[behind < 0.8]
        level = float(np.median(behind)) if behind.size else 1.0
        i0 = exp.detector_per_mm2 * view.spacing**2 / max(level, 1e-4)
    else:
        i0 = reuse.levels.i0
    counts = np.float32(i0) * signal
    # quantum (Poisson, Gaussian approximation) and electronic noise in one draw
    counts += np.sqrt(counts + np.float32(exp.electronic**2)) * noise
    np.maximum(counts, 1.0, out=counts)
    p = np.log(counts, out=counts)
    np.subtract(np.float32(np.log(i0)), p, out=p)
    if reuse is None:
        lo, hi = np.percentile(sample(p), [exp.black, 99.8])
        ceiling = float(hi + 0.15 * (hi - lo))
    else:
        ceiling = reuse.levels.ceiling
    # what lies past the field's range (shutters, metal, lead) bypasses the processing, so it
    # stays white and rings only as much as the field's own edges
    excess = np.maximum(p - np.float32(ceiling), 0.0)
    np.minimum(p, np.float32(ceiling), out=p)
    detail = _smooth(p, exp.usm_mm / view.spacing)
    np.subtract(p, detail, out=detail)
    detail *= np.float32(exp.usm)
    p += detail
    if reuse is None:
        low_scale = _LOW_MM / view.spacing
        if beam.field is not None and beam.field_norm is not None:  # the field's own
            low = _smooth(p * beam.field, low_scale) * beam.field_norm  # low frequencies
        else:
            low = _smooth(p, low_scale)
        low_mean = float(np.mean(sample(low)))
        low -= np.float32(low_mean)
        low *= np.float32(exp.drc)
        if beam.field is not None:
            low *= beam.field
        compression = low
    else:
        low_mean = reuse.levels.low_mean
        compression = reuse.compression[cut]
    p -= compression
    if reuse is None:
        lo, hi = np.percentile(sample(p), [exp.black, 99.8])
    else:
        lo, hi = reuse.levels.lo, reuse.levels.hi
    p += excess
    p -= np.float32(lo)
    p *= np.float32(1.0 / max(hi - lo, 1e-3))
    x = np.clip(p, 0.0, 1.0, out=p)
    ref = _body_median(sample(x)) if reuse is None else reuse.levels.ref
    x = _tone(x, ref, exp)
    shutter = part(beam.shutter)
    if shutter is not None:
        x *= shutter
    levels = Levels(float(i0), ceiling, low_mean, float(lo), float(hi), ref)
    return x, Exposed(levels, scatter, compression)


def _body_median(values: np.ndarray) -> float:
    """Median of the values above their Otsu threshold: the patient, not the air around."""
    hist, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(hist * (edges[:-1] + edges[1:]) / 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight / total - mean) ** 2 / (weight * (total - weight))
    cut = edges[int(np.nanargmax(between[:-1])) + 1] if total > 0 else 0.0
    body = values[values > cut]
    return float(np.median(body)) if body.size else 0.5


def _tone(x: np.ndarray, ref: float, exp: Exposure) -> np.ndarray:
    """The tone curve, from [0, 1] onto [0, 1], taking ``ref`` (the median of the patient
    in the field) to ``midgrey``."""
    ref = float(np.clip(ref, 0.05, 0.95))
    if exp.tone == "sigmoid":  # film-like: steepest at the reference
        k = np.float32(exp.slope)
        lo, hi = np.tanh(-k * ref), np.tanh(k * (1.0 - ref))
        x = (np.tanh(k * (x - np.float32(ref))) - np.float32(lo)) / np.float32(hi - lo)
        ref = float(-lo / (hi - lo))
    gamma = float(np.clip(np.log(exp.midgrey) / np.log(max(ref, 1e-3)), 0.4, 4.0))
    return np.power(x, np.float32(gamma), dtype=np.float32)


def quantise(img01: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Stored values (uint16, bone bright) using most of ``bits`` of range."""
    top = (1 << bits) - 1
    floor = rng.uniform(0.0, 0.04) * top
    span = rng.uniform(0.85, 0.95) * top
    return np.round(floor + img01 * span).astype(np.uint16)


def window(pixels: np.ndarray, field: np.ndarray | None = None) -> tuple[float, float]:
    """Window centre and width covering the 1st-99.5th percentile of stored values.

    With ``field`` (a boolean mask) only those pixels count: the exposed field off metal,
    so collimated borders, implants and burned-in text fall outside the window.
    """
    sample = pixels[::3, ::3]
    if field is not None and field[::3, ::3].sum() >= 16:
        sample = sample[field[::3, ::3]]
    lo = float(np.percentile(sample, 1.0))
    hi = float(np.percentile(sample, 99.5))
    return round((lo + hi) / 2.0, 1), round(max(hi - lo, 2.0) * 1.05, 1)
