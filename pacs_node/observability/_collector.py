"""The index's state as Prometheus gauges, computed at scrape time from the SQL index
(:class:`storage.repositories.StatsRepository`): right whichever process (the node, a
Celery worker, the CLI) changed it, and nothing to keep in step between processes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from storage import FileStore
from storage.repositories import IndexStats, StatsRepository

from ..delivery import priority_label

__all__ = ["QUEUE_LANES", "IndexCollector"]

log = logging.getLogger(__name__)

#: The queue lanes of ``jobs.lane`` (storage.triage: served in this order); "default"
#: stands for every job while the schema has no lanes.
QUEUE_LANES = {0: "urgent", 1: "live", 2: "batch"}
_JOB_STATES = ("queued", "running", "failed")
_RESULT_STATES = ("positive", "negative", "not_analysed")


class IndexCollector(Collector):
    """``pacsnode_*`` gauges of the index and the store, read on each scrape.

    Args:
        sessions, store: the index and the file store.
        destinations: the configured destination names: the only destination labels
            (an export to another name counts under ``other``).
        min_free_bytes: ``storage.min_free_bytes``, reported beside the free bytes.
    """

    def __init__(self, sessions: sessionmaker[Session], store: FileStore, *,
                 destinations: Sequence[str], min_free_bytes: int) -> None:
        self._sessions = sessions
        self._store = store
        self._destinations = tuple(destinations)
        self._min_free = min_free_bytes

    def _read(self) -> IndexStats:
        with self._sessions() as session:
            return StatsRepository(session).snapshot()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started = time.perf_counter()
        up = GaugeMetricFamily("pacsnode_index_up", "Whether the index answered this scrape")
        try:
            stats = self._read()
        except Exception as exc:  # noqa: BLE001 - the scrape still reports the rest
            log.warning("metrics: the index cannot be read: %s", type(exc).__name__)
            up.add_metric([], 0)
            stats = None
        else:
            up.add_metric([], 1)
        yield up
        if stats is not None:
            yield from self._index_families(stats)
        yield from self._store_families()
        took = GaugeMetricFamily("pacsnode_index_scrape_duration_seconds",
                                 "Time this scrape took to read the index and the store")
        took.add_metric([], time.perf_counter() - started)
        yield took

    def _index_families(self, stats: IndexStats) -> Iterator[GaugeMetricFamily]:
        names = dict.fromkeys(QUEUE_LANES.values() if stats.lanes else ("default",), 0)
        jobs = dict.fromkeys(_JOB_STATES, 0)
        for (state, lane), n in stats.jobs.items():
            jobs[state] = jobs.get(state, 0) + n
            if state == "queued":
                name = "default" if lane is None else QUEUE_LANES.get(lane, "other")
                names[name] = names.get(name, 0) + n
        depth = GaugeMetricFamily("pacsnode_queue_depth", "Jobs queued in the index, per "
                                  "queue lane", labels=["queue"])
        for name, n in sorted(names.items()):
            depth.add_metric([name], n)
        yield depth
        by_state = GaugeMetricFamily("pacsnode_jobs", "Jobs queued, running or failed",
                                     labels=["state"])
        for state in _JOB_STATES:
            by_state.add_metric([state], jobs.get(state, 0))
        yield by_state
        results = GaugeMetricFamily("pacsnode_results", "Current (not superseded) study "
                                    "results by state", labels=["state"])
        for state in _RESULT_STATES:
            results.add_metric([state], stats.results.get(state, 0))
        yield results
        studies = GaugeMetricFamily("pacsnode_studies", "Studies by triage priority (none: "
                                    "not set yet)", labels=["priority"])
        counted = {"none": 0}
        for priority, n in stats.studies.items():
            label = priority_label(priority)
            counted[label] = counted.get(label, 0) + n
        for label, n in sorted(counted.items()):
            studies.add_metric([label], n)
        yield studies
        yield from self._pending_families(stats)
        stored = GaugeMetricFamily("pacsnode_store_bytes", "Bytes of the instances the "
                                   "index holds (received and produced)")
        stored.add_metric([], stats.instance_bytes)
        yield stored
        instances = GaugeMetricFamily("pacsnode_store_instances", "Instances the index holds")
        instances.add_metric([], stats.instances)
        yield instances

    def _pending_families(self, stats: IndexStats) -> Iterator[GaugeMetricFamily]:
        now = datetime.now(UTC)
        counts = dict.fromkeys(self._destinations, 0)
        ages = dict.fromkeys(self._destinations, 0.0)
        for destination, (n, oldest) in stats.pending.items():
            name = destination if destination in counts else "other"
            counts[name] = counts.get(name, 0) + n
            ages[name] = max(ages.get(name, 0.0), (now - oldest).total_seconds())
        pending = GaugeMetricFamily("pacsnode_exports_pending", "Result objects waiting to "
                                    "be sent, per destination", labels=["destination"])
        oldest_age = GaugeMetricFamily("pacsnode_exports_oldest_pending_age_seconds",
                                       "Age of the oldest object waiting to be sent, per "
                                       "destination (0: none waits)", labels=["destination"])
        for name in sorted(counts):
            pending.add_metric([name], counts[name])
            oldest_age.add_metric([name], max(0.0, ages[name]))
        yield pending
        yield oldest_age

    def _store_families(self) -> Iterator[GaugeMetricFamily]:
        free = GaugeMetricFamily("pacsnode_store_free_bytes", "Free bytes on the store's "
                                 "filesystem")
        try:
            free.add_metric([], self._store.free_bytes())
        except OSError as exc:
            log.warning("metrics: the store's free space cannot be read: %s", exc.strerror)
        else:
            yield free
        watermark = GaugeMetricFamily("pacsnode_store_min_free_bytes", "storage.min_free_"
                                      "bytes: below it ingest is refused (0: disabled)")
        watermark.add_metric([], self._min_free)
        yield watermark
