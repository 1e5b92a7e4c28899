"""Observability: Prometheus metrics, liveness and readiness (issue 14 item 4), served by
:mod:`pacs_node.http.monitoring` at ``/metrics``, ``/healthz`` and ``/readyz``.

The counters and histograms are recorded where things happen, through
:func:`workers.metrics.instruments` (multiprocess-safe: see that module); the index's
state is read at scrape time by :class:`IndexCollector`; :class:`Readiness` says whether
the node can take and process a study now, and why not.
"""

from ._collector import QUEUE_LANES, IndexCollector
from ._exposition import exposition, http_service, index_registry
from ._ready import Check, Readiness

__all__ = ["QUEUE_LANES", "Check", "IndexCollector", "Readiness", "exposition",
           "http_service", "index_registry"]
