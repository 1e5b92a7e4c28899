"""The text exposition of ``/metrics`` and the DICOMweb service of a request (the label
of its duration)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from workers.metrics import local_registry, multiprocess_dir

from ._collector import IndexCollector

__all__ = ["exposition", "http_service", "index_registry"]

_SEARCH_RESOURCES = frozenset({"studies", "series", "instances"})


def http_service(method: str, path: str, dicomweb_prefix: str) -> str:
    """The DICOMweb service of a request, a bounded label: ``stow`` (POST), ``qido`` (a
    search: the path ends in studies, series or instances), ``wado`` (any other read),
    ``other`` (outside DICOMweb)."""
    if not path.startswith(dicomweb_prefix + "/"):
        return "other"
    if method == "POST":
        return "stow"
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return "qido" if last in _SEARCH_RESOURCES else "wado"


def index_registry(collector: IndexCollector) -> CollectorRegistry:
    """A registry holding only ``collector`` (read at each scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(index: CollectorRegistry) -> bytes:
    """Every process's instruments (summed from the multiprocess folder, or this
    process's own) and the index's gauges (``index``), in the text format."""
    folder = multiprocess_dir()
    if folder is not None:
        recorded = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(recorded, path=str(folder))
        own = generate_latest(recorded)
    else:
        local = local_registry()
        own = generate_latest(local) if local is not None else b""
    return own + generate_latest(index)
