"""Which views the pipeline processes, and with which model.

Loop protection first: structured reports, key objects, presentation states, segmentations
and anything the node produced are never processed. Then the route rules of
``pipeline.routes`` pick a model by normalised body part, view position, laterality and SOP
class; with no rules every CR/DX image goes to the demo model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.preprocess import normalise_body_part

__all__ = ["IMAGE_SOP_CLASSES", "Route", "RouteLike", "ViewHeader", "route_for", "site_of"]

# CR, DX for presentation / processing (the radiographs the models are made for).
IMAGE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
})
# Prefixes of SOP classes that are never images to analyse (SR, KO, PR, SEG, ...).
_NEVER_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports and key object selection
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66.",  # segmentation, registration, surfaces
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated documents
)


class RouteLike(Protocol):
    """A route rule (``pacs_node.config.RouteRule`` satisfies it)."""

    name: str
    model: str
    body_parts: list[str]
    view_positions: list[str]
    lateralities: list[str]
    sop_classes: list[str]


@dataclass(frozen=True)
class Route:
    name: str = "default"
    model: str = "demo"
    body_parts: list[str] = field(default_factory=list)
    view_positions: list[str] = field(default_factory=list)
    lateralities: list[str] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)


DEFAULT_ROUTE = Route()


@dataclass(frozen=True)
class ViewHeader:
    """What routing needs to know of one stored instance."""

    sop_instance_uid: str
    sop_class_uid: str
    body_part: str  # normalised
    view_position: str
    laterality: str
    produced: bool


def site_of(view: ViewHeader) -> str:
    """Anatomic site for aggregation: normalised body part plus laterality."""
    return f"{view.body_part} {view.laterality}".strip()


def _matches(values: Sequence[str], value: str) -> bool:
    return not values or value.upper() in {v.upper() for v in values}


def route_for(view: ViewHeader, routes: Sequence[RouteLike]) -> RouteLike | None:
    """The first route that takes ``view``, or ``None`` when it is not to be processed."""
    if view.produced or view.sop_class_uid.startswith(_NEVER_PREFIXES):
        return None
    if not routes:
        return DEFAULT_ROUTE if view.sop_class_uid in IMAGE_SOP_CLASSES else None
    for rule in routes:
        allowed = rule.sop_classes or sorted(IMAGE_SOP_CLASSES)
        if (view.sop_class_uid in allowed
                and _matches([normalise_body_part(b) for b in rule.body_parts], view.body_part)
                and _matches(rule.view_positions, view.view_position)
                and _matches(rule.lateralities, view.laterality)):
            return rule
    return None
