"""The SQL index: SQLAlchemy 2 declarative models.

The migrations in ``storage/migrations`` build this schema; tests check the two agree.
Timestamps are aware UTC datetimes (:class:`~storage._types.UTCDateTime`). ORM objects
keep the default ``repr`` so patient data never reaches a log through one.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ._types import Id, UTCDateTime
from .triage import PrioritySource, TriagePriority

__all__ = [
    "ApiToken",
    "Base",
    "Batch",
    "BatchItem",
    "BatchState",
    "ItemState",
    "Export",
    "ExportState",
    "Instance",
    "InstanceSource",
    "Job",
    "JobState",
    "Notification",
    "NodeControl",
    "Patient",
    "PriorityEvent",
    "Result",
    "Series",
    "Study",
    "StudyState",
    "TokenRole",
]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class StudyState(StrEnum):
    RECEIVING = "receiving"
    SETTLED = "settled"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class ResultState(StrEnum):
    """What a study result says: ``analysed`` (at least one view was judged: a probability
    and a verdict) or ``not_analysed`` (no view could be: no probability, a reason)."""

    ANALYSED = "analysed"
    NOT_ANALYSED = "not_analysed"


class InstanceSource(StrEnum):
    RECEIVED = "received"
    PRODUCED = "produced"


class TokenRole(StrEnum):
    """What an HTTP API token may do: ``reader`` search and retrieve (QIDO/WADO),
    ``writer`` store (STOW), ``admin`` everything, the admin API included."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"


class ExportState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


class BatchState(StrEnum):
    """A re-processing batch: ``querying`` (asking the remote which studies match),
    ``running``, ``paused`` (by an operator), ``cancelled``, ``done`` (every item done,
    skipped or failed) or ``failed`` (its query could not be answered)."""

    QUERYING = "querying"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"
    FAILED = "failed"


class ItemState(StrEnum):
    """One study of a batch: pending -> querying (an accession to resolve) -> retrieving
    -> settled (its job is queued) -> processing -> done; or skipped or failed, with why."""

    PENDING = "pending"
    QUERYING = "querying"
    RETRIEVING = "retrieving"
    SETTLED = "settled"
    PROCESSING = "processing"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


