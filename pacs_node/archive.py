"""Query/retrieve SCU toward a remote archive (issue 15, items 1-2): what archive re-processing
asks of a hospital PACS.

Study Root C-FIND at STUDY level by accession number, or by a StudyDate range and
ModalitiesInStudy (CR, DX); a body part narrows the answer with one SERIES-level C-FIND per
study (BodyPartExamined is a series attribute). Retrieval is C-MOVE to the node's own AE
title (the default: most hospital PACS offer it, and the instances then arrive through the
node's C-STORE listener like any others) or C-GET over the same association, whose instances
go through the same checks and durable ingest as a C-STORE
(:class:`pacs_node.receive.Receiver`); or, for an archive that speaks DICOMweb, QIDO-RS and
WADO-RS (:class:`DicomwebArchive`), its parts streamed to disk and stored the same way.
Every answer a peer sends is bounded (matches per query, sub-operations counted, never
trusted for a path)."""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, urlencode

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import, untyped
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from storage import is_valid_uid

from .config import Remote
from .receive import Receiver, Refused

if TYPE_CHECKING:
    from pynetdicom.pdu_primitives import _UI

__all__ = ["ArchiveClient", "ArchiveError", "DicomwebArchive", "Retrieved", "StudyRef"]

log = logging.getLogger(__name__)

#: Most matches one C-FIND may bring back; more is an error, not a silent cut.
MAX_MATCHES = 10_000
_PENDING = (0xFF00, 0xFF01)
_OUT_OF_RESOURCES = 0xA702
# C-GET: storage classes an X-ray archive sends (the SCP role needs one context each, and
# an association has 128 at most, Query/Retrieve's included).
# build_context always sets the abstract syntax (typed UID | None)
_GET_STORAGE = cast("list[str]",
                    [cx.abstract_syntax for cx in StoragePresentationContexts][:120])


class ArchiveError(Exception):
    """The remote archive did not answer as asked (unreachable, refused, failed)."""


@dataclass(frozen=True)
class StudyRef:
    """One study the archive holds, as its C-FIND answered."""

    study_instance_uid: str
    accession_number: str = ""
    study_date: str = ""
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Retrieved:
    """Sub-operation counts of a retrieve (C-MOVE or C-GET), from the final response."""

    completed: int
    failed: int
    warning: int


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value)[:limit]
    return str(value)[:limit]


