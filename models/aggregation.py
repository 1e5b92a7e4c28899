"""Study-level aggregation of per-view fracture probabilities (seed 004 §6.2.2).

Views of one anatomic site (normalised body part + laterality) are combined first, then the
sites into the study. Each rule maps probabilities in [0, 1] to one probability:

- ``max``: at least one (ALO, seed 004 §6.2.2): the study is as suspicious as its most
  suspicious view. Seed 004 Table 6.3 finds it beats majority voting because a fracture is not
  visible in every view.
- ``mean``: the average view probability.
- ``noisy_or``: ``1 - prod(1 - p)``: views as independent detectors.
- ``majority``: the fraction of views at or above ``threshold``; a study is positive when
  more than half of its views are (``> 0.5``; a tie counts as negative).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AGGREGATIONS",
    "SiteAggregate",
    "StudyAggregate",
    "aggregate",
    "aggregate_learned",
    "aggregate_study",
]

AGGREGATIONS = ("max", "mean", "noisy_or", "majority")


def aggregate(probabilities: Sequence[float], method: str, *, threshold: float = 0.5) -> float:
    """Combine view probabilities with ``method`` (one of :data:`AGGREGATIONS`)."""
    if method not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.size == 0:
        raise ValueError("cannot aggregate zero views")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("view probabilities must lie in [0, 1]")
    if method == "max":
        return float(p.max())
    if method == "mean":
        return float(p.mean())
    if method == "noisy_or":
        return float(1.0 - np.prod(1.0 - p))
    return float((p >= threshold).mean())


@dataclass(frozen=True)
class SiteAggregate:
    site: str
    probability: float
    views: int


@dataclass(frozen=True)
class StudyAggregate:
    probability: float
    positive: bool
    method: str
    threshold: float
    sites: tuple[SiteAggregate, ...]


def aggregate_study(
    views: Iterable[tuple[str, float]],
    method: str,
    *,
    threshold: float = 0.5,
) -> StudyAggregate:
    """Aggregate ``(site, probability)`` pairs per site, then across sites, with ``method``.

    The study is positive when its probability reaches ``threshold`` (for ``majority``, when
    more than half of the site votes are positive).
    """
    by_site: Mapping[str, list[float]] = defaultdict(list)
    for site, probability in views:
        by_site[site].append(float(probability))
    if not by_site:
        raise ValueError("a study needs at least one processed view to aggregate")
    sites = tuple(
        SiteAggregate(site, aggregate(ps, method, threshold=threshold), len(ps))
        for site, ps in sorted(by_site.items())
    )
    if method == "majority":
        # A site votes positive when most of its views do; the study when most sites do.
        study_p = float(np.mean([s.probability > 0.5 for s in sites]))
    else:
        study_p = aggregate([s.probability for s in sites], method, threshold=threshold)
    positive = study_p > 0.5 if method == "majority" else study_p >= threshold
    return StudyAggregate(study_p, bool(positive), method, threshold, sites)


def aggregate_learned(sites: Mapping[str, tuple[float, int]], *, method: str,
                      threshold: float = 0.5) -> StudyAggregate:
    """A study from per-site probabilities a learned aggregator (MVCNN) gave.

    ``sites`` maps site -> (probability, views). The network has already combined the views
    of each site (seed 004 §5.3); sites are combined by at least one (``max``).
    """
    if not sites:
        raise ValueError("a study needs at least one processed view to aggregate")
    parts = tuple(SiteAggregate(site, float(p), int(n)) for site, (p, n) in sorted(sites.items()))
    probability = max(s.probability for s in parts)
    return StudyAggregate(probability, probability >= threshold, method, threshold, parts)
