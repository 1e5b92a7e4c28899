"""The node's Prometheus instruments (``prometheus-client``), shared by every process that
records: ``pacs-node serve`` (DIMSE, DICOMweb, delivery, the embedded jobs) and
``pacs-node worker`` (Celery processes running jobs). They live here, not in
``pacs_node``, because a worker must not import the node's edges (arrows point one way).

Multiprocess-safe by prometheus-client's own multiprocess mode: each process writes its
counters and histograms to memory-mapped files in one folder (``metrics.multiprocess_dir``)
and ``/metrics`` sums the files of every process at scrape time
(:class:`prometheus_client.multiprocess.MultiProcessCollector`). The mode is chosen by the
``PROMETHEUS_MULTIPROC_DIR`` environment variable, which prometheus-client reads when it is
first imported and when an instrument's value is first created; so the entry point calls
:func:`use_multiprocess_dir` before anything records, and the instruments are built on
first use (:func:`instruments`), never at import. Without a folder (a test that builds the
HTTP app in-process) the instruments count in this process only.

Gauges of the index's state (queue depth, results, pending exports, store bytes) are not
instruments: ``pacs_node.observability`` computes them from the SQL index at scrape time,
so they are right whichever process changed the index.

Label values are bounded sets (DIMSE status codes the node answers, model and destination
names from the configuration, priorities): never a UID, a patient value or a peer's text.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # prometheus-client is imported on first use, after the folder is set
    from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = [
    "MULTIPROC_ENV",
    "Instruments",
    "instruments",
    "local_registry",
    "multiprocess_dir",
    "use_multiprocess_dir",
]

#: The environment variable prometheus-client reads to choose its multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DB_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")  # counter_1234.db, histogram_1234.db

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                 120.0)
_INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# From the first instance received to the last result at a destination: the stability
# wait alone is study.stable_seconds (5 s by default).
_DELIVERY_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
                     7200.0, 21600.0, 86400.0)


def use_multiprocess_dir(folder: Path, *, clean: bool) -> None:
    """Make this process (and the processes it forks or starts) record into ``folder``.

    Args:
        folder: a folder on a local filesystem (memory-mapped files), created if missing.
        clean: remove the files of processes that have ended (``pacs-node serve`` at its
            start: their counts belong to an earlier run; a counter that restarts is a
            reset Prometheus expects). Workers never clean: a Celery child recycled while
            the node runs keeps its counts.

    Raises:
        RuntimeError: prometheus-client was imported or an instrument built before, in
            single-process mode: the instruments would silently count in this process only.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    current = os.environ.get(MULTIPROC_ENV)
    if current == str(folder):
        return
    values = sys.modules.get("prometheus_client.values")
    if instruments.cache_info().currsize or \
            (values is not None and current is None):
        raise RuntimeError("prometheus_client was imported before the metrics folder was "
                           "set: call use_multiprocess_dir first (in the entry point)")
    if clean:
        for entry in folder.iterdir():
            match = _DB_FILE.match(entry.name)
            if match and not _alive(int(match.group(1))):
                entry.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)


def multiprocess_dir() -> Path | None:
    """The folder this process records into, or None (single-process mode)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@dataclass(frozen=True)
class Instruments:
    """Every counter and histogram the node records (names are ``pacsnode_*``)."""

    associations: Counter
    cstore_instances: Counter
    cstore_bytes: Counter
    http_duration: Histogram
    inference_duration: Histogram
    delivery_attempts: Counter
    time_to_delivery: Histogram

    def association(self, outcome: str) -> None:
        """An association ``accepted``/``rejected`` at negotiation, ``released``/``aborted``
        at its end."""
        self.associations.labels(outcome=outcome).inc()

    def cstore(self, status: int, size: int) -> None:
        """One C-STORE answered with ``status``; ``size``: its data set's bytes."""
        label = f"0x{status & 0xFFFF:04X}"
        self.cstore_instances.labels(status=label).inc()
        self.cstore_bytes.labels(status=label).inc(max(0, size))

    def http_request(self, service: str, status: int, seconds: float) -> None:
        """One HTTP request of ``service`` (stow, qido, wado, other) answered ``status``."""
        self.http_duration.labels(
            service=service, status=str(status)).observe(seconds)

    def inference(self, model: str, seconds: float) -> None:
        """One model's predictions for one study's views took ``seconds``."""
        self.inference_duration.labels(model=model[:64]).observe(seconds)

    def delivery(self, destination: str, outcome: str, count: int = 1) -> None:
        """``count`` objects sent to ``destination`` (``sent``) or not (``failed``)."""
        if count:
            self.delivery_attempts.labels(
                destination=destination, outcome=outcome).inc(count)

    def delivered(self, priority: str, destination: str, seconds: float) -> None:
        """A job's results all reached ``destination``, ``seconds`` after the study's first
        instance arrived."""
        self.time_to_delivery.labels(
            priority=priority, destination=destination).observe(max(0.0, seconds))


_LOCAL: list[CollectorRegistry] = []  # the registry of single-process mode, once built


@cache
def instruments() -> Instruments:
    """The process's instruments, built on first use (after :func:`use_multiprocess_dir`).

    In multiprocess mode they belong to no registry (``/metrics`` reads the files); in
    single-process mode to :func:`local_registry`.
    """
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry: CollectorRegistry | None = None
    if multiprocess_dir() is None:
        registry = CollectorRegistry(auto_describe=True)
        _LOCAL.append(registry)
    return Instruments(
        associations=Counter(
            "pacsnode_dimse_associations", "DIMSE associations by outcome: accepted or "
            "rejected at negotiation, released or aborted at their end", ["outcome"],
            registry=registry),
        cstore_instances=Counter(
            "pacsnode_cstore_instances", "C-STORE requests answered, by DIMSE status",
            ["status"], registry=registry),
        cstore_bytes=Counter(
            "pacsnode_cstore_bytes", "Data set bytes of C-STORE requests (without the file "
            "meta the node adds), by DIMSE status", ["status"], registry=registry),
        http_duration=Histogram(
            "pacsnode_http_request_duration_seconds", "HTTP request durations by service "
            "(stow, qido, wado, other) and status code", ["service", "status"],
            buckets=_HTTP_BUCKETS, registry=registry),
        inference_duration=Histogram(
            "pacsnode_inference_duration_seconds", "Time one model took on one study's "
            "views, by model name", ["model"], buckets=_INFERENCE_BUCKETS, registry=registry),
        delivery_attempts=Counter(
            "pacsnode_delivery_attempts", "Objects sent to a destination, by outcome (sent "
            "or failed)", ["destination", "outcome"], registry=registry),
        time_to_delivery=Histogram(
            "pacsnode_time_to_delivery_seconds", "From a study's first instance received "
            "to the last object of its result at a destination, by triage priority",
            ["priority", "destination"], buckets=_DELIVERY_BUCKETS, registry=registry),
    )


def local_registry() -> CollectorRegistry | None:
    """The registry of single-process mode (None in multiprocess mode or before any
    instrument was built)."""
    instruments()
    return _LOCAL[0] if _LOCAL else None
