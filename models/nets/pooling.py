"""Global pooling layers of the global-pooling classifier (seed 000 §II.C.3, after Wang et al.)."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GlobalPool", "lse_pool"]

POOLING_MODES = ("avg", "max", "lse")


def lse_pool(x: torch.Tensor, r: float) -> torch.Tensor:
    """Log-Sum-Exp pooling over the spatial dimensions of ``x`` (N, D, H, W) -> (N, D).

    ``(1/r) * log(mean(exp(r * x)))`` (seed 000 §II.C.3; seed 001 eq. 1). It tends to the
    maximum as ``r`` grows and to the mean as ``r`` shrinks. Evaluated as
    ``max + log1p(mean(expm1(r * (x - max)))) / r`` so that it stays finite for large ``r`` or
    large inputs and keeps its precision for small ``r``.
    """
    if r <= 0 or not math.isfinite(r):
        raise ValueError(f"LSE sharpness r must be a positive finite number, got {r!r}")
    # Always in float32 at least: under bfloat16 autocast, mean(expm1(.)) can round to -1.
    flat = x.flatten(2)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    peak = flat.amax(dim=2, keepdim=True)
    # Detach the shift: the result is mathematically independent of it.
    z = r * (flat - peak.detach())
    return peak.squeeze(2) + torch.log1p(torch.expm1(z).mean(dim=2)) / r


class GlobalPool(nn.Module):
    """AVG | MAX | LSE pooling of (N, D, H, W) maps to (N, D) features."""

    def __init__(self, mode: str = "lse", *, r: float = 10.0) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {mode!r}")
        if mode == "lse" and (r <= 0 or not math.isfinite(r)):
            raise ValueError(f"LSE sharpness r must be a positive finite number, got {r!r}")
        self.mode = mode
        self.r = float(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avg":
            return x.mean(dim=(2, 3))
        if self.mode == "max":
            return x.amax(dim=(2, 3))
        return lse_pool(x, self.r)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", r={self.r}" if self.mode == "lse" else "")
