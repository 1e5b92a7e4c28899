"""Readiness (``/readyz``): can the node take a study and process it now? Each check says
what is wrong in words an operator acts on, never a patient value or a path."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from storage import FileStore, OutOfResources

from ..receive import ensure_free_space

__all__ = ["Check", "Readiness"]

BROKER_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One readiness check: ``ok``, and when not, ``detail`` says why."""

    name: str
    ok: bool
    detail: str = "ok"


def _broker_check(url: str) -> None:
    """Connect to the Celery broker once (kombu, bounded by :data:`BROKER_TIMEOUT_S`)."""
    from kombu import Connection

    with Connection(url, connect_timeout=BROKER_TIMEOUT_S) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)


def _model_check(ref: str) -> None:
    """Load model ``ref`` (``"demo"`` or a checkpoint path) on the CPU."""
    from models.registry import DEMO_WEIGHTS, load_model

    load_model(DEMO_WEIGHTS if ref == "demo" else Path(ref), device="cpu")


def _signature(ref: str) -> tuple[str, int, int] | None:
    """What identifies a checkpoint's content cheaply: path, size, mtime (None: no file)."""
    from models.registry import DEMO_WEIGHTS

    path = DEMO_WEIGHTS if ref == "demo" else Path(ref)
    try:
        info = path.stat()
    except OSError:
        return None
    return str(path), info.st_size, info.st_mtime_ns


class Readiness:
    """The checks of ``/readyz``: the index answers, the broker answers (when Celery is
    configured), the store is writable and above ``storage.min_free_bytes``, every routed
    model loads.

    A model is loaded once per checkpoint content (path, size, mtime): later probes reuse
    the outcome, so a probe stays cheap.

    Args:
        sessions, store: the index and the file store.
        broker_url: ``queue.broker_url`` (``memory://``: embedded, no broker to check).
        min_free_bytes: ``storage.min_free_bytes``.
        models: the model references of ``pipeline.routes`` (``demo`` when none).
        broker_check, model_check: how to reach the broker and load a model (tests).
    """

    def __init__(self, sessions: sessionmaker[Session], store: FileStore, *, broker_url: str,
                 min_free_bytes: int, models: Sequence[str],
                 broker_check: Callable[[str], None] = _broker_check,
                 model_check: Callable[[str], None] = _model_check) -> None:
        self._sessions = sessions
        self._store = store
        self._broker_url = broker_url
        self._min_free = min_free_bytes
        self._models = tuple(dict.fromkeys(models)) or ("demo",)
        self._broker_check = broker_check
        self._model_check = model_check
        self._loaded: dict[str, tuple[object, str | None]] = {}
        self._lock = threading.Lock()

    def checks(self) -> list[Check]:
        """Run every check (blocking: call it from a worker thread)."""
        return [self._index(), self._broker(), self._storage(), self._loadable()]

    def _index(self) -> Check:
        try:
            with self._sessions() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return Check("index", False, f"the index does not answer: {type(exc).__name__}")
        return Check("index", True)

    def _broker(self) -> Check:
        if self._broker_url.startswith("memory://"):
            return Check("broker", True, "embedded (no broker)")
        try:
            self._broker_check(self._broker_url)
        except Exception as exc:  # noqa: BLE001
            return Check("broker", False, f"the Celery broker does not answer: "
                                          f"{type(exc).__name__}")
        return Check("broker", True)

    def _storage(self) -> Check:
        try:
            probe = self._store.incoming_path()
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"readyz")
            finally:
                os.close(fd)
                os.unlink(probe)
        except Exception as exc:  # noqa: BLE001 - StorageError or OSError
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            return Check("storage", False, f"the store is not writable: {reason}")
        try:
            free = ensure_free_space(self._store, self._min_free)
        except OutOfResources as exc:
            return Check("storage", False, str(exc))
        return Check("storage", True, f"{free} bytes free" if self._min_free else "ok")

    def _loadable(self) -> Check:
        failed = []
        for ref in self._models:
            signature = _signature(ref)
            if signature is None:
                failed.append(f"{_shown(ref)}: no such checkpoint")
                continue
            with self._lock:  # one load at a time; later probes reuse the outcome
                known = self._loaded.get(ref)
                if known is None or known[0] != signature:
                    try:
                        self._model_check(ref)
                        known = (signature, None)
                    except Exception as exc:  # noqa: BLE001 - any load failure
                        known = (signature, type(exc).__name__)
                    self._loaded[ref] = known
            if known[1] is not None:
                failed.append(f"{_shown(ref)}: does not load ({known[1]})")
        if failed:
            return Check("models", False, "; ".join(failed))
        return Check("models", True, f"{len(self._models)} loadable")


def _shown(ref: str) -> str:
    """A model reference as a message may show it: its file name, not the whole path."""
    return ref if ref == "demo" else Path(ref).name[:80]
