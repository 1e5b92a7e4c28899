"""The Celery application, built by the entry point (``pacs-node worker``), never at import.

Tasks take job ids only and reload everything from the index; each goes to the queue of
its lane (urgent, live, batch: :data:`workers.dispatch.QUEUES`), which workers serve in
that order. They are acknowledged late, re-delivered when a worker dies
(``task_reject_on_worker_lost``; attempts are capped by the job row itself), retried with
exponential backoff, and idempotent: a job that is done, superseded or held by another
worker is skipped by the claim.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from .dispatch import retry_delay
from .pipeline import JobFailed, StudyPipeline

__all__ = ["create_celery_app"]


def create_celery_app(broker_url: str, *, pipeline_factory: Callable[[], StudyPipeline],
                      max_attempts: int = 3, lease_seconds: float = 600.0) -> Celery:
    """A Celery app whose ``pacs_node.process_job`` task runs the study pipeline."""
    app = Celery("pacs_node", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue="pacs-node",
        broker_connection_retry_on_startup=True,
        # An unacknowledged message comes back after this long; the reconciler is faster.
        # "priority": a worker asks its queues in the order it was given them (urgent,
        # live, batch: workers.dispatch.QUEUES), Redis BRPOP answering from the first
        # non-empty one, so an urgent job waits for no live or batch job queued before it.
        broker_transport_options={"visibility_timeout": max(60.0, 2 * lease_seconds),
                                  "queue_order_strategy": "priority"},
        worker_hijack_root_logger=False,
    )
    state: dict[str, StudyPipeline] = {}

    @app.task(name="pacs_node.process_job", bind=True, max_retries=max_attempts)
    def process_job(self, job_id: int) -> str:  # type: ignore[no-untyped-def]
        if "pipeline" not in state:
            state["pipeline"] = pipeline_factory()
        try:
            return state["pipeline"].run(int(job_id))
        except JobFailed as exc:
            if exc.retry and self.request.retries < max_attempts:
                raise self.retry(countdown=retry_delay(self.request.retries + 1),
                                 exc=exc) from None
            return "failed"

    return app