class ArchiveClient:
    """The node as a query/retrieve SCU of ``remote``.

    Args:
        calling_ae: the node's AE title (the remote knows it as a C-MOVE destination).
        tls_context: for a remote with ``tls.enabled`` (pacs_node.tls.destination_contexts).
    """

    def __init__(self, remote: Remote, *, calling_ae: str,
                 tls_context: ssl.SSLContext | None = None, timeout: float = 30.0) -> None:
        if remote.ae_title is None or remote.host is None or remote.port is None:
            raise ArchiveError(f"{remote.name}: no DIMSE address (ae_title, host, port) in "
                               "the config; it is reached by DICOMweb only")
        self.remote = remote
        self.ae_title: str = remote.ae_title
        self.host: str = remote.host
        self.port: int = remote.port
        self.calling_ae = calling_ae
        self.tls_context = tls_context
        self.timeout = timeout

    @contextmanager
    def _association(self, contexts: Sequence[str], *, roles: Sequence[str] = (),
                     handlers: Sequence[EventHandlerType] = ()) -> Iterator[Association]:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        for context in contexts:
            ae.add_requested_context(context, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        negotiation: list[_UI] = [build_role(sop_class, scp_role=True) for sop_class in roles]
        tls_args = (self.tls_context, self.host) if self.tls_context else None
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title,
                             ext_neg=negotiation or None, evt_handlers=list(handlers) or None,
                             tls_args=tls_args)
        if not assoc.is_established:
            raise ArchiveError(f"{self.remote.name}: no association with "
                               f"{self.ae_title}@{self.host}:{self.port} "
                               "(unreachable, or our AE title refused)")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self) -> None:
        """C-ECHO. Raises ArchiveError unless it answers Success."""
        with self._association([Verification]) as assoc:
            status = assoc.send_c_echo()
        if getattr(status, "Status", None) != 0x0000:
            raise ArchiveError(f"{self.remote.name}: C-ECHO failed ({_status(status)})")

    def find_studies(self, *, accession: str | None = None, date_from: str = "",
                     date_to: str = "", modalities: Sequence[str] = (),
                     body_part: str | None = None, limit: int = MAX_MATCHES
                     ) -> list[StudyRef]:
        """Studies matching an accession number, or a StudyDate range (YYYYMMDD, either end
        open) and any of ``modalities``; ``body_part`` keeps those with a series of it.

        Raises:
            ArchiveError: no association, a failure status, more than ``limit`` matches.
        """
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.AccessionNumber = accession or ""
        query.StudyDate = f"{date_from}-{date_to}" if (date_from or date_to) else ""
        query.ModalitiesInStudy = "\\".join(modalities)
        studies: dict[str, StudyRef] = {}
        with self._association([StudyRootQueryRetrieveInformationModelFind]) as assoc:
            wanted = set(modalities)
            for ds in self._find(assoc, query, limit):
                uid = _text(ds, "StudyInstanceUID")
                if not is_valid_uid(uid):
                    continue  # a hostile or empty answer is not a study
                found = tuple(m for m in _text(ds, "ModalitiesInStudy", 128).split("\\") if m)
                if wanted and found and not wanted & set(found):
                    continue  # an archive that ignores ModalitiesInStudy matching
                studies[uid] = StudyRef(uid, _text(ds, "AccessionNumber", 16),
                                        _text(ds, "StudyDate", 8), found)
            if body_part:
                studies = {uid: ref for uid, ref in studies.items()
                           if self._has_body_part(assoc, uid, body_part)}
        return sorted(studies.values(), key=lambda s: (s.study_date, s.study_instance_uid))

    def _has_body_part(self, assoc: Association, study_uid: str, body_part: str) -> bool:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.BodyPartExamined = body_part.upper()
        # Every answer is read, to the final status: a response left unread would be
        # taken for the next query's on this association.
        answers = list(self._find(assoc, query, MAX_MATCHES))
        return any(_text(ds, "BodyPartExamined", 16).upper() == body_part.upper()
                   for ds in answers)

    def _find(self, assoc: Association, query: Dataset, limit: int) -> Iterator[Dataset]:
        count = 0
        for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code in _PENDING and identifier is not None:
                count += 1
                if count > limit:
                    raise ArchiveError(f"{self.remote.name}: more than {limit} matches; "
                                       "narrow the query (date range, accession list)")
                yield identifier
            elif code != 0x0000:
                raise ArchiveError(f"{self.remote.name}: C-FIND failed ({_status(status)})")

    def first_instance(self) -> tuple[str, str, str] | None:
        """Any one instance the archive holds (study, series, SOP Instance UIDs), found
        by C-FINDs that are cancelled after their first answer (PS3.4 C.4.1.2.3): the
        remote test's known instance, without listing the archive."""
        with self._association([StudyRootQueryRetrieveInformationModelFind]) as assoc:
            uids: list[str] = []
            for message_id, (level, keyword) in enumerate((("STUDY", "StudyInstanceUID"),
                                                           ("SERIES", "SeriesInstanceUID"),
                                                           ("IMAGE", "SOPInstanceUID")),
                                                          start=1):
                query = Dataset()
                query.QueryRetrieveLevel = level
                for known, name in zip(uids, ("StudyInstanceUID", "SeriesInstanceUID"),
                                       strict=False):
                    setattr(query, name, known)
                setattr(query, keyword, "")
                found = self._first(assoc, query, keyword, message_id)
                if found is None:
                    return None
                uids.append(found)
        return uids[0], uids[1], uids[2]

    def _first(self, assoc: Association, query: Dataset, keyword: str, message_id: int
               ) -> str | None:
        found = None
        for status, identifier in assoc.send_c_find(
                query, StudyRootQueryRetrieveInformationModelFind, msg_id=message_id):
            code = getattr(status, "Status", None)
            if code in _PENDING and identifier is not None and found is None:
                value = _text(identifier, keyword)
                if is_valid_uid(value):
                    found = value
                    assoc.send_c_cancel(message_id,
                                        query_model=StudyRootQueryRetrieveInformationModelFind)
            elif code not in _PENDING and code not in (0x0000, 0xFE00):
                raise ArchiveError(f"{self.remote.name}: C-FIND failed ({_status(status)})")
        return found

    def move_instance(self, uids: tuple[str, str, str], destination_ae: str | None = None
                      ) -> Retrieved:
        """C-MOVE one instance (IMAGE level) to ``destination_ae`` (default: ours)."""
        identifier = _study_identifier(uids[0])
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SeriesInstanceUID, identifier.SOPInstanceUID = uids[1], uids[2]
        final = None
        with self._association([StudyRootQueryRetrieveInformationModelMove]) as assoc:
            for status, _ in assoc.send_c_move(identifier, destination_ae or self.calling_ae,
                                               StudyRootQueryRetrieveInformationModelMove):
                final = status
        return self._counts("C-MOVE", uids[2], final)

    def move(self, study_uid: str, destination_ae: str | None = None) -> Retrieved:
        """C-MOVE a study to ``destination_ae`` (default: the node's own AE title, so it
        arrives through the node's C-STORE listener)."""
        identifier = _study_identifier(study_uid)
        final = None
        with self._association([StudyRootQueryRetrieveInformationModelMove]) as assoc:
            for status, _ in assoc.send_c_move(identifier, destination_ae or self.calling_ae,
                                               StudyRootQueryRetrieveInformationModelMove):
                final = status
        return self._counts("C-MOVE", study_uid, final)

    def get_instance(self, uids: tuple[str, str, str], receiver: Receiver) -> Retrieved:
        """C-GET one instance (IMAGE level) through ``receiver``."""
        identifier = _study_identifier(uids[0])
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SeriesInstanceUID, identifier.SOPInstanceUID = uids[1], uids[2]
        return self._get(identifier, uids[2], receiver)

    def get(self, study_uid: str, receiver: Receiver) -> Retrieved:
        """C-GET a study over one association; each instance goes through ``receiver``
        (the checks and durable ingest of a C-STORE) before it is acknowledged."""
        return self._get(_study_identifier(study_uid), study_uid, receiver)

    def _get(self, identifier: Dataset, what: str, receiver: Receiver) -> Retrieved:

        def store(event: Event) -> int:
            try:
                path = receiver.store.incoming_path()
                path.write_bytes(event.encoded_dataset())  # preamble, file meta, data set
                try:
                    meta = receiver.validate(path)
                    receiver.store_instance(path, meta, calling_ae=self.ae_title[:16])
                finally:
                    path.unlink(missing_ok=True)
            except Refused as exc:
                log.warning("C-GET from %s: instance refused (0x%04X): %s", self.remote.name,
                            exc.status, exc)
                return exc.status
            except Exception as exc:  # noqa: BLE001 - a failed sub-operation, reported
                log.error("C-GET from %s: cannot store an instance: %s", self.remote.name,
                          type(exc).__name__)
                return _OUT_OF_RESOURCES
            return 0x0000

        final = None
        with self._association([StudyRootQueryRetrieveInformationModelGet, *_GET_STORAGE],
                               roles=_GET_STORAGE,
                               handlers=[(evt.EVT_C_STORE, store)]) as assoc:
            for status, _ in assoc.send_c_get(identifier,
                                              StudyRootQueryRetrieveInformationModelGet):
                final = status
        return self._counts("C-GET", what, final)

    def _counts(self, what: str, study_uid: str, final: Dataset | None) -> Retrieved:
        code = getattr(final, "Status", None)
        counts = Retrieved(*(int(getattr(final, f"NumberOf{k}Suboperations", 0) or 0)
                             for k in ("Completed", "Failed", "Warning")))
        if code not in (0x0000, 0xB000) or (counts.completed + counts.warning == 0):
            raise ArchiveError(f"{self.remote.name}: {what} of study {study_uid} failed "
                               f"({_status(final)}; {counts.completed} completed, "
                               f"{counts.failed} failed)")
        return counts