def _one_of(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(m)) for m in enum)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), int: Integer(), float: Float()}


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), unique=True, default="")
    patient_name: Mapped[str] = mapped_column(String(256), default="")
    birth_date: Mapped[str] = mapped_column(String(16), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        CheckConstraint(_one_of("state", StudyState), name="state"),
        CheckConstraint("triage_priority IS NULL OR "
                        + _one_of("triage_priority", TriagePriority), name="triage_priority"),
        Index("ix_studies_state_last_received_at", "state", "last_received_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[int] = mapped_column(
        Id, ForeignKey("patients.id", ondelete="RESTRICT"), index=True)
    study_date: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    modalities_in_study: Mapped[str] = mapped_column(String(128), default="")
    instance_count: Mapped[int] = mapped_column(default=0)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING)
    priority: Mapped[float | None]
    # storage.triage.TriagePriority; None until a result or the sender says otherwise.
    triage_priority: Mapped[str | None] = mapped_column(String(16), index=True)
    # Why the sender asked for urgency (C-STORE Priority HIGH, STAT): a floor, or None.
    requested_priority: Mapped[str | None] = mapped_column(String(64))
    current_job_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("jobs.id", ondelete="SET NULL", use_alter=True))

    patient: Mapped[Patient] = relationship()


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_id: Mapped[int] = mapped_column(
        Id, ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None]
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    laterality: Mapped[str] = mapped_column(String(16), default="")

    study: Mapped[Study] = relationship()


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (CheckConstraint(_one_of("source", InstanceSource), name="source"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[int] = mapped_column(
        Id, ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    instance_number: Mapped[int | None]
    relpath: Mapped[str] = mapped_column(String(256))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int | None]
    columns: Mapped[int | None]
    view_position: Mapped[str] = mapped_column(String(16), default="")
    image_laterality: Mapped[str] = mapped_column(String(16), default="")
    photometric_interpretation: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16), default=InstanceSource.RECEIVED)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    # The job that produced this instance (the node's own results; None when received).
    job_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    # A produced instance replaced by a newer job's result: hidden from queries, withdrawn.
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)

    series: Mapped[Series] = relationship()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_one_of("state", JobState), name="state"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_id: Mapped[int] = mapped_column(
        Id, ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    # Runs started (the fencing token of claim/complete/fail).
    attempts: Mapped[int] = mapped_column(default=0)
    # Runs that raised, bounded by max_attempts; runs whose worker died (lease expired,
    # released at start), bounded by max_interruptions.
    failures: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    interruptions: Mapped[int] = mapped_column(default=0)
    max_interruptions: Mapped[int] = mapped_column(default=20)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    instance_count_at_creation: Mapped[int] = mapped_column(default=0)
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    # The queue lane (storage.triage: 0 urgent, 1 live, 2 batch), served in that order.
    lane: Mapped[int] = mapped_column(default=1, server_default="1")
    # The re-processing batch that made this job (its model and delivery), None when live.
    batch_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("batches.id", ondelete="SET NULL"), index=True)

    study: Mapped[Study] = relationship(foreign_keys=[study_id])


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (CheckConstraint(_one_of("state", ResultState), name="state"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        Id, ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    study_id: Mapped[int] = mapped_column(
        Id, ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=ResultState.ANALYSED)
    # Why no view (or not every view) was analysed, in words for a reader; None when all were.
    reason: Mapped[str | None] = mapped_column(Text)
    views_analysed: Mapped[int] = mapped_column(default=0)
    views_total: Mapped[int] = mapped_column(default=0)
    # None when the study was not analysed: no number where the model judged nothing.
    fracture_probability: Mapped[float | None]
    positive: Mapped[bool | None] = mapped_column(Boolean)
    aggregation: Mapped[str] = mapped_column(String(32))
    threshold: Mapped[float]
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)


class Export(Base):
    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("instance_id", "destination"),
        CheckConstraint(_one_of("state", ExportState), name="state"),
        Index("ix_exports_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    instance_id: Mapped[int] = mapped_column(Id, ForeignKey("instances.id", ondelete="CASCADE"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=ExportState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime]

    instance: Mapped[Instance] = relationship()


class ApiToken(Base):
    """An HTTP bearer token: only its SHA-256 is kept, the token itself is shown once."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint(_one_of("role", TokenRole), name="role"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class PriorityEvent(Base):
    """One change of a study's triage priority: what set it (``source``: result, sender,
    user), who (``actor``: a model and version, an AE title, a token's name) and why."""

    __tablename__ = "priority_events"
    __table_args__ = (CheckConstraint(_one_of("priority", TriagePriority), name="priority"),
                      CheckConstraint(_one_of("source", PrioritySource), name="source"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_id: Mapped[int] = mapped_column(
        Id, ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    priority: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(Id, ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]


class NodeControl(Base):
    """A switch an admin turns for the whole node (``processing``: claim no new job;
    ``delivery``: send no export): whether it is paused, by whom, when and why. Kept in
    the index so every process (node, Celery workers) sees it and a restart keeps it."""

    __tablename__ = "node_controls"
    __table_args__ = (CheckConstraint("name IN ('processing', 'delivery')", name="name"),)

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    changed_at: Mapped[datetime]


class Notification(Base):
    """A webhook call owed for a study a result triaged HIGH (pacs_node.webhook): its JSON
    body without patient data (added at send time when ``webhook.include_phi``), retried
    with backoff until sent or out of attempts. One per job: a retried job owes one call."""

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(_one_of("state", ExportState), name="state"),
        UniqueConstraint("job_id"),
        Index("ix_notifications_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    study_id: Mapped[int] = mapped_column(Id, ForeignKey("studies.id", ondelete="CASCADE"))
    job_id: Mapped[int | None] = mapped_column(Id, ForeignKey("jobs.id", ondelete="SET NULL"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=ExportState.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class Batch(Base):
    """A re-processing run over many studies (pacs_node.batches): where they come from
    (``source`` remote with ``remote``, or local), which (``criteria``), with which model
    and where its results go (``deliver``: none, destinations or folder:PATH)."""

    __tablename__ = "batches"
    __table_args__ = (CheckConstraint(_one_of("state", BatchState), name="state"),
                      CheckConstraint("source IN ('remote', 'local')", name="source"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(String(16))
    remote: Mapped[str | None] = mapped_column(String(64))
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    # A checkpoint path or "demo" (None: the configured routes), and the models it names
    # as "name version" pairs (what --skip-done compares).
    model: Mapped[str | None] = mapped_column(String(512))
    model_key: Mapped[str] = mapped_column(String(512), default="")
    deliver: Mapped[str] = mapped_column(String(600), default="none")
    skip_done: Mapped[bool] = mapped_column(Boolean, default=False)
    max_retrieves: Mapped[int] = mapped_column(default=2)
    window: Mapped[str | None] = mapped_column(String(16))  # "HH:MM-HH:MM", local time
    state: Mapped[str] = mapped_column(String(16), default=BatchState.RUNNING, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    query_attempts: Mapped[int] = mapped_column(default=0)
    next_query_at: Mapped[datetime | None]
    created_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class BatchItem(Base):
    """One study of a batch and how far it got (:class:`ItemState`), with why when it
    was skipped or failed; ``job_id`` is the job the batch made for it."""

    __tablename__ = "batch_items"
    __table_args__ = (CheckConstraint(_one_of("state", ItemState), name="state"),
                      UniqueConstraint("batch_id", "study_instance_uid"),
                      Index("ix_batch_items_batch_id_state", "batch_id", "state"),
                      Index("ix_batch_items_study_instance_uid_state",
                            "study_instance_uid", "state"))

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    batch_id: Mapped[int] = mapped_column(Id, ForeignKey("batches.id", ondelete="CASCADE"))
    # The accession asked for (an accession list), and the study: None until resolved.
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_instance_uid: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=ItemState.PENDING)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    job_id: Mapped[int | None] = mapped_column(Id, ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
