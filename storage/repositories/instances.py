"""Instances and the patient/study/series rows above them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from .._db import insert_ignore, lock_key, utcnow
from ..filestore import StoredFile
from ..meta import InstanceMeta, StoreOutcome
from ..schema import (
    Instance,
    InstanceSource,
    Patient,
    PriorityEvent,
    Series,
    Study,
    StudyState,
)
from ..triage import PrioritySource, TriagePriority

__all__ = ["InstanceRepository", "decide"]

_MODALITIES_WIDTH = 128


def decide(existing_sha256: str | None, new_sha256: str, overwrite: bool) -> StoreOutcome:
    """The duplicate policy: what storing content with ``new_sha256`` does."""
    if existing_sha256 is None:
        return StoreOutcome.STORED
    if existing_sha256 == new_sha256:
        return StoreOutcome.DUPLICATE_IDENTICAL
    return StoreOutcome.DUPLICATE_OVERWRITTEN if overwrite else StoreOutcome.DUPLICATE_CONFLICT_KEPT


_IDS = "pacs_node.hierarchy_ids"  # session.info keys: what this transaction already holds
_LOCKED = "pacs_node.locked_studies"


class InstanceRepository:
    """Index rows of stored instances. The caller owns the transaction and commits."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def lock(self, sop_instance_uid: str) -> None:
        """Serialise writers of one SOP Instance UID until the transaction ends."""
        lock_key(self.session, "sop", sop_instance_uid)

    def get(self, sop_instance_uid: str) -> Instance | None:
        return self.session.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).one_or_none()

    def get_many(self, sop_instance_uids: Sequence[str]) -> Sequence[Instance]:
        """The rows of those SOP Instance UIDs that are held (in no particular order)."""
        if not sop_instance_uids:
            return []
        return self.session.scalars(
            select(Instance).where(Instance.sop_instance_uid.in_(sop_instance_uids))).all()

    def get_by_id(self, instance_id: int) -> Instance | None:
        return self.session.get(Instance, instance_id)

    def for_study(self, study_instance_uid: str, *,
                  source: InstanceSource | str | None = None) -> Sequence[Instance]:
        """Instances of a study ordered by series number, instance number, arrival."""
        stmt = (select(Instance).join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_instance_uid == study_instance_uid))
        if source is not None:
            stmt = stmt.where(Instance.source == str(source))
        stmt = stmt.order_by(Series.series_number.asc().nulls_last(), Series.id,
                             Instance.instance_number.asc().nulls_last(), Instance.id)
        return self.session.scalars(stmt).all()

    def current_results(self, study_instance_uid: str, *, except_job: int | None = None
                        ) -> Sequence[Instance]:
        """The study's produced instances not yet superseded (made by jobs other than
        ``except_job``), oldest first."""
        stmt = (select(Instance).join(Series, Instance.series_id == Series.id)
                .join(Study, Series.study_id == Study.id)
                .where(Study.study_instance_uid == study_instance_uid,
                       Instance.source == str(InstanceSource.PRODUCED),
                       Instance.superseded.is_(False)))
        if except_job is not None:
            stmt = stmt.where(or_(Instance.job_id.is_(None), Instance.job_id != except_job))
        return self.session.scalars(stmt.order_by(Instance.id)).all()

    def supersede_results(self, study_instance_uid: str, *, except_job: int
                          ) -> Sequence[Instance]:
        """Mark the study's current results of other jobs superseded; return them."""
        rows = self.current_results(study_instance_uid, except_job=except_job)
        if rows:
            self.session.execute(update(Instance).where(Instance.id.in_([r.id for r in rows]))
                                 .values(superseded=True)
                                 .execution_options(synchronize_session="fetch"))
        return rows

    def record(self, meta: InstanceMeta, stored: StoredFile, *,
               source: InstanceSource | str = InstanceSource.RECEIVED,
               calling_ae: str | None = None, overwrite: bool = False,
               now: datetime | None = None, job_id: int | None = None) -> StoreOutcome:
        """Index a stored file, creating or updating its patient, study and series rows.

        A new instance (or an overwritten one, with ``overwrite``) adds to the study's
        instance count; a ``received`` one also moves ``last_received_at`` and puts the
        study back in state ``receiving``. ``produced`` instances (the node's own results)
        never wake the study up again. Duplicates change nothing; see :func:`decide`.
        """
        now = now or utcnow()
        source = InstanceSource(source)
        existing = self.get(meta.sop_instance_uid)
        outcome = decide(existing.sha256 if existing else None, stored.sha256, overwrite)
        if outcome in (StoreOutcome.DUPLICATE_IDENTICAL, StoreOutcome.DUPLICATE_CONFLICT_KEPT):
            return outcome

        study_id, series_id = self._ensure_hierarchy(meta, source, now)
        fields = dict(
            series_id=series_id, sop_class_uid=meta.sop_class_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            instance_number=meta.instance_number, relpath=stored.relpath,
            sha256=stored.sha256, size_bytes=stored.size, rows=meta.rows, columns=meta.columns,
            view_position=meta.view_position, image_laterality=meta.image_laterality,
            photometric_interpretation=meta.photometric_interpretation, received_at=now,
            source=str(source), calling_ae=calling_ae[:16] if calling_ae else None,
            job_id=job_id, superseded=False,
        )
        added = True
        if existing is None:
            self.session.add(Instance(sop_instance_uid=meta.sop_instance_uid, **fields))
        else:
            old_series = self.session.get(Series, existing.series_id)
            added = existing.series_id != series_id
            for name, value in fields.items():
                setattr(existing, name, value)
            if added and old_series is not None:
                old = self._lock_study(old_series.study_id)
                old.instance_count = max(0, old.instance_count - 1)
        self._touch_study(study_id, meta, source, now, added, calling_ae)
        self.session.flush()
        return outcome

    # -- private -----------------------------------------------------------------------

    def _ensure_hierarchy(self, meta: InstanceMeta, source: InstanceSource,
                          now: datetime) -> tuple[int, int]:
        # INSERT ... ON CONFLICT DO NOTHING, then SELECT: concurrent first instances of a
        # study both succeed, on both backends, in the same lock order (patient, study,
        # series, then the study row update), so they cannot deadlock.
        patient_id = self._ensure(Patient, Patient.patient_id, meta.patient_id, dict(
            patient_name=meta.patient_name, birth_date=meta.patient_birth_date,
            sex=meta.patient_sex))
        reopens = source is InstanceSource.RECEIVED and not meta.node_result
        state = StudyState.RECEIVING if reopens else StudyState.SETTLED
        study_id = self._ensure(Study, Study.study_instance_uid, meta.study_instance_uid, dict(
            patient_id=patient_id, study_date=meta.study_date, study_time=meta.study_time,
            accession_number=meta.accession_number, study_description=meta.study_description,
            modalities_in_study="", instance_count=0, first_received_at=now,
            last_received_at=now, state=str(state)))
        series_id = self._ensure(Series, Series.series_instance_uid, meta.series_instance_uid,
                                 dict(study_id=study_id, modality=meta.modality,
                                      series_number=meta.series_number,
                                      series_description=meta.series_description,
                                      body_part_examined=meta.body_part_examined,
                                      laterality=meta.laterality))
        return study_id, series_id

    def _ensure(self, model: type[Patient] | type[Study] | type[Series],
                column: InstrumentedAttribute[str], key: str, values: dict[str, object]) -> int:
        # Row ids found earlier in this transaction (many instances of one series in one
        # STOW-RS request) are not looked up again.
        known: dict[tuple[str, str], int] = self._this_transaction(_IDS)
        if (model.__tablename__, key) in known:
            return known[model.__tablename__, key]
        stmt = select(model.id).where(column == key)
        found = self.session.scalar(stmt)
        if found is None:
            insert_ignore(self.session, model, {column.key: key, **values}, (column.key,))
            found = self.session.scalar(stmt)
        if found is None:  # pragma: no cover - the row was inserted or existed
            raise RuntimeError(f"{model.__tablename__} row vanished during insert")
        known[model.__tablename__, key] = int(found)
        return int(found)

    def _this_transaction(self, name: str) -> dict[Any, Any]:
        """A dict kept in the session for the current transaction only."""
        transaction = self.session.get_transaction()
        held = self.session.info.get(name)
        if held is None or held[0] is not transaction:
            held = self.session.info[name] = (transaction, {})
        return held[1]  # type: ignore[no-any-return]

    def _lock_study(self, study_id: int) -> Study:
        # FOR NO KEY UPDATE: FOR UPDATE would conflict with the FOR KEY SHARE locks that
        # concurrent inserts of series rows take on the study, and deadlock them. Locked
        # once a transaction: the row in the session is then current until the commit.
        locked: dict[int, Study] = self._this_transaction(_LOCKED)
        if study_id not in locked:
            locked[study_id] = self.session.scalars(
                select(Study).where(Study.id == study_id).with_for_update(key_share=True)
                .execution_options(populate_existing=True)).one()
        return locked[study_id]

    def _touch_study(self, study_id: int, meta: InstanceMeta, source: InstanceSource,
                     now: datetime, added: bool, calling_ae: str | None = None) -> None:
        study = self._lock_study(study_id)
        if added:
            study.instance_count += 1
        modalities = [m for m in study.modalities_in_study.split("\\") if m]
        if meta.modality and meta.modality not in modalities:
            joined = "\\".join([*modalities, meta.modality])
            if len(joined) <= _MODALITIES_WIDTH:
                study.modalities_in_study = joined
        for name in ("study_date", "study_time", "accession_number", "study_description"):
            if not getattr(study, name) and getattr(meta, name):
                setattr(study, name, getattr(meta, name))
        if source is InstanceSource.RECEIVED and not meta.node_result:
            study.last_received_at = max(study.last_received_at, now)
            study.state = str(StudyState.RECEIVING)
            if meta.requested_priority and not study.requested_priority:
                self._sender_urgency(study, meta.requested_priority, calling_ae, now)

    def _sender_urgency(self, study: Study, reason: str, calling_ae: str | None,
                        now: datetime) -> None:
        """The sender asked for urgency: a floor for the study's triage priority (its jobs
        run in the urgent lane; no result lowers it, storage.triage)."""
        study.requested_priority = reason[:64]
        if study.triage_priority != TriagePriority.HIGH:
            study.triage_priority = str(TriagePriority.HIGH)
            self.session.add(PriorityEvent(
                study_id=study.id, priority=str(TriagePriority.HIGH),
                source=str(PrioritySource.SENDER), reason=f"requested by the sender: {reason}",
                actor=(calling_ae or "unknown sender")[:64], created_at=now))
