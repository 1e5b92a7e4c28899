"""Which views the pipeline processes, and with which model.

Loop protection first: structured reports, key objects, presentation states, segmentations
and anything the node produced are never processed. Then the route rules of
``pipeline.routes`` pick a model by normalised body part, view position, laterality and SOP
class; with no rules every CR/DX image is offered to the demo model.

Scope: a model answers only inside the anatomy it was trained on (``ModelMetadata.scope``).
A view offered to a model by the default route, or by a route that names no body parts, is
routed only if its normalised body part is in that model's scope; otherwise it is "not
analysed: out of scope (<body part>)". A route that names body parts is the operator's
explicit choice and is followed as written (that is how a site forces a view through a
model, e.g. to see the domain check refuse it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from models.preprocess import UNKNOWN, normalise_body_part

__all__ = ["IMAGE_SOP_CLASSES", "Route", "RouteLike", "Routing", "ViewHeader", "route_for",
           "site_of"]

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

    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def body_parts(self) -> list[str]: ...
    @property
    def view_positions(self) -> list[str]: ...
    @property
    def lateralities(self) -> list[str]: ...
    @property
    def sop_classes(self) -> list[str]: ...


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


@dataclass(frozen=True)
class Routing:
    """Where a view goes: ``route`` (None: nowhere) and, for an image the node will not
    analyse, ``reason`` in words for the reader ("" for objects that are never images)."""

    route: RouteLike | None
    reason: str = ""


def _out_of_scope(view: ViewHeader, rule: RouteLike,
                  scope_of: Callable[[str], Sequence[str]]) -> str:
    """Why ``rule``'s model must not judge ``view`` ("" when it may)."""
    if rule.body_parts:  # the operator chose these body parts for this model
        return ""
    scope = scope_of(rule.model)
    if not scope:
        return "out of scope (the model records no anatomy it was trained for)"
    if view.body_part == UNKNOWN:
        return "out of scope (body part unknown)"
    if view.body_part not in scope:
        return f"out of scope ({view.body_part})"
    return ""


def route_for(view: ViewHeader, routes: Sequence[RouteLike],
              scope_of: Callable[[str], Sequence[str]]) -> Routing:
    """The first route that takes ``view``, checked against its model's scope
    (``scope_of(model_ref)`` gives the body parts the model was trained on)."""
    if view.produced or view.sop_class_uid.startswith(_NEVER_PREFIXES):
        return Routing(None)
    if view.sop_class_uid not in IMAGE_SOP_CLASSES and not any(r.sop_classes for r in routes):
        return Routing(None)
    candidates: Sequence[RouteLike] = routes if routes else [DEFAULT_ROUTE]
    for rule in candidates:
        allowed = rule.sop_classes or sorted(IMAGE_SOP_CLASSES)
        if (view.sop_class_uid in allowed
                and _matches([normalise_body_part(b) for b in rule.body_parts], view.body_part)
                and _matches(rule.view_positions, view.view_position)
                and _matches(rule.lateralities, view.laterality)):
            reason = _out_of_scope(view, rule, scope_of)
            return Routing(None, reason) if reason else Routing(rule)
    if view.sop_class_uid in IMAGE_SOP_CLASSES:
        return Routing(None, "no route matches")
    return Routing(None)