def _study_identifier(study_uid: str) -> Dataset:
    if not is_valid_uid(study_uid):
        raise ArchiveError(f"not a valid Study Instance UID: {study_uid[:64]!r}")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return identifier


def _status(status: Dataset | None) -> str:
    code = getattr(status, "Status", None)
    if code is None:  # pynetdicom's empty answer: aborted, or timed out
        return ("no answer: the remote aborted or did not reply; does it list our AE "
                "title among its modalities?")
    return f"status 0x{int(code):04X}"


class DicomwebArchive:
    """The node as a DICOMweb client of an archive (``remotes[].retrieve: dicomweb``):
    QIDO-RS to find studies (same filters as :meth:`ArchiveClient.find_studies`), WADO-RS
    to retrieve one as ``multipart/related; type="application/dicom"``, streamed part by
    part to files under the store's ``.incoming`` (never held whole in memory), then
    checked and stored like a STOW-RS part.

    Args:
        url: the archive's DICOMweb root (e.g. ``http://pacs:8042/dicom-web``).
        token: a bearer token, when the archive asks for one.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 60.0,
                 name: str = "remote") -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.name = name

    def _open(self, path: str, accept: str) -> Any:
        headers = {"Accept": accept, "User-Agent": "pacs-node"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            raise ArchiveError(f"{self.name}: {path.split('?')[0]} answered HTTP {exc.code}"
                               ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ArchiveError(f"{self.name}: cannot reach {self.url}: "
                               f"{getattr(exc, 'reason', exc)}") from None

    def _qido(self, path: str, params: dict[str, str], limit: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = {**params, "limit": "1000", "offset": str(len(found))}
            with self._open(f"{path}?{urlencode(page)}", "application/dicom+json") as answer:
                body = answer.read(64 * 1024 * 1024 + 1)
            if len(body) > 64 * 1024 * 1024:
                raise ArchiveError(f"{self.name}: a QIDO-RS answer over 64 MiB")
            batch = json.loads(body) if body.strip() else []
            if not isinstance(batch, list):
                raise ArchiveError(f"{self.name}: QIDO-RS answered no list")
            found += [item for item in batch if isinstance(item, dict)]
            if len(found) > limit:
                raise ArchiveError(f"{self.name}: more than {limit} matches; narrow the "
                                   "query (date range, accession list)")
            if len(batch) < 1000:
                return found

    def find_studies(self, *, accession: str | None = None, date_from: str = "",
                     date_to: str = "", modalities: Sequence[str] = (),
                     body_part: str | None = None, limit: int = MAX_MATCHES
                     ) -> list[StudyRef]:
        """QIDO-RS ``/studies``; ``body_part``: a ``/studies/{uid}/series`` query each."""
        params = {"includefield": "00080061,00080050,00080020"}
        if accession:
            params["AccessionNumber"] = accession
        if date_from or date_to:
            params["StudyDate"] = f"{date_from}-{date_to}"
        studies: dict[str, StudyRef] = {}
        for modality in modalities or [""]:  # one query per modality: any of them
            query = {**params, **({"ModalitiesInStudy": modality} if modality else {})}
            for item in self._qido("/studies", query, limit):
                uid = _json_value(item, "0020000D")
                if not is_valid_uid(uid):
                    continue
                studies[uid] = StudyRef(
                    uid, _json_value(item, "00080050")[:16], _json_value(item, "00080020")[:8],
                    tuple(m for m in _json_value(item, "00080061", all_values=True).split("\\")
                          if m))
        if body_part:
            wanted = body_part.upper()
            studies = {uid: ref for uid, ref in studies.items() if any(
                _json_value(item, "00180015").upper() == wanted for item in self._qido(
                    f"/studies/{uid}/series",
                    {"BodyPartExamined": wanted, "includefield": "00180015"}, MAX_MATCHES))}
        return sorted(studies.values(), key=lambda s: (s.study_date, s.study_instance_uid))

    def first_instance(self) -> tuple[str, str, str] | None:
        """Any one instance the archive holds (study, series, SOP Instance UIDs): two
        QIDO-RS queries of one answer each."""
        with self._open("/studies?limit=1", "application/dicom+json") as answer:
            studies = json.loads(answer.read(1 << 20) or b"[]")
        study = _json_value(studies[0], "0020000D") if studies else ""
        if not is_valid_uid(study):
            return None
        with self._open(f"/studies/{quote(study, safe='')}/instances?limit=1",
                        "application/dicom+json") as answer:
            instances = json.loads(answer.read(1 << 20) or b"[]")
        if not instances:
            return None
        series, sop = (_json_value(instances[0], tag) for tag in ("0020000E", "00080018"))
        return (study, series, sop) if is_valid_uid(series) and is_valid_uid(sop) else None

    def retrieve_instance(self, uids: tuple[str, str, str], receiver: Receiver) -> Retrieved:
        """WADO-RS of one instance, checked and stored."""
        for uid in uids:
            _study_identifier(uid)  # valid UIDs before they go into a URL
        study, series, sop = (quote(uid, safe="") for uid in uids)
        return self._retrieve(f"/studies/{study}/series/{series}/instances/{sop}", uids[0],
                              receiver)

    def retrieve(self, study_uid: str, receiver: Receiver) -> Retrieved:
        """WADO-RS ``/studies/{uid}`` as stored, each part checked and stored."""
        _study_identifier(study_uid)  # a valid UID before it goes into a URL
        return self._retrieve(f"/studies/{quote(study_uid, safe='')}", study_uid, receiver)

    def _retrieve(self, path: str, study_uid: str, receiver: Receiver) -> Retrieved:
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        with self._open(path, accept) as answer:
            kind, _, rest = answer.headers.get("Content-Type", "").partition(";")
            boundary = next((p.split("=", 1)[1].strip().strip('"') for p in rest.split(";")
                             if p.strip().lower().startswith("boundary=")), "")
            if kind.strip().lower() != "multipart/related" or not boundary:
                raise ArchiveError(f"{self.name}: WADO-RS answered {kind or 'nothing'}, "
                                   "not multipart/related with a boundary")
            paths = self._parts(answer, boundary, receiver)
        completed = failed = 0
        try:
            valid = []
            for part in paths:  # not `path`: that is the str URL path above
                try:
                    valid.append((part, receiver.validate(part, study=study_uid)))
                except Refused as exc:
                    failed += 1
                    log.warning("WADO-RS from %s: part refused (0x%04X): %s", self.name,
                                exc.status, exc)
            for outcome in receiver.store_many(valid, calling_ae=f"WADO-RS {self.name}"[:16]):
                if isinstance(outcome, Refused):
                    failed += 1
                else:
                    completed += 1
        finally:
            for part in paths:
                part.unlink(missing_ok=True)
        if completed == 0:
            raise ArchiveError(f"{self.name}: WADO-RS of study {study_uid} stored nothing "
                               f"({failed} parts refused)")
        return Retrieved(completed, failed, 0)

    def _parts(self, answer: Any, boundary: str, receiver: Receiver) -> list[Path]:
        """The answer's parts streamed into files under the store's .incoming folder."""
        from python_multipart.multipart import MultipartParser

        paths: list[Path] = []
        handle: list[Any] = []

        def begin() -> None:
            if len(paths) >= 100_000:
                raise ArchiveError(f"{self.name}: more than 100,000 parts in one study")
            paths.append(receiver.store.incoming_path())
            handle.append(paths[-1].open("xb"))

        def data(chunk: bytes, start: int, end: int) -> None:
            handle[-1].write(chunk[start:end])

        def end() -> None:
            handle.pop().close()

        parser = MultipartParser(boundary, {"on_part_begin": begin,  # type: ignore[arg-type]
                                            "on_part_data": data, "on_part_end": end})
        try:
            while chunk := answer.read(1 << 20):
                parser.write(chunk)
            parser.finalize()
        except BaseException:
            for file in handle:
                file.close()
            for path in paths:
                path.unlink(missing_ok=True)
            raise
        return paths


def _json_value(item: dict[str, Any], tag: str, *, all_values: bool = False) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    texts = [str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v) for v in values]
    return "\\".join(texts) if all_values else (texts[0] if texts else "")
